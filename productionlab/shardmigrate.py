"""Moving a store from the one-tag layout (every KV key under ``{plab}``) to the
virtual shards (store/layout.py; docs/design/virtual-shards.md, step 4).

The control plane runs it at every start (``cp.migrate_data``, after the
earlier releases' migrations); until the marker is set the KV routes of both
planes answer 503 + Retry-After (:class:`LayoutGate`), and a plane refuses to
start on a store with another shard count (``serve.check_store_layout``).

What moves, per key (idempotent, so a migration cut short runs again from the
start and finishes):

- the item ``{plab}:kv:<key>`` to its shard (its fields, value, version and
  owner, copied with ``HSET`` and its expiry with ``PEXPIREAT``: a cluster cannot
  ``RENAME`` across slots, and the control plane's redis user may not ``RESTORE``,
  a @dangerous command), as they were: a client's ETag stays valid;
- its listing-index entry, its tombstone and its TTL version to the shard's;
- what releases before quotas and watches left out (c64ef11's state), folded in
  here so that one migration reads the old layout: an item without an owner
  gets one, its last writer in the audit chains or else ``-`` (unattributed),
  and an item with a TTL but no recorded TTL version gets its version recorded,
  so its expiry leaves a tombstone.

Then each shard's counter is set past the old global counter (``V // 16 + 1``,
so every new version, ``counter * 16 + shard``, is above every old one), each
shard's tombstone floor to the old floor, the usage is rebuilt from the items
(each user's exact usage per shard, and the ``{plab}:usage-total:<user>`` ledger)
and the old usage records of every owner and user are removed; last, the marker
``{plab}:layout`` = ``{shards, version}``, and the old counter, index and watch
keys go. The main audit chain (``{plab}:audit``) stays where it is: it becomes
the chain of users, tokens and auth events, and old KV entries stay in it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

import redis

from productionlab.errors import StoreUnavailable
from productionlab.kv import UNATTRIBUTED
from productionlab.shardbackup import last_writers_of_every_chain
from productionlab.shardkv import HOLDS, USAGE_TOTAL
from productionlab.store.layout import (
    LAYOUT_KEY,
    LAYOUT_VERSION,
    SHARDS,
    all_shards,
    shard_for,
    version_of,
)

OLD_ITEM = "{plab}:kv:"
OLD_COUNTER = "{plab}:kv-version"
OLD_INDEX = "{plab}:kv-index"
OLD_USAGE = "{plab}:usage:"
OLD_TOMBS = "{plab}:kv-watch:tombs"
OLD_FLOOR = "{plab}:kv-watch:floor"
OLD_TTL_VERSIONS = "{plab}:kv-watch:ttl"
OLD_USAGE_MIGRATED = "{plab}:usage-migrated"  # the markers of the two migrations folded in
OLD_TTL_VERSIONS_MIGRATED = "{plab}:kv-watch:migrated"
USERS = "{plab}:users"  # users.py's USERS (a test pins it)


class LayoutMismatch(RuntimeError):
    """The store was written with another number of shards or layout version."""


def layout_of(client: redis.Redis) -> dict[str, int] | None:
    """The marker's {shards, version}, or None on a store not yet migrated."""
    found = client.hgetall(LAYOUT_KEY)
    if not found:
        return None
    return {k.decode(): int(v) for k, v in found.items()}


def check_layout(client: redis.Redis) -> bool:
    """True if the store is on this layout, False if not migrated yet; raises
    :class:`LayoutMismatch` on another shard count or version."""
    marker = layout_of(client)
    if marker is None:
        return False
    if marker != {"shards": SHARDS, "version": LAYOUT_VERSION}:
        raise LayoutMismatch(
            f"the store's layout is {marker}, this code's is "
            f"{{'shards': {SHARDS}, 'version': {LAYOUT_VERSION}}}: the shard count is fixed"
        )
    return True


