--! keys: audit[2] limit usage items...
--! args: audit[6] limit window charge atomic n owner max_keys max_bytes ops...
-- Single redis: a transaction or bulk request over any shards in one script:
-- the limit ticket (charge: one per operation), the quota hold of every put's
-- growth, the operations (shard_batch_body.lua) and the settle of every
-- touched shard's reports. audit: the first operation's shard's chain (its
-- type is checked before anything; every other chain touched is checked too).
-- Returns {0, results}, {-1, op, current}, {-2, wait}, {-3, op, used keys,
-- used bytes}, as kv_batch.lua.
--! include shard_batch_body.lua
--! include user_limit.lua
--! include usage_ledger.lua
local n, owner = tonumber(ARGV[11]), ARGV[12]
local ops, shards = read_ops(15, n, 5)
if not ops then return redis.error_reply(LAYOUT_ERROR) end
for _, S in pairs(shards) do
  local problem = chain_problem(S.audit, S.audit_meta)
  if problem then return redis.error_reply(problem) end
end
local wait = take_limit(KEYS[3], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
if wait > 0 then return {-2, wait} end
local want_keys, want_bytes = 0, 0
for _, op in ipairs(ops) do
  if op.kind == 'put' then
    want_keys, want_bytes = want_keys + 1, want_bytes + #op.key + #op.value
  end
end
local usage = KEYS[4]
local grant_keys, grant_bytes = reserve(usage, '', '', 0, 0, want_keys, want_bytes,
  tonumber(ARGV[13]), tonumber(ARGV[14]))
local answer = run_batch(ops, ARGV[10] == '1', owner, grant_keys, grant_bytes)
for no, S in pairs(shards) do settle(string.format('%02d', no), reports(S), 1) end
if answer[1] == -3 then
  local used_keys, used_bytes = ledger_total(usage)
  return {-3, answer[2], used_keys, used_bytes}
end
return answer
