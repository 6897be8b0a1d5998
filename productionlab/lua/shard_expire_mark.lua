--! keys: item counter
--! args: tag shard key
-- The expired-key event's follow-up in the key's shard (as kv_expire_mark.lua):
-- the tombstone of a key redis expired. Returns its version, or 0.
--! include shard_marks.lua
local S = shard_of_tag(ARGV[1], tonumber(ARGV[2]))
if names_differ(S, ARGV[3], KEYS[1], KEYS[2], S.index) then return redis.error_reply(LAYOUT_ERROR) end
return mark_expired(S, ARGV[3])
