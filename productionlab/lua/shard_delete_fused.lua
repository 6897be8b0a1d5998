#!lua flags=allow-oom
--! keys: audit[2] item counter index limit
--! args: audit[6] tag shard key expected limit window
-- One delete on a single redis: the limit ticket, the shard's delete and the
-- settle of its released charge in one script (see shard_put_fused.lua).
-- Returns what shard_delete.lua returns.
--! include shard_write.lua
--! include user_limit.lua
--! include usage_ledger.lua
local S = shard_of_tag(ARGV[7], tonumber(ARGV[8]))
if names_differ(S, ARGV[9], KEYS[3], KEYS[4], KEYS[5]) then return redis.error_reply(LAYOUT_ERROR) end
local wait = take_limit(KEYS[6], tonumber(ARGV[11]), tonumber(ARGV[12]), 1)
if wait > 0 then return {-2, wait} end
local result = delete_in_shard(S, ARGV[9], ARGV[10])
settle(string.format('%02d', S.no), reports(S), 1)
return result
