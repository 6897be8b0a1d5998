"""Watch states on the virtual shards (productionlab/shardwatch.py) on a real
single redis and a real three-master cluster: a key's index never goes back
(version, tombstone, expiry), and a prefix's one integer index, by the Lamport
fast-forward, is passed by every later write under the prefix in any shard."""

from __future__ import annotations

import time

import pytest
import redis

from productionlab.redis_process import RedisProcess
from productionlab.shardwatch import ShardWatchStore
from productionlab.store.layout import SHARDS, all_shards, shard, shard_for, shard_of
from productionlab.watch import ChangeFeed, PrefixTooBroad, Waiter
from tests.layout_kit import actor, fresh, store_for

pytest_plugins = ["tests.shard_backends"]


def test_a_keys_index_never_goes_back(where):
    kv, who, key = store_for(where), actor(), fresh("w")
    watches = ShardWatchStore(where[1])
    absent = watches.key_state(key)
    assert not absent.exists
    put = kv.put(key, b"v", who)
    live = watches.key_state(key)
    assert live.exists and live.index == put.version > absent.index and live.value == b"v"
    kv.delete(key, who)
    gone = watches.key_state(key)
    assert not gone.exists and gone.index > live.index
    assert gone.index % SHARDS == shard_of(key)


def test_an_expired_key_gets_its_tombstone_once(where):
    kv, who, key = store_for(where), actor(), fresh("w")
    _, client, _ = where
    watches = ShardWatchStore(client)
    put = kv.put(key, b"v", who, ttl=1)
    deadline = time.monotonic() + 30
    while client.exists(shard_for(key).item(key)) and time.monotonic() < deadline:
        time.sleep(0.2)
    tomb = watches.mark_expired(key)
    assert tomb > put.version and watches.mark_expired(key) == 0
    assert watches.key_state(key).index == tomb


def test_a_prefix_index_is_passed_by_every_later_write_in_any_shard(where):
    kv, who = store_for(where), actor()
    _, client, _ = where
    watches = ShardWatchStore(client)
    prefix = fresh("p") + "-"
    # Make the shards' counters far apart: one shard runs ahead.
    ahead = fresh("p")
    for _ in range(40):
        kv.put(ahead, b"x", who)
    first = watches.prefix_state([prefix], 0)
    assert first.keys == [] and first.newest == 0
    index = first.index
    assert index >= kv.get(ahead).version
    # One write in every shard after the read: each is past the index.
    written = {}
    while len(written) < SHARDS:
        key = prefix + fresh("k")
        written.setdefault(shard_of(key), key)
    versions = {key: kv.put(key, b"v", who).version for key in written.values()}
    assert all(v > index for v in versions.values()), (index, versions)
    after = watches.prefix_state([prefix], index)
    assert after.newest == max(versions.values())
    assert after.keys == sorted(versions.items())
    # A delete under the prefix is a change past the newest index too.
    gone = sorted(versions)[0]
    kv.delete(gone, who)
    later = watches.prefix_state([prefix], after.index)
    assert later.newest > after.index and gone not in dict(later.keys)


def test_a_prefix_over_the_budget_is_refused(where):
    kv, who = store_for(where), actor()
    prefix = fresh("b") + "-"
    for n in range(6):
        kv.put(f"{prefix}{n}", b"x", who)
    with pytest.raises(PrefixTooBroad):
        ShardWatchStore(where[1], prefix_keys=5).prefix_state([prefix], 0)
    assert len(ShardWatchStore(where[1], prefix_keys=6).prefix_state([prefix], 0).keys) == 6


def test_every_shard_counter_is_read_for_the_index(where):
    _, client, _ = where
    watches = ShardWatchStore(client)
    before = watches.current_index()
    last = all_shards()[-1]
    client.incrby(last.counter, 1000)
    assert watches.current_index() >= before + 1000 * SHARDS - SHARDS


def test_an_expired_shard_key_wakes_its_watch_through_the_change_feed(single):
    """The process's ChangeFeed hears the expired-key event of a shard's item,
    gives the key its tombstone in its shard and wakes the watch waiting on it."""
    kv, who, key = store_for(("single", single, None)), actor(), fresh("e")
    watches = ShardWatchStore(single)
    feed = ChangeFeed(single, watches)
    try:
        put = kv.put(key, b"soon gone", who, ttl=1)
        with feed.registered(Waiter(put.version, key=key)) as waiter:
            assert feed.subscribed.wait(30)
            deadline = time.monotonic() + 60
            # (Subscribing wakes every watch once: read again until the key is gone.)
            while single.zscore(shard_for(key).tombs, key) is None:
                assert waiter.event.wait(max(0.1, deadline - time.monotonic())), "no wake-up"
                waiter.event.clear()
        state = watches.key_state(key)
        assert not state.exists and state.index > put.version
        assert single.zscore(shard_for(key).tombs, key) == state.index
    finally:
        feed.stop()


def test_on_a_cluster_an_expiry_on_any_master_wakes_its_watch(cluster, cluster_client):
    """Keyspace events are node-local: the feed hears the expiry of a shard item
    held by another master than the one its change messages come through."""
    changes_master = cluster.node_for("{plab}:kv-changes")
    key = fresh("e")
    while cluster.node_for(shard_for(key).item(key)) is changes_master:
        key = fresh("e")
    kv, who = store_for(("cluster", cluster_client, cluster)), actor()
    watches = ShardWatchStore(cluster_client)
    feed = ChangeFeed(cluster_client, watches)
    try:
        put = kv.put(key, b"soon gone", who, ttl=1)
        with feed.registered(Waiter(put.version, key=key)) as waiter:
            assert len(feed.expiries) == 3
            deadline = time.monotonic() + 60
            while cluster_client.zscore(shard_for(key).tombs, key) is None:
                assert waiter.event.wait(max(0.1, deadline - time.monotonic())), "no wake-up"
                waiter.event.clear()
        assert watches.key_state(key).index > put.version
    finally:
        feed.stop()


def test_a_prefix_watch_is_answered_on_a_full_redis():
    """A watch is a read: on a redis at ``maxmemory`` (``noeviction``) it is answered,
    as key reads are. The prefix script's one write, the counters' fast-forward,
    must not be refused as a write that grows memory (the shards that lag are
    raised, so the index is still passed by every later write)."""
    with RedisProcess(password=False) as client:
        ahead = shard(3)
        client.set(ahead.counter, 5)  # shard 3 has given versions; the others lag
        client.config_set("maxmemory", "2mb")
        for n in range(1000):  # bounded: fill until redis refuses a write
            try:
                client.set(f"{{plab}}:test-filler:{n}", b"f" * 100_000)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            raise AssertionError("redis never got full: maxmemory is not set")
        state = ShardWatchStore(client).prefix_state(["full-"], 0)
        assert state.index == 5 * SHARDS + 3 and state.keys == []
        lagging = [s for s in all_shards() if s.number != 3]
        assert all(int(client.get(s.counter)) == 5 for s in lagging)
