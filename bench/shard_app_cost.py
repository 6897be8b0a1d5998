"""App-plane CPU per request (``bench/app_cost.py``'s method) with today's KV core
and with ``ShardedKV`` swapped into the same app (virtual shards, issue 12 item 2;
the routes do not use it yet, so this swaps it in for the measurement only).

    python bench/shard_app_cost.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import app_cost
import harness

from productionlab.ap import create_app
from productionlab.requestlog import configure_logging
from productionlab.services import services_of
from productionlab.settings import Settings
from productionlab.shardkv import ShardedKV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    system = harness.Hardened(ap_workers=1)
    out = sys.stdout
    try:
        sys.stderr = open(os.devnull, "w")  # access lines are part of the cost
        configure_logging()
        settings = Settings.from_env(system.stack.plane_env("ap"), plane="ap")
        app = create_app(settings)
        found = services_of(app)
        found.users.start_listener()
        today = found.kv
        sharded = ShardedKV(found.redis, found.durability, found.quota)
        auth = system.env["BENCH_AUTH"]
        for round_ in (1, 2):
            for name, kv in (("today", today), ("sharded", sharded)):
                found.kv = kv
                for what, path, method in (
                    ("read", "/read/bench-1", "GET"),
                    ("write", "/write/bench-1/value", "POST"),
                ):
                    if what == "read":  # the key must exist in this layout
                        app_cost.cost(app, "/write/bench-1/value", "POST", auth, 10)
                    micros, status = app_cost.cost(app, path, method, auth, args.calls)
                    line = f"round {round_} {name:8} {what:6} {micros:6.0f} us CPU per request"
                    print(f"{line} ({status})", file=out, flush=True)
    finally:
        sys.stderr = sys.__stderr__
        system.stop()


if __name__ == "__main__":
    main()
