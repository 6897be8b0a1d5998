--! keys: index
--! args: tag shard pairs...
-- Charges a shard's keys that have no owner (restored from a backup, or
-- written before quotas) to the given owners: ARGV
-- from 3 is key, owner, key, owner, ... A key that has an owner is left alone.
-- Returns {charged, reports...} for the settle.
--! include shard_quota.lua
local S = shard_of_tag(ARGV[1], tonumber(ARGV[2]))
if KEYS[1] ~= S.index then return redis.error_reply(LAYOUT_ERROR) end
local charged = 0
for i = 3, #ARGV, 2 do
  local key, owner = ARGV[i], ARGV[i + 1]
  local item = S.item .. key
  if redis.call('EXISTS', item) == 1 and not redis.call('HGET', item, 'o') then
    redis.call('HSET', item, 'o', owner)
    local at = redis.call('PEXPIRETIME', item)
    charge(S, owner, key, #key + redis.call('HSTRLEN', item, 'v'), at > 0 and at or 0)
    charged = charged + 1
  end
end
local result = {charged}
for _, field in ipairs(reports(S)) do result[#result + 1] = field end
return result
