-- 100% writes (overwrites of the preloaded keys with a fresh value each time).
package.path = (os.getenv("BENCH_DIR") or "bench") .. "/?.lua;" .. package.path
local c = require("common")
c.workload(function() return c.write() end)
