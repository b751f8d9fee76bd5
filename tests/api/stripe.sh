#!/usr/bin/env bash
# stripe.sh — POST /v1/webhooks/stripe/{tenant} against signatures made by
# the official Stripe library (stripe_sign.js): a valid event is appended
# once (202, then 200 duplicate for Stripe's retries and for a replayed
# delivery), bad signatures, tampered bodies and timestamps outside the
# 300 s tolerance are 400 and append nothing, either of a tenant's two
# secrets verifies (rotation), a header with several v1= passes when one
# matches, each tenant has its own secrets, and the appended payment feeds
# the subscriptions view and a payment.failed SSE event for its tenant only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

stripe_node
start_server
A=$(token acme read)
B=$(token globex read)
HEAD_TOKEN=$(token ops audit)

# event ID TYPE CUSTOMER CREATED > FILE: a Stripe event as Stripe sends it.
event() {
    jq -cn --arg id "$1" --arg type "$2" --arg cus "$3" --argjson created "$4" '{
        id: $id, object: "event", api_version: "2025-03-31.basil", created: $created,
        type: $type, livemode: false, pending_webhooks: 1,
        request: {id: null, idempotency_key: null},
        data: {object: {id: ("in_" + $id), object: "invoice", customer: $cus, status: "open",
                        amount_due: 2900, amount_paid: 0, currency: "eur", attempt_count: 1,
                        subscription: "sub_1"}}}'
}
# hook TENANT BODY-FILE HEADER: the delivery.
hook() {
    if [ -n "$3" ]; then
        req POST "/v1/webhooks/stripe/$1" -H 'Content-Type: application/json' \
            -H "Stripe-Signature: $3" --data-binary "@$2"
    else
        req POST "/v1/webhooks/stripe/$1" -H 'Content-Type: application/json' --data-binary "@$2"
    fi
}
sigerr() { err invalid_signature "$1" Stripe-Signature; }
NOMATCH='no v1 signature matches a configured endpoint secret'
TOLERANCE='the signature timestamp is outside the 300s tolerance'
head_is() { eq "$1" "$(head_seq)" "$2"; }

# The subscribers end when the server stops; -m 90 only bounds a hang (the
# script takes 20 s and more under ASan on a loaded machine).
bg curl -sN -m 90 -H "Authorization: Bearer $A" -H 'Accept: text/event-stream' \
    "$URL/v1/streams/subscriptions" -o "$WORK/a.sse"
sse_a=$BG_PID
bg curl -sN -m 90 -H "Authorization: Bearer $B" -H 'Accept: text/event-stream' \
    "$URL/v1/streams/subscriptions" -o "$WORK/b.sse"
sse_b=$BG_PID

NOW=$(date +%s)
event evt_1 invoice.payment_failed cus_1 "$NOW" >"$WORK/e1.json"

# ---------------------------------------------------------------- valid, then duplicates

H1=$(stripe_header "$WORK/e1.json" "$NOW" "$WHSEC1_FILE")
check "the header is Stripe's t=…,v1=… format" grep -qE "^t=$NOW,v1=[0-9a-f]{64}\$" <<<"$H1"
check "Stripe's own constructEvent accepts it (sanity)" \
    node "$API_HERE/stripe_sign.js" --payload-file "$WORK/e1.json" --header "$H1" --verify-secret-file "$WHSEC1_FILE"
hook acme "$WORK/e1.json" "$H1"
expect "a valid webhook: 202 with its seq" 202 '{"seq":1}'
get "$(token acme audit)" /v1/log
expect_jq "appended as a payment of acme, id = the Stripe event id, time = created" 200 \
    '.events[0] | {type, tenant, key, id, source, time, payload} ==
     {type: "payment", tenant: "acme", key: "cus_1", id: "evt_1", source: "stripe",
      time: ($created | todate), payload: $body}' \
    --argjson created "$NOW" --argjson body "$(cat "$WORK/e1.json")"
