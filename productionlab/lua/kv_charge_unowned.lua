--! keys: index
--! args: pairs...
-- KEYS[1] (the listing index) is declared so a cluster client sends the call
-- to the node of the {plab} slot.
-- Charges keys written before quotas existed (no owner field 'o') to the given
-- owners. ARGV is key, owner, key, owner, ... A key that has an owner is left
-- alone: new code wrote it and charged it already, so running this again is
-- harmless. Returns how many it charged.
--! include quota.lua
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
