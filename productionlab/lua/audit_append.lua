--! keys: audit[2]
--! args: audit[6] action target outcome version
-- Records an event that changes nothing else (auth failures, token events).
--! include audit_prelude.lua
return audit(ARGV[7], ARGV[8], ARGV[9], ARGV[10])
