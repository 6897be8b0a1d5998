#!lua flags=allow-oom
--! keys: audit[2] item counter index
--! args: audit[6] tag shard key expected
-- One delete in its key's shard (cluster mode: the reservation took the limit
-- ticket before it; the settle records the released charge after it).
-- allow-oom: a delete must work at maxmemory (see kv_delete.lua).
-- Returns {1, version, reports...} deleted, {0, '', reports...} absent,
-- {-1, current, reports...} condition failed.
local TAG, SHARD_NO = ARGV[7], tonumber(ARGV[8])
--! include shard_write.lua
local result = delete_in_shard(KEYS[4], KEYS[5], KEYS[3], ARGV[9], ARGV[10])
for _, field in ipairs(reports()) do result[#result + 1] = field end
return result
