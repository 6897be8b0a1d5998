"""Tamper-evident audit log: one entry per change, written in the same Lua
script as the change it records, so there is no change without its entry and
no entry without its change.

The entries form a hash chain that needs no secret: each entry carries its
sequence number and ``prev``, the SHA-1 of the previous entry exactly as it is
stored (its raw bytes). Both are derived by the script from the list itself
(``seq = first + LLEN``, ``prev = sha1(LINDEX -1)``; ``first`` and
``first_prev`` in ``{plab}:audit:meta`` say where a trimmed list starts), so a
writer needs only to read the log and ``RPUSH`` to it: no secret, no head in
redis to update. The app plane's redis user can therefore append and nothing
else, and no key material ever travels as a script argument.

A hash chain alone proves nothing against someone who can rewrite redis: the
control plane anchors it with Ed25519-signed checkpoints kept outside redis
(:mod:`productionlab.audit_checkpoint`), archives old entries to files before
trimming them (:mod:`productionlab.audit_archive`) and verifies the whole
(:mod:`productionlab.audit_verify`).

Why SHA-1 (``redis.sha1hex``) and not SHA-256: integrity is anchored by the
signed checkpoints; what the chain's hash must resist is a *second preimage*
(replacing an existing, covered entry with another of the same hash), for which
SHA-1 has no known attack. Collision attacks need attacker-chosen binary blocks
inside both entries, and verification refuses any entry whose fields hold
anything but the plain token characters the script writes. A pure-Lua SHA-256
measured about 320 microseconds per entry inside redis (the single redis
thread), against 4 for ``redis.sha1hex``; that would cap audited writes at a
few thousand a second for no gain against the threat model.

Entries made by the previous release (HMAC-SHA1 chained, with a ``mac`` field)
are verified with the old key, archived and linked to by the new chain at the
control plane's first start (:func:`productionlab.audit_archive.migrate_legacy`).

Entries never hold a value, password or token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from productionlab.luascripts import script

AUDIT_LIST = "{plab}:audit"
AUDIT_META = "{plab}:audit:meta"
_SAFE = re.compile(r"[^A-Za-z0-9_.:@/+-]")
# What verification accepts in a field of an entry (what clean() lets through).
SAFE_FIELD = re.compile(r"\A[A-Za-z0-9_.:@/+-]*\Z")
ENTRY_FIELDS = frozenset(
    {"seq", "prev", "ts", "actor", "action", "target", "outcome", "request_id", "client", "version"}
)

# Every script that records a change appends with lua/audit_prelude.lua: the log's
# keys are its first two KEYS, Actor.audit_args() its first six ARGV.
AUDIT_KEYS = (AUDIT_LIST, AUDIT_META)
AUDIT_APPEND = script("audit_append")

TRIM_ACTION = "audit.trim"
MIGRATE_ACTION = "audit.migrate"


def clean(field: str, limit: int = 128) -> str:
    """Audit fields are plain tokens: no newlines, no separators, bounded length."""
    return _SAFE.sub("_", field)[:limit]


def entry_hash(raw: bytes) -> str:
    """What the next entry's ``prev`` holds: SHA-1 of the stored bytes, as ``redis.sha1hex``."""
    return hashlib.sha1(raw).hexdigest()  # noqa: S324 - see the module docstring  # nosec B324


@dataclass(frozen=True)
class Actor:
    """Who did it, from where, in which request."""

    name: str
    client: str = ""
    request_id: str = ""

    def audit_args(self) -> list[str]:
        """ARGV[1..6] of every script that records a change (1 and 2 are reserved)."""
        ts = f"{time.time():.3f}"
        return ["", "", ts, clean(self.name or "-"), clean(self.request_id), clean(self.client)]


@dataclass(frozen=True)
class Snapshot:
    """The log's position at one instant: where redis's part starts and ends."""

    first: int
    first_prev: str
    length: int
    last_raw: bytes | None

    @property
    def seq(self) -> int:
        """The sequence number of the newest entry (``first - 1`` when redis holds none)."""
        return self.first + self.length - 1

    @property
    def head(self) -> str:
        return entry_hash(self.last_raw) if self.last_raw is not None else self.first_prev


