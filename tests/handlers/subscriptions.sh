#!/usr/bin/env bash
# The subscriptions handler through the real CLI: the subscription
# lifecycle, invoices, payment.failed / subscription.canceled, Stripe's
# out-of-order delivery (an older event never overwrites a newer state; a
# tie on `created` is broken by the event id), lifetime_paid counting each
# invoice once, the derived stream and replay. Fixture:
# fixtures/subscriptions.ndjson; expected: fixtures/subscriptions/*.json.
#
#   cus_life    trialing -> active -> past_due -> active -> deleted; invoice
#               finalized, paid + payment_succeeded (counted once),
#               payment_failed (payment.failed), deleted
#               (subscription.canceled); tenant u has its own cus_life
#   cus_ooo     an older created after a newer updated; a tie on created
#               (evt_o3a < evt_o3b: the later-delivered evt_o3a is stale);
#               a stale invoice.paid still counted in lifetime_paid; stale
#               payment_failed and deleted emit nothing; a redelivered
#               event is stale; a second currency
#   cus_tie     the same tie delivered the other way round: same result
#   cus_new     API 2025-03-31 shapes: period on the item, invoice parent;
#               deleted without status/canceled_at
#   cus_legacy  a legacy plan object and an expanded customer
#   ignored     customer.created, charge.refunded without customer
set -euo pipefail
. "$(dirname "$0")/lib.sh"

append "$FIXTURES/subscriptions.ndjson"

for c in cus_life cus_ooo cus_tie cus_new cus_legacy; do
    check "subscriptions/$c.json" show subscriptions "$c" --tenant t
done
check subscriptions/cus_life.u.json show subscriptions cus_life --tenant u
# Types it does not handle and events without a customer make no document.
[ "$(cairn show subscriptions --tenant t | wc -l)" = 5 ] || fail "unexpected documents"
echo "ok ignored events make no document"
check subscriptions/stream.json stream subscriptions

replay_matches
chunks_match "$FIXTURES/subscriptions.ndjson"
