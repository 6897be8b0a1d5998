"""The one KV core used by both planes: validation, versions, compare-and-set,
TTL, listing and the audit append.

Each key lives in a redis hash ``{plab}:kv:<key>`` with fields ``v`` (value)
and ``ver`` (version). Versions come from one global counter, so a key that
is deleted and written again never reuses a version (no ABA for If-Match).
Every change is one Lua script: the check, the write, the version and the
audit entry happen atomically, in one round trip. The caller's per-user rate
limit charge (a :class:`~productionlab.limits.Ticket`) rides in the same
script, so a request costs one round trip in all, and a limited request
changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from productionlab.audit import AUDIT_KEYS, LUA_PRELUDE, Actor
from productionlab.errors import InvalidKey, NotFound, PreconditionFailed
from productionlab.limits import LIMIT_LUA, Ticket, refused
from productionlab.store.durability import Durability

# \A...\Z, not ^...$: "$" also matches before a trailing newline, which would let
# "key\n" (sent as key%0A) through.
KEY_RE = re.compile(r"\A[A-Za-z0-9_-]{1,256}\Z")
PREFIX_RE = re.compile(r"\A[A-Za-z0-9_-]{0,256}\Z")
ITEM = "{plab}:kv:"
VERSION_COUNTER = "{plab}:kv-version"
INDEX = "{plab}:kv-index"
MAX_TTL = 10 * 365 * 24 * 3600
MAX_LIST_LIMIT = 1000

_PUT = (
    LUA_PRELUDE
    + LIMIT_LUA
    + r"""
local item, counter, index = KEYS[3], KEYS[4], KEYS[5]
local key, value, ttl_ms, cond, expected = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
if KEYS[6] then
  local wait = take_limit(KEYS[6], tonumber(ARGV[12]), tonumber(ARGV[13]))
  if wait > 0 then return {-2, wait} end
end
local current = redis.call('HGET', item, 'ver')
if cond == 'absent' and current then
  audit('kv.put', key, 'precondition_failed', current)
  return {-1, current}
end
if cond == 'match' then
  local ok = false
  if current then
    if expected == '*' then ok = true else
      for v in string.gmatch(expected, '[^,]+') do if v == current then ok = true end end
    end
  end
  if not ok then
    audit('kv.put', key, 'precondition_failed', current or '')
    return {-1, current or ''}
  end
end
local version = redis.call('INCR', counter)
redis.call('HSET', item, 'v', value, 'ver', version)
if ttl_ms > 0 then redis.call('PEXPIRE', item, ttl_ms) else redis.call('PERSIST', item) end
redis.call('ZADD', index, 0, key)
audit('kv.put', key, current and 'updated' or 'created', version)
if current then return {1, version} end
return {0, version}
"""
)

_DELETE = (
    LUA_PRELUDE
    + LIMIT_LUA
    + r"""
local item, index = KEYS[3], KEYS[4]
local key, expected = ARGV[7], ARGV[8]
if KEYS[5] then
  local wait = take_limit(KEYS[5], tonumber(ARGV[9]), tonumber(ARGV[10]))
  if wait > 0 then return {-2, wait} end
end
local current = redis.call('HGET', item, 'ver')
if not current then
  return {0, ''}
end
if expected ~= '' and expected ~= '*' then
  local ok = false
  for v in string.gmatch(expected, '[^,]+') do if v == current then ok = true end end
  if not ok then
    audit('kv.delete', key, 'precondition_failed', current)
    return {-1, current}
  end
end
redis.call('DEL', item)
redis.call('ZREM', index, key)
audit('kv.delete', key, 'deleted', current)
return {1, current}
"""
)

# A read that takes the caller's rate-limit charge in the same round trip.
_GET = (
    LIMIT_LUA
    + r"""
