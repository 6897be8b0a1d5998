--! fragment
-- Authentication failures are audited in aggregate, not one entry each: one
-- hash (agg) holds the open window (its id, then 'a:<address>' -> count, at
-- most cap addresses, the rest in 'other'). The first script to run after the
-- window ended appends one entry per address with its count and starts a new
-- window, so unauthenticated traffic adds at most cap + 1 entries per window
-- however many addresses send it.
--! include audit_prelude.lua
local function close_window(agg, now, span)
  local open = redis.call('HGET', agg, 'window')
  if not open or tonumber(open) >= math.floor(now / span) then return 0 end
  local fields = redis.call('HGETALL', agg)
  local start = tostring(tonumber(open) * span)
  local appended, other = 0, nil
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 2) == 'a:' then
      audit('auth.failures', string.sub(name, 3), 'count:' .. fields[i + 1], start)
      appended = appended + 1
    elseif name == 'other' then
      other = fields[i + 1]
    end
  end
  if other then
    audit('auth.failures', 'other', 'count:' .. other, start)
    appended = appended + 1
  end
  redis.call('DEL', agg)
  return appended
end
local function count_failure(agg, now, span, cap, address)
  close_window(agg, now, span)
  if redis.call('HSETNX', agg, 'window', math.floor(now / span)) == 1 then
    redis.call('HSET', agg, 'n', 0)
  end
  local field = 'a:' .. address
  if redis.call('HEXISTS', agg, field) == 0 then
    if tonumber(redis.call('HGET', agg, 'n')) >= cap then field = 'other'
    else redis.call('HINCRBY', agg, 'n', 1) end
  end
  redis.call('HINCRBY', agg, field, 1)
end
