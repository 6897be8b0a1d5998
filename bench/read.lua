-- 100% reads of preloaded keys.
package.path = (os.getenv("BENCH_DIR") or "bench") .. "/?.lua;" .. package.path
local c = require("common")
c.workload(function() return c.read() end)
