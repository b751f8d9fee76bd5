#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [LIBFUZZER-ARGS…] — builds the HTTP fuzz
# target with clang (libFuzzer + AddressSanitizer + UBSan, every library
# instrumented) and fuzzes the server for SECONDS (default 60) from the
# seed corpus. Exits non-zero when it finds a crash, a leak or a hang;
# the input is saved in build/fuzz/artifacts/ (reproduce: the printed
# command). Needs clang and libclang-rt-14-dev (libFuzzer).
#
# New inputs go to build/fuzz/corpus (seeded from tests/fuzz/corpus, which
# stays as checked in). Regenerate the seeds: tests/fuzz/make_corpus.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
[ $# -gt 0 ] && shift
build=${CAIRN_FUZZ_BUILD:-build/fuzz}

cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCAIRN_SANITIZE=ON -DCAIRN_FUZZ=ON -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" >/dev/null
cmake --build "$build" --target fuzz_http
bin=$build/tests/fuzz/fuzz_http

mkdir -p "$build/corpus" "$build/artifacts"
# The server's data (fsynced: tmpfs when there is one), removed even when
# the target crashes.
shm=/dev/shm
[ -w "$shm" ] || shm=${TMPDIR:-/tmp}
export CAIRN_FUZZ_DIR
CAIRN_FUZZ_DIR=$(mktemp -d "$shm/cairn-fuzz-run-XXXXXX")
trap 'rm -rf "$CAIRN_FUZZ_DIR"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
"$bin" "$build/corpus" tests/fuzz/corpus \
  -dict=tests/fuzz/http.dict -max_len=16384 \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$build/artifacts/" "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "tests/fuzz/run.sh: fuzz_http failed (status $status). Inputs:" >&2
  ls -1 "$build/artifacts/" >&2 || true
  echo "reproduce: $bin $build/artifacts/<file>" >&2
fi
exit "$status"
