"""A three-master Redis Cluster on loopback for the cluster-mode tests: three
``redis-server --cluster-enabled yes`` nodes, each a ``RedisProcess`` in its own
temp dir (AOF on, its ``nodes.conf`` there too), one shared password
(``requirepass`` and ``masterauth``), joined by ``redis-cli --cluster create
... --cluster-replicas 0``. No replicas: a master that goes down takes its slots
with it until it is back (``restart``).

Ports: a node's cluster bus listens on its port + 10000, so each node gets a
port whose +10000 is free too, both below the kernel's ephemeral range (where
other tests' ``free_port`` picks land).

Ready means: ``CLUSTER INFO`` says ``cluster_state:ok`` with every slot assigned
and every node known, on every node.

The planes reach it as ``PLAB_REDIS_URL=redis+cluster://127.0.0.1:<port>``
(``url``); the in-process layer (tests/inprocess.py) treats the cluster as it
treats one ``RedisProcess`` (``url``, ``password``, ``tls``, ``client_options``,
``stop``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import socket
import subprocess  # runs redis-cli --cluster create  # nosec B404
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from productionlab.configfiles import RedisUser, render_redis_conf
from productionlab.procutil import find_binary
from productionlab.redis_process import HOST, RedisProcess
from tests.topology_wait import wait_until_ready

MASTERS = 3
NODE_TIMEOUT_MS = 2000
READY_TIMEOUT = 60.0
SLOTS = 16384
# Below the ephemeral range (32768-60999 by default), bus ports included.
PORT_RANGE = (15000, 22000)
BUS_OFFSET = 10000
# One ACL rule: a selector "( ... )" is one argument of ACL SETUSER.
ACL_RULE = re.compile(r"\([^)]*\)|\S+")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A port free for the node and for its cluster bus (port + 10000)."""
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(*PORT_RANGE)
        if port in taken or port + BUS_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise AssertionError("no free port pair (port, port + 10000) on loopback")


def cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER INFO")
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):  # some redis-py versions parse it
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


