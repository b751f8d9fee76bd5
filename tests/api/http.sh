#!/usr/bin/env bash
# http.sh — the HTTP/1.1 layer: keep-alive (curl reuses the connection,
# also after error answers), pipelining (many requests in one write on a
# raw socket, asynchronous ingest among them, answered in order), HTTP/1.0,
# the limits (413 for a body over 1 MiB and a batch over 16 MiB, exactly at
# the limit accepted, 431 for headers over 16 KiB), the timeouts (408 for
# slow headers and slow bodies, idle keep-alive connections closed), 400
# for malformed requests, the connection limit (503), and that the server
# keeps serving after each of these.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

echo '{"limits":{"header_timeout_ms":500,"body_timeout_ms":500,"idle_timeout_ms":1500}}' >"$CONFIG"
start_server
ING=$(token acme ingest)
READ=$(token acme read)
HEAD_TOKEN=$(token acme audit)
EV='{"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}'

split() { node "$API_HERE/http_split.js" <"$1"; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
# revive WHAT: after a check that may have killed the server, one that
# answers again (the same data directory).
revive() {
    if ! server_alive "$1"; then
        start_server
    fi
}

# ---------------------------------------------------------------- keep-alive

curl -sv -m 10 -H "Authorization: Bearer $READ" "$URL/healthz" "$URL/v1/devices" "$URL/v1/devices/none" "$URL/readyz" \
    -o /dev/null -o /dev/null -o /dev/null -o /dev/null 2>"$WORK/ka.err" || true
eq "curl reuses one connection for four GETs (one with a 404)" \
    "$(grep -c 'Re-using existing connection' "$WORK/ka.err")" 3
eq "one TCP connection was opened" "$(grep -c '^\* Connected to' "$WORK/ka.err")" 1
curl -sv -m 10 -H "Authorization: Bearer $ING" -H 'Content-Type: application/json' --data-binary "$EV" "$URL/v1/events" \
    --next -H "Authorization: Bearer $ING" -H 'Content-Type: application/json' --data-binary "[" "$URL/v1/events" \
    --next -H "Authorization: Bearer $READ" "$URL/v1/devices/d1?min_seq=1" -o "$WORK/ka.out" 2>"$WORK/ka2.err" >/dev/null || true
eq "POST, a rejected POST and a GET on one connection" "$(grep -c 'Re-using existing connection' "$WORK/ka2.err")" 2
check "the GET after them sees the POST" jq_ok '.item.device_id == "d1"' "$WORK/ka.out"

# ---------------------------------------------------------------- pipelining

crlf() { sed 's/$/\r/'; }
{
    printf 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n'
    printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$ING" "${#EV}" "$EV"
    printf 'GET /v1/log/head HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n' "$HEAD_TOKEN"
    printf 'GET /nope HTTP/1.1\r\nHost: t\r\n\r\n'
    nd=$(printf '%s\n%s\n' '{"type":"telemetry","payload":{"device_id":"p1","event_type":"status"}}' '{"type":"telemetry","payload":{"device_id":"p2","event_type":"status"}}')
    printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n' \
        "$ING" "$(printf '%s' "$nd" | wc -c)" "$nd"
    printf 'GET /v1/devices/p2?min_seq=4 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n' "$READ"
    printf 'GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'
} >"$WORK/pipe.req"
raw "$WORK/pipe.req" "$WORK/pipe.resp" 10
split "$WORK/pipe.resp" >"$WORK/pipe.json"
check "seven pipelined requests, seven answers in order" \
    jq_ok -s 'map(.status) == [200,202,200,404,202,200,200]' "$WORK/pipe.json"
check "the asynchronous POST is answered before the GET behind it, which sees it" \
    jq_ok -s '(.[1].body | fromjson) == {"seq":2} and (.[2].body | fromjson | .seq) == 2' "$WORK/pipe.json"
check "a chunked NDJSON batch in the pipeline" \
    jq_ok -s '(.[4].body | fromjson) == {"results":[{"line":1,"seq":3},{"line":2,"seq":4}]}' "$WORK/pipe.json"
check "the ?min_seq read in the pipeline" jq_ok -s '(.[5].body | fromjson | .item.device_id) == "p2"' "$WORK/pipe.json"
check "keep-alive until the request that says close" \
    jq_ok -s '(.[0:6] | map(.headers.connection) | unique) == ["keep-alive"] and .[6].headers.connection == "close"' "$WORK/pipe.json"
check "nothing after the last answer" jq_ok -s 'all(.[]; has("status") and (has("incomplete") | not))' "$WORK/pipe.json"

: >"$WORK/many.req"
for i in $(seq 1 60); do printf 'GET /v1/devices/n%02d HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n' "$i" "$READ" >>"$WORK/many.req"; done
printf 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' >>"$WORK/many.req"
raw "$WORK/many.req" "$WORK/many.resp" 10
check "61 pipelined requests in one write: answered in order" \
    jq_ok -s 'length == 61 and ([.[0:60][] | .body | fromjson | .error.message] == [range(1; 61) | "no devices entity n\(if . < 10 then "0" else "" end)\(.)"]) and .[60].status == 200' \
    < <(split "$WORK/many.resp")

printf 'GET /healthz HTTP/1.0\r\n\r\n' >"$WORK/h10.req"
raw "$WORK/h10.req" "$WORK/h10.resp" 5
check "HTTP/1.0 without keep-alive: answered, then closed" \
    jq_ok -s 'length == 1 and .[0].status == 200 and .[0].headers.connection == "close"' < <(split "$WORK/h10.resp")
printf 'GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /readyz HTTP/1.0\r\n\r\n' >"$WORK/h10ka.req"
raw "$WORK/h10ka.req" "$WORK/h10ka.resp" 5
check "HTTP/1.0 with Connection: keep-alive" \
    jq_ok -s 'map(.status) == [200,200] and .[0].headers.connection == "keep-alive" and .[1].headers.connection == "close"' < <(split "$WORK/h10ka.resp")

# ---------------------------------------------------------------- timeouts

printf 'GET /healthz HTTP/1.1\r\nHost: t\r\n' >"$WORK/slow.req"
t0=$(date +%s%N)
raw "$WORK/slow.req" "$WORK/slow.resp" 5
ms=$(ms_since "$t0")
check "headers not finished within header_timeout_ms: 408 and close" \
    jq_ok -s --argjson e "$(err timeout 'the request was not received in time')" \
    'length == 1 and .[0].status == 408 and .[0].reason == "Request Timeout" and (.[0].body | fromjson) == $e and .[0].headers.connection == "close"' \
    < <(split "$WORK/slow.resp")
check "the 408 came after the 500 ms header timeout (${ms} ms)" [ "$ms" -ge 450 ] && [ "$ms" -lt 4000 ]
check "the raw 408 status line" grep -q $'^HTTP/1.1 408 Request Timeout\r$' "$WORK/slow.resp"
printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"type":' "$ING" >"$WORK/slowbody.req"
t0=$(date +%s%N)
raw "$WORK/slowbody.req" "$WORK/slowbody.resp" 5
ms=$(ms_since "$t0")
check "a body not finished within body_timeout_ms: 408" \
    jq_ok -s 'length == 1 and .[0].status == 408 and .[0].headers.connection == "close"' < <(split "$WORK/slowbody.resp")
check "after ~500 ms (${ms} ms)" [ "$ms" -ge 450 ] && [ "$ms" -lt 4000 ]
printf 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n' >"$WORK/idle.req"
t0=$(date +%s%N)
raw "$WORK/idle.req" "$WORK/idle.resp" 6
ms=$(ms_since "$t0")
check "an idle keep-alive connection: answered, then closed quietly" \
    jq_ok -s 'length == 1 and .[0].status == 200 and .[0].headers.connection == "keep-alive"' < <(split "$WORK/idle.resp")
check "after the 1500 ms idle timeout (${ms} ms)" [ "$ms" -ge 1400 ] && [ "$ms" -lt 5000 ]
: >"$WORK/empty.req"
t0=$(date +%s%N)
raw "$WORK/empty.req" "$WORK/empty.resp" 6
ms=$(ms_since "$t0")
check "a connection that never sends is closed after the idle timeout, without an answer (${ms} ms)" \
    [ ! -s "$WORK/empty.resp" ] && [ "$ms" -ge 1400 ] && [ "$ms" -lt 5000 ]
revive "after the timeouts"

# ---------------------------------------------------------------- size limits
#
# [BUG-1]: every request the parser refuses (413 and 431 at the headers,
# 413 in a body, 400) leaves the server's loop spinning in http_resume,
# allocating without bound: it stops answering anyone. Each such check is
# followed by `revive`, which fails the check and restarts the server when
# it no longer answers.

too_large() { err too_large "the body is over the $1-byte limit" body; }
mk_json_body() { # mk_json_body SIZE > FILE: a valid event padded with spaces
    local pad=$(($1 - ${#EV}))
    { printf '%s' "$EV"; head -c "$pad" /dev/zero | tr '\0' ' '; }
}
mk_json_body $((1 << 20)) >"$WORK/1m.json"
post_file "$ING" application/json "$WORK/1m.json"
expect_jq "a JSON body of exactly 1 MiB is accepted" 202 '.seq > 0'
mk_json_body $(((1 << 20) + 1)) >"$WORK/1m1.json"
post_file "$ING" application/json "$WORK/1m1.json"
expect "a JSON body of 1 MiB + 1: 413" 413 "$(too_large 1048576)"
eq "413 closes the connection" "$(header Connection)" "close"
revive "[BUG-1] after a 413 (curl waited for 100-continue)"
# (raw: curl sending at once may see its write reset before it reads the
# 413 when the server closes with the body unread — reported, but timing
# dependent, so not checked here)
{
    printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n' \
        "$ING" $(((1 << 20) + 1))
    cat "$WORK/1m1.json"
} >"$WORK/1m1.req"
raw "$WORK/1m1.req" "$WORK/1m1.resp" 3
check "[BUG-1] a JSON body of 1 MiB + 1 sent at once: one 413, then close" \
    jq_ok -s --argjson e "$(too_large 1048576)" \
    'length == 1 and .[0].status == 413 and (.[0].body | fromjson) == $e and .[0].headers.connection == "close"' \
    < <(split "$WORK/1m1.resp")
revive "[BUG-1] after a 413 whose body was sent at once"
{
    printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n' \
        "$ING" $(((1 << 20) + 1))
    cat "$WORK/1m1.json"
    printf '\r\n0\r\n\r\n'
} >"$WORK/chunked.req"
raw "$WORK/chunked.req" "$WORK/chunked.resp" 3
check "[BUG-1] a chunked JSON body over 1 MiB: one 413, then close" \
    jq_ok -s --argjson e "$(too_large 1048576)" \
    'length == 1 and .[0].status == 413 and (.[0].body | fromjson) == $e and .[0].headers.connection == "close"' \
    < <(split "$WORK/chunked.resp")
revive "[BUG-1] after a chunked 413"
req POST /v1/webhooks/stripe/acme -H 'Stripe-Signature: t=1,v1=00' -H 'Content-Type: application/json' --data-binary "@$WORK/1m1.json"
expect "a webhook body of 1 MiB + 1: 413" 413 "$(too_large 1048576)"
revive "[BUG-1] after a webhook 413"

# Batches: 16 MiB and 65 536 events at most. Lines of 256 bytes. A 16 MiB
# body can take longer than the 500 ms body timeout above to arrive on a
# loaded machine (a 408 under TSan with other tests running): from here on
# the server has the default timeouts.
stop_server
echo '{}' >"$CONFIG"
start_server
line256() { # line256 N: N NDJSON events of exactly 256 bytes each (newline included)
    local l='{"type":"telemetry","payload":{"device_id":"bulk","event_type":"heartbeat","data":{"pad":"PAD"}}}'
    local pad
    pad=$(head -c $((255 - ${#l} + 3)) /dev/zero | tr '\0' x)
    awk -v n="$1" -v l="${l/PAD/$pad}" 'BEGIN { for (i = 0; i < n; i++) print l }'
}
line256 65535 >"$WORK/16m.ndjson"
head -c 256 /dev/zero | tr '\0' ' ' >>"$WORK/16m.ndjson"
eq "the batch file is exactly 16 MiB" "$(stat -c %s "$WORK/16m.ndjson")" $((16 << 20))
REQ_TIMEOUT=120 post_file "$ING" application/x-ndjson "$WORK/16m.ndjson" -H "Expect:"
expect_jq "an NDJSON batch of exactly 16 MiB (65 535 events) is accepted" 202 \
    '(.results | length) == 65535 and all(.results[]; has("seq"))'
line256 65536 >"$WORK/65536.ndjson"
eq "65 536 events of 256 bytes are 16 MiB too" "$(stat -c %s "$WORK/65536.ndjson")" $((16 << 20))
REQ_TIMEOUT=120 post_file "$ING" application/x-ndjson "$WORK/65536.ndjson" -H "Expect:"
expect_jq "[BUG-7] a batch of exactly 65 536 events (the documented maximum) is accepted" 202 \
    '(.results | length) == 65536 and all(.results[]; has("seq"))'
cp "$WORK/65536.ndjson" "$WORK/65537.ndjson"
printf '{}' >>"$WORK/65537.ndjson"
post_file "$ING" application/x-ndjson "$WORK/65537.ndjson"
expect "a batch of 16 MiB + 2 bytes: 413" 413 "$(too_large 16777216)"
revive "[BUG-1] after a batch 413"
awk 'BEGIN { for (i = 0; i < 65537; i++) print "{}" }' >"$WORK/65537b.ndjson"
post_file "$ING" application/x-ndjson "$WORK/65537b.ndjson"
expect "65 537 lines: 413" 413 "$(err too_large 'a batch holds at most 65536 events' body)"
post_file "$ING" application/msgpack "$WORK/65537.ndjson"
expect "a msgpack batch of 16 MiB + 2: 413" 413 "$(too_large 16777216)"
revive "[BUG-1] after a msgpack 413"

# ---------------------------------------------------------------- what must not hang the server [BUG-1]

req GET /healthz -H "X-Filler: $(head -c 17000 /dev/zero | tr '\0' a)"
expect "headers over 16 KiB: 431" 431 "$(err too_large 'the request line and headers are over 16384 bytes' headers)"
revive "[BUG-1] after a 431"
req GET "/v1/devices?x=$(head -c 8179 /dev/zero | tr '\0' a)" -H "Authorization: Bearer $READ"
expect "a request target of 8 KiB + 1: 431 naming it" 431 "$(err too_large 'the request target is over its 8192-byte limit' url)"
revive "[BUG-1] after a long request line"
req GET "/v1/devices?x=$(head -c 8178 /dev/zero | tr '\0' a)" -H "Authorization: Bearer $READ"
expect_status "a request target of exactly 8 KiB is read" 200
req GET /v1/devices -H "Authorization: Bearer $READ" -H "Accept: $(head -c 256 /dev/zero | tr '\0' a)"
expect "an Accept header over its 255 bytes: 431 naming it" 431 "$(err too_large 'the Accept header is over its 255-byte limit' Accept)"
req GET /v1/devices -H "Authorization: Bearer $READ" -H "Accept: $(head -c 255 /dev/zero | tr '\0' a)"
expect_status "an Accept header of 255 bytes is read" 200
printf 'BREW /healthz HTCPCP/1.0\r\nHost: t\r\n\r\n' >"$WORK/bad.req"
raw "$WORK/bad.req" "$WORK/bad.resp" 3
check "[BUG-1] a malformed request line: one 400, then close" \
    jq_ok -s --argjson e "$(err bad_request 'malformed HTTP request: invalid HTTP method')" \
    'length == 1 and .[0].status == 400 and (.[0].body | fromjson) == $e and .[0].headers.connection == "close"' \
    < <(split "$WORK/bad.resp")
revive "[BUG-1] after a malformed request line"
printf 'GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab' >"$WORK/dup-cl.req"
raw "$WORK/dup-cl.req" "$WORK/dup-cl.resp" 3
check "[BUG-1] two Content-Length headers: one 400" jq_ok -s 'length == 1 and .[0].status == 400' < <(split "$WORK/dup-cl.resp")
revive "[BUG-1] after two Content-Length headers"
printf 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nPOST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n' >"$WORK/bad2.req"
raw "$WORK/bad2.req" "$WORK/bad2.resp" 3
check "[BUG-1] a good request then a malformed one: 200, then one 400 and close" \
    jq_ok -s 'map(.status) == [200,400]' < <(split "$WORK/bad2.resp")
revive "[BUG-1] after a malformed second request"

# ---------------------------------------------------------------- the connection limit

stop_server
echo '{"limits":{"max_connections":2}}' >"$CONFIG"
start_server
# open_idle: an idle connection the server accepted (not one it refused
# because start_server's own /healthz connection was not closed yet); its
# fd in IDLE_FD.
open_idle() {
    local fd
    for _ in $(seq 1 20); do
        exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
        if read -r -t 0.3 -u "$fd" _; then # answered: refused, try again
            exec {fd}>&-
            sleep 0.1
            continue
        fi
        IDLE_FD=$fd
        return 0
    done
    die "cannot open an idle connection"
}
open_idle
c1=$IDLE_FD
open_idle
c2=$IDLE_FD
req GET /healthz
expect "[BUG-8] a third connection over max_connections=2: 503 (curl reads it)" 503 "$(err too_many_connections 'connection limit reached')"
eq "[BUG-8] 503 says when to retry" "$(header Retry-After)" 1
: >"$WORK/none.req"
raw "$WORK/none.req" "$WORK/busy.resp" 3
check "[BUG-8] the 503 body is as long as its Content-Length says" \
    jq_ok -s --argjson e "$(err too_many_connections 'connection limit reached')" \
    'length == 1 and .[0].status == 503 and (.[0] | has("incomplete") | not) and (.[0].body | fromjson) == $e' < <(split "$WORK/busy.resp")
exec {c1}>&-
for _ in $(seq 1 20); do
    sleep 0.1
    req GET /healthz
    [ "$STATUS" != 200 ] || break
done
expect "once one closed, a new connection is served" 200 '{"status":"ok"}'
exec {c2}>&-
METRICS=$(token acme metrics)
conns_one() { curl -s -m 2 -H "Authorization: Bearer $METRICS" "$URL/metrics" | grep -qx 'cairn_http_connections 1'; }
wait_until "metrics count the connections (only the one asking, once the others closed)" 5 conns_one &&
    pass "metrics count the connections"
stop_server
finish
