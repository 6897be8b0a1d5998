--! fragment
-- What a change leaves for the watches (watch.py): a message on CHANGES
-- ("<version> <key>", no value) for the processes holding watches, and for a
-- delete or an expiry a tombstone: a version from the items' own counter,
-- kept in TOMBS (score: that version), so a watched key's index never goes
-- back when the key goes away. TOMBS keeps the newest TOMBS_KEPT; FLOOR is the
-- version of the newest one dropped (a key without a tombstone reads as FLOOR).
-- TTL_VERSIONS holds the version of every key that carries a TTL: redis
-- expires keys without running a script, so an expired key is found there
-- (by the expired-key event, or by the next watch that reads it) and given
-- its tombstone then. The names are watch.py's (a test pins them).
local CHANGES = '{plab}:kv-changes'
local TOMBS, FLOOR = '{plab}:kv-watch:tombs', '{plab}:kv-watch:floor'
local TTL_VERSIONS = '{plab}:kv-watch:ttl'
local TOMBS_KEPT = 100000
-- Both marks run before anything else the change writes: a redis whose ACL
-- predates watches refuses them (NOPERM), and then nothing has changed.
local function changed(key, version)
  redis.call('PUBLISH', CHANGES, version .. ' ' .. key)
end
-- A put of key at version (with a TTL when ttl_ms > 0).
local function mark_put(key, version, ttl_ms)
  if ttl_ms > 0 then
    redis.call('HSET', TTL_VERSIONS, key, version)
  else
    redis.call('HDEL', TTL_VERSIONS, key)
  end
  changed(key, version)
end
-- A delete or an expiry of key: its tombstone, a new version from counter.
local function tombstone(counter, key)
  local version = redis.call('INCR', counter)
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
-- The tombstone of a key redis expired that has none yet (0 when it lives, or
-- was given one already, or carried no TTL).
local function mark_expired(counter, item, key)
  if not redis.call('HGET', TTL_VERSIONS, key) then return 0 end
  if redis.call('EXISTS', item) == 1 then return 0 end
  return tombstone(counter, key)
end
