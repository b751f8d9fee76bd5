#!/usr/bin/env bash
# determinism.sh — replay gives the same state back, byte for byte.
#
# For each seed, a mixed workload (gen_workload: all six input types, ticks,
# the handlers' control inputs taken from schemas/examples — fences, rules,
# alarms, silences, acks, deletes —, bad order transitions, out-of-order
# times, retries) is appended in two parts. Then:
#   1. `replay --into X` of the whole log has the digest of the live state
#      (which `cairn append` built incrementally, one state transaction per
#      log commit — replay uses much larger ones);
#      — and so do replays forced serial and parallel (apply_threads 1, 2);
#   2. `replay --to SEQ --into Y` has the digest the live state had when
#      the log ended at SEQ (after the first part);
#   3. `replay` in place keeps the digest and what `cairn show` and
#      `cairn stream` print for every view and stream (devices, orders, …)
#      byte-identical.
# (That the same events appended with other batch boundaries and ingest
# times give the same state is checked by exactly_once.sh.)
# Different seeds must give different digests (the check is not vacuous),
# and the workload must really make devices go offline and come back.
#
# Environment: CAIRN (the binary), CAIRN_SCHEMAS, GEN_WORKLOAD (the
# generator); ENGINE_EVENTS (default 20000) and ENGINE_SEEDS (default
# "1 2") to run it bigger or smaller.
set -euo pipefail

: "${CAIRN:?CAIRN must name the cairn binary}"
: "${GEN_WORKLOAD:?GEN_WORKLOAD must name the gen_workload binary}"
export CAIRN_SCHEMAS=${CAIRN_SCHEMAS:-${CAIRN_SOURCE_DIR:?}/schemas}
unset CAIRN_CONFIG CAIRN_TEST_CRASH_BEFORE_APPLY
EVENTS=${ENGINE_EVENTS:-20000}
SEEDS=${ENGINE_SEEDS:-1 2}

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

# Writes what `cairn show V` and `cairn stream V` print for every view and
# stream this build has (devices always) into $WORK/$1/.
HANDLERS="devices orders subscriptions payments violations compliance geofence anomaly alerts executor"
snapshot() {
  rm -rf "${WORK:?}/$1" && mkdir "$WORK/$1"
  for h in $HANDLERS; do
    cairn show "$h" >"$WORK/$1/show.$h" 2>/dev/null || rm -f "$WORK/$1/show.$h"
    cairn stream "$h" >"$WORK/$1/stream.$h" 2>/dev/null || rm -f "$WORK/$1/stream.$h"
  done
  [ -s "$WORK/$1/show.devices" ] || fail "cairn show devices printed nothing"
}

declare -A seen_digest
for seed in $SEEDS; do
  t0=$SECONDS
  DATA=$WORK/data-$seed
  W=$WORK/w-$seed.ndjson
  "$GEN_WORKLOAD" --seed "$seed" --count "$EVENTS" --controls "$CAIRN_SCHEMAS" >"$W"
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

  snapshot before
  grep -q '"online":false' "$WORK/before/show.devices" || fail "seed $seed: no device went offline"
  grep -q '"device.online"' "$WORK/before/stream.devices" || fail "seed $seed: no device came back"
  if [ -e "$WORK/before/stream.orders" ]; then
    grep -q '"order.invalid_transition"' "$WORK/before/stream.orders" ||
      fail "seed $seed: no bad order transition was noticed"
  fi

  # 1. the whole log into a fresh directory
  same "seed $seed: replay --into vs live digest" "$(cairn replay --into "$WORK/x-$seed")" "$d_live"
  same "seed $seed: digest --state vs live digest" "$(cairn digest --state "$WORK/x-$seed")" \
    "$d_live"
  if cairn replay --into "$WORK/x-$seed" >/dev/null 2>&1; then
    fail "seed $seed: replay --into a non-empty directory was accepted"
  fi

  # 1b. the same with each apply mode forced: serial, and the concurrent
  # handlers on a second thread (the default with two CPUs or more)
  for threads in 1 2; do
    echo "{\"apply_threads\": $threads}" >"$WORK/threads.json"
    same "seed $seed: replay --into with apply_threads $threads vs live digest" \
      "$(CAIRN_CONFIG=$WORK/threads.json cairn replay --into "$WORK/t$threads-$seed")" "$d_live"
  done

  # 2. a prefix of the log
  same "seed $seed: replay --to $SEQ vs digest at $SEQ" \
    "$(cairn replay --to "$SEQ" --into "$WORK/y-$seed")" "$d_part"

  # 3. in place
  same "seed $seed: replay in place vs live digest" "$(cairn replay)" "$d_live"
  same "seed $seed: digest after replay in place" "$(cairn digest)" "$d_live"
  [ ! -e "$DATA/state.replay" ] || fail "seed $seed: state.replay left behind"
  snapshot after
  for f in "$WORK"/before/*; do
    cmp -s "$f" "$WORK/after/${f##*/}" || fail "seed $seed: ${f##*/} changed by replay"
  done
  rm -rf "$WORK/x-$seed" "$WORK/y-$seed" "$WORK/t1-$seed" "$WORK/t2-$seed" "$DATA"
  empty=$(cd "$WORK/before" && find . -type f -empty | sed 's|^\./||' | sort | tr '\n' ' ')
  echo "determinism: seed $seed: $HEAD events (split at $SEQ): digests equal;" \
    "same $(cd "$WORK/before" && echo *)${empty:+ (empty: $empty)} ($((SECONDS - t0)) s)"
done
echo "determinism: ok"
