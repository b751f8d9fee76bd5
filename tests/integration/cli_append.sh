#!/usr/bin/env bash
# cli_append.sh — the `cairn` CLI end to end: append (result lines, exit
# statuses, duplicates, conflicts, results flushed per committed batch),
# tail (--from, --limit, --tenant/--key), head, verify (ok and tampered),
# and one writing process per data directory.
#
# Needs: $CAIRN (the built binary), $CAIRN_SCHEMAS; jq, cmp, grep, od, dd.
set -euo pipefail

: "${CAIRN:?CAIRN must name the cairn binary}"
: "${CAIRN_SCHEMAS:?CAIRN_SCHEMAS must name the schema directory}"
export CAIRN_SCHEMAS

work=$(mktemp -d)
bg_pid=
cleanup() {
    if [[ -n $bg_pid ]]; then kill "$bg_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# expect_eq NAME FILE_GOT FILE_WANT — byte-for-byte, with a diff on failure.
expect_file() {
    if ! cmp -s "$2" "$3"; then
        echo "FAIL: $1: output differs (want vs got):" >&2
        diff -u "$3" "$2" >&2 || true
        exit 1
    fi
}

expect_eq() {
    [[ $2 == "$3" ]] || fail "$1: got '$2', want '$3'"
}

# run_status VAR CMD... — runs CMD, stores its exit status in VAR.
run_status() {
    local __var=$1
    shift
    set +e
    "$@"
    printf -v "$__var" '%s' "$?"
    set -e
}

data=$work/data

# ---------------------------------------------------------------- append: a mixed file
T='"time":"2026-11-21T10:00:00Z"'
cat >"$work/mixed.ndjson" <<EOF
{"type":"telemetry","tenant":"acme","id":"m-1",$T,"payload":{"device_id":"d1","event_type":"status","status":"online"}}
{"type" "telemetry"}

{"type":"location","tenant":"acme",$T,"payload":{"device_id":"d1","lat":95,"lon":13.4}}
{"type":"telemetry","tenant":"acme","id":"m-1",$T,"payload":{"device_id":"d1","event_type":"status","status":"online"}}
{"type":"order","tenant":"acme","id":"o-1",$T,"payload":{"order_id":"ord-7","event_type":"order.created"}}
{"type":"nope","tenant":"acme","payload":{}}
{"type":"tick","tenant":"acme","payload":{"interval_ms":1000}}
{"type":"telemetry","tenant":"acme","expected_seq":0,$T,"payload":{"device_id":"d1","event_type":"status"}}
{"type":"telemetry","tenant":"acme","expected_seq":1,"time":"2026-11-21T10:00:01Z","payload":{"device_id":"d1","event_type":"reading","battery":80}}
   
{"type":"metric","tenant":"beta","id":"s-1","time":1795255202000000000,"payload":{"name":"up","labels":{"job":"api","az":"b"},"value":1}}
[1,2]
{"type":"telemetry","tennant":"acme","payload":{}}
{"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}
{"type":"telemetry","tenant":"beta","id":"m-1",$T,"payload":{"device_id":"d1","event_type":"status"}}
{"type":"location","tenant":"acme","time":"2026-11-21T10:00:03.5Z","payload":{"device_id":"d2","lat":-33.9,"lon":18.4}}
EOF

cat >"$work/mixed.want" <<EOF
{"line":1,"seq":1}
{"line":2,"error":{"code":"invalid_json","field":"","message":"not valid JSON at byte 19: ':' expected near '\"telemetry\"'"}}
{"line":4,"error":{"code":"out_of_range","field":"/payload/lat","message":"must be <= 90"}}
{"line":5,"seq":1,"duplicate":true}
{"line":6,"seq":2}
{"line":7,"error":{"code":"unknown_type","field":"/type","message":"unknown type nope (known types have a schema in $CAIRN_SCHEMAS)"}}
{"line":8,"error":{"code":"reserved_type","field":"/type","message":"type tick is appended by the engine only"}}
{"line":9,"error":{"code":"conflict","field":"/expected_seq","message":"the last event of this tenant and key is seq 1","actual_seq":1}}
{"line":10,"seq":3}
{"line":12,"seq":4}
{"line":13,"error":{"code":"not_object","field":"","message":"an event must be a JSON object"}}
{"line":14,"error":{"code":"unknown_field","field":"/tennant","message":"unknown field; an event has type, tenant, key, id, time, expected_seq and payload"}}
{"line":15,"error":{"code":"missing_field","field":"/tenant","message":"tenant is required"}}
{"line":16,"seq":5}
{"line":17,"seq":6}
EOF

run_status st "$CAIRN" append --data "$data" "$work/mixed.ndjson" >"$work/mixed.got"
expect_file "append mixed.ndjson" "$work/mixed.got" "$work/mixed.want"
expect_eq "exit status with rejected lines" "$st" 2

# ---------------------------------------------------------------- append: all accepted, from stdin
cat >"$work/good.ndjson" <<EOF
{"type":"telemetry","tenant":"acme","id":"m-2","time":"2026-11-21T10:00:04Z","payload":{"device_id":"d1","event_type":"heartbeat"}}
{"type":"telemetry","tenant":"acme","id":"m-1",$T,"payload":{"device_id":"d1","event_type":"status","status":"online"}}
{"type":"discovery","tenant":"acme","key":"acct/eu","time":"2026-11-21T10:00:05Z","payload":{"account_id":"111","region":"eu-west-1","resources":[]}}
EOF
cat >"$work/good.want" <<'EOF'
{"line":1,"seq":7}
{"line":2,"seq":1,"duplicate":true}
{"line":3,"seq":8}
EOF
run_status st "$CAIRN" append --data "$data" - <"$work/good.ndjson" >"$work/good.got"
expect_file "append good.ndjson (stdin)" "$work/good.got" "$work/good.want"
expect_eq "exit status when all accepted (a duplicate is accepted)" "$st" 0

# CRLF line ends, and a last line without a newline. Explicit times: the
# ids repeat events of 2026-11-21, and an event without one is stamped
# with the wall clock, which from 2026-11-24T10:00:04Z on put the
# originals past the 72 h dedup window (the test failed from then on).
printf '%s\r\n%s' \
    '{"type":"telemetry","tenant":"acme","id":"m-2","time":"2026-11-21T10:00:06Z","payload":{"device_id":"d1","event_type":"heartbeat"}}' \
    '{"type":"telemetry","tenant":"acme","id":"m-1","time":"2026-11-21T10:00:06Z","payload":{"device_id":"d1","event_type":"status"}}' \
    >"$work/crlf.ndjson"
printf '%s\n' '{"line":1,"seq":7,"duplicate":true}' '{"line":2,"seq":1,"duplicate":true}' >"$work/crlf.want"
run_status st "$CAIRN" append --data "$data" "$work/crlf.ndjson" >"$work/crlf.got"
expect_file "append with CRLF and no final newline" "$work/crlf.got" "$work/crlf.want"
expect_eq "exit status (CRLF)" "$st" 0

# no file argument: stdin as well; an empty input prints nothing
run_status st "$CAIRN" append --data "$data" </dev/null >"$work/empty.got"
expect_eq "exit status on empty input" "$st" 0
[[ ! -s $work/empty.got ]] || fail "empty input printed something"

# a missing file: exit 1, nothing appended
run_status st "$CAIRN" append --data "$data" "$work/no-such-file" >"$work/nofile.got" 2>"$work/nofile.err"
expect_eq "exit status for a missing file" "$st" 1
[[ ! -s $work/nofile.got ]] || fail "missing file printed results"
jq -e '.error.code == "io"' "$work/nofile.err" >/dev/null || fail "missing file: $(cat "$work/nofile.err")"

# ---------------------------------------------------------------- tail
# ingested, prev and hash depend on the wall clock; the rest is exact.
fields='{seq,time,type,tenant,key,id,source,payload}'
"$CAIRN" tail --data "$data" >"$work/tail.all"
jq -c "$fields" "$work/tail.all" >"$work/tail.got"
cat >"$work/tail.want" <<'EOF'
{"seq":1,"time":"2026-11-21T10:00:00Z","type":"telemetry","tenant":"acme","key":"d1","id":"m-1","source":"cli","payload":{"device_id":"d1","event_type":"status","status":"online"}}
{"seq":2,"time":"2026-11-21T10:00:00Z","type":"order","tenant":"acme","key":"ord-7","id":"o-1","source":"cli","payload":{"order_id":"ord-7","event_type":"order.created"}}
{"seq":3,"time":"2026-11-21T10:00:01Z","type":"telemetry","tenant":"acme","key":"d1","id":null,"source":"cli","payload":{"device_id":"d1","event_type":"reading","battery":80}}
{"seq":4,"time":"2026-11-21T10:00:02Z","type":"metric","tenant":"beta","key":"up{az=\"b\",job=\"api\"}","id":"s-1","source":"cli","payload":{"name":"up","labels":{"job":"api","az":"b"},"value":1}}
{"seq":5,"time":"2026-11-21T10:00:00Z","type":"telemetry","tenant":"beta","key":"d1","id":"m-1","source":"cli","payload":{"device_id":"d1","event_type":"status"}}
{"seq":6,"time":"2026-11-21T10:00:03.500Z","type":"location","tenant":"acme","key":"d2","id":null,"source":"cli","payload":{"device_id":"d2","lat":-33.9,"lon":18.4}}
{"seq":7,"time":"2026-11-21T10:00:04Z","type":"telemetry","tenant":"acme","key":"d1","id":"m-2","source":"cli","payload":{"device_id":"d1","event_type":"heartbeat"}}
{"seq":8,"time":"2026-11-21T10:00:05Z","type":"discovery","tenant":"acme","key":"acct/eu","id":null,"source":"cli","payload":{"account_id":"111","region":"eu-west-1","resources":[]}}
EOF
expect_file "tail" "$work/tail.got" "$work/tail.want"
# the chain links: prev of each is the hash of the one before, the first's is zero
jq -rs '[.[0].prev == ("0" * 64)] + [range(1; length) as $i | .[$i].prev == .[$i - 1].hash] | all' \
    "$work/tail.all" | grep -qx true || fail "tail: prev/hash do not chain"
# every line is one JSON object with exactly the envelope's fields, in order
jq -c 'keys_unsorted' "$work/tail.all" | sort -u >"$work/keys.got"
echo '["seq","time","ingested","type","tenant","key","id","source","payload","prev","hash"]' >"$work/keys.want"
expect_file "tail field order" "$work/keys.got" "$work/keys.want"

"$CAIRN" tail --data "$data" --from 3 --limit 2 | jq -c .seq | paste -sd, >"$work/t.got"
expect_eq "tail --from 3 --limit 2" "$(cat "$work/t.got")" "3,4"
"$CAIRN" tail --data "$data" --from=7 | jq -c .seq | paste -sd, >"$work/t.got"
expect_eq "tail --from=7" "$(cat "$work/t.got")" "7,8"
"$CAIRN" tail --data "$data" --limit 0 >"$work/t.got"
[[ ! -s $work/t.got ]] || fail "tail --limit 0 printed events"
"$CAIRN" tail --data "$data" --from 9 >"$work/t.got"
[[ ! -s $work/t.got ]] || fail "tail --from past the head printed events"
"$CAIRN" tail --data "$data" --tenant acme --key d1 | jq -c .seq | paste -sd, >"$work/t.got"
expect_eq "tail --tenant acme --key d1" "$(cat "$work/t.got")" "1,3,7"
"$CAIRN" tail --data "$data" --tenant beta --key d1 | jq -c .seq | paste -sd, >"$work/t.got"
expect_eq "tail --tenant beta --key d1" "$(cat "$work/t.got")" "5"
"$CAIRN" tail --data "$data" --tenant acme --key d1 --from 2 --limit 1 | jq -c .seq | paste -sd, >"$work/t.got"
expect_eq "tail --tenant acme --key d1 --from 2 --limit 1" "$(cat "$work/t.got")" "3"
"$CAIRN" tail --data "$data" --tenant acme --key nobody >"$work/t.got"
[[ ! -s $work/t.got ]] || fail "tail of an unknown entity printed events"
run_status st "$CAIRN" tail --data "$data" --tenant acme >/dev/null 2>"$work/t.err"
expect_eq "tail --tenant without --key" "$st" 1
jq -e '.error.code == "usage"' "$work/t.err" >/dev/null || fail "tail --tenant alone: $(cat "$work/t.err")"
run_status st "$CAIRN" tail --data "$data" --from -1 >/dev/null 2>&1
expect_eq "tail --from -1" "$st" 1
run_status st "$CAIRN" tail --data "$work/nowhere" >/dev/null 2>&1
expect_eq "tail of a directory without a log" "$st" 1

# ---------------------------------------------------------------- head, verify
last_hash=$(jq -r 'select(.seq == 8) | .hash' "$work/tail.all")
hash3=$(jq -r 'select(.seq == 3) | .hash' "$work/tail.all")
"$CAIRN" head --data "$data" >"$work/head.got"
echo "{\"seq\":8,\"hash\":\"$last_hash\"}" >"$work/head.want"
expect_file "head" "$work/head.got" "$work/head.want"
"$CAIRN" verify --data "$data" >"$work/verify.got"
echo "{\"ok\":true,\"events\":8,\"head\":\"$last_hash\"}" >"$work/verify.want"
expect_file "verify" "$work/verify.got" "$work/verify.want"
"$CAIRN" verify --data "$data" --from 2 --to 3 >"$work/verify.got"
echo "{\"ok\":true,\"events\":2,\"head\":\"$hash3\"}" >"$work/verify.want"
expect_file "verify --from 2 --to 3" "$work/verify.got" "$work/verify.want"
# an empty log
"$CAIRN" append --data "$work/empty" </dev/null
"$CAIRN" head --data "$work/empty" >"$work/head.got"
echo "{\"seq\":0,\"hash\":\"$(printf '0%.0s' {1..64})\"}" >"$work/head.want"
expect_file "head of an empty log" "$work/head.got" "$work/head.want"
"$CAIRN" verify --data "$work/empty" | jq -ce '{ok,events}' >"$work/verify.got"
echo '{"ok":true,"events":0}' >"$work/verify.want"
expect_file "verify of an empty log" "$work/verify.got" "$work/verify.want"

# ---------------------------------------------------------------- results are flushed per committed batch
# A producer that writes line 2 only after it has seen the result of line 1:
# if results were held back until more input or EOF, this would hang.
mkfifo "$work/in.fifo"
"$CAIRN" append --data "$data" <"$work/in.fifo" >"$work/slow.got" &
bg_pid=$!
exec 3>"$work/in.fifo"
echo '{"type":"telemetry","tenant":"acme","id":"slow-1","payload":{"device_id":"d3","event_type":"status"}}' >&3
for _ in $(seq 200); do
    [[ -s $work/slow.got ]] && break
    sleep 0.05
done
expect_eq "result of line 1 before line 2 was written" "$(cat "$work/slow.got")" '{"line":1,"seq":9}'

# while that append holds the log, a second writer is refused ...
run_status st "$CAIRN" append --data "$data" <"$work/good.ndjson" >"$work/second.got" 2>"$work/second.err"
expect_eq "a second writing process" "$st" 1
[[ ! -s $work/second.got ]] || fail "the refused writer printed results: $(cat "$work/second.got")"
expect_eq "the refused writer's error" "$(cat "$work/second.err")" \
    "{\"error\":{\"code\":\"busy\",\"message\":\"another process is writing to $data\"}}"
# ... and readers are not
expect_eq "head while appending" "$("$CAIRN" head --data "$data" | jq -c .seq)" 9
"$CAIRN" verify --data "$data" | jq -e '.ok == true and .events == 9' >/dev/null ||
    fail "verify while appending"

echo '{"type":"telemetry","tenant":"acme","id":"slow-1","payload":{"device_id":"d3","event_type":"status"}}' >&3
echo '{"type":"telemetry","tenant":"acme","payload":{"device_id":"d3"}}' >&3
exec 3>&-
run_status st wait "$bg_pid"
bg_pid=
expect_eq "slow producer exit status" "$st" 2
cat >"$work/slow.want" <<'EOF'
{"line":1,"seq":9}
{"line":2,"seq":9,"duplicate":true}
{"line":3,"error":{"code":"missing_field","field":"/payload/event_type","message":"is required"}}
EOF
expect_file "slow producer results" "$work/slow.got" "$work/slow.want"

# ---------------------------------------------------------------- verify catches a tampered byte
# LMDB stores values verbatim: change one byte of a payload in data.mdb
# (every copy of it, old pages included) and verify must name that event.
cat >"$work/marker.ndjson" <<'EOF'
{"type":"telemetry","tenant":"acme","payload":{"device_id":"d4","event_type":"status","data":{"note":"MARKER-ZQXJ-0001"}}}
{"type":"telemetry","tenant":"acme","payload":{"device_id":"d4","event_type":"status"}}
EOF
"$CAIRN" append --data "$data" "$work/marker.ndjson" >/dev/null
offsets=$(grep -abo 'MARKER-ZQXJ-0001' "$data/log/data.mdb" | cut -d: -f1)
[[ -n $offsets ]] || fail "marker not found in data.mdb"
for off in $offsets; do
    printf 'X' | dd of="$data/log/data.mdb" bs=1 seek="$off" conv=notrunc status=none
done
run_status st "$CAIRN" verify --data "$data" >"$work/verify.got"
expect_eq "verify exit status on a tampered log" "$st" 3
echo '{"ok":false,"seq":10,"reason":"hash does not match the envelope","events_verified":9}' >"$work/verify.want"
expect_file "verify of a tampered log" "$work/verify.got" "$work/verify.want"
# a range before it is still fine
"$CAIRN" verify --data "$data" --to 9 | jq -e '.ok == true and .events == 9' >/dev/null ||
    fail "verify --to 9 of a log tampered at 10"

# ---------------------------------------------------------------- limits.payload_max
# The config file's payload limit applies to append as to the server; a
# value that is not one is refused, naming the key, before anything runs.
echo '{"limits":{"payload_max":64}}' >"$work/small.json"
cat >"$work/sizes.ndjson" <<'EOF'
{"type":"telemetry","tenant":"acme","payload":{"device_id":"d5","event_type":"status"}}
{"type":"telemetry","tenant":"acme","payload":{"device_id":"d5","event_type":"status","data":{"note":"enough to pass 64 bytes of msgpack"}}}
EOF
run_status st "$CAIRN" append --data "$work/limited" --config "$work/small.json" "$work/sizes.ndjson" >"$work/sizes.got"
expect_eq "append over limits.payload_max: exit status" "$st" 2
cat >"$work/sizes.want" <<'EOF'
{"line":1,"seq":1}
{"line":2,"error":{"code":"too_large","field":"/payload","message":"payload is over the 64-byte limit"}}
EOF
expect_file "append with limits.payload_max 64" "$work/sizes.got" "$work/sizes.want"
# 64.0 is the integer 64 (JSON Schema's reading, and now the readers' too:
# they had ignored a real and kept the default).
echo '{"limits":{"payload_max":64.0}}' >"$work/real.json"
run_status st "$CAIRN" append --data "$work/limited-real" --config "$work/real.json" "$work/sizes.ndjson" >"$work/real.got"
expect_eq "limits.payload_max 64.0: exit status" "$st" 2
expect_file "limits.payload_max 64.0 is 64" "$work/real.got" "$work/sizes.want"
echo '{"limits":{"payload_max":"1MiB"}}' >"$work/bad.json"
run_status st "$CAIRN" append --data "$work/limited" --config "$work/bad.json" "$work/sizes.ndjson" >/dev/null 2>"$work/bad.err"
expect_eq "a payload_max that is no number: exit status" "$st" 1
echo "{\"error\":{\"code\":\"config\",\"message\":\"$work/bad.json: /limits/payload_max: must be an integer, got string\"}}" >"$work/bad.want"
expect_file "a payload_max that is no number" "$work/bad.err" "$work/bad.want"
expect_eq "... and nothing appended" "$("$CAIRN" head --data "$work/limited" | jq -c .seq)" 1

# ---------------------------------------------------------------- the config file is checked
# Every setting against what its reader accepts (engine/config.c), for
# every command: a misspelt key or a wrong type is named, not defaulted.
config_refused() { # config_refused NAME JSON MESSAGE
    echo "$2" >"$work/cfg.json"
    run_status st "$CAIRN" head --data "$data" --config "$work/cfg.json" >/dev/null 2>"$work/cfg.err"
    expect_eq "$1: exit status" "$st" 1
    echo "{\"error\":{\"code\":\"config\",\"message\":\"$work/cfg.json: $3\"}}" >"$work/cfg.want"
    expect_file "$1" "$work/cfg.err" "$work/cfg.want"
}
config_refused "a misspelt section" '{"lmits":{}}' '/lmits: is not allowed'
config_refused "a misspelt handler" '{"handlers":{"devics":{}}}' '/handlers/devics: no handler is named devics'
config_refused "settings for a handler that has none" '{"handlers":{"orders":{"x":1}}}' \
    '/handlers/orders: the orders handler has no settings'
config_refused "a handler setting of the wrong type" '{"handlers":{"devices":{"offline_after_s":"600"}}}' \
    '/handlers/devices/offline_after_s: must be an integer, got string'
config_refused "a handler setting out of range" '{"handlers":{"geofence":{"hitq_max":65537}}}' \
    '/handlers/geofence/hitq_max: must be <= 65536'
config_refused "a misspelt source in min_severity: the object branch is named" \
    '{"handlers":{"alerts":{"min_severity":{"geofenc":"info"}}}}' \
    '/handlers/alerts/min_severity: must match at least one of the 2 anyOf schemas (#1, the closest, says: /handlers/alerts/min_severity/geofenc is not allowed)'
config_refused "a writer setting out of range" '{"log":{"batch_max":0}}' '/log/batch_max: must be >= 1'
config_refused "a writer queue past its ceiling (allocated up front)" '{"log":{"queue_max":1048577}}' \
    '/log/queue_max: must be <= 1048576'
run_status st "$CAIRN" head --data "$data" --config "$work/no-such.json" >/dev/null 2>"$work/cfg.err"
expect_eq "a config file that is not there: exit status" "$st" 1
echo "{\"error\":{\"code\":\"config\",\"message\":\"unable to open $work/no-such.json: No such file or directory\"}}" >"$work/cfg.want"
expect_file "a config file that is not there (no 'line -1')" "$work/cfg.err" "$work/cfg.want"
config_refused "a misspelt HTTP limit" '{"limits":{"body_maximum":1}}' '/limits/body_maximum: is not allowed'
config_refused "a Stripe secret that is not a list" '{"stripe_secrets":{"acme":"f"}}' \
    '/stripe_secrets/acme: must be an array, got string'
echo '{"listen":"127.0.0.1:8080","apply_threads":1,"tick_interval_ms":500,"limits":{"payload_max":1048576},"log":{"batch_max":512},"handlers":{"devices":{"offline_after_s":600},"alerts":{"min_severity":{"geofence":"info"},"escalation_s":{"high":60}},"orders":{}}}' >"$work/good.json"
"$CAIRN" head --data "$data" --config "$work/good.json" >/dev/null || fail "a valid config is accepted"

echo "cli_append: ok"