hook acme "$WORK/e1.json" "$H1"
expect "the same delivery replayed (same header): 200 duplicate" 200 '{"seq":1,"duplicate":true}'
H1b=$(stripe_header "$WORK/e1.json" "$((NOW + 1))" "$WHSEC2_FILE")
hook acme "$WORK/e1.json" "$H1b"
expect "Stripe's retry (re-signed later, other secret): 200 duplicate" 200 '{"seq":1,"duplicate":true}'
jq -c '.data.object.amount_due = 1' "$WORK/e1.json" >"$WORK/e1-changed.json"
hook acme "$WORK/e1-changed.json" "$(stripe_header "$WORK/e1-changed.json" "$NOW" "$WHSEC1_FILE")"
expect "another body with a replayed event id: 200 duplicate, not appended" 200 '{"seq":1,"duplicate":true}'
head_is "duplicates appended nothing" 1

# ---------------------------------------------------------------- refused deliveries append nothing

event evt_2 invoice.payment_failed cus_2 "$NOW" >"$WORK/e2.json"
hook acme "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" "$NOW" "$WHSEC_WRONG_FILE")"
expect "signed with a secret acme does not have: 400" 400 "$(sigerr "$NOMATCH")"
hook acme "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" "$NOW" "$WHSEC_GLOBEX_FILE")"
expect "signed with globex's secret, sent to acme: 400" 400 "$(sigerr "$NOMATCH")"
hook globex "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" "$NOW" "$WHSEC1_FILE")"
expect "signed with acme's secret, sent to globex: 400" 400 "$(sigerr "$NOMATCH")"
H2=$(stripe_header "$WORK/e2.json" "$NOW" "$WHSEC1_FILE")
jq -c '.data.object.customer = "cus_evil"' "$WORK/e2.json" >"$WORK/e2-tampered.json"
hook acme "$WORK/e2-tampered.json" "$H2"
expect "the body changed after signing: 400" 400 "$(sigerr "$NOMATCH")"
printf '%s ' "$(cat "$WORK/e2.json")" >"$WORK/e2-space.json"
hook acme "$WORK/e2-space.json" "$H2"
expect "one byte added to the body: 400" 400 "$(sigerr "$NOMATCH")"
hook acme "$WORK/e2.json" "t=$((NOW + 1)),${H2#*,}"
expect "the timestamp changed after signing: 400" 400 "$(sigerr "$NOMATCH")"
hook acme "$WORK/e2.json" "t=$NOW,v1=${H2##*v1=}x"
expect "a v1 of the wrong length" 400 "$(sigerr 'the Stripe-Signature header has no v1 signature')"
hook acme "$WORK/e2.json" "t=$NOW,v0=${H2##*v1=}"
expect "only a v0 signature" 400 "$(sigerr 'the Stripe-Signature header has no v1 signature')"
hook acme "$WORK/e2.json" "v1=${H2##*v1=}"
expect "no t=" 400 "$(sigerr 'the Stripe-Signature header has no timestamp (t=)')"
hook acme "$WORK/e2.json" ""
expect "no Stripe-Signature header" 400 "$(sigerr 'the Stripe-Signature header is missing')"
OLD=$((NOW - 400))
hook acme "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" "$OLD" "$WHSEC1_FILE")"
expect "a correct signature 400 s old: outside the tolerance" 400 "$(sigerr "$TOLERANCE")"
hook acme "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" $((NOW + 400)) "$WHSEC1_FILE")"
expect "a correct signature 400 s in the future" 400 "$(sigerr "$TOLERANCE")"
hook acme "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" "$NOW" "$WHSEC_WRONG_FILE" "$WHSEC_GLOBEX_FILE")"
expect "two v1 signatures, neither acme's" 400 "$(sigerr "$NOMATCH")"
head_is "no refused delivery was appended" 1
hook initech "$WORK/e2.json" "$H2"
expect "a tenant without Stripe secrets: 404" 404 "$(err not_found 'no Stripe endpoint secret for this tenant' tenant)"
req GET /v1/webhooks/stripe/acme
expect "GET on the webhook" 405 "$(err method_not_allowed 'GET is not allowed on this path')"

# ---------------------------------------------------------------- accepted: tolerance, rotation, several v1

