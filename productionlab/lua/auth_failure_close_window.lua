--! keys: audit[2] window
--! args: audit[6] now span
-- Appends the aggregate entries of an authentication-failure window that has
-- ended (the control plane runs it before it reads or verifies the log).
-- Returns how many entries it appended.
--! include audit_prelude.lua
--! include auth_failures.lua
return close_window(KEYS[3], tonumber(ARGV[7]), tonumber(ARGV[8]))
