"""Where the hardened request's CPU goes, in microseconds per request, by component;
the ceiling (``bench/ceiling.py``: an empty Flask route, same topology) alongside.

    python bench/profile_costs.py [--seconds 8] [--rounds 3] [--calls 3000] [--out DIR]

Starts the hardened stack (``harness.Hardened``: the defaults, limits raised) and its
ceiling, then measures three things:

1. **served**: the app processes' CPU per request from /proc during plain wrk runs
   through each edge (read, write; ``--rounds`` interleaved runs, medians) - the
   cost to explain, as in the report's CPU table;
2. **in process**: the app's own CPU per request without an HTTP server
   (``time.process_time`` around ``--calls`` WSGI calls behind Waitress's
   proxy-headers step configured as served, as bench/app_cost.py does) and its
   split by component, from ``py-spy record --gil`` sampling this process while it
   loops (one busy thread: no GIL contention, no other load in the samples);
3. **sampled under load**: ``py-spy record --gil`` on app process ap1 during a wrk
   run, split the same way (a loaded machine skews these: a thread holding the GIL
   while descheduled still collects samples).

The ranked list printed at the end is (2)'s components plus "Waitress serving",
which is (1) minus the app's in-process cost: Waitress's loop and HTTP parsing, the
hand-offs between its threads and their GIL contention, socket system calls, and
the app code running colder than in a tight loop. Each sample goes to one component
(``category``). The collapsed stacks, profile_summary texts and a JSON of all
figures go to ``--out`` (default: a temp dir).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling
import harness
import profile_summary

FRAME = re.compile(r"(.*?) \((.*?)(?::\d+)?\)$")
# (component, files) - a frame belongs to the first component naming its file.
COMPONENTS = (
    ("slow password hash", ("argon2/", "_argon2_cffi_bindings/")),
    ("proxy-headers step (Waitress)", ("waitress/proxy_headers.py",)),
    ("Waitress", ("waitress/",)),
    (
        "auth (Flask-HTTPAuth callbacks, verification cache, grant)",
        (
            "flask_httpauth.py",
            "flask_httpauth/",
            "productionlab/auth.py",
            "productionlab/users.py",
            "productionlab/tokens.py",
            "productionlab/token_keys.py",
        ),
    ),
    (
        "metrics (Prometheus, security metrics)",
        ("prometheus_client/", "productionlab/metrics.py", "productionlab/securitymetrics.py"),
    ),
    ("access log line + request id", ("productionlab/requestlog.py",)),
    ("security headers", ("productionlab/headers.py",)),
    ("last-used record", ("productionlab/lastused.py",)),
    ("redis call path (redis-py, hiredis)", ("redis/", "productionlab/store/")),
    ("KV view + core (parsing, limit, audit args, JSON)", ("productionlab/",)),
    # py-spy names files relative to sys.path: bench/'s modules by their name alone
    ("view (the ceiling's empty route)", ("ceiling_app.py",)),
    (HARNESS := "bench harness (building the WSGI environ)", ("profile_costs.py", "app_cost.py")),
)
FLASK = "Flask/Werkzeug dispatch (routing, request/response objects, hooks)"
OTHER = "other (thread start-up, stdlib with no caller above)"
# Entering the Flask app: a productionlab frame *above* these wraps the whole app
# (the security-headers middleware, the proxy-headers step), so what runs below
# them without another of our frames is Flask's own work.
FLASK_ENTRY = {("Flask.__call__", "flask/app.py"), ("Flask.wsgi_app", "flask/app.py")}


def _frame(raw: str) -> tuple[str, str]:
    match = FRAME.match(raw)
    if not match:
        return raw, ""
    function, path = match.groups()
    # py-spy's short names: relative to sys.path (werkzeug/routing/map.py, flask/app.py)
    return function, path


def _component(path: str) -> str | None:
    for name, files in COMPONENTS:
        if any(f in path for f in files):
            return name
    return None


def category(stack: list[str]) -> str:
    """The component a sample's CPU is spent for: walking from the innermost frame
    out, the first frame of ours, of a library we call for a purpose (redis-py,
    Flask-HTTPAuth, prometheus_client) or of Waitress decides; Flask, Werkzeug and
    the standard library are charged to whoever called them. A wrapper around the
    whole app met after Flask's entry point charges the sample to Flask."""
    entered_flask = False
    saw_flask = False
    for raw in reversed(stack):
        function, path = _frame(raw)
        if (function, path) in FLASK_ENTRY:
            entered_flask = True
        if path.startswith(("flask/", "werkzeug/")) or "/flask/" in path or "/werkzeug/" in path:
            saw_flask = True
            continue
        component = _component(path)
        if component is None:
            continue
        return FLASK if entered_flask else component
    return FLASK if saw_flask else OTHER


