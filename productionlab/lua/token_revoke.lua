--! keys: audit[2] family
--! args: audit[6] target
-- Revokes a token family. Returns 1, or 0 when there is no such family.
--! include audit_prelude.lua
local fam = KEYS[3]
if redis.call('EXISTS', fam) == 0 then return 0 end
redis.call('HSET', fam, 'revoked', '1')
audit('token.revoke', ARGV[7], 'ok', '')
return 1
