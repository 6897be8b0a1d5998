"""A Sentinel topology on loopback for the failover tests: one primary, two
replicas and three sentinels (``redis-server --sentinel``), each a
``RedisProcess`` on a free port in its own temp dir, AOF on, one shared
password (``masterauth`` on the data nodes, ``auth-pass`` on the sentinels;
the sentinels themselves take no password).

``min_replicas`` sets ``min-replicas-to-write`` (with ``min-replicas-max-lag``)
on every data node, so whichever one is promoted keeps refusing writes once it
has no replica. Sentinels notice a dead primary after ``DOWN_AFTER_MS`` and
need ``QUORUM`` of them to agree before one of them fails over.

Ready means: both replicas are online at the primary and every sentinel sees
the primary, both replicas and the two other sentinels.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from productionlab.redis_process import HOST, RedisProcess

SERVICE = "plab"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 10_000
MIN_REPLICAS_MAX_LAG = 10
READY_TIMEOUT = 60.0


@dataclass
class SentinelTopology:
    min_replicas: int = 0
    password: str = field(default_factory=lambda: secrets.token_hex(24))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="plab-sentinel-")))
    primary: RedisProcess | None = None
    replicas: list[RedisProcess] = field(default_factory=list)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What the planes are given as ``PLAB_REDIS_URL``."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _data_config(self, replicaof: int | None) -> dict[str, str]:
        config = {
            "masterauth": self.password,
            "min-replicas-to-write": str(self.min_replicas),
            "min-replicas-max-lag": str(MIN_REPLICAS_MAX_LAG),
        }
        if replicaof is not None:
            config["replicaof"] = f"{HOST} {replicaof}"
        return config

    def _data_node(self, name: str, replicaof: int | None) -> RedisProcess:
        node = RedisProcess(
            password=self.password,
            directory=self.root / name,
            config=self._data_config(replicaof),
        )
        node.start()
        return node

    def _sentinel_config(self, primary_port: int) -> dict[str, str]:
        return {  # "monitor" first: the other lines name the service it declares
            "sentinel monitor": f"{SERVICE} {HOST} {primary_port} {QUORUM}",
            "sentinel auth-pass": f"{SERVICE} {self.password}",
            "sentinel down-after-milliseconds": f"{SERVICE} {DOWN_AFTER_MS}",
            "sentinel failover-timeout": f"{SERVICE} {FAILOVER_TIMEOUT_MS}",
            "sentinel parallel-syncs": f"{SERVICE} 1",
        }

    def start(self) -> SentinelTopology:
        try:
            self.primary = self._data_node("primary", None)
            for n in (1, 2):
                self.replicas.append(self._data_node(f"replica{n}", self.primary.port))
            for n in (1, 2, 3):
                sentinel = RedisProcess(
                    password=False,
                    sentinel=True,
                    directory=self.root / f"sentinel{n}",
                    config=self._sentinel_config(self.primary.port),
                )
                sentinel.start()
                self.sentinels.append(sentinel)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready_problem(self) -> str | None:
        assert self.primary is not None and self.primary.client is not None
        info = self.primary.client.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        if sum(1 for v in online if v.get("state") == "online") < len(self.replicas):
            return f"primary has {len(online)} replicas online"
        for sentinel in self.sentinels:
            assert sentinel.client is not None
            master = sentinel.client.sentinel_master(SERVICE)
            if int(master["port"]) != self.primary.port:
                return f"sentinel {sentinel.port} names port {master['port']}"
            if master["num-slaves"] < len(self.replicas):
                return f"sentinel {sentinel.port} sees {master['num-slaves']} replicas"
            if master["num-other-sentinels"] < len(self.sentinels) - 1:
                return f"sentinel {sentinel.port} sees {master['num-other-sentinels']} sentinels"
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        problem: str | None = "not asked yet"
        while time.monotonic() < deadline:
            try:
                problem = self._ready_problem()
            except redis.RedisError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                return
            time.sleep(0.1)
        raise AssertionError(f"the Sentinel topology never got ready: {problem}")

    def data_nodes(self) -> list[RedisProcess]:
        return [n for n in (self.primary, *self.replicas) if n is not None]

    def kill_primary(self) -> RedisProcess:
        """SIGKILL the primary (it stays dead: no restart, so no stale primary returns)."""
        killed = self.primary
        assert killed is not None and killed.process is not None
        killed.process.kill()
        killed.process.wait(10)
        return killed

    def master_port(self) -> int | None:
        """The port the sentinels agree names the primary now (None if they do not agree)."""
        ports = set()
        for sentinel in self.sentinels:
            assert sentinel.client is not None
            try:
                ports.add(int(sentinel.client.sentinel_get_master_addr_by_name(SERVICE)[1]))
            except (redis.RedisError, TypeError):
                return None
        return ports.pop() if len(ports) == 1 else None

    def node_at(self, port: int) -> RedisProcess:
        return next(n for n in self.data_nodes() if n.port == port)

    def stop(self) -> None:
        for node in (*self.sentinels, *self.replicas, self.primary):
            if node is not None:
                node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
