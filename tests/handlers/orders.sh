#!/usr/bin/env bash
# The orders handler through the real CLI: the lifecycle, invalid
# transitions, late events, field updates out of order, the history bound,
# the derived stream and replay. Fixture: fixtures/orders.ndjson (one order
# per case); expected documents: fixtures/orders/<order_id>.json.
#
#   o-happy             created … delivered, with an update in transit
#                       (and tenant u has its own o-happy)
#   o-skip              created -> delivered: skips confirmed (invalid)
#   o-back              picked_up -> confirmed (backwards), picked_up again
#                       with a later time (already): invalid
#   o-cancel-delivered  cancelled after delivered, with a later and an
#                       earlier time than the delivery: both invalid
#   o-update-cancelled  updated / confirmed / cancelled after cancelled:
#                       late when older than the cancellation, else invalid
#   o-unknown           confirmed before created: invalid (from null), kept
#   o-dup-created       created twice: invalid; its retry (same time): late
#   o-late              retries and late steps: late; a next step with an
#                       older time applies but status_since does not go back
#   o-fields            field updates out of order, per field by event time
#   o-flood (generated) the history bound
set -euo pipefail
. "$(dirname "$0")/lib.sh"

append "$FIXTURES/orders.ndjson"

# One expected document per case (see the fixture for the inputs).
for id in o-happy o-skip o-back o-cancel-delivered o-update-cancelled o-unknown \
    o-dup-created o-late o-fields; do
    check "orders/$id.json" show orders "$id" --tenant t
done
# Same order id, another tenant: another order.
check orders/o-happy.u.json show orders o-happy --tenant u
# Every order.invalid_transition, in order.
check orders/stream.json stream orders

# The history bound: 1 + 300 inputs keep the last 256 entries.
flood=$WORK/flood.ndjson
{
    echo '{"type":"order","tenant":"t","time":1772359200000000000,"payload":{"order_id":"o-flood","event_type":"order.created"}}'
    for i in $(seq 1 300); do
        printf '{"type":"order","tenant":"t","time":%d,"payload":{"order_id":"o-flood","event_type":"order.updated","total_amount":%d}}\n' \
            $((1772359200000000000 + i * 1000000000)) "$i"
    done
} >"$flood"
append "$flood"
first=$(cairn head | jq '.seq - 300')
jcheck "history keeps the last 256 of 301 inputs" \
    ".history | length == 256" show orders o-flood --tenant t
jcheck "history_dropped counts the 45 dropped" \
    ".history_dropped == 45 and .counts == {\"applied\":301,\"late\":0,\"invalid\":0}" \
    show orders o-flood --tenant t
jcheck "the oldest kept entry is the 46th input, the newest the last" \
    ".history[0].seq == $first + 45 and .history[255].seq == $first + 300
     and .history[255].time == \"2026-03-01T10:05:00Z\" and .total_amount == 300" \
    show orders o-flood --tenant t

replay_matches
chunks_match "$FIXTURES/orders.ndjson" "$flood"
