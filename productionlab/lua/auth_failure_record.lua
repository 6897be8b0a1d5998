--! keys: audit[2] window counters...
--! args: audit[6] now span cap address limit window
-- Counts one authentication failure: in the aggregate audit window (now,
-- span: the window's length, cap: addresses kept apart) and on each of the
-- guard's counters (window: their expiry in seconds). A counter already at
-- its limit (0: none) refuses with its TTL and is not taken further.
-- Returns 0, or the seconds to wait.
--! include audit_prelude.lua
--! include auth_failures.lua
local agg = KEYS[3]
local now, span = tonumber(ARGV[7]), tonumber(ARGV[8])
local cap, address = tonumber(ARGV[9]), ARGV[10]
local limit, window = tonumber(ARGV[11]), tonumber(ARGV[12])
count_failure(agg, now, span, cap, address)
if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= limit then
    local ttl = redis.call('TTL', KEYS[4])
    if ttl < 0 then redis.call('EXPIRE', KEYS[4], window) ttl = window end
    return math.max(ttl, 1)
  end
end
for i = 4, #KEYS do
  redis.call('INCR', KEYS[i])
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], window) end
end
return 0
