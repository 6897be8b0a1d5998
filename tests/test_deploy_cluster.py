"""What ``productionlab.deploy`` renders for compose's ``cluster`` profile (issue 12,
item 3): redis.conf for cluster masters (cluster bus over TLS, nodes.conf in the
data volume), the joining user, cluster.env, the durabilities the cluster topology
refuses, and the profile's services in docker-compose.yml. The rendered config is
then run for real on loopback: three masters joined by the profile's own join
script (docker/redis-cluster/join.sh), which a second run leaves alone, and the
planes' own client over TLS as a plane's ACL user. (The compose profile itself is
proven by ``make e2e``, e2e/test_cluster_profile.py.)"""

from __future__ import annotations

import os
import subprocess  # runs the join script  # nosec B404
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from cryptography import x509

from productionlab import deploy
from productionlab.settings import ConfigError, Settings, secret_problem
from productionlab.store.connection import cluster_seeds, connect
from tests.cluster_kit import BUS_OFFSET, SLOTS, cluster_info, cluster_port
from tests.test_deploy import COMPOSE_FILE
from tests.test_deploy_ha import (
    assert_a_confined_redis_side_service,
    client,
    eventually,
    password,
    started,
)
from tests.test_settings import strong_env

JOIN_SCRIPT = Path(__file__).parent.parent / "docker" / "redis-cluster" / "join.sh"
CLUSTER_SERVICES = (*deploy.CLUSTER_NODES, deploy.CLUSTER_INIT)


@pytest.fixture
def cluster_secrets(tmp_path) -> Path:
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory, topology="cluster")
    return directory


def conf_lines(directory: Path) -> list[str]:
    return (directory / deploy.CLUSTER_CONF).read_text().splitlines()


def test_cluster_redis_conf_enables_the_cluster_over_tls_with_its_state_in_the_volume(
    cluster_secrets,
):
    lines = conf_lines(cluster_secrets)
    for line in (
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-require-full-coverage no",
        "tls-cluster yes",
        "port 0",
        "tls-port 6379",
        "tls-auth-clients yes",
        "dir /data",
        "appendonly yes",
        "appendfsync everysec",
    ):
        assert line in lines, line
    # no replicas here: nothing waits for one
    assert not any(line.startswith(("masterauth", "min-replicas-to-write")) for line in lines)
    users = {line.split()[1]: line for line in lines if line.startswith("user ")}
    assert set(users) == {"default", "plab-ap", "plab-cp", "plab-health", "plab-cluster"}
    assert users["plab-cluster"].endswith("resetkeys resetchannels -@all +cluster +info +ping")
    health = "-@all +ping +cluster|info +cluster|nodes +cluster|slots nopass"
    assert users["plab-health"].endswith(health)
    for plane in ("plab-ap", "plab-cp"):
        assert "+cluster|slots +cluster|info" in users[plane], plane
    secret = password(cluster_secrets, deploy.CLUSTER_PASSWORD)
    assert secret_problem(deploy.CLUSTER_PASSWORD, secret) is None
    assert not any(secret in line for line in lines)


def test_redis_conf_has_no_cluster_settings_and_no_cluster_user_in_any_topology(tmp_path):
    """The ``redis`` service runs redis.conf in every profile: in the cluster profile
    it still starts (it has no profile), as the single topology's redis, and must
    not become a lone cluster node."""
    single = tmp_path / "single"
    deploy.prepare_secrets(single)
    for topology in deploy.TOPOLOGIES:
        directory = tmp_path / topology
        deploy.prepare_secrets(directory, topology=topology)
        conf = (directory / "redis.conf").read_text()
        assert "cluster-enabled" not in conf and "tls-cluster yes" not in conf, topology
        assert "user plab-cluster" not in conf, topology
        (health,) = (line for line in conf.splitlines() if line.startswith("user plab-health"))
        assert health.endswith("-@all +ping nopass"), topology
        assert (directory / deploy.CLUSTER_ENV).exists() == (topology == "cluster"), topology
        # what compose names exists in every topology
        assert (directory / deploy.CLUSTER_PASSWORD).exists(), topology
        assert "cluster-enabled yes" in (directory / deploy.CLUSTER_CONF).read_text(), topology
    # the cluster topology's redis.conf is the single topology's, but for its passwords
    plain = (single / "redis.conf").read_text()
    clustered = (tmp_path / "cluster" / "redis.conf").read_text()
    assert len(plain.splitlines()) == len(clustered.splitlines())


