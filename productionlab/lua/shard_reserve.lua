#!lua flags=allow-oom
--! keys: limit usage holds
--! args: limit window charge hold_id now deadline want_keys want_bytes max_keys max_bytes
-- Cluster mode: a write's reservation on {plab}, before its shard script: the
-- limit ticket (charge: 1, or one per operation of a batch) and a hold of
-- what the write may grow the user's usage by
-- (usage_ledger.lua). allow-oom: a delete reserves too (no hold).
-- Returns {-2, wait} limit spent, {1, lost hold members...} (the ticket is
-- taken; reconcile and settle them, then reserve again without one), or
-- {0, grant keys, grant bytes, hold member}.
--! include user_limit.lua
--! include usage_ledger.lua
local wait = take_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
if wait > 0 then return {-2, wait} end
local keys, bytes, member, lost = reserve(KEYS[2], KEYS[3], ARGV[4], tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]))
if lost then return {1, unpack(lost)} end
return {0, keys, bytes, member}
