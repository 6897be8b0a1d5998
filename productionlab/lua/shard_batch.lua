--! keys: audit[2] items...
--! args: audit[6] atomic n owner grant_keys grant_bytes ops...
-- Cluster mode: a transaction or bulk request whose operations are all in one
-- shard (audit: that shard's chain), between its reservation and its settle
-- on {plab} (see shard_batch_body.lua). ops: per operation kind, key, value,
-- ttl_ms, expected version, tag, shard. Returns the body's answer, then the
-- shard's reports for the settle: {0, results, reports},
-- {-1, op, current, reports}, {-3, op, reports}.
--! include shard_batch_body.lua
local ops, shards = read_ops(12, tonumber(ARGV[8]), 3)
if not ops then return redis.error_reply(LAYOUT_ERROR) end
local answer = run_batch(ops, ARGV[7] == '1', ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11]))
local S = ops[1].S
answer[#answer + 1] = reports(S)
return answer
