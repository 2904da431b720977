-- wrk script for the ingest benchmarks: one POST per request, a fresh dedup key per alert.
--
--   wrk -t1 -c64 -d10s -s bench/wrk_ingest.lua URL -- FORMAT BATCH PREFIX [INTEGRATION_KEY]
--
-- FORMAT: "oncall" (our webhook JSON: an object, or an array when BATCH > 1)
--         "alertmanager" (Alertmanager's v2 JSON array of alerts, POST /api/v2/alerts)
--         "amwebhook" (scenario 9: an Alertmanager v4 webhook notification, one group of BATCH alerts,
--                      a fresh fingerprint and instance per alert; for an `alertmanager` integration)
--         "mapped" (scenario 9: a JSON array of a sender's own alert objects that only a field
--                   mapping reads: labels, annotations, id, status, generatorURL, host.name)
-- BATCH:  alerts per request.  PREFIX: makes keys unique per run.
-- The same alert goes to every target: title, severity, dedup key, body, source_ref, host.
-- done() prints one line starting with BENCHJSON for the harness.
--
-- Answers by status (scenario 8, fair ingest): with BENCH_WRK_WINDOW="START,END" in the environment
-- (CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic()), every answer is counted as 2xx,
-- 429, 503 or other, in total and when it arrived inside [START, END), with the 429/503 answers that
-- carried Retry-After; done() then prints a second line, BENCHSTATUS {...}. Without the variable no
-- response() is defined, so wrk does not parse the answers' headers (the other scenarios' cost).

local thread_number = 0
local threads = {}

function setup(thread)
  thread_number = thread_number + 1
  thread:set("tid", thread_number)
  threads[thread_number] = thread
end

local COUNTS = {
  "ok_total", "r429_total", "r503_total", "other_total",
  "ok_window", "r429_window", "r503_window", "other_window", "retry_after",
}
local window = os.getenv("BENCH_WRK_WINDOW")

if window and window ~= "" then
  local ffi = require("ffi")
  ffi.cdef([[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]])
  local CLOCK_MONOTONIC = 1
  local ts = ffi.new("bench_timespec")
  local w_start, w_end = window:match("^([^,]+),([^,]+)$")
  w_start, w_end = tonumber(w_start), tonumber(w_end)
  for _, name in ipairs(COUNTS) do
    _G[name] = 0
  end

  function response(status, headers, _body)
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    local now = tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    local class
    if status >= 200 and status < 300 then
      class = "ok"
    elseif status == 429 then
      class = "r429"
    elseif status == 503 then
      class = "r503"
    else
      class = "other"
    end
    _G[class .. "_total"] = _G[class .. "_total"] + 1
    if now >= w_start and now < w_end then
      _G[class .. "_window"] = _G[class .. "_window"] + 1
    end
    if (status == 429 or status == 503) and (headers["Retry-After"] or headers["retry-after"]) then
      retry_after = retry_after + 1
    end
  end
end

local format, batch, prefix, counter, headers

function init(args)
  format = args[1] or "oncall"
  batch = tonumber(args[2] or "1")
  prefix = (args[3] or "w") .. "-" .. tostring(tid) .. "-"
  counter = 0
  headers = { ["Content-Type"] = "application/json" }
  if args[4] and args[4] ~= "" then
    headers["X-Integration-Key"] = args[4]
  end
end

local TITLE = "CPU usage critical on client-server-01"
local BODY = "CPU sustained at 98% for 5 minutes. Host: client-server-01."

local function oncall_alert(key, n)
  return '{"title":"' .. TITLE .. '","severity":"critical","dedup_key":"' .. key
    .. '","body":"' .. BODY .. '","source_ref":"alert-' .. n .. '","host":"client-server-01"}'
end

local function alertmanager_alert(key, n)
  return '{"labels":{"alertname":"' .. TITLE .. '","severity":"critical","dedup_key":"' .. key
    .. '","host":"client-server-01"},"annotations":{"description":"' .. BODY
    .. '","source_ref":"alert-' .. n .. '"}}'
end

-- Scenario 9 (sender_cost): what Prometheus rules carry, as Alertmanager's webhook sends it.
local GENERATOR = "http://prometheus:9090/graph?g0.expr=100+-+avg+by(instance)(rate(node_cpu_seconds_total"
  .. "%7Bmode%3D%22idle%22%7D%5B5m%5D))+*+100+%3E+95&g0.tab=1"
local SUMMARY = "CPU usage critical on client-server-01"
local DESCRIPTION = "CPU sustained at 98% for 5 minutes on client-server-01 (job node)."

local function amwebhook_alert(key, _n)
  return '{"status":"firing","labels":{"alertname":"HostHighCpuLoad","severity":"critical","instance":"'
    .. key .. ':9100","job":"node"},"annotations":{"summary":"' .. SUMMARY .. '","description":"'
    .. DESCRIPTION .. '"},"startsAt":"2026-01-05T10:00:00.000Z","endsAt":"0001-01-01T00:00:00Z",'
    .. '"generatorURL":"' .. GENERATOR .. '","fingerprint":"' .. key .. '"}'
end

local AM_GROUP_HEAD = '{"receiver":"oncall","status":"firing","alerts":['
local AM_GROUP_TAIL = '],"groupLabels":{"alertname":"HostHighCpuLoad"},"commonLabels":{"alertname":'
  .. '"HostHighCpuLoad","job":"node","severity":"critical"},"commonAnnotations":{},'
  .. '"externalURL":"http://alertmanager:9093","version":"4",'
  .. '"groupKey":"{}:{alertname=\\"HostHighCpuLoad\\"}","truncatedAlerts":0}'

local function mapped_alert(key, _n)
  return '{"id":"' .. key .. '","status":"firing","labels":{"alertname":"HostHighCpuLoad","severity":"crit",'
    .. '"instance":"' .. key .. ':9100","job":"node"},"annotations":{"summary":"' .. SUMMARY
    .. '","description":"' .. DESCRIPTION .. '"},"generatorURL":"' .. GENERATOR
    .. '","host":{"name":"client-server-01"}}'
end

local MAKERS = {
  oncall = oncall_alert,
  alertmanager = alertmanager_alert,
  amwebhook = amwebhook_alert,
  mapped = mapped_alert,
}

function request()
  local parts = {}
  local make = MAKERS[format] or oncall_alert
  for i = 1, batch do
    counter = counter + 1
    parts[i] = make(prefix .. counter, counter)
  end
  local body
  if format == "oncall" and batch == 1 then
    body = parts[1]
  elseif format == "amwebhook" then
    body = AM_GROUP_HEAD .. table.concat(parts, ",") .. AM_GROUP_TAIL
  else
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
  if window and window ~= "" then
    local parts = {}
    for i, name in ipairs(COUNTS) do
      local sum = 0
      for _, thread in ipairs(threads) do
        sum = sum + (thread:get(name) or 0)
      end
      parts[i] = string.format('"%s":%d', name, sum)
    end
    io.write("BENCHSTATUS {" .. table.concat(parts, ",") .. "}\n")
  end
end
