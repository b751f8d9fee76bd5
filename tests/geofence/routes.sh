#!/usr/bin/env bash
# The geofence HTTP routes against `cairn serve --insecure-no-auth` on a
# free 127.0.0.1 port: fences, one fence, WITHIN, hits, NEARBY, containing;
# then WITHIN and NEARBY on a random workload with the operation queues
# full, partly merged and empty (the same answers).
# The same answers whatever part of the hits is still queued in
# geofence.hitq (handlers.geofence.hitq_max: the default queues them all
# here, 1 merges each into the indexes at once, 4 leaves the last two
# queued, one of them replacing a merged hit of the same key), and
# whatever part of the operations on inside and pos is still queued in
# geofence.insq / posq (handlers.geofence.opq_max, the same values: WITHIN
# and NEARBY read the sets with their queues applied, d2's move out of
# its first grid cell and d4's exit and enter again included).
set -euo pipefail
. "$CAIRN_SOURCE_DIR/tests/handlers/lib.sh"

T=1772359200000000000
{
    printf '{"type":"geofence.define","tenant":"t","time":%d,"payload":{"fence_id":"A","name":"a","geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]},"detect":["enter","exit"]}}\n' $T
    printf '{"type":"geofence.define","tenant":"t","time":%d,"payload":{"fence_id":"B","geometry":{"type":"Circle","center":[0.5,0.5],"radius_m":1000}}}\n' $T
    printf '{"type":"geofence.define","tenant":"u","time":%d,"payload":{"fence_id":"A","geometry":{"type":"Circle","center":[0.5,0.5],"radius_m":10}}}\n' $T
    printf '{"type":"location","tenant":"t","time":%d,"payload":{"device_id":"d1","lat":0.5,"lon":0.5}}\n' $((T + 1000000000))
    printf '{"type":"location","tenant":"t","time":%d,"payload":{"device_id":"d2","lat":0.5,"lon":0.503}}\n' $((T + 2000000000))
    printf '{"type":"location","tenant":"t","time":%d,"payload":{"device_id":"d3","lat":0.5,"lon":2}}\n' $((T + 3000000000))
    printf '{"type":"location","tenant":"t","time":%d,"payload":{"device_id":"d2","lat":0.5,"lon":1.5}}\n' $((T + 4000000000))
    # three fixes of d4 at one time: enter, exit, enter again (the second
    # enter has the first one's key: fence, time, kind, device)
    printf '{"type":"geofence.define","tenant":"v","time":%d,"payload":{"fence_id":"E","geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]},"detect":["enter","exit"]}}\n' $T
    printf '{"type":"location","tenant":"v","time":%d,"payload":{"device_id":"d4","lat":0.5,"lon":0.5}}\n' $((T + 5000000000))
    printf '{"type":"location","tenant":"v","time":%d,"payload":{"device_id":"d4","lat":0.5,"lon":2}}\n' $((T + 5000000000))
    printf '{"type":"location","tenant":"v","time":%d,"payload":{"device_id":"d4","lat":0.6,"lon":0.6}}\n' $((T + 5000000000))
} >"$WORK/in.ndjson"

