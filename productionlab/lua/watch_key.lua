--! keys: item counter
--! args: key
-- A watched key's state: {1, version, value} while it exists, else {0, index}
-- with index its tombstone's version (given now if redis expired it and no
-- one has yet), or the tombstone floor when it has none.
--! include watch_marks.lua
local item, counter, key = KEYS[1], KEYS[2], ARGV[1]
local found = redis.call('HMGET', item, 'v', 'ver')
if found[2] then return {1, found[2], found[1]} end
local expired = mark_expired(counter, item, key)
if expired > 0 then return {0, expired} end
local tomb = redis.call('ZSCORE', TOMBS, key)
if tomb then return {0, tomb} end
return {0, redis.call('GET', FLOOR) or '0'}
