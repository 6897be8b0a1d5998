--! fragment
-- One shard's share of a put or a delete (virtual shards, store/layout.py;
-- docs/design/virtual-shards.md): the item, the shard's version counter, its
-- listing index, its watch marks, the exact usage of each user in this shard
-- and the shard's own audit chain. The including script defines TAG (the
-- shard's hash tag) and SHARD_NO (its number) before this include (names and
-- watch marks: shard_marks.lua).
-- The quota is not decided here: the caller passes what the writer may grow
-- by (grant_keys, grant_bytes: the hold its reservation took on {plab}); a
-- change that does not grow the writer's usage needs none. Each change of a
-- user's usage here bumps its `seq`; report(user) is what the settle records
-- on {plab} (the newest seq wins, so late or repeated settles stay exact).
--! include audit_prelude.lua
--! include shard_quota.lua
-- Put value at item for owner; current is the item's version before (false
-- when absent). Returns the new version, or false when the write would grow
-- the owner's usage past what was granted (then nothing changed).
local function put_item(counter, index, item, key, value, ttl_ms, current, owner, grant_keys, grant_bytes)
  local before_owner, before_bytes = false, 0
  if current then
    before_owner = redis.call('HGET', item, 'o')
    before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  end
  local owner_usage = USAGE .. owner
  local owner_ttl = owner_usage .. ':ttl'
  local released_keys, released_bytes = 0, 0
  if before_owner ~= owner and redis.call('HEXISTS', owner_ttl, key) == 1 then
    released_keys, released_bytes = 1, tonumber(redis.call('HGET', owner_ttl, key))
  end
  local bytes = #key + #value
  local add_keys, add_bytes = 1, bytes
  if before_owner == owner then add_keys, add_bytes = 0, bytes - before_bytes end
  if (add_keys - released_keys > grant_keys and add_keys > 0)
    or (add_bytes - released_bytes > grant_bytes and add_bytes > 0) then
    return false
  end
  if released_keys > 0 then uncharge(owner, key, released_bytes) end
  local version = next_version(counter)
  mark_put(key, version, ttl_ms)
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
    touch(owner)
    if add_bytes ~= 0 then redis.call('HINCRBY', owner_usage, 'bytes', add_bytes) end
    if expire_at > 0 then
      redis.call('ZADD', owner_usage .. ':exp', expire_at, key)
      redis.call('HSET', owner_ttl, key, bytes)
    elseif had_ttl then
      redis.call('ZREM', owner_usage .. ':exp', key)
      redis.call('HDEL', owner_ttl, key)
    end
  else
    if before_owner then uncharge(before_owner, key, before_bytes) end
    charge(owner, key, bytes, expire_at)
  end
  audit('kv.put', key, current and 'updated' or 'created', version)
  return version
end

-- Delete the existing item (its version is current), releasing its charge and
-- leaving its tombstone (a new version from the shard's counter).
local function delete_item(counter, index, item, key, current)
  tombstone(counter, key)
  local before_owner = redis.call('HGET', item, 'o')
  local before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  redis.call('DEL', item)
  redis.call('ZREM', index, key)
  if before_owner then uncharge(before_owner, key, before_bytes) end
  audit('kv.delete', key, 'deleted', current)
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

-- A whole put in this shard: the writer's expired charges here released, the
-- condition, the write within the grant. Returns {status, version} as
-- shard_put.lua says (without the reports).
local function put_in_shard(counter, index, item, key, value, ttl_ms, cond, expected, owner, grant_keys, grant_bytes)
  reconcile(owner, RECONCILE_PER_WRITE)
  local current = redis.call('HGET', item, 'ver')
  if not condition_holds(cond, expected, current) then
    audit('kv.put', key, 'precondition_failed', current or '')
    return {-1, current or ''}
  end
  local version = put_item(counter, index, item, key, value, ttl_ms, current, owner, grant_keys, grant_bytes)
  if not version then return {-3, ''} end
  if current then return {1, version} end
  return {0, version}
end

-- A whole delete in this shard. Returns {1, version} deleted, {0, ''} absent,
-- {-1, current} condition failed.
local function delete_in_shard(counter, index, item, key, expected)
  local current = redis.call('HGET', item, 'ver')
  if not current then return {0, ''} end
  if not condition_holds('match', expected, current) then
    audit('kv.delete', key, 'precondition_failed', current)
    return {-1, current}
  end
  delete_item(counter, index, item, key, current)
  return {1, current}
end
