#!/usr/bin/env bash
# The geofence handler through the real CLI: a path across several fences
# (enter / exit / cross in exactly that order), GPS jitter on a border with
# hysteresis (no flapping), dwell, redefinition and deletion, inside and
# outside, late fixes, roam pairs, order arrival, bad geometries refused at
# ingest with their reason, replay determinism, and the same results with
# a device table small enough to be emptied between fixes.
set -euo pipefail
. "$CAIRN_SOURCE_DIR/tests/handlers/lib.sh"

T0=1772359200 # 2026-03-01T10:00:00Z
ev() { # ev SECONDS TYPE PAYLOAD
    printf '{"type":"%s","tenant":"t","time":%d,"payload":%s}\n' "$2" $(((T0 + $1) * 1000000000)) "$3"
}
loc() { # loc SECONDS DEVICE LON LAT
    ev "$1" location "{\"device_id\":\"$2\",\"lat\":$4,\"lon\":$3}"
}
sq() { # sq X0 Y0 X1 Y1 -> a Polygon
    echo "{\"type\":\"Polygon\",\"coordinates\":[[[$1,$2],[$3,$2],[$3,$4],[$1,$4],[$1,$2]]]}"
}
D='"detect":["enter","exit","cross"]'
# what the stream says, one "type fence device [reason]" line per event
events() {
    cairn stream geofence | jq -r '[.type, (.payload.fence_id // .payload.order_id),
        .payload.device_id, (.payload.reason // .payload.other_id // empty)] | join(" ")'
}
expect() { # expect NAME FILTER-REGEX EXPECTED (lines)
    local got
    got=$(events | grep -E "$2" || true)
    [ "$got" = "$3" ] || fail "$1: got
$got
expected
$3"
    echo "ok $1"
}

F=$WORK/in.ndjson
{
    # 1. a path across A, B (crossed), the circle C
    ev 0 geofence.define "{\"fence_id\":\"A\",\"geometry\":$(sq 0 0 1 1),$D}"
    ev 0 geofence.define "{\"fence_id\":\"B\",\"geometry\":$(sq 2 0 3 1),$D}"
    ev 0 geofence.define "{\"fence_id\":\"C\",\"geometry\":{\"type\":\"Circle\",\"center\":[5,0.5],\"radius_m\":20000},$D}"
    loc 10 p1 -0.5 0.5
    loc 20 p1 0.5 0.5
    loc 30 p1 1.5 0.5
    loc 40 p1 3.5 0.5
    loc 50 p1 5 0.5
    loc 60 p1 6 0.5
    loc 55 p1 5 0.5 # late: ignored
    # 2. jitter on the east edge of H (lon 11) every 10 s, ~11 m either side
    ev 0 geofence.define "{\"fence_id\":\"H\",\"geometry\":$(sq 10 0 11 1),$D,\"margin_m\":50,\"min_dwell_s\":30}"
    for i in $(seq 0 12); do
        if [ $((i % 2)) = 0 ]; then loc $((100 + i * 10)) j1 10.9999 0.5; else loc $((100 + i * 10)) j1 11.0001 0.5; fi
    done
    loc 300 j1 11.01 0.5 # ~1.1 km out: exit
    # the same jitter without hysteresis flaps (for contrast)
    ev 0 geofence.define "{\"fence_id\":\"N\",\"geometry\":$(sq 12 0 13 1),$D}"
    for i in 0 1 2 3; do
        if [ $((i % 2)) = 0 ]; then loc $((100 + i * 10)) j2 12.9999 0.5; else loc $((100 + i * 10)) j2 13.0001 0.5; fi
    done
    # 3. redefinition and deletion
    ev 400 geofence.define "{\"fence_id\":\"R\",\"geometry\":$(sq 20 0 21 1),$D}"
    ev 400 geofence.define "{\"fence_id\":\"X\",\"geometry\":$(sq 20 0 21 1),$D}"
    loc 410 r1 20.5 0.5
    ev 420 geofence.define "{\"fence_id\":\"R\",\"geometry\":$(sq 30 0 31 1),$D}"
    loc 430 r1 20.5 0.51 # R moved away: exit R at this fix
    ev 440 geofence.delete '{"fence_id":"X"}' # exit X now (deleted)
    ev 440 geofence.delete '{"fence_id":"nope"}'
    loc 450 r1 30.5 0.5 # into the new R
    # 4. inside / outside (devices filter)
    ev 500 geofence.define "{\"fence_id\":\"IO\",\"geometry\":$(sq 60 0 61 1),\"detect\":[\"inside\",\"outside\"],\"devices\":[\"o-*\"]}"
    loc 510 o-1 60.5 0.5
    loc 520 o-1 62 0.5
    loc 530 x-1 62 0.5 # not watched
    # 5. roam: escorts near trucks within 1 km
    ev 600 geofence.define '{"fence_id":"convoy","geometry":{"type":"Roam","target_prefix":"truck-","radius_m":1000},"devices":["escort-*"]}'
    loc 610 escort-1 40 0
    loc 620 truck-1 40.005 0
    loc 630 truck-1 40.006 0
    loc 640 truck-1 40.05 0
    loc 650 escort-1 40.0505 0
    # 6. order arrival
    ev 700 order '{"order_id":"o1","event_type":"order.created","destination":{"lat":0,"lon":50}}'
    ev 701 order '{"order_id":"o1","event_type":"order.assigned","assigned_device_id":"courier-1"}'
    loc 710 courier-1 50.01 0
    loc 720 courier-1 50.0005 0
    loc 730 courier-1 50 0
    ev 740 order '{"order_id":"o2","event_type":"order.created","assigned_device_id":"courier-2","destination":{"lat":0,"lon":51,"arrival_radius_m":2000}}'
    ev 741 order '{"order_id":"o2","event_type":"order.cancelled"}'
    loc 750 courier-2 51 0
} >"$F"
append "$F"

expect "a path across A, B, C" " p1( |$)" "geofence.enter A p1
geofence.exit A p1 left
geofence.cross B p1
geofence.enter C p1
geofence.exit C p1 left"
expect "jitter with margin and dwell: one enter, one exit" " j1( |$)" "geofence.enter H j1
geofence.exit H j1 left"
sel() { cairn stream geofence | jq -s -e "map(select($1))[0] | $2" >/dev/null || fail "$3"; echo "ok $3"; }
sel '.payload.device_id=="j1"' '.payload.since == "2026-03-01T10:01:40Z" and .payload.at == "2026-03-01T10:02:20Z"' \
    "enter fires after the dwell, since = first fix inside"
expect "no margin: jitter flaps" " j2( |$)" "geofence.enter N j2
geofence.exit N j2 left
geofence.enter N j2
geofence.exit N j2 left"
expect "redefinition and deletion" " r1( |$)" "geofence.enter R r1
geofence.enter X r1
geofence.exit R r1 left
geofence.exit X r1 deleted
geofence.enter R r1"
expect "inside / outside for watched devices" "^geofence.(inside|outside) " "geofence.inside IO o-1
geofence.outside IO o-1"
expect "roam pairs" "nearby|faraway" "geofence.nearby convoy truck-1 escort-1
geofence.faraway convoy truck-1 escort-1
geofence.nearby convoy escort-1 truck-1"
expect "order arrival once, not after cancel" "order" "order.arrived o1 courier-1"
sel '.type=="order.arrived"' '.payload.distance_m > 50 and .payload.distance_m < 60 and .key == "o1"' "arrival distance"
jcheck "the fence view" '.fence_id == "R" and .vertices == 4 and .bbox == [30,0,31,1]' show geofence R --tenant t
[ -z "$(cairn show geofence X --tenant t 2>/dev/null)" ] || fail "deleted fence still shown"

# Bad geometries: refused at ingest with their reason, nothing logged.
head_before=$(cairn head | jq .seq)
bad() { # bad FIELD REASON GEOMETRY
    local out
    out=$(ev 0 geofence.define "{\"fence_id\":\"bad\",\"geometry\":$3}" | cairn append - 2>/dev/null || true)
    jq -e --arg f "$1" --arg r "$2" '.error.code == "invalid_geometry" and .error.field == $f
        and (.error.message | contains($r))' <<<"$out" >/dev/null || fail "bad geometry $3: $out"
}
bad /payload/geometry/coordinates/0/4 "not closed" '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0.5]]]}'
bad /payload/geometry/coordinates/0 "at least 4" '{"type":"Polygon","coordinates":[[[0,0],[1,1],[0,0]]]}'
bad /payload/geometry/coordinates/0/2 "out of range" '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,91],[0,0]]]}'
bad /payload/geometry/coordinates/0/2 "intersects itself" '{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}'
bad /payload/geometry/coordinates/0/0/1 "antimeridian" '{"type":"MultiPolygon","coordinates":[[[[179,0],[-179,0],[-179,1],[179,0]]]]}'
bad /payload/geometry/coordinates/1/3 "numbers" '{"type":"Polygon","coordinates":[[[0,0],[5,0],[5,5],[0,0]],[[1,1],[2,1],[2,2],[null,1],[1,1]]]}'
bad /payload/geometry/center "out of range" '{"type":"Circle","center":[200,0],"radius_m":5}'
[ "$(cairn head | jq .seq)" = "$head_before" ] || fail "a refused fence entered the log"
echo "ok bad geometries refused with their reason"

replay_matches
chunks_match "$F"

# A device table of 2 records is written back and emptied between fixes
# (handlers.geofence.device_cache_max): the same state and stream.
echo '{"handlers": {"geofence": {"device_cache_max": 2}}}' >"$WORK/small.json"
DATA_DIR=$WORK/small cairn append "$F" --engine --config "$WORK/small.json" >/dev/null
[ "$(DATA_DIR=$WORK/small cairn digest)" = "$(cairn digest)" ] ||
    fail "a 2-record device table gives another state"
[ "$(DATA_DIR=$WORK/small cairn stream geofence | md5sum)" = "$(cairn stream geofence | md5sum)" ] ||
    fail "a 2-record device table gives other events"
echo "ok a 2-record device table gives the same state and events"

# Deferred writes made after every fix instead of at the flush
# (handlers.geofence.defer_max 1), and the order records written back and
# dropped from memory with them (order_cache_max 1: each order event or
# arrival reads its record from the DBI again): the same state and stream.
echo '{"handlers": {"geofence": {"defer_max": 1, "order_cache_max": 1}}}' >"$WORK/nodefer.json"
DATA_DIR=$WORK/nodefer cairn append "$F" --engine --config "$WORK/nodefer.json" >/dev/null
[ "$(DATA_DIR=$WORK/nodefer cairn digest)" = "$(cairn digest)" ] ||
    fail "writes made at once give another state"
[ "$(DATA_DIR=$WORK/nodefer cairn stream geofence | md5sum)" = "$(cairn stream geofence | md5sum)" ] ||
    fail "writes made at once give other events"
echo "ok writes made at once give the same state and events"

# Hits queue in geofence.hitq and are merged into geofence.hits / dhits
# every hitq_max hits (handlers.geofence.hitq_max, geofence_int.h; the
# default, 65 536, is never reached here); the operations on inside and pos
# queue in insq and posq and are applied every opq_max (likewise). With 2,
# merges come inside transactions and between them: the same events, and
# replay and chunks rebuild that state (the queues' sizes shape the state,
# so both use the same config).
echo '{"handlers": {"geofence": {"hitq_max": 2, "opq_max": 2}}}' >"$WORK/q2.json"
export CAIRN_CONFIG=$WORK/q2.json
Q2=$WORK/q2
DATA_DIR=$Q2 append "$F"
[ "$(DATA_DIR=$Q2 cairn stream geofence | md5sum)" = "$(cairn stream geofence | md5sum)" ] ||
    fail "hitq_max 2 gives other events"
entries() { mdb_stat -s "geofence.$2" "$1/state" | sed -n 's/ *Entries: //p'; }
hits=$(entries "$Q2" hits)
if ! [ "$hits" -gt 10 ] || [ "$(entries "$Q2" dhits)" != "$hits" ] || [ "$(entries "$Q2" hitq)" -ge 2 ]; then
    fail "hitq_max 2: $hits hits, $(entries "$Q2" dhits) dhits, $(entries "$Q2" hitq) queued"
fi
if [ "$(entries "$DATA" hits)" != 0 ] || ! [ "$(entries "$DATA" hitq)" -gt 10 ]; then
    fail "default hitq_max: hits merged already"
fi
# (with the default, a roam fix merges posq, and a deletion insq, as they
# read the sets: some operations came after the last of them)
for q in insq posq; do
    [ "$(entries "$Q2" $q)" -lt 2 ] || fail "opq_max 2: $(entries "$Q2" $q) operations left in $q"
    [ "$(entries "$DATA" $q)" -gt 0 ] || fail "default opq_max: $(entries "$DATA" $q) operations in $q"
done
[ "$(entries "$Q2" pos)" -gt 2 ] || fail "opq_max 2: $(entries "$Q2" pos) devices in pos"
live=$(DATA_DIR=$Q2 cairn digest)
[ "$(DATA_DIR=$Q2 cairn replay --into "$WORK/q2replay")" = "$live" ] || fail "hitq_max 2: replay differs"
split -n l/8 "$F" "$WORK/q2chunk."
for f in "$WORK"/q2chunk.*; do
    if [ -s "$f" ]; then DATA_DIR=$WORK/q2chunked append "$f"; fi
done
[ "$(DATA_DIR=$WORK/q2chunked cairn digest)" = "$live" ] || fail "hitq_max 2: chunks differ"
echo "ok hitq_max and opq_max 2: hits and operations merged, the same events, replay and chunks give its state"

# States of the older layouts are refused when the handler opens, with
# the way out; cairn replay rebuilds them (from the hitq_max 2 state, whose
# hits and dhits are not empty). Layout 1 (hit payloads in geofence.hits,
# no layout mark in geofence.meta: written before geofence.hitlog) is that
# state without geofence.meta; layouts 2 (payloads in geofence.hitlog) and
# 3 (no hitq: every hit in hits and dhits) and 4 (no insq and posq: the
# operations of inside and pos made at once) are that state with the mark
# set to 2, 3 and 4.
old_state() { # $1: the directory, $2: awk program run on the dump
    mkdir -p "$1/state"
    cp -r "$Q2/log" "$1/log"
    mdb_dump -a "$Q2/state" | awk "$2" | mdb_load "$1/state"
    [ "$(entries "$1" hits)" -gt 0 ] || fail "the old-layout state has no hits"
    out=$(DATA_DIR=$1 cairn append /dev/null --engine 2>&1) && fail "an old-layout state was opened: $out"
    grep -q "the geofence state has an older layout: rebuild the state from the log" <<<"$out" ||
        fail "old layout: $out"
    DATA_DIR=$1 cairn replay >/dev/null
    [ "$(DATA_DIR=$1 cairn digest)" = "$live" ] || fail "the replayed old state differs"
}
# shellcheck disable=SC2016 # an awk program
old_state "$WORK/old" '/^VERSION=/ { h = ""; hold = 1 }
    hold { if (!/^db_pagesize=/) h = h $0 "\n"
           if (/^HEADER=END/) { hold = 0; skip = h ~ /\ndatabase=geofence\.meta\n/; if (!skip) printf "%s", h }
           next }
    !skip'
# "layout" is 6c61796f7574 in the dump, its value 00000005 on the next line
for v in 2 3 4; do
    # shellcheck disable=SC2016 # an awk program
    old_state "$WORK/old$v" '/^database=/ { meta = $0 == "database=geofence.meta" }
    meta && prev == " 6c61796f7574" && $0 == " 00000005" { $0 = " 0000000'"$v"'"; set = 1 }
    { prev = $0; print }
    END { if (!set) exit 1 }'
done
unset CAIRN_CONFIG
echo "ok old-layout states (1, 2, 3 and 4) are refused, and replay rebuilds them"

# The handler's prefetch (handler.h, gf_prefetch) runs in a parallel apply
# only: a replay of at least 4 096 inputs with apply_threads 2. 200 devices
# criss-crossing the fences above, 6 000 fixes: replays with the default
# device table and with one of 2 records (emptied between a fix's prefetch
# and its apply, so the prefetch meets freed entries: dgen) give the state
# built live (serial, no prefetch), and the same events.
FLEET=$WORK/fleet
awk -v t0=$((T0 + 10000)) 'BEGIN {
    srand(7)
    for (i = 0; i < 6000; i++)
        printf "{\"type\":\"location\",\"tenant\":\"t\",\"time\":%d000000000,\"payload\":{\"device_id\":\"v%d\",\"lat\":%.5f,\"lon\":%.5f}}\n",
            t0 + i, i % 200, -0.5 + 2 * rand(), -1 + 15 * rand()
}' >"$WORK/fleet.ndjson"
cat "$F" "$WORK/fleet.ndjson" >"$WORK/fleet_all.ndjson"
DATA_DIR=$FLEET append "$WORK/fleet_all.ndjson"
live=$(DATA_DIR=$FLEET cairn digest)
echo '{"apply_threads": 2}' >"$WORK/par.json"
echo '{"apply_threads": 2, "handlers": {"geofence": {"device_cache_max": 2}}}' >"$WORK/par_small.json"
for c in par par_small; do
    out=$(DATA_DIR=$FLEET CAIRN_CONFIG=$WORK/$c.json cairn replay --into "$WORK/fleet_$c")
    [ "$out" = "$live" ] || fail "replay ($c.json) digest $out != live $live"
