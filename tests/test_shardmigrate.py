"""The move of a one-tag store (written by the last release of that layout,
577e7c6, through its own KVStore: tests/upgrade_kit.one_tag_writes) to the
virtual shards (productionlab/shardmigrate.py), on a real single redis
and a real three-master cluster: values, versions (ETags), TTLs, tombstones,
listings and usage survive; new versions are above every old one; a run cut
short finishes when run again; a store of another shard count is refused."""

from __future__ import annotations

import secrets
import time

import pytest
import redis

from productionlab import users as users_module
from productionlab.audit import Actor
from productionlab.errors import QuotaExceeded, VersionConflict
from productionlab.kv import Quota
from productionlab.shardkv import ShardedKV
from productionlab.shardmigrate import (
    OLD_COUNTER,
    OLD_INDEX,
    OLD_ITEM,
    OLD_TOMBS,
    USERS,
    LastWriters,
    LayoutMismatch,
    _move_items,
    check_layout,
    migrate_to_shards,
)
from productionlab.store.durability import Durability
from productionlab.store.layout import LAYOUT_KEY, SHARDS, shard_for, shard_of
from tests import layout_kit
from tests.upgrade_kit import one_tag_writes

client = layout_kit.client  # the fixture: a single redis, then a cluster


def old_state(client: redis.Redis) -> dict:
    """The one-tag layout, written by 577e7c6's KVStore: what the migration must keep."""
    client.sadd(USERS, "alice", "bob", "carol")
    live = {}
    ops: list[list] = []
    for n in range(40):
        key = f"m-{n:02d}-{secrets.token_hex(2)}"
        who = "alice" if n % 3 else "bob"
        ops.append(["put", key, f"value {n}".encode().hex(), who, 3600 if n % 5 == 0 else None])
        live[key] = who
    moved = sorted(live)[0]
    ops.append(["put", moved, b"bob's now".hex(), "bob", None])  # the charge moves to bob
    live[moved] = "bob"
    deleted = []
    for key in sorted(live)[1:6]:
        ops.append(["delete", key, "alice"])
        deleted.append(key)
        del live[key]
    expiring = "m-expiring"
    ops.append(["put", expiring, b"soon gone".hex(), "alice", 1])
    one_tag_writes(client, ops)
    deadline = time.monotonic() + 30
    while client.exists(OLD_ITEM + expiring) and time.monotonic() < deadline:
        time.sleep(0.2)
    items = {}
    for key in live:
        value, version = client.hmget(OLD_ITEM + key, "v", "ver")
        expire_at = int(client.execute_command("PEXPIRETIME", OLD_ITEM + key))
        items[key] = (value, int(version), expire_at)
    tombs = {key: int(client.zscore(OLD_TOMBS, key)) for key in deleted}
    names = ("alice", "bob", "carol")
    usage = one_tag_writes(client, [["usage", name] for name in names])
    return {
        "items": items,
        "tombs": tombs,
        "counter": int(client.get(OLD_COUNTER)),
        "usage": {name: tuple(used) for name, used in zip(names, usage, strict=True)},
        "expiring": expiring,
    }


def assert_migrated(client: redis.Redis, before: dict) -> None:
    assert check_layout(client)
    sharded = ShardedKV(client, Durability(client, strict=False))
    for key, (value, version, expire_at) in before["items"].items():
        item = sharded.get(key)
        assert (item.value, item.version) == (value, version), key
        place = shard_for(key)
        assert int(client.execute_command("PEXPIRETIME", place.item(key))) == expire_at
        assert client.exists(OLD_ITEM + key) == 0
    for key, version in before["tombs"].items():
        assert int(client.zscore(shard_for(key).tombs, key)) == version
    for old in (OLD_COUNTER, OLD_INDEX, OLD_TOMBS):
        assert client.exists(old) == 0
    listed, cursor = sharded.list_keys(["m-"], "", limit=1000)
    assert listed == sorted(before["items"]) and cursor is None
    for name, used in before["usage"].items():
        now = sharded.usage(name)
        assert (now.keys, now.bytes) == used, name
    # New versions are above every old one and carry their shard; an old ETag works.
    key = sorted(before["items"])[-1]
    old_version = before["items"][key][1]
    with pytest.raises(VersionConflict):
        sharded.put(key, b"x", Actor("alice"), if_match=[str(old_version + 1)])
    written = sharded.put(key, b"new", Actor("alice"), if_match=[str(old_version)])
    assert written.version > before["counter"] and written.version % SHARDS == shard_of(key)
    fresh = sharded.put("m-new-key", b"x", Actor("carol"))
    assert fresh.version > before["counter"]
    # The quota counts the migrated usage.
    alice_keys = before["usage"]["alice"][0]
    limited = ShardedKV(client, Durability(client, strict=False), Quota(max_keys=alice_keys))
    with pytest.raises(QuotaExceeded):
        limited.put("m-one-more", b"x", Actor("alice"))


def test_a_store_of_todays_layout_moves_to_the_shards(client):
    before = old_state(client)
    assert not check_layout(client)
    assert migrate_to_shards(client, batch=7)
    assert_migrated(client, before)
    assert not migrate_to_shards(client)  # once only


def test_a_migration_cut_short_finishes_when_run_again(client):
    before = old_state(client)
    some = sorted(before["items"])[:9] + sorted(before["tombs"])[:2]
    _move_items(client, some, LastWriters(client))
    # A crash between a copy and the removal of its original: both exist.
    key = sorted(before["items"])[12]
    client.hset(shard_for(key).item(key), mapping=client.hgetall(OLD_ITEM + key))
    assert migrate_to_shards(client, batch=5)
    assert_migrated(client, before)


def test_a_store_of_another_shard_count_is_refused(client):
    client.hset(LAYOUT_KEY, mapping={"shards": 8, "version": 2})
    with pytest.raises(LayoutMismatch, match="shard count is fixed"):
        migrate_to_shards(client)


def test_the_users_set_is_the_users_modules():
    assert USERS == users_module.USERS