@dataclass
class RedisClusterKit:
    password: str = field(default_factory=lambda: secrets.token_hex(24))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="plab-cluster-")))
    appendfsync: str = "everysec"
    nodes: list[RedisProcess] = field(default_factory=list)
    tls = None  # plain TCP (the TLS pass is make test-redis-tls, on one redis)

    @property
    def url(self) -> str:
        """What the planes are given as ``PLAB_REDIS_URL`` (one seed node; the
        client discovers the others)."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def client_options(self) -> dict[str, object]:
        return {"host": HOST, "port": self.nodes[0].port, "password": self.password}

    def client(self, **overrides: object) -> RedisCluster:
        """A new cluster client (the caller closes it); ``overrides``: other options."""
        options: dict = {"password": self.password, "socket_timeout": 5, **overrides}
        return RedisCluster(host=HOST, port=self.nodes[0].port, **options)

    def _node(self, index: int, port: int) -> RedisProcess:
        return RedisProcess(
            password=self.password,
            appendfsync=self.appendfsync,
            directory=self.root / f"node{index}",
            port=port,
            config={
                "cluster-enabled": "yes",
                "cluster-config-file": str(self.root / f"node{index}" / "nodes.conf"),
                "cluster-node-timeout": str(NODE_TIMEOUT_MS),
                "masterauth": self.password,
            },
        )

    def start(self) -> RedisClusterKit:
        try:
            taken: set[int] = set()
            for index in range(MASTERS):
                for attempt in range(3):  # another process may take the port meanwhile
                    port = cluster_port(taken)
                    node = self._node(index, port)
                    try:
                        node.start()
                        break
                    except Exception:
                        if attempt == 2:
                            raise
                taken |= {port, port + BUS_OFFSET}
                self.nodes.append(node)
            self._create()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        cli = find_binary("redis-cli")
        if cli is None:
            raise AssertionError("redis-cli is not installed")
        addresses = [f"{HOST}:{n.port}" for n in self.nodes]
        argv = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        argv.append("--cluster-yes")
        done = subprocess.run(  # our binary, our nodes  # nosec B603
            argv,
            env={**os.environ, "REDISCLI_AUTH": self.password},  # not on the command line
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def _ready_problem(self) -> str | None:
        for node in self.nodes:
            assert node.client is not None
            info = cluster_info(node.client)
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state {info.get('cluster_state')}"
            if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                return f"node {node.port}: {info.get('cluster_slots_ok')} slots ok"
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return f"node {node.port}: knows {info.get('cluster_known_nodes')} nodes"
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        wait_until_ready(self._ready_problem, "the cluster", timeout)

    def add_users(self, users: list[RedisUser]) -> None:
        """The planes' ACL users as productionlab/templates/redis.conf.j2 renders
        them (the local stack's and compose's rules), on every master (each
        cluster node keeps its own ACL)."""
        conf = render_redis_conf(port=1, data_dir="/unused", users=users)
        names = {user.name for user in users}
        for line in conf.splitlines():
            parts = ACL_RULE.findall(line)
            if len(parts) > 2 and parts[0] == "user" and parts[1] in names:
                for node in self.nodes:
                    assert node.client is not None
                    node.client.execute_command("ACL", "SETUSER", parts[1], "reset", *parts[2:])

    def node_for(self, key: str) -> RedisProcess:
        """The master that owns ``key``'s slot."""
        return self.owner_of_slot(self.slot_of(key))

    def node_id(self, node: RedisProcess) -> str:
        assert node.client is not None
        ident = node.client.execute_command("CLUSTER MYID")
        return ident.decode() if isinstance(ident, bytes) else str(ident)

    def owner_of_slot(self, slot: int) -> RedisProcess:
        for node in self.nodes:
            assert node.client is not None
            for start, end, *_rest in node.client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end and int(_rest[0][1]) == node.port:
                    return node
        raise AssertionError(f"no node owns slot {slot}")

    def slot_of(self, key: str) -> int:
        assert self.nodes[0].client is not None
        return int(self.nodes[0].client.execute_command("CLUSTER KEYSLOT", key))

    def move_slot(
        self,
        slot: int,
        target: RedisProcess,
        batch: int = 10,
        pause: float = 0.02,
        during: Callable[[], None] | None = None,
    ) -> int:
        """Move ``slot`` to ``target`` the way ``redis-cli --cluster reshard`` does
        (the Redis Cluster specification's live resharding): SETSLOT IMPORTING on
        the target, MIGRATING on the owner, MIGRATE of its keys ``batch`` at a time
        (``pause`` between batches, so traffic meets the slot half moved), then
        SETSLOT NODE on the target, the owner and the others. ``during`` runs once,
        after the first batch. Returns how many keys moved."""
        source = self.owner_of_slot(slot)
        if source is target:
            return 0
        assert source.client is not None and target.client is not None
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        for _ in range(100_000):  # bounded: each round moves up to ``batch`` keys
            keys = source.client.execute_command("CLUSTER GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.client.execute_command(
                "MIGRATE", HOST, target.port, "", 0, 10_000, "AUTH", self.password, "KEYS", *keys
            )
            moved += len(keys)
            if during is not None:
                during()
                during = None
            time.sleep(pause)
        else:
            raise AssertionError(f"slot {slot} never emptied")
        if during is not None:
            during()
        for node in (target, source, *[n for n in self.nodes if n not in (target, source)]):
            assert node.client is not None
            node.client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self._settle(slot, target, target_id)
        return moved

    def _claimed_by(self, node: RedisProcess, slot: int) -> int | None:
        """The port of the master that ``node``'s own view says owns ``slot``."""
        assert node.client is not None
        for start, end, master, *_replicas in node.client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        return None

    def _settle(self, slot: int, target: RedisProcess, target_id: str) -> None:
        """Wait (bounded) until every master's view names ``target`` for ``slot``.
        A claim that crossed the SETSLOTs on the cluster bus can win back a node's
        view (seen once in CI: afterwards no master claimed the slot for itself);
        then the target claims it again under a new epoch, as ``redis-cli --cluster
        fix`` does."""
        assert target.client is not None
        views: dict[int, int | None] = {}
        for attempt in range(300):  # bounded: ~30 s
            views = {n.port: self._claimed_by(n, slot) for n in self.nodes}
            if set(views.values()) == {target.port}:
                return
            if attempt % 20 == 19:
                target.client.execute_command("CLUSTER BUMPEPOCH")
                for node in (target, *[n for n in self.nodes if n is not target]):
                    assert node.client is not None
                    node.client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            time.sleep(0.1)
        raise AssertionError(f"no agreement that {target.port} owns slot {slot}: {views}")

    def keys_per_node(self) -> dict[int, int]:
        """``DBSIZE`` of each master, by port."""
        return {n.port: int(n.client.dbsize()) for n in self.nodes if n.client is not None}

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL one master; its directory (AOF, nodes.conf) stays for ``restart``."""
        assert node.process is not None
        node.process.kill()
        node.process.wait(10)
        with contextlib.suppress(Exception):
            node.client.close()  # type: ignore[union-attr]

    def restart(self, node: RedisProcess) -> RedisProcess:
        """The killed ``node`` again on its port, from its AOF and nodes.conf; waits
        until the cluster is whole again."""
        index = self.nodes.index(node)
        again = self._node(index, node.port)
        again.start()
        self.nodes[index] = again
        self.wait_ready()
        return again

    def restart_all(self) -> None:
        """Every master again (after ``kill`` of each) on its port, from its AOF and
        nodes.conf; waits until the cluster is whole."""
        for index, node in enumerate(self.nodes):
            again = self._node(index, node.port)
            again.start()
            self.nodes[index] = again
        self.wait_ready()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
