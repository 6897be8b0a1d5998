--! keys: audit[2] user users events
--! args: audit[6] name
-- Deletes a user, audited and announced on the events channel.
-- Returns 1, or 0 when there is no such user.
--! include audit_prelude.lua
local item, index, events = KEYS[3], KEYS[4], KEYS[5]
local name = ARGV[7]
if redis.call('DEL', item) == 0 then return 0 end
redis.call('SREM', index, name)
audit('user.delete', name, 'ok', '')
redis.call('PUBLISH', events, name)
return 1
