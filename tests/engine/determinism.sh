#!/usr/bin/env bash
# determinism.sh — replay gives the same state back, byte for byte.
#
# For each seed, a mixed workload (gen_workload: all six input types, ticks,
# bad order transitions, out-of-order times, retries) is appended in two
# parts. Then:
#   1. `replay --into X` of the whole log has the digest of the live state
#      (which `cairn append` built incrementally, one state transaction per
#      log commit — replay uses much larger ones);
#   2. `replay --to SEQ --into Y` has the digest the live state had when
#      the log ended at SEQ (after the first part);
#   3. `replay` in place keeps the digest, `show devices` and
#      `stream devices` byte-identical;
#   4. (first seed) the same workload appended in one go to another data
#      directory — other batch boundaries, other ingest times, other
#      hashes — gives the same digest: the state is a function of the
#      events, not of how they arrived.
# Different seeds must give different digests (the check is not vacuous),
# and the workload must really make devices go offline and come back.
#
# Environment: CAIRN (the binary), CAIRN_SCHEMAS, GEN_WORKLOAD (the
# generator); ENGINE_EVENTS (default 20000) and ENGINE_SEEDS (default
# "1 2 3") to run it bigger or smaller.
set -euo pipefail

: "${CAIRN:?CAIRN must name the cairn binary}"
: "${GEN_WORKLOAD:?GEN_WORKLOAD must name the gen_workload binary}"
export CAIRN_SCHEMAS=${CAIRN_SCHEMAS:-${CAIRN_SOURCE_DIR:?}/schemas}
unset CAIRN_CONFIG CAIRN_TEST_CRASH_BEFORE_APPLY
EVENTS=${ENGINE_EVENTS:-20000}
SEEDS=${ENGINE_SEEDS:-1 2 3}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-determinism-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

fail() {
  echo "determinism: FAIL: $*" >&2
  exit 1
}

cairn() { CAIRN_DATA=$DATA "$CAIRN" "$@"; }

# Appends a file with `cairn append --engine`; every line must be accepted
# (appended or a duplicate of an earlier id).
append() {
  local file=$1 out=$WORK/append.out
  cairn append --engine "$file" >"$out" || fail "append $file exited $?: $(grep -m3 error "$out")"
  [ "$(wc -l <"$out")" = "$(wc -l <"$file")" ] || fail "append $file: not one result per line"
  if grep -q '"error"' "$out"; then
    fail "append $file refused input: $(grep -m3 '"error"' "$out")"
  fi
}

head_seq() { cairn head | sed -n 's/^{"seq":\([0-9]*\),.*/\1/p'; }

same() { # same WHAT A B
  [ "$2" = "$3" ] || fail "$1 differ:
  $2
  $3"
}

declare -A seen_digest
for seed in $SEEDS; do
  t0=$SECONDS
  DATA=$WORK/data-$seed
  W=$WORK/w-$seed.ndjson
  "$GEN_WORKLOAD" --seed "$seed" --count "$EVENTS" >"$W"
  split_at=$((EVENTS * 2 / 5 + seed * 97))
  head -n "$split_at" "$W" >"$WORK/part1"
  tail -n +"$((split_at + 1))" "$W" >"$WORK/part2"

  append "$WORK/part1"
  SEQ=$(head_seq)
  [ "$SEQ" -gt 0 ] || fail "seed $seed: empty log after part 1"
  d_part=$(cairn digest)
  [[ "$d_part" == "{\"checkpoint\":$SEQ,"* ]] || fail "seed $seed: state not caught up: $d_part"
  append "$WORK/part2"
  HEAD=$(head_seq)
  d_live=$(cairn digest)
  [[ "$d_live" == "{\"checkpoint\":$HEAD,"* ]] || fail "seed $seed: state not caught up: $d_live"
  [ -z "${seen_digest[$d_live]:-}" ] || fail "seeds ${seen_digest[$d_live]} and $seed: same digest"
  seen_digest[$d_live]=$seed

  cairn show devices >"$WORK/show.before"
  cairn stream devices >"$WORK/stream.before"
  grep -q '"online":false' "$WORK/show.before" || fail "seed $seed: no device went offline"
  grep -q '"device.online"' "$WORK/stream.before" || fail "seed $seed: no device came back"

  # 1. the whole log into a fresh directory
  same "seed $seed: replay --into vs live digest" "$(cairn replay --into "$WORK/x-$seed")" "$d_live"
  same "seed $seed: digest --state vs live digest" "$(cairn digest --state "$WORK/x-$seed")" \
    "$d_live"
  if cairn replay --into "$WORK/x-$seed" >/dev/null 2>&1; then
    fail "seed $seed: replay --into a non-empty directory was accepted"
  fi

  # 2. a prefix of the log
  same "seed $seed: replay --to $SEQ vs digest at $SEQ" \
    "$(cairn replay --to "$SEQ" --into "$WORK/y-$seed")" "$d_part"

  # 3. in place
  same "seed $seed: replay in place vs live digest" "$(cairn replay)" "$d_live"
  same "seed $seed: digest after replay in place" "$(cairn digest)" "$d_live"
  [ ! -e "$DATA/state.replay" ] || fail "seed $seed: state.replay left behind"
  cairn show devices >"$WORK/show.after"
  cairn stream devices >"$WORK/stream.after"
  cmp -s "$WORK/show.before" "$WORK/show.after" || fail "seed $seed: show devices changed"
  cmp -s "$WORK/stream.before" "$WORK/stream.after" || fail "seed $seed: stream devices changed"

  # 4. other batches, other ingest times: the same state
  if [ "$seed" = "${SEEDS%% *}" ]; then
    DATA=$WORK/data-$seed-piped
    cat "$W" | cairn append --engine - >"$WORK/append.out" || fail "piped append exited $?"
    ! grep -q '"error"' "$WORK/append.out" || fail "piped append refused input"
    same "seed $seed: digest of the same workload appended in one go" "$(cairn digest)" "$d_live"
  fi
  rm -rf "$WORK/x-$seed" "$WORK/y-$seed" "$WORK/data-$seed-piped"
  echo "determinism: seed $seed: $HEAD events (split at $SEQ): digests equal ($((SECONDS - t0)) s)"
done
echo "determinism: ok"
