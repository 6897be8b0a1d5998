--! keys: audit[2]
--! args: audit[6] expected_first drop last_hash action target outcome
-- Drops the oldest `drop` entries once they are archived, and records it. Only
-- the control plane's redis user may run this (LTRIM and HSET on the log's keys).
-- Refuses (nothing changed) when the log no longer starts where the archive ends.
--! include audit_prelude.lua
local expected_first, drop, last_hash = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local first = tonumber(redis.call('HGET', KEYS[2], 'first') or '1')
if first ~= expected_first then
  return redis.error_reply('ERR audit log moved: it starts at ' .. first)
end
if drop > 0 then
  local raw = redis.call('LINDEX', KEYS[1], drop - 1)
  if not raw or redis.sha1hex(raw) ~= last_hash then
    return redis.error_reply('ERR audit log moved: entry ' .. (first + drop - 1) .. ' differs')
  end
  redis.call('LTRIM', KEYS[1], drop, -1)
  redis.call('HSET', KEYS[2], 'first', first + drop, 'first_prev', last_hash)
end
redis.call('HDEL', KEYS[2], 'seq', 'mac')
audit(ARGV[10], ARGV[11], ARGV[12], '')
return {drop, first + drop}
