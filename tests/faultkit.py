"""Shared tools for the fault tests: a bounded concurrent load through the edge
that records every answer, and a scratch redis that loads a copy of the
stack's AOF without ACLs so the whole keyspace can be inspected."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from productionlab.audit_chains import chain_keys
from productionlab.redis_process import RedisProcess
from productionlab.supervisor import Supervisor
from tests.http_client import new_session
from tests.layout_kit import indexed, stored_items


@dataclass
class Ack:
    key: str
    value: str
    version: int


@dataclass
class Tally:
    """Every answer the load saw, by status (``"conn"``: no HTTP answer at all)."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    acked: list[Ack] = field(default_factory=list)
    bad: list[tuple[int | str, str]] = field(default_factory=list)
    missing_retry_after: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | str, response: requests.Response | None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if response is not None and status == 503 and "Retry-After" not in response.headers:
                self.missing_retry_after += 1
            if response is not None and status >= 500 and status != 503:  # type: ignore[operator]
                self.bad.append((status, response.text[:300]))

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if not (isinstance(s, int) and s < 400))


class Load:
    """``threads`` writers (and optionally readers) through the edge until stopped.

    Writes use unique keys, half ``POST /write/<key>/<value>`` and half
    ``PUT /v1/kv/<key>``, so each acknowledgement names exactly one expected
    (value, version) pair.
    """

    def __init__(
        self,
        stack: Supervisor,
        auth: tuple[str, str],
        threads: int = 12,
        mode: str = "write",
        read_keys: list[str] | None = None,
        max_requests: int = 200_000,
    ):
        self.stack = stack
        self.auth = auth
        self.mode = mode
        self.read_keys = read_keys or []
        self.tally = Tally()
        self.stop_event = threading.Event()
        self.run_id = secrets.token_hex(4)
        self.max_requests = max_requests
        self._count = 0
        self._threads = [
            threading.Thread(target=self._worker, args=(n,), daemon=True) for n in range(threads)
        ]

    def _session(self) -> requests.Session:
        return new_session(str(self.stack.tls_cert), self.auth)

    def _worker(self, number: int) -> None:
        session = self._session()
        i = 0
        while not self.stop_event.is_set():
            with self.tally.lock:
                self._count += 1
                if self._count > self.max_requests:
                    return
            i += 1
            try:
                if self.mode == "write":
                    self._write(session, number, i)
                else:
                    self._read(session, i)
            except requests.RequestException:
                self.tally.record("conn", None)
                session.close()
                session = self._session()
                time.sleep(0.05)
        session.close()

    def _write(self, session: requests.Session, number: int, i: int) -> None:
        key = f"d{self.run_id}-{number}-{i}"
        value = f"v{i}-{secrets.token_hex(6)}"
        if i % 2:
            response = session.post(f"{self.stack.url}/write/{key}/{value}", timeout=20)
        else:
            response = session.put(f"{self.stack.url}/v1/kv/{key}", data=value, timeout=20)
        self.tally.record(response.status_code, response)
        if response.status_code in (200, 201):
            with self.tally.lock:
                self.tally.acked.append(Ack(key, value, int(response.json()["version"])))
        elif response.status_code == 503:
            time.sleep(0.05)

    def _read(self, session: requests.Session, i: int) -> None:
        key = self.read_keys[i % len(self.read_keys)]
        response = session.get(f"{self.stack.url}/v1/kv/{key}", timeout=20)
        self.tally.record(response.status_code, response)
        if response.status_code == 503:
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(30)

    def acked_count(self) -> int:
        with self.tally.lock:
            return len(self.tally.acked)


def record(name: str, figures: dict) -> None:
    """Figures for docs/RELIABILITY.md (printed; also saved when PLAB_FIGURES_DIR is set)."""
    print(f"\nFIGURES {name}: {json.dumps(figures, sort_keys=True)}")
    directory = os.environ.get("PLAB_FIGURES_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{name}.json").write_text(json.dumps(figures, indent=2))


def wait_until(predicate, timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``predicate()`` held, or None if it did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - started
        time.sleep(interval)
    return None


@contextlib.contextmanager
def scratch_redis(aof_source: Path, workdir: Path):
    """A private redis-server (no ACL, loopback) loading a copy of ``aof_source``.

    What it loads is exactly what the stack's redis would load after a crash.
    """
    data = workdir / "scratch-redis"
    if data.exists():
        shutil.rmtree(data)
    server = RedisProcess(
        password=False, directory=data, aof_source=aof_source, timeout=60, socket_timeout=30
    )
    with server as client:
        yield client


def kv_state(client: redis.Redis) -> dict[str, dict[bytes, bytes]]:
    """Every KV item hash, in every shard, by key."""
    return stored_items(client)


def audit_entries(client: redis.Redis) -> list[dict]:
    """The entries of every audit chain (the main chain's first, then each shard's)."""
    return [
        json.loads(item)
        for log, _meta in chain_keys().values()
        for item in client.lrange(log, 0, -1)
    ]


def partial_state(client: redis.Redis, deletes_happened: bool = False) -> dict[str, list]:
    """Every kind of half-applied change the store could be left with.

    Without deletes or TTLs, an audited put whose key is gone is a change
    that was recorded but lost.
    """
    items = kv_state(client)
    index = indexed(client)
    puts: dict[str, set[str]] = collections.defaultdict(set)
    for entry in audit_entries(client):
        if entry.get("action") == "kv.put" and entry.get("outcome") in ("created", "updated"):
            puts[entry["target"]].add(str(entry["version"]))
    problems: dict[str, list] = {
        "value_without_version": [k for k, h in items.items() if b"ver" not in h],
        "version_without_value": [k for k, h in items.items() if b"v" not in h],
        "not_in_index": [k for k in items if k not in index],
        "change_without_audit": [
            k for k, h in items.items() if h.get(b"ver", b"").decode() not in puts.get(k, set())
        ],
    }
    if not deletes_happened:
        problems["audit_without_change"] = [k for k in puts if k not in items]
    return problems


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False
