"""Transactions and bulk requests on the virtual shards (productionlab/shardbatch.py),
on a real single redis (one script over any shards; and the cluster's scripts) and
a real three-master cluster (a transaction over several shards refused, a bulk
request split by shard): conditions, all-or-nothing, order, versions, quota,
the per-user limit counting operations, and one audit entry per change in its
shard's chain."""

from __future__ import annotations

import pytest

from productionlab.audit import AuditLog
from productionlab.batch import ConditionFailed, Op, TxnQuotaExceeded
from productionlab.errors import RateLimited
from productionlab.kv import Quota
from productionlab.ratelimit import Ticket
from productionlab.shardbatch import CrossShard, ShardBatches
from productionlab.store.layout import SHARDS, shard_for, shard_of, shard_of_version
from tests.layout_kit import actor, fresh, store_for

pytest_plugins = ["tests.shard_backends"]


def same_shard_keys(count: int) -> list[str]:
    """``count`` fresh keys of one shard."""
    first = fresh("t")
    keys = [first]
    while len(keys) < count:
        candidate = fresh("t")
        if shard_of(candidate) == shard_of(first):
            keys.append(candidate)
    return keys


def spread_keys(count: int) -> list[str]:
    """``count`` fresh keys of ``count`` different shards."""
    keys: dict[int, str] = {}
    while len(keys) < count:
        candidate = fresh("s")
        keys.setdefault(shard_of(candidate), candidate)
    return list(keys.values())


def keys_for(backend, count: int) -> list[str]:
    """Keys a transaction may span here: any shards in one script, else one shard."""
    return spread_keys(count) if backend[0] == "single" else same_shard_keys(count)


def test_a_transaction_applies_together_in_order_with_versions_of_its_shards(backend):
    kv, who = store_for(backend), actor()
    batches = ShardBatches(kv)
    a, b, c = keys_for(backend, 3)
    kv.put(c, b"old", who)
    results = batches.run(
        [
            Op("put", a, b"1"),
            Op("put", b, b"2"),
            Op("get", a),
            Op("put", a, b"again"),
            Op("delete", c),
            Op("get", c),
        ],
        who,
        atomic=True,
    )
    assert [r.outcome for r in results] == [
        "created",
        "created",
        "found",
        "updated",
        "deleted",
        "absent",
    ]
    assert results[2].value == b"1" and results[2].version == results[0].version
    assert results[3].version > results[0].version
    for key, result in ((a, results[3]), (b, results[1])):
        assert shard_of_version(result.version) == shard_of(key)
        assert kv.get(key).version == result.version


def test_a_failed_condition_applies_nothing_and_names_its_index(backend):
    kv, who = store_for(backend), actor()
    batches = ShardBatches(kv)
    a, b, c = keys_for(backend, 3)
    version = kv.put(a, b"kept", who).version
    with pytest.raises(ConditionFailed) as failed:
        batches.run(
            [
                Op("put", b, b"never"),
                Op("version_equals", a, version=version + SHARDS),
                Op("put", a, b"never"),
            ],
            who,
            atomic=True,
        )
    assert failed.value.index == 1 and failed.value.current == version
    assert kv.get(a).value == b"kept"
    assert kv.list_keys([b])[0] == []
    # The versions a put will get are known in advance: a condition on them holds.
    put_then_check = batches.run(
        [Op("put", b, b"x"), Op("exists", b), Op("absent", c)], who, atomic=True
    )
    assert [r.outcome for r in put_then_check] == ["created", "held", "held"]
    nxt = put_then_check[0].version + SHARDS
    assert (
        batches.run([Op("put", b, b"y"), Op("version_equals", b, version=nxt)], who, atomic=True)[
            1
        ].outcome
        == "held"
    )


def test_a_transaction_over_quota_applies_nothing(backend):
    kv, who = store_for(backend, Quota(max_keys=3, max_bytes=10_000)), actor()
    batches = ShardBatches(kv)
    keys = keys_for(backend, 4)
    kv.put(keys[0], b"x", who)
    with pytest.raises(TxnQuotaExceeded) as over:
        batches.run([Op("put", k, b"x") for k in keys[1:]], who, atomic=True)
    assert over.value.index == 2 and over.value.keys == 1
    assert all(kv.list_keys([k])[0] == [] for k in keys[1:])
    # A delete of the writer's own key makes room for a later put.
    done = batches.run(
        [Op("delete", keys[0]), *[Op("put", k, b"x") for k in keys[1:]]], who, atomic=True
    )
    assert [r.outcome for r in done] == ["deleted", "created", "created", "created"]
    assert kv.usage(who.name).keys == 3


def test_bulk_items_are_independent_and_a_put_over_quota_is_refused_alone(backend):
    kv, who = store_for(backend, Quota(max_keys=2, max_bytes=10_000)), actor()
    batches = ShardBatches(kv)
    keys = spread_keys(4)  # a bulk request may span shards everywhere
    results = batches.run(
        [Op("put", keys[0], b"1"), Op("delete", keys[1]), *[Op("put", k, b"x") for k in keys[2:]]],
        who,
        atomic=False,
    )
    outcomes = [r.outcome for r in results]
    assert outcomes[1] == "absent"
    puts = [outcomes[0], *outcomes[2:]]
    assert sorted(puts) == ["created", "created", "quota_exceeded"]
    if backend[0] == "single":  # one script: the items apply in the request's order
        assert outcomes[0] == "created" and outcomes[3] == "quota_exceeded"
    assert kv.usage(who.name).keys == 2


def test_each_operation_counts_against_the_user_limit(backend):
    kv, who = store_for(backend), actor()
    batches = ShardBatches(kv)
    ticket = Ticket(f"{{plab}}:limits:user:{who.name}:60", 5, 60)
    keys = spread_keys(3)
    batches.run([Op("put", k, b"x") for k in keys], who, atomic=False, limit=ticket)
    with pytest.raises(RateLimited):
        batches.run([Op("get", k) for k in keys], who, atomic=False, limit=ticket)
    assert kv.get(keys[0]).value == b"x"


def test_every_change_has_one_audit_entry_in_its_shards_chain(backend):
    kv, who = store_for(backend), actor()
    _, client, _ = backend
    keys = keys_for(backend, 3)
    ShardBatches(kv).run(
        [Op("put", keys[0], b"x"), Op("put", keys[1], b"y"), Op("get", keys[2])], who, atomic=True
    )
    for key in keys:
        entries = [
            e
            for e in AuditLog(client, shard_for(key).audit).iter_all()
            if e["target"] == key and e["actor"] == who.name
        ]
        assert [e["action"] for e in entries] == ([] if key == keys[2] else ["kv.put"])


def test_a_transaction_over_several_shards_runs_on_one_redis_and_is_refused_on_a_cluster(backend):
    kv, who = store_for(backend), actor()
    name = backend[0]
    keys = spread_keys(2)
    ops = [Op("put", keys[0], b"a"), Op("put", keys[1], b"b")]
    if name == "single":
        assert [r.outcome for r in ShardBatches(kv).run(ops, who, atomic=True)] == [
            "created",
            "created",
        ]
        return
    with pytest.raises(CrossShard, match="2 shards"):
        ShardBatches(kv).run(ops, who, atomic=True)
    assert kv.list_keys([keys[0]])[0] == [] and kv.list_keys([keys[1]])[0] == []
