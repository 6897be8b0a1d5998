"""What the per-user limit and quota cost per request when a key's shard is not
``{plab}`` (issue 12 item 2, docs/design/virtual-shards.md step 1): redis CPU
(``INFO cpu`` of the main thread) and client CPU (``time.process_time``) per
request for each shape of round trips, on one throwaway redis-server.

Shapes (a prototype: the shard scripts are the one-tag release's kv_get / kv_put,
577e7c6, with their keys under ``{plab:s03}``; single redis has no cross-slot
check). These rows run that release's scripts, so run them with its checkout
first on ``PYTHONPATH`` (``git worktree add /tmp/plab-577e7c6 577e7c6``)::

    PYTHONPATH=/tmp/plab-577e7c6 python bench/shard_limit_cost.py [--calls 20000]


- ``today``: the limit (and for a put the quota) inside the one KV script;
- ``(b) per shard``: the same one script with the limit counter and usage under
  the shard's tag (the per-user-and-shard counters): one round trip;
- ``(a) seq``: a reservation script on ``{plab}`` (limit ticket; for a put also
  the quota hold) and then the shard script: two round trips;
- ``(a) seq+settle``: the put's correction of the hold on ``{plab}`` after the
  shard script: three round trips;
- ``(a) pipelined``: a read's limit script and the shard read in one pipeline
  (one round trip on single redis; the value is dropped when the ticket is
  refused).

Then the built code (``--built``, this checkout): ``ShardedKV`` composed (one
script per write) against the cluster's three scripts, on one redis, reads with
the ticket pipelined; on the planes' client (``PinnableRedis``, each thread's
kept connection). The one-tag ``KVStore`` it was first compared with is gone
from the package (the design file keeps those numbers).

    python bench/shard_limit_cost.py --built [--calls 20000]
"""

from __future__ import annotations

import argparse
import time

from productionlab.audit import AUDIT_KEYS, Actor
from productionlab.luascripts import LUA_DIR
from productionlab.ratelimit import Ticket
from productionlab.redis_process import RedisProcess
from productionlab.store.durability import Durability
from productionlab.store.pinning import PinnableRedis

SHARD = "{plab:s03}"
LIMIT_PLAB = "{plab}:limits:user:bench:60"
LIMIT_SHARD = SHARD + ":limits:user:bench:60"