class AuditLog:
    """The part of the log that lives in redis: append, read, page.

    ``keys``: the chain's list and meta hash; the main chain's by default (a
    virtual shard's chain is ``layout.Shard.audit``)."""

    def __init__(self, client: redis.Redis, keys: tuple[str, str] = AUDIT_KEYS):
        self.client = client
        self.keys = keys
        self.list_key, self.meta_key = keys

    def append(
        self, actor: Actor, action: str, target: str, outcome: str, version: str = ""
    ) -> int:
        """Record an event that changes nothing else (auth failures, token events)."""
        return int(
            AUDIT_APPEND(
                self.client,
                keys={"audit": self.keys},
                args={
                    "audit": actor.audit_args(),
                    "action": clean(action),
                    "target": clean(target, 256),
                    "outcome": clean(outcome),
                    "version": version,
                },
            )
        )

    def snapshot(self) -> Snapshot:
        """``first``, ``first_prev``, length and newest entry, read atomically."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.meta_key, "first")
        pipe.hget(self.meta_key, "first_prev")
        pipe.llen(self.list_key)
        pipe.lindex(self.list_key, -1)
        first, first_prev, length, last = pipe.execute()
        return Snapshot(
            int(first or 1), (first_prev or b"").decode(), int(length), last if length else None
        )

    def page(
        self, since: int = 1, limit: int = 100, actor: str | None = None, budget: int = 10_000
    ) -> tuple[list[dict], int | None]:
        """Entries with ``seq >= since`` (oldest first, at most ``limit``, optionally one
        actor's) and the ``since`` of the next page, or None at the end of the log.

        At most ``budget`` entries are read per call, so filtering a long log for a
        rare actor answers in bounded time with a cursor to continue from.
        """
        first = int(self.client.hget(self.meta_key, "first") or 1)
        start = max(0, since - first)
        found: list[dict] = []
        scanned = 0
        next_since: int | None = None
        while True:
            batch = min(1000, max(limit, 100))
            raw = self.client.lrange(self.list_key, start, start + batch - 1)
            if not raw:
                return found, None
            for offset, item in enumerate(raw):
                entry = parse_entry(item)
                if "invalid" in entry:
                    entry["seq"] = first + start + offset
                scanned += 1
                next_since = first + start + offset + 1
                if actor is None or entry.get("actor") == actor:
                    found.append(entry)
                    if len(found) >= limit:
                        return found, next_since
                if scanned >= budget:
                    return found, next_since
            start += len(raw)

    def entries(self, since: int = 1, limit: int = 100, actor: str | None = None) -> list[dict]:
        """Entries with ``seq >= since``, oldest first, at most ``limit`` of them."""
        return self.page(since, limit, actor, budget=2**62)[0]

    def head(self) -> dict:
        """The newest sequence number and its hash (what a checkpoint signs)."""
        snap = self.snapshot()
        return {"seq": snap.seq, "hash": snap.head, "first": snap.first}

    def iter_raw(
        self, start: int = 0, stop: int = -1, batch: int = 1000, per_trip: int = 20
    ) -> Iterator[bytes]:
        """The stored entries from list index ``start`` to ``stop`` (inclusive; -1: the
        end), read in round trips of ``per_trip`` LRANGEs of ``batch`` entries (a
        pipeline each). A chain read while bulk writes keep redis busy waits its turn
        behind their scripts once a round trip, not once an LRANGE; ``per_trip`` bounds
        what redis buffers for one reply (~5 MB)."""
        while stop < 0 or start <= stop:
            pipe = self.client.pipeline(transaction=False)
            asked = []
            first = start
            while len(asked) < per_trip and (stop < 0 or first <= stop):
                end = first + batch - 1 if stop < 0 else min(stop, first + batch - 1)
                pipe.lrange(self.list_key, first, end)
                asked.append(end - first + 1)
                first = end + 1
            for size, raw in zip(asked, pipe.execute(), strict=True):
                if not raw:
                    return
                start += len(raw)
                yield from raw
                if len(raw) < size:
                    break  # the end of the list: the next trip asks again from there

    def iter_all(self, batch: int = 1000) -> Iterator[dict]:
        for raw in self.iter_raw(batch=batch):
            yield parse_entry(raw)


def parse_entry(raw: bytes) -> dict:
    """An entry as a dict; something that is not one (junk appended to the list)
    comes back as ``{"invalid": ...}`` so listing never fails on it."""
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        return {"invalid": raw.decode("utf-8", "replace")[:256]}
    return entry


# --- the previous release's entries (HMAC-SHA1 chain) ----------------------------------
def legacy_entry_mac(key: bytes, entry: dict) -> str:
    """The MAC the previous release gave an entry (to verify it at migration)."""
    fields = [
        str(entry.get("seq", "")),
        entry.get("prev", ""),
        entry.get("ts", ""),
        entry.get("actor", ""),
        entry.get("action", ""),
        entry.get("target", ""),
        entry.get("outcome", ""),
        entry.get("request_id", ""),
        entry.get("client", ""),
        str(entry.get("version", "")),
    ]
    message = "\n".join(str(f) for f in fields).encode()
    return hmac.new(key, message, hashlib.sha1).hexdigest()


def is_legacy(entry: dict) -> bool:
    return "mac" in entry
