"""Issue 12 item 4: the hardened stack over one redis and over a three-master Redis
Cluster on loopback, in the same run, round by round; and what each redis master
does of the work.

Per master, from two INFO readings around each wrk run (``snapshot`` before and
after, ``shares``):

- commands: the ``calls`` of every ``cmdstat_*`` (INFO commandstats) summed, and per
  command (``per_command``, calls per request). Redis counts a command a script runs
  as a call of its own too, so a KV write is its EVALSHA(s) plus the calls inside;
  the EVALSHA calls alone are kept as well (``script_calls``). ``INFO`` itself (these
  readings, the planes' gauges) is left out. ``COMMAND GETKEYS`` (INFO's
  ``cmdstat_command|getkeys``: a cluster client asking a node where a command's keys
  are, one more round trip) is kept on its own too, a zero included
  (``command_getkeys``), so the report can say it was measured as none.
- memory: ``used_memory`` and ``used_memory_dataset`` (after, and the change), and
  its keys (INFO keyspace, so that only INFO, left out of the count, is sent).
- main-thread CPU: ``used_cpu_sys_main_thread + used_cpu_user_main_thread`` (INFO
  cpu), per request of the run.

The shares are whatever the masters report. What the layout puts on each master
(whether it owns ``{plab}``'s slot, which virtual shards' tags it owns:
``store/layout.py``) is read from the cluster once per run (``roles``), so the
report can say which master takes the per-user limit and quota ledger every KV
request touches and which only hold shards.

    python bench/run.py --cluster-only    only this section, into the kept results
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests/cluster_kit.py: the tests' cluster launcher
    sys.path.insert(0, str(ROOT))

import harness  # noqa: E402

from productionlab.configfiles import plane_redis_users  # noqa: E402
from productionlab.store.layout import MAIN_TAG, all_shards  # noqa: E402
from productionlab.supervisor import Supervisor  # noqa: E402
from tests.cluster_kit import RedisClusterKit  # noqa: E402

WORKLOADS = ("read", "write", "mix")
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
GETKEYS = "command|getkeys"  # INFO commandstats' name for COMMAND GETKEYS
NOT_COUNTED = ("info",)  # the readings themselves (and the planes' memory gauges)
DISTURBED_PERCENT = 10.0  # run.DISTURBED_PERCENT


@dataclass
class Snapshot:
    """One master's counters at one moment."""

    calls: dict[str, int]
    used_memory: int
    used_memory_dataset: int
    keys: int
    cpu_main_s: float


def snapshot(client: redis.Redis) -> Snapshot:
    """INFO commandstats, memory, cpu and keyspace of one redis (INFO only: the
    reading adds nothing to the commands it counts)."""
    stats = client.info("commandstats")
    memory = client.info("memory")
    cpu = client.info("cpu")
    keyspace = client.info("keyspace")
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.startswith("cmdstat_")
    }
    return Snapshot(
        calls=calls,
        used_memory=int(memory["used_memory"]),
        used_memory_dataset=int(memory["used_memory_dataset"]),
        keys=sum(int(db["keys"]) for db in keyspace.values() if isinstance(db, dict)),
        cpu_main_s=float(cpu["used_cpu_sys_main_thread"]) + float(cpu["used_cpu_user_main_thread"]),
    )


def snapshot_all(clients: dict[str, redis.Redis]) -> dict[str, Snapshot]:
    return {name: snapshot(client) for name, client in clients.items()}


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def shares(
    before: dict[str, Snapshot], after: dict[str, Snapshot], requests: int
) -> dict[str, dict]:
    """Each master's part of the work between two readings of every master: its
    commands and script calls (and their share of all masters'), its keys and
    dataset memory after (and their shares), the changes, and its main-thread CPU
    per request (``requests``: how many HTTP requests the run answered)."""
    figures: dict[str, dict] = {}
    for name, end in after.items():
        start = before[name]
        delta = {
            command: calls - start.calls.get(command, 0)
            for command, calls in end.calls.items()
            if command not in NOT_COUNTED
        }
        figures[name] = {
            "per_command": {
                command: round(calls / max(1, requests), 3)
                for command, calls in sorted(delta.items(), key=lambda kv: -kv[1])
                if calls
            },
            "calls": sum(delta.values()),
            "script_calls": sum(delta.get(c, 0) for c in SCRIPT_COMMANDS),
            "command_getkeys": delta.get(GETKEYS, 0),
            "command_getkeys_per_request": round(delta.get(GETKEYS, 0) / max(1, requests), 3),
            "keys": end.keys,
            "keys_delta": end.keys - start.keys,
            "used_memory": end.used_memory,
            "used_memory_delta": end.used_memory - start.used_memory,
            "dataset": end.used_memory_dataset,
            "dataset_delta": end.used_memory_dataset - start.used_memory_dataset,
            "cpu_main_us_per_request": round(
                1e6 * (end.cpu_main_s - start.cpu_main_s) / max(1, requests), 1
            ),
        }
    totals = {
        field: sum(f[field] for f in figures.values())
        for field in ("calls", "script_calls", "keys", "dataset")
    }
    for f in figures.values():
        for field, total in totals.items():
            f[f"{field}_share"] = _share(f[field], total)
        f["calls_per_request"] = round(f["calls"] / max(1, requests), 2)
    return figures


