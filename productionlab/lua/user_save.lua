--! keys: audit[2] user users events generation
--! args: audit[6] mode name action fields...
-- Creates (mode 'create') or updates a user (users.py): fields are field,
-- value, ... of the user's hash; every change takes a new generation (so the
-- user's older tokens die), is audited and announced on the events channel.
-- Returns 1, 0 (create: exists) or -1 (update: no such user).
--! include audit_prelude.lua
local item, index, events, generation = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local mode, name, action = ARGV[7], ARGV[8], ARGV[9]
local exists = redis.call('EXISTS', item) == 1
if mode == 'create' and exists then return 0 end
if mode ~= 'create' and not exists then return -1 end
for i = 10, #ARGV, 2 do redis.call('HSET', item, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', item, 'gen', redis.call('INCR', generation))
redis.call('SADD', index, name)
audit(action, name, 'ok', '')
redis.call('PUBLISH', events, name)
return 1
