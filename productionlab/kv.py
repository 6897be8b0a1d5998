"""The one KV core used by both planes: validation, versions, compare-and-set,
TTL, listing and the audit append.

Each key lives in a redis hash ``{plab}:kv:<key>`` with fields ``v`` (value)
and ``ver`` (version). Versions come from one global counter, so a key that
is deleted and written again never reuses a version (no ABA for If-Match).
Every change is one Lua script: the check, the write, the version and the
audit entry happen atomically, in one round trip. The caller's per-user rate
limit charge (a :class:`~productionlab.ratelimit.Ticket`) rides in the same
script, so a request costs one round trip in all, and a limited request
changes nothing.

Quotas. Every key is charged to one user: the user who wrote its current
value (the item's field ``o``); an overwrite by another user moves the
charge, a delete (by anyone) releases it. A charge is one key plus
``len(key) + len(value)`` bytes, kept per user in ``{plab}:usage:<user>``
(fields ``keys``, ``bytes``) and checked in the write's own script: a write
that would take its writer past ``PLAB_USER_MAX_KEYS`` or
``PLAB_USER_MAX_BYTES`` changes nothing (no value, version, audit entry or
usage change) and is refused with ``quota_exceeded``. A write that does not
grow the writer's usage (an overwrite with a value no larger) is never
refused, so a user over quota can always shrink.

Redis expires keys without running a script, so a key written with a TTL is
also recorded in the owner's ``{plab}:usage:<user>:exp`` (sorted by the
item's absolute expiry, ``PEXPIRETIME``) and ``:ttl`` (its charged bytes).
Before each of a user's writes, and when an admin reads the usage, the
script releases the charges of that user's keys that have expired: it walks
the sorted set from the earliest expiry and stops at the first key that
still lives (every later one lives too), so the accounting is exact whenever
it is read or enforced and costs one ``ZRANGE`` per write when nothing
expired. Keys written before quotas existed have no ``o``: they are charged
by :meth:`KVStore.migrate_usage` (the control plane runs it at start-up),
to the last writer the audit log names or else to ``-`` (unattributed);
until then they are simply not charged to anyone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from productionlab.audit import AUDIT_KEYS, AUDIT_LIST, LUA_PRELUDE, Actor
from productionlab.contract import KEY_RE
from productionlab.errors import InvalidKey, KeyNotFound, QuotaExceeded, VersionConflict
from productionlab.ratelimit import LIMIT_LUA, Ticket, refused
from productionlab.settings import DEFAULT_USER_MAX_BYTES, DEFAULT_USER_MAX_KEYS
from productionlab.store.durability import Durability

ITEM = "{plab}:kv:"
VERSION_COUNTER = "{plab}:kv-version"
INDEX = "{plab}:kv-index"
USAGE = "{plab}:usage:"
USAGE_MIGRATED = "{plab}:usage-migrated"
UNATTRIBUTED = "-"  # owner of pre-quota keys the audit log cannot attribute
RECONCILE_PER_WRITE = 100

# Shared by the scripts that charge, move or release a key's quota charge.
QUOTA_LUA = (
    f"local ITEM, USAGE = '{ITEM}', '{USAGE}'\n"
    + r"""
local function uncharge(user, key, bytes)
  local usage = USAGE .. user
  redis.call('HINCRBY', usage, 'keys', -1)
  redis.call('HINCRBY', usage, 'bytes', -bytes)
  redis.call('ZREM', usage .. ':exp', key)
  redis.call('HDEL', usage .. ':ttl', key)
end
local function charge(user, key, bytes, expire_at)
  local usage = USAGE .. user
  redis.call('HINCRBY', usage, 'keys', 1)
  redis.call('HINCRBY', usage, 'bytes', bytes)
  if expire_at > 0 then
    redis.call('ZADD', usage .. ':exp', expire_at, key)
    redis.call('HSET', usage .. ':ttl', key, bytes)
  end
end
-- Release the charges of user's keys that redis has expired, earliest first,
-- stopping at the first that still lives. Returns 1 if it stopped at `batch`.
local function reconcile(user, batch)
  local usage = USAGE .. user
  for _ = 1, batch do
    local first = redis.call('ZRANGE', usage .. ':exp', 0, 0, 'WITHSCORES')
    if #first == 0 then return 0 end
    local key, at = first[1], tonumber(first[2])
    local item = ITEM .. key
    if redis.call('HGET', item, 'o') == user and redis.call('PEXPIRETIME', item) == at then
      return 0
    end
    uncharge(user, key, tonumber(redis.call('HGET', usage .. ':ttl', key) or '0'))
  end
  return 1
