#!/usr/bin/env bash
# tenants.sh — tenant isolation on every route: two tenants (acme, globex)
# with entities of the same names, derived events and log entries each. A
# tenant's token never sees the other's views, entities, stream events (JSON
# pages and SSE, backlog and live), log entries, idempotency ids or
# expected_seq state; ?tenant= of another tenant is 403 unless admin, and
# an admin with ?tenant= sees that tenant.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

start_server
A_ING=$(token acme ingest)
B_ING=$(token globex ingest)
A=$(token acme read,audit)
B=$(token globex read,audit)
ADMIN=$(token ops admin)

T='"time":"2026-11-21T10:00:00Z"'
tele() { echo "{\"type\":\"telemetry\",$T,\"id\":\"$2\",\"payload\":{\"device_id\":\"$1\",\"event_type\":\"status\",\"battery\":$3}}"; }
order() { echo "{\"type\":\"order\",\"time\":\"2026-11-21T10:0$3:00Z\",\"payload\":{\"order_id\":\"$1\",\"event_type\":\"$2\"}}"; }
failed() {
    echo "{\"type\":\"payment\",$T,\"payload\":{\"id\":\"$1\",\"object\":\"event\",\"type\":\"invoice.payment_failed\",\"created\":1795255200,\"data\":{\"object\":{\"id\":\"in_$2\",\"object\":\"invoice\",\"customer\":\"$2\",\"status\":\"open\",\"amount_due\":$3,\"amount_paid\":0,\"currency\":\"eur\",\"attempt_count\":1}}}}"
}
{
    tele shared x-1 10
    tele only-a x-2 11
    order o-shared order.created 0
    order o-shared order.delivered 1
    failed evt_a1 cus_shared 100
} >"$WORK/a.ndjson"
{
    tele shared x-1 20
    tele only-b x-2 21
    order o-shared order.created 0
    order o-shared order.delivered 2
    failed evt_a1 cus_shared 200
} >"$WORK/b.ndjson"
post_file "$A_ING" application/x-ndjson "$WORK/a.ndjson"
expect_jq "acme's events" 202 '(.results | map(.seq)) == [1,2,3,4,5]'
post_file "$B_ING" application/x-ndjson "$WORK/b.ndjson"
expect_jq "globex's events with acme's ids: new seqs, not acme's duplicates" 202 '(.results | map(.seq)) == [6,7,8,9,10] and ([.results[] | select(.duplicate)] | length) == 0'
post_json "$B_ING" "$(tele shared x-1 20)"
expect "globex's own duplicate is reported with globex's seq" 200 '{"seq":6,"duplicate":true}'
post_json "$B_ING" "{\"type\":\"telemetry\",\"key\":\"shared\",\"expected_seq\":1,$T,\"payload\":{\"device_id\":\"shared\",\"event_type\":\"status\"}}"
expect "expected_seq is per tenant: globex's conflict names globex's seq" 409 \
    '{"error":{"code":"conflict","field":"/expected_seq","message":"the last event of this tenant and key is seq 6","actual_seq":6}}'
HEAD_TOKEN=$ADMIN
get "$A" '/v1/devices?min_seq=10'
expect_status "state applied" 200

# ---------------------------------------------------------------- views

get "$A" /v1/devices
expect_jq "acme's device list" 200 '[.items[] | {device_id, tenant, battery}] == [{"device_id":"only-a","tenant":"acme","battery":11},{"device_id":"shared","tenant":"acme","battery":10}]'
get "$B" /v1/devices
expect_jq "globex's device list" 200 '[.items[] | {device_id, tenant, battery}] == [{"device_id":"only-b","tenant":"globex","battery":21},{"device_id":"shared","tenant":"globex","battery":20}]'
get "$B" /v1/devices/shared
expect_jq "the same key is a different entity per tenant" 200 '.item.tenant == "globex" and .item.battery == 20'
get "$B" /v1/devices/only-a
expect "globex reading acme's device: 404" 404 "$(err not_found 'no devices entity only-a')"
get "$B" '/v1/devices?tenant=globex'
expect_jq "?tenant= of one's own tenant" 200 '(.items | map(.device_id)) == ["only-b","shared"]'
get "$B" '/v1/devices?battery=11'
expect_jq "a filter matching acme's device finds nothing for globex" 200 '.items == []'
get "$A" '/v1/devices?limit=1'
a_cursor=$(jq -r .next_cursor <<<"$BODY")
get "$B" "/v1/devices?limit=10&cursor=$a_cursor"
expect_jq "acme's cursor gives globex nothing of acme's" 200 '[.items[] | select(.tenant != "globex")] == []'
get "$B" /v1/orders
expect_jq "orders view per tenant" 200 '[.items[] | .tenant] == ["globex"]'
get "$A" /v1/orders/o-shared
expect_jq "acme's order" 200 '.item.tenant == "acme"'
get "$B" /v1/subscriptions
expect_jq "subscriptions view per tenant" 200 '[.items[] | .tenant] == ["globex"] and .items[0].customer == "cus_shared"'
get "$B" /v1/subscriptions/cus_shared
expect_jq "subscription of a shared customer id" 200 '.item.tenant == "globex" and .item.last_invoice.amount_due == 200'

