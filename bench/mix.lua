-- 90% reads, 10% writes.
package.path = (os.getenv("BENCH_DIR") or "bench") .. "/?.lua;" .. package.path
local c = require("common")
local ratio = tonumber(os.getenv("BENCH_WRITE_RATIO") or "0.1")
c.workload(function()
  if math.random() < ratio then return c.write() end
  return c.read()
end)