end
"""
)

_PUT = (
    LUA_PRELUDE
    + LIMIT_LUA
    + QUOTA_LUA
    + f"local RECONCILE_PER_WRITE = {RECONCILE_PER_WRITE}\n"
    + r"""
local item, counter, index = KEYS[3], KEYS[4], KEYS[5]
local key, value, ttl_ms, cond, expected = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
local owner, max_keys, max_bytes = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
if KEYS[6] then
  local wait = take_limit(KEYS[6], tonumber(ARGV[15]), tonumber(ARGV[16]))
  if wait > 0 then return {-2, wait} end
end
reconcile(owner, RECONCILE_PER_WRITE)
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
-- Who is charged for the key now: nobody if it is absent or older than quotas.
local before_owner, before_bytes = false, 0
if current then
  before_owner = redis.call('HGET', item, 'o')
  before_bytes = #key + redis.call('HSTRLEN', item, 'v')
end
if before_owner ~= owner and redis.call('HEXISTS', USAGE .. owner .. ':ttl', key) == 1 then
  -- The writer's own earlier value of this key expired and reconcile has not
  -- reached it yet: release it before the new charge replaces its record.
  uncharge(owner, key, tonumber(redis.call('HGET', USAGE .. owner .. ':ttl', key)))
end
local bytes = #key + #value
local add_keys, add_bytes = 1, bytes
if before_owner == owner then add_keys, add_bytes = 0, bytes - before_bytes end
local used = redis.call('HMGET', USAGE .. owner, 'keys', 'bytes')
local used_keys, used_bytes = tonumber(used[1] or '0'), tonumber(used[2] or '0')
if (add_keys > 0 and used_keys + add_keys > max_keys)
    or (add_bytes > 0 and used_bytes + add_bytes > max_bytes) then
  return {-3, used_keys, used_bytes}
end
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
  -- The common overwrite: the charge stays; only its size and expiry change.
  if add_bytes ~= 0 then redis.call('HINCRBY', USAGE .. owner, 'bytes', add_bytes) end
  if expire_at > 0 then
    redis.call('ZADD', USAGE .. owner .. ':exp', expire_at, key)
    redis.call('HSET', USAGE .. owner .. ':ttl', key, bytes)
  elseif had_ttl then
    redis.call('ZREM', USAGE .. owner .. ':exp', key)
    redis.call('HDEL', USAGE .. owner .. ':ttl', key)
  end
else
  if before_owner then uncharge(before_owner, key, before_bytes) end
  charge(owner, key, bytes, expire_at)
end
audit('kv.put', key, current and 'updated' or 'created', version)
if current then return {1, version} end
return {0, version}
"""
)

# Scripts that must keep working when redis is at maxmemory (noeviction): a read
# (its rate-limit counter is a few bytes) and a delete (it frees more than its
# audit entry takes, and is how a full store is emptied). Without the flag,
# redis refuses a script at its first write command while memory is over.
ALLOW_OOM = "#!lua flags=allow-oom\n"

_DELETE = (
    ALLOW_OOM
    + LUA_PRELUDE
    + LIMIT_LUA
    + QUOTA_LUA
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
local before_owner = redis.call('HGET', item, 'o')
local before_bytes = #key + redis.call('HSTRLEN', item, 'v')
redis.call('DEL', item)
redis.call('ZREM', index, key)
if before_owner then uncharge(before_owner, key, before_bytes) end
audit('kv.delete', key, 'deleted', current)
return {1, current}
"""
)

