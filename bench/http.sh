#!/usr/bin/env bash
# bench/http.sh — the HTTP API under load, on loopback (issue #4):
#
#   1. GET /v1/devices/{id} (random device of DEVICES): latency at low
#      concurrency, latency at a paced ~30 000 req/s, and maximum
#      throughput (wrk);
#   2. POST /v1/events, NDJSON batches of BATCH events, events/s, next to
#      `cairn append` of as many of the same events into a fresh directory
#      (the ratio is the HTTP overhead), and the same batches as msgpack
#      (tests/api/msgpack.js; needs node, skipped without it);
#   3. SSE fan-out: SSE_SUBS subscribers on /v1/streams/subscriptions while
#      SSE_EVENTS Stripe invoice.payment_failed inputs are POSTed (each
#      derives one payment.failed): events delivered per second, over all
#      subscribers (live, bounded by ingest); then SSE_SUBS new subscribers
#      read the same stream from its start (catch-up: the fan-out alone).
#
# Goals (2-core machine): 30 000 GET/s with p99 under 2 ms; HTTP ingest at
# least 60 % of `cairn append`.
#
#   bench/http.sh                      # ~1.5 minutes; prints a table and a
#                                      # Markdown block for bench/RESULTS.md
#   CAIRN_BENCH_PROFILE=1 bench/http.sh   # + perf profiles of the server
#                                      # (call graphs want frame pointers:
#                                      # CMAKE_C_FLAGS=-fno-omit-frame-pointer)
#
# Settings (environment): CAIRN_BENCH_BUILD (build/bench), CAIRN_BENCH_PORT
# (18480), DURATION seconds per wrk run (10), DEVICES (1000), BATCH (1000),
# ROUNDS of the ingest comparison (3), SSE_SUBS
# (100), SSE_EVENTS (10000), TMPDIR (where the data goes: the disk under
# test; /tmp by default).
#
# wrk (Debian package `wrk`) has no fixed-rate mode (that is wrk2, not in
# Debian): "paced" runs make each connection wait 1 ms after each response
# (bench/http_get.lua), which bounds the rate but, like any closed-loop
# client, under-reports latency when the server stalls (coordinated
# omission). The server, wrk and the SSE client share the machine's cores.
# Everything listens on 127.0.0.1 only and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${CAIRN_BENCH_BUILD:-build/bench}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac # relative to the checkout
PORT=${CAIRN_BENCH_PORT:-18480}
DURATION=${DURATION:-10}
DEVICES=${DEVICES:-1000}
BATCH=${BATCH:-1000}
ROUNDS=${ROUNDS:-3}
SSE_SUBS=${SSE_SUBS:-100}
SSE_EVENTS=${SSE_EVENTS:-10000}
URL=http://127.0.0.1:$PORT

for tool in wrk curl; do
    command -v $tool >/dev/null || {
        echo "bench/http.sh: needs $tool (apt-get install $tool)" >&2
        exit 1
    }
done
if [ "${CAIRN_BENCH_PROFILE:-0}" = 1 ] && ! command -v perf >/dev/null; then
    echo "bench/http.sh: CAIRN_BENCH_PROFILE=1 needs perf (apt-get install linux-perf)" >&2
    exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
    echo "bench/http.sh: port $PORT is in use (set CAIRN_BENCH_PORT)" >&2
    exit 1
