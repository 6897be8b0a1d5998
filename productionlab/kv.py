"""The one KV core used by both planes: validation, versions, compare-and-set,
TTL, listing and the audit append.

Each key lives in a redis hash ``{plab}:kv:<key>`` with fields ``v`` (value)
and ``ver`` (version). Versions come from one global counter, so a key that
is deleted and written again never reuses a version (no ABA for If-Match).
Every change is one Lua script (``lua/kv_put.lua``, ``lua/kv_delete.lua``; the
shared write and its quota accounting in ``lua/kv_write.lua`` and ``lua/quota.lua``,
see :mod:`productionlab.luascripts`): the check, the write, the version and the
audit entry happen atomically, in one round trip. The caller's per-user rate
limit charge (a :class:`~productionlab.ratelimit.Ticket`) rides in the same
script, so a request costs one round trip in all, and a limited request
changes nothing.

Quotas. Every key is charged to one user: the user who wrote its current
value (the item's field ``o``); an overwrite by another user moves the
charge, a delete (by anyone) releases it. A charge is one key plus
``len(key) + len(value)`` bytes, kept per user in ``{plab}:usage:<user>``
(fields ``keys``, ``bytes``) and checked in the write's own script: a write
that would take its writer past ``PLAB_USER_MAX_KEYS`` or
``PLAB_USER_MAX_BYTES`` changes nothing (no value, version, audit entry or
usage change) and is refused with ``quota_exceeded``. A write that does not
grow the writer's usage (an overwrite with a value no larger) is never
refused, so a user over quota can always shrink.

Redis expires keys without running a script, so a key written with a TTL is
also recorded in the owner's ``{plab}:usage:<user>:exp`` (sorted by the
item's absolute expiry, ``PEXPIRETIME``) and ``:ttl`` (its charged bytes).
Before each of a user's writes, and when an admin reads the usage, the
script releases the charges of that user's keys that have expired: it walks
the sorted set from the earliest expiry and stops at the first key that
still lives (every later one lives too), so the accounting is exact whenever
it is read or enforced and costs one ``ZRANGE`` per write when nothing
expired. Keys written before quotas existed have no ``o``: they are charged
by :meth:`KVStore.migrate_usage` (the control plane runs it at start-up),
to the last writer the audit log names or else to ``-`` (unattributed);
until then they are simply not charged to anyone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis

from productionlab.audit import AUDIT_KEYS, AUDIT_LIST, Actor
from productionlab.contract import KEY_RE
from productionlab.errors import InvalidKey, KeyNotFound, QuotaExceeded, VersionConflict
from productionlab.luascripts import script
from productionlab.ratelimit import NO_TICKET, Ticket, refused
from productionlab.settings import DEFAULT_USER_MAX_BYTES, DEFAULT_USER_MAX_KEYS
from productionlab.store.durability import Durability

ITEM = "{plab}:kv:"
VERSION_COUNTER = "{plab}:kv-version"
INDEX = "{plab}:kv-index"
USAGE = "{plab}:usage:"
USAGE_MIGRATED = "{plab}:usage-migrated"
UNATTRIBUTED = "-"  # owner of pre-quota keys the audit log cannot attribute

KV_PUT = script("kv_put")
KV_DELETE = script("kv_delete")
KV_USAGE = script("kv_usage")
KV_CHARGE_UNOWNED = script("kv_charge_unowned")


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidKey()
    return key


def write_keys(key: str, ticket: Ticket) -> dict[str, object]:
    """The KEYS of a single-key write script (kv_put.lua, kv_delete.lua)."""
    return {
        "audit": AUDIT_KEYS,
        "item": ITEM + key,
        "counter": VERSION_COUNTER,
        "index": INDEX,
        "limit": ticket.counter,
    }


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    version: int


@dataclass(frozen=True)
class Quota:
    """What one user's keys may hold: ``PLAB_USER_MAX_KEYS`` and ``PLAB_USER_MAX_BYTES``."""

    max_keys: int = DEFAULT_USER_MAX_KEYS
    max_bytes: int = DEFAULT_USER_MAX_BYTES


@dataclass(frozen=True)
class Usage:
    user: str
    keys: int
    bytes: int
    quota: Quota

    def as_dict(self, with_quota: bool = True) -> dict:
        if not with_quota:
            return {"keys": self.keys, "bytes": self.bytes}
        return {
            "keys": self.keys,
            "bytes": self.bytes,
            "max_keys": self.quota.max_keys,
            "max_bytes": self.quota.max_bytes,
        }


@dataclass(frozen=True)
class PutResult:
    key: str
    version: int
    created: bool


def effective_prefixes(grants: Iterable[str], requested: str) -> list[str]:
    """The disjoint, sorted prefix ranges a caller with ``grants`` may list under ``requested``."""
    ranges: set[str] = set()
    for grant in grants:
        grant = "" if grant == "*" else grant
        if requested.startswith(grant):
            ranges.add(requested)
        elif grant.startswith(requested):
            ranges.add(grant)
    ordered = sorted(ranges)
    disjoint: list[str] = []
    for prefix in ordered:
        if not any(prefix.startswith(kept) for kept in disjoint):
            disjoint.append(prefix)
    return disjoint