# The reservation: the limit ticket and, for a put, a hold of the write's worst
# case growth (one key, len(key) + len(value) bytes) on the user's usage.
# The per-user limit's fragment as the planes' scripts include it (no copy here).
TAKE_LIMIT = "\n".join(
    line
    for line in (LUA_DIR / "user_limit.lua").read_text().splitlines()
    if not line.startswith("--!")
)
RESERVE = (
    TAKE_LIMIT
    + """
local wait = take_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
if wait > 0 then return {-2, wait} end
local hold_keys, hold_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
if hold_keys == 0 and hold_bytes == 0 then return {0, 0} end
local used = redis.call('HMGET', KEYS[2], 'keys', 'bytes')
local k, b = tonumber(used[1] or '0'), tonumber(used[2] or '0')
if k + hold_keys > tonumber(ARGV[5]) or b + hold_bytes > tonumber(ARGV[6]) then
  return {0, 0}
end
redis.call('HINCRBY', KEYS[2], 'keys', hold_keys)
redis.call('HINCRBY', KEYS[2], 'bytes', hold_bytes)
return {0, 1}
"""
)
SETTLE = """
redis.call('HINCRBY', KEYS[1], 'keys', tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[1], 'bytes', tonumber(ARGV[2]))
return 0
"""


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def measure(client, name: str, calls: int, request) -> None:
    for i in range(200):
        request(i)
    cpu_before, started = redis_cpu(client), time.process_time()
    for i in range(calls):
        request(i)
    app_us = (time.process_time() - started) / calls * 1e6
    redis_us = (redis_cpu(client) - cpu_before) / calls * 1e6
    print(
        f"{name:26} redis CPU {redis_us:6.1f} us/request   client CPU {app_us:6.1f} us/request",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--built", action="store_true", help="measure the built code only")
    args = parser.parse_args()
    if args.built:
        built(args.calls)
        return
    # the one-tag release's scripts (577e7c6 first on PYTHONPATH, see above)
    from productionlab.kv import KV_GET, KV_PUT

    with RedisProcess() as client:
        reserve_sha = client.script_load(RESERVE)
        settle_sha = client.script_load(SETTLE)
        client.script_load(KV_GET.text)
        client.script_load(KV_PUT.text)
        actor = Actor("bench", "127.0.0.1", "bench")
        value = b"v" * 100
        limit = {"limit": 10**9, "window": 60}
        no_limit = {"limit": 0, "window": 0}

        def put(tag: str, counter: str, ticket: dict) -> tuple:
            return KV_PUT(
                client,
                keys={
                    "audit": AUDIT_KEYS
                    if tag == "{plab}"
                    else [f"{tag}:audit", f"{tag}:audit:meta"],
                    "item": tag + ":kv:bench-1",
                    "counter": tag + ":kv-version",
                    "index": tag + ":kv-index",
                    "limit": counter,
                },
                args={
                    "audit": actor.audit_args(),
                    "key": "bench-1",
                    "value": value,
                    "ttl_ms": 0,
                    "cond": "",
                    "expected": "",
                    "owner": "bench",
                    "max_keys": 10**9,
                    "max_bytes": 10**12,
                    **ticket,
                },
            )

        def get(tag: str, counter: str, ticket: dict):
            return KV_GET(client, keys={"item": tag + ":kv:bench-1", "limit": counter}, args=ticket)

        def reserve(hold_keys: int, hold_bytes: int):
            return client.execute_command(
                "EVALSHA", reserve_sha, 2, LIMIT_PLAB, "{plab}:usage:bench",
                10**9, 60, hold_keys, hold_bytes, 10**9, 10**12,
            )  # fmt: skip

        def settle(keys: int, size: int):
            return client.execute_command(
                "EVALSHA", settle_sha, 1, "{plab}:usage:bench", keys, size
            )

        put("{plab}", LIMIT_PLAB, limit)
        put(SHARD, LIMIT_SHARD, limit)
        hold_bytes = len("bench-1") + len(value)

        def read_pipelined(_: int) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", reserve_sha, 2, LIMIT_PLAB, "{plab}:usage:bench",
                                 10**9, 60, 0, 0, 0, 0)  # fmt: skip
            pipe.hmget(SHARD + ":kv:bench-1", "v", "ver")
            pipe.execute()

        print("reads (GET of one key, limit on):")
        measure(client, "today (1 RT)", args.calls, lambda i: get("{plab}", LIMIT_PLAB, limit))
        per_shard = "(b) per shard (1 RT)"
        measure(client, per_shard, args.calls, lambda i: get(SHARD, LIMIT_SHARD, limit))
        measure(
            client,
            "(a) seq (2 RT)",
            args.calls,
            lambda i: (reserve(0, 0), get(SHARD, LIMIT_SHARD, no_limit)),
        )
        measure(client, "(a) pipelined (1 RT)", args.calls, read_pipelined)
        print("writes (overwrite of one key by its owner, limit and quota on):")
        measure(client, "today (1 RT)", args.calls, lambda i: put("{plab}", LIMIT_PLAB, limit))
        measure(client, per_shard, args.calls, lambda i: put(SHARD, LIMIT_SHARD, limit))
        measure(
            client,
            "(a) seq (2 RT)",
            args.calls,
            lambda i: (reserve(1, hold_bytes), put(SHARD, LIMIT_SHARD, no_limit)),
        )
        measure(
            client,
            "(a) seq+settle (3 RT)",
            args.calls,
            lambda i: (
                reserve(1, hold_bytes),
                put(SHARD, LIMIT_SHARD, no_limit),
                settle(-1, -hold_bytes),
            ),
        )


def built(calls: int) -> None:
    from productionlab.shardkv import ShardedKV

    with RedisProcess() as plain:
        # The planes' client: a thread keeps its connection (execute_held, pipeline_held).
        given = plain.connection_pool.connection_kwargs
        client = PinnableRedis(
            **{k: given[k] for k in ("host", "port", "username", "password") if k in given}
        )
        durability = Durability(client, strict=False)
        actor = Actor("bench", "127.0.0.1", "bench")
        ticket = Ticket(LIMIT_PLAB, 10**9, 60)
        value = b"v" * 100
        stores = {
            "ShardedKV composed": ShardedKV(client, durability, composed=True),
            "ShardedKV 3 scripts": ShardedKV(client, durability, composed=False),
        }
        for store in stores.values():
            store.put("bench-1", value, actor, limit=ticket)
        print("reads (GET of one key, limit on):")
        for name, store in stores.items():
            measure(client, name, calls, lambda i, s=store: s.get("bench-1", limit=ticket))
        print("writes (overwrite of one key by its owner, limit and quota on):")
        for name, store in stores.items():
            measure(
                client, name, calls, lambda i, s=store: s.put("bench-1", value, actor, limit=ticket)
            )


if __name__ == "__main__":
    main()
