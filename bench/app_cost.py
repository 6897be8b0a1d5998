"""CPU cost of one request in the app-plane Flask app itself, without an HTTP server.

Starts a hardened stack (for its redis, users and secrets), builds an app-plane app
in this process with the same settings, and calls its WSGI entry point N times for a
cached-credential read and a write; the naive app is measured the same way. CPU time
(``time.process_time``) is insensitive to other processes' load, unlike req/s.

    python bench/app_cost.py [--calls 2000]

To measure older code: ``PYTHONPATH=/path/to/old/checkout python bench/app_cost.py``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import naive_app
import redis

from productionlab.ap import create_app
from productionlab.services import services_of
from productionlab.settings import Settings


def environ(path: str, method: str, auth: str | None) -> dict:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REQUEST_URI": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8101",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_X_REQUEST_ID": "app-cost",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if auth:
        env["HTTP_AUTHORIZATION"] = auth
    return env


def wsgi_caller(app, make_environ: Callable[[], dict]) -> tuple[Callable[[], None], list[str]]:
    """A function that makes one WSGI call of ``app`` (a fresh environ each time)
    and reads the whole body, and the list of the statuses it has been given."""
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info=None) -> None:
        statuses.append(status)

    def call() -> None:
        body = app(make_environ(), start_response)
        b"".join(body)
        if hasattr(body, "close"):
            body.close()

    return call, statuses


def cpu_us_per_call(call: Callable[[], None], calls: int, warmup: int) -> float:
    """This process's CPU microseconds per ``call()`` over ``calls`` calls, after
    ``warmup`` calls that are not counted."""
    for _ in range(warmup):
        call()
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def cost(app, path: str, method: str, auth: str | None, calls: int) -> tuple[float, str]:
    call, statuses = wsgi_caller(app, lambda: environ(path, method, auth))
    return cpu_us_per_call(call, calls, warmup=50), statuses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    system = harness.Hardened(ap_workers=1)
    out = sys.stdout
    try:
        # Access lines are part of the cost: log them, to /dev/null.
        sys.stderr = open(os.devnull, "w")
        from productionlab.requestlog import configure_logging

        configure_logging()
        settings = Settings.from_env(system.stack.plane_env("ap"), plane="ap")
        app = create_app(settings)
        # What serve does before it serves: follow user changes, which turns the
        # verification cache on (create_app itself starts nothing).
        services_of(app).users.start_listener()
        auth = system.env["BENCH_AUTH"]
        client = redis.Redis(
            port=system.stack.config.redis_port,
            username="plab-ap",
            password=system.stack.secret("redis_ap_password"),
            **system.stack.redis_tls_options("ap"),  # type: ignore[arg-type]
        )
        # the naive app logs in as plab-ap, whose ACL lets it write shard keys only
        client.set("{plab:s00.J}:kv:naive", "value")
        naive = naive_app.create_app(client)
        for name, target, path, method, header in (
            ("hardened read", app, "/read/bench-1", "GET", auth),
            ("hardened write", app, "/write/bench-1/value", "POST", auth),
            ("naive read", naive, "/read/{plab:s00.J}:kv:naive", "GET", None),
            ("naive write", naive, "/write/{plab:s00.J}:kv:naive/value", "POST", None),
        ):
            micros, status = cost(target, path, method, header, args.calls)
            print(f"{name:15} {micros:6.0f} us CPU per request ({status})", file=out, flush=True)
    finally:
        sys.stderr = sys.__stderr__
        system.stop()


if __name__ == "__main__":
    main()