# A read that takes the caller's rate-limit charge in the same round trip.
_GET = (
    ALLOW_OOM
    + LIMIT_LUA
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


# A user's usage, exact: expired keys' charges are released first.
_USAGE = (
    QUOTA_LUA
    + r"""
local more = reconcile(ARGV[1], tonumber(ARGV[2]))
local used = redis.call('HMGET', USAGE .. ARGV[1], 'keys', 'bytes')
return {tonumber(used[1] or '0'), tonumber(used[2] or '0'), more}
"""
)

# Charges keys written before quotas existed (no ``o``) to the given owners.
# ARGV is key, owner, key, owner, ... A key that has an owner is left alone:
# new code wrote it and charged it already, so running this again is harmless.
_MIGRATE = (
    QUOTA_LUA
    + r"""
local charged = 0
for i = 1, #ARGV, 2 do
  local key, owner = ARGV[i], ARGV[i + 1]
  local item = ITEM .. key
  if redis.call('EXISTS', item) == 1 and not redis.call('HGET', item, 'o') then
    redis.call('HSET', item, 'o', owner)
    local at = redis.call('PEXPIRETIME', item)
    charge(owner, key, #key + redis.call('HSTRLEN', item, 'v'), at > 0 and at or 0)
    charged = charged + 1
  end
end
return charged
"""
)


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
class Quota:
    """What one user's keys may hold: ``PLAB_USER_MAX_KEYS`` and ``PLAB_USER_MAX_BYTES``."""

    max_keys: int = DEFAULT_USER_MAX_KEYS
    max_bytes: int = DEFAULT_USER_MAX_BYTES


@dataclass(frozen=True)
class Usage:
    user: str
    keys: int
    bytes: int
    quota: Quota

    def as_dict(self, with_quota: bool = True) -> dict:
        if not with_quota:
            return {"keys": self.keys, "bytes": self.bytes}
        return {
            "keys": self.keys,
            "bytes": self.bytes,
            "max_keys": self.quota.max_keys,
            "max_bytes": self.quota.max_bytes,
        }


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
    def __init__(
        self,
        client: redis.Redis,
        durability: Durability,
        quota: Quota | None = None,
    ):
        self.client = client
        self.durability = durability
        self.quota = quota or Quota()
        self._usage = client.register_script(_USAGE)
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
            raise KeyNotFound(f"key {key!r} not found")
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
        args += [actor.name, self.quota.max_keys, self.quota.max_bytes]
        if limit is not None and limit.limit > 0:
            keys.append(limit.counter)
            args += limit.args()
        status, version, *extra = self._eval(self._put, keys, args)
        if int(status) == -2:
            refused(int(version))
        if int(status) == -3:
            raise QuotaExceeded(
                f"this write would take you past your quota of {self.quota.max_keys} keys "
                f"and {self.quota.max_bytes} bytes (you use {int(version)} keys and "
                f"{int(extra[0])} bytes); delete or shrink keys first"
            )
        if int(status) < 0:
            raise VersionConflict(
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
            raise KeyNotFound(f"key {key!r} not found")
        if int(status) < 0:
            raise VersionConflict(headers={"ETag": f'"{int(version)}"'})
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

    def usage(self, user: str) -> Usage:
        """What ``user``'s keys hold now, the charges of expired keys released first."""
        for _ in range(1000):
            keys, size, more = self._eval(self._usage, [], [user, 1000])
            if not int(more):
                break
        return Usage(user, int(keys), int(size), self.quota)

    def migrate_usage(self, batch: int = 500) -> int:
        """Charge the keys written before quotas existed; returns how many it charged.

        Each key goes to the last user the audit log shows writing it (the
        kept log, after any retention trim), else to ``-``. Safe to run while
        the planes serve and to run again: only keys without an owner change,
        each atomically with its charge. A marker skips the walk once it has
        completed.
        """
        if self.client.exists(USAGE_MIGRATED):
            return 0
        charged = charge_unowned_keys(self.client, batch)
        self.client.set(USAGE_MIGRATED, "1")
        return charged


def charge_unowned_keys(client: redis.Redis, batch: int = 500) -> int:
    """Charge every key that has no owner (written before quotas, or restored
    from a backup) to its last writer in the audit log, else to ``-``."""
    script = client.register_script(_MIGRATE)
    writers = last_writers(client)
    charged, after = 0, "-"
    while True:
        page = client.zrangebylex(INDEX, after, "+", start=0, num=batch)
        if not page:
            return charged
        args: list[str] = []
        for member in page:
            key = member.decode()
            args += [key, writers.get(key, UNATTRIBUTED)]
        charged += int(script(args=args))
        after = "(" + page[-1].decode()


def last_writers(client: redis.Redis, chunk: int = 1000) -> dict[str, str]:
    """key -> the actor of its last ``kv.put`` in the audit log (deleted keys dropped)."""
    writers: dict[str, str] = {}
    start = 0
    while True:
        entries = client.lrange(AUDIT_LIST, start, start + chunk - 1)
        for raw in entries:
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
        if len(entries) < chunk:
            return writers
        start += chunk
