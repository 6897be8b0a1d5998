--! keys: audit[2] item counter index
--! args: audit[6] tag shard key value ttl_ms cond expected owner grant_keys grant_bytes
-- One put in its key's shard (cluster mode: the reservation on {plab} ran
-- before it, shard_reserve.lua, and the settle runs after it): the condition,
-- the write within what was granted, its version, usage and audit entry.
-- Returns {0, version, reports...} created, {1, version, reports...} updated,
-- {-1, current, reports...} condition failed, {-3, '', reports...} the write
-- would grow the writer's usage past its grant (nothing written).
--! include shard_write.lua
local S = shard_of_tag(ARGV[7], tonumber(ARGV[8]))
if names_differ(S, ARGV[9], KEYS[3], KEYS[4], KEYS[5]) then return redis.error_reply(LAYOUT_ERROR) end
local key, value, ttl_ms, cond, expected = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12], ARGV[13]
local owner, grant_keys, grant_bytes = ARGV[14], tonumber(ARGV[15]), tonumber(ARGV[16])
local result = put_in_shard(S, key, value, ttl_ms, cond, expected, owner, grant_keys, grant_bytes)
for _, field in ipairs(reports(S)) do result[#result + 1] = field end
return result
