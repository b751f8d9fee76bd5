# shellcheck shell=bash
# tests/api/lib.sh — helpers shared by the HTTP API scripts (sourced).
#
# Every script runs a real `cairn serve` on a fresh data directory, bound to
# 127.0.0.1 on a free port, and talks to it over loopback HTTP with curl (or
# raw bytes through bash's /dev/tcp where curl would hide what is tested:
# pipelining, partial requests). Stripe-Signature headers come from the
# official `stripe` npm package (stripe_sign.js).
#
# Checks do not stop the script: each prints "ok - WHAT" or "FAIL - WHAT"
# (with the difference), and the script exits 1 at the end when any
# failed, so one bug does not hide the others. Checks that fail because of
# a known bug in the code under test are tagged [BUG-n] (see README.md in
# this folder): they must keep failing until the bug is fixed.
#
# Safety: a watchdog SIGKILLs the server when its RSS passes
# $CAIRN_TEST_RSS_MAX_MB (default 1536), so a runaway server cannot take the
# machine down; every wait is bounded.
#
# Needs: $CAIRN (ctest sets it), curl, jq, node (for the Stripe package).
set -euo pipefail

: "${CAIRN:?set CAIRN to the cairn binary (ctest does)}"
API_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CAIRN_SCHEMAS=${CAIRN_SCHEMAS:-$API_HERE/../../schemas}
for tool in curl jq; do
    command -v "$tool" >/dev/null || {
        echo "FAIL - $tool is required (apt-get install $tool)" >&2
        exit 1
    }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-api.XXXXXX")
DATA=$WORK/data
CONFIG=$WORK/config.json
SERVER_LOG=$WORK/server.log
TICK_MS=3600000 # no engine ticks unless a script asks for them
SERVER_PID=
WATCH_PID=
PORT=
URL=
FAILS=0
PASSES=0
BG_PIDS=()
echo '{}' >"$CONFIG"

# ---------------------------------------------------------------- results

pass() {
    PASSES=$((PASSES + 1))
    echo "ok - $*"
}

fail() {
    FAILS=$((FAILS + 1))
    echo "FAIL - $*" >&2
}

# die WHAT: a failure after which the script cannot go on.
die() {
    fail "$*"
    exit 1
}

# finish: the last line of every script.
finish() {
    echo "# $PASSES passed, $FAILS failed"
    [ "$FAILS" = 0 ]
}

cleanup() {
    local rc=$?
    local p
    for p in "${BG_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    if [ -n "$SERVER_PID" ]; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$WATCH_PID" ]; then
        kill "$WATCH_PID" 2>/dev/null || true
        wait "$WATCH_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ -s "$SERVER_LOG" ]; then
        echo "# server log (last 30 lines):" >&2
        tail -n 30 "$SERVER_LOG" >&2 || true
    fi
    if [ -n "${CAIRN_KEEP_WORK:-}" ]; then
        echo "# kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# bg CMD…: runs CMD in the background, killed at exit; its pid in BG_PID.