def test_cluster_env_points_the_planes_at_the_three_masters(cluster_secrets):
    env = dict(
        line.split("=", 1)
        for line in (cluster_secrets / deploy.CLUSTER_ENV).read_text().splitlines()
        if line and not line.startswith("#")
    )
    url = "redis+cluster://198.18.241.246:6379,198.18.241.247:6379,198.18.241.248:6379"
    assert env == {
        "COMPOSE_PROFILES": "cluster",
        "PLAB_SECRETS_DIR": str(cluster_secrets.resolve()),
        "PLAB_REDIS_URL": url,
        "PLAB_DURABILITY": "everysec",
        "PLAB_REDIS_CLUSTER_1_ADDRESS": "198.18.241.246",
        "PLAB_REDIS_CLUSTER_2_ADDRESS": "198.18.241.247",
        "PLAB_REDIS_CLUSTER_3_ADDRESS": "198.18.241.248",
    }
    # the planes accept it and seed their client with every master
    Settings.from_env({**strong_env(), "PLAB_REDIS_URL": url, "PLAB_DURABILITY": "everysec"})
    seeds = [(node.host, node.port) for node in cluster_seeds(url)]
    assert seeds == [(address, 6379) for address in deploy.CLUSTER_ADDRESSES.values()]
    assert not set(deploy.CLUSTER_ADDRESSES.values()) & set(deploy.HA_ADDRESSES.values())


@pytest.mark.parametrize("durability", ["strict", "replicated"])
def test_durabilities_the_planes_refuse_with_a_cluster_are_refused(tmp_path, capsys, durability):
    with pytest.raises(ConfigError, match="not supported with --topology cluster"):
        deploy.prepare_secrets(tmp_path / "a", topology="cluster", durability=durability)
    assert not (tmp_path / "a").exists()
    argv = ["secrets", "--dir", str(tmp_path / "b"), "--topology", "cluster"]
    assert deploy.main([*argv, "--durability", durability]) == 2
    err = capsys.readouterr().err
    assert f"durability '{durability}' is not supported with --topology cluster" in err
    assert "redis+cluster://" in err
    assert not (tmp_path / "b").exists()
    # without --durability the cluster topology takes everysec
    assert deploy.main(argv) == 0
    assert "PLAB_DURABILITY=everysec" in (tmp_path / "b" / deploy.CLUSTER_ENV).read_text()