# ---------------------------------------------------------------- stream pages

get "$A" /v1/streams/orders
expect_jq "acme's orders stream page" 200 '[.events[] | {tenant, key, cause}] == [{"tenant":"acme","key":"o-shared","cause":4}]'
get "$B" /v1/streams/orders
expect_jq "globex's orders stream page" 200 '[.events[] | {tenant, key, cause}] == [{"tenant":"globex","key":"o-shared","cause":9}]'
get "$B" '/v1/streams/subscriptions?key=cus_shared'
expect_jq "globex's payment.failed only" 200 '[.events[] | {tenant, type}] == [{"tenant":"globex","type":"payment.failed"}] and .events[0].payload.amount_due == 200'

# ---------------------------------------------------------------- the log

get "$A" /v1/log
expect_jq "acme's log page" 200 '(.events | map(.seq)) == [1,2,3,4,5] and ([.events[].tenant] | unique) == ["acme"]'
get "$B" /v1/log
expect_jq "globex's log page" 200 '(.events | map(.seq)) == [6,7,8,9,10] and ([.events[].tenant] | unique) == ["globex"]'
get "$B" '/v1/log?from=1&limit=2'
expect_jq "a page over acme's seqs holds only globex's" 200 '(.events | map(.seq)) == [6,7]'

# ---------------------------------------------------------------- ?tenant=

forbidden_b() { err forbidden 'this token may only act on tenant globex' tenant; }
for path in /v1/devices /v1/devices/shared /v1/orders /v1/orders/o-shared /v1/subscriptions \
    /v1/subscriptions/cus_shared /v1/streams /v1/streams/orders /v1/log /v1/log/head /v1/log/verify; do
    get "$B" "$path?tenant=acme"
    expect "globex's token with ?tenant=acme on $path: 403" 403 "$(forbidden_b)"
done
get "$B" '/v1/streams/orders?tenant=acme' -H 'Accept: text/event-stream'
expect "globex's token with ?tenant=acme on SSE: 403" 403 "$(forbidden_b)"
req POST '/v1/events?tenant=acme' -H "Authorization: Bearer $B_ING" -H 'Content-Type: application/json' \
    --data-binary "$(tele sneaky x-9 1)"
expect "globex's ingest token with ?tenant=acme: 403" 403 "$(forbidden_b)"
post_json "$B_ING" "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"sneaky\",\"event_type\":\"status\"}}"
expect "globex writing tenant acme: 403" 403 "$(err forbidden 'this token may only write tenant globex' /tenant)"
printf '%s\n' "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"sneaky\",\"event_type\":\"status\"}}" \
    "$(tele fine x-10 5)" >"$WORK/mixed.ndjson"
post_file "$B_ING" application/x-ndjson "$WORK/mixed.ndjson"
expect_jq "globex's batch with an acme line: that line refused" 202 \
    '.results[0] == {"line":1,"error":{"code":"forbidden","field":"/tenant","message":"this token may only write tenant globex"}} and .results[1].seq == 11'
# The same batch as msgpack, in the smallest forms (the ingest's in-place
# path) and in the widest (its path through jansson): the acme line is
# refused, the line without a tenant is globex's (its id is globex's x-10,
# so a duplicate of seq 11, not a new event or an acme one).
if command -v node >/dev/null; then
    for form in "" --wide; do
        node "$API_HERE/msgpack.js" $form <"$WORK/mixed.ndjson" >"$WORK/mixed.msgpack"
        post_file "$B_ING" application/msgpack "$WORK/mixed.msgpack"
        expect_jq "globex's msgpack batch ${form:-(smallest forms)} with an acme line: that line refused" 202 \
            '.results == [{"line":1,"error":{"code":"forbidden","field":"/tenant","message":"this token may only write tenant globex"}},{"line":2,"seq":11,"duplicate":true}]'
    done
else
    fail "node is required for the msgpack batches"
fi
get "$A" /v1/devices/sneaky
expect "nothing of globex's reached acme" 404 "$(err not_found 'no devices entity sneaky')"

