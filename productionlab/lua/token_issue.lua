--! keys: audit[2] family families
--! args: audit[6] target family_id jti ttl_ms expires now user max_live family_prefix
-- Issues a token family (tokens.py): the family hash remembers its one live
-- refresh token (jti) and expires with it; the user's families set is scored
-- by expiry (least recently used first). Past max_live live families the
-- oldest are revoked, with their access tokens (audited as family_cap).
-- Returns the issue's audit seq.
--! include audit_prelude.lua
local fam, families = KEYS[3], KEYS[4]
local target, family, jti = ARGV[7], ARGV[8], ARGV[9]
local ttl_ms, expires, now = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
redis.call('HSET', fam, 'user', ARGV[13], 'current', jti, 'revoked', '0', 'created', now)
redis.call('PEXPIRE', fam, ttl_ms)
local user, max_live, fam_prefix = ARGV[13], tonumber(ARGV[14]), ARGV[15]
redis.call('ZREMRANGEBYSCORE', families, '-inf', now)
-- The cap: the user's live (unrevoked) families, least recently used first;
-- past the cap the oldest are revoked, with their access tokens.
local live = {}
for _, other in ipairs(redis.call('ZRANGE', families, 0, -1)) do
  local revoked = redis.call('HGET', fam_prefix .. other, 'revoked')
  if revoked == '0' then live[#live + 1] = other
  elseif not revoked then redis.call('ZREM', families, other) end
end
for i = 1, #live - max_live + 1 do
  redis.call('HSET', fam_prefix .. live[i], 'revoked', '1')
  redis.call('ZREM', families, live[i])
  audit('token.revoke', user .. ':' .. live[i], 'family_cap', '')
end
redis.call('ZADD', families, expires, family)
redis.call('PEXPIRE', families, ttl_ms)
return audit('token.issue', target, 'ok', '')
