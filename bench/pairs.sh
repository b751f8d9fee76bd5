#!/usr/bin/env bash
# pairs.sh — compares two builds of bench/replay on a noisy machine: runs
# them one after the other N times, the order flipped each round, and
# prints for each figure the two medians and the median of the per-pair
# ratios B/A with how many pairs B was lower. A shared VM drifts by tens
# of per cent within minutes; a pair's two runs see about the same
# machine, so the ratio of a pair is steadier than either figure.
#
#   bench/pairs.sh N A/bench/replay B/bench/replay LOG
#
# LOG: a kept log (bench/replay --keep prints its directory). Each run is
# `replay --log LOG --runs 1`: about N * 2 * 5 s for a 1M-event log.
set -euo pipefail
if [ $# -ne 4 ] || ! [ "$1" -gt 0 ] 2>/dev/null; then
    echo "usage: $0 N BENCH_A BENCH_B LOG" >&2
    exit 2
fi
n=$1 a=$2 b=$3 log=$4
figures() { # the replay's wall and CPU s, its phases, the writer's reading
    awk '/^1 +replay/ { w = $4; c = $5 }
         /phases \(wall s\)/ { for (i = 1; i <= NF; i++) {
                 if ($i == "apply") ap = $(i + 1); if ($i == "flush") fl = $(i + 1)
                 if ($i == "sync") sy = $(i + 1); if ($i == "reading") rd = $(i + 1) } }
         END { gsub(",", "", ap); gsub(",", "", fl); gsub(",", "", rd)
               print w, c, ap, fl, sy, rd }'
}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$n"); do
    if ((i % 2)); then order="A B"; else order="B A"; fi
    for x in $order; do
        bin=$a
        [ "$x" = B ] && bin=$b
        echo "$i $x $("$bin" --log "$log" --runs 1 2>&1 | figures)" >>"$out"
    done
done
awk -v n="$n" '
function median(v, k,   i, j, t) {
    for (i = 2; i <= k; i++)
        for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
}
{ for (f = 3; f <= NF; f++) val[$1, $2, f - 2] = $f; nf = NF - 2 }
END {
    split("wall cpu apply flush sync reading", name, " ")
    for (f = 1; f <= nf; f++) {
        k = 0; lower = 0
        for (i = 1; i <= n; i++) {
            va[i] = val[i, "A", f]; vb[i] = val[i, "B", f]
            if (va[i] > 0) { r[++k] = vb[i] / va[i]; lower += vb[i] < va[i] }
        }
        printf "%-8s A %.3f  B %.3f  B/A %.3f (B lower in %d of %d pairs)\n", name[f],
               median(va, n), median(vb, n), k ? median(r, k) : 0, lower, k
    }
}' "$out"
