-- 100% writes (overwrites of the preloaded keys with a fresh value each time).
package.path = (os.getenv("BENCH_DIR") or "bench") .. "/?.lua;" .. package.path
local c = require("common")
setup = c.setup
init = c.init
function request() return c.write() end
if c.delay_ms > 0 then
  function delay() return c.delay_ms end
end
done = c.done
