"""Render BENCHMARKS.md and benchmarks.png from the JSON results in one directory."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import ceiling_report
import cluster_report
import report_text

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ("naive", "hardened", "ceiling", "webdis")
WORKLOADS = ("read", "write", "mix")
WORKLOAD_NAMES = {"read": "reads", "write": "writes", "mix": "90/10 mix"}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def medians(runs: list[dict]) -> dict[tuple[str, str], dict]:
    grouped: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        grouped.setdefault((run["system"], run["workload"]), []).append(run)
    out = {}
    for key, group in grouped.items():
        rps = [r["rps"] for r in group]
        med = statistics.median(rps)
        cpu: dict[str, list[int]] = {}
        for r in group:
            for name, value in r.get("cpu_us_per_request", {}).items():
                cpu.setdefault(name, []).append(value)
        out[key] = {
            "label": group[0]["label"],
            "n": len(group),
            "rps": med,
            "rps_min": min(rps),
            "rps_max": max(rps),
            "spread_pct": 100 * (max(rps) - min(rps)) / med if med else 0.0,
            "p50_ms": statistics.median(r["p50_ms"] for r in group),
            "p99_ms": statistics.median(r["p99_ms"] for r in group),
            "p99_min": min(r["p99_ms"] for r in group),
            "p99_max": max(r["p99_ms"] for r in group),
            "errors": sum(r["errors"] for r in group),
            "non2xx": sum(r["non2xx"] for r in group),
            "foreign_max": max(r["foreign_cpu"] for r in group),
            "foreign_median": statistics.median(r["foreign_cpu"] for r in group),
            "cpu": {k: statistics.median(v) for k, v in cpu.items()},
        }
    return out


def chart(stats: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = [s for s in ORDER if any((s, w) in stats for w in WORKLOADS)]
    colours = {"naive": "#9e9e9e", "hardened": "#1565c0", "ceiling": "#2e7d32", "webdis": "#ef6c00"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(systems))
    for index, system in enumerate(systems):
        xs = [w + (index - (len(systems) - 1) / 2) * width for w in range(len(WORKLOADS))]
        rps = [stats.get((system, w), {}).get("rps", 0) for w in WORKLOADS]
        p99 = [stats.get((system, w), {}).get("p99_ms", 0) for w in WORKLOADS]
        left.bar(xs, rps, width, label=system, color=colours[system])
        right.bar(xs, p99, width, label=system, color=colours[system])
        for x, value in zip(xs, rps, strict=True):
            left.annotate(f"{value:,.0f}", (x, value), ha="center", va="bottom", fontsize=7)
        for x, value in zip(xs, p99, strict=True):
            right.annotate(f"{value:.1f}", (x, value), ha="center", va="bottom", fontsize=7)
    for axis, title in ((left, "throughput (req/s, median)"), (right, "p99 latency (ms, median)")):
        axis.set_xticks(range(len(WORKLOADS)), [WORKLOAD_NAMES[w] for w in WORKLOADS])
        axis.set_title(title)
        if "webdis" in systems:
            axis.set_yscale("log")
    fig.suptitle("wrk, 2 threads, 32 keep-alive connections, loopback, 2-core machine")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(systems), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def bench_section(data: dict, out_dir: Path) -> list[str]:
    stats = medians(data["runs"])
    info = data["machine"]
    lines = []
    if data.get("smoke"):
        lines += [
            "> **Smoke run** (1 x 1 s per system and workload): it only proves the harness "
            "works. The figures are not meaningful.",
            "",
        ]
    lines += [
        "## Machine",
        "",
        f"- when: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} cores (shared by wrk, nginx, redis and the apps); "
        f"{info['memory_gib']} GiB memory; Linux {info['kernel']}",
        f"- Python {info['python']}; {info['redis']}; {info['nginx']}; {info['wrk']}; "
        f"Webdis {info['webdis']}",
        f"- load average before / after the run: {' '.join(info['load_before'])} / "
        f"{' '.join(data.get('load_after', ['?']))}",
        "",
        "## Method",
        "",
        f"One `make bench` starts every system, each against its own fresh redis (AOF on, "
        f"`appendfsync everysec`) on free loopback ports in temp dirs, preloads 256 keys, warms "
        f"each up, then runs `wrk -t2 -c32` (keep-alive) for {data['seconds']:.0f} s per system "
        f"and workload, {data['reps']} times, interleaved (round 1 of every system and "
        "workload, then round 2, ...), so a disturbance hits every system alike. "
        "The figures are **medians** of "
        "the repetitions. Lua scripts: `bench/read.lua`, `bench/write.lua`, `bench/mix.lua` "
        "(90 % reads, 10 % writes); random keys out of the 256; each write a new value.",
        "",
        "- **naive**: `bench/naive_app.py` - Flask on one Waitress process (default 4 threads), "
        "plain HTTP, no auth; `/read/<key>` = redis GET, `/write/<key>/<value>` = redis SET.",
    ]
    hc = info.get("hardened_config", {})
    lines += [
        "- **hardened**: the whole stack through the edge, started by "
        "`productionlab.supervisor.Supervisor`: nginx TLS (1.2/1.3), `auth_basic` against the "
        "rendered htpasswd, key regex, edge rate limit; then "
        f"{hc.get('ap_workers', '?')} app-plane processes x {hc.get('threads', '?')} Waitress "
        "threads (the defaults: `PLAB_AP_WORKERS` = CPU count) with Basic auth (verification "
        "cache), role and grant checks, the per-user limit, audit entry on every write, JSON "
        "access log, Prometheus metrics, request ids, security headers; redis AOF on with ACL "
        "users. The client is a `writer` user with grant `bench-`. Limits raised for the run by "
        f"configuration (edge {hc.get('edge_rate', '?')} r/s, user {hc.get('user_rate', '?')}), "
        "still checked on every request.",
        *(
            [
                "- **ceiling**: the hardened stack's topology with nothing behind it: the edge's "
                "TLS and keepalive upstream, no auth/limits/access log, the same processes x "
                "threads of Waitress serving an empty Flask route (`bench/ceiling.py`; see the "
                "ceiling section)."
            ]
            if any(("ceiling", w) in stats for w in WORKLOADS)
            else []
        ),
        "- **webdis**: Webdis (C, plain HTTP, no auth; `GET /GET/<key>`, `GET /SET/<key>/<value>`)"
        " when installed: what the hardware gives without Python.",
        "",
        "## Results",
        "",
        "![throughput and p99](benchmarks.png)",
        "",
        "| workload | system | req/s (median) | p50 ms | p99 ms | req/s vs naive | p99 vs naive "
        "| errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    targets = []
    for workload in WORKLOADS:
        naive = stats.get(("naive", workload))
        for system in ORDER:
            row = stats.get((system, workload))
            if row is None:
                continue
            ratio = f"{row['rps'] / naive['rps']:.2f}x" if naive else "-"
            p99_ratio = f"{row['p99_ms'] / naive['p99_ms']:.2f}x" if naive else "-"
            lines.append(
                f"| {WORKLOAD_NAMES[workload]} | {system} | {row['rps']:,.0f} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {ratio} | {p99_ratio} | "
                f"{row['errors']} io / {row['non2xx']} non-2xx |"
            )
        hardened = stats.get(("hardened", workload))
        if naive and hardened:
            targets.append((workload, hardened["rps"] / naive["rps"], hardened, naive))
    lines += [
        "",
        "### Targets (hardened vs naive, same run)",
        "",
        "| workload | throughput >= 1.5x naive | p99 <= naive p99 |",
        "|---|---|---|",
    ]
    for workload, ratio, hardened, naive in targets:
        ok_rps = "met" if ratio >= 1.5 else "**not met**"
        ok_p99 = "met" if hardened["p99_ms"] <= naive["p99_ms"] else "**not met**"
        lines.append(
            f"| {WORKLOAD_NAMES[workload]} | {ok_rps} ({ratio:.2f}x: {hardened['rps']:,.0f} vs "
            f"{naive['rps']:,.0f} req/s) | {ok_p99} ({hardened['p99_ms']:.1f} vs "
            f"{naive['p99_ms']:.1f} ms) |"
        )
    lines += ["", *ceiling_report.section(stats, data)]
    lines += [
        "",
        "## Noise",
        "",
        "Spread = (max - min) / median of the repetitions' req/s. \"Others' CPU\" is the share of "
        "the machine's CPU used during a run by processes that are not part of the benchmark "
        "(other engineers' test suites share this machine), measured from `/proc`. A run during "
        f"which others used more than {10:.0f} % was re-run (up to twice) and the re-run kept.",
        "",
        "| workload | system | req/s min-max | spread | p99 min-max ms "
        "| others' CPU median / max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        for system in ORDER:
            row = stats.get((system, workload))
            if row is None:
                continue
            lines.append(
                f"| {WORKLOAD_NAMES[workload]} | {system} | {row['rps_min']:,.0f}-"
                f"{row['rps_max']:,.0f} | {row['spread_pct']:.0f} % | {row['p99_min']:.1f}-"
                f"{row['p99_max']:.1f} | {row['foreign_median']:.0f} % / "
                f"{row['foreign_max']:.0f} % |"
            )
    lines += report_text.closing_note(
        data.get("disturbed", []), _disturbed_lines, "No run was discarded as disturbed."
    )
    lines += [
        "",
        "## Where the CPU goes (hardened, CPU microseconds per request, medians)",
        "",
        "CPU time (user + system, from `/proc/<pid>/stat`) of each process during a run divided "
        "by the requests of that run: the cost of one request in each part of the stack.",
        "",
        "| workload | naive app | naive redis | hardened nginx | hardened ap (all) "
        "| hardened redis | hardened cp | naive total | hardened total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        naive = stats.get(("naive", workload), {}).get("cpu", {})
        hardened = stats.get(("hardened", workload), {}).get("cpu", {})
        nginx = sum(v for k, v in hardened.items() if k.startswith("nginx"))
        aps = sum(v for k, v in hardened.items() if k.startswith("ap"))
        lines.append(
            f"| {WORKLOAD_NAMES[workload]} | {naive.get('naive', 0):.0f} | "
            f"{naive.get('redis', 0):.0f} | {nginx:.0f} | {aps:.0f} | "
            f"{hardened.get('redis', 0):.0f} | {hardened.get('cp', 0):.0f} | "
            f"{sum(naive.values()):.0f} | {sum(hardened.values()):.0f} |"
        )
    lines += [
        "",
        "Reading it: the naive app is one Python process, so its GIL caps it near one core "
        "whatever the machine has free; the hardened stack spreads over both cores (two app "
        "processes, two nginx workers, redis) and so needs both. When other processes take "
        "one of the two cores, the naive baseline loses little and the hardened stack loses "
        'about half - compare the "others\' CPU" column of the noise table with the ratios.',
    ]
    profile = data.get("profile") or {}
    lines += ["", "## Profile: no slow hash on the request path", ""]
    if profile.get("summary"):
        summary = profile["summary"].splitlines()
        lines += [
            "`py-spy record --gil` on app-plane process ap1 during a hardened 90/10 mix run "
            "(samples only while the process runs Python: its CPU time). Full text: "
            f"[{profile['text']}]({profile['text']}); flame graph: [{profile['svg']}]"
            f"({profile['svg']}).",
            "",
            "```",
            *summary[:2],
            "",
            *summary[3:24],
            "```",
        ]
    else:
        lines.append(profile.get("error", "Not profiled in this run (smoke or --no-profile)."))
    return lines


def _disturbed_lines(disturbed: list[dict]) -> list[str]:
    per_system: dict[str, list[dict]] = {}
    for d in disturbed:
        per_system.setdefault(d["system"], []).append(d)
    lines = [
        f"Runs discarded as disturbed and re-run: {len(disturbed)} (when every attempt was "
        'disturbed, the last one was kept - the "others\' CPU" column above says so):',
        "",
    ]
    for system, group in per_system.items():
        lines.append(
            f"- {system}: {len(group)} runs, others using "
            f"{min(d['foreign_cpu'] for d in group):.0f}-"
            f"{max(d['foreign_cpu'] for d in group):.0f} % of the CPU, "
            f"{min(d['rps'] for d in group):,}-{max(d['rps'] for d in group):,} req/s"
        )
    return lines


def soak_section(soak: dict) -> list[str]:
    samples = soak["samples"]
    names = [k for k in samples[0] if k != "t"] if samples else []
    warm = soak["warmup_s"]
    lines = [
        "## Soak: 10 minutes at a fixed moderate rate through the edge",
        "",
        f"`make soak` ({soak['date']}): the hardened stack (same configuration as above), "
        f"`bench/mix.lua` paced by wrk's `delay()` ({soak['connections']} connections, "
        f"{soak['delay_ms']} ms between a connection's requests) for {soak['duration_s']} s: "
        f"**{soak['rps']:.0f} req/s**, {soak['requests']:,} requests, p50 {soak['p50_ms']:.2f} ms, "
        f"p99 {soak['p99_ms']:.2f} ms, max {soak['max_ms']:.1f} ms.",
        "",
        f"- errors: {soak['errors']} connection/timeout errors, {soak['non2xx']} non-2xx answers, "
        f"{soak['server_5xx_logged']} 5xx in the app logs; process restarts: "
        f"{sum(soak['restarts'].values())}",
        "",
        f"Resident memory (VmRSS, KiB) of every process, sampled every ~10 s. Growth is measured "
        f"after a {warm} s warm-up: the median of the last minute against the median of the "
        "minute after warm-up.",
        "",
        "| process | at start | after warm-up | end | max | growth after warm-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for name in names:
        series = [(s["t"], s[name]) for s in samples if s.get(name)]
        if not series:
            continue
        after = [v for t, v in series if warm <= t < warm + 60] or [series[0][1]]
        last = [v for t, v in series if t >= series[-1][0] - 60]
        base, end = statistics.median(after), statistics.median(last)
        growth = 100 * (end - base) / base if base else 0.0
        worst = max(worst, growth)
        lines.append(
            f"| {name} | {series[0][1]:,} | {base:,.0f} | {end:,.0f} | "
            f"{max(v for _, v in series):,} | {growth:+.1f} % |"
        )
    before, after = soak.get("store_before"), soak.get("store_after")
    if before and after:
        lines += [
            "",
            f"redis holds data by design: {soak.get('write_ratio', 0.1):.0%} of the requests "
            f"were writes, and each appended an audit entry ({before['audit_entries']:,} -> "
            f"{after['audit_entries']:,} entries; redis `used_memory` "
            f"{before['used_memory'] / 1024:,.0f} -> {after['used_memory'] / 1024:,.0f} KiB).",
        ]
    verdict = "met" if worst < 10 and soak["errors"] == 0 and soak["non2xx"] == 0 else "NOT met"
    lines += [
        "",
        f"Target (zero errors, every process's memory growth under 10 % after warm-up): "
        f"**{verdict}** (largest growth {worst:+.1f} %).",
    ]
    return lines


def sweep_section(sweep: dict) -> list[str]:
    lines = [
        "### Lever: app-plane processes x Waitress threads",
        "",
        "`python bench/run.py --sweep`: the hardened stack restarted with each setting, 5 s of "
        "reads and of writes each (one run: compare within the table, not with the figures "
        "above).",
        "",
        "| processes x threads | reads req/s | reads p99 ms | writes req/s | writes p99 ms "
        "| app CPU us/read |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    configs: dict[tuple[int, int], dict[str, dict]] = {}
    for row in sweep["rows"]:
        configs.setdefault((row["ap_workers"], row["threads"]), {})[row["workload"]] = row
    for (workers, threads), rows in configs.items():
        read, write = rows.get("read", {}), rows.get("write", {})
        lines.append(
            f"| {workers} x {threads} | {read.get('rps', 0):,.0f} | {read.get('p99_ms', 0):.1f} "
            f"| {write.get('rps', 0):,.0f} | {write.get('p99_ms', 0):.1f} | "
            f"{read.get('app_cpu_us', 0):,} |"
        )
    return lines


BULK_TARGETS = {"bulk-read": 20_000, "bulk-write": 5_000}


def bulk_section(data: dict) -> list[str]:
    """Issue 13's bulk workloads: 100 keys per POST /v1/bulk through the full edge."""
    lines = [
        "## Bulk requests (issue 13)",
        "",
        "`POST /v1/bulk` with 100 items per request through the full edge (TLS, auth, "
        "key checks, per-user limit charged per item, an audit entry per write), on the "
        "hardened stack with the limits raised as above. Key operations per second are "
        "requests per second x 100.",
        "",
    ]
    runs = data.get("bulk_runs") or []
    if not runs or data.get("smoke"):
        return [
            *lines,
            "Numbers pending a run on a quiet machine (`make bench`): the workloads were "
            "built and proven by `make bench BENCH_SMOKE=1` while the shared machine was "
            "loaded, so no figure is given here.",
        ]
    lines += report_text.separate_run_note(data.get("bulk_info") or {}, "--bulk-only")
    lines += [
        "| workload | req/s (median) | keys/s (median) | target keys/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    refused: list[str] = []
    for workload, target in BULK_TARGETS.items():
        every = [r for r in runs if r["workload"] == workload]
        # A round with error answers measured something else (fast refusals): it is
        # named below the table and left out of the medians, never averaged in.
        rows = [r for r in every if not r.get("errors") and not r.get("non2xx")]
        refused += [
            f"round {r['rep'] + 1} of {workload}: {r.get('non2xx', 0):,} non-2xx answers, "
            f"{r.get('errors', 0):,} socket errors ({r['rps']:,.0f} req/s)"
            for r in every
            if r not in rows
        ]
        if not rows:
            continue
        rps = statistics.median(r["rps"] for r in rows)
        keys = statistics.median(r["key_ops_per_s"] for r in rows)
        ok = "met" if keys >= target else "not met"
        lines.append(
            f"| {workload} | {rps:,.0f} | {keys:,.0f} | {target:,} ({ok}) | "
            f"{statistics.median(r['p50_ms'] for r in rows):.2f} | "
            f"{statistics.median(r['p99_ms'] for r in rows):.2f} |"
        )
    if refused:
        lines += [
            "",
            "Left out of the medians, because they got error answers: "
            + "; ".join(refused)
            + ' (what is known of the cause: bench/levers.md, "Open findings").',
        ]
    return lines + bulk_status_lines(runs)


STATUS_CLASSES = ("2xx", "4xx", "429", "503", "other")


def bulk_status_lines(runs: list[dict]) -> list[str]:
    """bulk-write round by round: the answers by status class and what redis held
    after the round (rounds measured before the breakdown was kept have none)."""
    rows = [r for r in runs if r["workload"] == "bulk-write" and r.get("status")]
    if not rows:
        return []
    lines = [
        "",
        "bulk-write round by round: answers by status, and redis after the round "
        "(memory against `maxmemory`, entries in the audit list).",
        "",
        "| round | req/s | " + " | ".join(STATUS_CLASSES) + " | redis used MiB / maxmemory MiB "
        "| audit entries |",
        "|---|---|" + "---|" * len(STATUS_CLASSES) + "---|---|",
    ]
    for r in rows:
        after = r.get("redis_after") or {}
        memory = (
            f"{after['used_memory'] / 2**20:,.0f} / {after.get('maxmemory', 0) / 2**20:,.0f}"
            if after
            else "-"
        )
        lines.append(
            f"| {r['rep'] + 1} | {r['rps']:,.0f} | "
            + " | ".join(f"{r['status'].get(c, 0):,}" for c in STATUS_CLASSES)
            + f" | {memory} | {after.get('audit_entries', 0):,} |"
        )
    return lines


WATCH_TARGET = 0.90  # reads with 200 watches held: within 10 % of the run without
QUIET_PERCENT = 10.0  # run.DISTURBED_PERCENT: a run with others above it is disturbed


def watch_section(data: dict) -> list[str]:
    """Issue 13: the single-key read run with 200 watches held open, against the same
    run without them, round by round on the same stack."""
    runs = data.get("watch_runs") or []
    info = data.get("watch_info") or {}
    lines = [
        "## Reads while watches are held open (issue 13)",
        "",
        "The single-key read workload (`read.lua`, 2 wrk threads, 32 connections) on the "
        "hardened stack with the limits raised as above (the watch routes' edge limits "
        "too), run while a holder (`bench/watch_holder.py`, one thread and keep-alive TLS "
        "connection per watch) keeps watches parked through the full edge on "
        "`GET /v1/watch/<key>?index=<current>&wait=300` for keys nothing writes during the "
        "run, interleaved round by round with the same run without them (which goes first "
        "alternates). Between rounds the "
        "holder writes each watched key, which wakes its watch, so no plane thread stays "
        "parked into the next round.",
        "",
    ]
    if not runs or data.get("smoke"):
        return [*lines, "Numbers pending a full run (`make bench`)."]
    lines += report_text.separate_run_note(info, "--watch-only")
    lines += [
        "| round | watches held | reads/s | p50 ms | p99 ms | errors | others' CPU | "
        "stack CPU us/read | watch requests / early returns / 429s retried / errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['rep'] + 1} | {r['watches']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']}/{r['non2xx']} | {r['foreign_cpu']:.0f} % | "
            f"{stack_cpu_us(r):,} | "
            f"{r['watch_requests']} / {r['watch_returned_early']} / "
            f"{r.get('watch_refused', 0)} / {len(r['watch_errors'])} |"
        )
    clean = [r for r in runs if not r["errors"] and not r["non2xx"] and not r["watch_errors"]]
    held = [r["rps"] for r in clean if r["watches"]]
    free = [r["rps"] for r in clean if not r["watches"]]
    if held and free:
        ratio = statistics.median(held) / statistics.median(free)
        verdict = "met" if ratio >= WATCH_TARGET else "not met"
        cpu_held = statistics.median(stack_cpu_us(r) for r in clean if r["watches"])
        cpu_free = statistics.median(stack_cpu_us(r) for r in clean if not r["watches"])
        cpu = (
            f"The stack's CPU per read (nginx, app processes, control plane, redis): "
            f"{cpu_held:,.0f} us with, {cpu_free:,.0f} us without "
            f"({cpu_held / cpu_free:.2f}x). "
            if cpu_free
            else ""
        )
        lines += [
            "",
            f"Median reads/s with {max(r['watches'] for r in runs)} "
            f"watches held: {statistics.median(held):,.0f}; without: "
            f"{statistics.median(free):,.0f}; ratio **{ratio:.2f}** (target at least "
            f"{WATCH_TARGET:.2f}: {verdict}). {cpu}Rounds with error answers or watch "
            "errors are left out of the medians; a run others disturbed (over 10 % of the "
            "machine) was re-run up to twice, as for the other workloads.",
        ]
        quiet = [r for r in clean if r["foreign_cpu"] <= QUIET_PERCENT]
        quiet_held = [r for r in quiet if r["watches"]]
        quiet_free = [r for r in quiet if not r["watches"]]
        if quiet_held and quiet_free:
            quiet_ratio = statistics.median(r["rps"] for r in quiet_held) / statistics.median(
                r["rps"] for r in quiet_free
            )
            lines += [
                "",
                f"Undisturbed runs only (others used at most {QUIET_PERCENT:.0f} % of the "
                f"machine, the harness's own bound; {len(quiet_held)} with watches, "
                f"{len(quiet_free)} without): "
                f"{statistics.median(r['rps'] for r in quiet_held):,.0f} vs "
                f"{statistics.median(r['rps'] for r in quiet_free):,.0f} reads/s, ratio "
                f"**{quiet_ratio:.2f}** ({'met' if quiet_ratio >= WATCH_TARGET else 'not met'}); "
                f"p99 {statistics.median(r['p99_ms'] for r in quiet_held):.1f} vs "
                f"{statistics.median(r['p99_ms'] for r in quiet_free):.1f} ms.",
            ]
        others = statistics.median(r["foreign_cpu"] for r in runs)
        if others > 10:
            lines += [
                "",
                f"**A loaded machine**: other processes used a median {others:.0f} % of it "
                "during these rounds (after the re-runs), unevenly from round to round, so "
                "the ratio of reads/s measures the load as much as the watches; the CPU per "
                "read is the steadier figure. A run on a quiet machine is still owed.",
            ]
    return lines


def stack_cpu_us(run: dict) -> int:
    """CPU microseconds per request of every stack process in one run."""
    return sum((run.get("cpu_us_per_request") or {}).values())


def write(out_dir: Path) -> Path:
    bench = load(out_dir / "bench-results.json")
    soak = load(out_dir / "soak-results.json")
    sweep = load(out_dir / "sweep-results.json")
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (and `make soak`) from `bench/`; do not edit by hand - the "
        "narrative in [bench/levers.md](../bench/levers.md) is included below. "
        "`make bench BENCH_SMOKE=1` runs a ~35 s smoke of the same harness and writes its "
        "report to a temp directory.",
        "",
    ]
    if bench:
        lines += bench_section(bench, out_dir)
        if not bench.get("smoke"):
            chart(medians(bench["runs"]), out_dir / "benchmarks.png")
        else:
            chart(medians(bench["runs"]), out_dir / "benchmarks.png")
    if bench:
        lines += ["", *bulk_section(bench)]
        lines += ["", *watch_section(bench)]
        lines += ["", *cluster_report.section(bench)]
    levers = BENCH_DIR / "levers.md"
    if levers.exists():
        lines += ["", levers.read_text().rstrip()]
    if sweep:
        lines += ["", *sweep_section(sweep)]
    if soak:
        lines += ["", *soak_section(soak)]
    path = out_dir / "BENCHMARKS.md"
    path.write_text("\n".join(lines) + "\n")
    return path
