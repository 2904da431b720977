-- wrk script for the ingest benchmarks: one POST per request, a fresh dedup key per alert.
--
--   wrk -t1 -c64 -d10s -s bench/wrk_ingest.lua URL -- FORMAT BATCH PREFIX [INTEGRATION_KEY]
--
-- FORMAT: "oncall" (our webhook JSON: an object, or an array when BATCH > 1)
--         "alertmanager" (Alertmanager's v2 JSON array of alerts, POST /api/v2/alerts)
-- BATCH:  alerts per request.  PREFIX: makes keys unique per run.
-- The same alert goes to every target: title, severity, dedup key, body, source_ref, host.
-- done() prints one line starting with BENCHJSON for the harness.

local thread_number = 0

function setup(thread)
  thread_number = thread_number + 1
  thread:set("tid", thread_number)
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

function request()
  local parts = {}
  local make = format == "alertmanager" and alertmanager_alert or oncall_alert
  for i = 1, batch do
    counter = counter + 1
    parts[i] = make(prefix .. counter, counter)
  end
  local body
  if format == "oncall" and batch == 1 then
    body = parts[1]
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
end
