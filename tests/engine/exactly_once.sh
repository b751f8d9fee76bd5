#!/usr/bin/env bash
# exactly_once.sh — every input is applied exactly once across kill -9.
#
# A producer feeds a workload (gen_workload --all-ids: every line has an
# idempotency id) slice by slice into one data directory with
# `cairn append --engine`, and is killed over and over:
#
#   * hooked rounds: CAIRN_TEST_CRASH_BEFORE_APPLY=N makes the process
#     SIGKILL itself right after its Nth log commit, before the state
#     transaction that applies it — the window exactly-once is about. The
#     test checks the window was really hit (read-only: state checkpoint <
#     log head) and then resends the slice, as a producer resends what was
#     not acknowledged (sometimes hooked again, so a crash follows the
#     catch-up of the previous one);
#   * random rounds: a plain `cairn append` is kill -9'ed after a random
#     delay, wherever it is, and the slice is resent.
#
# At the end `cairn digest` (which catches up) must equal a clean
# `cairn replay --into` of the same log, `cairn verify` must pass, and —
# since resent lines are deduplicated by id — the log and the state must
# equal those of the same lines appended once, without any crash.
#
# Environment: CAIRN, CAIRN_SCHEMAS, GEN_WORKLOAD; ENGINE_CRASH_SEED (the
# seed of the slices, hook values and delays; printed on failure),
# ENGINE_CRASH_ROUNDS (default 20) and ENGINE_KILL_ROUNDS (default 5).
set -euo pipefail

: "${CAIRN:?CAIRN must name the cairn binary}"
: "${GEN_WORKLOAD:?GEN_WORKLOAD must name the gen_workload binary}"
export CAIRN_SCHEMAS=${CAIRN_SCHEMAS:-${CAIRN_SOURCE_DIR:?}/schemas}
unset CAIRN_CONFIG CAIRN_TEST_CRASH_BEFORE_APPLY
SEED=${ENGINE_CRASH_SEED:-$((RANDOM * 32768 + RANDOM))}
CRASH_ROUNDS=${ENGINE_CRASH_ROUNDS:-20}
KILL_ROUNDS=${ENGINE_KILL_ROUNDS:-5}
RANDOM=$SEED

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-exactly-once-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DATA=$WORK/data
W=$WORK/w.ndjson

fail() {
  echo "exactly_once: FAIL (ENGINE_CRASH_SEED=$SEED): $*" >&2
  exit 1
}

cairn() { CAIRN_DATA=$DATA "$CAIRN" "$@"; }
head_seq() {
  if [ -e "$DATA/log/data.mdb" ]; then
    cairn head | sed -n 's/^{"seq":\([0-9]*\),.*/\1/p'
  else
    echo 0
  fi
}
# The checkpoint of the state as it is on disk (read-only: no catch-up).
state_checkpoint() {
  if [ -e "$DATA/state/data.mdb" ]; then
    cairn digest --state "$DATA/state" | sed -n 's/^{"checkpoint":\([0-9]*\),.*/\1/p'
  else
    echo 0
  fi
}

# Runs `cairn append --engine SLICE` with the hook set to $1 (0: none) and
# leaves its exit status in RC (not printed: fail must not run in a
# subshell). A finished run must have accepted every line.
append_slice() {
  local hook=$1 rc=0 t
  t=$(date +%s%N)
  if [ "$hook" = 0 ]; then
    cairn append --engine "$WORK/slice" >"$WORK/out" 2>"$WORK/err" || rc=$?
  else
    CAIRN_TEST_CRASH_BEFORE_APPLY=$hook cairn append --engine "$WORK/slice" \
      >"$WORK/out" 2>"$WORK/err" || rc=$?
  fi
  if [ "$rc" = 0 ]; then
    LAST_MS=$((($(date +%s%N) - t) / 1000000))
    [ "$(wc -l <"$WORK/out")" = "$(wc -l <"$WORK/slice")" ] || fail "not one result per line"
    ! grep -q '"error"' "$WORK/out" || fail "refused input: $(grep -m3 '"error"' "$WORK/out")"
  elif [ "$rc" != 137 ]; then
    fail "append exited $rc (hook $hook): $(head -c 600 "$WORK/err")"
  fi
  RC=$rc
}

