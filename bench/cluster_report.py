"""BENCHMARKS.md's issue 12 section: the hardened stack on one redis and on a
three-master cluster (bench/cluster_share.py), and each master's part of the work."""

from __future__ import annotations

import statistics

import report_text

GROUPS = ("nginx", "ap", "cp", "redis")
TITLE = "## One redis against a three-master Redis Cluster (issue 12)"
INTRO = (
    "The hardened stack as above (`bench/cluster_share.py`) on its one redis, and the same "
    "stack with both planes on a three-master Redis Cluster on loopback (`redis+cluster://`, "
    "AOF everysec on every master, no replicas), the read, write and 90/10 mix workloads, "
    "round by round in the same run (which goes first alternates). CPU per request is each "
    "process's CPU time (/proc) over the round divided by the requests answered; each "
    "master's figures come from INFO read before and after the round. What they mean for "
    "scaling: [docs/SCALING.md](SCALING.md)."
)


def component_groups(cpu_us: dict[str, int]) -> dict[str, int]:
    """CPU us per request summed per component: nginx (master and workers), the
    app-plane processes, the control plane, every redis (each master of a cluster)."""
    return {
        group: sum(v for name, v in cpu_us.items() if name.startswith(group)) for group in GROUPS
    }


def clean(runs: list[dict]) -> list[dict]:
    """Rounds without socket errors or non-2xx answers (others are named, not averaged)."""
    return [r for r in runs if not r["errors"] and not r["non2xx"]]


def medians(runs: list[dict], system: str, workload: str) -> dict | None:
    rows = [r for r in clean(runs) if r["system"] == system and r["workload"] == workload]
    if not rows:
        return None
    groups = [component_groups(r["cpu_us_per_request"]) for r in rows]
    return {
        "rounds": len(rows),
        "rps": statistics.median(r["rps"] for r in rows),
        "p99_ms": statistics.median(r["p99_ms"] for r in rows),
        "cpu": {g: statistics.median(x[g] for x in groups) for g in GROUPS},
        "total": statistics.median(sum(x.values()) for x in groups),
        "others": statistics.median(r["foreign_cpu"] for r in rows),
    }


def master_medians(runs: list[dict], workload: str) -> dict[str, dict]:
    """Per cluster master: the median of each share and per-request figure."""
    rows = [r for r in clean(runs) if r["system"] == "cluster" and r["workload"] == workload]
    names = sorted({n for r in rows for n in r["masters"]})
    fields = (
        "calls_share",
        "script_calls_share",
        "keys_share",
        "keys",
        "dataset",
        "dataset_delta",
        "calls_per_request",
        "cpu_main_us_per_request",
    )
    return {
        name: {
            f: statistics.median(r["masters"][name][f] for r in rows if name in r["masters"])
            for f in fields
        }
        for name in names
    }


def holds(roles: dict, name: str) -> str:
    """What the layout puts on master ``name``: ``{plab}`` and/or its shards."""
    role = roles.get(name)
    if not role:
        return "?"
    shards = role["shards"]
    parts = (["`{plab}`"] if role["main"] else []) + (
        [f"{len(shards)} shards ({shards[0]}-{shards[-1]})"] if shards else []
    )
    return " + ".join(parts) or "nothing"


def command_mix(runs: list[dict], workload: str, top: int = 6) -> list[str]:
    """Per master, the commands redis ran most per request (medians over the rounds)."""
    rows = [r for r in clean(runs) if r["system"] == "cluster" and r["workload"] == workload]
    if not rows or "per_command" not in next(iter(rows[0]["masters"].values())):
        return []
    lines = []
    for name in sorted({n for r in rows for n in r["masters"]}):
        commands = {c for r in rows for c in r["masters"].get(name, {}).get("per_command", {})}
        median = {
            c: statistics.median(r["masters"][name]["per_command"].get(c, 0) for r in rows)
            for c in commands
        }
        ranked = sorted(median.items(), key=lambda kv: (-kv[1], kv[0]))[:top]  # ties by name
        lines.append(
            f"{workload}, {name}: " + ", ".join(f"{c} {v:.2f}" for c, v in ranked if v >= 0.01)
        )
    return lines


def getkeys_line(runs: list[dict], workload: str) -> str | None:
    """Per master, COMMAND GETKEYS per request (medians; rounds recorded before the
    bench kept the count, zeros included, are left out: absent is not zero)."""
    rows = [
        r
        for r in clean(runs)
        if r["system"] == "cluster"
        and r["workload"] == workload
        and all("command_getkeys" in m for m in r["masters"].values())
    ]
    if not rows:
        return None
    names = sorted({n for r in rows for n in r["masters"]})
    figures = {
        name: statistics.median(
            r["masters"][name]["command_getkeys_per_request"] for r in rows if name in r["masters"]
        )
        for name in names
    }
    total = sum(r["masters"][n]["command_getkeys"] for r in rows for n in r["masters"])
    return (
        f"{workload}: "
        + ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
        + f" ({total:,} in {len(rows)} rounds)"
    )