PID=
trap 'if [ -n "$PID" ]; then kill $PID 2>/dev/null; wait $PID 2>/dev/null; fi; rm -rf "$WORK"' EXIT
serve() {
    if [ -n "$PID" ]; then
        kill $PID 2>/dev/null
        wait $PID 2>/dev/null || true
    fi
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$CAIRN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --insecure-no-auth >"$WORK/serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
}
get() { curl -s "http://127.0.0.1:$PORT/v1/$1"; }
ok() { # ok NAME PATH JQ
    get "$2" | jq -e "$3" >/dev/null || fail "$1: $(get "$2")"
    echo "ok $1"
}
# queues Q KEY…: CAIRN_CONFIG sets each handlers.geofence KEY to Q (none
# set for "default")
queues() {
    local q=$1 kv=() k
    shift
    if [ "$q" = default ]; then
        unset CAIRN_CONFIG
        return
    fi
    for k in "$@"; do kv+=("\"$k\": $q"); done
    (IFS=,; echo "{\"handlers\": {\"geofence\": {${kv[*]}}}}") >"$WORK/q.json"
    export CAIRN_CONFIG=$WORK/q.json
}
for q in default 1 4; do
queues $q hitq_max opq_max
[ $q = default ] || DATA=$WORK/data$q
append "$WORK/in.ndjson"
serve
echo "hitq_max and opq_max $q:"
ok "fences of t" "fences?tenant=t" '.seq == 11 and ([.fences[].fence_id] == ["A","B"]) and .next == null'
ok "fences of every tenant (admin)" "fences" '[.fences[] | .tenant + "/" + .fence_id] == ["t/A","t/B","u/A","v/E"]'
ok "fences paginated" "fences?tenant=t&limit=1" '[.fences[].fence_id] == ["A"] and .next == "A"'
ok "after" "fences?tenant=t&after=A" '[.fences[].fence_id] == ["B"]'
ok "one fence" "fences/A?tenant=t" '.fence.name == "a" and .fence.vertices == 4'
ok "unknown fence" "fences/Z?tenant=t" '.error.code == "not_found"'
ok "tenant needed" "fences/A" '.error.code == "missing_parameter"'
ok "inside A (WITHIN)" "fences/A/inside?tenant=t" '[.devices[].device_id] == ["d1"] and .devices[0].since == "2026-03-01T10:00:01Z"'
ok "inside B" "fences/B/inside?tenant=t" '[.devices[].device_id] == ["d1"]'
ok "containing" "fences/containing?tenant=t&lat=0.5&lon=0.5" '[.fences[].fence_id] == ["A","B"]'
ok "containing (edge)" "fences/containing?tenant=t&lat=0&lon=0.2" '[.fences[].fence_id] == ["A"]'
ok "containing nothing" "fences/containing?tenant=t&lat=5&lon=5" '.fences == []'
ok "bad lat" "fences/containing?tenant=t&lat=95&lon=5" '.error.code == "invalid_parameter"'
ok "hits by fence" "geofence/hits?tenant=t&fence=A" '[.hits[] | .type + " " + .device_id] == ["geofence.enter d1","geofence.enter d2","geofence.exit d2"]'
ok "hits by device" "geofence/hits?tenant=t&device=d2" '[.hits[] | .type + " " + .fence_id] == ["geofence.enter A","geofence.exit A"]'
ok "hits in a time range" "geofence/hits?tenant=t&fence=A&from=2026-03-01T10:00:02Z&to=2026-03-01T10:00:03Z" '[.hits[].device_id] == ["d2"]'
ok "hits need a filter" "geofence/hits?tenant=t" '.error.code == "missing_parameter"'
# the payloads come from stream.geofence (the index holds dseqs), the order from the index
ok "hits of a fence and a device" "geofence/hits?tenant=t&fence=A&device=d2" '[.hits[].type] == ["geofence.enter","geofence.exit"] and .hits[0] == {"type":"geofence.enter","fence_id":"A","device_id":"d2","lat":0.5,"lon":0.503,"at":"2026-03-01T10:00:02Z","since":"2026-03-01T10:00:02Z"} and .hits[1] == {"type":"geofence.exit","fence_id":"A","device_id":"d2","lat":0.5,"lon":1.5,"at":"2026-03-01T10:00:04Z","since":"2026-03-01T10:00:02Z","dwell_s":2,"reason":"left"}'
ok "hits by device, all fences" "geofence/hits?tenant=t&device=d1" '[.hits[] | .fence_id + " " + .at] == ["A 2026-03-01T10:00:01Z"]'
ok "hits limited" "geofence/hits?tenant=t&fence=A&limit=2" '[.hits[].device_id] == ["d1","d2"] and .truncated == true'
ok "hits of another tenant" "geofence/hits?tenant=u&device=d2" '.hits == [] and .truncated == false'
ok "nearby, nearest first" "nearby?tenant=t&lat=0.5&lon=0.5&radius_m=2000" '[.devices[].device_id] == ["d1"]'
ok "nearby wider" "nearby?tenant=t&lat=0.5&lon=1.4&radius_m=100000&limit=2" '[.devices[].device_id] == ["d2","d3"] and (.devices[0].distance_m | floor) == 11119'
ok "nearby radius bound" "nearby?tenant=t&lat=0&lon=0&radius_m=1e9" '.error.code == "invalid_parameter"'
ok "a later hit of one key replaces the first" "geofence/hits?tenant=v&fence=E" '[.hits[] | .type + " " + (.lat | tostring)] == ["geofence.enter 0.6","geofence.exit 0.5"]'
ok "... by device too" "geofence/hits?tenant=v&device=d4" '[.hits[] | .type + " " + (.lat | tostring)] == ["geofence.enter 0.6","geofence.exit 0.5"]'
ok "... and limited" "geofence/hits?tenant=v&fence=E&device=d4&limit=1" '[.hits[].lat] == [0.6] and .truncated == true'
ok "inside E after an exit and an enter again" "fences/E/inside?tenant=v" '[.devices[].device_id] == ["d4"] and .devices[0].since == "2026-03-01T10:00:05Z"'
ok "nearby after the move out and back" "nearby?tenant=v&lat=0.6&lon=0.6&radius_m=1000" '[.devices[].device_id] == ["d4"] and .devices[0].distance_m == 0'
done