fi

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_TESTS=OFF >/dev/null
cmake --build "$BUILD" --target cairn bench_http_sse >/dev/null
CAIRN=$BUILD/engine/cairn
SSE=$BUILD/bench/http_sse

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench-http-XXXXXX")
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "bench/http.sh: $*" >&2; }
# val KEY LINE: the value of KEY=value in LINE.
val() { grep -o "$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# ---------------------------------------------------------------- inputs
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret"
TOKEN=$("$CAIRN" token --tenant bench --role ingest,read --ttl 3600 --jwt-secret-file "$WORK/secret")

# One telemetry input per device (the GET targets), ~200 bytes each.
telemetry() { # telemetry COUNT
    awk -v n="$1" -v d="$DEVICES" 'BEGIN { for (i = 0; i < n; i++) printf \
        "{\"type\":\"telemetry\",\"tenant\":\"bench\",\"time\":%d,\"payload\":{\"device_id\":\"dev-%04d\",\"event_type\":\"status\",\"status\":\"online\",\"battery\":%d,\"data\":{\"temperature_c\":%d,\"firmware\":\"2.4.1\"}}}\n", \
        1795255200000000000 + i * 1000000, i % d, 50 + i % 50, i % 40 }'
}
telemetry "$DEVICES" >"$WORK/devices.ndjson"
telemetry "$BATCH" >"$WORK/batch.ndjson"
MSGPACK=
if command -v node >/dev/null; then
    node tests/api/msgpack.js <"$WORK/batch.ndjson" >"$WORK/batch.msgpack" && MSGPACK=1
else
    log "node is missing: no msgpack ingest round"
fi
# Stripe invoice.payment_failed, one customer each: each derives one
# payment.failed on the subscriptions stream.
awk -v n="$SSE_EVENTS" 'BEGIN { for (i = 0; i < n; i++) printf \
    "{\"type\":\"payment\",\"tenant\":\"bench\",\"payload\":{\"id\":\"evt_%07d\",\"object\":\"event\",\"type\":\"invoice.payment_failed\",\"created\":%d,\"livemode\":false,\"data\":{\"object\":{\"id\":\"in_%07d\",\"object\":\"invoice\",\"customer\":\"cus_%07d\",\"status\":\"open\",\"amount_due\":2900,\"amount_paid\":0,\"currency\":\"eur\",\"attempt_count\":1,\"subscription\":\"sub_%07d\"}}}}\n", \
    i, 1795255200 + i, i, i, i }' >"$WORK/payments.ndjson"
split -l 1000 -d -a 4 "$WORK/payments.ndjson" "$WORK/pay."

"$CAIRN" append --data "$WORK/data" "$WORK/devices.ndjson" >/dev/null

# ---------------------------------------------------------------- server
# start_server DIR: `cairn serve` on DIR (each stage gets a fresh one, so
# no stage pays for the data an earlier one left).
start_server() {
    "$CAIRN" serve --data "$1" --listen "127.0.0.1:$PORT" --jwt-secret-file "$WORK/secret" \
        2>"$WORK/server.log" &
    SERVER=$!
    for _ in $(seq 100); do
        curl -sf "$URL/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "the server did not start:"
    cat "$WORK/server.log" >&2
    exit 1
}
stop_server() {
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}
start_server "$WORK/data"
curl -sf -H "Authorization: Bearer $TOKEN" "$URL/v1/devices/dev-0001" >/dev/null || {
    log "the server does not answer GET /v1/devices/dev-0001"
    exit 1
}

# The server's CPU time so far, in microseconds (utime + stime): what a
# run costs the server is robust to whatever else shares the machine.
HZ=$(getconf CLK_TCK)
cpu_us() { awk -v hz="$HZ" '{ printf "%.0f", ($14 + $15) * 1e6 / hz }' "/proc/$SERVER/stat"; }
# per COST_US COUNT: microseconds per item, two decimals.
per() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.2f", n ? c / n : 0 }'; }

PROFILES=()
# profile NAME: starts perf on the server for the next DURATION seconds.
profile() {
    [ "${CAIRN_BENCH_PROFILE:-0}" = 1 ] || return 0
    perf record -e cpu-clock -g -p "$SERVER" -o "$WORK/$1.perf" -- sleep "$((DURATION - 1))" \
        >/dev/null 2>&1 &
    PROFILES+=("$1")
}
wait_profiles() { while pgrep -f "perf record -e cpu-clock -g -p $SERVER" >/dev/null; do sleep 0.2; done; }
# get NAME VAR WRK-ARGS…: one wrk GET run; its RESULT line goes into VAR.
get() {
    local name=$1 var=$2
    shift 2
    log "GET $name: wrk $* (BENCH_DELAY_MS=${BENCH_DELAY_MS:-0})"
    profile "get-$name"
    local c0 c1
    c0=$(cpu_us)
    wrk "$@" -d "${DURATION}s" -s bench/http_get.lua "$URL" -- "$TOKEN" "$DEVICES" \
        >"$WORK/get-$name.txt"
    c1=$(cpu_us)
    wait_profiles
    local line
    line=$(grep '^RESULT' "$WORK/get-$name.txt")
    printf -v "$var" '%s cpu_us=%s' "$line" "$(per $((c1 - c0)) "$(val requests "$line")")"
}

get low GET_LOW -t1 -c4
export BENCH_DELAY_MS=1
get paced GET_PACED -t1 -c64
unset BENCH_DELAY_MS
get max GET_MAX -t1 -c32

# ---------------------------------------------------------------- ingest
# ROUNDS rounds, each: a fresh server takes NDJSON batches for DURATION s;
# then `cairn append` writes as many events (the same batch, as many times
# as the server accepted it) into a fresh directory. Alternating rounds
# expose both to the same changes in load and disk speed; the medians are
# compared.
stop_server
POST_RATES=()
APPEND_RATES=()
POST_CPU=()
APPEND_CPU=()
POST_MP_RATES=()
POST_MP_CPU=()
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for round in $(seq "$ROUNDS"); do
    start_server "$WORK/post-$round"
    log "POST /v1/events: $BATCH-event NDJSON batches, wrk -t1 -c4 (round $round)"
    [ "$round" = 1 ] && profile post
    c0=$(cpu_us)
    wrk -t1 -c4 -d "${DURATION}s" -s bench/http_post.lua "$URL" -- "$TOKEN" "$WORK/batch.ndjson" \
        "$BATCH" >"$WORK/post-$round.txt"
    c1=$(cpu_us)
    wait_profiles
    stop_server
    rm -rf "$WORK/post-$round"
    POST=$(grep '^RESULT' "$WORK/post-$round.txt")
    POST_RATES+=("$(val events_per_s "$POST")")
    POST_CPU+=("$(per $((c1 - c0)) "$(val events "$POST")")")
    if [ -n "$MSGPACK" ]; then
        start_server "$WORK/post-mp-$round"
        log "POST /v1/events: $BATCH-event msgpack batches, wrk -t1 -c4 (round $round)"
        c0=$(cpu_us)
        wrk -t1 -c4 -d "${DURATION}s" -s bench/http_post.lua "$URL" -- "$TOKEN" \
            "$WORK/batch.msgpack" "$BATCH" application/msgpack >"$WORK/post-mp-$round.txt"
        c1=$(cpu_us)
        stop_server
        rm -rf "$WORK/post-mp-$round"
        POST_MP=$(grep '^RESULT' "$WORK/post-mp-$round.txt")
        POST_MP_RATES+=("$(val events_per_s "$POST_MP")")
        POST_MP_CPU+=("$(per $((c1 - c0)) "$(val events "$POST_MP")")")
    fi
    for _ in $(seq "$(val accepted "$POST")"); do cat "$WORK/batch.ndjson"; done >"$WORK/append.ndjson"
    log "cairn append: $(val events "$POST") events into a fresh directory (round $round)"
    t0=$(date +%s%N)
    TIMEFORMAT='%3U %3S'
    cpu=$({ time "$CAIRN" append --data "$WORK/append-$round" "$WORK/append.ndjson" \
        >"$WORK/append.out" 2>"$WORK/append.err"; } 2>&1)
    t1=$(date +%s%N)
    APPEND_OK=$(grep -c '"seq"' "$WORK/append.out" || true)
    APPEND_RATES+=("$((APPEND_OK * 1000000000 / (t1 - t0)))")
    APPEND_CPU+=("$(awk -v u="${cpu% *}" -v s="${cpu#* }" -v n="$APPEND_OK" \
        'BEGIN { printf "%.2f", (u + s) * 1e6 / n }')")
    rm -rf "$WORK/append-$round" "$WORK/append.ndjson"
done
POST_RATE=$(median "${POST_RATES[@]}")
APPEND_RATE=$(median "${APPEND_RATES[@]}")
POST_CPU_US=$(median "${POST_CPU[@]}")
APPEND_CPU_US=$(median "${APPEND_CPU[@]}")
POST_MP_RATE=n/a
POST_MP_CPU_US=n/a
if [ -n "$MSGPACK" ]; then
    POST_MP_RATE=$(median "${POST_MP_RATES[@]}")
    POST_MP_CPU_US=$(median "${POST_MP_CPU[@]}")
fi

# ---------------------------------------------------------------- SSE fan-out
start_server "$WORK/sse"
log "SSE: $SSE_SUBS subscribers, $SSE_EVENTS payment inputs"
mkfifo "$WORK/sse.fifo"
"$SSE" --port "$PORT" --token "$TOKEN" --subs "$SSE_SUBS" --events "$SSE_EVENTS" \
    --timeout 120 >"$WORK/sse.fifo" 2>"$WORK/sse.err" &
SSE_PID=$!
exec 4<"$WORK/sse.fifo"
read -r -t 30 ready <&4 || true
[ "${ready:-}" = ready ] || {
    log "the SSE subscribers did not connect: $(cat "$WORK/sse.err")"
    exit 1
}
profile sse
c0=$(cpu_us)
p0=$(date +%s%N)
printf '%s\n' "$WORK"/pay.* | xargs -P 4 -I{} curl -sf --max-time 60 -o /dev/null \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/x-ndjson' \
    --data-binary @{} "$URL/v1/events"
p1=$(date +%s%N)
read -r -t 150 SSE_LINE <&4 || true
wait "$SSE_PID" || log "SSE: not every subscriber got every event ($(head -3 "$WORK/sse.err"))"
exec 4<&-
wait_profiles
SSE_POST_MS=$(((p1 - p0) / 1000000))
# Catch-up: new subscribers from dseq 1 of the stream that now holds the
# events: the server's fan-out alone.
log "SSE catch-up: $SSE_SUBS new subscribers from the start of the stream"
c1=$(cpu_us)
SSE_CATCHUP=$("$SSE" --port "$PORT" --token "$TOKEN" --subs "$SSE_SUBS" --events "$SSE_EVENTS" \
    --timeout 120 2>"$WORK/sse-catchup.err" | grep '^subs=' || true)
c2=$(cpu_us)

# ---------------------------------------------------------------- report
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
stop_server

pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b ? 100 * a / b : 0 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
RATIO=$(pct "$POST_RATE" "$APPEND_RATE")
goal_get=no
[ "$(val rps "$GET_PACED")" -ge 30000 ] && [ "$(val p99_us "$GET_PACED")" -lt 2000 ] && goal_get=yes
[ "$(val rps "$GET_MAX")" -ge 30000 ] && [ "$(val p99_us "$GET_MAX")" -lt 2000 ] && goal_get=yes
goal_ingest=no
[ "$RATIO" -ge 60 ] && goal_ingest=yes

CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
FS=$(df -T "$WORK" | awk 'NR == 2 { print $2 }')
cat <<EOF

### HTTP API (bench/http.sh, issue #4)

Machine: $(nproc) cores ($CPU), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, $(uname -r), data on $FS (${TMPDIR:-/tmp}).
Release build; server \`cairn serve\` with a JWT secret; wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'), wrk and the
subscribers on the same machine (loopback). $DURATION s per wrk run; $DEVICES devices. Load average
before: $LOAD_BEFORE, after: $LOAD_AFTER (anything else running skews every figure).

Server CPU is \`cairn serve\`'s user + system time over the run divided by what it served: unlike
the rates, it barely moves when something else shares the machine; 1 000 000 / (µs per GET) is
what one core could serve.

| test | client | result | server CPU | goal |
|------|--------|--------|-----------:|------|
| GET /v1/devices/{id}, low load | wrk -t1 -c4 | $(val rps "$GET_LOW") req/s, p50 $(ms "$(val p50_us "$GET_LOW")") ms, p99 $(ms "$(val p99_us "$GET_LOW")") ms | $(val cpu_us "$GET_LOW") µs/req | |
| GET, paced (1 ms pause per connection) | wrk -t1 -c64 | $(val rps "$GET_PACED") req/s, p50 $(ms "$(val p50_us "$GET_PACED")") ms, p99 $(ms "$(val p99_us "$GET_PACED")") ms, p99.9 $(ms "$(val p999_us "$GET_PACED")") ms | $(val cpu_us "$GET_PACED") µs/req | 30 000/s, p99 < 2 ms |
| GET, max throughput | wrk -t1 -c32 | $(val rps "$GET_MAX") req/s, p50 $(ms "$(val p50_us "$GET_MAX")") ms, p99 $(ms "$(val p99_us "$GET_MAX")") ms | $(val cpu_us "$GET_MAX") µs/req | 30 000/s, p99 < 2 ms |
| POST /v1/events, NDJSON × $BATCH | wrk -t1 -c4 | $POST_RATE events/s, median of ${POST_RATES[*]} (last round: $(val accepted "$POST") × 202, $(val non202 "$POST") other; p50 $(ms "$(val p50_us "$POST")") ms per batch) | $POST_CPU_US µs/event | |
| POST /v1/events, msgpack × $BATCH (the same events, smallest forms) | wrk -t1 -c4 | $POST_MP_RATE events/s, median of ${POST_MP_RATES[*]:-none} ($(pct "$POST_MP_RATE" "$POST_RATE") % of NDJSON) | $POST_MP_CPU_US µs/event | |
| \`cairn append\`, as many of the same events, fresh directory | CLI | $APPEND_RATE events/s, median of ${APPEND_RATES[*]} | $APPEND_CPU_US µs/event (the CLI process) | |
| HTTP ingest / append | | $RATIO % | $(pct "$APPEND_CPU_US" "$POST_CPU_US") % (append CPU / server CPU) | ≥ 60 % |
| SSE live: $SSE_SUBS subscribers while $SSE_EVENTS inputs are POSTed | bench/http_sse | $(val rate "${SSE_LINE:-}") events/s delivered ($(val delivered "${SSE_LINE:-}"), the last $(val last_ms "${SSE_LINE:-}") ms after the subscribers were ready; POSTing, 1 000 per request, 4 at a time, took $SSE_POST_MS ms; complete=$(val complete "${SSE_LINE:-}")) | $(per $((c1 - c0)) "$(val delivered "${SSE_LINE:-}")") µs/delivery (incl. ingest) | |
| SSE catch-up: $SSE_SUBS new subscribers, from the start of that stream | bench/http_sse | $(val rate "${SSE_CATCHUP:-}") events/s delivered ($(val delivered "${SSE_CATCHUP:-}"); complete=$(val complete "${SSE_CATCHUP:-}")) | $(per $((c2 - c1)) "$(val delivered "${SSE_CATCHUP:-}")") µs/delivery | |

Goals: GET $goal_get; ingest $goal_ingest.
EOF
# top FILE ARGS…: the first 25 entries of a perf report.
top() {
    perf report -i "$@" --stdio -g none 2>/dev/null | grep -v '^#' | grep . | awk 'NR <= 25'
}
for p in "${PROFILES[@]}"; do
    echo
    echo "Profile $p (server, perf -e cpu-clock): self time, then user-space time with callees:"
    echo '```'
    top "$WORK/$p.perf" --no-children --sort dso,sym
    echo '...'
    top "$WORK/$p.perf" --children --sort sym --percent-limit 1 | grep -F '[.]' || true
    echo '```'
done