class ClusterHardened(harness.Hardened):
    """The hardened stack (edge, planes) with both planes on a three-master Redis
    Cluster on loopback (tests/cluster_kit.py, AOF everysec as the stack's own
    redis), as ``PLAB_REDIS_URL=redis+cluster://...``, each plane as its own ACL
    user set on every master. The stack's own redis still starts and sits idle; its
    CPU is counted as ours, not in the per-request figures."""

    def __init__(self) -> None:
        self.cluster = RedisClusterKit().start()
        try:
            super().__init__(redis_url=self.cluster.url, before_start=self._add_users)
        except BaseException:
            self.cluster.stop()
            raise
        self.name = "cluster"
        self.label = self.label.replace("hardened", "hardened on a 3-master cluster", 1)

    def _add_users(self, stack: Supervisor) -> None:
        self.cluster.add_users(plane_redis_users(stack.secrets_dir))

    def masters(self) -> dict[str, redis.Redis]:
        return {
            f"redis-m{index + 1}": node.client
            for index, node in enumerate(self.cluster.nodes)
            if node.client is not None
        }

    def roles(self) -> dict[str, dict]:
        """Per master: whether it owns ``{plab}``'s slot and the virtual shards whose
        tags' slots it owns (the cluster's own map, read now)."""
        names = {node.port: f"redis-m{index + 1}" for index, node in enumerate(self.cluster.nodes)}
        found = {name: {"main": False, "shards": []} for name in names.values()}
        found[names[self.cluster.node_for(MAIN_TAG).port]]["main"] = True
        for place in all_shards():
            found[names[self.cluster.node_for(place.tag).port]]["shards"].append(place.number)
        return found

    def processes(self) -> dict[str, int]:
        found = {k: v for k, v in super().processes().items() if k != "redis"}
        for index, node in enumerate(self.cluster.nodes):
            if node.process is not None:
                found[f"redis-m{index + 1}"] = node.process.pid
        return found

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.cluster.stop()


def single_masters(system: harness.Hardened) -> dict[str, redis.Redis]:
    """The one redis of the hardened stack, under the name its process has."""
    return {"redis": system.stack.redis_client()}


def measure_round(
    system: harness.Hardened,
    masters: dict[str, redis.Redis],
    workload: str,
    seconds: float,
    retries: int,
) -> dict:
    """One wrk run with every master read before and after it; run again (up to
    ``retries`` times) while others used more than DISTURBED_PERCENT of the machine,
    as run.measure does, the readings taken around the kept run only."""
    reruns = 0
    for attempt in range(retries + 1):
        pids = system.processes()
        cpu_before = harness.cpu_seconds(pids)
        before = snapshot_all(masters)
        result = harness.run_wrk(system, workload, seconds, extra_env={"BENCH_STATUS": "1"})
        after = snapshot_all(masters)
        cpu_after = harness.cpu_seconds(pids)
        if result.foreign_cpu <= DISTURBED_PERCENT or attempt == retries:
            break
        reruns += 1
        print(
            f"bench: {system.name}/{workload} disturbed ({result.foreign_cpu:.0f}% CPU used "
            "by other processes); re-running",
            file=sys.stderr,
        )
        time.sleep(2)
    requests = max(1, result.requests)
    return {
        "system": system.name,
        "workload": workload,
        "rps": result.rps,
        "requests": result.requests,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "non2xx": result.non2xx,
        "status": result.status,
        "foreign_cpu": result.foreign_cpu,
        "disturbed_reruns": reruns,
        "cpu_us_per_request": {
            name: round(1e6 * (cpu_after[name] - cpu_before[name]) / requests)
            for name in cpu_after
            if name in cpu_before
        },
        "masters": shares(before, after, result.requests),
    }


def measure(
    single: harness.Hardened,
    cluster: ClusterHardened,
    seconds: float,
    reps: int,
    retries: int,
    workloads: tuple[str, ...] = WORKLOADS,
) -> list[dict]:
    """Interleaved rounds: per rep and workload, the single-redis stack and the
    cluster stack back to back (which goes first alternates by rep)."""
    pairs = [(single, single_masters(single)), (cluster, cluster.masters())]
    roles = cluster.roles()
    runs = []
    try:
        for rep in range(reps):
            for workload in workloads:
                for system, masters in pairs if rep % 2 == 0 else pairs[::-1]:
                    run = measure_round(system, masters, workload, seconds, retries)
                    run["rep"] = rep
                    if system is cluster:
                        run["roles"] = roles
                    runs.append(run)
                    calls = {n: m["calls_share"] for n, m in run["masters"].items()}
                    print(
                        f"bench: {rep + 1}/{reps} {workload:5} {system.name:8} "
                        f"{run['rps']:8.0f} req/s  p99 {run['p99_ms']:7.2f} ms  "
                        f"status {run['status']}  command shares {calls}  "
                        f"others' CPU {run['foreign_cpu']:4.1f}%",
                        flush=True,
                    )
    finally:
        pairs[0][1]["redis"].close()
    return runs
