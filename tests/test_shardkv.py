"""The KV core on the virtual-shard layout (productionlab/shardkv.py), on a real
single redis (its one-script composition, and the cluster's three-script one)
and on a real three-master Redis Cluster: versions carry their shard and never
repeat, conditions, listings merged across shards behind one cursor, the
per-user limit and quota kept in {plab}, each shard's own audit chain, and keys
spread over the masters. Not yet wired to the routes (docs/design/virtual-shards.md)."""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

import pytest
import redis

from productionlab import shardkv
from productionlab.audit import AuditLog
from productionlab.audit_archive import Archive
from productionlab.audit_checkpoint import CheckpointFile
from productionlab.audit_verify import verify_log
from productionlab.errors import KeyNotFound, QuotaExceeded, RateLimited, VersionConflict
from productionlab.kv import Quota
from productionlab.luascripts import SCRIPTS
from productionlab.ratelimit import Ticket
from productionlab.shardkv import USAGE_TOTAL, ShardedKV
from productionlab.store import layout
from productionlab.store.durability import Durability
from productionlab.store.layout import SHARDS, shard_for, shard_of, shard_of_version
from productionlab.store.pinning import PinnableRedis
from tests.layout_kit import actor, fresh, store_for

pytest_plugins = ["tests.shard_backends"]


def test_a_key_lives_in_its_shard_and_its_versions_carry_the_shard(backend):
    kv, who = store_for(backend), actor()
    _, client, _ = backend
    keys = [fresh() for _ in range(24)]
    versions: dict[str, list[int]] = {}
    for key in keys:
        first = kv.put(key, b"one", who)
        assert first.created
        second = kv.put(key, b"two", who)
        assert not second.created and second.version > first.version
        versions[key] = [first.version, second.version]
        assert client.exists(shard_for(key).item(key)) == 1
        assert client.exists("{plab}:kv:" + key) == 0
        item = kv.get(key)
        assert (item.value, item.version) == (b"two", second.version)
    for key, seen in versions.items():
        assert all(shard_of_version(v) == shard_of(key) for v in seen)
    assert len({shard_of(key) for key in keys}) > 1
    everything = [v for seen in versions.values() for v in seen]
    assert len(everything) == len(set(everything))


def test_a_deleted_key_written_again_never_reuses_a_version(backend):
    kv, who, key = store_for(backend), actor(), fresh()
    before = kv.put(key, b"x", who).version
    deleted = kv.delete(key, who)
    assert deleted == before
    with pytest.raises(KeyNotFound):
        kv.get(key)
    with pytest.raises(KeyNotFound):
        kv.delete(key, who)
    again = kv.put(key, b"y", who)
    # The delete's tombstone took a version in between.
    assert again.created and again.version >= before + 2 * SHARDS


def test_conditions_refuse_and_change_nothing(backend):
    kv, who, key = store_for(backend), actor(), fresh()
    version = kv.put(key, b"v1", who, if_absent=True).version
    with pytest.raises(VersionConflict) as absent:
        kv.put(key, b"v2", who, if_absent=True)
    assert absent.value.headers == {"ETag": f'"{version}"'}
    with pytest.raises(VersionConflict):
        kv.put(key, b"v2", who, if_match=[str(version + SHARDS)])
    with pytest.raises(VersionConflict):
        kv.put(fresh(), b"v2", who, if_match=["*"])
    with pytest.raises(VersionConflict):
        kv.delete(key, who, if_match=[str(version - SHARDS)])
    assert kv.get(key).version == version and kv.get(key).value == b"v1"
    updated = kv.put(key, b"v2", who, if_match=["1", str(version)])
    assert updated.version > version
    assert kv.delete(key, who, if_match=["*"]) == updated.version


def test_listings_merge_every_shard_behind_one_cursor(backend):
    kv, who = store_for(backend), actor()
    run = secrets.token_hex(3)
    wanted = sorted(f"ls{run}-{n:03d}" for n in range(70))
    for key in wanted:
        kv.put(key, b"x", who)
    kv.put(f"lt{run}-other", b"x", who)
    assert len({shard_of(k) for k in wanted}) == SHARDS
    pages, seen, cursor = 0, [], ""
    while True:
        page, cursor = kv.list_keys([f"ls{run}-"], cursor, limit=9)
        assert page == sorted(page) and len(page) <= 9
        seen += page
        pages += 1
        if cursor is None:
            break
        assert pages < 20
    assert seen == wanted and pages == 8
    # Two prefixes, the second range after the first.
    both, more = kv.list_keys([f"ls{run}-06", f"lt{run}-"], "", limit=100)
    assert both == [*[k for k in wanted if k.startswith(f"ls{run}-06")], f"lt{run}-other"]
    assert more is None


