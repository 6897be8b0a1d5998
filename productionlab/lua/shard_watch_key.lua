--! keys: item counter
--! args: tag shard key
-- A watched key's state in its shard (as watch_key.lua): {1, version, value}
-- while it exists, else {0, index} with index its tombstone's version (given
-- now if redis expired it and no one has yet), or the shard's tombstone floor.
--! include shard_marks.lua
local S = shard_of_tag(ARGV[1], tonumber(ARGV[2]))
local key = ARGV[3]
if names_differ(S, key, KEYS[1], KEYS[2], S.index) then return redis.error_reply(LAYOUT_ERROR) end
local found = redis.call('HMGET', KEYS[1], 'v', 'ver')
if found[2] then return {1, found[2], found[1]} end
local expired = mark_expired(S, key)
if expired > 0 then return {0, expired} end
local tomb = redis.call('ZSCORE', S.tombs, key)
if tomb then return {0, tomb} end
return {0, redis.call('GET', S.floor) or '0'}
