--! fragment
-- Each user's exact usage in one shard (as quota.lua, per shard), for the
-- shard scripts; every change of a user's usage bumps its `seq`, and
-- reports() is what the settle records on {plab} (usage_ledger.lua). Needs
-- TAG and SHARD_NO (see shard_marks.lua).
--! include shard_marks.lua
local RECONCILE_PER_WRITE = 100
local touched_users, touched_list = {}, {}
local function touch(user)
  if not touched_users[user] then
    touched_users[user] = true
    touched_list[#touched_list + 1] = user
    redis.call('HINCRBY', USAGE .. user, 'seq', 1)
  end
end
local function uncharge(user, key, bytes)
  local usage = USAGE .. user
  touch(user)
  redis.call('HINCRBY', usage, 'keys', -1)
  redis.call('HINCRBY', usage, 'bytes', -bytes)
  redis.call('ZREM', usage .. ':exp', key)
  redis.call('HDEL', usage .. ':ttl', key)
end
local function charge(user, key, bytes, expire_at)
  local usage = USAGE .. user
  touch(user)
  redis.call('HINCRBY', usage, 'keys', 1)
  redis.call('HINCRBY', usage, 'bytes', bytes)
  if expire_at > 0 then
    redis.call('ZADD', usage .. ':exp', expire_at, key)
    redis.call('HSET', usage .. ':ttl', key, bytes)
  end
end
-- Release the charges of user's keys in this shard that redis has expired.
local function reconcile(user, batch)
  local usage = USAGE .. user
  for _ = 1, batch do
    local first = redis.call('ZRANGE', usage .. ':exp', 0, 0, 'WITHSCORES')
    if #first == 0 then return 0 end
    local key, at = first[1], tonumber(first[2])
    local item = ITEM .. key
    if redis.call('HGET', item, 'o') == user and redis.call('PEXPIRETIME', item) == at then
      return 0
    end
    uncharge(user, key, tonumber(redis.call('HGET', usage .. ':ttl', key) or '0'))
  end
  return 1
end
-- {user, keys, bytes, seq, earliest expiry (0: none)} of every user this
-- script changed, flattened: what the settle records.
local function reports()
  local out = {}
  for _, user in ipairs(touched_list) do
    local usage = USAGE .. user
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

