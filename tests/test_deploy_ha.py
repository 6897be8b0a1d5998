"""What ``productionlab.deploy`` renders for compose's ``ha`` profile (issue 12,
item 1): redis.conf for replicated data nodes, sentinel.conf, ha.env, the server
certificate every node shares, the ``replicated`` durability refused for one
redis, and the profile's services in docker-compose.yml. The rendered files are
then run for real on loopback: a primary, a replica and a sentinel, over TLS
with the ACL users the files declare, and the planes' own client through the
sentinel. (The compose profile itself, with a failover, is proven by ``make e2e``,
e2e/test_ha.py.)"""

from __future__ import annotations

import hashlib
import os
import secrets as secrets_module
import shutil
import subprocess  # nosec B404
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml
from cryptography import x509

from productionlab import configfiles, deploy
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
        # only their own volume is writable besides /tmp (the start script is read-only)
        volume, *scripts = service["volumes"]
        assert volume == f"{name}-data:/data", name
        assert all(script.endswith(":ro") for script in scripts), name
    for name in deploy.HA_REPLICAS:
        command = services[name]["command"]
        assert command[:2] == ["redis-server", "/run/secrets/redis_conf"]
        primary = f"${{PLAB_REDIS_ADDRESS:-{deploy.HA_ADDRESSES['redis']}}}"
        assert command[2:] == ["--replicaof", primary, "6379"]
    for name in deploy.HA_SENTINELS:
        assert "sentinel_conf" in services[name]["secrets"]
        assert "redis_conf" not in services[name]["secrets"]
        script = "./docker/redis-sentinel/start.sh:/usr/local/bin/plab-sentinel-start:ro"
        assert services[name]["volumes"] == [f"{name}-data:/data", script], name
        assert services[name]["command"] == [
            "sh",
            "/usr/local/bin/plab-sentinel-start",
            "redis-server",
            "/data/sentinel.conf",
            "--sentinel",
        ], name
        # the healthcheck logs in as plab-health (PING only): no anonymous user
        assert "--user plab-health" in services[name]["healthcheck"]["test"][1], name
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


MOUNT = str(deploy.SECRETS_MOUNT) + "/"
SENTINELS = 3
START_SCRIPT = COMPOSE_FILE.parent / "docker" / "redis-sentinel" / "start.sh"


def local(text: str, secrets: Path, data: Path) -> str:
    """A rendered file on loopback: the secrets' and data's paths, 127.0.0.1."""
    return (
        text.replace(MOUNT, f"{secrets}/")
        .replace("dir /data", f"dir {data}")
        .replace("bind 0.0.0.0", "bind 127.0.0.1")
    )


