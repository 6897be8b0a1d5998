--! fragment
-- A user's quota total on {plab} with virtual shards (docs/design/
-- virtual-shards.md, "Per-user limit and quota"). {plab}:usage-total:<user> holds,
-- per shard s (two digits), the last reported usage there (kNN keys, bNN
-- bytes, qNN its seq, eNN its earliest TTL expiry), their sums (tk, tb) and
-- the amounts held by
-- writes in flight (hk, hb); {plab}:usage-holds:<user> names each hold
-- (member "<id>:<keys>:<bytes>", score its deadline in ms). USAGE_TOTAL is
-- shardkv.py's USAGE_TOTAL (a test pins it).
local USAGE_TOTAL = '{plab}:usage-total:'

-- The user's keys and bytes as the quota counts them: reported plus held. tk
-- and tb are the sums of the kNN and bNN, kept by settle (no walk of the
-- hash per write).
local function ledger_total(usage)
  local t = redis.call('HMGET', usage, 'tk', 'tb', 'hk', 'hb')
  return tonumber(t[1] or '0') + tonumber(t[3] or '0'), tonumber(t[2] or '0') + tonumber(t[4] or '0')
end

-- Hold what a write may grow by: want_keys and want_bytes, each clipped to the
-- headroom left under max_keys and max_bytes. hold_id '' holds nothing: the
-- composed single-redis script uses the grant within the same script, where no
-- other write can run, so there is nothing to hold or release. Returns
-- the granted keys, bytes and the hold's member ('' when none was recorded).
-- A hold_id starts with the two digits of the write's shard.
-- now and deadline are the caller's clock in ms (the app planes' user may not
-- run TIME; a hold's deadline is minutes away, far beyond any clock skew).
-- When a recorded hold has passed its deadline (its request died between its
-- reservation and its settle), nothing is granted: the fourth value lists such
-- holds, for the caller to reconcile their shards and settle them first.
local function reserve(usage, holds, hold_id, now, deadline, want_keys, want_bytes, max_keys, max_bytes)
  if holds ~= '' then
    local lost = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 16)
    if #lost > 0 then return 0, 0, '', lost end
  end
  if want_keys <= 0 and want_bytes <= 0 then return 0, 0, '' end
  local keys, bytes = ledger_total(usage)
  local grant_keys = math.max(0, math.min(want_keys, max_keys - keys))
  local grant_bytes = math.max(0, math.min(want_bytes, max_bytes - bytes))
  if hold_id == '' or (grant_keys == 0 and grant_bytes == 0) then
    return grant_keys, grant_bytes, ''
  end
  redis.call('HINCRBY', usage, 'hk', grant_keys)
  redis.call('HINCRBY', usage, 'hb', grant_bytes)
  local member = hold_id .. ':' .. grant_keys .. ':' .. grant_bytes
  redis.call('ZADD', holds, deadline, member)
  return grant_keys, grant_bytes, member
end

-- Release a recorded hold (its member; '' for none) once.
local function release(usage, holds, member)
  if member == '' or redis.call('ZREM', holds, member) == 0 then return end
  local _, _, keys, bytes = string.find(member, ':(%d+):(%d+)$')
  -- (not -x: Lua's -0 reaches redis as '-0', which HINCRBY refuses)
  if tonumber(keys) > 0 then redis.call('HINCRBY', usage, 'hk', 0 - tonumber(keys)) end
  if tonumber(bytes) > 0 then redis.call('HINCRBY', usage, 'hb', 0 - tonumber(bytes)) end
end

-- Record what shard (two digits) reported for users: a flat list from
-- `first` of user, keys, bytes, seq, earliest expiry. A report older than the
-- one recorded (its seq not newer) changes nothing.
local function settle(shard, list, first)
  for i = first, #list, 5 do
    local usage = USAGE_TOTAL .. list[i]
    local seq = tonumber(list[i + 3])
    local was = redis.call('HMGET', usage, 'k' .. shard, 'b' .. shard, 'q' .. shard)
    if seq > tonumber(was[3] or '-1') then
      local keys, bytes = tonumber(list[i + 1]), tonumber(list[i + 2])
      redis.call('HSET', usage, 'k' .. shard, keys, 'b' .. shard, bytes,
        'q' .. shard, seq, 'e' .. shard, list[i + 4])
      redis.call('HINCRBY', usage, 'tk', keys - tonumber(was[1] or '0'))
      redis.call('HINCRBY', usage, 'tb', bytes - tonumber(was[2] or '0'))
    end
  end
end
