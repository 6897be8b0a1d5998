#!lua flags=allow-oom
--! keys: item limit
--! args: limit window
-- A read that takes the caller's per-user charge in the same round trip.
-- allow-oom: at maxmemory (noeviction) redis refuses a script at its first
-- write command without the flag; a read's counter is a few bytes.
-- Returns {0, value, version} (both false when absent) or {-1, wait}.
--! include user_limit.lua
local wait = take_limit(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
if wait > 0 then return {-1, wait} end
local found = redis.call('HMGET', KEYS[1], 'v', 'ver')
return {0, found[1], found[2]}