TOTAL_LINES=$(((CRASH_ROUNDS + KILL_ROUNDS) * 2500))
"$GEN_WORKLOAD" --seed "$((SEED % 1000 + 1))" --count "$TOTAL_LINES" --all-ids \
  --controls "$CAIRN_SCHEMAS" >"$W"
pos=1
# `cairn append` reading a file submits chunks of 1024 lines and the writer
# commits whole requests of at most 1024 events: a slice of n lines is
# ceil(n / 1024) log commits, so a hook of 1..commits always fires.
take_slice() { # the next 700..2500 lines
  local n=$((700 + RANDOM % 1801))
  sed -n "${pos},$((pos + n - 1))p" "$W" >"$WORK/slice"
  pos=$((pos + n))
  commits=$(((n + 1023) / 1024))
}

t0=$SECONDS
crashes=0 windows=0 LAST_MS=400
for ((round = 1; round <= CRASH_ROUNDS; round++)); do
  take_slice
  hook=$((1 + RANDOM % commits))
  for ((attempt = 1; ; attempt++)); do
    [ "$attempt" -le 3 ] || fail "round $round: still crashing without the hook"
    before=$(head_seq)
    append_slice "$hook"
    [ "$RC" = 0 ] && break
    crashes=$((crashes + 1))
    head=$(head_seq) cp=$(state_checkpoint)
    [ "$cp" -le "$head" ] || fail "round $round: state checkpoint $cp past log head $head"
    [ "$cp" -ge "$before" ] || fail "round $round: state went back from $before to $cp"
    [ "$cp" -lt "$head" ] && windows=$((windows + 1))
    # Resend; the first time, half of the time with the hook again, so the
    # next process crashes too, after catching up the leftovers of this one.
    if [ "$attempt" = 1 ] && ((RANDOM % 2)); then hook=$((1 + RANDOM % commits)); else hook=0; fi
  done
done

# The random moment: within the first quarter of the time the last complete
# append took (LAST_MS, of a slice 700..2500 lines long like this one: a
# quarter of the longest is shorter than the shortest), so the kill lands
# while the process runs, on a fast machine too.
kills=0
for ((round = 1; round <= KILL_ROUNDS; round++)); do
  take_slice
  CAIRN_DATA=$DATA "$CAIRN" append --engine "$WORK/slice" >/dev/null 2>&1 &
  pid=$!
  ms=$((RANDOM % (LAST_MS / 4 + 1)))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
  wait "$pid" 2>/dev/null || true
  append_slice 0
  [ "$RC" = 0 ] || fail "kill round $round: the resend was killed"
done

echo "exactly_once: $crashes hooked crashes ($windows between log and state commit)," \
  "$kills random kills, $(head_seq) events ($((SECONDS - t0)) s)"
[ "$crashes" -ge "$CRASH_ROUNDS" ] || fail "only $crashes of $CRASH_ROUNDS hooked rounds crashed"
[ "$windows" -ge "$CRASH_ROUNDS" ] || fail "only $windows crashes hit the window"
[ "$KILL_ROUNDS" = 0 ] || [ "$kills" -gt 0 ] || fail "no append was killed: all ended first"

# The state catches up and equals a clean replay of the same log.
HEAD=$(head_seq)
d_live=$(cairn digest)
[[ "$d_live" == "{\"checkpoint\":$HEAD,"* ]] || fail "digest did not catch up: $d_live (head $HEAD)"
d_replay=$(cairn replay --into "$WORK/fresh")
[ "$d_live" = "$d_replay" ] || fail "digest after crashes != clean replay:
  $d_live
  $d_replay"
v=$(cairn verify) || fail "verify: $v"
[[ "$v" == "{\"ok\":true,\"events\":$HEAD,"* ]] || fail "verify: $v"

# The same lines appended once, without crashes: the same log (no input
# lost or doubled) and the same state.
head -n "$((pos - 1))" "$W" >"$WORK/all"
DATA=$WORK/clean
cairn append --engine "$WORK/all" >"$WORK/out" || fail "clean append exited $?"
[ "$(head_seq)" = "$HEAD" ] || fail "the clean log has $(head_seq) events, the crashed one $HEAD"
d_clean=$(cairn digest)
[ "$d_clean" = "$d_live" ] || fail "digest of the crashed run != the clean run:
  $d_live
  $d_clean"
echo "exactly_once: ok"
