#!/usr/bin/env bash
# tests/fuzz/make_corpus.sh — writes the seed corpus of tests/fuzz_http.c
# into tests/fuzz/corpus/ and that of tests/fuzz_codec.c into
# tests/fuzz/codec_corpus/ (one file per seed, replacing the directories).
#
# Each seed is the bytes one client input sends: a request (or several,
# pipelined), "\n@@conn@@\n" between connections, "!\n" in front of a
# connection to the insecure server. Tokens and Stripe signatures are made
# with the secrets and the fixed clock of fuzz_http.c (keep them in sync),
# so they verify for as long as the seeds live. Needs openssl and basenc.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)/corpus
rm -rf "$out"
mkdir -p "$out"

NOW=1795255200 # FIXED_NOW_S
TOKEN_SECRET=cairn-fuzz-jwt-secret-0123456789abcdef
STRIPE_SECRET=whsec_cairn_fuzz_0123456789

b64url() { basenc --base64url -w0 | tr -d '='; }
jwt() { # jwt TENANT ROLES-JSON-ARRAY
    local h c s
    h=$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)
    c=$(printf '{"tenant":"%s","roles":%s,"iat":%d,"exp":%d}' "$1" "$2" $NOW $((NOW + 315360000)) | b64url)
    s=$(printf '%s' "$h.$c" | openssl dgst -sha256 -hmac "$TOKEN_SECRET" -binary | b64url)
    printf '%s.%s.%s' "$h" "$c" "$s"
}
ACME=$(jwt acme '["ingest","read","audit"]')
READER=$(jwt acme '["read"]')
BETA=$(jwt beta '["ingest","read"]')
ADMIN=$(jwt ops '["admin"]')
EXPIRED=$(printf '%s' "$ACME" | cut -d. -f1).$(printf '{"tenant":"acme","roles":["read"],"exp":1}' | b64url).AAAA

# Every function below prints bytes; `... >"$out/NAME"` makes a seed.
end() { printf '\r\n'; } # the blank line after the headers
sep() { printf '\n@@conn@@\n'; }
insecure() { printf '!\n'; }
# req METHOD PATH [HEADER…] — a request head (no body), headers CRLF-ended.
req() {
    local m=$1 p=$2 h
    shift 2
    printf '%s %s HTTP/1.1\r\nHost: cairn\r\n' "$m" "$p"
    for h in "$@"; do printf '%s\r\n' "$h"; done
}
# post PATH CTYPE BODY [HEADER…] — a POST with Content-Length.
post() {
    local p=$1 ct=$2 body=$3
    shift 3
    req POST "$p" "Authorization: Bearer $ACME" "Content-Type: $ct" \
        "Content-Length: ${#body}" "$@"
    printf '\r\n%s' "$body"
}
get() { # get PATH [HEADER…] with the acme token
    local p=$1
    shift
    req GET "$p" "Authorization: Bearer $ACME" "$@"
    printf '\r\n'
}

TEL='{"type":"telemetry","key":"dev-1","id":"t-1","time":"2026-11-21T10:00:00.250Z","payload":{"device_id":"dev-1","event_type":"status","status":"online","battery":87.5}}'
LOC='{"type":"location","payload":{"device_id":"dev-1","lat":52.520008,"lon":13.404954,"speed":13.9}}'
ORD='{"type":"order","payload":{"order_id":"ord-1","event_type":"order.created","customer_id":"cus_1","status":"pending","items":[{"product_id":"sku-1","quantity":2,"price":7.9}],"total_amount":15.8}}'
MET='{"type":"metric","time":1795255200000000000,"payload":{"name":"http_requests_total","labels":{"code":"200"},"value":10423}}'
DIS='{"type":"discovery","payload":{"account_id":"123456789012","region":"eu-west-1","scan_id":"s1","complete":true,"resources":[{"resource_id":"arn:aws:s3:::b","resource_type":"aws.s3.bucket","attributes":{}}]}}'
FAILED='{"id":"evt_f1","object":"event","type":"invoice.payment_failed","created":1795255100,"livemode":false,"data":{"object":{"id":"in_1","object":"invoice","customer":"cus_1","status":"open","amount_due":2900,"amount_paid":0,"currency":"eur","attempt_count":1,"subscription":"sub_1"}}}'
DELETED='{"id":"evt_d1","object":"event","type":"customer.subscription.deleted","created":1795255150,"livemode":false,"data":{"object":{"id":"sub_1","object":"subscription","customer":"cus_1","status":"canceled","canceled_at":1795255150}}}'
stripe_sig() { # stripe_sig BODY
    printf 't=%d,v1=%s' $NOW "$(printf '%s.%s' $NOW "$1" | openssl dgst -sha256 -hmac "$STRIPE_SECRET" -r | cut -d' ' -f1)"
}
PAYIN=$(printf '{"type":"payment","payload":%s}' "$FAILED")

