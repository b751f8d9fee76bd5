#!/usr/bin/env bash
# routes.sh — every route of the HTTP API, its success and its error
# answers, compared as exact JSON where the values are deterministic:
# health, readiness, metrics, 404/405/415, single and batch ingest (JSON,
# NDJSON, msgpack) with every kind of rejection, duplicates and conflicts,
# schemas, the views (filters, cursor paging), derived stream pages, the
# audit log routes, and ?min_seq read-your-writes (waiting, 504).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

T1='"time":"2026-11-21T10:00:00Z"'
T2='"time":"2026-11-21T10:05:00Z"'
start_server
ING=$(token acme ingest)
READ=$(token acme read)
AUD=$(token acme audit)
ALL=$(token acme ingest,read,audit)
HEAD_TOKEN=$(token acme audit)

# ---------------------------------------------------------------- health, readiness, metrics, routing

req GET /healthz
expect "healthz" 200 '{"status":"ok"}'
eq "healthz content type" "$(header Content-Type)" "application/json"
eq "healthz keeps the connection" "$(header Connection)" "keep-alive"
METRICS=$(token acme metrics)
req GET /readyz
expect "readyz on an empty log" 200 '{"ready":true}'
req GET /readyz -H "Authorization: Bearer $METRICS"
expect "readyz with a metrics token" 200 '{"ready":true,"log_head":0,"checkpoint":0}'
req GET /metrics -H "Authorization: Bearer $METRICS"
expect_status "metrics with a metrics token" 200
eq "metrics content type" "$(header Content-Type)" "text/plain; version=0.0.4"
check "metrics: log head gauge" grep -qx 'cairn_log_head_seq 0' <<<"$BODY"
req POST /healthz
expect "POST /healthz" 405 "$(err method_not_allowed 'POST is not allowed on this path')"
req GET /nope
expect "unknown path" 404 "$(err not_found 'no route for this path')"
get "$ALL" /v1/nope
expect "unknown /v1 path" 404 "$(err not_found 'no route for this path')"
get "$ALL" /v1/devices/a/b
expect "too many segments" 404 "$(err not_found 'no route for this path')"
req DELETE /v1/devices -H "Authorization: Bearer $ALL"
expect "DELETE on a view" 405 "$(err method_not_allowed 'DELETE is not allowed on this path')"
req GET /v1/events -H "Authorization: Bearer $ALL"
expect "GET /v1/events" 405 "$(err method_not_allowed 'GET is not allowed on this path')"
get "$ALL" /v1/devices/%zz --path-as-is
expect "undecodable path" 400 "$(err bad_request 'the request path cannot be decoded' path)"

# ---------------------------------------------------------------- ingest: one JSON event

post_json "$ING" "{\"type\":\"telemetry\",\"id\":\"m-1\",$T1,\"payload\":{\"device_id\":\"d1\",\"event_type\":\"status\",\"status\":\"online\",\"battery\":50}}"
expect "one event: 202 with its seq" 202 '{"seq":1}'
post_json "$ING" "{\"type\":\"telemetry\",\"id\":\"m-1\",$T1,\"payload\":{\"device_id\":\"d1\",\"event_type\":\"status\",\"status\":\"online\",\"battery\":50}}"
expect "the same id again: 200 duplicate" 200 '{"seq":1,"duplicate":true}'
req POST /v1/events -H "Authorization: Bearer $ING" -H 'Content-Type: application/json; charset=utf-8' \
    --data-binary "{\"type\":\"telemetry\",\"tenant\":\"acme\",$T1,\"payload\":{\"device_id\":\"d2\",\"event_type\":\"status\",\"status\":\"offline\",\"battery\":10}}"
expect "explicit own tenant, charset parameter" 202 '{"seq":2}'
post_json "$ING" "{\"type\":\"telemetry\",$T1,\"payload\":{\"device_id\":\"dev 3\",\"event_type\":\"status\",\"status\":\"online\",\"battery\":50}}"
expect "a key with a space" 202 '{"seq":3}'

req POST /v1/events -H "Authorization: Bearer $ING" -H 'Content-Type: text/plain' \
    --data-binary '{"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}'
expect "text/plain: 415" 415 "$(err unsupported_media_type 'send application/json, application/x-ndjson or application/msgpack' Content-Type)"
post_json "$ING" '{"type": "telemetry",'
expect_jq "truncated JSON: invalid_json" 400 \
    '.error.code == "invalid_json" and (.error.message | startswith("not valid JSON at byte ")) and (.error | has("field") | not)'
