"""What a 2xx on a write means, and making it true.

``everysec``: the write is in redis's AOF buffer and fsynced within a second.
``strict``: the write is fsynced before we answer. Redis >= 7.2 gives that per
write with ``WAITAOF 1 0``; older servers give it only with
``appendfsync always``, which we check (cached for a few seconds) and refuse
writes with 503 when it does not hold, rather than acknowledge a weaker promise.
``replicated``: the write reached at least one replica before we answer
(``WAIT 1 <PLAB_REPLICA_TIMEOUT_MS>``, its count checked). When no replica
acknowledges in time the answer is 503 + Retry-After and the write is NOT
acknowledged, but it may still have been applied on the primary (and reach the
replicas later): redis has no rollback. A primary that has lost its replicas
should also refuse the write before running it: ``min-replicas-to-write 1``
in its redis.conf (docs/RELIABILITY.md, "Failover (Sentinel)").

``WAIT``/``WAITAOF`` count what their own connection wrote, so the write and the
wait share one pinned connection (store/pinning.py); if that connection dropped
in between, the answer is 503 (state unknown), never a WAIT on another one.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from productionlab.errors import StoreUnavailable
from productionlab.store.connection import info_of_every_master
from productionlab.store.pinning import StaleConnection

log = logging.getLogger("productionlab.durability")
CHECK_EVERY = 5.0
WAITAOF_TIMEOUT_MS = 2000
REPLICA_TIMEOUT_MS = 1000


class Durability:
    """``strict`` refuses writes it cannot make durable; ``fsync_when_possible``
    (the control plane's break-glass writes) waits for the fsync whenever the
    server supports WAITAOF, without refusing on older servers; ``replicated``
    answers 503 for a write no replica acknowledged within ``replica_timeout_ms``."""

    def __init__(
        self,
        client: redis.Redis,
        strict: bool,
        fsync_when_possible: bool = False,
        *,
        replicated: bool = False,
        replica_timeout_ms: int = REPLICA_TIMEOUT_MS,
    ):
        if replicated and not hasattr(client, "pin"):
            raise ValueError("replicated durability needs a PinnableRedis client (store.connect)")
        self.client = client
        self.strict = strict
        self.fsync_when_possible = fsync_when_possible
        self.replicated = replicated
        self.replica_timeout_ms = replica_timeout_ms
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._problem: str | None = None
        self._waitaof: bool | None = None

    def _probe(self) -> None:
        info = self.client.info("server")
        major, minor = (int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2])
        # Only a client that pins the write's connection (store/pinning.py) can ask
        # WAITAOF about that write; a cluster client would ask another connection.
        self._waitaof = (major, minor) >= (7, 2) and hasattr(self.client, "pin")
        masters = list(info_of_every_master(self.client, "persistence").values())
        problem = None
        if not all(p.get("aof_enabled") for p in masters):
            problem = "redis has AOF disabled"
        elif any(p.get("aof_last_write_status", "ok") != "ok" for p in masters):
            problem = "redis reports failing AOF writes"
        elif self.strict and not self._waitaof:
            fsync = self.client.config_get("appendfsync").get("appendfsync")
            if fsync != "always":
                problem = f"strict durability needs appendfsync always on redis < 7.2 (got {fsync})"
        elif self.replicated:
            replicas = int(self.client.info("replication").get("connected_slaves", 0))
            if replicas < 1:
                problem = "replicated durability needs a connected replica (none is)"
        self._problem = problem
        self._checked_at = time.monotonic()

    def problem(self, fresh: bool = False) -> str | None:
        """Why acknowledged writes would not be durable as promised, or None."""
        with self._lock:
            if fresh or time.monotonic() - self._checked_at > CHECK_EVERY:
                self._probe()
            return self._problem

    @property
    def _waits(self) -> bool:
        return self.strict or self.fsync_when_possible or self.replicated

    def before_write(self) -> None:
        if self.strict:
            problem = self.problem()
            if problem:
                log.error("refusing write: %s", problem)
                raise StoreUnavailable("durability cannot be guaranteed now")
        if self._waits and hasattr(self.client, "pin"):
            self.client.pin()

    def after_write(self) -> None:
        try:
            self._wait()
        finally:
            if hasattr(self.client, "unpin"):
                self.client.unpin()

    def _send_wait(self, *args: object) -> object:
        """On the write's own pinned connection where the client pins (store.connect's do)."""
        if hasattr(self.client, "wait"):
            try:
                return self.client.wait(*args)
            except StaleConnection:
                raise StoreUnavailable(
                    "the connection dropped after the write; its state is unknown"
                ) from None
        return self.client.execute_command(*args)

    def _wait(self) -> None:
        if (self.strict or self.fsync_when_possible) and self._waitaof is None:
            self.problem()
        if (self.strict or self.fsync_when_possible) and self._waitaof:
            local, _replicas = self._send_wait("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)
            if int(local) < 1:
                raise StoreUnavailable("the write was not fsynced in time; its state is unknown")
        if self.replicated:
            acked = int(self._send_wait("WAIT", 1, self.replica_timeout_ms))
            if acked < 1:
                log.warning("no replica acknowledged a write within %d ms", self.replica_timeout_ms)
                raise StoreUnavailable(
                    "no replica acknowledged the write in time; it is not acknowledged "
                    "(it may still have been applied)"
                )