# WITHIN and NEARBY over a random workload (seeded): 40 fences, 300
# devices jumping between grid cells, fences deleted and redefined, a roam
# fence (its fixes merge posq): the answers with every operation applied
# at once (opq_max 1: the queues stay empty) are the reference; with 7
# (merges inside and between transactions) and the default (nearly
# everything queued) the same bytes must come back, `seq` aside.
python3 - "$T" >"$WORK/rand.ndjson" <<'PY'
import json, random, sys
t0, r = int(sys.argv[1]), random.Random(7)
def ev(s, typ, p):
    print(json.dumps({"type": typ, "tenant": "r", "time": t0 + s * 10**9, "payload": p}))
def fence(i, s):
    x, y, w = r.uniform(0, 0.9), r.uniform(0, 0.9), r.uniform(0.02, 0.2)
    g = ({"type": "Circle", "center": [x, y], "radius_m": r.uniform(500, 15000)} if i % 3 == 0 else
         {"type": "Polygon", "coordinates": [[[x, y], [x + w, y], [x + w, y + w], [x, y + w], [x, y]]]})
    ev(s, "geofence.define", {"fence_id": "f%02d" % i, "geometry": g, "detect": ["enter", "exit"]})
for i in range(40):
    fence(i, 0)
ev(0, "geofence.define", {"fence_id": "roam", "geometry": {"type": "Roam", "target_prefix": "dev-00",
                                                           "radius_m": 3000}, "devices": ["dev-01"]})
for s in range(1, 3001):
    d = r.randrange(300)
    ev(s, "location", {"device_id": "dev-%03d" % d, "lat": r.uniform(0, 1), "lon": r.uniform(0, 1)})
    if s % 500 == 0:
        ev(s, "geofence.delete", {"fence_id": "f%02d" % (s // 500)})
    if s % 700 == 0:
        fence(s // 700 + 10, s)
PY
answers() { # every fence's WITHIN and NEARBY at 25 points, without the seq
    for i in $(seq -w 0 39); do get "fences/f$i/inside?tenant=r&limit=1000" | jq -c 'del(.seq)'; done
    for p in $(seq 0 24); do
        get "nearby?tenant=r&lat=0.$((p * 4))&lon=0.$((p * 3 + 10))&radius_m=30000&limit=1000" | jq -c 'del(.seq)'
    done
}
for q in 1 7 default; do
    queues $q opq_max
    DATA=$WORK/rand$q
    append "$WORK/rand.ndjson"
    serve
    answers >"$WORK/answers.$q"
done
[ "$(jq -s '[.[] | .devices | length] | add' "$WORK/answers.1")" -gt 300 ] ||
    fail "the random workload found too few devices: $(head -3 "$WORK/answers.1")"
for q in 7 default; do
    cmp -s "$WORK/answers.1" "$WORK/answers.$q" || fail "opq_max $q answers otherwise than 1:
$(diff "$WORK/answers.1" "$WORK/answers.$q" | head -10)"
done
echo "ok WITHIN and NEARBY on a random workload: the same answers with the queues full, partly merged and empty"