bg() {
    "$@" &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

# ---------------------------------------------------------------- secrets

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

JWT_FILE=$WORK/jwt.secret
OTHER_JWT_FILE=$WORK/other-jwt.secret
rand_hex 32 >"$JWT_FILE"
rand_hex 32 >"$OTHER_JWT_FILE"
WHSEC1_FILE=$WORK/whsec1
WHSEC2_FILE=$WORK/whsec2
WHSEC_GLOBEX_FILE=$WORK/whsec-globex
WHSEC_WRONG_FILE=$WORK/whsec-wrong
for f in "$WHSEC1_FILE" "$WHSEC2_FILE" "$WHSEC_GLOBEX_FILE" "$WHSEC_WRONG_FILE"; do
    echo "whsec_$(rand_hex 24)" >"$f"
done

# token TENANT ROLES [TTL_S]: a bearer token signed with the server's secret.
token() {
    "$CAIRN" token --tenant "$1" --role "$2" --ttl "${3:-3600}" --jwt-secret-file "$JWT_FILE"
}

# ---------------------------------------------------------------- the server

# A port nobody listens on (a connect that fails); the server may still
# lose a race for it, which start_server retries.
pick_port() {
    local p i
    for i in $(seq 1 50); do
        p=$((15000 + (RANDOM * 32768 + RANDOM + $$ * 7 + i) % 17000)) # below the ephemeral range
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

watchdog() {
    local pid=$1 max_kb=$(( ${CAIRN_TEST_RSS_MAX_MB:-1536} * 1024 )) rss
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        if [ "${rss:-0}" -gt "$max_kb" ]; then
            echo "WATCHDOG: server RSS ${rss} kB > ${max_kb} kB: killed" >>"$SERVER_LOG"
            kill -KILL "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
}

# wait_healthy MARK: waits (at most 10 s) until the server started after
# line MARK of the server log says it serves on $PORT — so a server of
# another test that took the port meanwhile is never mistaken for ours —
# and answers /healthz.
wait_healthy() {
    local mark=$1 i
    for i in $(seq 1 200); do
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        if tail -n +"$((mark + 1))" "$SERVER_LOG" | grep -q "^cairn: serving .* on http://127.0.0.1:$PORT " &&
            curl -s -m 1 -o /dev/null "$URL/healthz" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# start_server [ARGS…]: `cairn serve` on $DATA with $CONFIG, the JWT secret,
# two Stripe secrets for acme (rotation) and one for globex, on a new free
# port each time (a restart gets a new $PORT and $URL).
start_server() {
    local mark
    for _ in 1 2 3 4 5; do
        PORT=$(pick_port)
        URL=http://127.0.0.1:$PORT
        echo "# --- cairn serve on $URL $*" >>"$SERVER_LOG"
        mark=$(wc -l <"$SERVER_LOG")
        "$CAIRN" serve --data "$DATA" --config "$CONFIG" --listen "127.0.0.1:$PORT" \
            --jwt-secret-file "$JWT_FILE" \
            --stripe-secret "acme=$WHSEC1_FILE" --stripe-secret "acme=$WHSEC2_FILE" \
            --stripe-secret "globex=$WHSEC_GLOBEX_FILE" \
            --tick-interval-ms "$TICK_MS" "$@" 2>>"$SERVER_LOG" &
        SERVER_PID=$!
        watchdog "$SERVER_PID" &
        WATCH_PID=$!
        if wait_healthy "$mark"; then
            return 0
        fi
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
        if tail -n +"$((mark + 1))" "$SERVER_LOG" | grep -q '"code":"listen"'; then
            continue # lost the port to someone else: another one
        fi
        tail -n 20 "$SERVER_LOG" >&2
        die "cairn serve did not become healthy"
    done
    die "cairn serve could not listen"
}

# stop_server: SIGTERM, at most 15 s to drain and exit; it must exit 0
# with no sanitizer report (ops/test runs with ASan/UBSan, leaks on).
stop_server() {
    local i rc=0
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for i in $(seq 1 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        fail "the server did not stop within 15 s of SIGTERM (killed)"
    fi
    wait "$SERVER_PID" 2>/dev/null || rc=$?
    SERVER_PID=
    kill "$WATCH_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
    WATCH_PID=
    if grep -q 'WATCHDOG' "$SERVER_LOG"; then
        fail "the server was killed by the memory watchdog (see the server log)"
        sed -i 's/WATCHDOG/watchdog (reported)/' "$SERVER_LOG"
    elif [ "$rc" != 0 ]; then
        fail "the server exited with status $rc"
    fi
    if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$SERVER_LOG"; then
        fail "sanitizer report in the server log:"
        grep -E -A30 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$SERVER_LOG" | head -60 >&2
        sed -i -E 's/ERROR: (Address|Leak)Sanitizer/(reported) \1Sanitizer/; s/runtime error:/runtime (reported):/' "$SERVER_LOG"
    fi
}

# server_alive WHAT: the server still answers /healthz within 2 s. When it
# does not (a hung loop), it is killed so the script can go on.
server_alive() {
    if curl -s -m 1.5 -o /dev/null "$URL/healthz"; then
        pass "$1: the server still answers"
        return 0
    fi
    fail "$1: the server does not answer /healthz any more (killed)"
    if grep -q 'ERROR: AddressSanitizer' "$SERVER_LOG"; then
        grep -m1 -A14 'ERROR: AddressSanitizer' "$SERVER_LOG" | sed 's/^/#   /' >&2
        sed -i 's/ERROR: AddressSanitizer/(reported) AddressSanitizer/' "$SERVER_LOG"
    fi
    [ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null || true
    kill "$WATCH_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
    SERVER_PID='' WATCH_PID=''
    sed -i 's/WATCHDOG/watchdog (reported)/' "$SERVER_LOG"
    return 1
}

# ---------------------------------------------------------------- requests

# req METHOD PATH [CURL-ARGS…]: one request; sets STATUS, BODY (raw) and
# HEADERS (the response head). Never fails the script by itself.
req() {
    local method=$1 path=$2
    shift 2
    STATUS=$(curl -sS -m "${REQ_TIMEOUT:-15}" -o "$WORK/resp.body" -D "$WORK/resp.head" \
        -w '%{http_code}' -X "$method" "$@" "$URL$path" 2>"$WORK/resp.err") || STATUS="curl-error($(head -c 200 "$WORK/resp.err"))"
    BODY=$(cat "$WORK/resp.body" 2>/dev/null || true)
    HEADERS=$(tr -d '\r' <"$WORK/resp.head" 2>/dev/null || true)
}

# Shorthands with a token: get TOKEN PATH [ARGS…], post TOKEN PATH TYPE DATA.
get() {
    local tok=$1 path=$2
    shift 2
    req GET "$path" -H "Authorization: Bearer $tok" "$@"
}

post_json() {
    local tok=$1 data=$2
    shift 2
    req POST /v1/events -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' \
        --data-binary "$data" "$@"
}

post_file() {
    local tok=$1 ctype=$2 file=$3
    shift 3
    req POST /v1/events -H "Authorization: Bearer $tok" -H "Content-Type: $ctype" \
        --data-binary "@$file" "$@"
}

# header NAME: the value of a response header of the last request.
header() {
    awk -v n="$(tr 'A-Z' 'a-z' <<<"$1")" -F': ' 'tolower($1) == n {print $2}' <<<"$HEADERS" |
        tail -n 1
}

# expect WHAT STATUS JSON: the last response has STATUS and a body equal to
# JSON as JSON values (key order and spacing aside).
expect() {
    local what=$1 want_status=$2 want=$3 got
    got=$(jq -cS . <<<"$BODY" 2>/dev/null || echo "<not JSON: $BODY>")
    if [ "$STATUS" = "$want_status" ] && [ "$got" = "$(jq -cS . <<<"$want")" ]; then
        pass "$what"
    else
        fail "$what: want $want_status $(jq -c . <<<"$want"), got $STATUS $(head -c 600 <<<"$BODY")"
    fi
}

# expect_jq WHAT STATUS JQ-EXPR [JQ-ARGS…]: STATUS, and the body makes
# JQ-EXPR true.
expect_jq() {
    local what=$1 want_status=$2 expr=$3
    shift 3
    if [ "$STATUS" = "$want_status" ] && jq -e "$@" "$expr" <<<"$BODY" >/dev/null 2>&1; then
        pass "$what"
    else
        fail "$what: want $want_status with ($expr), got $STATUS $(head -c 600 <<<"$BODY")"
    fi
}

# expect_status WHAT STATUS
expect_status() {
    if [ "$STATUS" = "$2" ]; then
        pass "$1"
    else
        fail "$1: want status $2, got $STATUS $(head -c 300 <<<"$BODY")"
    fi
}

# check WHAT CMD…: CMD succeeds.
check() {
    local what=$1
    shift
    if "$@"; then
        pass "$what"
    else
        fail "$what"
    fi
}

# eq WHAT GOT WANT
eq() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1: want '$3', got '$2'"
    fi
}

# err CODE MESSAGE [FIELD]: the error document.
err() {
    if [ $# -ge 3 ]; then
        jq -cn --arg c "$1" --arg m "$2" --arg f "$3" '{error:{code:$c,message:$m,field:$f}}'
    else
        jq -cn --arg c "$1" --arg m "$2" '{error:{code:$c,message:$m}}'
    fi
}

# head_seq: the log head seq (with $HEAD_TOKEN, an audit or admin token
# the script sets).
head_seq() {
    curl -s -m 5 -H "Authorization: Bearer $HEAD_TOKEN" "$URL/v1/log/head" | jq -r .seq
}

# wait_until WHAT SECONDS CMD…: polls CMD every 50 ms.
wait_until() {
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq 1 $((secs * 20))); do
        if "$@"; then
            return 0
        fi
        sleep 0.05
    done
    fail "$what: not within ${secs}s"
    return 1
}

# ---------------------------------------------------------------- raw TCP

# raw FILE OUT [SECS]: writes FILE's bytes on a fresh connection at once
# and reads everything until the server closes it (or SECS pass, or 4 MiB
# arrived: a server answering in a loop must not fill the disk).
raw() {
    local in=$1 out=$2 secs=${3:-5} fd
    exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
    # shellcheck disable=SC2261 # (the first redirection is to $fd, not stderr)
    cat "$in" >&"$fd" 2>/dev/null || true
    { timeout "$secs" cat <&"$fd" 2>/dev/null || true; } | head -c 4194304 >"$out" || true
    exec {fd}>&-
}

# ---------------------------------------------------------------- Stripe

# stripe_node: makes the `stripe` package loadable (NODE_PATH), installing
# it from package-lock.json into a cache directory when it is not in
# $CAIRN_NODE_MODULES or tests/api/node_modules (ops/test installs it:
# npm ci --no-audit --no-fund --prefix tests/api).
stripe_node() {
    local d cache lock
    command -v node >/dev/null || die "node is required for the Stripe package"
    for d in "${CAIRN_NODE_MODULES:-}" "$API_HERE/node_modules"; do
        if [ -n "$d" ] && [ -f "$d/stripe/package.json" ]; then
            export NODE_PATH=$d
            return 0
        fi
    done
    cache=${CAIRN_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/tests-api}
    mkdir -p "$cache"
    lock=$cache/.lock
    (
        flock -w 120 9 || exit 1
        if [ ! -f "$cache/node_modules/stripe/package.json" ]; then
            cp "$API_HERE/package.json" "$API_HERE/package-lock.json" "$cache/"
            npm ci --no-audit --no-fund --prefix "$cache" >&2
        fi
    ) 9>"$lock" || die "cannot install the stripe package (npm ci --prefix $cache)"
    export NODE_PATH=$cache/node_modules
}

# stripe_header BODY_FILE TIMESTAMP SECRET_FILE…: a Stripe-Signature header
# value, one v1= per secret, from stripe.webhooks.generateTestHeaderString.
stripe_header() {
    local body=$1 ts=$2
    shift 2
    local args=()
    for f in "$@"; do args+=(--secret-file "$f"); done
    node "$API_HERE/stripe_sign.js" --payload-file "$body" --timestamp "$ts" "${args[@]}"
}

# jq_ok JQ-ARGS…: jq -e, quietly (for check).
jq_ok() { jq -e "$@" >/dev/null 2>&1; }