# ---------------------------------------------------------------- public routes
cd "$out"
{ req GET /healthz; end; } >01-healthz
{ req GET /readyz; end; req GET /metrics; end; req GET /healthz 'Connection: close'; end; } >02-pipelined
printf 'GET /healthz HTTP/1.0\r\n\r\n' >03-http10

# ---------------------------------------------------------------- reads
{ get /v1/schemas; get /v1/schemas/telemetry; get /v1/schemas/nope; } >04-schemas
{
    get /v1/streams
    get '/v1/streams/subscriptions?from=1&limit=10&type=payment.failed,subscription.canceled&key=cus_1'
} >05-streams
{ get '/v1/log?from=1&limit=5'; get /v1/log/head; get '/v1/log/verify?from=1&to=100'; } >06-log
{
    get '/v1/devices?status=online&limit=2'
    get '/v1/devices?cursor=0461636d65&limit=1'
    get '/v1/orders?limit=abc'
} >07-view-list
{
    get '/v1/devices/dev-1?min_seq=1&wait_ms=10'
    get /v1/orders/ord-1
    get /v1/subscriptions/cus_1
    get /v1/devices/dev%2F1
} >08-view-item
get /v1/streams/subscriptions 'Accept: text/event-stream' 'Last-Event-ID: 0' >09-sse
{
    req GET '/v1/devices?tenant=acme' "Authorization: Bearer $ADMIN"
    end
    req GET '/v1/log?tenant=beta&from=1' "Authorization: Bearer $ADMIN"
    end
} >10-admin-tenant
{
    req GET '/v1/devices?tenant=beta' "Authorization: Bearer $READER"
    end
    req GET /v1/log "Authorization: Bearer $READER"
    end
    req POST /v1/events "Authorization: Bearer $READER" 'Content-Length: 2'
    end
    printf '{}'
} >11-forbidden
{
    req GET /v1/devices
    end
    req GET /v1/devices "Authorization: Bearer $EXPIRED"
    end
    req GET /v1/devices 'Authorization: Bearer a.b.c'
    end
    req GET /v1/devices 'Authorization: Basic Zm9vOmJhcg=='
    end
} >12-unauthorized

