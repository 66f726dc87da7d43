-- wrk script for the wxkf benchmarks (see bench/wrk.py, which runs it).
--
--   wrk -t T -c C -d D -s bench/wrk.lua URL                      -- the URL, over and over
--   wrk -t T -c C -d D -s bench/wrk.lua URL -- FILE T             -- each line of FILE once per pass
--
-- FILE holds one request per line, "<path?query>\t<body>", POSTed as text/xml. Thread k of T takes
-- lines k, k+T, k+2T... so no two threads send the same line; a thread that runs out starts again
-- (counted as "wrapped", which means repeated requests). done() prints one line, "WRK_JSON {...}".

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local requests = nil
local count = 0
local next_index = 0
wrapped = 0

function init(args)
  if args[1] == nil then
    return
  end
  local nthreads = tonumber(args[2]) or 1
  local headers = { ["Content-Type"] = "text/xml" }
  requests = {}
  local line_no = 0
  for line in io.lines(args[1]) do
    if line_no % nthreads == id then
      local path, body = line:match("^([^\t]*)\t(.*)$")
      count = count + 1
      requests[count] = wrk.format("POST", path, headers, body)
    end
    line_no = line_no + 1
  end
end

function request()
  if requests == nil then
    return wrk.request()
  end
  next_index = next_index + 1
  if next_index > count then
    next_index = 1
    wrapped = wrapped + 1
  end
  return requests[next_index]
end

function done(summary, latency, _)
  local passes = 0
  for _, thread in ipairs(threads) do
    passes = passes + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"max": %d}, "wrapped": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    passes))
end
