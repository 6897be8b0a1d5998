--! keys: index counter
--! args: item_prefix since budget prefixes...
-- A watched prefix's state over the caller's granted ranges (prefixes,
-- disjoint and sorted): {newest, counter, key, version, key, version, ...} with
-- the live keys in order, newest the highest version of a change under the
-- ranges past `since` (a live key, a tombstone, or the tombstone floor when
-- tombstones newer than since were dropped), counter the items' counter now.
-- {-1} when the ranges hold more than budget keys. An expired key found on the
-- way gets its tombstone here.
--! include watch_marks.lua
local index, counter = KEYS[1], KEYS[2]
local item_prefix, since, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local prefixes = {}
for i = 4, #ARGV do prefixes[#prefixes + 1] = ARGV[i] end
local function under(key)
  for _, prefix in ipairs(prefixes) do
    if string.sub(key, 1, #prefix) == prefix then return true end
  end
  return false
end
local newest, seen, found = 0, 0, {}
for _, prefix in ipairs(prefixes) do
  local page = redis.call('ZRANGEBYLEX', index, '[' .. prefix, '[' .. prefix .. '\255',
    'LIMIT', 0, budget - seen + 1)
  for _, key in ipairs(page) do
    seen = seen + 1
    if seen > budget then return {-1} end
    local item = item_prefix .. key
    local version = redis.call('HGET', item, 'ver')
    if version then
      found[#found + 1] = key
      found[#found + 1] = version
      if tonumber(version) > newest then newest = tonumber(version) end
    else
      local expired = mark_expired(counter, item, key)
      if expired > newest then newest = expired end
    end
  end
end
local floor = tonumber(redis.call('GET', FLOOR) or '0')
if floor > since and floor > newest then newest = floor end
local tombs = redis.call('ZRANGEBYSCORE', TOMBS, '(' .. since, '+inf', 'WITHSCORES',
  'LIMIT', 0, budget + 1)
if #tombs > 2 * budget then
  -- Too many deletes since `since` to sift: report a change at the counter.
  newest = tonumber(redis.call('GET', counter) or '0')
else
  for i = 1, #tombs, 2 do
    if under(tombs[i]) and tonumber(tombs[i + 1]) > newest then newest = tonumber(tombs[i + 1]) end
  end
end
local result = {newest, redis.call('GET', counter) or '0'}
for _, v in ipairs(found) do result[#result + 1] = v end
return result