post_json "$ING" '[1,2]'
expect "an array: not_object" 400 "$(err not_object 'an event must be a JSON object')"
post_json "$ING" '{"type":"telemetry","tennant":"acme","payload":{"device_id":"d1","event_type":"status"}}'
expect "a misspelt field: unknown_field" 400 \
    "$(err unknown_field 'unknown field; an event has type, tenant, key, id, time, expected_seq and payload' /tennant)"
post_json "$ING" '{"type":"nope","payload":{}}'
expect_jq "unknown type" 400 '.error.code == "unknown_type" and .error.field == "/type" and (.error.message | startswith("unknown type nope"))'
post_json "$ING" '{"type":"tick","payload":{"interval_ms":5}}'
expect "a producer tick: reserved_type" 400 "$(err reserved_type 'type tick is appended by the engine only' /type)"
post_json "$ING" '{"type":"telemetry","payload":{"device_id":"d1"}}'
expect "schema: missing_field" 400 "$(err missing_field 'is required' /payload/event_type)"
post_json "$ING" '{"type":"telemetry","payload":{"device_id":"d1","event_type":"status","battery":101}}'
expect "schema: out_of_range" 400 "$(err out_of_range 'must be <= 100' /payload/battery)"
post_json "$ING" '{"type":"telemetry"}'
expect "no payload" 400 "$(err missing_field 'payload is required' /payload)"
post_json "$ING" '{"type":"telemetry","time":"yesterday","payload":{"device_id":"d1","event_type":"status"}}'
expect_jq "bad time: invalid_time" 400 '.error.code == "invalid_time" and .error.field == "/time"'
post_json "$ING" '{"type":"telemetry","tenant":"globex","payload":{"device_id":"d1","event_type":"status"}}'
expect "another tenant: 403" 403 "$(err forbidden 'this token may only write tenant acme' /tenant)"
post_json "$ING" "{\"type\":\"telemetry\",\"expected_seq\":0,$T2,\"payload\":{\"device_id\":\"d1\",\"event_type\":\"status\"}}"
expect "expected_seq conflict: 409 with actual_seq" 409 \
    '{"error":{"code":"conflict","field":"/expected_seq","message":"the last event of this tenant and key is seq 1","actual_seq":1}}'
get "$AUD" /v1/log/head
eq "rejected inputs appended nothing" "$(jq -r .seq <<<"$BODY")" 3
post_json "$ING" "{\"type\":\"telemetry\",\"expected_seq\":1,$T2,\"payload\":{\"device_id\":\"d1\",\"event_type\":\"reading\",\"data\":{\"temp\":21.5}}}"
expect "expected_seq matching: 202" 202 '{"seq":4}'
post_json "$ING" ''
expect_jq "empty body" 400 '.error.code == "invalid_json"'

# ---------------------------------------------------------------- ingest: batches

good() { echo "{\"type\":\"order\",$T1,\"id\":\"$1\",\"payload\":{\"order_id\":\"$2\",\"event_type\":\"$3\"}}"; }
{
    good b-1 o-skip order.created
    echo '{"type":"location","payload":{"device_id":"d1","lat":95,"lon":13.4}}'
    echo "{\"type\":\"telemetry\",\"id\":\"m-1\",$T1,\"payload\":{\"device_id\":\"d1\",\"event_type\":\"status\",\"status\":\"online\",\"battery\":50}}"
    echo '{"type" "telemetry"}'
    echo '{"type":"telemetry","tenant":"globex","payload":{"device_id":"g","event_type":"status"}}'
    echo "{\"type\":\"order\",$T2,\"id\":\"b-2\",\"payload\":{\"order_id\":\"o-skip\",\"event_type\":\"order.delivered\"}}"
} >"$WORK/batch.ndjson"
post_file "$ING" application/x-ndjson "$WORK/batch.ndjson"
expect_jq "NDJSON batch: one result per line" 202 '
    (.results | length) == 6 and
    .results[0] == {"line":1,"seq":5} and
    .results[1] == {"line":2,"error":{"code":"out_of_range","field":"/payload/lat","message":"must be <= 90"}} and
    .results[2] == {"line":3,"seq":1,"duplicate":true} and
    (.results[3].line == 4 and .results[3].error.code == "invalid_json" and .results[3].error.field == "") and
    .results[4] == {"line":5,"error":{"code":"forbidden","field":"/tenant","message":"this token may only write tenant acme"}} and
    .results[5] == {"line":6,"seq":6}'

