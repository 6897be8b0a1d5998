"""Transactions and bulk requests on the virtual shards: what serves ``/v1/txn``
and ``/v1/bulk``.

A redis script touches one slot, and a shard is the unit of atomicity:

- **single redis** (it holds every shard): one script runs the whole request
  over any shards (``shard_batch_fused.lua``: the limit ticket, the quota hold,
  the operations, the settle), exactly as ``batch.py`` does today;
- **cluster**: a *transaction* whose keys span shards is refused before anything
  runs (:class:`CrossShard`; the routes answer 400 ``cross_shard``): no key
  shares a shard with another by any rule a client can use (keys are user
  data; the shard is ``crc32(key) % 16``), so a client that needs several keys
  changed together on a cluster must use one key. A transaction within one
  shard runs as reservation, ``shard_batch.lua``, settle. A *bulk* request's
  items are independent anyway: it is split by shard, each group one script
  (the ticket is taken once for the whole request), and the results are put
  back in the request's order. The items of one shard (so every item of one
  key) apply in the request's order, the shards one after another: when the
  quota runs out, which put is refused follows that order, not the request's.
"""

from __future__ import annotations

from collections import defaultdict

from productionlab.audit import Actor
from productionlab.batch import WRITES, ConditionFailed, Op, OpResult, TxnQuotaExceeded
from productionlab.errors import CrossShardTransaction
from productionlab.luascripts import script
from productionlab.ratelimit import NO_TICKET, Ticket, limit_spent
from productionlab.shardkv import USAGE_TOTAL, ShardedKV
from productionlab.store.layout import shard_for, shard_of

SHARD_BATCH = script("shard_batch")
SHARD_BATCH_FUSED = script("shard_batch_fused")


class CrossShard(CrossShardTransaction):
    """A transaction on a cluster names keys of more than one shard."""

    def __init__(self, shards: int):
        super().__init__(
            f"a transaction on a Redis Cluster must keep to one shard; these keys are in "
            f"{shards} shards (the shard of a key is fixed by the key)"
        )


def _op_args(ops: list[Op]) -> tuple[list[str], list]:
    items: list[str] = []
    args: list = []
    for op in ops:
        place = shard_for(op.key)
        items.append(place.item(op.key))
        ttl_ms = op.ttl * 1000 if op.ttl else 0
        version = "" if op.version is None else str(op.version)
        args += [op.kind, op.key, op.value, ttl_ms, version, place.tag, place.number]
    return items, args


def _results(ops: list[Op], replies: list) -> list[OpResult]:
    results = []
    for op, (outcome, value, version) in zip(ops, replies, strict=True):
        outcome = outcome.decode()
        results.append(
            OpResult(
                op,
                outcome,
                value if outcome == "found" else None,
                int(version) if version else None,
            )
        )
    return results


class ShardBatches:
    """Runs transactions and bulk requests over a :class:`ShardedKV`'s redis."""

    def __init__(self, kv: ShardedKV):
        self.kv = kv

    def run(
        self, ops: list[Op], actor: Actor, *, atomic: bool, limit: Ticket | None = None
    ) -> list[OpResult]:
        """Apply ``ops`` in order; raises :class:`ConditionFailed`,
        :class:`TxnQuotaExceeded` (atomic only), :class:`CrossShard` (a cluster
        transaction over several shards) or 429."""
        writes = any(op.kind in WRITES for op in ops)
        ticket = limit or NO_TICKET
        groups: dict[int, list[int]] = defaultdict(list)
        for index, op in enumerate(ops):
            groups[shard_of(op.key)].append(index)
        if not self.kv.composed and atomic and len(groups) > 1:
            raise CrossShard(len(groups))
        if writes:
            self.kv.durability.before_write()
        if self.kv.composed:
            results = self._fused(ops, actor, atomic, ticket)
        else:
            results: list[OpResult | None] = [None] * len(ops)  # type: ignore[no-redef]
            charge = len(ops)
            for _, indexes in sorted(groups.items()):
                group = [ops[i] for i in indexes]
                for i, result in zip(
                    indexes, self._in_shard(group, actor, atomic, ticket, charge), strict=True
                ):
                    results[i] = result
                ticket = NO_TICKET  # taken once, for the whole request
        if writes:
            self.kv.durability.after_write()
        return results  # type: ignore[return-value]

    def _fused(self, ops: list[Op], actor: Actor, atomic: bool, ticket: Ticket) -> list[OpResult]:
        items, op_args = _op_args(ops)
        quota = self.kv.quota
        reply = SHARD_BATCH_FUSED(
            self.kv.client,
            keys={
                "audit": shard_for(ops[0].key).audit,
                "limit": ticket.counter,
                "usage": USAGE_TOTAL + actor.name,
                "items": items,
            },
            args={
                "audit": actor.audit_args(),
                "limit": ticket.limit,
                "window": ticket.window,
                "charge": len(ops) if ticket.limit > 0 else 0,
                "atomic": 1 if atomic else 0,
                "n": len(ops),
                "owner": actor.name,
                "max_keys": quota.max_keys,
                "max_bytes": quota.max_bytes,
                "ops": op_args,
            },
        )
        status = int(reply[0])
        if status == -2:
            limit_spent(int(reply[1]))
        if status == -1:
            current = reply[2]
            raise ConditionFailed(int(reply[1]) - 1, int(current) if current else None)
        if status == -3:
            raise TxnQuotaExceeded(int(reply[1]) - 1, int(reply[2]), int(reply[3]))
        return _results(ops, reply[1])

    def _in_shard(
        self, ops: list[Op], actor: Actor, atomic: bool, ticket: Ticket, charge: int
    ) -> list[OpResult]:
        """Cluster mode: one shard's operations between a reservation and a settle."""
        place = shard_for(ops[0].key)
        want_keys = sum(1 for op in ops if op.kind == "put")
        want_bytes = sum(len(op.key) + len(op.value) for op in ops if op.kind == "put")
        hold, wait = self.kv._reserve(
            actor.name,
            ticket,
            want_keys,
            want_bytes,
            place.number,
            charge=charge if ticket.limit > 0 else 0,
        )
        if hold is None:
            limit_spent(wait)
        items, op_args = _op_args(ops)
        reply = SHARD_BATCH(
            self.kv.client,
            keys={"audit": place.audit, "items": items},
            args={
                "audit": actor.audit_args(),
                "atomic": 1 if atomic else 0,
                "n": len(ops),
                "owner": actor.name,
                "grant_keys": hold.keys,
                "grant_bytes": hold.bytes,
                "ops": op_args,
            },
        )
        used = self.kv._settle(actor.name, hold.member, place.number, reply[-1])
        status = int(reply[0])
        if status == -1:
            current = reply[2]
            raise ConditionFailed(int(reply[1]) - 1, int(current) if current else None)
        if status == -3:
            raise TxnQuotaExceeded(int(reply[1]) - 1, used[0], used[1])
        return _results(ops, reply[1])
