"""bench/cluster_share.py's arithmetic (not its speed): each master's share of the
commands, EVALSHA calls, keys and memory, read from INFO on a real three-master
cluster (tests/cluster_kit.py) before and after writes whose masters are known; and
BENCHMARKS.md's issue 12 section (bench/cluster_report.py) rendered from them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tests.cluster_kit import RedisClusterKit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
cluster_share = importlib.import_module("cluster_share")
cluster_report = importlib.import_module("cluster_report")

PLAIN_WRITES = 30  # SETs on the first tag's master
SCRIPT_RUNS = 10  # EVALSHAs on the second tag's master, each two SETs
TWO_SETS = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 1"


@pytest.fixture(scope="module")
def kit() -> RedisClusterKit:
    kit = RedisClusterKit().start()
    yield kit
    kit.stop()


def tags_on_two_masters(kit: RedisClusterKit) -> tuple[str, str]:
    """Two hash tags whose slots two different masters own."""
    first = "{t0}"
    owner = kit.node_for(first)
    for n in range(1, 200):
        other = f"{{t{n}}}"
        if kit.node_for(other) is not owner:
            return first, other
    raise AssertionError("200 tags, all on one master")


def masters_of(kit: RedisClusterKit) -> dict[str, object]:
    return {f"m{i}": node.client for i, node in enumerate(kit.nodes)}


def name_of(kit: RedisClusterKit, tag: str) -> str:
    return f"m{kit.nodes.index(kit.node_for(tag))}"


def test_shares_count_each_master_from_two_readings(kit):
    plain, scripted = tags_on_two_masters(kit)
    plain_node, script_node = kit.node_for(plain), kit.node_for(scripted)
    sha = script_node.client.script_load(TWO_SETS)  # before the first reading
    masters = masters_of(kit)
    before = cluster_share.snapshot_all(masters)
    for n in range(PLAIN_WRITES):
        plain_node.client.set(f"{plain}:k{n}", "x" * 100)
    for n in range(SCRIPT_RUNS):
        script_node.client.evalsha(sha, 2, f"{scripted}:a{n}", f"{scripted}:b{n}", "y" * 100)
    after = cluster_share.snapshot_all(masters)
    requests = PLAIN_WRITES + SCRIPT_RUNS
    figures = cluster_share.shares(before, after, requests)

    a, b = figures[name_of(kit, plain)], figures[name_of(kit, scripted)]
    (idle_name,) = set(figures) - {name_of(kit, plain), name_of(kit, scripted)}
    idle = figures[idle_name]
    # commands: a script's own calls count, and its EVALSHA once; INFO is not counted
    assert (a["calls"], a["script_calls"]) == (PLAIN_WRITES, 0)
    assert (b["calls"], b["script_calls"]) == (SCRIPT_RUNS * 3, SCRIPT_RUNS)
    assert (idle["calls"], idle["script_calls"], idle["keys_delta"]) == (0, 0, 0)
    assert a["calls_share"] == b["calls_share"] == 0.5 and idle["calls_share"] == 0.0
    assert (a["script_calls_share"], b["script_calls_share"]) == (0.0, 1.0)
    assert a["calls_per_request"] == round(PLAIN_WRITES / requests, 2)
    # keys and memory: where the writes went
    assert (a["keys_delta"], b["keys_delta"]) == (PLAIN_WRITES, SCRIPT_RUNS * 2)
    total_keys = a["keys"] + b["keys"] + idle["keys"]
    assert a["keys_share"] == round(a["keys"] / total_keys, 4)
    assert a["dataset_delta"] > 0 and b["dataset_delta"] > 0
    assert sum(f["dataset_share"] for f in figures.values()) == pytest.approx(1, abs=1e-3)
    assert all(f["cpu_main_us_per_request"] >= 0 for f in figures.values())


def test_command_getkeys_is_counted_per_master_zero_included(kit):
    """COMMAND GETKEYS (a cluster client asking a node where a command's keys are)
    is kept per master, a master that answered none with an explicit 0, so the
    report can say none was measured rather than none was recorded."""
    asked = kit.nodes[0]
    masters = masters_of(kit)
    before = cluster_share.snapshot_all(masters)
    for n in range(7):
        assert asked.client.command_getkeys("SET", f"k{n}", "v") == [f"k{n}"]
    after = cluster_share.snapshot_all(masters)
    figures = cluster_share.shares(before, after, 14)
    assert figures["m0"]["command_getkeys"] == 7
    assert figures["m0"]["command_getkeys_per_request"] == 0.5
    assert figures["m0"]["per_command"] == {"command|getkeys": 0.5}
    for name in set(figures) - {"m0"}:
        assert (figures[name]["command_getkeys"], figures[name]["per_command"]) == (0, {})
        assert figures[name]["command_getkeys_per_request"] == 0.0


def test_the_report_shows_each_masters_share(kit):
    """Two rounds, one per stack, built from real readings: the section names each
    master with its share, and the cluster-against-one-redis ratios."""
    plain, _ = tags_on_two_masters(kit)
    node, owner = kit.node_for(plain), name_of(kit, plain)  # CLUSTER calls: before reading
    masters = masters_of(kit)
    before = cluster_share.snapshot_all(masters)
    for n in range(20):
        node.client.set(f"{plain}:r{n}", "z")
    after = cluster_share.snapshot_all(masters)
    common = {"rep": 0, "p50_ms": 1.0, "errors": 0, "non2xx": 0, "foreign_cpu": 0.0}
    runs = [
        {
            **common,
            "system": "hardened",
            "workload": "write",
            "rps": 1000.0,
            "p99_ms": 10.0,
            "cpu_us_per_request": {"nginx-worker1": 100, "ap1": 400, "ap2": 400, "redis": 100},
            "masters": {},
        },
        {
            **common,
            "system": "cluster",
            "workload": "write",
            "rps": 900.0,
            "p99_ms": 12.0,
            "cpu_us_per_request": {
                "nginx-worker1": 100,
                "ap1": 440,
                "ap2": 440,
                **{f"redis-{name}": 40 for name in masters},
            },
            "masters": cluster_share.shares(before, after, 20),
            "roles": {
                name: {"main": name == owner, "shards": [0, 1, 2] if name == owner else []}
                for name in masters
            },
        },
    ]
    text = "\n".join(cluster_report.section({"cluster_runs": runs}))
    assert f"| write | {owner} | `{{plab}}` + 3 shards (0-2) | 100.0% | 0.0% |" in text
    for name in set(masters) - {owner}:
        assert f"| write | {name} | nothing | 0.0% | 0.0% |" in text
    assert "write: req/s x0.90, CPU per request x1.10 (app x1.10, redis x1.20)" in text
    assert "| write | one | 1 | 1,000 | 10.0 | 100 | 800 | 0 | 100 | 1,000 | 0 % |" in text
    assert "write: m0 0.00, m1 0.00, m2 0.00 (0 in 1 rounds)" in text
    # rounds recorded without the count say nothing about it (absent is not zero)
    for name in runs[1]["masters"]:
        del runs[1]["masters"][name]["command_getkeys"]
    assert "COMMAND GETKEYS" not in "\n".join(cluster_report.section({"cluster_runs": runs}))


def test_the_command_mix_breaks_ties_by_name():
    """The report re-rendered from the same results is the same text: commands run as
    often come in name order, not in the order a set of names happened to have."""
    per_command = {"rpush": 0.29, "hmget": 0.29, "lindex": 0.29, "hget": 1.18, "zadd": 0.29}
    masters = {"m1": {"per_command": per_command}}
    runs = [dict(system="cluster", workload="write", errors=0, non2xx=0, masters=masters)]
    assert cluster_report.command_mix(runs, "write", top=4) == [
        "write, m1: hget 1.18, hmget 0.29, lindex 0.29, rpush 0.29"
    ]
