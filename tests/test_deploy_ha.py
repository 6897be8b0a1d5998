"""What ``productionlab.deploy`` renders for compose's ``ha`` profile (issue 12,
item 1): redis.conf for replicated data nodes, sentinel.conf, ha.env, the server
certificate every node shares, the ``replicated`` durability refused for one
redis, and the profile's services in docker-compose.yml. The rendered files are
then run for real on loopback: a primary, a replica and a sentinel, over TLS
with the ACL users the files declare, and the planes' own client through the
sentinel. (The compose profile itself, with a failover, is proven by ``make e2e``,
e2e/test_ha.py.)"""

from __future__ import annotations

import shutil
import subprocess  # nosec B404
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml
from cryptography import x509

from productionlab import deploy
from productionlab.settings import ConfigError, Settings, secret_problem
from productionlab.store.connection import connect
from productionlab.supervisor import free_port
from tests.test_deploy import COMPOSE_FILE
from tests.test_settings import strong_env

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
HA_SERVICES = (*deploy.HA_REPLICAS, *deploy.HA_SENTINELS)


@pytest.fixture
def ha_secrets(tmp_path) -> Path:
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory, topology="ha", durability="replicated")
    return directory


def password(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


def test_ha_redis_conf_replicates_over_tls_and_refuses_writes_without_a_replica(ha_secrets):
    conf = (ha_secrets / "redis.conf").read_text()
    lines = conf.splitlines()
    for line in (
        "tls-replication yes",
        "masteruser plab-replica",
        "min-replicas-to-write 1",
        "min-replicas-max-lag 10",
        "port 0",
    ):
        assert line in lines, line
    assert not any(line.startswith("replica-announce-ip") for line in lines)
    assert f"masterauth {password(ha_secrets, 'redis_replica_password')}" in lines
    users = {line.split()[1]: line for line in lines if line.startswith("user ")}
    replica, sentinel = users["plab-replica"], users["plab-sentinel"]
    assert replica.endswith("resetkeys resetchannels -@all +psync +replconf +ping")
    assert "~" not in sentinel and "&__sentinel__:hello" in sentinel
    assert "-@all" in sentinel and "+slaveof" in sentinel and "+@" not in sentinel
    for name in deploy.HA_PASSWORDS:
        secret = password(ha_secrets, name)
        assert secret_problem(name, secret) is None
        assert not any(secret in line for line in users.values())


def test_the_default_topology_has_no_replication_and_no_ha_users(tmp_path):
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)
    conf = (directory / "redis.conf").read_text()
    assert "masterauth" not in conf and "min-replicas-to-write" not in conf
    assert "tls-replication yes" not in conf.splitlines()
    assert "user plab-replica" not in conf and "user plab-sentinel" not in conf
    assert not (directory / deploy.HA_ENV).exists()
    # what compose names exists in both topologies
    assert (directory / "sentinel.conf").exists()
    cert = x509.load_pem_x509_certificate((directory / "redis_server_crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sentinel-1" not in names.get_values_for_type(x509.DNSName)


def test_sentinel_conf_monitors_the_primary_as_its_own_user_with_quorum_2(ha_secrets):
    lines = (ha_secrets / "sentinel.conf").read_text().splitlines()
    for line in (
        "port 0",
        "tls-port 26379",
        "tls-auth-clients yes",
        "tls-replication yes",
        f"sentinel monitor plab {deploy.HA_ADDRESSES['redis']} 6379 2",
        "sentinel auth-user plab plab-sentinel",
        f"sentinel auth-pass plab {password(ha_secrets, 'redis_sentinel_password')}",
    ):
        assert line in lines, line
    # never a name: redis resolves names with a blocking lookup (deploy.HA_ADDRESSES)
    assert not any("hostnames" in line for line in lines)


def test_ha_env_points_the_planes_at_the_sentinels_in_replicated_mode(ha_secrets):
    env = dict(
        line.split("=", 1)
        for line in (ha_secrets / deploy.HA_ENV).read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env == {
        "COMPOSE_PROFILES": "ha",
        "PLAB_SECRETS_DIR": str(ha_secrets.resolve()),
        "PLAB_REDIS_URL": "redis+sentinel://198.18.241.243:26379,198.18.241.244:26379,"
        "198.18.241.245:26379/plab/0",
        "PLAB_DURABILITY": "replicated",
        "PLAB_REDIS_ADDRESS": "198.18.241.240",
        "PLAB_REDIS_REPLICA_1_ADDRESS": "198.18.241.241",
        "PLAB_REDIS_REPLICA_2_ADDRESS": "198.18.241.242",
        "PLAB_SENTINEL_1_ADDRESS": "198.18.241.243",
        "PLAB_SENTINEL_2_ADDRESS": "198.18.241.244",
        "PLAB_SENTINEL_3_ADDRESS": "198.18.241.245",
    }
    # the planes accept it
    Settings.from_env({**strong_env(), "PLAB_REDIS_URL": env["PLAB_REDIS_URL"]})


def test_the_server_certificate_names_every_node_and_is_also_a_client_certificate(tmp_path):
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)  # first the single topology: a server-only certificate
    deploy.prepare_secrets(directory, topology="ha")  # the same directory, now ha: issued again
    cert = x509.load_pem_x509_certificate((directory / "redis_server_crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"redis", *HA_SERVICES} <= set(names.get_values_for_type(x509.DNSName))
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert set(deploy.HA_ADDRESSES.values()) <= addresses
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH} <= (
        set(usage)
    )
    kept = (directory / "redis_server_crt").read_bytes()
    deploy.prepare_secrets(directory, topology="ha")
    deploy.prepare_secrets(directory)  # back to single: the wider certificate is kept
    assert (directory / "redis_server_crt").read_bytes() == kept


def test_replicated_durability_is_refused_for_one_redis(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--topology ha"):
        deploy.prepare_secrets(tmp_path / "a", durability="replicated")
    assert not (tmp_path / "a").exists()
    code = deploy.main(["secrets", "--dir", str(tmp_path / "b"), "--durability", "replicated"])
    assert code == 2
    assert "durability 'replicated' needs replicas" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert deploy.main(["secrets", "--dir", str(tmp_path / "c"), "--topology", "ha"]) == 0
    assert "PLAB_DURABILITY=replicated" in (tmp_path / "c" / deploy.HA_ENV).read_text()
    strict = ["--topology", "ha", "--durability", "strict"]
    assert deploy.main(["secrets", "--dir", str(tmp_path / "d"), *strict]) == 0
    assert "appendfsync always" in (tmp_path / "d" / "redis.conf").read_text()
    assert "PLAB_DURABILITY=strict" in (tmp_path / "d" / deploy.HA_ENV).read_text()


def test_a_weak_replication_password_is_refused(tmp_path):
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "redis_replica_password").write_text("changeme\n")
    with pytest.raises(ConfigError, match="PLAB_REDIS_REPLICA_PASSWORD"):
        deploy.prepare_secrets(directory, topology="ha")


# --- docker-compose.yml ---------------------------------------------------------
def assert_a_confined_redis_side_service(service: dict, name: str, profile: str) -> None:
    """Only in ``profile``, under the hardening of ``redis``, not published, never
    given the redis CA's key."""
    assert service["profiles"] == [profile], name
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
    assert service["security_opt"] == ["no-new-privileges:true"], name
    assert service["user"] == "999:999", name
    assert "ports" not in service, name
    assert service["mem_limit"] and service["pids_limit"], name
    assert "redis_ca_key" not in service["secrets"], name


def test_the_ha_services_exist_only_in_the_profile_and_are_confined():
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    services = document["services"]
    for name in HA_SERVICES:
        service = services[name]
        assert_a_confined_redis_side_service(service, name, "ha")
        address = f"${{{deploy.address_variable(name)}:-{deploy.HA_ADDRESSES[name]}}}"
        assert service["networks"] == {"backend": {"ipv4_address": address}}, name
        assert "ports" not in service, name
        assert service["healthcheck"]["test"] and service["mem_limit"] and service["pids_limit"]
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
        assert "redis_ca_key" not in service["secrets"], name
        # only their own volume is writable besides /tmp
        (volume,) = service["volumes"]
        assert volume == f"{name}-data:/data", name
    for name in deploy.HA_REPLICAS:
        command = services[name]["command"]
        assert command[:2] == ["redis-server", "/run/secrets/redis_conf"]
        primary = f"${{PLAB_REDIS_ADDRESS:-{deploy.HA_ADDRESSES['redis']}}}"
        assert command[2:] == ["--replicaof", primary, "6379"]
    for name in deploy.HA_SENTINELS:
        assert "sentinel_conf" in services[name]["secrets"]
        assert "redis_conf" not in services[name]["secrets"]
        assert "--sentinel" in services[name]["command"][-1]
    for name, service in services.items():
        if name not in HA_SERVICES:
            assert service.get("profiles") in (None, ["cluster"]), name
    # the default topology's redis: an address Docker picks, unless ha.env fixes it
    assert services["redis"]["networks"] == {"backend": {"ipv4_address": "${PLAB_REDIS_ADDRESS:-}"}}
    env = document["x-app-env"]
    assert env["PLAB_REDIS_URL"] == "${PLAB_REDIS_URL:-rediss://redis:6379/0}"
    assert env["PLAB_DURABILITY"] == "${PLAB_DURABILITY:-everysec}"


# --- the rendered files, run ----------------------------------------------------
def started(conf: str, directory: Path, *args: str) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "node.conf"
    path.write_text(conf)
    path.chmod(0o600)
    with open(directory / "log", "wb") as log:
        return subprocess.Popen([REDIS_SERVER, str(path), *args], stdout=log, stderr=log)


def eventually(check: Callable[[], object], what: str, timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {timeout}s (last: {last!r})")


@pytest.fixture
def ha_on_loopback(ha_secrets, tmp_path) -> Iterator[dict]:
    """A primary and a replica from the rendered redis.conf, a sentinel from the
    rendered sentinel.conf: only the paths, ports and names are replaced (loopback
    has no compose addresses: 127.0.0.1 stands for each)."""
    mount = str(deploy.SECRETS_MOUNT) + "/"

    def local(text: str, data: Path) -> str:
        return (
            text.replace(mount, f"{ha_secrets}/")
            .replace("dir /data", f"dir {data}")
            .replace("bind 0.0.0.0", "bind 127.0.0.1")
        )

    ports = {"primary": free_port(), "replica": free_port(), "sentinel": free_port()}
    conf = (ha_secrets / "redis.conf").read_text()
    processes = []
    try:
        processes.append(
            started(
                local(conf, tmp_path / "primary"),
                tmp_path / "primary",
                "--tls-port",
                str(ports["primary"]),
            )
        )
        processes.append(
            started(
                local(conf, tmp_path / "replica"),
                tmp_path / "replica",
                "--tls-port",
                str(ports["replica"]),
                "--replicaof",
                "127.0.0.1",
                str(ports["primary"]),
            )
        )
        sentinel_conf = (
            local((ha_secrets / "sentinel.conf").read_text(), tmp_path / "sentinel")
            .replace("tls-port 26379", f"tls-port {ports['sentinel']}")
            .replace(
                f"monitor plab {deploy.HA_ADDRESSES['redis']} 6379",
                f"monitor plab 127.0.0.1 {ports['primary']}",
            )
        )
        processes.append(started(sentinel_conf, tmp_path / "sentinel", "--sentinel"))
        yield {"ports": ports, "secrets": ha_secrets}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def client(secrets: Path, port: int, user: str | None, secret: str | None, **extra) -> redis.Redis:
    return redis.Redis(
        host="localhost",
        port=port,
        username=user,
        password=secret,
        ssl=True,
        ssl_ca_certs=str(secrets / "redis_ca_crt"),
        ssl_certfile=str(secrets / "redis_cp_crt"),
        ssl_keyfile=str(secrets / "redis_cp_key"),
        socket_timeout=5,
        **extra,
    )


def test_the_rendered_files_replicate_over_tls_and_the_sentinel_finds_both(ha_on_loopback):
    secrets, ports = ha_on_loopback["secrets"], ha_on_loopback["ports"]
    cp = password(secrets, "redis_cp_password")
    primary = client(secrets, ports["primary"], "plab-cp", cp)
    replica = client(secrets, ports["replica"], "plab-cp", cp)
    eventually(lambda: primary.ping(), "the primary answers")
    eventually(
        lambda: replica.info("replication").get("master_link_status") == "up",
        "the replica syncs from the primary over TLS as plab-replica",
    )
    assert primary.set("{plab}:ha-check", "x") is True
    assert primary.execute_command("WAIT", 1, 5000) == 1
    assert eventually(lambda: replica.get("{plab}:ha-check"), "the write replicated") == b"x"
    assert primary.config_get("min-replicas-to-write") == {"min-replicas-to-write": "1"}

    replication = client(
        secrets, ports["primary"], "plab-replica", password(secrets, "redis_replica_password")
    )
    assert replication.ping() is True
    with pytest.raises(redis.exceptions.NoPermissionError):
        replication.get("{plab}:ha-check")
    sentinel_user = client(
        secrets, ports["primary"], "plab-sentinel", password(secrets, "redis_sentinel_password")
    )
    assert sentinel_user.info("replication")["role"] == "master"
    with pytest.raises(redis.exceptions.NoPermissionError):
        sentinel_user.get("{plab}:ha-check")
    with pytest.raises(redis.exceptions.NoPermissionError):
        sentinel_user.publish("{plab}:kv-changes", "x")

    watcher = client(secrets, ports["sentinel"], None, None)
    eventually(
        lambda: watcher.sentinel_master("plab")["num-slaves"] == 1,
        "the sentinel (as plab-sentinel, over TLS) sees the replica",
    )
    assert watcher.sentinel_get_master_addr_by_name("plab") == (b"127.0.0.1", ports["primary"])

    # The planes' own client, through the sentinel, with the server name checked.
    settings = Settings.from_env(
        {
            **strong_env(),
            "PLAB_REDIS_URL": f"redis+sentinel://127.0.0.1:{ports['sentinel']}/plab/0",
            "PLAB_REDIS_TLS_CA_FILE": str(secrets / "redis_ca_crt"),
            "PLAB_REDIS_TLS_CERT_FILE": str(secrets / "redis_cp_crt"),
            "PLAB_REDIS_TLS_KEY_FILE": str(secrets / "redis_cp_key"),
            "PLAB_REDIS_USERNAME": "plab-cp",
            "PLAB_REDIS_PASSWORD": cp,
            "PLAB_DURABILITY": "replicated",
        }
    )
    plane = connect(settings)
    assert plane.get("{plab}:ha-check") == b"x"
