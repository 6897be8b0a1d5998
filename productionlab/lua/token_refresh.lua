--! keys: audit[2] family families
--! args: audit[6] target family_id presented fresh ttl_ms expires now
-- Rotates a family's refresh token: the presented jti must be the family's
-- current one; an older one (a replay) revokes the whole family.
-- Returns 1 rotated, 0 unknown family, -1 family revoked, -2 reuse (now revoked).
--! include audit_prelude.lua
local fam, families = KEYS[3], KEYS[4]
local target, family, presented, fresh = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local ttl_ms, expires, now = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local state = redis.call('HMGET', fam, 'current', 'revoked')
if not state[1] then
  audit('token.refresh', target, 'unknown_family', '')
  return 0
end
if state[2] == '1' then
  audit('token.refresh', target, 'family_revoked', '')
  return -1
end
if state[1] ~= presented then
  redis.call('HSET', fam, 'revoked', '1')
  audit('token.reuse', target, 'family_revoked', '')
  return -2
end
redis.call('HSET', fam, 'current', fresh)
redis.call('PEXPIRE', fam, ttl_ms)
redis.call('ZADD', families, expires, family)
redis.call('PEXPIRE', families, ttl_ms)
audit('token.refresh', target, 'ok', '')
return 1
