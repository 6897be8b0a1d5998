"""Issue 13: hold watches open through the full edge while wrk measures reads.

Each watch is one thread on its own keep-alive HTTPS connection, parked on
``GET /v1/watch/<key>?index=<current>&wait=300`` for a key nothing writes during
the run; a watch that returns anyway (its wait ran out) is issued again with the
index it was given. ``release`` ends them cleanly: it writes every watched key,
which wakes each watch at once, so no plane thread stays parked into the next
round (a client that only hangs up leaves its watch parked until its wait ends).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_WAIT = 300  # contract.MAX_WATCH_WAIT
SOCKET_TIMEOUT = MAX_WAIT + 60


@dataclass
class HolderStats:
    issued: int = 0  # watch requests sent that were told to wait
    returned_early: int = 0  # answered before release (a wait ran out)
    refused: int = 0  # 429s (a bound reached for a moment), each retried after a second
    errors: list[str] = field(default_factory=list)


class WatchHolder:
    """``count`` watches on keys ``<prefix><i>``, held open until ``release``."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        auth_header: str,
        count: int,
        prefix: str = "bench-watch-",
        parked_in_planes: Callable[[], int] | None = None,
    ) -> None:
        self.host, self.port, self.context = host, port, context
        # How many watches the app planes hold now (their plab_watches_held gauges).
        self.parked_in_planes = parked_in_planes
        self.headers = {"Authorization": auth_header}
        self.keys = [f"{prefix}{i}" for i in range(count)]
        self.stats = HolderStats()
        self.releasing = threading.Event()
        self.lock = threading.Lock()
        self.parked = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=SOCKET_TIMEOUT
        )

    def create_keys(self) -> None:
        """Each watched key exists (one write each, before any round)."""
        conn = self.connection()
        try:
            for key in self.keys:
                self.request(conn, "POST", f"/write/{key}/v0")
        finally:
            conn.close()

    def request(
        self, conn: http.client.HTTPSConnection, method: str, path: str
    ) -> tuple[int, bytes, dict]:
        conn.request(method, path, headers=self.headers)
        response = conn.getresponse()
        body = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {body[:200]!r}")
        return response.status, body, dict(response.getheaders())

    def current_indexes(self) -> dict[str, int]:
        """Each key's index now, one short watch (``wait=0``) after another on one
        connection: asked before any watch is parked, so these never meet a plane's
        bound while it is full."""
        conn = self.connection()
        try:
            return {
                key: int(
                    json.loads(self.request(conn, "GET", f"/v1/watch/{key}?wait=0")[1])["index"]
                )
                for key in self.keys
            }
        finally:
            conn.close()

    def hold(self, timeout: float = 120.0) -> None:
        """Start every watch; return once the planes hold them all (their gauges), or,
        without gauges, once each has been sent and given no early answer for a
        moment (the edge and the plane answer refusals at once)."""
        self.releasing.clear()
        self.stats = HolderStats()
        indexes = self.current_indexes()
        self.threads = [
            threading.Thread(target=self.watch, args=(key, indexes[key]), daemon=True)
            for key in self.keys
        ]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for _ in self.keys:
            if not self.parked.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"watches not all sent within {timeout:.0f}s: {self.stats}")
        if self.parked_in_planes is None:
            time.sleep(1.0)
        else:
            while (held := self.parked_in_planes()) < len(self.keys):
                if time.monotonic() > deadline or self.stats.errors:
                    raise RuntimeError(f"{held} of {len(self.keys)} watches held: {self.stats}")
                time.sleep(0.2)
        if self.stats.errors:
            raise RuntimeError(f"watches refused: {self.stats.errors[:5]}")

    def watch(self, key: str, index: int) -> None:
        conn = self.connection()
        first = True
        try:
            while not self.releasing.is_set():
                path = f"/v1/watch/{key}?index={index}&wait={MAX_WAIT}"
                conn.putrequest("GET", path)
                for name, value in self.headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                with self.lock:
                    self.stats.issued += 1
                if first:
                    self.parked.release()
                    first = False
                response = conn.getresponse()
                body = response.read()
                if response.status == 429:
                    with self.lock:
                        self.stats.refused += 1
                    time.sleep(1.0)
                    continue
                if response.status != 200:
                    with self.lock:
                        self.stats.errors.append(f"{key}: {response.status} {body[:120]!r}")
                    time.sleep(1.0)
                    continue
                index = int(json.loads(body)["index"])
                if not self.releasing.is_set():
                    with self.lock:
                        self.stats.returned_early += 1
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
            with self.lock:
                self.stats.errors.append(f"{key}: {exc!r}")
            if first:
                self.parked.release()
        finally:
            conn.close()

    def release(self, timeout: float = 120.0) -> HolderStats:
        """Write every watched key (each watch wakes and is not issued again) and
        wait for every watch thread to finish."""
        self.releasing.set()
        conn = self.connection()
        try:
            for key in self.keys:
                self.request(conn, "POST", f"/write/{key}/released")
        finally:
            conn.close()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        alive = sum(thread.is_alive() for thread in self.threads)
        if alive:
            self.stats.errors.append(f"{alive} watches still open {timeout:.0f}s after release")
        return self.stats
