--! keys: audit[2] counter index
--! args: audit[6] item_prefix overwrite records...
-- Restores a batch of a backup's records (backup.py): records are key, value,
-- version, ttl_ms, ... Without overwrite ('1') an existing key is left alone.
-- Each restored key gets its own audit entry and carries no owner (the caller
-- charges it afterwards); a replaced key's charge is released. The version
-- counter is raised to the highest version restored, and every watch is woken
-- to read again (a restored key may be older than what a watch saw). Returns
-- how many it restored.
--! include audit_prelude.lua
--! include quota.lua
--! include watch_marks.lua
local counter, index = KEYS[3], KEYS[4]
local item_prefix, overwrite = ARGV[7], ARGV[8] == '1'
local restored, highest = 0, 0
for i = 9, #ARGV, 4 do
  local key, value, version, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local item = item_prefix .. key
  if overwrite or redis.call('EXISTS', item) == 0 then
    local before_owner = redis.call('HGET', item, 'o')  -- its quota charge goes with it
    if before_owner then uncharge(before_owner, key, #key + redis.call('HSTRLEN', item, 'v')) end
    redis.call('DEL', item)
    redis.call('HSET', item, 'v', value, 'ver', version)
    if ttl > 0 then
      redis.call('PEXPIRE', item, ttl)
      redis.call('HSET', TTL_VERSIONS, key, version)
    else
      redis.call('HDEL', TTL_VERSIONS, key)
    end
    redis.call('ZADD', index, 0, key)
    audit('kv.restore', key, 'restored', version)
    restored = restored + 1
  end
  if tonumber(version) > highest then highest = tonumber(version) end
end
local current = tonumber(redis.call('GET', counter) or '0')
if highest > current then redis.call('SET', counter, highest) end
-- A restore can move keys back to older versions: every watch re-reads.
if restored > 0 then redis.call('PUBLISH', CHANGES, '0 *') end
return restored
