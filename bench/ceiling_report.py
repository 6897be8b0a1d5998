"""Issue 16's yardstick in the report: the hardened stack against the ceiling (an
empty Flask route on the same topology, ``bench/ceiling.py``), measured in the
same run, interleaved round by round.

Also decides which round to re-run when the rounds disagree (``outlier_round``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator

import report_text

PAIR = ("ceiling", "hardened")
SPREAD_LIMIT_PCT = 20.0
WORKLOAD_NAMES = {"read": "reads", "write": "writes", "mix": "90/10 mix"}
# Issue 16: hardened req/s >= this share of the ceiling's (no target for the mix).
THROUGHPUT_TARGETS = {"read": 0.70, "write": 0.60}
# Issue 16: the hardened read's p99 <= the ceiling's read p99 x this.
READ_P99_FACTOR = 1.5


def spread_pct(values: list[float]) -> float:
    med = statistics.median(values)
    return 100 * (max(values) - min(values)) / med if med else 0.0


def outlier_round(runs: list[dict], workload: str) -> int | None:
    """The round of ``workload`` to re-run, or None when the rounds agree: when
    the ceiling's or the hardened stack's req/s spread across rounds passes 20 %,
    the round farthest (relatively) from that system's median."""
    worst: tuple[float, int] | None = None
    for system in PAIR:
        rows = [r for r in runs if r["system"] == system and r["workload"] == workload]
        if len(rows) < 2 or spread_pct([r["rps"] for r in rows]) <= SPREAD_LIMIT_PCT:
            continue
        med = statistics.median(r["rps"] for r in rows)
        for row in rows:
            distance = abs(row["rps"] - med) / med
            if worst is None or distance > worst[0]:
                worst = (distance, row["rep"])
    return None if worst is None else worst[1]


def _ratios(stats: dict, workload: str) -> tuple[dict, dict] | None:
    ceiling, hardened = stats.get(("ceiling", workload)), stats.get(("hardened", workload))
    return (ceiling, hardened) if ceiling and hardened else None


def _measured(stats: dict, workloads: Iterable[str]) -> Iterator[tuple[str, dict, dict]]:
    """(workload, ceiling, hardened) for each of ``workloads`` both systems ran."""
    for workload in workloads:
        pair = _ratios(stats, workload)
        if pair:
            yield workload, *pair


def round_ratios(runs: list[dict], workload: str) -> list[float]:
    """hardened / ceiling req/s of each round (the two ran back to back)."""
    by_rep: dict[int, dict[str, float]] = {}
    for run in runs:
        if run["workload"] == workload and run["system"] in PAIR:
            by_rep.setdefault(run["rep"], {})[run["system"]] = run["rps"]
    return [
        pair["hardened"] / pair["ceiling"]
        for _, pair in sorted(by_rep.items())
        if pair.get("ceiling") and "hardened" in pair
    ]


def verdicts(stats: dict) -> list[tuple[str, bool, str]]:
    """(target, met, figures) for each of issue 16's targets that this run measured."""
    found = []
    for workload, ceiling, hardened in _measured(stats, THROUGHPUT_TARGETS):
        share = THROUGHPUT_TARGETS[workload]
        ratio = hardened["rps"] / ceiling["rps"]
        found.append(
            (
                f"{WORKLOAD_NAMES[workload]}: hardened >= {share:.0%} of the ceiling",
                ratio >= share,
                f"{ratio:.0%}: {hardened['rps']:,.0f} vs {ceiling['rps']:,.0f} req/s",
            )
        )
    pair = _ratios(stats, "read")
    if pair:
        ceiling, hardened = pair
        limit = ceiling["p99_ms"] * READ_P99_FACTOR
        found.append(
            (
                f"reads: hardened p99 <= ceiling p99 x {READ_P99_FACTOR}",
                hardened["p99_ms"] <= limit,
                f"{hardened['p99_ms']:.1f} ms vs {ceiling['p99_ms']:.1f} x {READ_P99_FACTOR} "
                f"= {limit:.1f} ms",
            )
        )
    return found


