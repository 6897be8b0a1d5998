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

from productionlab.audit import AUDIT_KEYS, LUA_PRELUDE, Actor
from productionlab.kv import INDEX, ITEM, VERSION_COUNTER, KVStore
from productionlab.limits import Ticket, refused

MAX_TXN_OPS = 64
MAX_BULK_ITEMS = 1000
WRITES = frozenset({"put", "delete"})
CONDITIONS = frozenset({"version_equals", "exists", "absent"})
_NO_LIMIT = "{plab}:limits:none"
_ARGS_PER_OP = 5

# KEYS: audit list, audit meta, version counter, index, limit counter, one item per op.
# ARGV: 1..6 audit, 7 limit, 8 window, 9 charge, 10 atomic (1/0), 11 n, then per op
# kind, key, value, ttl_ms, expected version.
_BATCH = (
    LUA_PRELUDE
    + r"""
local counter, index = KEYS[3], KEYS[4]
local limit, window, charge = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if limit > 0 then
  local used = redis.call('INCRBY', KEYS[5], charge)
  if used == charge then redis.call('EXPIRE', KEYS[5], window) end
  if used > limit then
    local ttl = redis.call('TTL', KEYS[5])
    if ttl < 0 then redis.call('EXPIRE', KEYS[5], window) ttl = window end
    return {-2, math.max(ttl, 1)}
  end
end
local atomic, n = ARGV[10] == '1', tonumber(ARGV[11])
local function arg(i, field) return ARGV[11 + (i - 1) * 5 + field] end
if atomic then
  local next_version = tonumber(redis.call('GET', counter) or '0')
  local seen = {}
  for i = 1, n do
    local item, kind = KEYS[5 + i], arg(i, 1)
    local ver = seen[item]
    if ver == nil then ver = redis.call('HGET', item, 'ver') or '' end
    local failed = (kind == 'exists' and ver == '') or (kind == 'absent' and ver ~= '')
      or (kind == 'version_equals' and ver ~= arg(i, 5))
    if failed then
      audit('kv.txn', arg(i, 2), 'precondition_failed', ver)
      return {-1, i, ver}
    end
    if kind == 'put' then
      next_version = next_version + 1
      ver = tostring(next_version)
    elseif kind == 'delete' then
      ver = ''
    end
    seen[item] = ver
  end
end
local results = {}
for i = 1, n do
  local item, kind, key = KEYS[5 + i], arg(i, 1), arg(i, 2)
  if kind == 'get' then
    local found = redis.call('HMGET', item, 'v', 'ver')
    if found[2] then results[i] = {'found', found[1] or '', found[2]}
    else results[i] = {'absent', '', ''} end
  elseif kind == 'put' then
    local current = redis.call('HGET', item, 'ver')
    local version = redis.call('INCR', counter)
    local ttl_ms = tonumber(arg(i, 4))
    redis.call('HSET', item, 'v', arg(i, 3), 'ver', version)
    if ttl_ms > 0 then redis.call('PEXPIRE', item, ttl_ms) else redis.call('PERSIST', item) end
    redis.call('ZADD', index, 0, key)
    local outcome = current and 'updated' or 'created'
    audit('kv.put', key, outcome, version)
    results[i] = {outcome, '', tostring(version)}
  elseif kind == 'delete' then
    local current = redis.call('HGET', item, 'ver')
    if current then
      redis.call('DEL', item)
      redis.call('ZREM', index, key)
      audit('kv.delete', key, 'deleted', current)
      results[i] = {'deleted', '', current}
    else
      results[i] = {'absent', '', ''}
    end
  else
    results[i] = {'held', '', redis.call('HGET', item, 'ver') or ''}
  end
end
return {0, results}
"""
)


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
        self._script = kv.client.register_script(_BATCH)

    def run(
        self, ops: list[Op], actor: Actor, *, atomic: bool, limit: Ticket | None = None
    ) -> list[OpResult]:
        """Apply ``ops`` in order; raises :class:`ConditionFailed` (atomic only) or 429."""
        writes = any(op.kind in WRITES for op in ops)
        if writes:
            self.kv.durability.before_write()
        keys = [*AUDIT_KEYS, VERSION_COUNTER, INDEX]
        args: list = actor.audit_args()
        if limit is not None and limit.limit > 0:
            keys.append(limit.counter)
            args += [limit.limit, limit.window, len(ops)]
        else:
            keys.append(_NO_LIMIT)
            args += [0, 0, 0]
        args += [1 if atomic else 0, len(ops)]
        for op in ops:
            keys.append(ITEM + op.key)
            ttl_ms = op.ttl * 1000 if op.ttl else 0
            version = "" if op.version is None else str(op.version)
            args += [op.kind, op.key, op.value, ttl_ms, version]
        reply = self.kv._eval(self._script, keys, args)
        status = int(reply[0])
        if status == -2:
            refused(int(reply[1]))
        if status == -1:
            current = reply[2]
            raise ConditionFailed(int(reply[1]) - 1, int(current) if current else None)
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
