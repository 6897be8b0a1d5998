--! fragment
-- Each user's exact usage in one shard, for the
-- shard scripts; every change of a user's usage bumps its `seq`, and
-- reports(S) is what the settle records on {plab} (usage_ledger.lua).
--! include shard_marks.lua
local RECONCILE_PER_WRITE = 100
local touched = {}  -- per shard number: {users = {name = true}, list = {names}}
local function touch(S, user)
  local mine = touched[S.no]
  if not mine then
    mine = {users = {}, list = {}}
    touched[S.no] = mine
  end
  if not mine.users[user] then
    mine.users[user] = true
    mine.list[#mine.list + 1] = user
    redis.call('HINCRBY', S.usage .. user, 'seq', 1)
  end
end
local function uncharge(S, user, key, bytes)
  local usage = S.usage .. user
  touch(S, user)
  redis.call('HINCRBY', usage, 'keys', -1)
  redis.call('HINCRBY', usage, 'bytes', -bytes)
  redis.call('ZREM', usage .. ':exp', key)
  redis.call('HDEL', usage .. ':ttl', key)
end
local function charge(S, user, key, bytes, expire_at)
  local usage = S.usage .. user
  touch(S, user)
  redis.call('HINCRBY', usage, 'keys', 1)
  redis.call('HINCRBY', usage, 'bytes', bytes)
  if expire_at > 0 then
    redis.call('ZADD', usage .. ':exp', expire_at, key)
    redis.call('HSET', usage .. ':ttl', key, bytes)
  end
end
-- Release the charges of user's keys in shard S that redis has expired.
local function reconcile(S, user, batch)
  local usage = S.usage .. user
  for _ = 1, batch do
    local first = redis.call('ZRANGE', usage .. ':exp', 0, 0, 'WITHSCORES')
    if #first == 0 then return 0 end
    local key, at = first[1], tonumber(first[2])
    local item = S.item .. key
    if redis.call('HGET', item, 'o') == user and redis.call('PEXPIRETIME', item) == at then
      return 0
    end
    uncharge(S, user, key, tonumber(redis.call('HGET', usage .. ':ttl', key) or '0'))
  end
  return 1
end
-- {user, keys, bytes, seq, earliest expiry (0: none)} of every user this
-- script changed in shard S, flattened: what the settle records.
local function reports(S)
  local out = {}
  local mine = touched[S.no]
  if not mine then return out end
  for _, user in ipairs(mine.list) do
    local usage = S.usage .. user
    local used = redis.call('HMGET', usage, 'keys', 'bytes', 'seq')
    local first = redis.call('ZRANGE', usage .. ':exp', 0, 0, 'WITHSCORES')
    out[#out + 1] = user
    out[#out + 1] = used[1] or '0'
    out[#out + 1] = used[2] or '0'
    out[#out + 1] = used[3] or '0'
    out[#out + 1] = first[2] or '0'
  end
  return out
end
