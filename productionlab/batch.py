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
from productionlab.kv import (
    INDEX,
    ITEM,
    QUOTA_LUA,
    RECONCILE_PER_WRITE,
    VERSION_COUNTER,
    KVStore,
)
from productionlab.ratelimit import Ticket, refused

WRITES = frozenset({"put", "delete"})
CONDITIONS = frozenset({"version_equals", "exists", "absent"})
_NO_LIMIT = "{plab}:limits:none"
_ARGS_PER_OP = 5

# KEYS: audit list, audit meta, version counter, index, limit counter, one item per op.
# ARGV: 1..6 audit, 7 limit, 8 window, 9 charge, 10 atomic (1/0), 11 n, 12 owner,
# 13 max keys, 14 max bytes, then per op kind, key, value, ttl_ms, expected version.
#
# Quotas: the accounting of a put and a delete is the single-key scripts'
# (productionlab/kv.py's _PUT and _DELETE, after their conditions), repeated
# here op by op; a transaction also walks it in its first pass on scratch
# counters, so a put that would pass the writer's quota refuses the whole
# transaction before anything is written. A bulk put over quota is refused
# alone (outcome quota_exceeded), like a single put.
_BATCH = (
    LUA_PRELUDE
    + QUOTA_LUA
    + f"local RECONCILE_PER_WRITE = {RECONCILE_PER_WRITE}\n"
    + r"""
local counter, index = KEYS[3], KEYS[4]
local limit, window, charge_n = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if limit > 0 then
  local used = redis.call('INCRBY', KEYS[5], charge_n)
  if used == charge_n then redis.call('EXPIRE', KEYS[5], window) end
  if used > limit then
    local ttl = redis.call('TTL', KEYS[5])
    if ttl < 0 then redis.call('EXPIRE', KEYS[5], window) ttl = window end
    return {-2, math.max(ttl, 1)}
  end
end
local atomic, n = ARGV[10] == '1', tonumber(ARGV[11])
local owner, max_keys, max_bytes = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local owner_ttl = USAGE .. owner .. ':ttl'
local function arg(i, field) return ARGV[14 + (i - 1) * 5 + field] end
local function usage()
  local used = redis.call('HMGET', USAGE .. owner, 'keys', 'bytes')
  return tonumber(used[1] or '0'), tonumber(used[2] or '0')
end
local function over(used_keys, used_bytes, add_keys, add_bytes)
  return (add_keys > 0 and used_keys + add_keys > max_keys)
    or (add_bytes > 0 and used_bytes + add_bytes > max_bytes)
end
local function stored(item, key)
  local ver = redis.call('HGET', item, 'ver')
  if not ver then return {ver = '', owner = false, bytes = 0} end
  return {ver = ver, owner = redis.call('HGET', item, 'o'),
    bytes = #key + redis.call('HSTRLEN', item, 'v')}
end
local writes = false
for i = 1, n do
  local kind = arg(i, 1)
  if kind == 'put' or kind == 'delete' then writes = true end
end
if writes then reconcile(owner, RECONCILE_PER_WRITE) end
if atomic then
  local next_version = tonumber(redis.call('GET', counter) or '0')
  local used_keys, used_bytes = usage()
  local seen, touched = {}, {}
  for i = 1, n do
    local item, kind, key = KEYS[5 + i], arg(i, 1), arg(i, 2)
    local s = seen[item] or stored(item, key)
    local ver = s.ver
    local failed = (kind == 'exists' and ver == '') or (kind == 'absent' and ver ~= '')
      or (kind == 'version_equals' and ver ~= arg(i, 5))
    if failed then
      audit('kv.txn', key, 'precondition_failed', ver)
      return {-1, i, ver}
    end
    if kind == 'put' then
      if s.owner ~= owner and not touched[item] and redis.call('HEXISTS', owner_ttl, key) == 1 then
        used_keys = used_keys - 1
        used_bytes = used_bytes - tonumber(redis.call('HGET', owner_ttl, key))
      end
      local bytes = #key + #arg(i, 3)
      local add_keys, add_bytes = 1, bytes
      if s.owner == owner then add_keys, add_bytes = 0, bytes - s.bytes end
      if over(used_keys, used_bytes, add_keys, add_bytes) then
        return {-3, i, used_keys, used_bytes}
      end
      used_keys, used_bytes = used_keys + add_keys, used_bytes + add_bytes
      next_version = next_version + 1
      s = {ver = tostring(next_version), owner = owner, bytes = bytes}
      touched[item] = true
    elseif kind == 'delete' then
      if ver ~= '' and s.owner == owner then
        used_keys, used_bytes = used_keys - 1, used_bytes - s.bytes
      end
      s = {ver = '', owner = false, bytes = 0}
      touched[item] = true
    end
    seen[item] = s
  end
end
-- One put, accounted as productionlab/kv.py's _PUT does; false when over quota.
local function put(item, key, value, ttl_ms)
  local current = redis.call('HGET', item, 'ver')
  local before_owner, before_bytes = false, 0
  if current then
    before_owner = redis.call('HGET', item, 'o')
    before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  end
  if before_owner ~= owner and redis.call('HEXISTS', owner_ttl, key) == 1 then
    uncharge(owner, key, tonumber(redis.call('HGET', owner_ttl, key)))
  end
  local bytes = #key + #value
  local add_keys, add_bytes = 1, bytes
  if before_owner == owner then add_keys, add_bytes = 0, bytes - before_bytes end
  local used_keys, used_bytes = usage()
  if over(used_keys, used_bytes, add_keys, add_bytes) then return false end
  local version = redis.call('INCR', counter)
  redis.call('HSET', item, 'v', value, 'ver', version, 'o', owner)
  local expire_at, had_ttl = 0, false
  if ttl_ms > 0 then
    redis.call('PEXPIRE', item, ttl_ms)
    expire_at = redis.call('PEXPIRETIME', item)
  else
    had_ttl = redis.call('PERSIST', item) == 1
  end
  redis.call('ZADD', index, 0, key)
  if before_owner == owner then
    if add_bytes ~= 0 then redis.call('HINCRBY', USAGE .. owner, 'bytes', add_bytes) end
    if expire_at > 0 then
      redis.call('ZADD', USAGE .. owner .. ':exp', expire_at, key)
      redis.call('HSET', owner_ttl, key, bytes)
    elseif had_ttl then
      redis.call('ZREM', USAGE .. owner .. ':exp', key)
      redis.call('HDEL', owner_ttl, key)
    end
  else
    if before_owner then uncharge(before_owner, key, before_bytes) end
    charge(owner, key, bytes, expire_at)
  end
  local outcome = current and 'updated' or 'created'
  audit('kv.put', key, outcome, version)
  return {outcome, '', tostring(version)}
end
local results = {}
for i = 1, n do
  local item, kind, key = KEYS[5 + i], arg(i, 1), arg(i, 2)
  if kind == 'get' then
    local found = redis.call('HMGET', item, 'v', 'ver')
    if found[2] then results[i] = {'found', found[1] or '', found[2]}
    else results[i] = {'absent', '', ''} end
  elseif kind == 'put' then
    results[i] = put(item, key, arg(i, 3), tonumber(arg(i, 4))) or {'quota_exceeded', '', ''}
  elseif kind == 'delete' then
    local current = redis.call('HGET', item, 'ver')
    if current then
      local before_owner = redis.call('HGET', item, 'o')
      local before_bytes = #key + redis.call('HSTRLEN', item, 'v')
      redis.call('DEL', item)
      redis.call('ZREM', index, key)
      if before_owner then uncharge(before_owner, key, before_bytes) end
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
        quota = self.kv.quota
        args += [1 if atomic else 0, len(ops), actor.name, quota.max_keys, quota.max_bytes]
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
