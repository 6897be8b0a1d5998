--! fragment
-- A put and a delete of one key with their quota accounting and audit entry,
-- shared by kv_put.lua, kv_delete.lua and kv_batch.lua: the caller has checked
-- the conditions and the limit; these do the change.
--! include audit_prelude.lua
--! include quota.lua
--! include watch_marks.lua

-- Put value at item (redis hash ITEM .. key) for owner. current is the item's
-- version before (false when absent). Returns the new version; or false, the
-- owner's used keys and bytes when the write would take owner past max_keys or
-- max_bytes (then nothing changed).
local function put_item(counter, index, item, key, value, ttl_ms, current, owner, max_keys, max_bytes)
  -- Who is charged for the key now: nobody if it is absent or older than quotas.
  local before_owner, before_bytes = false, 0
  if current then
    before_owner = redis.call('HGET', item, 'o')
    before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  end
  local owner_usage = USAGE .. owner
  local owner_ttl = owner_usage .. ':ttl'
  if before_owner ~= owner and redis.call('HEXISTS', owner_ttl, key) == 1 then
    -- The writer's own earlier value of this key expired and reconcile has not
    -- reached it yet: release it before the new charge replaces its record.
    uncharge(owner, key, tonumber(redis.call('HGET', owner_ttl, key)))
  end
  local bytes = #key + #value
  local add_keys, add_bytes = 1, bytes
  if before_owner == owner then add_keys, add_bytes = 0, bytes - before_bytes end
  local used_keys, used_bytes = usage_of(owner)
  if over_quota(used_keys, used_bytes, add_keys, add_bytes, max_keys, max_bytes) then
    return false, used_keys, used_bytes
  end
  local version = redis.call('INCR', counter)
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
    -- The common overwrite: the charge stays; only its size and expiry change.
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
-- leaving its tombstone (a new version from counter).
local function delete_item(counter, index, item, key, current)
  tombstone(counter, key)
  local before_owner = redis.call('HGET', item, 'o')
  local before_bytes = #key + redis.call('HSTRLEN', item, 'v')
  redis.call('DEL', item)
  redis.call('ZREM', index, key)
  if before_owner then uncharge(before_owner, key, before_bytes) end
  audit('kv.delete', key, 'deleted', current)
end
