"""A Sentinel topology on loopback for the failover tests: one primary, two
replicas and three sentinels (``redis-server --sentinel``), each a
``RedisProcess`` on a free port in its own temp dir, AOF on, one shared
password (``masterauth`` on the data nodes, ``auth-pass`` on the sentinels).

The sentinels carry the ACL the deployment renders (configfiles.SentinelUsers,
the same code): no anonymous client; the planes' user (``PLANE_USER``: both
in-process planes share one, as they share the default user elsewhere; the data
nodes know it too) may only discover; the sentinels use ``plab-sentinel`` with
each other; our own clients of the sentinels log in as the admin user.

``min_replicas`` sets ``min-replicas-to-write`` (with ``min-replicas-max-lag``)
on every data node, so whichever one is promoted keeps refusing writes once it
has no replica. Sentinels notice a dead primary after ``DOWN_AFTER_MS`` and
need ``QUORUM`` of them to agree before one of them fails over.

``separate_addresses``: each process binds (and connects from, with
``bind-source-addr``) its own loopback address (``ADDRESSES``), so firewall
rules in a private network namespace can cut the primary off from the replicas
and sentinels while the planes, on 127.0.0.1, still reach it
(tests/partition_kit.py). Otherwise every process is on 127.0.0.1.

Ready means: both replicas are online at the primary and every sentinel sees
the primary, both replicas and the two other sentinels.

Below the topology: both planes in process over it (``planes_over``) and the
write and read load the failover tests drive through them (``FailoverLoad``).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from productionlab.configfiles import RedisUser, SentinelUsers
from productionlab.redis_process import HOST, RedisProcess
from productionlab.secretgen import ensure_secrets
from productionlab.serve import bootstrap_control_plane
from productionlab.services import services_of
from tests.inprocess import Planes, create_apps, stop_listeners
from tests.layout_kit import item_of
from tests.topology_wait import wait_until_ready

SERVICE = "plab"
QUORUM = 2
PLANE_USER = "plab-planes"
PEER_USER = "plab-sentinel"
ADMIN_USER = "plab-sentinel-admin"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 10_000
MIN_REPLICAS_MAX_LAG = 10
READY_TIMEOUT = 60.0
WRITERS = 3
READERS = 1
LOAD_ENV = {"PLAB_USER_RATE": "10000000/minute", "PLAB_VERIFY_CACHE_SECONDS": "300"}
# One loopback address per process when separate_addresses (the planes stay on HOST).
ADDRESSES = {
    "primary": "127.0.0.2",
    "replica1": "127.0.0.3",
    "replica2": "127.0.0.4",
    "sentinel1": "127.0.0.5",
    "sentinel2": "127.0.0.6",
    "sentinel3": "127.0.0.7",
}


def as_directives(lines: list[str]) -> dict[str, str]:
    """Config lines as ``RedisProcess`` config (it writes ``name value``): the first
    two words name each ("user plab-planes", "sentinel sentinel-user")."""
    return {" ".join(line.split(" ", 2)[:2]): line.split(" ", 2)[2] for line in lines}


@dataclass
class SentinelTopology:
    min_replicas: int = 0
    separate_addresses: bool = False
    password: str = field(default_factory=lambda: secrets.token_hex(24))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="plab-sentinel-")))
    primary: RedisProcess | None = None
    replicas: list[RedisProcess] = field(default_factory=list)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What the planes are given as ``PLAB_REDIS_URL``."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def address(self, name: str) -> str:
        return ADDRESSES[name] if self.separate_addresses else HOST

    def sentinel_users(self) -> SentinelUsers:
        """The sentinels' ACL, every user with the topology's password."""
        return SentinelUsers(
            planes=[RedisUser(PLANE_USER, self.password)],
            peer=RedisUser(PEER_USER, self.password),
            admin=RedisUser(ADMIN_USER, self.password),
        )

    def _source(self, name: str) -> dict[str, str]:
        """Outgoing connections from the process's own address (replication, sentinel links)."""
        return {"bind-source-addr": ADDRESSES[name]} if self.separate_addresses else {}

    def _data_config(self, name: str, replicaof: RedisProcess | None) -> dict[str, str]:
        config = {
            "masterauth": self.password,
            "min-replicas-to-write": str(self.min_replicas),
            "min-replicas-max-lag": str(MIN_REPLICAS_MAX_LAG),
            f"user {PLANE_USER}": f"on #{RedisUser(PLANE_USER, self.password).password_sha256}"
            " ~* &* +@all",
            **self._source(name),
        }
        if replicaof is not None:
            config["replicaof"] = f"{replicaof.host} {replicaof.port}"
        return config

    def _data_node(self, name: str, replicaof: RedisProcess | None) -> RedisProcess:
        node = RedisProcess(
            password=self.password,
            directory=self.root / name,
            config=self._data_config(name, replicaof),
            host=self.address(name),
        )
        node.start()
        return node

    def _sentinel_config(self, name: str, primary: RedisProcess) -> dict[str, str]:
        return {  # "monitor" first: the other lines name the service it declares
            "sentinel monitor": f"{SERVICE} {primary.host} {primary.port} {QUORUM}",
            "sentinel auth-pass": f"{SERVICE} {self.password}",
            "sentinel down-after-milliseconds": f"{SERVICE} {DOWN_AFTER_MS}",
            "sentinel failover-timeout": f"{SERVICE} {FAILOVER_TIMEOUT_MS}",
            "sentinel parallel-syncs": f"{SERVICE} 1",
            **as_directives(self.sentinel_users().lines()),
            **self._source(name),
        }

    def start(self) -> SentinelTopology:
        try:
            self.primary = self._data_node("primary", None)
            for n in (1, 2):
                self.replicas.append(self._data_node(f"replica{n}", self.primary))
            for n in (1, 2, 3):
                sentinel = RedisProcess(
                    password=self.password,
                    username=ADMIN_USER,
                    sentinel=True,
                    directory=self.root / f"sentinel{n}",
                    config=self._sentinel_config(f"sentinel{n}", self.primary),
                    host=self.address(f"sentinel{n}"),
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
            if (master["ip"], int(master["port"])) != (self.primary.host, self.primary.port):
                return f"sentinel {sentinel.port} names port {master['port']}"
            if master["num-slaves"] < len(self.replicas):
                return f"sentinel {sentinel.port} sees {master['num-slaves']} replicas"
            if master["num-other-sentinels"] < len(self.sentinels) - 1:
                return f"sentinel {sentinel.port} sees {master['num-other-sentinels']} sentinels"
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        wait_until_ready(self._ready_problem, "the Sentinel topology", timeout)

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

    def wait_for_new_master(self, old_port: int, timeout: float) -> int | None:
        """The port of the primary the sentinels agree on once it is not ``old_port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.master_port()
            if port is not None and port != old_port:
                return port
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        for node in (*self.sentinels, *self.replicas, self.primary):
            if node is not None:
                node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- the planes over it, and the load ---------------------------------------------
def planes_over(primary: RedisProcess, url: str | None, extra: dict[str, str]) -> Planes:
    """Both planes over ``url`` (default: ``primary``'s own), bootstrapped, with an admin."""
    state = Path(tempfile.mkdtemp(prefix="plab-failover-"))
    env = {**LOAD_ENV, **extra, **({"PLAB_REDIS_URL": url} if url else {})}
    if url and url.startswith("redis+sentinel://"):
        env["PLAB_REDIS_USERNAME"] = PLANE_USER  # the user SentinelTopology's nodes know
    try:
        ensure_secrets(state / "secrets")
        apps = create_apps(primary, state, env)
    except BaseException:
        shutil.rmtree(state, ignore_errors=True)
        raise
    try:
        bootstrap_control_plane(services_of(apps["cp"]))
    except BaseException:
        stop_listeners(list(apps.values()))
        shutil.rmtree(state, ignore_errors=True)
        raise
    password = (state / "secrets" / "admin.password").read_text().strip()
    return Planes(primary, apps["ap"], apps["cp"], state, password)


def close_planes(planes: Planes) -> None:
    stop_listeners([planes.ap, planes.cp])
    shutil.rmtree(planes.state, ignore_errors=True)


@dataclass
class Answer:
    kind: str  # "write" or "read"
    started: float
    ended: float
    status: int
    retry_after: bool
    body: str


WARM_ACKS = 150  # acknowledged writes before the fault
WARM_LIMIT = 20.0  # seconds, whatever the machine's speed


def warmed_load(planes: Planes) -> FailoverLoad:
    """A started load over ``planes`` once it has some acknowledged writes
    (WARM_ACKS, or what WARM_LIMIT seconds gave; at least one)."""
    load = FailoverLoad(planes)
    load.start()
    deadline = time.monotonic() + WARM_LIMIT
    while load.acked_count() < WARM_ACKS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert load.acked_count() > 0, "no write was acknowledged before the fault"
    return load


@dataclass
class FailoverLoad:
    """Writers PUT unique keys and record each acknowledged (key, value); readers
    GET acknowledged keys. Every answer is kept."""

    planes: Planes
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    answers: list[Answer] = field(default_factory=list)
    acked: list[tuple[str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _record(self, kind: str, started: float, response) -> None:
        answer = Answer(
            kind,
            started,
            time.monotonic(),
            response.status_code,
            "Retry-After" in response.headers,
            response.text[:200] if response.status_code >= 400 else "",
        )
        with self.lock:
            self.answers.append(answer)

    def _write(self, writer: int) -> None:
        admin = self.planes.admin()
        n = 0
        while not self.stop.is_set():
            n += 1
            key, value = f"fo-{self.run}-{writer}-{n}", secrets.token_hex(8)
            started = time.monotonic()
            response = admin.put(f"/v1/kv/{key}", data=value.encode())
            self._record("write", started, response)
            if response.status_code in (200, 201):
                with self.lock:
                    self.acked.append((key, value))
            elif response.status_code == 503:
                time.sleep(0.05)

    def _read(self) -> None:
        admin = self.planes.admin()
        rng = secrets.SystemRandom()
        while not self.stop.is_set():
            with self.lock:
                pick = rng.choice(self.acked) if self.acked else None
            if pick is None:
                time.sleep(0.01)
                continue
            started = time.monotonic()
            self._record("read", started, admin.get(f"/v1/kv/{pick[0]}"))

    def start(self) -> None:
        for writer in range(WRITERS):
            self.threads.append(threading.Thread(target=self._write, args=(writer,), daemon=True))
        for _ in range(READERS):
            self.threads.append(threading.Thread(target=self._read, daemon=True))
        for thread in self.threads:
            thread.start()

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def lost_on(self, client: redis.Redis) -> list[str]:
        """The acknowledged writes ``client``'s server does not hold (call after ``halt``)."""
        with client.pipeline(transaction=False) as pipe:
            for key, _value in self.acked:
                pipe.hget(item_of(key), "v")
            stored = pipe.execute()
        return [k for (k, v), got in zip(self.acked, stored, strict=True) if got != v.encode()]

    def first_write_back(self, after: float) -> Answer | None:
        """The first acknowledged write sent after ``after`` (the kill)."""
        with self.lock:
            back = [
                a
                for a in self.answers
                if a.kind == "write" and a.started > after and a.status < 300
            ]
        return min(back, key=lambda a: a.ended) if back else None