hook acme "$WORK/e2.json" "$(stripe_header "$WORK/e2.json" $((NOW - 200)) "$WHSEC1_FILE")"
expect "a signature 200 s old is inside the tolerance" 202 '{"seq":2}'
event evt_3 invoice.payment_failed cus_3 "$NOW" >"$WORK/e3.json"
hook acme "$WORK/e3.json" "$(stripe_header "$WORK/e3.json" "$NOW" "$WHSEC2_FILE")"
expect "rotation: acme's second secret verifies" 202 '{"seq":3}'
event evt_4 invoice.payment_failed cus_4 "$NOW" >"$WORK/e4.json"
hook acme "$WORK/e4.json" "$(stripe_header "$WORK/e4.json" "$NOW" "$WHSEC_WRONG_FILE" "$WHSEC2_FILE")"
expect "two v1 signatures, the second one right" 202 '{"seq":4}'
event evt_5 invoice.payment_failed cus_5 "$NOW" >"$WORK/e5.json"
hook acme "$WORK/e5.json" "$(stripe_header "$WORK/e5.json" "$NOW" "$WHSEC1_FILE" "$WHSEC_WRONG_FILE")"
expect "two v1 signatures, the first one right" 202 '{"seq":5}'
hook globex "$WORK/e1.json" "$(stripe_header "$WORK/e1.json" "$NOW" "$WHSEC_GLOBEX_FILE")"
expect "acme's event id for globex is globex's own event" 202 '{"seq":6}'
req POST /v1/webhooks/stripe/acme -H "Authorization: Bearer not-a-token" -H "Stripe-Signature: $(stripe_header "$WORK/e1.json" "$NOW" "$WHSEC1_FILE")" --data-binary "@$WORK/e1.json"
expect "the webhook ignores Authorization" 200 '{"seq":1,"duplicate":true}'

# ---------------------------------------------------------------- valid signature, bad event

printf '[1,2,3]' >"$WORK/array.json"
hook acme "$WORK/array.json" "$(stripe_header "$WORK/array.json" "$NOW" "$WHSEC1_FILE")"
expect "a signed body that is not an event object" 400 "$(err invalid_json 'the webhook body is not a Stripe event object')"
jq -c '.id = "nope_1"' "$WORK/e2.json" >"$WORK/badid.json"
hook acme "$WORK/badid.json" "$(stripe_header "$WORK/badid.json" "$NOW" "$WHSEC1_FILE")"
expect_jq "a signed event failing the payment schema" 400 '.error.code == "pattern_mismatch" and .error.field == "/payload/id"'
head_is "after everything, six events" 6

# ---------------------------------------------------------------- what the payments derived

get "$A" '/v1/subscriptions/cus_1?min_seq=6'
expect_jq "the subscriptions view has acme's customer" 200 '.item.tenant == "acme" and .item.last_invoice.id == "in_evt_1"'
get "$B" '/v1/subscriptions/cus_1?min_seq=6'
expect_jq "and globex's own" 200 '.item.tenant == "globex"'
has_lines() { [ "$(grep -c '^id: ' "$1" 2>/dev/null || true)" -ge "$2" ]; }
wait_until "acme's SSE gets a payment.failed per customer" 10 has_lines "$WORK/a.sse" 5 || true
wait_until "globex's SSE gets its one" 10 has_lines "$WORK/b.sse" 1 || true
stop_server
wait "$sse_a" "$sse_b" 2>/dev/null || true
check "acme's SSE: payment.failed for cus_1…cus_5, acme only" \
    jq_ok -s 'map(.type) == ["payment.failed","payment.failed","payment.failed","payment.failed","payment.failed"]
              and map(.key) == ["cus_1","cus_2","cus_3","cus_4","cus_5"] and (map(.tenant) | unique) == ["acme"]' \
    < <(sed -n 's/^data: //p' "$WORK/a.sse")
check "globex's SSE: its own payment.failed only" \
    jq_ok -s 'map([.tenant, .key, .type]) == [["globex","cus_1","payment.failed"]]' < <(sed -n 's/^data: //p' "$WORK/b.sse")
finish