def section(data: dict) -> list[str]:
    runs = data.get("cluster_runs") or []
    info = data.get("cluster_info") or {}
    if not runs or data.get("smoke"):
        return [
            TITLE,
            "",
            INTRO,
            "",
            "Numbers pending a full run (`make bench` or `--cluster-only`).",
        ]
    note = report_text.separate_run_note(info, "--cluster-only")
    return [TITLE, "", INTRO, "", *note, *stack_table(runs), *masters_table(runs)]


def stack_table(runs: list[dict]) -> list[str]:
    """Per workload and redis, the medians of req/s, p99 and CPU per request per
    component, and the cluster's ratios to one redis."""
    lines = [
        "| workload | redis | rounds | req/s | p99 ms | CPU us/request: nginx | app | "
        "control plane | redis (all masters) | total | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios: list[str] = []
    for workload in ("read", "write", "mix"):
        found = {s: medians(runs, s, workload) for s in ("hardened", "cluster")}
        for system, m in found.items():
            if m is None:
                continue
            cpu = m["cpu"]
            lines.append(
                f"| {workload} | {'one' if system == 'hardened' else '3-master cluster'} | "
                f"{m['rounds']} | {m['rps']:,.0f} | {m['p99_ms']:.1f} | {cpu['nginx']:,.0f} | "
                f"{cpu['ap']:,.0f} | {cpu['cp']:,.0f} | {cpu['redis']:,.0f} | "
                f"{m['total']:,.0f} | {m['others']:.0f} % |"
            )
        one, many = found["hardened"], found["cluster"]
        if one and many and one["rps"] and one["total"]:
            ratios.append(
                f"{workload}: req/s x{many['rps'] / one['rps']:.2f}, CPU per request "
                f"x{many['total'] / one['total']:.2f} (app x"
                f"{many['cpu']['ap'] / max(1, one['cpu']['ap']):.2f}, redis x"
                f"{many['cpu']['redis'] / max(1, one['cpu']['redis']):.2f})"
            )
    if ratios:
        lines += ["", "Cluster against one redis (medians): " + "; ".join(ratios) + "."]
    return lines


def masters_table(runs: list[dict]) -> list[str]:
    """Each cluster master's shares and per-request figures, per workload."""
    lines = [
        "",
        "Each master of the cluster (medians over the rounds): what the key layout puts "
        "on it (`{plab}`: users, tokens, the per-user limit and the quota ledger; the "
        "virtual shards whose tags' slots it owns), its share of the commands redis "
        "counted (INFO commandstats; a command a script runs counts as well as the "
        "EVALSHA that ran it; INFO left out), of the EVALSHA calls alone (a read's limit "
        "ticket on `{plab}`'s master; a write's reservation and settle there and its "
        "shard's script on the shard's master), of the keys (INFO keyspace), its dataset "
        "bytes (`used_memory_dataset`, an empty master's included), commands per request "
        "and main-thread CPU per request (`used_cpu_*_main_thread`).",
        "",
        "| workload | master | holds | commands | EVALSHA | keys | keys held | dataset KiB | "
        "commands/request | main-thread CPU us/request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    roles = next((r["roles"] for r in runs if r.get("roles")), {})
    for workload in ("read", "write", "mix"):
        for name, m in master_medians(runs, workload).items():
            lines.append(
                f"| {workload} | {name} | {holds(roles, name)} | {m['calls_share']:.1%} | "
                f"{m['script_calls_share']:.1%} | {m['keys_share']:.1%} | {m['keys']:,.0f} | "
                f"{m['dataset'] / 1024:,.0f} | {m['calls_per_request']:.1f} | "
                f"{m['cpu_main_us_per_request']:.1f} |"
            )
    mix = [line for workload in ("read", "write") for line in command_mix(runs, workload)]
    if mix:
        lines += [
            "",
            "The commands each master ran most, per request (medians; `evalsha` the "
            "scripts, the others mostly run inside them):",
            "",
            *[f"- {line}" for line in mix],
        ]
    getkeys = [line for w in ("read", "write", "mix") if (line := getkeys_line(runs, w))]
    if getkeys:
        lines += [
            "",
            "`COMMAND GETKEYS` per request on each master (INFO `cmdstat_command|getkeys`, "
            "medians, and all of them counted over the rounds: a cluster client asking a "
            "node where a command's keys are, one more round trip): " + "; ".join(getkeys) + ".",
        ]
    refused = [
        f"{r['system']}/{r['workload']} round {r['rep'] + 1}: {r['status']}"
        for r in runs
        if r not in clean(runs)
    ]
    if refused:
        lines += ["", "Left out (error answers, by status): " + "; ".join(refused) + "."]
    return lines