printf '%s\n' '{"type":"nope","payload":{}}' '{"type":"tick","payload":{"interval_ms":1}}' >"$WORK/bad.ndjson"
post_file "$ING" application/x-ndjson "$WORK/bad.ndjson"
expect_jq "NDJSON batch with nothing valid: 400" 400 \
    '(.results | map(.error.code)) == ["unknown_type","reserved_type"] and (.results | map(.line)) == [1,2]'

# Blank lines: `cairn append` numbers results by the line they came from,
# and the README promises the same shape over HTTP.
printf '%s\n\n%s\n' "$(good b-3 o-2 order.created)" \
    '{"type":"telemetry","payload":{"device_id":"x","event_type":"status","battery":101}}' >"$WORK/blank.ndjson"
post_file "$ING" application/x-ndjson "$WORK/blank.ndjson"
expect_jq "[BUG-3] NDJSON results carry the physical line number (after a blank line)" 202 \
    '.results == [{"line":1,"seq":7},{"line":3,"error":{"code":"out_of_range","field":"/payload/battery","message":"must be <= 100"}}]'
if command -v node >/dev/null; then
    {
        good b-4 o-3 order.created
        echo "{\"type\":\"location\",$T2,\"payload\":{\"device_id\":\"d1\",\"lat\":52.5,\"lon\":13.4,\"speed\":3.5}}"
        echo '{"type":"location","payload":{"device_id":"d1","lat":-91,"lon":0}}'
    } | node "$API_HERE/msgpack.js" >"$WORK/batch.msgpack"
    post_file "$ING" application/msgpack "$WORK/batch.msgpack"
    expect_jq "msgpack batch" 202 \
        '.results == [{"line":1,"seq":8},{"line":2,"seq":9},{"line":3,"error":{"code":"out_of_range","field":"/payload/lat","message":"must be >= -90"}}]'
else
    fail "node is required for the msgpack batch"
fi
# A value that frames but is no input (an integer map key) is one refused
# line, and the batch goes on; bytes that do not frame (0xc1 is no msgpack
# type) end it with a last refused line. b-4 again: a duplicate of seq 8.
if command -v node >/dev/null; then
    good b-4 o-3 order.created | node "$API_HERE/msgpack.js" >"$WORK/dup.msgpack"
    { cat "$WORK/dup.msgpack"; printf '\x81\x01\x01'; cat "$WORK/dup.msgpack"; printf '\xc1'; } >"$WORK/mixed.msgpack"
    post_file "$ING" application/msgpack "$WORK/mixed.msgpack"
    expect_jq "msgpack batch: a framed bad value refused alone, an unframed rest refused last" 202 \
        '.results == [{"line":1,"seq":8,"duplicate":true},{"line":2,"error":{"code":"wrong_type","field":"","message":"map keys must be strings"}},{"line":3,"seq":8,"duplicate":true},{"line":4,"error":{"code":"invalid_msgpack","field":"","message":"not a complete msgpack value"}}]'
fi
printf '\x81\xa4type' >"$WORK/trunc.msgpack"
post_file "$ING" application/msgpack "$WORK/trunc.msgpack"
expect_jq "truncated msgpack: 400 with a per-line error" 400 '(.results | length) == 1 and .results[0].line == 1 and (.results[0].error.code | type) == "string"'
# An array32 counting 2^32-1 items in a five-byte body, and a map32 as
# large inside an event: refused as malformed, without trying to allocate
# their items first (msgpack-c's unpacker asked for 128 GiB).
printf '\xdd\xff\xff\xff\xff' >"$WORK/huge.msgpack"
post_file "$ING" application/msgpack "$WORK/huge.msgpack"
expect_jq "msgpack array counting more items than the body holds: 400" 400 \
    '.results == [{"line":1,"error":{"code":"invalid_msgpack","field":"","message":"not a complete msgpack value"}}]'
printf '\x81\xa4type\xdf\xff\xff\xff\xff\xa1a\x01' >"$WORK/huge.msgpack"
post_file "$ING" application/msgpack "$WORK/huge.msgpack"
expect_jq "msgpack map counting more pairs than the body holds: 400" 400 \
    '.results == [{"line":1,"error":{"code":"invalid_msgpack","field":"","message":"not a complete msgpack value"}}]'

# ---------------------------------------------------------------- schemas

