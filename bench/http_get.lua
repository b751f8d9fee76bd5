-- bench/http_get.lua — wrk script for bench/http.sh: GET /v1/devices/{id}
-- of random devices (dev-0000 … dev-N-1), with a bearer token.
--   [BENCH_DELAY_MS=D] wrk … -s bench/http_get.lua URL -- TOKEN NDEVICES
-- D > 0 makes each connection wait D ms after each response before its
-- next request (wrk has no fixed-rate mode: connections × 1000/D bounds
-- the rate). Prints one RESULT line (latencies in µs) for the script.
local threads = {}

function setup(thread)
    thread:set("id", #threads + 1)
    table.insert(threads, thread)
end

function init(args)
    token = args[1]
    ndevices = tonumber(args[2])
    math.randomseed(1000 + id)
end

function request()
    local path = string.format("/v1/devices/dev-%04d", math.random(0, ndevices - 1))
    return wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
end

function response(status, headers, body)
    if status ~= 200 then
        bad = (bad or 0) + 1
    end
end

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then
    function delay()
        return pause
    end
end

function done(summary, latency, requests)
    local bad = 0
    for _, t in ipairs(threads) do
        bad = bad + (t:get("bad") or 0)
    end
    local s = summary.duration / 1e6
    io.write(string.format(
        "RESULT requests=%d seconds=%.2f rps=%.0f p50_us=%d p90_us=%d p99_us=%d p999_us=%d " ..
        "max_us=%d non200=%d socket_errors=%d\n",
        summary.requests, s, summary.requests / s, latency:percentile(50),
        latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
        bad, summary.errors.connect + summary.errors.read + summary.errors.write +
        summary.errors.timeout))
end
