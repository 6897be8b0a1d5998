--! keys: audit[2] counter index
--! args: audit[6] tag shard overwrite records...
-- Restores a batch of a backup's records that all belong to one shard: records are key, value, version,
-- ttl_ms, ... Without overwrite ('1') an existing key is left alone. Each
-- restored key gets its own audit entry in the shard's chain and carries no
-- owner (the caller charges it afterwards); a replaced key's charge is
-- released. The shard's counter is raised so its next version is above every
-- version restored, and every watch is woken to read again. Returns {restored,
-- reports...} (reports: the usage of users whose charge was released).
--! include audit_prelude.lua
--! include shard_quota.lua
local S = shard_of_tag(ARGV[7], tonumber(ARGV[8]))
if KEYS[3] ~= S.counter or KEYS[4] ~= S.index then return redis.error_reply(LAYOUT_ERROR) end
local overwrite = ARGV[9] == '1'
local restored, highest = 0, 0
for i = 10, #ARGV, 4 do
  local key, value, version, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local item = S.item .. key
  if overwrite or redis.call('EXISTS', item) == 0 then
    local before_owner = redis.call('HGET', item, 'o')
    if before_owner then uncharge(S, before_owner, key, #key + redis.call('HSTRLEN', item, 'v')) end
    redis.call('DEL', item)
    redis.call('HSET', item, 'v', value, 'ver', version)
    if ttl > 0 then
      redis.call('PEXPIRE', item, ttl)
      redis.call('HSET', S.ttl, key, version)
    else
      redis.call('HDEL', S.ttl, key)
    end
    redis.call('ZADD', S.index, 0, key)
    audit_to(S.audit, S.audit_meta, 'kv.restore', key, 'restored', version)
    restored = restored + 1
  end
  if tonumber(version) > highest then highest = tonumber(version) end
end
local at_least = math.floor(highest / SHARDS)
if tonumber(redis.call('GET', S.counter) or '0') < at_least then
  redis.call('SET', S.counter, at_least)
end
if restored > 0 then redis.call('PUBLISH', CHANGES, '0 *') end
local result = {restored}
for _, field in ipairs(reports(S)) do result[#result + 1] = field end
return result