want_types=$(cd "$CAIRN_SCHEMAS" && ls -1 *.json | sed 's/\.json$//' | sort | jq -R . | jq -sc '{types: .}')
get "$READ" /v1/schemas
expect "schemas: every input type" 200 "$want_types"
get "$AUD" /v1/schemas/telemetry
expect "schema of telemetry is the file" 200 "$(cat "$CAIRN_SCHEMAS/telemetry.json")"
eq "schema content type" "$(header Content-Type)" "application/schema+json"
get "$ING" /v1/schemas/nope
expect "unknown schema" 404 "$(err not_found 'no schema for type nope' type)"

# ---------------------------------------------------------------- views

D1='{"device_id":"d1","tenant":"acme","online":true,"status":"online","battery":50,"first_seen":"2026-11-21T10:00:00Z","last_seen":"2026-11-21T10:05:00Z","position":{"lat":52.5,"lon":13.4,"time":"2026-11-21T10:05:00Z"},"speed":3.5,"readings":{"temp":21.5},"counts":{"telemetry":2,"location":1},"last_seq":9}'
get "$READ" '/v1/devices/d1?min_seq=9'
expect_jq "device d1" 200 '.seq >= 9 and .item == $d' --argjson d "$D1"
get "$READ" '/v1/devices/dev%203'
expect_jq "a percent-encoded key" 200 '.item.device_id == "dev 3" and .item.battery == 50'
get "$READ" /v1/devices/nope
expect "unknown device" 404 "$(err not_found 'no devices entity nope')"
get "$READ" '/v1/devices?min_seq=9'
expect_jq "devices list" 200 '.seq >= 9 and (.items | map(.device_id)) == ["d1","d2","dev 3"] and .next_cursor == null'
get "$READ" '/v1/devices?status=online'
expect_jq "filter on a string" 200 '(.items | map(.device_id)) == ["d1","dev 3"]'
get "$READ" '/v1/devices?battery=10'
expect_jq "filter on a number" 200 '(.items | map(.device_id)) == ["d2"]'
get "$READ" '/v1/devices?online=true&status=offline'
expect_jq "two filters (a boolean)" 200 '(.items | map(.device_id)) == ["d2"]'
get "$READ" '/v1/devices?status=online&battery=10'
expect_jq "filters matching nothing" 200 '.items == [] and .next_cursor == null'
get "$READ" '/v1/devices?nosuch=1'
expect_jq "a filter on an absent field" 200 '.items == []'
ids=() cursor='' pages=0
while :; do
    get "$READ" "/v1/devices?limit=1${cursor:+&cursor=$cursor}"
    [ "$STATUS" = 200 ] || break
    ids+=("$(jq -r '.items[].device_id' <<<"$BODY")")
    cursor=$(jq -r '.next_cursor // empty' <<<"$BODY")
    pages=$((pages + 1))
    [ -n "$cursor" ] && [ "$pages" -lt 10 ] || break
done
eq "cursor paging with limit=1 visits every device once" "${ids[*]}" "d1 d2 dev 3"
get "$READ" '/v1/devices?cursor=abc'
expect "a cursor that is not hex" 400 "$(err invalid_parameter 'the cursor is not one this API gave' cursor)"
get "$READ" '/v1/devices?limit=1001'
expect "limit over 1000" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"
get "$READ" '/v1/devices?limit=-1'
expect "negative limit" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"
get "$READ" '/v1/devices?limit=%zz'
expect "a limit with a bad escape" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"
get "$READ" '/v1/devices?cursor=%zz'
expect "a cursor with a bad escape" 400 "$(err invalid_parameter 'the cursor is not one this API gave' cursor)"
get "$READ" '/v1/orders/o-skip'
expect_jq "orders view item" 200 '.item.order_id == "o-skip" and .item.tenant == "acme"'
get "$READ" '/v1/orders'
expect_jq "orders view list" 200 '(.items | map(.order_id)) == ["o-2","o-3","o-skip"]'
get "$READ" '/v1/subscriptions'
expect_jq "an empty view" 200 '.items == [] and .next_cursor == null and (.seq | type) == "number"'
get "$READ" '/v1/subscriptions/cus_1'
expect "an entity of an empty view" 404 "$(err not_found 'no subscriptions entity cus_1')"

# ---------------------------------------------------------------- derived streams