class LayoutGate:
    """Whether the KV routes may serve: only once the store is on this layout.

    A plane of this release may start before the control plane has migrated the
    store (or while it migrates): its KV routes answer 503 + Retry-After until
    the marker is there. Once seen, the marker is never asked again (nothing
    unsets it), so a serving plane pays nothing per request."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.open = False

    def require(self) -> None:
        if self.open:
            return
        try:
            self.open = check_layout(self.client)
        except LayoutMismatch as exc:
            raise StoreUnavailable(str(exc)) from None
        if not self.open:
            raise StoreUnavailable(
                "the store is being moved to the shard layout by the control plane; retry"
            )


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LastWriters:
    """Who last wrote each key, by the audit chains: an item from before quotas has
    no owner and is charged to its last writer. The chains are read once per
    migration, at the first item that needs them (most stores have none)."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._by_key: dict[str, str] | None = None

    def of(self, key: str) -> str:
        if self._by_key is None:
            self._by_key = last_writers_of_every_chain(self.client)
        return self._by_key.get(key, UNATTRIBUTED)


def _move_items(
    client: redis.Redis, keys: list[str], writers: LastWriters, renumber: bool = False
) -> None:
    """Move these old items (and index entries, tombstones, TTL versions).

    ``renumber``: the store was migrated already, so these were written since by
    an app plane of the previous release, on a counter that restarted: each
    item gets a new version from its shard's counter (never one the key had)."""
    read = client.pipeline(transaction=False)
    for key in keys:
        read.hgetall(OLD_ITEM + key)
        read.execute_command("PEXPIRETIME", OLD_ITEM + key)
        read.zscore(OLD_TOMBS, key)
        read.hget(OLD_TTL_VERSIONS, key)
    found = read.execute()
    write = client.pipeline(transaction=False)
    for n, key in enumerate(keys):
        fields, expire_at, tomb, ttl_version = found[4 * n : 4 * n + 4]
        place = shard_for(key)
        if fields:
            if renumber:
                fields[b"ver"] = version_of(int(client.incr(place.counter)), place.number)
            if b"o" not in fields:  # written before quotas: charged to its last writer
                fields[b"o"] = writers.of(key)
            write.delete(place.item(key))  # a copy left by a run cut short
            write.hset(place.item(key), mapping=fields)
            if int(expire_at) > 0:
                write.pexpireat(place.item(key), int(expire_at))
                if ttl_version is None:  # a TTL from before watches: its expiry's version
                    ttl_version = fields[b"ver"]
            write.zadd(place.index, {key: 0})
        if tomb is not None:
            write.zadd(place.tombs, {key: int(tomb)})
        if ttl_version is not None:
            write.hset(place.ttl_versions, key, ttl_version)
    write.execute()
    # Only once every copy is made: the old ones go.
    drop = client.pipeline(transaction=False)
    for key in keys:
        drop.delete(OLD_ITEM + key)
        drop.zrem(OLD_INDEX, key)
        drop.zrem(OLD_TOMBS, key)
        drop.hdel(OLD_TTL_VERSIONS, key)
    drop.execute()


def _old_keys(client: redis.Redis, batch: int) -> Iterable[list[str]]:
    """The old index's keys, then the tombstones' and TTL versions' keys (deleted
    or expired keys), ``batch`` at a time, until none is left."""
    while True:
        page = [_decode(m) for m in client.zrange(OLD_INDEX, 0, batch - 1)]
        if not page:
            break
        yield page
    while True:
        page = [_decode(m) for m in client.zrange(OLD_TOMBS, 0, batch - 1)]
        if not page:
            break
        yield page
    while True:
        _, found = client.hscan(OLD_TTL_VERSIONS, 0, count=batch)
        if not found:
            break
        yield [_decode(k) for k in found]