def costs(collapsed: str) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for stack, count in profile_summary.collapsed_stacks(collapsed):
        # py-spy's raw format starts each stack with the process and thread names
        frames = [f for f in stack.split(";") if FRAME.match(f)]
        counts[category(frames)] += count
        total += count
    return counts, total


def access_lines(path: Path) -> int:
    with path.open("rb") as log:
        return sum(1 for line in log if b'"status"' in line)


def profile_workload(
    system: harness.System, workload: str, seconds: int, rate: int, out_dir: Path
) -> dict:
    """py-spy on ap1 for ``seconds`` in the middle of a wrk run of ``workload``."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pids = {k: v for k, v in system.processes().items() if k.startswith("ap")}
    log = system.stack.log_dir / "ap1.log" if isinstance(system, harness.Hardened) else None
    target = out_dir / f"profile-{system.name}-{workload}.collapsed"
    holder: dict = {}
    load = threading.Thread(
        target=lambda: holder.setdefault("wrk", harness.run_wrk(system, workload, seconds + 4))
    )
    load.start()
    time.sleep(1.5)
    cpu_before = harness.cpu_seconds(pids)
    lines_before = access_lines(log) if log else 0
    started = time.monotonic()
    done = subprocess.run(
        [
            py_spy,
            "record",
            "--pid",
            str(pids["ap1"]),
            "--duration",
            str(seconds),
            "--rate",
            str(rate),
            "--gil",
            "--format",
            "raw",
            "--output",
            str(target),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    window = time.monotonic() - started
    lines_after = access_lines(log) if log else 0
    cpu_after = harness.cpu_seconds(pids)
    load.join()
    if done.returncode != 0:
        raise RuntimeError(f"py-spy failed: {done.stderr[-500:]}")
    collapsed = target.read_text()
    (out_dir / f"profile-{system.name}-{workload}.txt").write_text(
        f"py-spy record --gil --rate {rate} on ap1 during the {system.name} {workload} workload\n\n"
        + profile_summary.summarise(collapsed, top=40)
    )
    counts, total = costs(collapsed)
    result: harness.WrkResult = holder["wrk"]
    # Requests in the window from wrk's rate (steady state); CPU of every app process.
    requests = result.rps * window
    cpu_all = sum(cpu_after[k] - cpu_before[k] for k in pids)
    cpu_ap1 = cpu_after["ap1"] - cpu_before["ap1"]
    cpu_us = 1e6 * cpu_all / requests
    gil_fraction = (total / rate) / cpu_ap1 if cpu_ap1 else 0.0
    gil_us = cpu_us * gil_fraction
    found = {
        "system": system.name,
        "workload": workload,
        "rps": result.rps,
        "samples": total,
        "cpu_us": cpu_us,
        "gil_us": gil_us,
        "components": {
            name: {"share": n / total, "us": gil_us * n / total} for name, n in counts.most_common()
        },
    }
    if log:
        # Cross-check: ap1's own CPU over the requests its access log counted.
        found["ap1_cpu_us_by_log"] = 1e6 * cpu_ap1 / max(1, lines_after - lines_before)
    return found


def render(result: dict, in_process: bool = False) -> str:
    if in_process:
        head = (
            f"{result['system']} {result['workload']} in process (no HTTP server): app CPU "
            f"{result['cpu_us']:.0f} us/request ({result['samples']} GIL samples; each "
            "component is its share of the samples x the app CPU)"
        )
        rows = [
            f"  {v['us']:5.0f} us  {100 * v['share']:5.1f}%  {name}"
            for name, v in result["components"].items()
        ]
        return "\n".join([head, *rows])
    check = (
        f"; ap1 alone by its access log: {result['ap1_cpu_us_by_log']:.0f} us"
        if "ap1_cpu_us_by_log" in result
        else ""
    )
    lines = [
        f"{result['system']} {result['workload']} ({result['rps']:,.0f} req/s under py-spy): "
        f"app CPU {result['cpu_us']:.0f} us/request (/proc, all app processes{check}); "
        f"GIL-held {result['gil_us']:.0f} us, without the GIL "
        f"{result['cpu_us'] - result['gil_us']:.0f} us ({result['samples']} samples on ap1)",
    ]
    for name, value in result["components"].items():
        lines.append(f"  {value['us']:5.0f} us  {100 * value['share']:5.1f}%  {name}")
    return "\n".join(lines)


def wrapped_like_waitress(app, **serve_kwargs):
    """``app`` behind Waitress's proxy-headers step, configured as ``waitress.serve``
    would configure it with these arguments."""
    from waitress.adjustments import Adjustments
    from waitress.proxy_headers import proxy_headers_middleware

    adj = Adjustments(**serve_kwargs)
    return proxy_headers_middleware(
        app,
        trusted_proxy=adj.trusted_proxy,
        trusted_proxy_count=adj.trusted_proxy_count,
        trusted_proxy_headers=adj.trusted_proxy_headers,
        clear_untrusted=adj.clear_untrusted_proxy_headers,
        log_untrusted=adj.log_untrusted_proxy_headers,
    )


def in_process(
    hardened: harness.Hardened, calls: int, sample_seconds: float, out_dir: Path
) -> list:
    """The app's own CPU per request without an HTTP server (``time.process_time``
    around ``calls`` WSGI calls, as bench/app_cost.py), behind Waitress's proxy-headers
    step as served, and its split by component from py-spy sampling this process
    while it loops (one busy thread: no GIL contention, no Waitress)."""
    import os

    import app_cost
    import ceiling_app

    from productionlab.ap import create_app
    from productionlab.requestlog import configure_logging
    from productionlab.settings import Settings

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stderr = sys.stderr
    sys.stderr = open(os.devnull, "w")  # access lines are part of the cost: to /dev/null
    try:
        configure_logging()
        settings = Settings.from_env(hardened.stack.plane_env("ap"), plane="ap")
        served = {
            "trusted_proxy": settings.trusted_proxy,
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
            "clear_untrusted_proxy_headers": True,
        }
        apps = {
            "hardened": wrapped_like_waitress(create_app(settings), **served),
            "ceiling": wrapped_like_waitress(ceiling_app.create_app()),
        }
        auth = hardened.env["BENCH_AUTH"]
        cases = [
            ("hardened", "read", "/read/bench-1", "GET", auth),
            ("hardened", "write", "/write/bench-1/value", "POST", auth),
            ("ceiling", "read", "/read/bench-1", "GET", None),
            ("ceiling", "write", "/write/bench-1/value", "POST", None),
        ]
        results = []
        for system, workload, path, method, header in cases:
            app = apps[system]

            def environ(path=path, method=method, header=header) -> dict:
                env = app_cost.environ(path, method, header)
                env.update(HTTP_X_FORWARDED_FOR="127.0.0.1", HTTP_X_FORWARDED_PROTO="https")
                return env

            call, statuses = app_cost.wsgi_caller(app, environ)
            cpu_us = app_cost.cpu_us_per_call(call, calls, warmup=100)
            if not statuses[-1].startswith("20"):
                raise RuntimeError(f"{system} {workload}: {statuses[-1]}")
            target = out_dir / f"profile-inprocess-{system}-{workload}.collapsed"
            spy = subprocess.Popen(
                [
                    *(py_spy, "record", "--pid", str(os.getpid()), "--rate", "1000"),
                    *("--duration", str(int(sample_seconds)), "--gil", "--nonblocking"),
                    *("--format", "raw", "--output", str(target)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            sampled_calls, sampled_cpu = 0, time.process_time()
            while spy.poll() is None:
                for _ in range(50):
                    call()
                sampled_calls += 50
            sampled_cpu = time.process_time() - sampled_cpu
            counts, total = costs(target.read_text())
            results.append(
                {
                    "system": system,
                    "workload": workload,
                    "cpu_us": cpu_us,
                    "samples": total,
                    # py-spy samples wall time: on a loaded machine a descheduled thread
                    # still "holds" the GIL, so only the shares are used, not these
                    "sampled_cpu_us": 1e6 * sampled_cpu / max(1, sampled_calls),
                    "sampled_gil_us": 1e6 * total / 1000 / max(1, sampled_calls),
                    "components": {
                        name: {"share": n / total, "us": cpu_us * n / total}
                        for name, n in counts.most_common()
                    },
                }
            )
            print(
                render({**results[-1], "rps": 0, "gil_us": cpu_us}, in_process=True),
                end="\n\n",
                file=stderr,
                flush=True,
            )
        return results
    finally:
        sys.stderr = stderr  # /dev/null stays open: the app's threads may still log


def under_load(system: harness.System, workload: str, seconds: float) -> tuple[float, float]:
    """(req/s, CPU us per request of all app processes) of one wrk run, no profiler."""
    pids = {k: v for k, v in system.processes().items() if k.startswith("ap")}
    before = harness.cpu_seconds(pids)
    result = harness.run_wrk(system, workload, seconds)
    after = harness.cpu_seconds(pids)
    cpu = sum(after[k] - before[k] for k in pids)
    return result.rps, 1e6 * cpu / max(1, result.requests)


SERVING = (
    "Waitress serving: served CPU - the app's in-process CPU (its loop, HTTP parsing, "
    "hand-offs between threads, GIL contention, socket system calls)"
)


def ranked(app: dict, served_cpu_us: float) -> list[tuple[str, float]]:
    """Components of one request: the in-process split of the app's own CPU, plus
    Waitress (its loop, parsing, hand-offs between threads, socket system calls) as
    what the served process spends beyond the app's own cost."""
    rows = [(n, v["us"]) for n, v in app["components"].items() if n != HARNESS]
    own = sum(micros for _, micros in rows)
    rows.append((SERVING, served_cpu_us - own))
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3, help="unprofiled wrk runs per system")
    parser.add_argument("--calls", type=int, default=3000, help="in-process calls per case")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    harness.handle_signals()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="plab-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    systems: list[harness.System] = []
    sampled, served = [], {}
    try:
        hardened = harness.Hardened()
        systems.append(hardened)
        systems.append(ceiling.Ceiling.matching(hardened))
        for system in systems:
            harness.run_wrk(system, "mix", 3)
        for workload in ("read", "write"):
            runs: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for system in systems:
                    runs.setdefault(system.name, []).append(
                        under_load(system, workload, args.seconds)
                    )
            for name, values in runs.items():
                served[(name, workload)] = {
                    "rps": statistics.median(v[0] for v in values),
                    "cpu_us": statistics.median(v[1] for v in values),
                    "cpu_us_runs": [round(v[1]) for v in values],
                }
                print(f"{name} {workload} served: {served[(name, workload)]}", flush=True)
            for system in systems:
                sampled.append(profile_workload(system, workload, args.seconds, args.rate, out_dir))
                print(render(sampled[-1]), end="\n\n", flush=True)
        local = in_process(hardened, args.calls, 4, out_dir)
    finally:
        harness.stop_all(systems)
    print("Ranked CPU per request (us): in-process split of the app + Waitress serving")
    for app in local:
        key = (app["system"], app["workload"])
        total = served[key]["cpu_us"]
        print(
            f"\n{app['system']} {app['workload']}: {total:.0f} us per request served "
            f"(app alone {app['cpu_us']:.0f} us)"
        )
        for name, micros in ranked(app, total):
            print(f"  {micros:5.0f} us  {name}")
    (out_dir / "profile-costs.json").write_text(
        json.dumps(
            {
                "served": [{"system": k[0], "workload": k[1], **v} for k, v in served.items()],
                "sampled_under_load": sampled,
                "in_process": local,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"profiles: {out_dir}")


if __name__ == "__main__":
    main()
