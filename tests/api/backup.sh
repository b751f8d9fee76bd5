#!/usr/bin/env bash
# backup.sh — `cairn backup DEST` while the server takes writes: the copy
# is a consistent prefix of the log (its head's hash is the live log's at
# that seq, the chain verifies), its state is not ahead of its log, and it
# restores — a server on the copy rebuilds the index, catches the state up
# (equal to a clean replay of the copy), serves the views and entity
# streams, and still knows the idempotency ids it holds.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# batch N: 200 telemetry inputs with ids b-N-K.
batch() {
    awk -v n="$1" 'BEGIN { for (k = 0; k < 200; k++)
        printf "{\"type\":\"telemetry\",\"id\":\"b-%d-%d\",\"payload\":{\"device_id\":\"d%d\",\"event_type\":\"status\",\"battery\":%d}}\n", n, k, k % 10, (n + k) % 101 }'
}

start_server
ING=$(token acme ingest,read)
for n in 1 2 3; do
    batch "$n" >"$WORK/b$n.ndjson"
    post_file "$ING" application/x-ndjson "$WORK/b$n.ndjson"
    expect_status "batch $n before the backup" 202
done
# Writes go on while the backup runs.
producer() {
    local n=100
    while :; do
        batch "$n" | curl -s -m 10 -o /dev/null -H "Authorization: Bearer $ING" \
            -H 'Content-Type: application/x-ndjson' --data-binary @- "$URL/v1/events" || true
        n=$((n + 1))
    done
}
bg producer
sleep 0.3
"$CAIRN" backup --data "$DATA" "$WORK/copy" >"$WORK/backup.json" 2>"$WORK/backup.err" ||
    die "cairn backup failed: $(cat "$WORK/backup.err")"
sleep 0.3
kill "$BG_PID"
wait "$BG_PID" 2>/dev/null || true
stop_server

head=$(jq .log_head "$WORK/backup.json")
check "the copy holds at least what was acknowledged before it began ($head events)" [ "$head" -ge 600 ]
check "... and the server wrote on meanwhile: the live log is longer" \
    [ "$("$CAIRN" head --data "$DATA" | jq .seq)" -gt "$head" ]
eq "the copy's head is the live log's event at that seq" "$(jq -r .hash "$WORK/backup.json")" \
    "$("$CAIRN" tail --data "$DATA" --from "$head" --limit 1 | jq -r .hash)"
check "the copy's chain verifies" \
    bash -c "'$CAIRN' verify --data '$WORK/copy' | jq -e '.ok and .events == $head' >/dev/null"
check "its state is not ahead of its log ($(jq .state_checkpoint "$WORK/backup.json"))" \
    [ "$(jq .state_checkpoint "$WORK/backup.json")" -le "$head" ]
check "no log index was copied (it is derived)" [ ! -e "$WORK/copy/log/index" ]
eq "entity reads of the copy before any writer opened it: the whole log scanned" \
    "$("$CAIRN" tail --data "$WORK/copy" --tenant acme --key d3 | jq -c -s 'map(.seq)')" \
    "$("$CAIRN" tail --data "$DATA" --tenant acme --key d3 | jq -c -s "map(select(.seq <= $head) | .seq)")"
"$CAIRN" backup --data "$DATA" "$WORK/copy" >/dev/null 2>"$WORK/again.err" && fail "a backup into a non-empty directory was accepted"
eq "a backup into a non-empty directory is refused" "$(cat "$WORK/again.err")" \
    "{\"error\":{\"code\":\"usage\",\"message\":\"backup $WORK/copy: the directory exists and is not empty\"}}"

# Restore: a server on the copy.
clean=$("$CAIRN" replay --data "$WORK/copy" --into "$WORK/clean")
DATA=$WORK/copy
start_server
eq "the restored server's state equals a clean replay of the copy" \
    "$("$CAIRN" digest --data "$DATA")" "$clean"
get "$ING" /v1/devices/d3
expect_jq "the restored server serves the views" 200 ".seq == $head and .item.device_id == \"d3\""
post_file "$ING" application/x-ndjson "$WORK/b2.ndjson"
expect_jq "it knows the ids the copy holds: batch 2 again is all duplicates" 202 \
    '[.results[] | select(.duplicate != true)] | length == 0'
stop_server
finish