def test_an_expired_key_leaves_the_listing(backend):
    kv, who, run = store_for(backend), actor(), secrets.token_hex(3)
    _, client, _ = backend
    kv.put(f"ex{run}-a", b"x", who, ttl=1)
    kv.put(f"ex{run}-b", b"x", who)
    deadline = time.monotonic() + 30
    while client.exists(shard_for(f"ex{run}-a").item(f"ex{run}-a")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kv.list_keys([f"ex{run}-"])[0] == [f"ex{run}-b"]
    assert client.zscore(shard_for(f"ex{run}-a").tombs, f"ex{run}-a") is not None


def test_the_quota_counts_every_shard_and_a_refused_write_changes_nothing(backend):
    kv, who = store_for(backend, Quota(max_keys=3, max_bytes=10_000)), actor()
    _, client, _ = backend
    keys = [fresh("q") for _ in range(3)]
    for key in keys:
        kv.put(key, b"12345", who)
    extra = fresh("q")
    with pytest.raises(QuotaExceeded, match="you use 3 keys"):
        kv.put(extra, b"x", who)
    assert client.exists(shard_for(extra).item(extra)) == 0
    # Overwriting (no growth in keys) and shrinking are allowed at the quota.
    kv.put(keys[0], b"1", who)
    usage = kv.usage(who.name)
    assert (usage.keys, usage.bytes) == (3, sum(len(k) for k in keys) + 1 + 5 + 5)
    kv.delete(keys[1], who)
    kv.put(extra, b"x", who)
    assert kv.usage(who.name).keys == 3
    # The bytes quota: a value that would pass it is refused, a smaller one is not.
    other = actor()
    small = store_for(backend, Quota(max_keys=100, max_bytes=40))
    key = fresh("b")
    small.put(key, b"a" * 20, other)
    with pytest.raises(QuotaExceeded):
        small.put(fresh("b"), b"a" * 20, other)
    small.put(key, b"a" * 25, other)  # grows by 5: within 40
    with pytest.raises(QuotaExceeded):
        small.put(key, b"a" * 40, other)
    assert small.get(key).value == b"a" * 25
    # No hold is left behind on {plab}.
    held = client.hmget(USAGE_TOTAL + other.name, "hk", "hb")
    assert [int(h or 0) for h in held] == [0, 0]


def test_an_overwrite_by_another_user_moves_the_charge(backend):
    kv, alice, bob, key = store_for(backend), actor(), actor(), fresh()
    kv.put(key, b"alice's", alice)
    kv.put(key, b"bob's", bob)
    assert kv.usage(alice.name).keys == 0
    assert (kv.usage(bob.name).keys, kv.usage(bob.name).bytes) == (1, len(key) + 5)
    kv.delete(key, alice)
    assert kv.usage(bob.name).keys == 0


def test_expired_charges_in_other_shards_free_the_quota_at_once(backend):
    kv, who = store_for(backend, Quota(max_keys=2, max_bytes=10_000)), actor()
    _, client, _ = backend
    first, second = fresh("t"), fresh("t")
    while shard_of(second) == shard_of(first):
        second = fresh("t")
    kv.put(first, b"x", who, ttl=1)
    kv.put(second, b"x", who, ttl=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        client.exists(shard_for(first).item(first)) or client.exists(shard_for(second).item(second))
    ):
        time.sleep(0.2)
    third = fresh("t")
    while shard_of(third) in (shard_of(first), shard_of(second)):
        third = fresh("t")
    assert kv.put(third, b"y", who).created
    assert kv.usage(who.name).keys == 1


def test_the_per_user_limit_counts_reads_and_writes_and_a_limited_write_changes_nothing(backend):
    kv, who, key = store_for(backend), actor(), fresh()
    ticket = Ticket(f"{{plab}}:limits:user:{who.name}:60", 3, 60)
    kv.put(key, b"1", who, limit=ticket)
    kv.get(key, limit=ticket)
    kv.put(key, b"2", who, limit=ticket)
    with pytest.raises(RateLimited):
        kv.get(key, limit=ticket)
    with pytest.raises(RateLimited):
        kv.put(key, b"3", who, limit=ticket)
    with pytest.raises(RateLimited):
        kv.delete(key, who, limit=ticket)
    assert kv.get(key).value == b"2"


def test_every_shard_keeps_its_own_audit_chain_and_each_verifies(backend):
    kv, who = store_for(backend), actor()
    _, client, _ = backend
    written = {}
    for _ in range(40):
        key = fresh("a")
        written[key] = kv.put(key, b"x", who).version
    with tempfile.TemporaryDirectory() as scratch:
        archive, checkpoints = Archive(Path(scratch) / "a"), CheckpointFile(Path(scratch) / "c")
        for place in layout.all_shards():
            log = AuditLog(client, place.audit)
            result = verify_log(client, archive, checkpoints, {}, log=log)
            assert result.ok, (place.number, result.problems)
            for entry in log.iter_all():
                assert shard_of(entry["target"]) == place.number
                if entry["target"] in written and entry["actor"] == who.name:
                    assert int(entry["version"]) == written[entry["target"]]
    # The main chain holds no KV entry of these writes.
    assert not any(e.get("target") in written for e in AuditLog(client).iter_all())


def test_a_late_or_repeated_settle_changes_nothing(backend):
    kv, who, key = store_for(backend), actor(), fresh()
    _, client, _ = backend
    kv.put(key, b"12345", who)
    place = shard_for(key)
    usage = client.hgetall(USAGE_TOTAL + who.name)
    seq = int(usage[f"q{place.number:02d}".encode()])
    old = [who.name, 0, 0, seq, 0]  # as stale as the recorded one: ignored
    keys, size = kv._settle(who.name, "", place.number, old)
    assert (keys, size) == (1, len(key) + 5)
    kv.put(key, b"1", who)
    assert kv._settle(who.name, "", place.number, old) == (1, len(key) + 1)


def test_the_names_in_the_lua_are_the_layouts():
    marks = SCRIPTS["shard_list"].text
    for name in (
        "':kv:'",
        "':usage:'",
        "':kv-watch:tombs'",
        "':kv-watch:floor'",
        "':kv-watch:ttl'",
    ):
        assert name in marks
    place = layout.shard(3)
    assert place.item("x") == place.tag + ":kv:x" and place.usage("u") == place.tag + ":usage:u"
    assert place.tombs.endswith(":kv-watch:tombs") and place.ttl_versions.endswith(":kv-watch:ttl")
    assert f"local SHARDS = {SHARDS}" in marks
    assert f"local USAGE_TOTAL = '{shardkv.USAGE_TOTAL}'" in SCRIPTS["shard_settle"].text


def test_keys_spread_over_the_masters_of_a_cluster(cluster, cluster_client):
    kv = store_for(("cluster", cluster_client, cluster))
    who = actor()
    before = cluster.keys_per_node()
    for _ in range(200):
        kv.put(fresh("spread"), b"x", who)
    after = cluster.keys_per_node()
    added = {port: after[port] - before.get(port, 0) for port in after}
    assert len(added) == 3 and all(n > 0 for n in added.values()), added
    assert max(added.values()) <= 0.5 * sum(added.values()), added


@pytest.mark.parametrize("committed", [False, True], ids=["before-the-shard", "after-the-shard"])
def test_a_write_lost_between_its_reservation_and_its_settle_is_repaired(three_scripts, committed):
    """Cluster composition: a request that dies after its reservation leaves a hold
    (an over-count); once the hold's deadline passes, the user's next write
    reconciles the hold's shard (counting what the lost write did there, if it
    got that far), releases the hold, and the quota is exact again."""
    backend = three_scripts
    _, client, _ = backend
    kv, who = store_for(backend, Quota(max_keys=2, max_bytes=10_000)), actor()
    kv.put(fresh("h"), b"x", who)
    lost_key = fresh("h")
    place = shard_for(lost_key)
    kv.hold_ms = -1  # the next hold is past its deadline at once
    hold, _ = kv._reserve(who.name, Ticket("{plab}:limits:none", 0, 0), 1, 100, place.number)
    kv.hold_ms = shardkv.HOLD_MS
    assert hold is not None and hold.keys == 1
    if committed:  # the shard script ran; the settle never did
        status, *_ = shardkv.SHARD_PUT(
            client,
            keys=shardkv.shard_keys(place, lost_key),
            args={
                "audit": who.audit_args(),
                "tag": place.tag,
                "shard": place.number,
                "key": lost_key,
                "value": b"x",
                "ttl_ms": 0,
                "cond": "",
                "expected": "",
                "owner": who.name,
                "grant_keys": hold.keys,
                "grant_bytes": hold.bytes,
            },
        )
        assert int(status) == 0
    assert client.zcard(shardkv.HOLDS + who.name) == 1
    # The user is at 2 keys counted (1 written + 1 held): a new key would be refused
    # if the hold stayed. With the repair, it fits exactly when the lost write did not land.
    if committed:
        with pytest.raises(QuotaExceeded, match="you use 2 keys"):
            kv.put(fresh("h"), b"x", who)
        assert kv.get(lost_key).value == b"x"
    else:
        assert kv.put(fresh("h"), b"x", who).created
    assert client.zcard(shardkv.HOLDS + who.name) == 0
    assert [int(h or 0) for h in client.hmget(USAGE_TOTAL + who.name, "hk", "hb")] == [0, 0]
    assert kv.usage(who.name).keys == 2


def test_a_script_given_names_off_the_layout_refuses_and_changes_nothing(single):
    key, who = fresh(), actor()
    place = shard_for(key)
    wrong = {
        **shardkv.shard_keys(place, key),
        "counter": layout.shard((place.number + 1) % SHARDS).counter,
    }
    with pytest.raises(redis.ResponseError, match="not the layout"):
        shardkv.SHARD_PUT(
            single,
            keys=wrong,
            args={
                "audit": who.audit_args(),
                "tag": place.tag,
                "shard": place.number,
                "key": key,
                "value": b"x",
                "ttl_ms": 0,
                "cond": "",
                "expected": "",
                "owner": who.name,
                "grant_keys": 1,
                "grant_bytes": 100,
            },
        )
    assert single.exists(place.item(key)) == 0


def test_a_read_on_the_planes_client_goes_out_on_the_threads_kept_connection(single):
    """The planes' client (PinnableRedis) sends a read's ticket and the shard read
    together on the thread's kept connection (no pool hand-out, as execute_held);
    a script redis lost is loaded again, and an error reply is raised."""
    given = single.connection_pool.connection_kwargs
    client = PinnableRedis(
        **{k: given[k] for k in ("host", "port", "username", "password") if k in given}
    )
    try:
        kv, who, key = ShardedKV(client, Durability(client, strict=False)), actor(), fresh()
        ticket = Ticket(f"{{plab}}:limits:user:{who.name}:60", 3, 60)
        kv.put(key, b"v", who)
        assert kv.get(key, limit=ticket).value == b"v"
        kept = client._pins().kept
        assert kept is not None and client.connection is None
        single.script_flush()
        assert kv.get(key, limit=ticket).value == b"v"
        assert client._pins().kept is kept
        kv.get(key, limit=ticket)
        with pytest.raises(RateLimited):
            kv.get(key, limit=ticket)
        single.set(shard_for("wrong").item("wrong"), "a string, not a hash")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            kv.get("wrong", limit=Ticket(f"{{plab}}:limits:user:{who.name}-2:60", 3, 60))
    finally:
        client.close()


def test_a_listing_asks_every_shard_together_and_survives_a_script_flush(single):
    kv, who = ShardedKV(single, Durability(single, strict=False)), actor()
    prefix = fresh("rt") + "-"
    keys = sorted(f"{prefix}{n:02d}" for n in range(20))
    for key in keys:
        kv.put(key, b"x", who)
    single.script_flush()
    single.config_resetstat()
    assert kv.list_keys([prefix])[0] == keys
    stats = single.info("commandstats")
    # Every shard's script ran once, EVALSHA sent once per shard, reloaded once.
    assert stats["cmdstat_evalsha"]["calls"] == 2 * SHARDS
    assert stats["cmdstat_script|load"]["calls"] == 1
