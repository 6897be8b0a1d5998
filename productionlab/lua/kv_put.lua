--! keys: audit[2] item counter index limit
--! args: audit[6] key value ttl_ms cond expected owner max_keys max_bytes limit window
-- One put: the caller's per-user charge, the condition (cond 'absent', or
-- 'match' with expected a comma-separated list of versions or '*'), the quota,
-- the write, its version and its audit entry, atomically.
-- Returns {0, version} created, {1, version} updated, {-1, current} condition
-- failed, {-2, wait} limit spent, {-3, used keys, used bytes} over quota.
--! include audit_prelude.lua
--! include user_limit.lua
--! include quota.lua
--! include kv_write.lua
local item, counter, index = KEYS[3], KEYS[4], KEYS[5]
local key, value, ttl_ms, cond, expected = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
local owner, max_keys, max_bytes = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local wait = take_limit(KEYS[6], tonumber(ARGV[15]), tonumber(ARGV[16]), 1)
if wait > 0 then return {-2, wait} end
reconcile(owner, RECONCILE_PER_WRITE)
local current = redis.call('HGET', item, 'ver')
if cond == 'absent' and current then
  audit('kv.put', key, 'precondition_failed', current)
  return {-1, current}
end
if cond == 'match' then
  local ok = false
  if current then
    if expected == '*' then ok = true else
      for v in string.gmatch(expected, '[^,]+') do if v == current then ok = true end end
    end
  end
  if not ok then
    audit('kv.put', key, 'precondition_failed', current or '')
    return {-1, current or ''}
  end
end
local version, used_keys, used_bytes = put_item(
  counter, index, item, key, value, ttl_ms, current, owner, max_keys, max_bytes)
if not version then return {-3, used_keys, used_bytes} end
if current then return {1, version} end
return {0, version}
