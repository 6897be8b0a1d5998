--! keys: item counter
--! args: key
-- The expired-key event's follow-up (watch.py): give a key redis expired its
-- tombstone and wake its watches. Every process holding watches hears the
-- event and runs this; the first does the work, the others find nothing to do.
-- Returns the tombstone's version, or 0.
--! include watch_marks.lua
return mark_expired(KEYS[2], KEYS[1], ARGV[1])