def test_the_server_certificate_names_every_master_and_is_a_client_certificate(tmp_path):
    directory = tmp_path / "secrets"
    deploy.prepare_secrets(directory)  # first the single topology: a server-only certificate
    deploy.prepare_secrets(directory, topology="cluster")  # now cluster: issued again
    cert = x509.load_pem_x509_certificate((directory / "redis_server_crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(deploy.CLUSTER_NODES) <= set(names.get_values_for_type(x509.DNSName))
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert set(deploy.CLUSTER_ADDRESSES.values()) <= addresses
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in set(usage)  # the cluster bus


def test_a_weak_cluster_password_is_refused_and_its_hash_not_rendered(cluster_secrets):
    rendered = (cluster_secrets / deploy.CLUSTER_CONF).read_text()
    weak = cluster_secrets / deploy.CLUSTER_PASSWORD
    weak.chmod(0o600)
    weak.write_text("changeme\n")
    with pytest.raises(ConfigError, match="PLAB_REDIS_CLUSTER_PASSWORD"):
        deploy.prepare_secrets(cluster_secrets, topology="cluster")
    assert (cluster_secrets / deploy.CLUSTER_CONF).read_text() == rendered


# --- docker-compose.yml ---------------------------------------------------------
def test_the_cluster_services_exist_only_in_the_profile_and_are_confined():
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    services = document["services"]
    for name in CLUSTER_SERVICES:
        assert_a_confined_redis_side_service(services[name], name, "cluster")
    for name in deploy.CLUSTER_NODES:
        service = services[name]
        address = f"${{{deploy.address_variable(name)}:-{deploy.CLUSTER_ADDRESSES[name]}}}"
        assert service["networks"] == {"backend": {"ipv4_address": address}}, name
        assert service["command"] == [
            "redis-server",
            "/run/secrets/redis_cluster_conf",
            "--cluster-announce-ip",
            address,
        ], name
        # AOF and nodes.conf in the node's own volume; nothing else writable but /tmp
        assert service["volumes"] == [f"{name}-data:/data"], name
        assert "cluster_state:ok" in service["healthcheck"]["test"][-1], name
        assert "redis_cluster_password" not in service["secrets"], name
        assert "redis_conf" not in service["secrets"], name
    init = services[deploy.CLUSTER_INIT]
    assert init["restart"] == "no"
    assert init["networks"] == ["backend"]
    assert init["depends_on"] == {n: {"condition": "service_started"} for n in deploy.CLUSTER_NODES}
    assert init["volumes"] == ["./docker/redis-cluster/join.sh:/usr/local/bin/plab-join:ro"]
    assert init["command"] == ["sh", "/usr/local/bin/plab-join"]
    nodes = " ".join(
        f"${{{deploy.address_variable(n)}:-{a}}}:6379" for n, a in deploy.CLUSTER_ADDRESSES.items()
    )
    assert init["environment"]["PLAB_CLUSTER_NODES"] == nodes
    assert "redis_cluster_password" in init["secrets"]
    assert "redis_server_key" not in init["secrets"]
    for name, service in services.items():
        if name not in CLUSTER_SERVICES:
            assert service.get("profiles") in (None, ["ha"]), name
    env = document["x-app-env"]
    assert env["PLAB_REDIS_URL"] == "${PLAB_REDIS_URL:-rediss://redis:6379/0}"
    for volume in (f"{n}-data" for n in deploy.CLUSTER_NODES):
        assert volume in document["volumes"], volume
    assert document["secrets"]["redis_cluster_password"] == {
        "file": "${PLAB_SECRETS_DIR:-./secrets}/redis_cluster_password"
    }
    assert document["secrets"]["redis_cluster_conf"] == {
        "file": "${PLAB_SECRETS_DIR:-./secrets}/redis-cluster.conf"
    }


# --- the rendered config and the join script, run ------------------------------
def join(secrets_dir: Path, ports: list[int]) -> subprocess.CompletedProcess:
    """docker/redis-cluster/join.sh as the init service runs it, on loopback."""
    return subprocess.run(  # our script, our nodes  # nosec B603 B607
        ["sh", str(JOIN_SCRIPT)],
        env={
            **os.environ,
            "PLAB_CLUSTER_NODES": " ".join(f"127.0.0.1:{port}" for port in ports),
            "PLAB_CLUSTER_SECRETS": str(secrets_dir),
            "PLAB_CLUSTER_WAIT": "120",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class LoopbackCluster:
    """Three masters from the rendered redis.conf: only the paths and the bind
    address are replaced, and each announces 127.0.0.1 where compose gives it a
    fixed backend address."""

    def __init__(self, secrets_dir: Path, root: Path) -> None:
        self.secrets, self.root = secrets_dir, root
        taken: set[int] = set()
        self.ports: list[int] = []
        for _ in deploy.CLUSTER_NODES:
            port = cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            self.ports.append(port)
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        mount = str(deploy.SECRETS_MOUNT) + "/"
        conf = (self.secrets / deploy.CLUSTER_CONF).read_text()
        for index, port in enumerate(self.ports):
            data = self.root / f"node{index}"
            local = (
                conf.replace(mount, f"{self.secrets}/")
                .replace("dir /data", f"dir {data}")
                .replace("bind 0.0.0.0", "bind 127.0.0.1")
            )
            self.processes.append(
                started(
                    local,
                    data,
                    "--tls-port",
                    str(port),
                    "--cluster-announce-ip",
                    "127.0.0.1",
                )
            )

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)
        self.processes = []

    def node(self, port: int, user: str, secret: str | None) -> redis.Redis:
        return client(self.secrets, port, user, secret)

    def health_problem(self) -> str | None:
        """What a node's healthcheck (as plab-health) would still find wrong."""
        for port in self.ports:
            info = cluster_info(self.node(port, "plab-health", None))
            if info.get("cluster_state") != "ok":
                return f"{port}: cluster_state {info.get('cluster_state')}"
        return None


@pytest.fixture
def cluster_on_loopback(cluster_secrets, tmp_path) -> Iterator[LoopbackCluster]:
    nodes = LoopbackCluster(cluster_secrets, tmp_path / "nodes")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def plane_settings(nodes: LoopbackCluster, plane: str) -> Settings:
    seeds = ",".join(f"127.0.0.1:{port}" for port in nodes.ports)
    return Settings.from_env(
        {
            **strong_env(),
            "PLAB_REDIS_URL": f"redis+cluster://{seeds}",
            "PLAB_REDIS_TLS_CA_FILE": str(nodes.secrets / "redis_ca_crt"),
            "PLAB_REDIS_TLS_CERT_FILE": str(nodes.secrets / f"redis_{plane}_crt"),
            "PLAB_REDIS_TLS_KEY_FILE": str(nodes.secrets / f"redis_{plane}_key"),
            "PLAB_REDIS_USERNAME": f"plab-{plane}",
            "PLAB_REDIS_PASSWORD": password(nodes.secrets, f"redis_{plane}_password"),
        }
    )


def test_the_join_script_makes_one_cluster_and_a_second_run_changes_nothing(
    cluster_on_loopback,
):
    nodes = cluster_on_loopback
    first = join(nodes.secrets, nodes.ports)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating the cluster" in first.stdout
    assert "cluster_state:ok on every node" in first.stdout
    eventually(lambda: nodes.health_problem() is None, "every node healthy")

    cluster_secret = password(nodes.secrets, deploy.CLUSTER_PASSWORD)
    for port in nodes.ports:
        info = cluster_info(nodes.node(port, "plab-cluster", cluster_secret))
        assert info["cluster_state"] == "ok" and info["cluster_size"] == "3", port
        assert int(info["cluster_slots_assigned"]) == SLOTS, port
    joiner = nodes.node(nodes.ports[0], "plab-cluster", cluster_secret)
    with pytest.raises(redis.exceptions.NoPermissionError):
        joiner.get("{plab}:cluster-check")
    health = nodes.node(nodes.ports[0], "plab-health", None)
    assert len(health.execute_command("CLUSTER", "SLOTS")) == 3  # one range per master
    for command in (("CLUSTER", "MEET", "127.0.0.1", "1"), ("CLUSTER", "RESET"), ("INFO",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            health.execute_command(*command)

    # The planes' own client, over TLS with the server's address checked, as plab-cp
    # and plab-ap, seeded with every master.
    cp = connect(plane_settings(nodes, "cp"))
    assert cp.set("{plab}:cluster-check", "kept") is True
    owner = cp.get_node_from_key("{plab}:cluster-check")
    assert (owner.host, owner.port) in {("127.0.0.1", port) for port in nodes.ports}
    ap = connect(plane_settings(nodes, "ap"))
    assert ap.get("{plab}:cluster-check") == b"kept"
    with pytest.raises(redis.exceptions.NoPermissionError):
        ap.set("{plab}:users:x", "y")
    cp.close()
    ap.close()

    again = join(nodes.secrets, nodes.ports)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already joined: nothing to do" in again.stdout
    assert "creating" not in again.stdout

    # A part of the cluster named alone is neither new nor the whole: left alone.
    partial = join(nodes.secrets, nodes.ports[:2])
    assert partial.returncode == 1, partial.stdout + partial.stderr
    assert "changing nothing" in partial.stdout

    # Every master stopped and started again: the slot map from nodes.conf, the
    # data from the AOF, and the join script still has nothing to do.
    nodes.stop()
    nodes.start()
    eventually(lambda: nodes.health_problem() is None, "cluster_state:ok after the restart")
    after = join(nodes.secrets, nodes.ports)
    assert after.returncode == 0 and "already joined" in after.stdout, after.stdout + after.stderr
    cp = connect(plane_settings(nodes, "cp"))
    try:
        assert cp.get("{plab}:cluster-check") == b"kept"
    finally:
        cp.close()
