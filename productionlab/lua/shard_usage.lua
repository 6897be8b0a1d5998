--! keys: usage
--! args: tag shard user batch
-- A user's exact usage in one shard, expired keys' charges released first (at
-- most batch; the first value is 1 when more may remain), and its report for
-- shard_settle.lua. KEYS[1] is the user's usage hash in the shard (routing).
--! include shard_quota.lua
local S = shard_of_tag(ARGV[1], tonumber(ARGV[2]))
if KEYS[1] ~= S.usage .. ARGV[3] then return redis.error_reply(LAYOUT_ERROR) end
local more = reconcile(S, ARGV[3], tonumber(ARGV[4]))
touch(S, ARGV[3])
local result = {more}
for _, field in ipairs(reports(S)) do result[#result + 1] = field end
return result
