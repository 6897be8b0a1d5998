#!lua flags=allow-oom
--! keys: usage holds
--! args: member shard reports...
-- Cluster mode: after a write's shard script, on {plab}: release its hold
-- (member; '' when none) and record what the shard reported (usage_ledger.lua).
-- Also records a usage read's reports (member ''). allow-oom: it only shrinks
-- or rewrites fields of the same size. Returns the user's counted keys and bytes.
--! include usage_ledger.lua
release(KEYS[1], KEYS[2], ARGV[1])
settle(ARGV[2], ARGV, 3)
local keys, bytes = ledger_total(KEYS[1])
return {keys, bytes}
