#!/usr/bin/env bash
# protocol.sh — HTTP/1.1 details a client relies on: Expect: 100-continue
# (100 Continue when the request will be accepted, the final error at once
# when it will not, 417 for other expectations), single-valued request
# headers sent twice (Authorization, Content-Type, Content-Length,
# Last-Event-ID, Stripe-Signature: 400, never concatenated; Accept values
# joined), and the lingering close after an error answered before the
# request was read (the client reads the error; the server drops the rest
# of the input, and ends the connection itself when the client does not).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

start_server
ING=$(token acme ingest)
READ=$(token acme read)
EV='{"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}'
split() { node "$API_HERE/http_split.js" <"$1"; }

# ---------------------------------------------------------------- Expect: 100-continue

# expect_head HEADERS-WITHOUT-BLANK-LINE: opens a connection on fd $EFD,
# sends the head, and reads what the server says within 2 s without any
# body sent (into $WORK/early).
expect_head() {
    exec {EFD}<>"/dev/tcp/127.0.0.1/$PORT"
    printf '%s\r\n\r\n' "$1" >&"$EFD"
    { timeout 2 cat <&"$EFD" 2>/dev/null || true; } | head -c 65536 >"$WORK/early"
}

big=$(head -c 600 /dev/zero | tr '\0' ' ')$EV # 672 bytes: JSON with leading blanks
hdr=$(printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue' "$ING" "${#big}")
exec {EFD}<>"/dev/tcp/127.0.0.1/$PORT"
printf '%s\r\n\r\n' "$hdr" >&"$EFD"
line=
IFS= read -r -t 3 line <&"$EFD" || true
eq "Expect: 100-continue, an acceptable request: 100 Continue before the body" "$line" $'HTTP/1.1 100 Continue\r'
IFS= read -r -t 1 line <&"$EFD" || true
printf '%sGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' "$big" >&"$EFD"
{ timeout 5 cat <&"$EFD" 2>/dev/null || true; } >"$WORK/cont"
exec {EFD}>&-
split "$WORK/cont" >"$WORK/cont.json"
check "... then the body is taken: 202, and the connection serves the next request" \
    jq_ok -s 'length == 2 and .[0].status == 202 and (.[0].body | fromjson) == {"seq":1} and .[1].status == 200' "$WORK/cont.json"

# Refusals come at once, before any body, and close the connection.
nohdr=$(printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue')
expect_head "$nohdr"
exec {EFD}>&-
split "$WORK/early" >"$WORK/early.json"
check "Expect: 100-continue without a token: 401 at once, no 100, connection closed" \
    jq_ok -s 'length == 1 and .[0].status == 401 and .[0].headers.connection == "close" and (.[0].body | fromjson) == {"error":{"code":"unauthorized","message":"a bearer token is required","field":"Authorization"}}' "$WORK/early.json"
expect_head "$(printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue' "$READ")"
exec {EFD}>&-
check "Expect: 100-continue with a token whose roles do not allow it: 403 at once" \
    jq_ok -s 'length == 1 and .[0].status == 403 and (.[0].body | fromjson).error.code == "forbidden"' <(split "$WORK/early")
expect_head "$(printf 'POST /v1/nope HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Length: 5000\r\nExpect: 100-continue' "$ING")"
exec {EFD}>&-
check "Expect: 100-continue to an unknown route: 404 at once" \
    jq_ok -s 'length == 1 and .[0].status == 404' <(split "$WORK/early")
expect_head "$(printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nExpect: 100-continue' "$ING")"
exec {EFD}>&-
check "Expect: 100-continue over the body limit: 413 at once" \
    jq_ok -s 'length == 1 and .[0].status == 413' <(split "$WORK/early")
expect_head "$(printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 5\r\nExpect: tea' "$ING")"
exec {EFD}>&-
check "an unknown expectation: 417" \
    jq_ok -s 'length == 1 and .[0].status == 417 and (.[0].body | fromjson) == {"error":{"code":"expectation_failed","message":"only Expect: 100-continue is supported","field":"Expect"}}' <(split "$WORK/early")

# curl (7.88) sends Expect: 100-continue for bodies over 1 MiB and waits for
# the 100 (here up to 3 s) before sending the body: an NDJSON batch.
awk 'BEGIN { for (i = 0; i < 15000; i++) printf "{\"type\":\"telemetry\",\"payload\":{\"device_id\":\"e%05d\",\"event_type\":\"status\"}}\n", i }' >"$WORK/batch.ndjson"
t0=$(date +%s%N)
post_file "$ING" application/x-ndjson "$WORK/batch.ndjson" --expect100-timeout 3 -v
ms=$((($(date +%s%N) - t0) / 1000000))
expect_jq "curl with Expect: 100-continue: the batch is taken" 202 '(.results | length) == 15000 and .results[-1].seq == 15001'
check "curl sent Expect: 100-continue" grep -qi '^> Expect: 100-continue' "$WORK/resp.err"
check "curl got 100 Continue" grep -q '^< HTTP/1.1 100 Continue' "$WORK/resp.err"
check "curl did not wait out its 3 s expect timeout (${ms} ms)" [ "$ms" -lt 2500 ]
t0=$(date +%s%N)
req POST /v1/events -H 'Content-Type: application/x-ndjson' --data-binary "@$WORK/batch.ndjson" --expect100-timeout 3 -v
ms=$((($(date +%s%N) - t0) / 1000000))
expect "curl with Expect and no token" 401 "$(err unauthorized 'a bearer token is required' Authorization)"
check "... answered at once, before the body (${ms} ms)" [ "$ms" -lt 2500 ]
check "... so curl sent none of it" bash -c "! grep -q 'completely sent off' '$WORK/resp.err'"

# ---------------------------------------------------------------- duplicate headers

dup() { err duplicate_header "the $1 header may appear only once" "$1"; }
req GET /v1/devices -H "Authorization: Bearer $READ" -H "Authorization: Bearer $READ"
expect "Authorization twice (even the same value): 400" 400 "$(dup Authorization)"
eq "... and the connection closes" "$(header Connection)" "close"
req GET /v1/devices -H "Authorization: Bearer $READ" -H "Authorization: Bearer x"
expect "Authorization twice, a bad one second: 400" 400 "$(dup Authorization)"
post_json "$ING" "$EV" -H 'Content-Type: application/json'
expect "Content-Type twice: 400" 400 "$(dup Content-Type)"
req POST /v1/events -H "Authorization: Bearer $ING" -H 'Content-Type: application/x-ndjson' \
    -H 'Content-Type: application/json' --data-binary "$EV"
expect "Content-Type twice, different values: 400" 400 "$(dup Content-Type)"
printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n%s' \
    "$ING" "${#EV}" "${#EV}" "$EV" >"$WORK/cl2.req"
raw "$WORK/cl2.req" "$WORK/cl2.resp" 3
# (http_parser itself refuses a second Content-Length, before the header
# callbacks see it; the answer names it as any repeated header.)
check "Content-Length twice: 400 duplicate_header, nothing appended" \
    jq_ok -s --argjson e "$(dup Content-Length)" 'length == 1 and .[0].status == 400 and (.[0].body | fromjson) == $e' \
    <(split "$WORK/cl2.resp")
get "$READ" "/v1/streams/devices" -H 'Last-Event-ID: 1' -H 'Last-Event-ID: 5'
expect "Last-Event-ID twice: 400" 400 "$(dup Last-Event-ID)"
req POST /v1/webhooks/stripe/acme -H 'Content-Type: application/json' \
    -H 'Stripe-Signature: t=1,v1=00' -H 'Stripe-Signature: t=2,v1=00' --data-binary '{}'
expect "Stripe-Signature twice: 400" 400 "$(dup Stripe-Signature)"
get "$READ" /v1/devices -H 'Accept: text/plain' -H 'Accept: application/json'
expect_status "Accept twice is a list, not an error" 200
HEAD_TOKEN=$(token acme audit)
eq "nothing was appended by the refused requests" "$(head_seq)" 15001

# ---------------------------------------------------------------- lingering close

# An error answered before the request was read: 413 from the headers
# while the client still sends a 3 MiB body. The client keeps writing
# after the answer; the server reads and drops the rest (no reset), so
# the client, reading only after it wrote everything, gets the 413 and
# then the end of the stream.
head -c 3145728 /dev/zero | tr '\0' ' ' >"$WORK/3m"
printf 'POST /v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n' "$ING" >"$WORK/413.req"
node "$API_HERE/slow_reader.js" "$PORT" "$WORK/413.req" 1500 "$WORK/3m" >"$WORK/413.resp" 2>"$WORK/413.err"
check "413 before the body: the client reads the answer after sending the body" \
    jq_ok -s 'length == 1 and .[0].status == 413 and .[0].headers.connection == "close"' <(split "$WORK/413.resp")
check "... and the connection ended with a close, not a reset ($(cat "$WORK/413.err"))" \
    [ ! -s "$WORK/413.err" ]
# A client that neither sends nor closes after the error: the server ends
# the connection itself after its linger time (2 s).
exec {EFD}<>"/dev/tcp/127.0.0.1/$PORT"
printf 'GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n' >&"$EFD"
t0=$(date +%s%N)
{ timeout 6 cat <&"$EFD" 2>/dev/null || true; } >"$WORK/400.resp"
ms=$((($(date +%s%N) - t0) / 1000000))
exec {EFD}>&-
check "a malformed request: 400" jq_ok -s 'length == 1 and .[0].status == 400' <(split "$WORK/400.resp")
check "the client sees the end of the stream at once (write side shut: ${ms} ms)" [ "$ms" -lt 1500 ]
conns_one() { curl -s -m 2 -H "Authorization: Bearer $(token acme metrics)" "$URL/metrics" | grep -qx 'cairn_http_connections 1'; }
wait_until "the server closed the lingering connection after its linger time" 6 conns_one &&
    pass "the lingering connection was closed by the server"

server_alive "after the protocol checks"
stop_server
finish
