#!lua flags=allow-oom
--! keys: audit[2] item counter index limit
--! args: audit[6] key expected limit window
-- One delete: the caller's per-user charge, the condition (expected '' or '*':
-- none; else a comma-separated list of versions), the delete, the release of
-- its quota charge and its audit entry, atomically. allow-oom: a delete must
-- work when redis is at maxmemory (noeviction): it frees more than its audit
-- entry and tombstone take, and is how a full store is emptied.
-- Returns {1, version} deleted, {0, ''} absent, {-1, current} condition
-- failed, {-2, wait} limit spent.
--! include audit_prelude.lua
--! include user_limit.lua
--! include quota.lua
--! include kv_write.lua
local item, counter, index = KEYS[3], KEYS[4], KEYS[5]
local key, expected = ARGV[7], ARGV[8]
local wait = take_limit(KEYS[6], tonumber(ARGV[9]), tonumber(ARGV[10]), 1)
if wait > 0 then return {-2, wait} end
local current = redis.call('HGET', item, 'ver')
if not current then
  return {0, ''}
end
if expected ~= '' and expected ~= '*' then
  local ok = false
  for v in string.gmatch(expected, '[^,]+') do if v == current then ok = true end end
  if not ok then
    audit('kv.delete', key, 'precondition_failed', current)
    return {-1, current}
  end
end
delete_item(counter, index, item, key, current)
return {1, current}