# the admin acts on a tenant with ?tenant=
get "$ADMIN" '/v1/devices?tenant=acme'
expect_jq "admin ?tenant=acme: acme's devices" 200 '[.items[] | .tenant] == ["acme","acme"]'
get "$ADMIN" '/v1/devices/shared?tenant=acme'
expect_jq "admin ?tenant=acme: acme's entity" 200 '.item.tenant == "acme" and .item.battery == 10'
get "$ADMIN" '/v1/streams/orders?tenant=acme'
expect_jq "admin ?tenant=acme: acme's stream events" 200 '[.events[] | .tenant] == ["acme"]'
get "$ADMIN" '/v1/log?tenant=acme'
expect_jq "admin ?tenant=acme: acme's log" 200 '(.events | map(.seq)) == [1,2,3,4,5]'
get "$ADMIN" '/v1/log?tenant=globex'
expect_jq "admin ?tenant=globex: globex's log" 200 '(.events | map(.seq)) == [6,7,8,9,10,11]'
req POST '/v1/events' -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    --data-binary "{\"type\":\"telemetry\",\"tenant\":\"acme\",$T,\"payload\":{\"device_id\":\"by-admin\",\"event_type\":\"status\"}}"
expect "admin writes for acme" 202 '{"seq":12}'
get "$A" '/v1/devices/by-admin?min_seq=12'
expect_jq "acme sees what the admin wrote for it" 200 '.item.tenant == "acme"'
get "$B" /v1/devices/by-admin
expect_status "globex does not" 404

# ---------------------------------------------------------------- SSE: backlog and live

sse() { # sse OUT TOKEN PATH: a background subscriber (at most 15 s); pid in BG_PID
    bg curl -sN -m 15 -H "Authorization: Bearer $2" -H 'Accept: text/event-stream' "$URL$3" -o "$1"
}
sse "$WORK/a.sse" "$A" /v1/streams/orders
pa=$BG_PID
sse "$WORK/b.sse" "$B" /v1/streams/orders
pb=$BG_PID
sse "$WORK/adm.sse" "$ADMIN" '/v1/streams/orders?tenant=acme'
pc=$BG_PID
sse "$WORK/bsub.sse" "$B" /v1/streams/subscriptions
pd=$BG_PID
sleep 0.5
{
    order o-live-a order.created 0
    order o-live-a order.delivered 3
    failed evt_a2 cus_live 300
} >"$WORK/a2.ndjson"
post_file "$A_ING" application/x-ndjson "$WORK/a2.ndjson"
expect_jq "acme's live events" 202 '(.results | length) == 3 and ([.results[] | select(.seq)] | length) == 3'
order o-live-b order.created 0 >"$WORK/b2.ndjson"
order o-live-b order.delivered 4 >>"$WORK/b2.ndjson"
post_file "$B_ING" application/x-ndjson "$WORK/b2.ndjson"
expect_status "globex's live events" 202
ids() { grep -c '^id: ' "$1" 2>/dev/null || true; }
got_all() { [ "$(ids "$WORK/a.sse")" -ge 2 ] && [ "$(ids "$WORK/b.sse")" -ge 2 ] && [ "$(ids "$WORK/adm.sse")" -ge 2 ]; }
wait_until "every subscriber got its backlog and live event" 10 got_all || true
sleep 0.5 # time for anything that should not come
kill "$pa" "$pb" "$pc" "$pd" 2>/dev/null || true
wait "$pa" "$pb" "$pc" "$pd" 2>/dev/null || true
data_of() { sed -n 's/^data: //p' "$1"; }
check "acme's SSE: acme's backlog and live events, nothing else" \
    jq_ok -s '(map(.tenant) | unique) == ["acme"] and map(.key) == ["o-shared","o-live-a"]' < <(data_of "$WORK/a.sse")
check "globex's SSE: globex's only" \
    jq_ok -s '(map(.tenant) | unique) == ["globex"] and map(.key) == ["o-shared","o-live-b"]' < <(data_of "$WORK/b.sse")
check "admin's SSE with ?tenant=acme: acme's only" \
    jq_ok -s '(map(.tenant) | unique) == ["acme"] and map(.key) == ["o-shared","o-live-a"]' < <(data_of "$WORK/adm.sse")
check "globex's subscriptions SSE: no acme payment.failed" \
    jq_ok -s 'map([.tenant, .key]) == [["globex","cus_shared"]]' < <(data_of "$WORK/bsub.sse")
