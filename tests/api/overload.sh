#!/usr/bin/env bash
# overload.sh — backpressure: with a writer queue of 4 events and a writer
# that waits up to 2 s for a full batch, a request that does not fit in the
# queue is answered 429 with Retry-After at once and appends nothing; it
# succeeds when retried; a burst of concurrent batches gets 202s and 429s
# and exactly the 202s' events are in the log; a batch larger than the
# whole queue is a 413, not a retryable 503.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

echo '{"log":{"queue_max":4,"batch_max":4,"batch_wait_us":2000000}}' >"$CONFIG"
start_server
ING=$(token acme ingest)
AUD=$(token acme audit)
HEAD_TOKEN=$AUD

batch() { # batch PREFIX N > FILE
    local i
    for i in $(seq 1 "$2"); do
        echo "{\"type\":\"telemetry\",\"id\":\"$1-$i\",\"payload\":{\"device_id\":\"$1-$i\",\"event_type\":\"status\"}}"
    done
}
batch a 3 >"$WORK/a.ndjson"
batch b 2 >"$WORK/b.ndjson"

# A: 3 events; the writer waits for a fourth (up to 2 s).
curl -s -m 15 -o "$WORK/a.body" -w '%{http_code}' -H "Authorization: Bearer $ING" \
    -H 'Content-Type: application/x-ndjson' --data-binary "@$WORK/a.ndjson" "$URL/v1/events" >"$WORK/a.status" &
pa=$!
sleep 0.4
t0=$(date +%s%N)
post_file "$ING" application/x-ndjson "$WORK/b.ndjson"
ms=$((($(date +%s%N) - t0) / 1000000))
expect "B (2 events) does not fit in the queue: 429" 429 "$(err overloaded 'the ingest queue is full; retry')"
eq "429 says when to retry" "$(header Retry-After)" 1
eq "429 keeps the connection" "$(header Connection)" keep-alive
check "429 is answered at once, not after the writer's wait (${ms} ms)" [ "$ms" -lt 1500 ]
post_json "$ING" '{"type":"telemetry","id":"b-json","payload":{"device_id":"b-json","event_type":"status"}}' -H 'Expect:' >/dev/null
# (a single event fits: 3 + 1 = 4; it completes the batch)
expect "C (1 event) fills the queue exactly and completes the batch" 202 '{"seq":4}'
wait "$pa" || true
eq "A is committed with C" "$(cat "$WORK/a.status")" 202
check "A's seqs" jq_ok '.results == [{"line":1,"seq":1},{"line":2,"seq":2},{"line":3,"seq":3}]' "$WORK/a.body"
get "$AUD" /v1/log
expect_jq "the refused request appended nothing" 200 '(.events | map(.key)) == ["a-1","a-2","a-3","b-json"]'
post_file "$ING" application/x-ndjson "$WORK/b.ndjson" -H 'Expect:'
expect_jq "B retried: accepted" 202 '(.results | map(.seq)) == [5,6]'
get "$AUD" /v1/log
expect_jq "B retried later: appended once" 200 '([.events[].key] | map(select(startswith("b-"))) | sort) == ["b-1","b-2","b-json"]'

# A burst: 24 concurrent batches of 1, 2 or 3 events while the queue holds 4.
head0=$(head_seq)
pids=()
for i in $(seq 1 24); do
    batch "burst$i" $((i % 3 + 1)) >"$WORK/burst$i.ndjson"
    curl -s -m 30 -o "$WORK/burst$i.body" -w '%{http_code}' -H "Authorization: Bearer $ING" \
        -H 'Content-Type: application/x-ndjson' -H 'Expect:' --data-binary "@$WORK/burst$i.ndjson" \
        "$URL/v1/events" >"$WORK/burst$i.status" &
    pids+=($!)
done
wait "${pids[@]}" || true
ok=0 busy=0 other=0 appended=0
for i in $(seq 1 24); do
    case $(cat "$WORK/burst$i.status") in
    202) ok=$((ok + 1)) appended=$((appended + i % 3 + 1)) ;;
    429) busy=$((busy + 1)) ;;
    *) other=$((other + 1)) ;;
    esac
done
echo "# burst: $ok accepted, $busy refused with 429, $other other"
check "the burst got at least one 429" [ "$busy" -ge 1 ]
check "and at least one 202" [ "$ok" -ge 1 ]
eq "and nothing but 202 and 429" "$other" 0
eq "exactly the accepted batches' events were appended" "$(head_seq)" $((head0 + appended))
for i in $(seq 1 24); do
    if [ "$(cat "$WORK/burst$i.status")" = 429 ]; then
        check "a 429 in the burst is the overloaded error" \
            jq_ok --argjson e "$(err overloaded 'the ingest queue is full; retry')" '. == $e' "$WORK/burst$i.body"
        break
    fi
done
get "$AUD" "/v1/log?from=$((head0 + 1))&limit=1000"
accepted_keys=$(for i in $(seq 1 24); do
    if [ "$(cat "$WORK/burst$i.status")" = 202 ]; then jq -r .payload.device_id "$WORK/burst$i.ndjson"; fi
done | sort | jq -R . | jq -sc .)
expect_jq "the log holds the accepted batches' events, each once" 200 '([.events[].key] | sort) == $k' --argjson k "$accepted_keys"
get "$AUD" /v1/log/verify
expect_jq "the chain verifies" 200 '.ok == true'
req GET /metrics -H "Authorization: Bearer $(token acme metrics)"
check "metrics count the 429s" grep -q '^cairn_rejected_total{reason="overloaded"} ' <<<"$BODY"

# A batch larger than the queue can never be queued: retrying is useless.
batch big 5 >"$WORK/big.ndjson"
post_file "$ING" application/x-ndjson "$WORK/big.ndjson" -H 'Expect:'
expect_jq "[BUG-9] a batch larger than the whole writer queue: 413, not a retryable 503" 413 '.error.code == "too_large"'

stop_server
finish