OS='{"stream":"orders","dseq":1,"cause":6,"type":"order.invalid_transition","tenant":"acme","key":"o-skip","time":"2026-11-21T10:05:00Z","payload":{"order_id":"o-skip","from":"created","to":"delivered","reason":"delivered skips confirmed","event_type":"order.delivered"}}'
get "$READ" /v1/streams
expect_jq "streams list" 200 '
    (.streams[] | select(.name == "orders")) == {"name":"orders","head":1,"types":["order.invalid_transition"]} and
    (.streams[] | select(.name == "devices")) == {"name":"devices","head":0,"types":["device.online","device.offline"]} and
    (.streams[] | select(.name == "subscriptions")) == {"name":"subscriptions","head":0,"types":["payment.failed","subscription.canceled"]}'
get "$READ" /v1/streams/orders
expect_jq "stream page" 200 '.events == [$e] and .next == 2 and .seq >= 6' --argjson e "$OS"
get "$READ" '/v1/streams/orders?from=2'
expect_jq "stream page from past the head" 200 '.events == [] and .next == 2'
get "$READ" '/v1/streams/orders?type=order.invalid_transition,other&key=o-skip'
expect_jq "stream page: type and key filters" 200 '.events == [$e]' --argjson e "$OS"
get "$READ" '/v1/streams/orders?type=other'
expect_jq "stream page: a type filter matching nothing" 200 '.events == [] and .next == 2'
get "$READ" '/v1/streams/orders?key=o-2'
expect_jq "stream page: a key filter matching nothing" 200 '.events == []'
# A filter that does not decode is refused, not dropped (which would return
# the whole stream).
get "$READ" "/v1/streams/orders?key=$(printf 'k%.0s' $(seq 257))"
expect "stream page: a key over 256 bytes" 400 "$(err invalid_parameter 'key must be at most 256 bytes, percent-encoded, without NUL' key)"
get "$READ" '/v1/streams/orders?type=order.%zz'
expect "stream page: a type with a bad escape" 400 "$(err invalid_parameter 'type must be at most 1023 bytes, percent-encoded, without NUL' type)"
get "$READ" '/v1/streams/orders?key=o%00' -H 'Accept: text/event-stream'
expect "SSE: a key with a NUL" 400 "$(err invalid_parameter 'key must be at most 256 bytes, percent-encoded, without NUL' key)"
# The same holds for a handler's own route parameters: a dropped fence
# filter would answer every hit of the device.
get "$READ" "/v1/geofence/hits?device=d-1&fence=$(printf 'f%.0s' $(seq 600))"
expect "handler route: a fence filter over its buffer" 400 \
    "$(err invalid_parameter 'fence is too long for this route, or has a bad %-escape or a NUL' fence)"
get "$READ" '/v1/nearby?lat=1&lon=2&radius_m=10&limit=%zz'
expect "handler route: a limit with a bad escape" 400 \
    "$(err invalid_parameter 'limit is too long for this route, or has a bad %-escape or a NUL' limit)"
get "$READ" /v1/streams/nope
expect "unknown stream" 404 "$(err not_found 'no stream nope' stream)"
get "$READ" '/v1/streams/orders?from=x'
expect "bad from" 400 "$(err invalid_parameter 'from must be an integer in 0..18446744073709551615' from)"
get "$READ" '/v1/streams/orders?limit=5000'
expect "stream limit over 1000" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"

# ---------------------------------------------------------------- the audit log

get "$AUD" '/v1/log?from=1&limit=2'
expect_jq "log page" 200 '
    .head == 9 and .next == 3 and (.events | map(.seq)) == [1,2] and
    (.events[0] | keys_unsorted) == ["seq","time","ingested","type","tenant","key","id","source","payload","prev","hash"] and
    (.events[0] | {seq,time,type,tenant,key,id,source,payload}) ==
      {"seq":1,"time":"2026-11-21T10:00:00Z","type":"telemetry","tenant":"acme","key":"d1","id":"m-1","source":"http",
       "payload":{"device_id":"d1","event_type":"status","status":"online","battery":50}} and
    .events[0].prev == ("0" * 64) and .events[1].prev == .events[0].hash'
get "$AUD" '/v1/log?from=9'
last_hash=$(jq -r '.events[0].hash' <<<"$BODY")
expect_jq "log page at the head" 200 '(.events | map(.seq)) == [9] and .next == 10'
get "$AUD" /v1/log/head
expect "log head" 200 "{\"seq\":9,\"hash\":\"$last_hash\"}"
get "$AUD" /v1/log/verify
expect "verify the whole log" 200 "{\"ok\":true,\"events\":9,\"head\":\"$last_hash\"}"
get "$AUD" '/v1/log/verify?from=2&to=4'
expect_jq "verify a range" 200 '.ok == true and .events == 3'
get "$AUD" '/v1/log?limit=1001'
expect "log limit over 1000" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"
get "$AUD" '/v1/log/verify?to=x'
expect "verify: bad to" 400 "$(err invalid_parameter 'to must be an integer in 0..18446744073709551615' to)"
get "$AUD" '/v1/log/verify?from=100'
case $STATUS in
4??) expect_jq "[BUG-4] verify from past the head is a client error, not 503 unavailable" "$STATUS" '.error.code | type == "string"' ;;
*) fail "[BUG-4] verify from past the head is a client error (4xx), not $STATUS: $BODY" ;;
esac

