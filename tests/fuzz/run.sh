#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [LIBFUZZER-ARGS…] — builds the fuzz targets
# with clang (libFuzzer + AddressSanitizer + UBSan, every library
# instrumented), fuzzes the HTTP server (tests/fuzz_http.c) for SECONDS
# (default 60), then the input codec (tests/fuzz_codec.c) for a quarter of
# that, each from its seed corpus. Exits non-zero when one finds a crash, a
# leak, a hang or (the codec) a disagreement; the input is saved in
# build/fuzz/artifacts/ (reproduce: the printed command). Needs clang and
# libclang-rt-14-dev (libFuzzer).
#
# New inputs go to build/fuzz/corpus and build/fuzz/codec_corpus (seeded
# from tests/fuzz/corpus and tests/fuzz/codec_corpus, which stay as checked
# in). Regenerate the seeds: tests/fuzz/make_corpus.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
[ $# -gt 0 ] && shift
codec_secs=$(((secs + 3) / 4)) # the codec target gets a quarter as long
build=${CAIRN_FUZZ_BUILD:-build/fuzz}

cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCAIRN_SANITIZE=ON -DCAIRN_FUZZ=ON -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" >/dev/null
cmake --build "$build" --target fuzz_http fuzz_codec

mkdir -p "$build/corpus" "$build/codec_corpus" "$build/artifacts"
# The server's data (fsynced: tmpfs when there is one), removed even when
# the target crashes.
shm=/dev/shm
[ -w "$shm" ] || shm=${TMPDIR:-/tmp}
export CAIRN_FUZZ_DIR
CAIRN_FUZZ_DIR=$(mktemp -d "$shm/cairn-fuzz-run-XXXXXX")
trap 'rm -rf "$CAIRN_FUZZ_DIR"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# fuzz TARGET SECONDS CORPUS SEEDS [ARGS…]
fuzz() {
  local target=$1 t=$2 corpus=$3 seeds=$4 status=0
  shift 4
  "$build/tests/fuzz/$target" "$corpus" "$seeds" -max_total_time="$t" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/artifacts/" "$@" || status=$?
  if [ "$status" != 0 ]; then
    echo "tests/fuzz/run.sh: $target failed (status $status). Inputs:" >&2
    ls -1 "$build/artifacts/" >&2 || true
    echo "reproduce: $build/tests/fuzz/$target $build/artifacts/<file>" >&2
  fi
  return "$status"
}
fuzz fuzz_http "$secs" "$build/corpus" tests/fuzz/corpus -dict=tests/fuzz/http.dict \
  -max_len=16384 "$@"
fuzz fuzz_codec "$codec_secs" "$build/codec_corpus" tests/fuzz/codec_corpus -max_len=4096 "$@"