local wait = take_limit(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
if wait > 0 then return {-1, wait} end
local found = redis.call('HMGET', KEYS[1], 'v', 'ver')
return {0, found[1], found[2]}
"""
)

# Lists keys in lexical order over disjoint prefix ranges, after a cursor key.
# Index members whose item has expired are pruned on the way. The scan is
# bounded so one call never blocks redis for long.
_LIST = r"""
local index, item_prefix = KEYS[1], ARGV[1]
local after, limit, budget = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local found, last = {}, after
for i = 5, #ARGV do
  local prefix = ARGV[i]
  local lo
  if after ~= '' and after >= prefix then lo = '(' .. after else lo = '[' .. prefix end
  local hi = '[' .. prefix .. '\255'
  local done = false
  while not done do
    local batch = redis.call('ZRANGEBYLEX', index, lo, hi, 'LIMIT', 0, 100)
    if #batch == 0 then break end
    for _, member in ipairs(batch) do
      budget = budget - 1
      last = member
      if redis.call('EXISTS', item_prefix .. member) == 1 then
        found[#found + 1] = member
      else
        redis.call('ZREM', index, member)
      end
      if #found >= limit or budget <= 0 then done = true break end
    end
    lo = '(' .. last
    if #batch < 100 then break end
  end
  if #found >= limit or budget <= 0 then return {found, last, 1} end
end
return {found, last, 0}
"""


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidKey()
    return key


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    version: int


@dataclass(frozen=True)
class PutResult:
    key: str
    version: int
    created: bool


def effective_prefixes(grants: Iterable[str], requested: str) -> list[str]:
    """The disjoint, sorted prefix ranges a caller with ``grants`` may list under ``requested``."""
    ranges: set[str] = set()
    for grant in grants:
        grant = "" if grant == "*" else grant
        if requested.startswith(grant):
            ranges.add(requested)
        elif grant.startswith(requested):
            ranges.add(grant)
    ordered = sorted(ranges)
    disjoint: list[str] = []
    for prefix in ordered:
        if not any(prefix.startswith(kept) for kept in disjoint):
            disjoint.append(prefix)
    return disjoint


class KVStore:
    def __init__(self, client: redis.Redis, durability: Durability):
        self.client = client
        self.durability = durability
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        self._list = client.register_script(_LIST)
        self._get = client.register_script(_GET)

    def _eval(self, script: Script, keys: list, args: list) -> list:
        """EVALSHA straight through ``execute_command`` (redis-py's ``Script.__call__``
        adds a deprecation-checking wrapper per call); loads the script when redis lost it."""
        try:
            return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = self.client.script_load(script.script)
            return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def get(self, key: str, limit: Ticket | None = None) -> Item:
        """The item at ``key``; 404 if absent; 429 (nothing read) if ``limit`` is spent."""
        item = ITEM + validate_key(key)
        if limit is None or limit.limit <= 0:
            value, version = self.client.hmget(item, "v", "ver")
        else:
            status, *found = self._eval(self._get, [item, limit.counter], limit.args())
            if int(status) < 0:
                refused(int(found[0]))
            value, version = found
        if version is None:
            raise NotFound(f"key {key!r} not found")
        return Item(key, value or b"", int(version))

    def put(
        self,
        key: str,
        value: bytes,
        actor: Actor,
        *,
        ttl: int | None = None,
        if_match: list[str] | None = None,
        if_absent: bool = False,
        limit: Ticket | None = None,
    ) -> PutResult:
        validate_key(key)
        cond, expected = "", ""
        if if_absent:
            cond = "absent"
        elif if_match is not None:
            cond, expected = "match", ",".join(if_match)
        ttl_ms = ttl * 1000 if ttl else 0
        self.durability.before_write()
        keys = [*AUDIT_KEYS, ITEM + key, VERSION_COUNTER, INDEX]
        args = [*actor.audit_args(), key, value, ttl_ms, cond, expected]
        if limit is not None and limit.limit > 0:
            keys.append(limit.counter)
            args += limit.args()
        status, version = self._eval(self._put, keys, args)
        if int(status) == -2:
            refused(int(version))
        if int(status) < 0:
            raise PreconditionFailed(
                "the key already exists" if if_absent else "the version does not match",
                headers={"ETag": f'"{int(version)}"'} if version not in (b"", "", None) else None,
            )
        self.durability.after_write()
        return PutResult(key, int(version), created=int(status) == 0)

    def delete(
        self,
        key: str,
        actor: Actor,
        *,
        if_match: list[str] | None = None,
        limit: Ticket | None = None,
    ) -> int:
        validate_key(key)
        self.durability.before_write()
        keys = [*AUDIT_KEYS, ITEM + key, INDEX]
        args = [*actor.audit_args(), key, ",".join(if_match or [])]
        if limit is not None and limit.limit > 0:
            keys.append(limit.counter)
            args += limit.args()
        status, version = self._eval(self._delete, keys, args)
        if int(status) == -2:
            refused(int(version))
        if int(status) == 0:
            raise NotFound(f"key {key!r} not found")
        if int(status) < 0:
            raise PreconditionFailed(headers={"ETag": f'"{int(version)}"'})
        self.durability.after_write()
        return int(version)

    def list_keys(
        self, prefixes: list[str], after: str = "", limit: int = 100
    ) -> tuple[list[str], str | None]:
        """One page of keys under ``prefixes`` (disjoint, sorted), after the key ``after``."""
        if not prefixes:
            return [], None
        # Ask for one key more than the page: a full page then says for sure
        # whether another follows, so the last page never points at an empty one.
        found, last, more = self._eval(
            self._list, [INDEX], [ITEM, after, limit + 1, max(limit * 10, 1000), *prefixes]
        )
        keys = [k.decode() for k in found]
        if len(keys) > limit:
            return keys[:limit], keys[limit - 1]
        last_key = last.decode() if isinstance(last, bytes) else str(last)
        # A scan that ran out of budget before filling the page still has more to see.
        return keys, (last_key if int(more) else None)
