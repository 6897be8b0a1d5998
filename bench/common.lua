-- Shared by the wrk scripts: keys, paths, auth and a JSON summary on stdout.
-- Environment: BENCH_AUTH (an Authorization header value, optional),
-- BENCH_KEYS (how many preloaded keys), BENCH_READ / BENCH_WRITE (path prefixes),
-- BENCH_WRITE_METHOD, BENCH_WRITE_RATIO (0..1), BENCH_DELAY_MS (pacing, soak only),
-- BENCH_STATUS=1 (count answers by status: 2xx / 4xx other than 429 / 429 / 503 / other,
-- into the summary's "status"; off by default, a ``response`` callback costs wrk a little).
local M = {}
M.keys = tonumber(os.getenv("BENCH_KEYS") or "256")
M.read_prefix = os.getenv("BENCH_READ") or "/read/"
M.write_prefix = os.getenv("BENCH_WRITE") or "/write/"
M.write_method = os.getenv("BENCH_WRITE_METHOD") or "POST"
M.delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local auth = os.getenv("BENCH_AUTH")

function M.headers()
  local h = {}
  if auth and auth ~= "" then h["Authorization"] = auth end
  return h
end

local counter = 0
local threads = 0
local all_threads = {}
M.count_status = os.getenv("BENCH_STATUS") == "1"
M.status_classes = {"2xx", "4xx", "429", "503", "other"}
function M.setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
  table.insert(all_threads, thread)
end

-- Runs in each wrk thread: one counter per status class, read by ``done`` below.
function M.response(status, headers, body)
  local class = "other"
  if status >= 200 and status < 300 then class = "2xx"
  elseif status == 429 then class = "429"
  elseif status == 503 then class = "503"
  elseif status >= 400 and status < 500 then class = "4xx" end
  local name = "status_" .. class
  _G[name] = (_G[name] or 0) + 1
end

local function status_json()
  local parts = {}
  for _, class in ipairs(M.status_classes) do
    local total = 0
    for _, thread in ipairs(all_threads) do total = total + (thread:get("status_" .. class) or 0) end
    table.insert(parts, string.format('"%s":%d', class, total))
  end
  return '{' .. table.concat(parts, ",") .. '}'
end

function M.init(args)
  math.randomseed(os.time() * 100 + (thread_id or 0))
end

function M.read()
  local k = math.random(0, M.keys - 1)
  return wrk.format("GET", M.read_prefix .. "bench-" .. k, M.headers())
end

function M.write()
  counter = counter + 1
  local k = math.random(0, M.keys - 1)
  local path = M.write_prefix .. "bench-" .. k .. "/v" .. counter
  return wrk.format(M.write_method, path, M.headers())
end

function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d%s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
    e.status, e.timeout, M.count_status and (',"status":' .. status_json()) or ""))
end

-- A workload script's wrk callbacks: ``request`` and the shared setup, init,
-- done, and delay when BENCH_DELAY_MS paces the run.
function M.workload(request)
  _G.setup = M.setup
  _G.init = M.init
  _G.request = request
  if M.count_status then _G.response = M.response end
  if M.delay_ms > 0 then
    _G.delay = function() return M.delay_ms end
  end
  _G.done = M.done
end

return M
