"""Redis-side cost of the KV core's write script, which the app-side
``app_cost.py`` cannot see: redis's own CPU time per call (``INFO cpu`` of
the main thread, insensitive to other processes' load, unlike the wall-clock
``usec_per_call`` of ``INFO commandstats``, also shown).

Runs a throwaway redis-server and calls the KV core directly
(:class:`productionlab.shardkv.ShardedKV`, one script per write on one redis):
overwrites of one key by one user, writes of new keys, and writes with a TTL.
To compare with an older release run it with that checkout first on
``PYTHONPATH``: releases before the virtual shards (577e7c6 and before) have
``productionlab.kv.KVStore`` instead, and those whose audit chain was keyed
(c64ef11 and before) get a random audit key::

    python bench/kv_script_cost.py [--calls 20000]
    PYTHONPATH=/path/to/old/checkout python bench/kv_script_cost.py
"""

from __future__ import annotations

import argparse
import inspect
import secrets
import time

from productionlab.audit import Actor
from productionlab.redis_process import RedisProcess
from productionlab.store.durability import Durability


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def measure(client, name: str, calls: int, write) -> None:
    client.config_resetstat()
    cpu_before, started = redis_cpu(client), time.process_time()
    for i in range(calls):
        write(i)
    app_us = (time.process_time() - started) / calls * 1e6
    redis_us = (redis_cpu(client) - cpu_before) / calls * 1e6
    wall = float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec_per_call", 0))
    print(
        f"{name:14} redis CPU {redis_us:6.1f} us/call (wall {wall:6.1f})"
        f"   client CPU {app_us:6.1f} us/call",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with RedisProcess() as client:
        durability = Durability(client, strict=False)
        try:
            from productionlab.shardkv import ShardedKV
        except ImportError:  # a release of the one-tag layout (577e7c6 and before)
            from productionlab.kv import KVStore

            if "audit_key" in inspect.signature(KVStore).parameters:  # c64ef11 and before
                store = KVStore(client, secrets.token_bytes(32), durability)
            else:
                store = KVStore(client, durability)
        else:
            store = ShardedKV(client, durability)
        actor = Actor("bench", "127.0.0.1", "bench")
        value = b"v" * 100
        for i in range(1000):  # warm up and make the overwrite case an overwrite
            store.put(f"bench-{i % 100}", value, actor)
        measure(client, "overwrite", args.calls, lambda i: store.put("bench-1", value, actor))
        measure(client, "new key", args.calls, lambda i: store.put(f"new-{i}", value, actor))
        measure(
            client,
            "new key, ttl",
            args.calls,
            lambda i: store.put(f"ttl-{i}", value, actor, ttl=3600),
        )
        measure(client, "delete", args.calls, lambda i: store.delete(f"new-{i}", actor))


if __name__ == "__main__":
    main()