# ---------------------------------------------------------------- ingest
post /v1/events application/json "$TEL" >13-post-json
post /v1/events application/x-ndjson "$TEL"$'\n'"$LOC"$'\n'"$ORD"$'\n'"$MET"$'\n'"$DIS"$'\n'"$PAYIN"$'\n\n{"type":"telemetry"}\nnot json\n' >14-post-ndjson
{
    post /v1/events application/json "$TEL"
    post /v1/events application/json "$TEL"
    post /v1/events application/json '{"type":"order","expected_seq":999999,"payload":{"order_id":"ord-1","event_type":"order.assigned","status":"assigned"}}'
} >15-post-dup-conflict
{
    post /v1/events application/json '{"type":"telemetry","tennant":"x","payload":{}}'
    post /v1/events application/json '{"type":'
    post /v1/events text/plain 'x'
    post /v1/events application/json '{"type":"tick","payload":{"interval_ms":1000}}'
} >16-post-bad
post /v1/events application/x-ndjson '{"type":"telemetry","tenant":"beta","payload":{"device_id":"d","event_type":"x"}}'$'\n''{"type":"telemetry","tenant":"_engine","payload":{"device_id":"d","event_type":"x"}}' >17-post-tenant
# msgpack: {"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}
# twice, then a byte msgpack never uses
MP=$'\x82\xa4type\xa9telemetry\xa7payload\x82\xa9device_id\xa2d1\xaaevent_type\xa6status'
post /v1/events application/msgpack "$MP$MP"$'\xc1' >18-post-msgpack
{
    req POST /v1/events "Authorization: Bearer $ACME" 'Content-Type: application/x-ndjson' \
        'Transfer-Encoding: chunked'
    end
    printf '%x\r\n%s\n\r\n%x\r\n%s\r\n0\r\n\r\n' $((${#TEL} + 1)) "$TEL" ${#LOC} "$LOC"
} >19-post-chunked
{
    req POST /v1/events "Authorization: Bearer $BETA" 'Content-Type: application/json' \
        "Content-Length: ${#ORD}"
    end
    printf '%s' "$ORD"
} >20-post-beta

# ---------------------------------------------------------------- Stripe webhooks
stripe() { # stripe TENANT SIGNATURE BODY
    req POST "/v1/webhooks/stripe/$1" "Stripe-Signature: $2" "Content-Length: ${#3}"
    end
    printf '%s' "$3"
}
{
    stripe acme "$(stripe_sig "$FAILED")" "$FAILED"
    stripe acme "$(stripe_sig "$DELETED")" "$DELETED"
} >21-stripe
{
    stripe acme 't=1795255200,v1=00' "$FAILED"
    stripe nope x '{}'
    stripe acme "$(stripe_sig '[1]')" '[1]'
    stripe acme "$(stripe_sig '{"id":1}')" '{"id":1}'
} >22-stripe-bad

# ---------------------------------------------------------------- HTTP edge cases
printf 'GET\r\n\r\nFOO /x HTTP/9.9\r\n\r\n' >23-bad-request-line
{ req GET /healthz "X-Big: $(head -c 5000 /dev/zero | tr '\0' a)"; end; } >24-huge-header
{ req GET "/v1/devices?$(head -c 4200 /dev/zero | tr '\0' b)"; end; } >25-huge-url
{
    req POST /v1/events "Authorization: Bearer $ACME" 'Content-Type: application/json' \
        'Content-Length: 999999'
    end
    printf '{'
} >26-body-too-large
{
    req POST /v1/events "Authorization: Bearer $ACME" 'Transfer-Encoding: chunked'
    end
    printf '3000\r\n%s\r\n0\r\n\r\n' "$(head -c 12288 /dev/zero | tr '\0' ' ')"
} >27-chunked-too-large
{
    req POST /v1/events "Authorization: Bearer $ACME" 'Content-Length: 50'
    end
    printf '{"type"'
} >28-truncated
{
    req DELETE /v1/events
    end
    req GET /v1/nope
    end
    req GET /v1/devices/a/b/c/d/e/f/g/h/i
    end
    req GET '/v1/%zz'
    end
    req GET '/v1/a%00b'
    end
    req OPTIONS '*'
    end
} >29-method-path
{
    get '/v1/streams/subscriptions?from=-1'
    get /v1/streams/subscriptions 'Last-Event-ID: x'
    get '/v1/devices?min_seq=99999999999&wait_ms=1'
    get '/v1/log?limit=100000'
} >30-bad-params
printf 'GET http://cairn/healthz?x=1#frag HTTP/1.1\r\nHost: cairn\r\n\r\n' >31-absolute-url
{
    req GET /healthz 'Connection: Upgrade' 'Upgrade: websocket'
    end
    post /v1/events application/json "$TEL" 'Expect: 100-continue'
} >32-upgrade-expect
printf 'GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\nAuthorization: Bearer\r\n  %s\r\n\r\n' \
    "$ACME" >33-header-folding

# ---------------------------------------------------------------- insecure server, several connections
{
    insecure
    for p in /v1/devices /v1/devices/dev-1 '/v1/devices/dev-1?tenant=acme' \
        /v1/streams/subscriptions /v1/log; do
        req GET "$p"
        end
    done
} >34-insecure
{
    insecure
    req POST /v1/events 'Content-Type: application/json' "Content-Length: ${#TEL}"
    end
    printf '%s' "$TEL"
} >35-insecure-post
{
    get /v1/streams/subscriptions 'Accept: text/event-stream'
    sep
    post /v1/events application/x-ndjson "$PAYIN"
} >36-sse-live
{
    get '/v1/devices/dev-1?min_seq=1&wait_ms=200'
    sep
    post /v1/events application/json "$TEL"
} >37-min-seq-wait
{
    get /v1/streams/devices 'Accept: text/event-stream'
    sep
    get /v1/streams/orders 'Accept: text/event-stream'
    sep
    insecure
    req GET /v1/streams/subscriptions 'Accept: text/event-stream'
    end
    sep
    req GET /healthz
    end
} >38-too-many-conns

# ---------------------------------------------------------------- handler routes and control inputs
FENCE='{"type":"geofence.define","payload":{"fence_id":"depot","name":"Depot","geometry":{"type":"Polygon","coordinates":[[[13.4,52.51],[13.42,52.51],[13.42,52.53],[13.4,52.53],[13.4,52.51]]]},"detect":["enter","exit"],"min_dwell_s":0,"margin_m":20,"max_accuracy_m":50}}'
RULE='{"type":"rule.define","payload":{"id":"s3-bpa","title":"S3 Block Public Access","severity":"high","resource_type":"aws.s3.bucket","condition":"versioning.status == \"Enabled\"","frameworks":{"soc2":["CC6.1"]}}}'
ALARM='{"type":"alarm.define","payload":{"alarm_id":"cpu-high","metric":"node_cpu_usage","matchers":{"instance":"gw-1"},"statistic":"avg","period_s":60,"comparison":">","threshold":0.9,"evaluation_periods":2,"datapoints_to_alarm":1,"missing_data":"notBreaching","severity":"critical"}}'
INSIDE='{"type":"location","time":"2026-11-21T10:00:00Z","payload":{"device_id":"dev-1","lat":52.52,"lon":13.41,"accuracy":5}}'
OUTSIDE='{"type":"location","time":"2026-11-21T10:05:00Z","payload":{"device_id":"dev-1","lat":52.6,"lon":13.5,"accuracy":5}}'
CPU='{"type":"metric","time":"2026-11-21T10:00:30Z","payload":{"name":"node_cpu_usage","labels":{"instance":"gw-1"},"value":0.99}}'
post /v1/events application/x-ndjson "$FENCE"$'\n'"$RULE"$'\n'"$ALARM"$'\n'"$INSIDE"$'\n'"$OUTSIDE"$'\n'"$CPU"$'\n'"$DIS"$'\n' >39-control-inputs
{
    get /v1/fences
    get '/v1/fences/containing?lat=52.52&lon=13.41'
    get /v1/fences/depot
    get /v1/fences/depot/inside
    get '/v1/geofence/hits?fence=depot&device=dev-1&after=0&limit=5'
    get '/v1/nearby?lat=52.52&lon=13.41&radius_m=1000'
    get '/v1/nearby?lat=91&lon=x'
    get /v1/streams/geofence 'Accept: text/event-stream'
} >40-geofence-routes
{
    get '/v1/violations?limit=5&framework=soc2&control=CC6.1'
    get '/v1/violations?cursor=00ff'
    get '/v1/compliance/123456789012?framework=soc2'
    get '/v1/rules?enabled=true'
    get /v1/alarms
} >41-compliance-alarm-routes
{
    post /v1/alerts/3f2a9c01d4e5b6a7/ack application/json '{"by":"oncall@example.com","reason":"looking"}'
    post /v1/alerts/x/ack application/json '{"by":1}'
    post /v1/alerts/x/ack application/json 'nope'
} >42-alert-ack
{
    insecure
    for p in /v1/fences /v1/violations /v1/rules /v1/alarms '/v1/geofence/hits?tenant=acme'; do
        req GET "$p"
        end
    done
} >43-insecure-routes

# ---------------------------------------------------------------- regressions (bugs the fuzzer found)
post /v1/events application/x-ndjson '' >44-ndjson-empty-body
{
    get '/v1/devices/dev-1?min_seq=999999999&wait_ms=x'
    get '/v1/devices/dev-1?min_seq=999999999&wait_ms=3'
} >45-min-seq-bad-wait
{
    req GET /healthz 'Connection: close'
    end
    post /v1/events application/json "$TEL"
} >46-close-then-pipelined
{
    printf '~\n'
    get /v1/streams/subscriptions 'Accept: text/event-stream'
} >47-sse-half-close
# A single JSON event with no body at all (no Content-Length): found by the
# fuzzer when the JSON path moved to ingest_parse_json_for (UB on NULL + 0).
{
    req POST /v1/events "Authorization: Bearer $ACME" 'Content-Type: application/json'
    end
} >48-post-json-no-body
# Expect: 100-continue accepted (then the body), refused (no token: the
# answer before the body, then the rest of the stream is dropped), 417.
{
    post /v1/events application/json "$TEL" 'Expect: 100-continue'
    req POST /v1/events 'Content-Type: application/json' "Content-Length: ${#TEL}" \
        'Expect: 100-continue'
    printf '\r\n%s' "$TEL"
} >49-expect-continue
{
    req POST /v1/events "Authorization: Bearer $ACME" 'Content-Length: 2' 'Expect: tea'
    printf '\r\n{}'
} >50-expect-other
# Single-valued headers twice (400), Accept twice (joined), a metrics-only
# token on /metrics and elsewhere.
{
    get /v1/devices 'Accept: application/json' 'Accept: text/event-stream'
    get /v1/devices "Authorization: Bearer $ACME"
} >51-duplicate-headers
{
    req GET /metrics "Authorization: Bearer $(jwt ops '["metrics"]')"
    end
    req GET /readyz "Authorization: Bearer $(jwt ops '["metrics"]')"
    end
    req GET /v1/devices "Authorization: Bearer $(jwt ops '["metrics"]')"
    end
} >52-metrics-role
# Query parameters that are refused (too long, bad escapes, NUL): the
# buffer they were decoded into must still be a string (a 600-byte tenant
# once overflowed it).
{
    get "/v1/devices?tenant=$(printf 'b%.0s' $(seq 600))"
    get '/v1/devices?tenant=ac%zzme'
    get '/v1/devices?tenant=ac%00me'
    get "/v1/streams/devices?key=$(printf 'k%.0s' $(seq 300))&type=%"
    get '/v1/audit/events?cursor=%g0'
} >53-refused-params
# msgpack containers counting more items than the body holds: an array32
# of 2^32-1 items in five bytes, then a map32 of as many pairs inside a
# map (msgpack-c's unpacker once asked malloc for 128 GiB for them).
{
    post /v1/events application/msgpack $'\xdd\xff\xff\xff\xff'
    post /v1/events application/msgpack $'\x81\xa4type\xdf\xff\xff\xff\xff\xa1a\x01'
} >54-msgpack-huge-count
ls | wc -l

# ---------------------------------------------------------------- codec
# Each seed is read both as JSON text and as msgpack (tests/fuzz_codec.c).
codec="$out/../codec_corpus"
rm -rf "$codec"
mkdir -p "$codec"
cd "$codec"
printf '%s' "$TEL" >01-json-telemetry
printf '%s' "$LOC" >02-json-location
printf '%s' '{"n":[0,-0,1,-1,127,128,-32,-33,65536,-2147483649,9223372036854775807],"r":[0.1,-0.0,1e22,4.9e-324,1.5e300],"s":["","\u00e9\ud83d\ude00","\"\\\/\b\f\n\r\t"],"b":[true,false,null],"o":{"a":{"b":[[],{}]}}}' >03-json-kinds
printf '%s' '{"a":1,"a":2}' >04-json-duplicate
printf '%s' '{"big":18446744073709551616,"deep":[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]}' >05-json-refused
# msgpack: the ingest example of the HTTP corpus (canonical)
printf '%s' "$MP" >06-mp-canonical
# the same numbers in wider forms than needed, a float32, bin and ext
printf '\x86\xa1a\xcc\x01\xa1b\xd1\xff\xff\xa1c\xca\x3f\xc0\x00\x00\xa1d\xc4\x02\xab\xcd\xa1e\xd4\x01\x02\xa1f\xd9\x01x' >07-mp-wide
# map16 and array16 with few items, a map keyed by an integer, a NaN
printf '\xde\x00\x01\xa1k\xdc\x00\x02\x01\x02' >08-mp-wide-containers
printf '\x81\x01\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00' >09-mp-int-key-nan
# counts beyond the bytes (msgpack-c allocated 128 GiB for the first)
printf '\xdd\xff\xff\xff\xff' >10-mp-huge-array
printf '\x81\xa1a\xdf\x00\x01\x00\x00\xa1b\x01' >11-mp-huge-map
# 40 nested arrays: deeper than msgpack-c's 32 and Cairn's 24
printf '\x91%.0s' $(seq 40) >12-mp-deep
printf '\x01' >>12-mp-deep
# a double that needs 17 digits to come back (0.30000000000000004)
printf '\x81\xa1r\xcb\x3f\xd3\x33\x33\x33\x33\x33\x34' >13-mp-float17
ls | wc -l
