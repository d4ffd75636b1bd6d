-- wrk script for benchmarks/load.py: sends the headers given in BENCH_HEADERS
-- ("Name: value" lines, so secrets stay out of files and argv) and, when done,
-- prints one line of JSON after the marker BENCH_RESULT.

local headers = os.getenv("BENCH_HEADERS") or ""
for name, value in headers:gmatch("([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %.0f, "duration_us": %.0f, "socket_errors": %.0f, '
      .. '"status_errors": %.0f, "timeouts": %.0f, "p50_us": %.1f, "p99_us": %.1f}\n',
    summary.requests, summary.duration, errors.connect + errors.read + errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99)))
end
