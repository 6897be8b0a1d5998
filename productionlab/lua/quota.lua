--! fragment
-- Per-user quotas: charge, move and release a key's charge (see kv.py's
-- docstring). ITEM and USAGE are kv.py's ITEM and USAGE (a test pins them).
local ITEM, USAGE = '{plab}:kv:', '{plab}:usage:'
-- How many expired charges a write releases before it runs (the rest wait
-- for the next write or read of the usage).
local RECONCILE_PER_WRITE = 100
local function uncharge(user, key, bytes)
  local usage = USAGE .. user
  redis.call('HINCRBY', usage, 'keys', -1)
  redis.call('HINCRBY', usage, 'bytes', -bytes)
  redis.call('ZREM', usage .. ':exp', key)
  redis.call('HDEL', usage .. ':ttl', key)
end
local function charge(user, key, bytes, expire_at)
  local usage = USAGE .. user
  redis.call('HINCRBY', usage, 'keys', 1)
  redis.call('HINCRBY', usage, 'bytes', bytes)
  if expire_at > 0 then
    redis.call('ZADD', usage .. ':exp', expire_at, key)
    redis.call('HSET', usage .. ':ttl', key, bytes)
  end
end
-- Release the charges of user's keys that redis has expired, earliest first,
-- stopping at the first that still lives. Returns 1 if it stopped at `batch`.
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
-- The keys and bytes charged to user now.
local function usage_of(user)
  local used = redis.call('HMGET', USAGE .. user, 'keys', 'bytes')
  return tonumber(used[1] or '0'), tonumber(used[2] or '0')
end
-- Would adding add_keys and add_bytes to this usage pass the quota? A change
-- that does not grow a dimension is never refused for it (a user over quota
-- can always shrink).
local function over_quota(used_keys, used_bytes, add_keys, add_bytes, max_keys, max_bytes)
  return (add_keys > 0 and used_keys + add_keys > max_keys)
    or (add_bytes > 0 and used_bytes + add_bytes > max_bytes)
end
