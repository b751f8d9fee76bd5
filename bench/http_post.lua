-- bench/http_post.lua — wrk script for bench/http.sh: POST /v1/events of
-- one batch file, over and over (the events carry no idempotency id, so
-- every POST appends new events); NDJSON unless CONTENT_TYPE says otherwise.
--   wrk … -s bench/http_post.lua URL -- TOKEN BATCH_FILE EVENTS_PER_BATCH [CONTENT_TYPE]
-- Prints one RESULT line: requests, non-202 answers, events/s.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    local f = assert(io.open(args[2], "rb"))
    local body = f:read("*a")
    f:close()
    per_batch = tonumber(args[3])
    req = wrk.format("POST", "/v1/events", {
        ["Authorization"] = "Bearer " .. args[1],
        ["Content-Type"] = args[4] or "application/x-ndjson",
    }, body)
end

function request()
    return req
end

function response(status, headers, body)
    if status == 202 then
        ok = (ok or 0) + 1
    else
        bad = (bad or 0) + 1
        if (bad or 0) <= 3 then
            io.stderr:write("http_post.lua: status " .. status .. ": " .. body:sub(1, 200) .. "\n")
        end
    end
end

function done(summary, latency, requests)
    local ok, bad = 0, 0
    for _, t in ipairs(threads) do
        ok = ok + (t:get("ok") or 0)
        bad = bad + (t:get("bad") or 0)
    end
    local s = summary.duration / 1e6
    local per = tonumber(threads[1]:get("per_batch"))
    io.write(string.format(
        "RESULT requests=%d accepted=%d non202=%d seconds=%.2f events=%d events_per_s=%.0f " ..
        "p50_us=%d p99_us=%d\n",
        summary.requests, ok, bad, s, ok * per, ok * per / s, latency:percentile(50),
        latency:percentile(99)))
end