ids_a=$(sed -n 's/^id: //p' "$WORK/a.sse" | tr '\n' ' ')
ids_b=$(sed -n 's/^id: //p' "$WORK/b.sse" | tr '\n' ' ')
all=$(printf '%s\n' $ids_a $ids_b | sort -n | tr '\n' ' ')
eq "both tenants' ids together are the stream, dense and disjoint" "$all" "1 2 3 4 "

# ---------------------------------------------------------------- server-wide totals

# /metrics counts every tenant's events, rejections and requests: only the
# metrics role (an operator's scraper) and admin read it. /readyz is public
# (probes carry no token) and says only whether the state caught up; the
# log head and checkpoint come with a metrics or admin token.
req GET /metrics
expect "/metrics without a token: 401" 401 "$(err unauthorized 'a bearer token is required' Authorization)"
for tok in "$A" "$A_ING" "$B"; do
    get "$tok" /metrics
    expect "/metrics with a tenant's read/audit/ingest token: 403" 403 \
        "$(err forbidden "this token's roles do not allow metrics" Authorization)"
done
get "$(token acme metrics)" /metrics
check "/metrics with a metrics token" grep -q '^cairn_log_head_seq ' <<<"$BODY"
get "$ADMIN" /metrics
expect_status "/metrics with an admin token" 200
for tok in "" "$A" "$B_ING"; do
    if [ -n "$tok" ]; then get "$tok" /readyz; else req GET /readyz; fi
    expect "/readyz for a tenant's token or none: readiness only" 200 '{"ready":true}'
done
get "$(token globex metrics)" /readyz
expect_jq "/readyz with a metrics token: the figures too" 200 '.ready and .log_head == .checkpoint and .log_head > 0'
# The log's seq is one sequence over every tenant (one hash chain), and
# every answer carries it ("seq" of views, pages' "next"): /v1/log/head
# tells a tenant's audit token no more than a view answer does.
get "$A" /v1/log/head
head_a=$(jq -r .seq <<<"$BODY")
get "$A" /v1/devices
eq "/v1/log/head's seq is the seq every answer carries" "$head_a" "$(jq -r .seq <<<"$BODY")"

# A reader parked on ?min_seq when the server stops: a clean exit.
curl -s -m 10 -o /dev/null -H "Authorization: Bearer $A" "$URL/v1/devices?min_seq=100000&wait_ms=30000" &
parked=$!
sleep 0.3
stop_server
wait "$parked" 2>/dev/null || true

# ---------------------------------------------------------------- --insecure-no-auth (README: acts as admin, sees every tenant)

start_server --insecure-no-auth
check "the server warns that auth is off" grep -q 'authentication is OFF' "$SERVER_LOG"
req GET /v1/devices
expect_jq "no auth: a list sees every tenant" 200 '([.items[].tenant] | unique) == ["acme","globex"]'
req GET '/v1/devices?tenant=globex'
expect_jq "no auth with ?tenant=globex: globex only" 200 '([.items[].tenant] | unique) == ["globex"]'
# A ?tenant= that does not decode is refused, not taken as absent (which
# would widen the list to every tenant here).
bad_tenant='tenant must be 1..64 bytes, percent-encoded'
req GET "/v1/devices?tenant=$(printf 'g%.0s' $(seq 65))"
expect "no auth: a 65-byte ?tenant= is refused" 400 "$(err invalid_parameter "$bad_tenant" tenant)"
req GET '/v1/devices?tenant=glo%zzbex'
expect "no auth: a ?tenant= with a bad escape is refused" 400 "$(err invalid_parameter "$bad_tenant" tenant)"
req GET '/v1/devices?tenant=glo%00bex'
expect "no auth: a ?tenant= with a NUL is refused" 400 "$(err invalid_parameter "$bad_tenant" tenant)"
req GET '/v1/devices?tenant='
expect "no auth: an empty ?tenant= is refused" 400 "$(err invalid_parameter "$bad_tenant" tenant)"
req GET "/v1/devices?tenant=$(printf 'g%.0s' $(seq 64))"
expect_jq "no auth: a 64-byte ?tenant= is accepted (no such tenant: empty)" 200 '.items == []'
req GET /v1/devices/shared
expect "no auth: one entity needs ?tenant=" 400 "$(err missing_parameter 'give ?tenant= to read one entity' tenant)"
req GET '/v1/devices/shared?tenant=acme'
expect_jq "no auth: one entity with ?tenant=" 200 '.item.tenant == "acme" and .item.battery == 10'
req POST /v1/events -H 'Content-Type: application/json' --data-binary '{"type":"telemetry","payload":{"device_id":"x","event_type":"status"}}'
expect "no auth: an event must name its tenant" 400 "$(err missing_field 'tenant is required' /tenant)"
stop_server
finish