class KVStore:
    def __init__(
        self,
        client: redis.Redis,
        durability: Durability,
        quota: Quota | None = None,
    ):
        self.client = client
        self.durability = durability
        self.quota = quota or Quota()

    def put(
        self,
        key: str,
        value: bytes,
        actor: Actor,
        *,
        ttl: int | None = None,
        if_match: list[str] | None = None,
        if_absent: bool = False,
        limit: Ticket | None = None,
    ) -> PutResult:
        validate_key(key)
        cond, expected = "", ""
        if if_absent:
            cond = "absent"
        elif if_match is not None:
            cond, expected = "match", ",".join(if_match)
        ttl_ms = ttl * 1000 if ttl else 0
        self.durability.before_write()
        ticket = limit or NO_TICKET
        status, version, *extra = KV_PUT(
            self.client,
            keys=write_keys(key, ticket),
            args={
                "audit": actor.audit_args(),
                "key": key,
                "value": value,
                "ttl_ms": ttl_ms,
                "cond": cond,
                "expected": expected,
                "owner": actor.name,
                "max_keys": self.quota.max_keys,
                "max_bytes": self.quota.max_bytes,
                "limit": ticket.limit,
                "window": ticket.window,
            },
            held=True,
        )
        if int(status) == -2:
            refused(int(version))
        if int(status) == -3:
            raise QuotaExceeded(
                f"this write would take you past your quota of {self.quota.max_keys} keys "
                f"and {self.quota.max_bytes} bytes (you use {int(version)} keys and "
                f"{int(extra[0])} bytes); delete or shrink keys first"
            )
        if int(status) < 0:
            raise VersionConflict(
                "the key already exists" if if_absent else "the version does not match",
                headers={"ETag": f'"{int(version)}"'} if version not in (b"", "", None) else None,
            )
        self.durability.after_write()
        return PutResult(key, int(version), created=int(status) == 0)

    def delete(
        self,
        key: str,
        actor: Actor,
        *,
        if_match: list[str] | None = None,
        limit: Ticket | None = None,
    ) -> int:
        validate_key(key)
        self.durability.before_write()
        ticket = limit or NO_TICKET
        status, version = KV_DELETE(
            self.client,
            keys=write_keys(key, ticket),
            args={
                "audit": actor.audit_args(),
                "key": key,
                "expected": ",".join(if_match or []),
                "limit": ticket.limit,
                "window": ticket.window,
            },
            held=True,
        )
        if int(status) == -2:
            refused(int(version))
        if int(status) == 0:
            raise KeyNotFound(f"key {key!r} not found")
        if int(status) < 0:
            raise VersionConflict(headers={"ETag": f'"{int(version)}"'})
        self.durability.after_write()
        return int(version)

    def usage(self, user: str) -> Usage:
        """What ``user``'s keys hold now, the charges of expired keys released first."""
        for _ in range(1000):
            keys, size, more = KV_USAGE(
                self.client, keys={"usage": USAGE + user}, args={"user": user, "batch": 1000}
            )
            if not int(more):
                break
        return Usage(user, int(keys), int(size), self.quota)

    def migrate_usage(self, batch: int = 500) -> int:
        """Charge the keys written before quotas existed; returns how many it charged.

        Each key goes to the last user the audit log shows writing it (the
        kept log, after any retention trim), else to ``-``. Safe to run while
        the planes serve and to run again: only keys without an owner change,
        each atomically with its charge. A marker skips the walk once it has
        completed.
        """
        if self.client.exists(USAGE_MIGRATED):
            return 0
        charged = charge_unowned_keys(self.client, batch)
        self.client.set(USAGE_MIGRATED, "1")
        return charged


def index_pages(client: redis.Redis, batch: int = 500) -> Iterator[list[str]]:
    """The listing index's keys in lexical order, ``batch`` at a time (expired
    keys included until a listing prunes them)."""
    after = "-"
    while True:
        page = [member.decode() for member in client.zrangebylex(INDEX, after, "+", 0, batch)]
        if not page:
            return
        yield page
        after = "(" + page[-1]


def charge_unowned_keys(client: redis.Redis, batch: int = 500) -> int:
    """Charge every key that has no owner (written before quotas, or restored
    from a backup) to its last writer in the audit log, else to ``-``."""
    writers = last_writers(client)
    charged = 0
    for page in index_pages(client, batch):
        args: list[str] = []
        for key in page:
            args += [key, writers.get(key, UNATTRIBUTED)]
        charged += int(KV_CHARGE_UNOWNED(client, keys={"index": INDEX}, args={"pairs": args}))
    return charged


def last_writers(client: redis.Redis, chunk: int = 1000) -> dict[str, str]:
    """key -> the actor of its last ``kv.put`` in the audit log (deleted keys dropped)."""
    writers: dict[str, str] = {}
    start = 0
    while True:
        entries = client.lrange(AUDIT_LIST, start, start + chunk - 1)
        for raw in entries:
            try:
                entry = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if not isinstance(entry, dict):
                continue
            action, outcome, target = entry.get("action"), entry.get("outcome"), entry.get("target")
            if action == "kv.put" and outcome in ("created", "updated"):
                writers[str(target)] = str(entry.get("actor") or UNATTRIBUTED)
            elif action == "kv.delete" and outcome == "deleted":
                writers.pop(str(target), None)
        if len(entries) < chunk:
            return writers
        start += chunk
