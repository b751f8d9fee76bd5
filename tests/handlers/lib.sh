# tests/handlers/lib.sh — shared by the handler scripts (sourced).
#
# Each script appends NDJSON fixtures to a fresh data directory with the
# real `cairn` binary and compares what `cairn show` / `cairn stream` print
# with expected files in fixtures/<handler>/. An expected file holds the
# JSON pretty-printed (jq) so it can be read and reviewed; the check is
# byte for byte: the command's raw output must equal `jq -c .` of the
# expected file, key order and number formatting included.
#
# CAIRN_UPDATE_EXPECTED=1 rewrites the expected files from the output
# instead of checking (review the diff before committing it).
set -euo pipefail

: "${CAIRN:?set CAIRN to the cairn binary (ctest does)}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FIXTURES=$HERE/fixtures
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DATA=$WORK/data

# cairn CMD ARGS… against $DATA (or $DATA_DIR when set).
cairn() {
    local cmd=$1
    shift
    "$CAIRN" "$cmd" --data "${DATA_DIR:-$DATA}" "$@"
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# append FILE: appends every line; each must be accepted (no duplicates,
# no errors).
append() {
    local file=$1 out n
    out=$(cairn append "$file" --engine)
    n=$(grep -c . "$file")
    [ "$(grep -c '"seq":' <<<"$out")" = "$n" ] && ! grep -q '"error"\|"duplicate"' <<<"$out" ||
        fail "appending $file: $(grep -v '"seq":' <<<"$out" | head -5)"
}

# check EXPECTED CMD ARGS…: the raw output of `cairn CMD ARGS…` equals the
# compact form of fixtures/EXPECTED.
check() {
    local name=$1 expected=$FIXTURES/$1 raw
    shift
    raw=$(cairn "$@") || fail "cairn $*"
    if [ "${CAIRN_UPDATE_EXPECTED:-}" = 1 ]; then
        jq . <<<"$raw" >"$expected"
        echo "updated $name"
        return
    fi
    [ -f "$expected" ] || fail "$name: no expected file"
    if [ "$raw" != "$(jq -c . "$expected")" ]; then
        echo "--- $name (expected) vs cairn $* (actual):" >&2
        diff -u "$expected" <(jq . <<<"$raw") >&2 || true
        [ "$(jq -c . <<<"$raw")" = "$raw" ] || echo "(or a byte-level difference jq hides)" >&2
        fail "$name"
    fi
    echo "ok $name"
}

# jcheck WHAT JQ-EXPR CMD ARGS…: `cairn CMD ARGS… | jq -e JQ-EXPR` holds.
jcheck() {
    local what=$1 expr=$2
    shift 2
    cairn "$@" | jq -e "$expr" >/dev/null || fail "$what ($expr)"
    echo "ok $what"
}

# replay_matches: rebuilding the state from the log (replay --into) gives
# the digest of the live state.
replay_matches() {
    local live replayed
    live=$(cairn digest)
    replayed=$(cairn replay --into "$WORK/replay")
    [ "$live" = "$replayed" ] || fail "replay digest $replayed != live $live"
    echo "ok replay digest = live digest"
}

# chunks_match FILE…: appending the same inputs a few lines per run (so
# they are applied in many state transactions) ends in the same digest.
chunks_match() {
    local chunked=$WORK/chunked f i=0
    cat "$@" >"$WORK/all.ndjson"
    split -n l/8 "$WORK/all.ndjson" "$WORK/chunk."
    for f in "$WORK"/chunk.*; do
        [ -s "$f" ] || continue # split by bytes: a long line can leave a chunk empty
        DATA_DIR=$chunked append "$f"
        i=$((i + 1))
    done
    [ "$(DATA_DIR=$chunked cairn digest)" = "$(cairn digest)" ] ||
        fail "the state built in $i chunks differs"
    echo "ok $i chunks give the same digest"
}