def _rebuild_usage(client: redis.Redis, users: set[str], batch: int) -> None:
    """Each user's exact usage per shard from the items, and the ledger."""
    now = int(time.time() * 1000)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for place in all_shards():
        per_user: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # keys, bytes, first exp
        expiring: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        after = "-"
        while True:
            page = [_decode(m) for m in client.zrangebylex(place.index, after, "+", 0, batch)]
            if not page:
                break
            read = client.pipeline(transaction=False)
            for key in page:
                read.hget(place.item(key), "o")
                read.hstrlen(place.item(key), "v")
                read.execute_command("PEXPIRETIME", place.item(key))
            found = read.execute()
            for n, key in enumerate(page):
                owner, size, expire_at = found[3 * n : 3 * n + 3]
                if owner is None or int(expire_at) == -2:
                    continue  # gone (every moved item has an owner)
                user = _decode(owner)
                users.add(user)
                size = len(key) + int(size)
                per_user[user][0] += 1
                per_user[user][1] += size
                if int(expire_at) > 0:
                    expiring[user][key] = (int(expire_at), size)
            after = "(" + page[-1]
        for user in users:
            keys, size, _ = per_user.get(user, [0, 0, 0])
            totals[user][0] += keys
            totals[user][1] += size
            usage = place.usage(user)
            write = client.pipeline(transaction=False)
            for name in (usage, usage + ":exp", usage + ":ttl"):
                write.delete(name)  # one key a call: a cluster pipeline takes no more
            first_expiry = 0
            if keys:
                write.hset(usage, mapping={"keys": keys, "bytes": size, "seq": 1})
                if expiring[user]:
                    write.zadd(usage + ":exp", {k: at for k, (at, _) in expiring[user].items()})
                    write.hset(
                        usage + ":ttl", mapping={k: b for k, (_, b) in expiring[user].items()}
                    )
                    first_expiry = min(at for at, _ in expiring[user].values())
            write.hset(
                USAGE_TOTAL + user,
                mapping={
                    f"k{place.number:02d}": keys,
                    f"b{place.number:02d}": size,
                    f"q{place.number:02d}": 1 if keys else 0,
                    f"e{place.number:02d}": first_expiry if first_expiry > now else 0,
                },
            )
            write.execute()

    for user in users:
        keys, size = totals[user]
        client.hset(USAGE_TOTAL + user, mapping={"tk": keys, "tb": size})


def migrate_to_shards(client: redis.Redis, batch: int = 200) -> bool:
    """Move a one-tag store to the shards; False if it was already migrated.

    Run it with the KV routes closed (nothing else writes KV keys meanwhile);
    it is safe to run again after a crash. On a store already migrated it
    moves only the items an app plane of the previous release wrote since
    (a rolling upgrade), with new versions, and recomputes the usage."""
    if check_layout(client):
        if not client.exists(OLD_INDEX):
            return False
        writers = LastWriters(client)
        for keys in _old_keys(client, batch):
            _move_items(client, keys, writers, renumber=True)
        _finish(client, batch)
        return True
    old_counter = int(client.get(OLD_COUNTER) or 0)
    floor = client.get(OLD_FLOOR)
    writers = LastWriters(client)
    for keys in _old_keys(client, batch):
        _move_items(client, keys, writers)
    setup = client.pipeline(transaction=False)
    for place in all_shards():
        # Past every old version; never back (a run after a crash finds it set).
        current = int(client.get(place.counter) or 0)
        setup.set(place.counter, max(current, old_counter // SHARDS + 1))
        if floor is not None:
            setup.set(place.floor, floor)
    setup.execute()
    _finish(client, batch)
    return True


def _finish(client: redis.Redis, batch: int) -> None:
    """The usage rebuilt from the items, the old records dropped, the marker set."""
    users = {_decode(u) for u in client.smembers(USERS)}
    users.add("-")
    _rebuild_usage(client, users, batch)
    for user in users:
        client.delete(OLD_USAGE + user, OLD_USAGE + user + ":exp", OLD_USAGE + user + ":ttl")
        client.delete(HOLDS + user)
        client.hdel(USAGE_TOTAL + user, "hk", "hb")
    client.hset(LAYOUT_KEY, mapping={"shards": SHARDS, "version": LAYOUT_VERSION})
    client.delete(OLD_COUNTER, OLD_INDEX, OLD_TOMBS, OLD_FLOOR, OLD_TTL_VERSIONS)
    client.delete(OLD_USAGE_MIGRATED, OLD_TTL_VERSIONS_MIGRATED)
