--! fragment
-- A put and a delete of one key in its shard S (shard_marks.lua's context;
-- virtual shards, store/layout.py; docs/design/virtual-shards.md): the item,
-- the shard's version counter, listing index, watch marks, the exact usage of
-- each user in the shard (shard_quota.lua) and the shard's own audit chain.
-- The quota is not decided here: the caller passes what the writer may grow
-- by (grant_keys, grant_bytes: the hold its reservation took on {plab}); a
-- change that does not grow the writer's usage needs none.
--! include audit_prelude.lua
--! include shard_quota.lua

local function audit_in(S, action, target, outcome, version)
  return audit_to(S.audit, S.audit_meta, action, target, outcome, version)
end

-- What a put of value at key would change for owner (current: the item's
-- version, false when absent): the growth of owner's usage (keys, bytes), net
-- of owner's own expired earlier charge of the key, and that charge's bytes
-- (released_keys 0 when there is none).
local function put_growth(S, key, value, current, owner)
  local item = S.item .. key
  local before_owner, before_bytes = false, 0
  if current then
    before_owner = redis.call('HGET', item, 'o')
    before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  end
  local released_keys, released_bytes = 0, 0
  local owner_ttl = S.usage .. owner .. ':ttl'
  if before_owner ~= owner and redis.call('HEXISTS', owner_ttl, key) == 1 then
    released_keys, released_bytes = 1, tonumber(redis.call('HGET', owner_ttl, key))
  end
  local bytes = #key + #value
  local add_keys, add_bytes = 1, bytes
  if before_owner == owner then add_keys, add_bytes = 0, bytes - before_bytes end
  return add_keys - released_keys, add_bytes - released_bytes, add_keys, add_bytes,
    before_owner, before_bytes, released_keys, released_bytes
end

-- Does a growth fit the grant? A dimension that does not grow always fits.
local function fits(add_keys, add_bytes, net_keys, net_bytes, grant_keys, grant_bytes)
  return not ((add_keys > 0 and net_keys > grant_keys) or (add_bytes > 0 and net_bytes > grant_bytes))
end

-- Put value at key for owner; current is the item's version before (false
-- when absent). Returns the new version and the growth it used (keys, bytes),
-- or false when the write would grow the owner's usage past the grant (then
-- nothing changed).
local function put_item(S, key, value, ttl_ms, current, owner, grant_keys, grant_bytes)
  local net_keys, net_bytes, add_keys, add_bytes, before_owner, before_bytes,
    released_keys, released_bytes = put_growth(S, key, value, current, owner)
  if not fits(add_keys, add_bytes, net_keys, net_bytes, grant_keys, grant_bytes) then
    return false
  end
  local item = S.item .. key
  local owner_usage = S.usage .. owner
  local owner_ttl = owner_usage .. ':ttl'
  if released_keys > 0 then uncharge(S, owner, key, released_bytes) end
  local version = next_version(S)
  mark_put(S, key, version, ttl_ms)
  redis.call('HSET', item, 'v', value, 'ver', version, 'o', owner)
  local expire_at, had_ttl = 0, false
  if ttl_ms > 0 then
    redis.call('PEXPIRE', item, ttl_ms)
    expire_at = redis.call('PEXPIRETIME', item)
  else
    had_ttl = redis.call('PERSIST', item) == 1
  end
  redis.call('ZADD', S.index, 0, key)
  local bytes = #key + #value
  if before_owner == owner then
    touch(S, owner)
    if add_bytes ~= 0 then redis.call('HINCRBY', owner_usage, 'bytes', add_bytes) end
    if expire_at > 0 then
      redis.call('ZADD', owner_usage .. ':exp', expire_at, key)
      redis.call('HSET', owner_ttl, key, bytes)
    elseif had_ttl then
      redis.call('ZREM', owner_usage .. ':exp', key)
      redis.call('HDEL', owner_ttl, key)
    end
  else
    if before_owner then uncharge(S, before_owner, key, before_bytes) end
    charge(S, owner, key, bytes, expire_at)
  end
  audit_in(S, 'kv.put', key, current and 'updated' or 'created', version)
  return version, math.max(net_keys, 0), math.max(net_bytes, 0)
end

-- Delete the existing item (its version is current), releasing its charge and
-- leaving its tombstone (a new version from the shard's counter). Returns its
-- owner and charged bytes.
local function delete_item(S, key, current)
  tombstone(S, key)
  local item = S.item .. key
  local before_owner = redis.call('HGET', item, 'o')
  local before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  redis.call('DEL', item)
  redis.call('ZREM', S.index, key)
  if before_owner then uncharge(S, before_owner, key, before_bytes) end
  audit_in(S, 'kv.delete', key, 'deleted', current)
  return before_owner, before_bytes
end

-- The condition of a put (cond 'absent', or 'match' with expected a comma-
-- separated list of versions or '*') or a delete (cond 'match', expected ''
-- or '*' meaning none). Returns true when it holds.
local function condition_holds(cond, expected, current)
  if cond == 'absent' then return not current end
  if cond ~= 'match' or expected == '' then return true end
  if not current then return false end
  if expected == '*' then return true end
  for v in string.gmatch(expected, '[^,]+') do if v == current then return true end end
  return false
end

-- A whole put in shard S: the writer's expired charges there released, the
-- condition, the write within the grant. Returns {0|1, version}, {-1,
-- current} or {-3, ''} (see shard_put.lua).
local function put_in_shard(S, key, value, ttl_ms, cond, expected, owner, grant_keys, grant_bytes)
  reconcile(S, owner, RECONCILE_PER_WRITE)
  local current = redis.call('HGET', S.item .. key, 'ver')
  if not condition_holds(cond, expected, current) then
    audit_in(S, 'kv.put', key, 'precondition_failed', current or '')
    return {-1, current or ''}
  end
  local version = put_item(S, key, value, ttl_ms, current, owner, grant_keys, grant_bytes)
  if not version then return {-3, ''} end
  if current then return {1, version} end
  return {0, version}
end

-- A whole delete in shard S. Returns {1, version} deleted, {0, ''} absent,
-- {-1, current} condition failed.
local function delete_in_shard(S, key, expected)
  local current = redis.call('HGET', S.item .. key, 'ver')
  if not current then return {0, ''} end
  if not condition_holds('match', expected, current) then
    audit_in(S, 'kv.delete', key, 'precondition_failed', current)
    return {-1, current}
  end
  delete_item(S, key, current)
  return {1, current}
end
