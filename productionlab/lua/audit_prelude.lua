--! fragment
-- The audit log's append, for every script that records a change. A script
-- that includes this declares `audit[2]` first among its keys (KEYS[1] the
-- log, KEYS[2] its meta hash) and `audit[6]` first among its args (ARGV[1]
-- and ARGV[2] reserved and sent empty: they carried the previous release's
-- HMAC pads; ARGV[3..6] ts, actor, request id, client). Append with
-- audit(action, target, outcome, version); it returns the entry's seq.
--
-- Refuse before any write if the log's keys hold the wrong type: redis does
-- not roll a script back, so a change must never run ahead of a failing append.
-- (Reads only: the app plane's redis user may not run anything else on them.)
-- chain_problem(list, meta): the same check for another chain (a virtual
-- shard's), for a script that appends to several; audit_to(list, meta, ...)
-- appends to it.
local function chain_problem(list, meta)
  for _, probe in ipairs({{'LLEN', list}, {'HGET', meta, 'first'}}) do
    local reply = redis.pcall(unpack(probe))
    if type(reply) == 'table' and reply.err then
      return 'ERR audit log key ' .. probe[2] .. ' holds the wrong type'
    end
  end
  return false
end
local audit_keys_problem = chain_problem(KEYS[1], KEYS[2])
if audit_keys_problem then return redis.error_reply(audit_keys_problem) end
local function audit_to(list, meta, action, target, outcome, version)
  local length = redis.call('LLEN', list)
  local first = tonumber(redis.call('HGET', meta, 'first') or '1')
  local prev
  if length > 0 then
    prev = redis.sha1hex(redis.call('LINDEX', list, -1))
  else
    prev = redis.call('HGET', meta, 'first_prev') or ''
  end
  local seq = first + length
  redis.call('RPUSH', list, cjson.encode({seq = seq, prev = prev, ts = ARGV[3],
    actor = ARGV[4], action = action, target = target, outcome = outcome,
    request_id = ARGV[5], client = ARGV[6], version = tostring(version or '')}))
  return seq
end
local function audit(action, target, outcome, version)
  return audit_to(KEYS[1], KEYS[2], action, target, outcome, version)
end
