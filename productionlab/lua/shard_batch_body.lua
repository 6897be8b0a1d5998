--! fragment
-- A transaction (atomic: all or nothing, with conditions) or a bulk request
-- (independent items) over the shards, as kv_batch.lua does over the one-tag
-- layout: every operation in its key's shard S, each change with its own audit
-- entry in S's chain. A script on a cluster holds one shard's operations (the
-- caller refuses a transaction that spans shards and splits a bulk request by
-- shard); on a single redis one script may touch every shard.
-- The quota: the writer may grow its usage by grant_keys and grant_bytes in
-- all (the reservation's hold); a delete of the writer's own key gives its
-- room back to later operations, as kv_batch.lua's running usage does.
--! include shard_write.lua

-- ops: a list of {kind, key, value, ttl_ms, version, S}. Returns {0, results},
-- {-1, op, current} a condition failed, {-3, op} a transaction over quota.
local function run_batch(ops, atomic, owner, grant_keys, grant_bytes)
  local writes = false
  for _, op in ipairs(ops) do
    if op.kind == 'put' or op.kind == 'delete' then writes = true end
  end
  if writes then
    local reconciled = {}
    for _, op in ipairs(ops) do
      if not reconciled[op.S.no] then
        reconciled[op.S.no] = true
        reconcile(op.S, owner, RECONCILE_PER_WRITE)
      end
    end
  end
  local function stored(S, key)
    local item = S.item .. key
    local ver = redis.call('HGET', item, 'ver')
    if not ver then return {ver = '', owner = false, bytes = 0} end
    return {ver = ver, owner = redis.call('HGET', item, 'o'),
      bytes = #key + redis.call('HSTRLEN', item, 'v')}
  end
  if atomic then
    local room_keys, room_bytes = grant_keys, grant_bytes
    local counters, seen, touched_items = {}, {}, {}
    for i, op in ipairs(ops) do
      local S, kind, key = op.S, op.kind, op.key
      local item = S.item .. key
      local s = seen[item] or stored(S, key)
      local ver = s.ver
      local failed = (kind == 'exists' and ver == '') or (kind == 'absent' and ver ~= '')
        or (kind == 'version_equals' and ver ~= op.version)
      if failed then
        audit_in(S, 'kv.txn', key, 'precondition_failed', ver)
        return {-1, i, ver}
      end
      if kind == 'put' then
        local owner_ttl = S.usage .. owner .. ':ttl'
        if s.owner ~= owner and not touched_items[item] and redis.call('HEXISTS', owner_ttl, key) == 1 then
          room_keys = room_keys + 1
          room_bytes = room_bytes + tonumber(redis.call('HGET', owner_ttl, key))
        end
        local bytes = #key + #op.value
        local add_keys, add_bytes = 1, bytes
        if s.owner == owner then add_keys, add_bytes = 0, bytes - s.bytes end
        if (add_keys > 0 and add_keys > room_keys) or (add_bytes > 0 and add_bytes > room_bytes) then
          return {-3, i}
        end
        room_keys, room_bytes = room_keys - add_keys, room_bytes - add_bytes
        counters[S.no] = (counters[S.no] or tonumber(redis.call('GET', S.counter) or '0')) + 1
        s = {ver = tostring(counters[S.no] * SHARDS + S.no), owner = owner, bytes = bytes}
        touched_items[item] = true
      elseif kind == 'delete' then
        if ver ~= '' then
          counters[S.no] = (counters[S.no] or tonumber(redis.call('GET', S.counter) or '0')) + 1
          if s.owner == owner then
            room_keys, room_bytes = room_keys + 1, room_bytes + s.bytes
          end
        end
        s = {ver = '', owner = false, bytes = 0}
        touched_items[item] = true
      end
      seen[item] = s
    end
  end
  local room_keys, room_bytes = grant_keys, grant_bytes
  local results = {}
  for i, op in ipairs(ops) do
    local S, kind, key = op.S, op.kind, op.key
    local item = S.item .. key
    if kind == 'get' then
      local found = redis.call('HMGET', item, 'v', 'ver')
      if found[2] then results[i] = {'found', found[1] or '', found[2]}
      else results[i] = {'absent', '', ''} end
    elseif kind == 'put' then
      local current = redis.call('HGET', item, 'ver')
      local version, used_keys, used_bytes = put_item(S, key, op.value, op.ttl_ms, current, owner,
        room_keys, room_bytes)
      if version then
        room_keys, room_bytes = room_keys - used_keys, room_bytes - used_bytes
        results[i] = {current and 'updated' or 'created', '', tostring(version)}
      else
        results[i] = {'quota_exceeded', '', ''}
      end
    elseif kind == 'delete' then
      local current = redis.call('HGET', item, 'ver')
      if current then
        local before_owner, before_bytes = delete_item(S, key, current)
        if before_owner == owner then
          room_keys, room_bytes = room_keys + 1, room_bytes + before_bytes
        end
        results[i] = {'deleted', '', current}
      else
        results[i] = {'absent', '', ''}
      end
    else
      results[i] = {'held', '', redis.call('HGET', item, 'ver') or ''}
    end
  end
  return {0, results}
end

-- The operations in ARGV from `first` on: kind, key, value, ttl_ms, version,
-- tag, shard each. Refuses (returns false) when an item in KEYS from
-- `first_key` on is not the layout's name of its operation's key.
local function read_ops(first, n, first_key)
  local ops, shards = {}, {}
  for i = 1, n do
    local at = first + (i - 1) * 7
    local no = tonumber(ARGV[at + 6])
    shards[no] = shards[no] or shard_of_tag(ARGV[at + 5], no)
    local op = {kind = ARGV[at], key = ARGV[at + 1], value = ARGV[at + 2],
      ttl_ms = tonumber(ARGV[at + 3]), version = ARGV[at + 4], S = shards[no]}
    if KEYS[first_key + i - 1] ~= op.S.item .. op.key then return false end
    ops[i] = op
  end
  return ops, shards
end
