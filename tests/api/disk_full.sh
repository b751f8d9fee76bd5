#!/usr/bin/env bash
# disk_full.sh — a full disk under the server: ingest is refused with 503
# naming the reason (and Retry-After), nothing acknowledged is lost, the
# server stays up and says so once on stderr; once space is freed, ingest
# goes on where it stopped (dense seqs) and the state follows.
#
# The data directory is on a tmpfs of its own, filled with a file until a
# few MiB are left. Needs root (mount); exits 77 (skipped) where no tmpfs
# can be mounted.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FS=$(mktemp -d "${TMPDIR:-/tmp}/cairn-fs.XXXXXX")
if ! mount -t tmpfs -o size=420m tmpfs "$FS" 2>/dev/null; then
    rmdir "$FS"
    echo "# skipped: cannot mount a tmpfs here (needs root)"
    exit 77
fi
# lib.sh's cleanup stops the server first; then the file system can go
# (set +e: a failed run's status must not stop the trap before umount).
trap 'st=$?; set +e; (exit "$st"); cleanup; umount "$FS" && rmdir "$FS"; exit "$st"' EXIT
DATA=$FS/data

# batch N: 500 telemetry inputs with ids n-N-K, ~110 KB.
batch() {
    awk -v n="$1" 'BEGIN { for (k = 0; k < 500; k++)
        printf "{\"type\":\"telemetry\",\"id\":\"n-%d-%d\",\"payload\":{\"device_id\":\"d%d\",\"event_type\":\"status\",\"battery\":%d,\"data\":{\"note\":\"%080d\"}}}\n", n, k, k % 20, (n + k) % 101, k }' >"$WORK/batch.ndjson"
}

start_server
ING=$(token acme ingest,read)
avail=$(df -m --output=avail "$FS" | tail -1)
head -c $(((avail - 6) * 1048576)) /dev/zero >"$FS/filler" 2>/dev/null || true
acked=0
n=0
while [ "$n" -lt 200 ]; do
    n=$((n + 1))
    batch "$n"
    post_file "$ING" application/x-ndjson "$WORK/batch.ndjson"
    [ "$STATUS" = 202 ] || break
    acked=$((acked + $(jq '[.results[] | select(.seq)] | length' <<<"$BODY")))
done
check "some batches were acknowledged before the disk filled ($acked events)" [ "$acked" -gt 0 ]
expect "the disk full: 503 naming the reason" 503 \
    "$(err unavailable 'the log could not be written: no space left on the disk')"
eq "... with Retry-After" "$(header Retry-After)" 1
post_file "$ING" application/x-ndjson "$WORK/batch.ndjson"
expect_status "a second write on the full disk: 503 again" 503
server_alive "the disk full"
METRICS=$(token acme metrics)
metric() { curl -s -m 2 -H "Authorization: Bearer $METRICS" "$URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
eq "metrics: cairn_log_write_failing 1" "$(metric cairn_log_write_failing)" 1
eq "metrics: cairn_log_write_failures_total 2" "$(metric cairn_log_write_failures_total)" 2
eq "the server said it once on stderr" \
    "$(grep -c '^cairn: the log could not be written: no space left on the disk; ingest answers 503 until a write succeeds$' "$SERVER_LOG")" 1

# A backup onto the full disk fails, saying why, and leaves nothing a
# later command could open half-written (it wrote under .partial).
if "$CAIRN" backup --data "$DATA" "$FS/copy" >/dev/null 2>"$WORK/backup.err"; then
    fail "a backup onto the full disk succeeded"
else
    check "a backup onto the full disk says why: $(cat "$WORK/backup.err")" \
        grep -q 'no space left on the disk' "$WORK/backup.err"
fi
eq "... and leaves its directory empty" "$(ls -A "$FS/copy" 2>/dev/null)" ""
rm -f "$FS/filler"
post_file "$ING" application/x-ndjson "$WORK/batch.ndjson"
expect_jq "space freed: the same batch is accepted, its seqs right after the last acknowledged" 202 \
    "[.results[].seq] == [range($((acked + 1)); $((acked + 501)))]"
eq "the server said that too" "$(grep -c '^cairn: the log is written again$' "$SERVER_LOG")" 1
eq "metrics: cairn_log_write_failing 0 again" "$(metric cairn_log_write_failing)" 0
get "$ING" "/v1/devices/d19?min_seq=$((acked + 500))"
expect_jq "the state followed" 200 ".seq == $((acked + 500)) and .item.battery == $(((n + 499) % 101))"
stop_server

check "the chain verifies" bash -c "'$CAIRN' verify --data '$DATA' | jq -e '.ok and .events == $((acked + 500))' >/dev/null"
live=$("$CAIRN" digest --data "$DATA")
clean=$("$CAIRN" replay --data "$DATA" --into "$WORK/clean")
eq "the state equals a clean replay" "$live" "$clean"

# `cairn append` on the full disk: the batch that cannot be written is
# answered line by line with why, no further input is read, exit 1; what it
# acknowledged is in the log.
head0=$("$CAIRN" head --data "$DATA" | jq .seq)
avail=$(df -m --output=avail "$FS" | tail -1)
head -c $(((avail - 4) * 1048576)) /dev/zero >"$FS/filler" 2>/dev/null || true
for n in $(seq 1000 1100); do batch "$n" && sed 's/^{/{"tenant":"acme",/' "$WORK/batch.ndjson"; done >"$WORK/many.ndjson"
run_st=0
"$CAIRN" append --data "$DATA" "$WORK/many.ndjson" >"$WORK/append.out" 2>"$WORK/append.err" || run_st=$?
eq "append on the full disk: exit status 1" "$run_st" 1
check "it said why and that it stopped: $(head -c 300 "$WORK/append.err")" \
    grep -q 'no space left on the disk; no further input is read' "$WORK/append.err"
acked=$(jq -s '[.[] | select(.seq)] | length' "$WORK/append.out")
unwritten=$(jq -s '[.[] | select(.error.code == "unavailable" and .error.message == "the log could not be written: no space left on the disk")] | length' "$WORK/append.out")
check "every line it answered has a seq or that error ($acked acknowledged, $unwritten not written)" \
    [ "$((acked + unwritten))" = "$(wc -l <"$WORK/append.out")" ] && [ "$unwritten" -gt 0 ]
check "it stopped reading: $(wc -l <"$WORK/append.out") of $(wc -l <"$WORK/many.ndjson") lines answered" \
    [ "$(wc -l <"$WORK/append.out")" -lt "$(wc -l <"$WORK/many.ndjson")" ]
rm -f "$FS/filler"
eq "what it acknowledged is in the log" "$("$CAIRN" head --data "$DATA" | jq .seq)" "$((head0 + acked))"
check "the chain still verifies" bash -c "'$CAIRN' verify --data '$DATA' | jq -e .ok >/dev/null"
finish
