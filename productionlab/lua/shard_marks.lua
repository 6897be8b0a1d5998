--! fragment
-- A shard's names and watch marks (virtual shards, store/layout.py). shard_of_tag(tag, number) gives a shard's
-- context S: every name under its hash tag (layout.Shard's names; a test pins
-- them). Versions are the shard's counter * SHARDS + its number. The change
-- channel stays {plab}'s (classic pub/sub reaches every node).
local SHARDS = 16
local CHANGES = '{plab}:kv-changes'
local TOMBS_KEPT = 100000
local function shard_of_tag(tag, number)
  return {tag = tag, no = number, item = tag .. ':kv:', usage = tag .. ':usage:',
    counter = tag .. ':kv-version', index = tag .. ':kv-index',
    audit = tag .. ':audit', audit_meta = tag .. ':audit:meta',
    tombs = tag .. ':kv-watch:tombs', floor = tag .. ':kv-watch:floor',
    ttl = tag .. ':kv-watch:ttl'}
end

-- The next version of shard S.
local function next_version(S)
  return redis.call('INCR', S.counter) * SHARDS + S.no
end

-- Watch marks: the change message, tombstones.
local function changed(key, version)
  redis.call('PUBLISH', CHANGES, version .. ' ' .. key)
end
local function mark_put(S, key, version, ttl_ms)
  if ttl_ms > 0 then
    redis.call('HSET', S.ttl, key, version)
  else
    redis.call('HDEL', S.ttl, key)
  end
  changed(key, version)
end
local function tombstone(S, key)
  local version = next_version(S)
  redis.call('HDEL', S.ttl, key)
  redis.call('ZADD', S.tombs, version, key)
  local excess = redis.call('ZCARD', S.tombs) - TOMBS_KEPT
  if excess > 0 then
    local dropped = redis.call('ZPOPMIN', S.tombs, excess)
    redis.call('SET', S.floor, dropped[#dropped])
  end
  changed(key, version)
  return version
end
local function mark_expired(S, key)
  if not redis.call('HGET', S.ttl, key) then return 0 end
  if redis.call('EXISTS', S.item .. key) == 1 then return 0 end
  return tombstone(S, key)
end

-- The caller's names (store/layout.py, in Python) against S's (here): a
-- script refuses before any change when they differ.
local function names_differ(S, key, item, counter, index)
  return item ~= S.item .. key or counter ~= S.counter or index ~= S.index
end
local LAYOUT_ERROR = 'ERR the shard key names from the caller are not the layout of this script'
