--! keys: audit[2] item counter index limit usage
--! args: audit[6] tag shard key value ttl_ms cond expected owner max_keys max_bytes limit window
-- One put on a single redis, which holds {plab} and every shard: the
-- reservation (limit ticket, quota hold), the shard's put and the settle of
-- shard_reserve.lua, shard_put.lua and shard_settle.lua composed from the same
-- fragments into one script (one round trip; no cross-slot check outside
-- cluster mode). Returns: {0|1, version}, {-1,
-- current}, {-2, wait}, {-3, used keys, used bytes}.
--! include shard_write.lua
--! include user_limit.lua
--! include usage_ledger.lua
local S = shard_of_tag(ARGV[7], tonumber(ARGV[8]))
if names_differ(S, ARGV[9], KEYS[3], KEYS[4], KEYS[5]) then return redis.error_reply(LAYOUT_ERROR) end
local key, value, ttl_ms, cond, expected = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12], ARGV[13]
local owner, max_keys, max_bytes = ARGV[14], tonumber(ARGV[15]), tonumber(ARGV[16])
local wait = take_limit(KEYS[6], tonumber(ARGV[17]), tonumber(ARGV[18]), 1)
if wait > 0 then return {-2, wait} end
local usage = KEYS[7]
local grant_keys, grant_bytes = reserve(usage, '', '', 0, 0, 1, #key + #value, max_keys, max_bytes)
local result = put_in_shard(S, key, value, ttl_ms, cond, expected, owner, grant_keys, grant_bytes)
settle(string.format('%02d', S.no), reports(S), 1)
if result[1] == -3 then
  local used_keys, used_bytes = ledger_total(usage)
  return {-3, used_keys, used_bytes}
end
return result