done
[ "$(DATA_DIR=$FLEET cairn stream geofence | wc -l)" -gt 1000 ] || fail "the fleet made too few hits"
echo "ok parallel replays with prefetching (2-record device table too) give the live state"

# Many orders awaiting arrival: the handler counts, per device, the orders
# awaiting it (memory only: a fix of a device with none reads nothing) in
# counters that double, rebuilt from geofence.oby, past half full (4 096
# at first). 3 000 orders, each its own courier and destination 111 m
# apart (the radius is 100 m); then a cancel and a reassignment, and fixes
# of couriers at their destinations — every tenth of the last thousand
# (added after the counters doubled), at another's, 500 m off. Only the
# awaited couriers arrive, and replay gives the live state.
AW=$WORK/awaited
awk -v t0=$((T0 + 20000)) 'BEGIN {
    for (i = 0; i < 3000; i++)
        printf "{\"type\":\"order\",\"tenant\":\"t\",\"time\":%d000000000,\"payload\":{\"order_id\":\"a%d\",\"event_type\":\"order.created\",\"assigned_device_id\":\"c%d\",\"destination\":{\"lat\":0,\"lon\":%.3f}}}\n",
            t0 + i, i, i, 70 + i / 1000
}' >"$WORK/awaited.ndjson"
{
    ev 24000 order '{"order_id":"a1","event_type":"order.cancelled"}'
    ev 24001 order '{"order_id":"a2","event_type":"order.assigned","assigned_device_id":"c9999"}'
    loc 24010 c0 70 0
    loc 24011 c1 70.001 0    # its order was cancelled
    loc 24012 c2 70.002 0    # reassigned away
    loc 24013 c9999 70.002 0 # reassigned to
    loc 24014 c1500 71 0     # 500 m from its destination
    loc 24015 c2998 72.999 0 # at another courier's destination
    for i in $(seq 2000 10 2990) 2999; do
        loc $((24100 + i)) "c$i" "$(awk -v i="$i" 'BEGIN { printf "%.3f", 70 + i / 1000 }')" 0
    done
} >>"$WORK/awaited.ndjson"
DATA_DIR=$AW append "$WORK/awaited.ndjson"
got=$(DATA_DIR=$AW cairn stream geofence | jq -r 'select(.type == "order.arrived") | "\(.key) \(.payload.device_id)"')
want=$(printf 'a0 c0\na2 c9999\n'; for i in $(seq 2000 10 2990) 2999; do echo "a$i c$i"; done)
[ "$got" = "$want" ] || fail "awaited orders: arrivals
$(diff <(echo "$want") <(echo "$got"))"
live=$(DATA_DIR=$AW cairn digest)
[ "$(DATA_DIR=$AW cairn replay --into "$WORK/awaited_replay")" = "$live" ] || fail "awaited orders: replay differs"
echo "ok 3 000 awaited orders: only the awaited couriers arrive, and replay gives the live state"
