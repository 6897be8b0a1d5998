#!lua flags=allow-oom
--! keys: audit[2] item counter index
--! args: audit[6] tag shard key expected
-- One delete in its key's shard (cluster mode: the reservation took the limit
-- ticket before it; the settle records the released charge after it).
-- allow-oom: a delete must work at maxmemory (a delete frees memory).
-- Returns {1, version, reports...} deleted, {0, '', reports...} absent,
-- {-1, current, reports...} condition failed.
--! include shard_write.lua
local S = shard_of_tag(ARGV[7], tonumber(ARGV[8]))
if names_differ(S, ARGV[9], KEYS[3], KEYS[4], KEYS[5]) then return redis.error_reply(LAYOUT_ERROR) end
local result = delete_in_shard(S, ARGV[9], ARGV[10])
for _, field in ipairs(reports(S)) do result[#result + 1] = field end
return result
