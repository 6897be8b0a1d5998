"""The operations of transactions (``POST /v1/txn``, all or nothing, with
conditions) and bulk requests (``POST /v1/bulk``, independent items), and the
refusals they answer; ``shardbatch.ShardBatches`` runs them on the shards.

Operations on the same key apply in order: a ``get`` after a ``put`` of the
same key in one transaction reads the value just put, and a condition sees the
earlier operations' effect. A transaction walks its operations on scratch state
first, so a condition that fails, or a put over quota, refuses it before
anything is written. The caller's per-user limit is charged once per operation:
a request of 100 items costs what 100 single-key requests cost.
"""

from __future__ import annotations

from dataclasses import dataclass

WRITES = frozenset({"put", "delete"})
CONDITIONS = frozenset({"version_equals", "exists", "absent"})


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
