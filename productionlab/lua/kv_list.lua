--! keys: index counter
--! args: item_prefix after limit budget prefixes...
-- Lists keys in lexical order over disjoint prefix ranges, after a cursor key.
-- Index members whose item has expired are pruned on the way (and given
-- their tombstone, if no one has yet: a prefix watch finds them no more). The
-- scan is bounded (budget) so one call never blocks redis for long.
-- Returns {keys, last member seen, 1 if it stopped early else 0}.
--! include watch_marks.lua
local index, counter, item_prefix = KEYS[1], KEYS[2], ARGV[1]
local after, limit, budget = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local found, last = {}, after
for i = 5, #ARGV do
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
      if redis.call('EXISTS', item_prefix .. member) == 1 then
        found[#found + 1] = member
      else
        redis.call('ZREM', index, member)
        mark_expired(counter, item_prefix .. member, member)
      end
      if #found >= limit or budget <= 0 then done = true break end
    end
    lo = '(' .. last
    if #batch < 100 then break end
  end
  if #found >= limit or budget <= 0 then return {found, last, 1} end
end
return {found, last, 0}
