"""Reading the virtual-shard layout in tests: where a key's item lives, what a
refused request must leave unchanged (every shard's counter, every audit chain's
length) and the live items under a prefix, whatever their shard."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

import pytest
import redis

from productionlab.audit import Actor
from productionlab.audit_chains import chain_keys
from productionlab.kv import Quota
from productionlab.redis_process import RedisProcess
from productionlab.shardkv import ShardedKV
from productionlab.store.durability import Durability
from productionlab.store.layout import (
    SHARD_KEY_PREFIX,
    all_shards,
    key_of_item,
    shard_for,
    shard_of,
)
from tests.cluster_kit import RedisClusterKit


def item_of(key: str) -> str:
    """The redis key of ``key``'s item."""
    return shard_for(key).item(key)


def audit_log_of(key: str) -> str:
    """The audit list that records ``key``'s changes (its shard's chain)."""
    return shard_for(key).audit[0]


def indexed_keys(client: redis.Redis) -> int:
    """How many keys every shard's listing index holds together."""
    return sum(int(client.zcard(place.index)) for place in all_shards())


def indexed(client: redis.Redis) -> set[str]:
    """The keys listed in their own shard's index."""
    return {
        member.decode()
        for place in all_shards()
        for member in client.zrange(place.index, 0, -1)
        if shard_of(member.decode()) == place.number
    }


def stored_items(client: redis.Redis) -> dict[str, dict[bytes, bytes]]:
    """Every item hash found in redis (by scan, not by the indexes), by key, in every
    shard (one redis-server: a scan of one node)."""
    found = {}
    for name in client.scan_iter(match=SHARD_KEY_PREFIX + "*", count=1000):
        key = key_of_item(name.decode())
        if key is not None:
            found[key] = client.hgetall(name)
    return found


def counters(client: redis.Redis) -> tuple[int, ...]:
    """Every shard's version counter."""
    return tuple(int(client.get(place.counter) or 0) for place in all_shards())


def audit_entries(client: redis.Redis) -> int:
    """The entries of every audit chain (main and the shards')."""
    return sum(int(client.llen(lst)) for lst, _ in chain_keys().values())


def kv_state(client: redis.Redis) -> tuple[tuple[int, ...], int]:
    """What a refused write must not change: the counters and the audit chains."""
    return counters(client), audit_entries(client)


def live_items(client: redis.Redis, prefix: str) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(key, owner, value) of every item under ``prefix``, in every shard."""
    for place in all_shards():
        for member in client.zrangebylex(place.index, f"[{prefix}", f"[{prefix}\xff"):
            key = member.decode()
            owner, value = client.hmget(place.item(key), "o", "v")
            if value is not None:
                yield key, owner, value


def one_shard(prefix: str, count: int) -> list[str]:
    """``count`` keys ``prefix<n>`` that share one shard (a transaction on a cluster
    must keep to one shard)."""
    wanted = shard_of(f"{prefix}0")
    names = (f"{prefix}{n}" for n in itertools.count())
    return list(itertools.islice((n for n in names if shard_of(n) == wanted), count))


@pytest.fixture(params=["single", "cluster"])
def client(request) -> Iterator[redis.Redis]:
    """A client of a new single redis-server, then of a new three-master cluster
    (import it into a test module to run its tests on both)."""
    if request.param == "single":
        with RedisProcess() as connection:
            yield connection
        return
    kit = RedisClusterKit().start()
    connection = kit.client()
    try:
        yield connection
    finally:
        connection.close()
        kit.stop()


def store_for(backend, quota: Quota | None = None) -> ShardedKV:
    """The KV core on a ``shard_backends`` backend (its composition by name)."""
    name, client, _ = backend
    composed = None if name != "single-3-scripts" else False
    kv = ShardedKV(client, Durability(client, strict=False), quota, composed=composed)
    assert kv.composed == (name == "single")
    return kv


def fresh(prefix: str = "k") -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def actor(name: str | None = None) -> Actor:
    return Actor(name or f"u{secrets.token_hex(4)}", "127.0.0.1", "test")