def summary_lines(stats: dict) -> list[str]:
    """One line per workload and per target, for the console."""
    lines = []
    for workload, ceiling, hardened in _measured(stats, WORKLOAD_NAMES):
        lines.append(
            f"ceiling: {WORKLOAD_NAMES[workload]:9} "
            f"hardened/ceiling {hardened['rps'] / ceiling['rps']:5.0%} "
            f"({hardened['rps']:,.0f} / {ceiling['rps']:,.0f} req/s)  p99 "
            f"{hardened['p99_ms']:.1f} / {ceiling['p99_ms']:.1f} ms"
        )
    for target, met, figures in verdicts(stats):
        lines.append(f"ceiling: target {target}: {'met' if met else 'NOT met'} ({figures})")
    return lines


def _component_cpu(cpu: dict[str, float]) -> dict[str, float]:
    return {
        "nginx": sum(v for k, v in cpu.items() if k.startswith("nginx")),
        "ap": sum(v for k, v in cpu.items() if k.startswith("ap")),
        "redis": cpu.get("redis", 0),
        "cp": cpu.get("cp", 0),
        "total": sum(cpu.values()),
    }


def section(stats: dict, data: dict) -> list[str]:
    """The report's section on the ceiling (empty when the run had none)."""
    if not any(("ceiling", w) in stats for w in WORKLOAD_NAMES):
        return []
    runs = data["runs"]
    lines = [
        "## Against the ceiling: an empty Flask route on the same topology (issue 16)",
        "",
        "The **ceiling** is what Flask on Waitress gives at most on this machine: an nginx with "
        "the edge's TLS, keepalive and proxy settings (copied from the hardened edge's rendered "
        "config in the same run) but no auth, no rate limit, no key regex, no access log and no "
        "security headers, in front of the same number of Waitress processes and threads as "
        "the hardened stack, each serving `bench/ceiling_app.py` (`GET /read/<key>` and "
        "`POST /write/<key>/<value>` return a small JSON dict; no redis). Ceiling and hardened "
        "runs alternate within every round; a round is re-run when either system's req/s "
        f"spread across rounds passes {SPREAD_LIMIT_PCT:.0f} %.",
        "",
        "| workload | ceiling req/s | hardened req/s | hardened / ceiling | per round "
        "| ceiling p99 ms | hardened p99 ms | p99 hardened / ceiling |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for workload, ceiling, hardened in _measured(stats, WORKLOAD_NAMES):
        rounds = ", ".join(f"{r:.0%}" for r in round_ratios(runs, workload))
        lines.append(
            f"| {WORKLOAD_NAMES[workload]} | {ceiling['rps']:,.0f} | {hardened['rps']:,.0f} | "
            f"**{hardened['rps'] / ceiling['rps']:.0%}** | {rounds} | {ceiling['p99_ms']:.2f} | "
            f"{hardened['p99_ms']:.2f} | {hardened['p99_ms'] / ceiling['p99_ms']:.2f}x |"
        )
    lines += ["", "### Targets (issue 16: hardened vs ceiling, same run)", ""]
    lines += ["| target | verdict |", "|---|---|"]
    for target, met, figures in verdicts(stats):
        lines.append(f"| {target} | {'met' if met else '**not met**'} ({figures}) |")
    lines += [
        "",
        "CPU microseconds per request per component (medians; same method as above): what "
        "the hardened request costs beyond Flask on Waitress.",
        "",
        "| workload | ceiling nginx | ceiling ap (all) | ceiling total | hardened nginx "
        "| hardened ap (all) | hardened redis | hardened cp | hardened total "
        "| hardened - ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, ceiling, hardened in _measured(stats, WORKLOAD_NAMES):
        c, h = _component_cpu(ceiling["cpu"]), _component_cpu(hardened["cpu"])
        lines.append(
            f"| {WORKLOAD_NAMES[workload]} | {c['nginx']:.0f} | {c['ap']:.0f} | {c['total']:.0f} "
            f"| {h['nginx']:.0f} | {h['ap']:.0f} | {h['redis']:.0f} | {h['cp']:.0f} "
            f"| {h['total']:.0f} | {h['total'] - c['total']:+.0f} |"
        )
    lines += report_text.closing_note(
        data.get("rerun_rounds", []), _rerun_lines, "No round was re-run for spread."
    )
    return lines


def _rerun_lines(reruns: list[dict]) -> list[str]:
    return [
        f"Rounds re-run because the rounds disagreed by more than {SPREAD_LIMIT_PCT:.0f} %: "
        + "; ".join(
            f"{WORKLOAD_NAMES[r['workload']]} round {r['rep'] + 1} (was ceiling "
            f"{r['ceiling_rps']:,} / hardened {r['hardened_rps']:,} req/s)"
            for r in reruns
        )
        + "."
    ]
