#!/usr/bin/env bash
# crash.sh — no acknowledged event is ever lost, across kill -9.
#
# Five rounds (more while none acknowledged anything) on one data directory: a generator writes an endless stream
# of valid events, each with a unique idempotency id, into `cairn append`;
# after a random 0.2–1.5 s the cairn process is killed with SIGKILL. Every
# result line it printed is an acknowledgement (results are printed only
# after the batch holding them committed), so each acknowledged seq must be
# in the log with the id of the line it answered, and the chain must verify.
#
# Needs: $CAIRN, $CAIRN_SCHEMAS; jq, sort, join.
set -euo pipefail

: "${CAIRN:?CAIRN must name the cairn binary}"
: "${CAIRN_SCHEMAS:?CAIRN_SCHEMAS must name the schema directory}"
export CAIRN_SCHEMAS

ROUNDS=${CRASH_ROUNDS:-5}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

data=$work/data

# generate ROUND — endless NDJSON; line N carries id "r<ROUND>-<N>".
generate() {
    local r=$1 n=0
    while :; do
        n=$((n + 1))
        printf '{"type":"telemetry","tenant":"crash","id":"r%d-%d","time":%d,"payload":{"device_id":"dev-%d","event_type":"reading","data":{"round":%d,"n":%d}}}\n' \
            "$r" "$n" $((1795255200000000000 + r * 1000000000000 + n)) $((n % 17)) "$r" "$n" ||
            return 0
    done
}

total_acked=0
round=0
# ROUNDS rounds, and up to 5 more while nothing was acknowledged yet (a
# machine so loaded that no batch committed within the first delays).
while [[ $round -lt $ROUNDS || ($total_acked -eq 0 && $round -lt $((ROUNDS + 5))) ]]; do
    round=$((round + 1))
    ack=$work/ack.$round
    # a random delay of 200..1500 ms; 3 s in the extra rounds
    delay_ms=$((200 + RANDOM % 1301))
    [[ $round -le $ROUNDS ]] || delay_ms=3000
    fifo=$work/in.$round
    mkfifo "$fifo"
    "$CAIRN" append --data "$data" <"$fifo" >"$ack" 2>"$work/err.$round" &
    cairn_pid=$!
    generate "$round" >"$fifo" 2>/dev/null &
    gen_pid=$!
    pids+=("$cairn_pid" "$gen_pid")
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    kill -9 "$cairn_pid"
    set +e
    { wait "$cairn_pid"; } 2>/dev/null
    st=$?
    { wait "$gen_pid"; } 2>/dev/null # ends on the broken pipe
    set -e
    [[ $st -eq 137 ]] || fail "round $round: cairn exited with $st before the kill: $(cat "$work/err.$round")"

    # Only whole lines count: the kill may cut the last one short.
    if [[ -s $ack && $(tail -c1 "$ack" | od -An -c | tr -d ' ') != '\n' ]]; then
        sed -i '$d' "$ack"
    fi
    # every acknowledgement is a plain success: {"line":N,"seq":S}
    bad=$(jq -c 'select((keys_unsorted != ["line","seq"]) or (.seq < 1))' "$ack" | head -3)
    [[ -z $bad ]] || fail "round $round: unexpected result lines: $bad"
    acked=$(wc -l <"$ack")
    # seq -> id the producer gave that line
    jq -r --arg r "$round" '"\(.seq) r\($r)-\(.line)"' "$ack" | sort >"$work/acked.$round"
    # acks are in input order and their seqs strictly increase
    jq -s -e '[.[] | .seq] as $s | [range(1; $s | length) | $s[.] > $s[. - 1]] | all' "$ack" >/dev/null ||
        fail "round $round: acknowledged seqs do not increase"
    jq -s -e '[.[] | .line] == [range(1; length + 1)]' "$ack" >/dev/null ||
        fail "round $round: acknowledgements skip or reorder lines"

    # what the log holds now
    "$CAIRN" tail --data "$data" | jq -r '"\(.seq) \(.id)"' | sort >"$work/log.$round"
    missing=$(comm -23 "$work/acked.$round" "$work/log.$round" | head -5)
    [[ -z $missing ]] || fail "round $round: acknowledged but not in the log (seq id): $missing"
    # earlier rounds' acknowledgements are all still there
    for prev in $(seq "$round"); do
        missing=$(comm -23 "$work/acked.$prev" "$work/log.$round" | head -5)
        [[ -z $missing ]] || fail "round $round: round $prev's acknowledged events are gone: $missing"
    done
    # no id twice: every line was appended at most once
    dups=$(cut -d' ' -f2 "$work/log.$round" | sort | uniq -d | head -3)
    [[ -z $dups ]] || fail "round $round: ids stored twice: $dups"

    head_seq=$("$CAIRN" head --data "$data" | jq -r .seq)
    [[ $(wc -l <"$work/log.$round") -eq $head_seq ]] || fail "round $round: tail count != head $head_seq"
    "$CAIRN" verify --data "$data" >"$work/verify.$round" || fail "round $round: verify: $(cat "$work/verify.$round")"
    jq -e --argjson n "$head_seq" '.ok == true and .events == $n' "$work/verify.$round" >/dev/null ||
        fail "round $round: verify: $(cat "$work/verify.$round")"
    total_acked=$((total_acked + acked))
    echo "round $round: killed after ${delay_ms} ms, $acked acknowledged, log head $head_seq"
done

[[ $total_acked -gt 0 ]] || fail "no round acknowledged anything: the test proved nothing"
echo "crash: ok ($total_acked acknowledged events over $round rounds)"