def local_sentinel_conf(secrets: Path, data: Path, port: int, primary_port: int) -> str:
    """The rendered sentinel.conf on loopback: 127.0.0.1 stands for the primary's address."""
    return (
        local((secrets / "sentinel.conf").read_text(), secrets, data)
        .replace("tls-port 26379", f"tls-port {port}")
        .replace(
            f"monitor plab {deploy.HA_ADDRESSES['redis']} 6379",
            f"monitor plab 127.0.0.1 {primary_port}",
        )
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(30)


@pytest.fixture
def ha_on_loopback(ha_secrets, tmp_path) -> Iterator[dict]:
    """A primary and a replica from the rendered redis.conf, three sentinels from the
    rendered sentinel.conf: only the paths, ports and names are replaced (loopback
    has no compose addresses: 127.0.0.1 stands for each)."""
    ports = {"primary": free_port(), "replica": free_port()}
    sentinels = [free_port() for _ in range(SENTINELS)]
    ports["sentinel"] = sentinels[0]
    conf = (ha_secrets / "redis.conf").read_text()
    processes: dict[str, subprocess.Popen] = {}
    try:
        processes["primary"] = started(
            local(conf, ha_secrets, tmp_path / "primary"),
            tmp_path / "primary",
            "--tls-port",
            str(ports["primary"]),
        )
        processes["replica"] = started(
            local(conf, ha_secrets, tmp_path / "replica"),
            tmp_path / "replica",
            "--tls-port",
            str(ports["replica"]),
            "--replicaof",
            "127.0.0.1",
            str(ports["primary"]),
        )
        for n, port in enumerate(sentinels, 1):
            data = tmp_path / f"sentinel-{n}"
            text = local_sentinel_conf(ha_secrets, data, port, ports["primary"])
            processes[f"sentinel-{n}"] = started(text, data, "--sentinel")
        yield {
            "ports": ports,
            "sentinels": sentinels,
            "secrets": ha_secrets,
            "processes": processes,
        }
    finally:
        stop(list(processes.values()))


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


def plane_settings(secrets: Path, sentinel_ports: list[int]) -> Settings:
    """The control plane's settings over the sentinels, as its own redis user."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinel_ports)
    return Settings.from_env(
        {
            **strong_env(),
            "PLAB_REDIS_URL": f"redis+sentinel://{hosts}/plab/0",
            "PLAB_REDIS_TLS_CA_FILE": str(secrets / "redis_ca_crt"),
            "PLAB_REDIS_TLS_CERT_FILE": str(secrets / "redis_cp_crt"),
            "PLAB_REDIS_TLS_KEY_FILE": str(secrets / "redis_cp_key"),
            "PLAB_REDIS_USERNAME": "plab-cp",
            "PLAB_REDIS_PASSWORD": password(secrets, "redis_cp_password"),
            "PLAB_DURABILITY": "replicated",
        }
    )


def as_plane(secrets: Path, port: int) -> redis.Redis:
    return client(secrets, port, "plab-cp", password(secrets, "redis_cp_password"))


def as_admin(secrets: Path, port: int) -> redis.Redis:
    secret = password(secrets, deploy.SENTINEL_ADMIN_PASSWORD)
    return client(secrets, port, deploy.SENTINEL_ADMIN_USER, secret)


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
    # The link is up on the replica's side before the primary has its first ACK: until
    # then min-replicas-to-write 1 refuses the write (NOREPLICAS), as it should.
    assert eventually(lambda: primary.set("{plab}:ha-check", "x"), "a replica the primary counts")
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

    watcher = as_plane(secrets, ports["sentinel"])
    eventually(
        lambda: watcher.sentinel_master("plab")["num-slaves"] == 1,
        "the sentinel (as plab-sentinel, over TLS) sees the replica",
    )
    eventually(
        lambda: watcher.sentinel_master("plab")["num-other-sentinels"] == SENTINELS - 1,
        "the sentinels (as plab-sentinel with each other) see each other",
    )
    assert watcher.sentinel_get_master_addr_by_name("plab") == (b"127.0.0.1", ports["primary"])

    # The planes' own client, through the sentinel, with the server name checked.
    plane = connect(plane_settings(secrets, [ports["sentinel"]]))
    assert plane.get("{plab}:ha-check") == b"x"


# --- the sentinels' ACL ---------------------------------------------------------
def acl_lines(conf: str) -> dict[str, str]:
    return {
        line.split()[1]: line
        for line in conf.splitlines()
        if line.startswith("user ") or line.startswith("sentinel sentinel-")
    }


def test_sentinel_conf_has_no_anonymous_user_and_one_user_per_kind(ha_secrets):
    conf = (ha_secrets / "sentinel.conf").read_text()
    users = acl_lines(conf)
    assert users["default"] == "user default off resetpass resetchannels -@all"
    for plane in ("ap", "cp"):
        secret = password(ha_secrets, f"redis_{plane}_password")
        line = users[f"plab-{plane}"]
        assert f"#{hashlib.sha256(secret.encode()).hexdigest()}" in line
        assert secret not in conf
        assert line.endswith("-@all " + configfiles.SENTINEL_PLANE_RULES)
        assert "failover" not in line and "+sentinel " not in line + " "
    peer = users["plab-sentinel"]
    assert peer.endswith("-@all " + configfiles.SENTINEL_PEER_RULES)
    assert users["sentinel-user"] == "sentinel sentinel-user plab-sentinel"
    sentinel_secret = password(ha_secrets, "redis_sentinel_password")
    assert users["sentinel-pass"] == f"sentinel sentinel-pass {sentinel_secret}"
    admin_secret = password(ha_secrets, deploy.SENTINEL_ADMIN_PASSWORD)
    assert secret_problem(deploy.SENTINEL_ADMIN_PASSWORD, admin_secret) is None
    assert admin_secret not in conf
    assert users[deploy.SENTINEL_ADMIN_USER].endswith(configfiles.SENTINEL_ADMIN_RULES)
    assert users["plab-health"] == "user plab-health on nopass resetchannels -@all +ping"


def test_a_weak_sentinel_admin_password_is_refused(tmp_path):
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / deploy.SENTINEL_ADMIN_PASSWORD).write_text("password123\n")
    with pytest.raises(ConfigError, match="PLAB_REDIS_SENTINEL_ADMIN_PASSWORD"):
        deploy.prepare_secrets(directory, topology="ha")


def test_a_sentinel_refuses_anonymous_and_wrong_passwords_and_lets_a_plane_only_discover(
    ha_on_loopback,
):
    secrets, ports = ha_on_loopback["secrets"], ha_on_loopback["ports"]
    port = ports["sentinel"]
    plane = as_plane(secrets, port)
    eventually(lambda: plane.ping(), "the sentinel answers its plane user")

    anonymous = client(secrets, port, None, None)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.sentinel_get_master_addr_by_name("plab")
    for user in ("plab-cp", "plab-sentinel", deploy.SENTINEL_ADMIN_USER, "default"):
        with pytest.raises(redis.exceptions.AuthenticationError):
            client(secrets, port, user, "not-" + password(secrets, "redis_cp_password")).ping()
    # another plane's password does not open this plane's user
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(secrets, port, "plab-cp", password(secrets, "redis_ap_password")).ping()

    assert plane.sentinel_get_master_addr_by_name("plab") == (b"127.0.0.1", ports["primary"])
    assert plane.sentinel_master("plab")["name"] == "plab"
    for command in (
        ("SENTINEL", "FAILOVER", "plab"),
        ("SENTINEL", "SET", "plab", "down-after-milliseconds", "100"),
        ("SENTINEL", "REMOVE", "plab"),
        ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "yes"),
        ("SENTINEL", "CONFIG", "GET", "*"),
        ("SENTINEL", "MONITOR", "other", "127.0.0.1", str(ports["replica"]), "1"),
        ("SENTINEL", "RESET", "*"),
        ("ACL", "LIST"),
        ("SHUTDOWN", "NOSAVE"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            plane.execute_command(*command)
    peer = client(secrets, port, "plab-sentinel", password(secrets, "redis_sentinel_password"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        peer.execute_command("SENTINEL", "FAILOVER", "plab")
    with pytest.raises(redis.exceptions.NoPermissionError):
        peer.publish("other-channel", "x")
    health = client(secrets, port, "plab-health", "anything")
    assert health.ping() is True
    with pytest.raises(redis.exceptions.NoPermissionError):
        health.sentinel_get_master_addr_by_name("plab")

    # nothing above changed the sentinel; the operator's user may change it
    admin = as_admin(secrets, port)
    assert admin.sentinel_master("plab")["down-after-milliseconds"] == 5000
    assert admin.execute_command("SENTINEL", "SET", "plab", "down-after-milliseconds", "6000")
    assert admin.sentinel_master("plab")["down-after-milliseconds"] == 6000
    with pytest.raises(redis.exceptions.NoPermissionError):
        admin.execute_command("SHUTDOWN", "NOSAVE")


def acl_denials(admin: redis.Redis, user: str) -> list[str]:
    """What the ACL log says ``user`` was refused (commands, channels), not logins."""
    return [
        f"{entry['reason']} {entry['object']}"
        for entry in admin.acl_log(200)
        if entry["username"] == user and entry["reason"] != "auth"
    ]


def test_three_sentinels_with_the_rendered_acl_fail_over_when_the_primary_dies(ha_on_loopback):
    """A real failover: the sentinels agree the primary is down, elect a leader and
    promote the replica, talking to each other only as plab-sentinel; the plane's
    client follows, as plab-cp. The ACL log shows nothing either was refused."""
    secrets, ports = ha_on_loopback["secrets"], ha_on_loopback["ports"]
    sentinels = ha_on_loopback["sentinels"]
    planes = [as_plane(secrets, port) for port in sentinels]
    for watcher in planes:
        eventually(
            lambda w=watcher: (
                w.sentinel_master("plab")["num-other-sentinels"] == SENTINELS - 1
                and w.sentinel_master("plab")["num-slaves"] == 1
            ),
            "every sentinel sees the other two and the replica",
        )
    replica = client(secrets, ports["replica"], "plab-cp", password(secrets, "redis_cp_password"))
    eventually(
        lambda: replica.info("replication").get("master_link_status") == "up",
        "the replica is in sync",
    )
    plane = connect(plane_settings(secrets, sentinels))
    assert plane.set("{plab}:before", "1") is True

    primary = ha_on_loopback["processes"]["primary"]
    primary.kill()
    primary.wait(30)
    for watcher in planes:
        eventually(
            lambda w=watcher: (
                w.sentinel_get_master_addr_by_name("plab") == (b"127.0.0.1", ports["replica"])
            ),
            "every sentinel names the promoted replica",
            timeout=180.0,
        )
    assert replica.info("replication")["role"] == "master"
    # the plane's client finds the new primary (no replica left: min-replicas-to-write
    # refuses writes there, so it reads)
    assert eventually(lambda: plane.get("{plab}:before"), "the plane reads the new primary") == (
        b"1"
    )
    for port in sentinels:
        admin = as_admin(secrets, port)
        assert acl_denials(admin, "plab-sentinel") == [], port
        assert acl_denials(admin, "plab-cp") == [], port


# --- the start step: docker/redis-sentinel/start.sh -------------------------------
ACCESS_PREFIXES = (
    "user ",
    "sentinel sentinel-user ",
    "sentinel sentinel-pass ",
    "sentinel auth-user ",
    "sentinel auth-pass ",
)
STATE_ID = "0123456789abcdef0123456789abcdef01234567"


def previous_release_copy(rendered: str) -> str:
    """A sentinel's copy as the previous release left it in its volume: the rendered
    file without the ACL (that release rendered no "user" and no sentinel-user/-pass
    lines; the rest is unchanged), then the state lines a sentinel writes."""
    kept = [
        line
        for line in rendered.splitlines()
        if not line.startswith(("user ", "sentinel sentinel-user ", "sentinel sentinel-pass "))
    ]
    state = [
        "# Generated by CONFIG REWRITE",
        "protected-mode no",
        f"sentinel myid {STATE_ID}",
        "sentinel config-epoch plab 7",
        "sentinel leader-epoch plab 7",
        "sentinel current-epoch 7",
        "user default on nopass sanitize-payload ~* &* +@all",
    ]
    return "\n".join(kept + state) + "\n"


def run_start(rendered: Path, conf: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PLAB_SENTINEL_RENDERED": str(rendered), "PLAB_SENTINEL_CONF": str(conf)}
    return subprocess.run(  # nosec B603 - our script
        ["sh", str(START_SCRIPT), *command], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_start_step_copies_the_rendered_file_on_the_first_start(ha_secrets, tmp_path):
    conf = tmp_path / "data" / "sentinel.conf"
    conf.parent.mkdir()
    done = run_start(ha_secrets / "sentinel.conf", conf, "true")
    assert done.returncode == 0, done.stderr
    assert conf.read_text() == (ha_secrets / "sentinel.conf").read_text()
    assert conf.stat().st_mode & 0o777 == 0o600


def test_the_start_step_replaces_the_access_lines_and_keeps_the_state(ha_secrets, tmp_path):
    rendered = ha_secrets / "sentinel.conf"
    conf = tmp_path / "sentinel.conf"
    conf.write_text(previous_release_copy(rendered.read_text()) + "sentinel auth-pass plab old\n")
    done = run_start(rendered, conf, "true")
    assert done.returncode == 0, done.stderr
    lines = conf.read_text().splitlines()
    access = [line for line in lines if line.startswith(ACCESS_PREFIXES)]
    wanted = [
        line for line in rendered.read_text().splitlines() if line.startswith(ACCESS_PREFIXES)
    ]
    assert access == wanted  # once each, as rendered: the old default user and auth-pass gone
    for line in (f"sentinel myid {STATE_ID}", "sentinel current-epoch 7", "protected-mode no"):
        assert line in lines
    # after the monitor line, which the per-service lines need before them
    monitor = next(i for i, line in enumerate(lines) if line.startswith("sentinel monitor"))
    assert all(lines.index(line) > monitor for line in access)
    again = conf.read_text()
    assert run_start(rendered, conf, "true").returncode == 0
    assert conf.read_text() == again  # idempotent
    assert conf.stat().st_mode & 0o777 == 0o600


def test_an_upgraded_sentinel_starts_with_the_users_and_keeps_its_state(ha_secrets, tmp_path):
    """A sentinel volume from the previous release (no users; state written), the start
    step, the sentinel: anonymous refused, the plane discovers, its id and epoch kept;
    then a rotated plane password, restart: only the new one is accepted."""
    primary_port, port = free_port(), free_port()
    data = tmp_path / "volume"
    data.mkdir()
    rendered = tmp_path / "rendered.conf"
    rendered.write_text(local_sentinel_conf(ha_secrets, data, port, primary_port))
    conf = data / "sentinel.conf"
    conf.write_text(previous_release_copy(rendered.read_text()))
    old_cp = password(ha_secrets, "redis_cp_password")

    def start() -> subprocess.Popen:
        env = {
            **os.environ,
            "PLAB_SENTINEL_RENDERED": str(rendered),
            "PLAB_SENTINEL_CONF": str(conf),
        }
        with open(data / "log", "ab") as log:
            return subprocess.Popen(  # nosec B603 - our script
                ["sh", str(START_SCRIPT), REDIS_SERVER, str(conf), "--sentinel"],
                env=env,
                stdout=log,
                stderr=log,
            )

    process = start()
    try:
        admin = as_admin(ha_secrets, port)
        assert eventually(lambda: admin.execute_command("SENTINEL", "MYID"), "up") == (
            STATE_ID.encode()
        )
        assert admin.sentinel_master("plab")["config-epoch"] == 7
        with pytest.raises(redis.exceptions.AuthenticationError):
            client(ha_secrets, port, None, None).ping()
        plane = client(ha_secrets, port, "plab-cp", old_cp)
        assert plane.sentinel_get_master_addr_by_name("plab") == (b"127.0.0.1", primary_port)
        with pytest.raises(redis.exceptions.NoPermissionError):
            plane.execute_command("SENTINEL", "FAILOVER", "plab")
    finally:
        stop([process])

    # a password rotation: the next render, then a restart
    secret = ha_secrets / "redis_cp_password"
    secret.chmod(0o600)
    secret.write_text(secrets_module.token_hex(32) + "\n")
    (ha_secrets / "sentinel.conf").chmod(0o600)
    (ha_secrets / "sentinel.conf").write_text(deploy.sentinel_conf(ha_secrets))
    rendered.write_text(local_sentinel_conf(ha_secrets, data, port, primary_port))
    process = start()
    try:
        admin = as_admin(ha_secrets, port)
        assert eventually(lambda: admin.execute_command("SENTINEL", "MYID"), "up again") == (
            STATE_ID.encode()
        )
        with pytest.raises(redis.exceptions.AuthenticationError):
            client(ha_secrets, port, "plab-cp", old_cp).ping()
        new = client(ha_secrets, port, "plab-cp", password(ha_secrets, "redis_cp_password"))
        assert new.sentinel_get_master_addr_by_name("plab") == (b"127.0.0.1", primary_port)
    finally:
        stop([process])
