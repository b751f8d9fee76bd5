# tests/alerts/lib.sh — shared by the alerts scripts (sourced).
set -euo pipefail

: "${CAIRN:?set CAIRN to the cairn binary (ctest does)}"
: "${CAIRN_SOURCE_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
WORK=$(mktemp -d)
DATA=$WORK/data
SERVE_PID=
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

cairn() {
    local cmd=$1
    shift
    "$CAIRN" "$cmd" --data "${DATA_DIR:-$DATA}" "$@"
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# append: every line of stdin must be accepted.
append() {
    local out
    cat >"$WORK/in.ndjson"
    cat "$WORK/in.ndjson" >>"$WORK/all.ndjson"
    out=$(cairn append "$WORK/in.ndjson" --engine)
    [ "$(grep -c '"seq":' <<<"$out")" = "$(grep -c . "$WORK/in.ndjson")" ] &&
        ! grep -q '"error"\|"duplicate"' <<<"$out" || fail "append: $(grep -v '"seq":' <<<"$out" | head -3)"
}

# t OFFSET_S: the RFC 3339 time T0 + OFFSET_S seconds (T0 = 2026-03-01T10:00:00Z).
T0=1772359200
t() { date -u -d "@$((T0 + $1))" +%Y-%m-%dT%H:%M:%SZ; }
tick() { printf '{"type":"tick","tenant":"_engine","time":"%s","payload":{"interval_ms":1000}}\n' "$(t "$1")"; }

# expect WHAT WANT GOT: exact string equality.
expect() {
    [ "$2" = "$3" ] || fail "$1: expected $2, got $3"
    echo "ok $1"
}

# the id of an alert: 16 hex of SHA-256(source \0 tenant \0 key \0 rule).
alert_id() { printf '%s\0%s\0%s\0%s' "$1" "$2" "$3" "$4" | sha256sum | cut -c1-16; }

# stream_since DSEQ: "type key state" lines of stream alerts after DSEQ.
stream_since() {
    cairn stream alerts --from "$(($1 + 1))" | jq -r '"\(.type) \(.key) \(.payload.state)"'
}
last_dseq() { cairn stream alerts | jq -s 'map(.dseq) | max // 0'; }

replay_matches() {
    local live replayed
    live=$(cairn digest)
    replayed=$(cairn replay --into "$WORK/replay")
    [ "$live" = "$replayed" ] || fail "replay digest $replayed != live $live"
    echo "ok replay digest = live digest"
}

# chunks_match: the inputs appended in 8 chunks to a fresh data directory
# give the same digest as the live state.
chunks_match() {
    local chunked=$WORK/chunked f
    split -n l/8 "$WORK/all.ndjson" "$WORK/chunk."
    for f in "$WORK"/chunk.*; do
        DATA_DIR=$chunked append <"$f"
    done
    [ "$(DATA_DIR=$chunked cairn digest)" = "$(cairn digest)" ] || fail "chunked state differs"
    echo "ok 8 chunks give the same digest"
}

# serve_start: `cairn serve` on a free port without auth and without ticks
# during the test (first tick after an hour); sets URL.
serve_start() {
    local port i
    for i in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        "$CAIRN" serve --data "$DATA" --listen "127.0.0.1:$port" --insecure-no-auth \
            --tick-interval-ms 3600000 2>"$WORK/serve.err" &
        SERVE_PID=$!
        URL=http://127.0.0.1:$port
        for _ in $(seq 1 50); do
            curl -sf "$URL/healthz" >/dev/null 2>&1 && return 0
            kill -0 "$SERVE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
        SERVE_PID=
    done
    fail "serve did not start: $(cat "$WORK/serve.err")"
}
