#!/usr/bin/env bash
# bench/geofence_postgis.sh — issue #6: the geofence handler next to PostGIS on
# the same fences and fixes, in one run.
#
#   1. bench/geofence (Release): 100 000 polygon fences, 100 000 devices,
#      1 000 000 fixes through the handler alone and end to end (see
#      bench/geofence.c); it writes the fences (WKT), the fixes and, for every
#      fix, the fences the handler found it inside (inside.tsv).
#   2. PostgreSQL 15 + PostGIS 3, started here in a scratch directory on a
#      unix socket only (initdb runs as the `postgres` user when this script
#      runs as root), stopped at the end: the fences into a table with a GiST
#      index, the fixes into a table of points; then batched queries, each
#        SELECT x.i, f.id FROM fixes x JOIN fences f ON ST_Contains(f.geom, x.geom)
#        WHERE x.i >= a AND x.i < a + PG_BATCH
#      inserted into a result table, from fix 0 on, until every fix is done or
#      PG_SECONDS have passed (then the fixes done are a prefix, printed).
#   3. The pairs PostGIS found are compared with the handler's for the same
#      fixes (they must be the same sets, up to points on a fence's boundary:
#      inside under Cairn's edge rule, outside under ST_Contains), and the
#      rates are divided.
#
# The comparison leans towards PostGIS: its fixes are already in a table
# next to the fences (no parsing, no client round trips), its queries only
# compute containment (the handler also keeps device state, derives and
# stores enter/exit events and indexes them), the server runs with fsync
# off and one worker per query (max_parallel_workers_per_gather = 0: the
# handler uses one core too), JIT off (it only adds compile time to these
# short queries).
#
# Settings (environment): CAIRN_BENCH_BUILD (build/bench), FENCES (100000),
# DEVICES (100000), FIXES (1000000), PG_BATCH fixes per query (10000),
# PG_SECONDS budget of the PostGIS queries (120), PG_BIN
# (/usr/lib/postgresql/15/bin), TMPDIR (scratch; /tmp by default).
# Needs the Debian package postgresql-15-postgis-3 (benchmarks only; the
# script says how to install it when it is missing), jq and awk.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${CAIRN_BENCH_BUILD:-build/bench}
FENCES=${FENCES:-100000}
DEVICES=${DEVICES:-100000}
FIXES=${FIXES:-1000000}
PG_BATCH=${PG_BATCH:-10000}
PG_SECONDS=${PG_SECONDS:-120}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=5499 # only names the socket file: nothing listens on TCP
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

if [ ! -x "$PG_BIN/initdb" ] || [ ! -f /usr/share/postgresql/15/extension/postgis.control ]; then
    echo "bench/geofence_postgis.sh: needs PostgreSQL 15 with PostGIS 3" \
        "(apt-get install postgresql-15-postgis-3)" >&2
    exit 1
fi
for tool in jq timeout; do
    command -v $tool >/dev/null || {
        echo "bench/geofence_postgis.sh: needs $tool" >&2
        exit 1
    }
done

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_TESTS=OFF >/dev/null
cmake --build "$BUILD" --target bench_geofence >/dev/null

W=$(mktemp -d "${TMPDIR:-/tmp}/cairn-geo-pg.XXXXXX")
PGD=$W/pg
RUN=()
cleanup() {
    if [ -f "$PGD/data/postmaster.pid" ]; then
        "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGD/data" -m fast -t 30 stop >/dev/null 2>&1 ||
            "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGD/data" -m immediate -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$W"
}
trap cleanup EXIT

# ---- 1. the handler
echo "== bench/geofence -f $FENCES -d $DEVICES -n $FIXES (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
timeout 3600 "$BUILD/bench/geofence" -f "$FENCES" -d "$DEVICES" -n "$FIXES" --out "$W" --dir "$W" |
    tee "$W/bench.txt"
J=$(tail -1 "$W/bench.txt")

# ---- 2. PostGIS
mkdir -p "$PGD"
if [ "$(id -u)" -eq 0 ]; then # initdb refuses root
    id postgres >/dev/null 2>&1 || {
        echo "bench/geofence_postgis.sh: running as root needs the postgres user" >&2
        exit 1
    }
    chmod 755 "$W"
    chown postgres "$PGD"
    RUN=(runuser -u postgres --)
fi
timeout 120 "${RUN[@]}" "$PG_BIN/initdb" -D "$PGD/data" -A trust -U bench -E UTF8 --no-sync >/dev/null
timeout 90 "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGD/data" -l "$PGD/log" -w -t 60 -o \
    "-c listen_addresses='' -k $PGD -p $PG_PORT -c fsync=off -c synchronous_commit=off \
     -c full_page_writes=off -c shared_buffers=1GB -c work_mem=64MB -c maintenance_work_mem=1GB \
     -c max_parallel_workers_per_gather=0 -c jit=off" start >/dev/null
