--! keys: audit[2] counter index limit items...
--! args: audit[6] limit window charge atomic n owner max_keys max_bytes ops...
-- A transaction (atomic '1': all or nothing, with conditions) or a bulk
-- request (atomic '0': independent items) of n operations; see batch.py.
-- items: one item key per operation. ops: per operation kind, key, value,
-- ttl_ms, expected version. The caller's limit is charged `charge` (one per
-- operation) in the same script.
--
-- A put and a delete apply as kv_put.lua and kv_delete.lua do (kv_write.lua);
-- a transaction first walks its operations on scratch state and counters, so
-- a condition that fails or a put that would pass the writer's quota refuses
-- the whole transaction before anything is written. A bulk put over quota is
-- refused alone (outcome quota_exceeded), like a single put.
-- Returns {0, results}, {-1, op, current} condition failed, {-2, wait} limit
-- spent, {-3, op, used keys, used bytes} a transaction over quota.
--! include audit_prelude.lua
--! include user_limit.lua
--! include quota.lua
--! include kv_write.lua
local counter, index = KEYS[3], KEYS[4]
local wait = take_limit(KEYS[5], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
if wait > 0 then return {-2, wait} end
local atomic, n = ARGV[10] == '1', tonumber(ARGV[11])
local owner, max_keys, max_bytes = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local owner_ttl = USAGE .. owner .. ':ttl'
local function arg(i, field) return ARGV[14 + (i - 1) * 5 + field] end
local function stored(item, key)
  local ver = redis.call('HGET', item, 'ver')
  if not ver then return {ver = '', owner = false, bytes = 0} end
  return {ver = ver, owner = redis.call('HGET', item, 'o'),
    bytes = #key + redis.call('HSTRLEN', item, 'v')}
end
local writes = false
for i = 1, n do
  local kind = arg(i, 1)
  if kind == 'put' or kind == 'delete' then writes = true end
end
if writes then reconcile(owner, RECONCILE_PER_WRITE) end
if atomic then
  local next_version = tonumber(redis.call('GET', counter) or '0')
  local used_keys, used_bytes = usage_of(owner)
  local seen, touched = {}, {}
  for i = 1, n do
    local item, kind, key = KEYS[5 + i], arg(i, 1), arg(i, 2)
    local s = seen[item] or stored(item, key)
    local ver = s.ver
    local failed = (kind == 'exists' and ver == '') or (kind == 'absent' and ver ~= '')
      or (kind == 'version_equals' and ver ~= arg(i, 5))
    if failed then
      audit('kv.txn', key, 'precondition_failed', ver)
      return {-1, i, ver}
    end
    if kind == 'put' then
      if s.owner ~= owner and not touched[item] and redis.call('HEXISTS', owner_ttl, key) == 1 then
        used_keys = used_keys - 1
        used_bytes = used_bytes - tonumber(redis.call('HGET', owner_ttl, key))
      end
      local bytes = #key + #arg(i, 3)
      local add_keys, add_bytes = 1, bytes
      if s.owner == owner then add_keys, add_bytes = 0, bytes - s.bytes end
      if over_quota(used_keys, used_bytes, add_keys, add_bytes, max_keys, max_bytes) then
        return {-3, i, used_keys, used_bytes}
      end
      used_keys, used_bytes = used_keys + add_keys, used_bytes + add_bytes
      next_version = next_version + 1
      s = {ver = tostring(next_version), owner = owner, bytes = bytes}
      touched[item] = true
    elseif kind == 'delete' then
      if ver ~= '' then next_version = next_version + 1 end  -- its tombstone
      if ver ~= '' and s.owner == owner then
        used_keys, used_bytes = used_keys - 1, used_bytes - s.bytes
      end
      s = {ver = '', owner = false, bytes = 0}
      touched[item] = true
    end
    seen[item] = s
  end
end
local results = {}
for i = 1, n do
  local item, kind, key = KEYS[5 + i], arg(i, 1), arg(i, 2)
  if kind == 'get' then
    local found = redis.call('HMGET', item, 'v', 'ver')
    if found[2] then results[i] = {'found', found[1] or '', found[2]}
    else results[i] = {'absent', '', ''} end
  elseif kind == 'put' then
    local current = redis.call('HGET', item, 'ver')
    local version = put_item(counter, index, item, key, arg(i, 3), tonumber(arg(i, 4)),
      current, owner, max_keys, max_bytes)
    if version then
      results[i] = {current and 'updated' or 'created', '', tostring(version)}
    else
      results[i] = {'quota_exceeded', '', ''}
    end
  elseif kind == 'delete' then
    local current = redis.call('HGET', item, 'ver')
    if current then
      delete_item(counter, index, item, key, current)
      results[i] = {'deleted', '', current}
    else
      results[i] = {'absent', '', ''}
    end
  else
    results[i] = {'held', '', redis.call('HGET', item, 'ver') or ''}
  end
end
return {0, results}
