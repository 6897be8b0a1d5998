--! keys: usage
--! args: user batch
-- KEYS[1] (the user's usage hash) is declared so a cluster client sends the
-- call to the node of the {plab} slot.
-- A user's usage, exact: expired keys' charges are released first (at most
-- batch of them; the third value is 1 when more may remain).
--! include quota.lua
local more = reconcile(ARGV[1], tonumber(ARGV[2]))
local used_keys, used_bytes = usage_of(ARGV[1])
return {used_keys, used_bytes, more}
