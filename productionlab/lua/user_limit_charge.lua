#!lua flags=allow-oom
--! keys: limit
--! args: limit window
-- One request's per-user charge in its own round trip (views whose store call
-- does not take it). allow-oom: at maxmemory, charging a few bytes of counter
-- must not turn every read and admin request into an error (see kv_get.lua).
--! include user_limit.lua
return take_limit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
