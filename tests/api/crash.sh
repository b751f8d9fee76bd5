#!/usr/bin/env bash
# crash.sh — what the HTTP API acknowledged survives kill -9 of the server.
#
# ROUNDS rounds (CRASH_ROUNDS, default 4) on one data directory: three
# producers POST NDJSON batches of 40 events (telemetry and orders, each
# with a unique idempotency id) as fast as the server answers; after a
# random 0.4-1.6 s the server is killed with SIGKILL, mid-request, and
# started again (it catches its state up from the log). A 202 answer is
# the acknowledgement: every seq it names must be in the log afterwards,
# with the id of the line it answered. Then every batch is POSTed once
# more, as a client retries what it is not sure of (every batch without a
# 202, and a tenth of the others): nothing is appended twice (each id is in
# the log exactly once), acknowledged lines answer as duplicates of their
# seq. At the end the chain verifies and the state the
# server built across the crashes equals a clean `cairn replay --into`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROUNDS=${CRASH_ROUNDS:-4}
PRODUCERS=3
BATCH=40
ING=

# batch ROUND PRODUCER N: the N-th batch of a producer, as NDJSON.
batch() {
    awk -v r="$1" -v p="$2" -v n="$3" -v b="$BATCH" 'BEGIN {
        for (k = 0; k < b; k++) {
            id = sprintf("r%d-p%d-%d-%d", r, p, n, k)
            if (k % 4 == 3)
                printf "{\"type\":\"order\",\"id\":\"%s\",\"payload\":{\"order_id\":\"o-%s\",\"event_type\":\"order.created\",\"customer_id\":\"c%d\"}}\n", id, id, k
            else
                printf "{\"type\":\"telemetry\",\"id\":\"%s\",\"payload\":{\"device_id\":\"d%d-%d\",\"event_type\":\"status\",\"battery\":%d}}\n", id, p, k % 16, (n + k) % 101
        }
    }'
}

# producer ROUND P: POSTs batches until killed; for each 202 it keeps the
# batch (WORK/sent) and the answer (WORK/acked), one file each.
producer() {
    local r=$1 p=$2 n=0 f
    while :; do
        f=$WORK/sent/r$r-p$p-$n
        batch "$r" "$p" "$n" >"$f.tmp" && mv "$f.tmp" "$f.ndjson" # never half a batch
        if curl -s -m 10 -o "$f.answer" -w '%{http_code}' -H "Authorization: Bearer $ING" \
            -H 'Content-Type: application/x-ndjson' --data-binary "@$f.ndjson" \
            "$URL/v1/events" >"$f.status" 2>/dev/null && [ "$(cat "$f.status")" = 202 ]; then
            mv "$f.answer" "$WORK/acked/r$r-p$p-$n.answer"
        fi
        n=$((n + 1))
    done
}

# acked_ids: "seq id" of every line a 202 acknowledged, from the answers
# and the batches they answered (one jq and one awk over all of them).
acked_ids() {
    (cd "$WORK/acked" && jq -r 'input_filename as $f | .results[] | select(.seq) |
        "\($f | ltrimstr("./") | rtrimstr(".answer")) \(.line) \(.seq)"' ./*.answer) >"$WORK/answers.txt"
    (cd "$WORK/sent" && awk '{ match($0, /"id":"[^"]*"/)
        f = FILENAME; sub(/^\.\//, "", f); sub(/\.ndjson$/, "", f)
        print f, FNR, substr($0, RSTART + 6, RLENGTH - 7) }' ./*.ndjson) >"$WORK/ids.txt"
    awk 'NR == FNR { id[$1 " " $2] = $3; next } { print $3, id[$1 " " $2] }' \
        "$WORK/ids.txt" "$WORK/answers.txt"
}

mkdir -p "$WORK/sent" "$WORK/acked"
start_server
ING=$(token acme ingest)
for r in $(seq 1 "$ROUNDS"); do
    pids=()
    for p in $(seq 1 "$PRODUCERS"); do
        producer "$r" "$p" &
        pids+=($!)
    done
    sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 0.4 + rand() * 1.2 }')"
    kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    kill "$WATCH_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
    WATCH_PID=
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    acked=$(find "$WORK/acked" -name "r$r-*" | wc -l)
    pass "round $r: the server killed with $acked batches of this round acknowledged"
    start_server # catches up from the log before it serves
done

# Every acknowledged seq holds the id of the line it answered.
acked_ids | sort >"$WORK/acked.txt"
[ -s "$WORK/acked.txt" ] || die "no batch was acknowledged at all"
stop_server
"$CAIRN" tail --data "$DATA" | jq -r '"\(.seq) \(.id)"' | sort >"$WORK/log.txt"
missing=$(comm -23 "$WORK/acked.txt" "$WORK/log.txt" | wc -l)
check "all $(wc -l <"$WORK/acked.txt") acknowledged events are in the log with their ids ($missing missing)" \
    [ "$missing" = 0 ]

# A client retrying what it was not told (and some of what it was) appends
# nothing twice.
start_server
ING=$(token acme ingest)
dup_ok=0
i=0
for b in "$WORK"/sent/*.ndjson; do
    i=$((i + 1))
    [ -e "$WORK/acked/$(basename "$b" .ndjson).answer" ] && [ $((i % 10)) != 0 ] && continue
    post_file "$ING" application/x-ndjson "$b"
    if [ "$STATUS" = 202 ] && [ "$(jq '[.results[] | select(.error)] | length' <<<"$BODY")" = 0 ]; then
        dup_ok=$((dup_ok + 1))
    else
        fail "retry of $(basename "$b"): $STATUS $BODY"
    fi
done
pass "batches retried after the crashes: $dup_ok, each answered 202 with no error"
answers=("$WORK"/acked/*.answer)
a=${answers[0]}
b=$WORK/sent/$(basename "$a" .answer).ndjson
post_file "$ING" application/x-ndjson "$b"
expect_jq "an acknowledged batch retried: duplicates of the same seqs" 202 \
    "[.results[] | {line, seq}] == $(jq -c '[.results[] | {line, seq}]' "$a") and ([.results[] | select(.duplicate != true)] | length) == 0"
stop_server
"$CAIRN" tail --data "$DATA" | jq -r .id | sort | uniq -d >"$WORK/twice.txt"
check "no id is in the log twice" [ ! -s "$WORK/twice.txt" ]
sent=$(cat "$WORK"/sent/*.ndjson | jq -r .id | sort -u | wc -l)
logged=$("$CAIRN" tail --data "$DATA" | jq -r .id | sort -u | wc -l)
check "every id sent is in the log once ($sent sent, $logged in the log)" [ "$sent" = "$logged" ]
check "the chain verifies" bash -c "'$CAIRN' verify --data '$DATA' | jq -e .ok >/dev/null"

# The state the server built across the crashes is a clean replay's.
live=$("$CAIRN" digest --data "$DATA")
clean=$("$CAIRN" replay --data "$DATA" --into "$WORK/clean")
eq "the state after $ROUNDS crashes equals a clean replay" "$live" "$clean"
finish
