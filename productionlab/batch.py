"""Several KV operations in one redis script: transactions (``POST /v1/txn``,
all or nothing, with conditions) and bulk requests (``POST /v1/bulk``,
independent items).

Both run the same script. A transaction first walks its operations in order
against a scratch copy of the state it touches (the versions a put will get are
known in advance: the script runs alone, and versions come from the one global
counter), so a condition that fails is found before anything is written, and
the script returns without a change. Then, and for a bulk request at once, the
operations apply in order, each change with its own audit entry appended in
the same script. Operations on the same key apply in order: a ``get`` after a
``put`` of the same key in one transaction reads the value just put, and a
condition sees the earlier operations' effect.

The caller's per-user limit is charged once per operation, in the same script:
a request of 100 items costs what 100 single-key requests cost, and a refused
request changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from productionlab.audit import AUDIT_KEYS, Actor
from productionlab.kv import INDEX, ITEM, VERSION_COUNTER, KVStore
from productionlab.luascripts import script
from productionlab.ratelimit import NO_TICKET, Ticket, refused

WRITES = frozenset({"put", "delete"})
CONDITIONS = frozenset({"version_equals", "exists", "absent"})

# lua/kv_batch.lua: puts and deletes apply as the single-key scripts' do (the
# shared lua/kv_write.lua); a transaction first walks its operations on scratch
# state, so a failed condition or a put over quota refuses it before any write.
KV_BATCH = script("kv_batch")


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` is get, put, delete or a condition (see CONDITIONS)."""

    kind: str
    key: str
    value: bytes = b""
    ttl: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class OpResult:
    """What one operation did: ``outcome`` is found/absent (get), created/updated (put),
    deleted/absent (delete) or held (a condition); ``version`` is the key's version
    after it (the deleted version for a delete), None when there is none."""

    op: Op
    outcome: str
    value: bytes | None
    version: int | None


class TxnQuotaExceeded(Exception):
    """A transaction's put would take its writer past their quota; nothing was applied."""

    def __init__(self, index: int, keys: int, bytes_: int):
        super().__init__(f"operation {index} is over quota")
        self.index, self.keys, self.bytes = index, keys, bytes_


class ConditionFailed(Exception):
    """A transaction's condition did not hold; nothing was applied."""

    def __init__(self, index: int, current: int | None):
        super().__init__(f"operation {index} failed")
        self.index = index
        self.current = current


class Batches:
    """Runs transactions and bulk requests over a :class:`KVStore`'s redis."""

    def __init__(self, kv: KVStore):
        self.kv = kv

    def run(
        self, ops: list[Op], actor: Actor, *, atomic: bool, limit: Ticket | None = None
    ) -> list[OpResult]:
        """Apply ``ops`` in order; raises :class:`ConditionFailed` (atomic only) or 429."""
        writes = any(op.kind in WRITES for op in ops)
        if writes:
            self.kv.durability.before_write()
        ticket = limit or NO_TICKET
        items: list[str] = []
        op_args: list = []
        for op in ops:
            items.append(ITEM + op.key)
            ttl_ms = op.ttl * 1000 if op.ttl else 0
            version = "" if op.version is None else str(op.version)
            op_args += [op.kind, op.key, op.value, ttl_ms, version]
        quota = self.kv.quota
        reply = KV_BATCH(
            self.kv.client,
            keys={
                "audit": AUDIT_KEYS,
                "counter": VERSION_COUNTER,
                "index": INDEX,
                "limit": ticket.counter,
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
            refused(int(reply[1]))
        if status == -1:
            current = reply[2]
            raise ConditionFailed(int(reply[1]) - 1, int(current) if current else None)
        if status == -3:
            raise TxnQuotaExceeded(int(reply[1]) - 1, int(reply[2]), int(reply[3]))
        if writes:
            self.kv.durability.after_write()
        results = []
        for op, (outcome, value, version) in zip(ops, reply[1], strict=True):
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
