-- Bulk requests (issue 13): POST /v1/bulk with BENCH_BULK_ITEMS items each,
-- gets (BENCH_BULK_OP=get) or puts (BENCH_BULK_OP=put) of random preloaded keys.
package.path = (os.getenv("BENCH_DIR") or "bench") .. "/?.lua;" .. package.path
local c = require("common")
local items = tonumber(os.getenv("BENCH_BULK_ITEMS") or "100")
local op = os.getenv("BENCH_BULK_OP") or "get"
local counter = 0
c.workload(function()
  counter = counter + 1
  local parts = {}
  for i = 1, items do
    local k = math.random(0, c.keys - 1)
    if op == "put" then
      parts[i] = string.format('{"op":"put","key":"bench-%d","value":"v%d-%d"}', k, counter, i)
    else
      parts[i] = string.format('{"op":"get","key":"bench-%d"}', k)
    end
  end
  local headers = c.headers()
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", "/v1/bulk", headers, '{"items":[' .. table.concat(parts, ",") .. "]}")
end)
