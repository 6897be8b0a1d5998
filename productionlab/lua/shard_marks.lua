--! fragment
-- A shard's names and watch marks (virtual shards, store/layout.py; as
-- watch_marks.lua, per shard). The including script defines TAG (the shard's
-- hash tag) and SHARD_NO (its number) before this include; every name below
-- is under TAG (layout.Shard's names; a test pins them), and versions are the
-- shard's counter * SHARDS + SHARD_NO. The change channel stays {plab}'s.
local SHARDS = 16
local ITEM = TAG .. ':kv:'
local USAGE = TAG .. ':usage:'
local CHANGES = '{plab}:kv-changes'
local TOMBS, FLOOR = TAG .. ':kv-watch:tombs', TAG .. ':kv-watch:floor'
local TTL_VERSIONS = TAG .. ':kv-watch:ttl'
local TOMBS_KEPT = 100000

-- The next version of this shard: counter * SHARDS + SHARD_NO.
local function next_version(counter)
  return redis.call('INCR', counter) * SHARDS + SHARD_NO
end

-- Watch marks (as watch_marks.lua, per shard): the change message, tombstones.
local function changed(key, version)
  redis.call('PUBLISH', CHANGES, version .. ' ' .. key)
end
local function mark_put(key, version, ttl_ms)
  if ttl_ms > 0 then
    redis.call('HSET', TTL_VERSIONS, key, version)
  else
    redis.call('HDEL', TTL_VERSIONS, key)
  end
  changed(key, version)
end
local function tombstone(counter, key)
  local version = next_version(counter)
  redis.call('HDEL', TTL_VERSIONS, key)
  redis.call('ZADD', TOMBS, version, key)
  local excess = redis.call('ZCARD', TOMBS) - TOMBS_KEPT
  if excess > 0 then
    local dropped = redis.call('ZPOPMIN', TOMBS, excess)
    redis.call('SET', FLOOR, dropped[#dropped])
  end
  changed(key, version)
  return version
end
local function mark_expired(counter, item, key)
  if not redis.call('HGET', TTL_VERSIONS, key) then return 0 end
  if redis.call('EXISTS', item) == 1 then return 0 end
  return tombstone(counter, key)
end

