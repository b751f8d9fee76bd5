#!/usr/bin/env bash
# run.sh — runs one test under valgrind's memcheck and fails on any error.
#
#   run.sh unit BINARY [ARGS]     a cmocka binary, itself under memcheck
#   run.sh script SCRIPT          a test script, with $CAIRN replaced by a
#                                 wrapper that runs every `cairn` it starts
#                                 (CLI commands and `cairn serve`) under
#                                 memcheck
#
# Errors: invalid reads and writes, uses of uninitialised values, bad frees,
# overlapping copies, and leaks of kinds "definite" and "indirect" at exit
# (a process killed with SIGKILL is not leak-checked; the scripts stop their
# servers with SIGTERM). Each process writes its own report; the test fails
# when any report is not empty, and prints them. There are no suppressions:
# a forked test child leaves through exec (tests/log/test_writer.c), so the
# objects it inherited are not counted as its leaks.
#
# Environment: CAIRN (the real binary, for scripts), MEMCHECK_KEEP=1 keeps
# the reports' directory.
set -euo pipefail

mode=${1:?usage: run.sh unit BINARY | script SCRIPT}
target=${2:?usage: run.sh unit BINARY | script SCRIPT}
shift 2
command -v valgrind >/dev/null || {
    echo "memcheck: valgrind is required (apt-get install valgrind)" >&2
    exit 1
}

REPORTS=$(mktemp -d "${TMPDIR:-/tmp}/cairn-memcheck.XXXXXX")
[ "${MEMCHECK_KEEP:-0}" = 1 ] || trap 'rm -rf "$REPORTS"' EXIT
VG=(valgrind -q --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect
    --num-callers=30 --log-file="$REPORTS/report.%p")

rc=0
case $mode in
unit)
    (cd "$(dirname "$target")" && "${VG[@]}" "$target" "$@") || rc=$?
    ;;
script)
    : "${CAIRN:?CAIRN must name the cairn binary}"
    {
        echo '#!/bin/sh'
        printf 'exec'
        printf ' %q' "${VG[@]}" "$CAIRN"
        echo ' "$@"'
    } >"$REPORTS/cairn"
    chmod +x "$REPORTS/cairn"
    CAIRN=$REPORTS/cairn bash "$target" || rc=$?
    ;;
*)
    echo "memcheck: unknown mode $mode" >&2
    exit 2
    ;;
esac

dirty=0
for r in "$REPORTS"/report.*; do
    [ -s "$r" ] || continue
    dirty=$((dirty + 1))
    echo "memcheck: errors in ${r##*/}:" >&2
    cat "$r" >&2
done
if [ "$dirty" != 0 ]; then
    echo "memcheck: FAIL: $dirty process(es) with errors" >&2
    exit 1
fi
[ "$rc" = 0 ] || {
    echo "memcheck: FAIL: the test itself failed (exit $rc)" >&2
    exit "$rc"
}
echo "memcheck: ok (no errors, no definite or indirect leaks)"
