#!lua flags=allow-oom
--! keys: index counter
--! args: tag shard since index budget prefixes...
-- One shard's share of a watched prefix's state (shardwatch.py merges the
-- shards), as watch_prefix.lua, after the Lamport fast-forward: the shard's
-- counter moves up to at least index // SHARDS, so every version this shard
-- gives from now on is above `index` (the highest version any shard had given
-- when the caller read the counters). Returns {newest, key, version, ...}: the
-- live keys under the ranges and the highest version of a change under them
-- past `since` (a live key, a tombstone, or the floor); {-1} over budget.
-- allow-oom: a watch is a read, answered on a redis at maxmemory as reads are;
-- the fast-forward's SET rewrites a counter (or adds one small key), and
-- refusing it would leave the shard lagging behind the index handed back.
--! include shard_marks.lua
local S = shard_of_tag(ARGV[1], tonumber(ARGV[2]))
if KEYS[1] ~= S.index or KEYS[2] ~= S.counter then return redis.error_reply(LAYOUT_ERROR) end
local since, index, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local at_least = math.floor(index / SHARDS)
if tonumber(redis.call('GET', S.counter) or '0') < at_least then
  redis.call('SET', S.counter, at_least)
end
local prefixes = {}
for i = 6, #ARGV do prefixes[#prefixes + 1] = ARGV[i] end
local function under(key)
  for _, prefix in ipairs(prefixes) do
    if string.sub(key, 1, #prefix) == prefix then return true end
  end
  return false
end
local newest, seen, found = 0, 0, {}
for _, prefix in ipairs(prefixes) do
  local page = redis.call('ZRANGEBYLEX', S.index, '[' .. prefix, '[' .. prefix .. '\255',
    'LIMIT', 0, budget - seen + 1)
  for _, key in ipairs(page) do
    seen = seen + 1
    if seen > budget then return {-1} end
    local version = redis.call('HGET', S.item .. key, 'ver')
    if version then
      found[#found + 1] = key
      found[#found + 1] = version
      if tonumber(version) > newest then newest = tonumber(version) end
    else
      local expired = mark_expired(S, key)
      if expired > newest then newest = expired end
    end
  end
end
local floor = tonumber(redis.call('GET', S.floor) or '0')
if floor > since and floor > newest then newest = floor end
local tombs = redis.call('ZRANGEBYSCORE', S.tombs, '(' .. since, '+inf', 'WITHSCORES',
  'LIMIT', 0, budget + 1)
if #tombs > 2 * budget then
  -- Too many deletes since `since` to sift: report a change at the counter.
  newest = math.max(newest, tonumber(redis.call('GET', S.counter) or '0') * SHARDS + S.no)
else
  for i = 1, #tombs, 2 do
    if under(tombs[i]) and tonumber(tombs[i + 1]) > newest then newest = tonumber(tombs[i + 1]) end
  end
end
local result = {newest}
for _, v in ipairs(found) do result[#result + 1] = v end
return result
