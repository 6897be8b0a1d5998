--! fragment
-- The per-user limit's fixed window, for every script that takes a charge.
-- take_limit(counter, limit, window, n) adds n to the window's counter key;
-- limit 0 means limits are off. Returns 0, or the seconds until the window
-- resets when it is spent (the caller then changes nothing).
local function take_limit(counter, limit, window, n)
  if limit <= 0 then return 0 end
  local used = redis.call('INCRBY', counter, n)
  if used == n then redis.call('EXPIRE', counter, window) end
  if used <= limit then return 0 end
  local ttl = redis.call('TTL', counter)
  if ttl < 0 then redis.call('EXPIRE', counter, window) ttl = window end
  return math.max(ttl, 1)
end
