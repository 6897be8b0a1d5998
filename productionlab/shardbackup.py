"""Backups on the virtual shards (issue 12 item 2; being built, not yet what
``/admin/backups`` and the CLI use): where ``backup.create_backup`` reads its
records and ``backup.restore_backup`` writes them (``store=ShardStore()``).

The file format is unchanged: one record per key in lexical key order (the
shards' indexes merged), the same digest, and ``kv_version`` the highest version
any shard had given. So a backup taken on today's layout restores into the
shards and the other way round. A restore writes each batch shard by shard
(``shard_restore.lua``: the shard's audit chain gets one entry per key), then
raises every shard's counter past the backup's ``kv_version`` and charges the
restored keys (which carry no owner) to their last writer in the audit chains.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Iterator

import redis

from productionlab.audit import Actor, AuditLog
from productionlab.audit_chains import chain_keys
from productionlab.backup_records import BATCH, Record
from productionlab.kv import UNATTRIBUTED
from productionlab.luascripts import script
from productionlab.shardkv import USAGE_TOTAL
from productionlab.store.layout import SHARDS, Shard, all_shards, shard, shard_of, version_of

SHARD_RESTORE = script("shard_restore")
SHARD_CHARGE_UNOWNED = script("shard_charge_unowned")
SHARD_SETTLE = script("shard_settle")


def _shard_records(client: redis.Redis, place: Shard, batch: int) -> Iterator[Record]:
    """One shard's live keys in lexical order, a batch at a time (each batch in MULTI:
    one slot)."""
    after = "-"
    while True:
        page = [m.decode() for m in client.zrangebylex(place.index, after, "+", 0, batch)]
        if not page:
            return
        pipe = client.pipeline(transaction=True)
        for key in page:
            pipe.hmget(place.item(key), "v", "ver")
            pipe.pttl(place.item(key))
        results = pipe.execute()
        for key, (value, version), ttl in zip(page, results[::2], results[1::2], strict=True):
            if version is not None:
                yield Record(key, value or b"", int(version), max(0, int(ttl)))
        after = "(" + page[-1]


def _settle(client: redis.Redis, number: int, reports: list) -> None:
    if not reports:
        return
    user = reports[0].decode() if isinstance(reports[0], bytes) else str(reports[0])
    SHARD_SETTLE(
        client,
        keys={"usage": USAGE_TOTAL + user, "holds": "{plab}:usage-holds:" + user},
        args={"member": "", "shard": f"{number:02d}", "reports": reports},
    )


def last_writers_of_every_chain(client: redis.Redis) -> dict[str, str]:
    """key -> the actor of its last ``kv.put`` in the audit chains (the main chain's
    entries, from before the shards, first; deleted keys dropped)."""
    writers: dict[str, str] = {}
    for keys in chain_keys().values():
        for raw in AuditLog(client, keys).iter_raw():
            try:
                entry = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if not isinstance(entry, dict):
                continue
            action, outcome, target = entry.get("action"), entry.get("outcome"), entry.get("target")
            if action == "kv.put" and outcome in ("created", "updated"):
                writers[str(target)] = str(entry.get("actor") or UNATTRIBUTED)
            elif action == "kv.delete" and outcome == "deleted":
                writers.pop(str(target), None)
    return writers


class ShardStore:
    """The virtual shards' side of a backup and a restore (see the module doc)."""

    def kv_version(self, client: redis.Redis) -> int:
        pipe = client.pipeline(transaction=False)
        for place in all_shards():
            pipe.get(place.counter)
        counters = pipe.execute()
        return max((version_of(int(c), n) for n, c in enumerate(counters) if c), default=0)

    def key_count(self, client: redis.Redis) -> int:
        pipe = client.pipeline(transaction=False)
        for place in all_shards():
            pipe.zcard(place.index)
        return sum(int(n) for n in pipe.execute())

    def records(self, client: redis.Redis, batch: int = BATCH) -> Iterator[Record]:
        streams = [_shard_records(client, place, batch) for place in all_shards()]
        return heapq.merge(*streams, key=lambda record: record.key)

    def restore_batch(
        self, client: redis.Redis, batch: list[Record], actor: Actor, overwrite: bool
    ) -> int:
        by_shard: dict[int, list[Record]] = defaultdict(list)
        for record in batch:
            by_shard[shard_of(record.key)].append(record)
        restored = 0
        for number, records in sorted(by_shard.items()):
            place = shard(number)
            flat: list = []
            for record in records:
                flat += [record.key, record.value, record.version, record.ttl_ms]
            count, *reports = SHARD_RESTORE(
                client,
                keys={"audit": place.audit, "counter": place.counter, "index": place.index},
                args={
                    "audit": actor.audit_args(),
                    "tag": place.tag,
                    "shard": number,
                    "overwrite": "1" if overwrite else "0",
                    "records": flat,
                },
            )
            _settle(client, number, reports)
            restored += int(count)
        return restored

    def finish_restore(self, client: redis.Redis, kv_version: int) -> None:
        at_least = kv_version // SHARDS
        for place in all_shards():
            if int(client.get(place.counter) or 0) < at_least:
                client.set(place.counter, at_least)
        self.charge_unowned(client)

    def charge_unowned(self, client: redis.Redis, batch: int = 500) -> int:
        """Charge every key without an owner to its last writer in the audit
        chains, else to ``-``; returns how many it charged."""
        writers = last_writers_of_every_chain(client)
        charged = 0
        for place in all_shards():
            after = "-"
            while True:
                page = [m.decode() for m in client.zrangebylex(place.index, after, "+", 0, batch)]
                if not page:
                    break
                pairs: list[str] = []
                for key in page:
                    pairs += [key, writers.get(key, UNATTRIBUTED)]
                count, *reports = SHARD_CHARGE_UNOWNED(
                    client,
                    keys={"index": place.index},
                    args={"tag": place.tag, "shard": place.number, "pairs": pairs},
                )
                _settle(client, place.number, reports)
                charged += int(count)
                after = "(" + page[-1]
        return charged