psql() {
    timeout "$1" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGD" -p $PG_PORT -U bench -d postgres \
        "${@:2}"
}
echo "== PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') + PostGIS, scratch cluster on $PGD"
t0=$(date +%s.%N)
psql 1800 <<SQL
CREATE EXTENSION postgis;
CREATE TABLE fences (id text PRIMARY KEY, geom geometry(Polygon) NOT NULL);
\copy fences FROM '$W/fences.csv'
CREATE INDEX fences_geom ON fences USING gist (geom);
CREATE TABLE fixes_in (i int, device text, lon float8, lat float8);
\copy fixes_in FROM '$W/fixes.csv'
CREATE TABLE fixes AS SELECT i, device, ST_MakePoint(lon, lat) AS geom FROM fixes_in ORDER BY i;
ALTER TABLE fixes ADD PRIMARY KEY (i);
DROP TABLE fixes_in;
VACUUM ANALYZE fences;
VACUUM ANALYZE fixes;
CREATE UNLOGGED TABLE pairs (i int, fence text);
CREATE TABLE run (fixes int, seconds float8);
SQL
t1=$(date +%s.%N)
echo "load       $(calc "$t1 - $t0") s (fences + GiST index + fixes)"
echo "plan of one batch:"
psql 300 -c "EXPLAIN SELECT x.i, f.id FROM fixes x JOIN fences f ON ST_Contains(f.geom, x.geom)
             WHERE x.i >= 0 AND x.i < $PG_BATCH" | sed 's/^/  /'
# warm-up (untimed): the first query of a session loads PostGIS and its caches
psql 300 -c "SELECT count(*) FROM fixes x JOIN fences f ON ST_Contains(f.geom, x.geom)
             WHERE x.i < 1000" >/dev/null
psql $((PG_SECONDS + 600)) <<SQL
DO \$\$
DECLARE
    t0 timestamptz := clock_timestamp();
    a int := 0;
    n int := (SELECT count(*) FROM fixes);
BEGIN
    WHILE a < n AND clock_timestamp() - t0 < make_interval(secs => $PG_SECONDS) LOOP
        INSERT INTO pairs
            SELECT x.i, f.id FROM fixes x JOIN fences f ON ST_Contains(f.geom, x.geom)
            WHERE x.i >= a AND x.i < a + $PG_BATCH;
        a := a + $PG_BATCH;
    END LOOP;
    INSERT INTO run VALUES (least(a, n), extract(epoch FROM clock_timestamp() - t0));
END
\$\$;
SQL
read -r PG_FIXES PG_S < <(psql 60 -At -F' ' -c "SELECT fixes, seconds FROM run")
psql 600 -c "COPY (SELECT i, fence FROM pairs) TO STDOUT" | LC_ALL=C sort >"$W/pg_pairs.tsv"
awk -F'\t' -v n="$PG_FIXES" '$1 < n' "$W/inside.tsv" | LC_ALL=C sort >"$W/cairn_pairs.tsv"
NPAIRS=$(wc -l <"$W/pg_pairs.tsv")
# Pairs only one side found. Cairn's edge rule puts a point on a fence's
# boundary (within 1e-8 degrees) inside; ST_Contains leaves it out. So the
# sets agree when PostGIS found nothing Cairn did not, and every pair only
# Cairn found is such a boundary point (checked with ST_Distance).
LC_ALL=C comm -23 "$W/pg_pairs.tsv" "$W/cairn_pairs.tsv" >"$W/only_pg.tsv"
LC_ALL=C comm -13 "$W/pg_pairs.tsv" "$W/cairn_pairs.tsv" >"$W/only_cairn.tsv"
ONLY_PG=$(wc -l <"$W/only_pg.tsv")
ONLY_CAIRN=$(wc -l <"$W/only_cairn.tsv")
EDGE=$(psql 600 -At <<SQL
CREATE TABLE only_cairn (i int, fence text);
\copy only_cairn FROM '$W/only_cairn.tsv'
SELECT count(*) FROM only_cairn o JOIN fixes x USING (i) JOIN fences f ON f.id = o.fence
WHERE ST_Distance(ST_Boundary(f.geom), x.geom) <= 1e-8;
SQL
)
DIFF=$((ONLY_PG + ONLY_CAIRN - EDGE))

# ---- 3. the figures
PG_RATE=$(calc "$PG_FIXES / $PG_S")
H=$(jq .handler_per_s <<<"$J")
E=$(jq .e2e_per_s <<<"$J")
printf 'postgis    %9.0f fixes/s (ST_Contains + GiST, batches of %d; %d fixes in %.1f s)\n' \
    "$PG_RATE" "$PG_BATCH" "$PG_FIXES" "$PG_S"
printf 'same sets  %s (%d pairs of the first %d fixes; %d more in Cairn, all on a fence boundary; %d differ)\n' \
    "$([ "$DIFF" = 0 ] && echo yes || echo NO)" "$NPAIRS" "$PG_FIXES" "$EDGE" "$DIFF"
printf 'ratio      %9.1f x PostGIS (handler alone), %.1f x (end to end)\n' \
    "$(calc "$H / $PG_RATE")" "$(calc "$E / $PG_RATE")"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
jq -c --argjson pg "$PG_RATE" --argjson pgfixes "$PG_FIXES" --argjson pgs "$PG_S" \
    --argjson diff "$DIFF" --argjson pairs "$NPAIRS" --argjson edge "$EDGE" \
    '. + {postgis_per_s: ($pg | floor), postgis_fixes: $pgfixes, postgis_s: $pgs,
          postgis_pairs: $pairs, boundary_pairs: $edge, pairs_differ: $diff,
          ratio_handler: ((.handler_per_s / $pg) * 10 | floor / 10),
          ratio_e2e: ((.e2e_per_s / $pg) * 10 | floor / 10)}' <<<"$J"
[ "$DIFF" = 0 ] || {
    echo "bench/geofence_postgis.sh: PostGIS and the handler disagree on $DIFF (fix, fence) pairs" >&2
    exit 1
}
