--! keys: index counter
--! args: tag shard after limit budget prefixes...
-- One shard's share of a listing (shardkv.py merges the shards): keys in
-- lexical order over disjoint prefix ranges after a cursor key, as kv_list.lua
-- does for the whole store, expired members pruned and given their tombstone.
-- Returns {keys, last member seen, 1 if it stopped early else 0}.
--! include shard_marks.lua
local S = shard_of_tag(ARGV[1], tonumber(ARGV[2]))
if KEYS[1] ~= S.index or KEYS[2] ~= S.counter then return redis.error_reply(LAYOUT_ERROR) end
local index = S.index
local after, limit, budget = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local found, last = {}, after
for i = 6, #ARGV do
  local prefix = ARGV[i]
  local lo
  if after ~= '' and after >= prefix then lo = '(' .. after else lo = '[' .. prefix end
  local hi = '[' .. prefix .. '\255'
  local done = false
  while not done do
    local batch = redis.call('ZRANGEBYLEX', index, lo, hi, 'LIMIT', 0, 100)
    if #batch == 0 then break end
    for _, member in ipairs(batch) do
      budget = budget - 1
      last = member
      if redis.call('EXISTS', S.item .. member) == 1 then
        found[#found + 1] = member
      else
        redis.call('ZREM', index, member)
        mark_expired(S, member)
      end
      if #found >= limit or budget <= 0 then done = true break end
    end
    lo = '(' .. last
    if #batch < 100 then break end
  end
  if #found >= limit or budget <= 0 then return {found, last, 1} end
end
return {found, last, 0}