# ---------------------------------------------------------------- metrics after traffic

req GET /metrics -H "Authorization: Bearer $METRICS"
check "metrics: head gauge" grep -qx 'cairn_log_head_seq 9' <<<"$BODY"
check "metrics: events by type" grep -qx 'cairn_ingest_events_total{type="telemetry",source="http"} 4' <<<"$BODY"
check "metrics: rejections by reason" grep -qx 'cairn_rejected_total{reason="reserved_type"} 2' <<<"$BODY"
check "metrics: requests by route" grep -q '^cairn_http_requests_total{route="events",code="2xx"} ' <<<"$BODY"
check "metrics: duplicates (m-1 twice, then the msgpack b-4 twice)" grep -qx 'cairn_log_duplicates_total 4' <<<"$BODY"
check "metrics: the token cache answered repeated tokens" \
    awk '$1 == "cairn_jwt_cache_total{result=\"hit\"}" && $2 > 0 { ok = 1 } END { exit !ok }' <<<"$BODY"

# ---------------------------------------------------------------- ?min_seq: read your writes

get "$READ" '/v1/devices?min_seq=9'
expect_jq "min_seq already applied answers at once" 200 '.seq >= 9'
get "$READ" '/v1/devices?min_seq=x'
expect "min_seq not a number" 400 "$(err invalid_parameter 'min_seq must be an integer in 0..18446744073709551615' min_seq)"
start=$(date +%s%N)
get "$READ" '/v1/devices?min_seq=1000&wait_ms=300'
ms=$((($(date +%s%N) - start) / 1000000))
expect "min_seq never reached: 504" 504 "$(err min_seq_timeout 'the state did not reach seq 1000 in time' min_seq)"
check "the 504 came after wait_ms (${ms} ms)" [ "$ms" -ge 250 ]
get "$READ" '/v1/streams/orders?min_seq=1000&wait_ms=100'
expect "min_seq on a stream page: 504" 504 "$(err min_seq_timeout 'the state did not reach seq 1000 in time' min_seq)"

# A reader parked on the next seq is answered once the write is applied,
# and sees it.
curl -s -m 15 -o "$WORK/ryw.body" -w '%{http_code}' -H "Authorization: Bearer $READ" \
    "$URL/v1/devices/d9?min_seq=10&wait_ms=10000" >"$WORK/ryw.status" &
ryw=$!
sleep 0.3
post_json "$ING" "{\"type\":\"telemetry\",$T2,\"payload\":{\"device_id\":\"d9\",\"event_type\":\"status\",\"battery\":99}}"
expect "the write the reader waits for" 202 '{"seq":10}'
wait "$ryw" || true
STATUS=$(cat "$WORK/ryw.status") BODY=$(cat "$WORK/ryw.body")
expect_jq "the parked reader sees its write (read-your-writes)" 200 '.seq >= 10 and .item.device_id == "d9" and .item.battery == 99 and .item.last_seq == 10'
get "$READ" '/v1/devices/d9?min_seq=10'
expect_jq "and so does the next read" 200 '.seq >= 10 and .item.last_seq == 10'

post_json "$ING" "{\"type\":\"telemetry\",$T1,\"payload\":{\"device_id\":\"a/b?c\",\"event_type\":\"status\"}}"
expect_status "a key with a slash and a question mark" 202
get "$READ" "/v1/devices/a%2Fb%3Fc?min_seq=$(jq .seq <<<"$BODY")"
expect_jq "its entity, percent-encoded in the path" 200 '.item.device_id == "a/b?c"'

# Last: a bad wait_ms on a wait that would park (this crashed the server).
get "$READ" '/v1/devices?min_seq=1000&wait_ms=70000'
expect "[BUG-2] wait_ms over 60000 while min_seq is ahead: 400" 400 "$(err invalid_parameter 'wait_ms must be an integer in 0..60000' wait_ms)"
server_alive "[BUG-2] after a bad wait_ms" || true
stop_server
finish
