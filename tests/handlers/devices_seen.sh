#!/usr/bin/env bash
# The devices handler's seen index (devices.seen: a lazy lower bound of each
# online device's last_seen, moved by ticks) and the offline/online events
# it drives, on a generated workload of 80 devices in two tenants over 42
# minutes of event time, a tick per minute (offline after the default
# 300 s), in three appends:
#
#   - devices report every 2-6 minutes, then stop at different minutes:
#     several go offline in one tick, their entries in lower-bound order
#     (the entry is where a device came online or was last moved, not its
#     last_seen), and due entries of devices seen since are moved;
#   - a quarter of them resume 12 minutes after stopping (device.online,
#     a new entry);
#   - some get a late event (older than last_seen) after going offline:
#     back online at their old last_seen, the key of the entry the tick
#     deleted (in the same transaction when both are in one append);
#   - p-0..p-9 come online and stop within one minute, some with a second
#     event: they go offline in one tick in entry order, not last_seen
#     order (p-0, last seen at 20:50, before p-1, at 20:11).
#
# Expected (written by the build before the in-memory mirror of the index,
# devices.c, so the mirror is checked against the direct LMDB index):
# fixtures/devices_seen/stream.ndjson (the derived stream), t.ndjson and
# u.ndjson (`cairn show devices`), seen.txt (the index's entries at the
# end, mdb_dump). The same with the mirror dropped after 5 entries
# (handlers.devices.seen_mirror_max: the direct path), then replay and
# chunked appends give the same digest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

EXP=$FIXTURES/devices_seen

# The workload, one line per input, in log order (by minute, then a
# stable order within the minute); split into three files at minutes 15
# and 30.
gen() {
    awk 'BEGIN {
        n = 0
        for (ten = 0; ten < 2; ten++) {
            nd = ten ? 20 : 60
            for (i = 0; i < nd; i++) {
                id = sprintf("%s-%02d", ten ? "e" : "d", i)
                tn = ten ? "u" : "t"
                first = i % 7
                every = 2 + i % 5
                stop = 10 + (i * 7) % 25
                sec = (i * 13) % 60
                for (m = first; m <= stop; m += every)
                    ev(m, sec, tn, id, m)
                if (i % 4 == 0)
                    for (m = stop + 12; m <= 40; m += every)
                        ev(m, sec, tn, id, m)
                if (i % 6 == 1) # late: sent at stop+8, timed at its last report
                    ev(stop + 8, 59, tn, id, stop - (stop - first) % every, sec)
            }
        }
        for (k = 0; k < 10; k++) { # online and gone in one minute: p-0 (entry 20:10,
            id = sprintf("p-%d", k) # last_seen 20:50) goes offline before p-1 (20:11)
            sec = 10 + k
            ev(20 + k % 3, sec, "t", id, 20 + k % 3)
            if (k % 2 == 0)
                ev(20 + k % 3, 50 + k, "t", id, 20 + k % 3, 50 + k)
        }
        for (m = 1; m <= 42; m++)
            printf "%05d %05d {\"type\":\"tick\",\"tenant\":\"t\",\"time\":\"%s\",\"payload\":{\"interval_ms\":60000}}\n", m * 100 + 99, 0, ts(m, 0)
    }
    function ts(m, s) { return sprintf("2026-03-01T1%d:%02d:%02dZ", int(m / 60), m % 60, s) }
    function ev(at, order, tn, id, m, s) {
        if (s == "") s = sec
        n++
        if (n % 2)
            printf "%05d %05d {\"type\":\"location\",\"tenant\":\"%s\",\"time\":\"%s\",\"payload\":{\"device_id\":\"%s\",\"lat\":52.%d,\"lon\":13.%d,\"speed\":%d.5}}\n", at * 100 + order, n, tn, ts(m, s), id, n, m, n % 40
        else
            printf "%05d %05d {\"type\":\"telemetry\",\"tenant\":\"%s\",\"time\":\"%s\",\"payload\":{\"device_id\":\"%s\",\"event_type\":\"reading\",\"battery\":%d.5,\"data\":{\"temperature_c\":%d.25,\"rssi\":-%d}}}\n", at * 100 + order, n, tn, ts(m, s), id, 90 - m, n % 30, 40 + n % 50
    }' | sort -n -k1,1 -k2,2 | cut -d' ' -f3-
}

gen >"$WORK/workload.ndjson"
awk -v dir="$WORK" '{ f = NR <= 300 ? "a" : NR <= 600 ? "b" : "c"; print > (dir "/part." f ".ndjson") }' \
    "$WORK/workload.ndjson"
for f in a b c; do
    append "$WORK/part.$f.ndjson"
done

# compare NAME ACTUAL-FILE: byte for byte against fixtures/devices_seen/NAME.
compare() {
    local name=$1 actual=$2
    if [ "${CAIRN_UPDATE_EXPECTED:-}" = 1 ]; then
        mkdir -p "$EXP"
        cp "$actual" "$EXP/$name"
        echo "updated devices_seen/$name"
        return
    fi
    cmp -s "$EXP/$name" "$actual" || {
        diff -u "$EXP/$name" "$actual" | head -40 >&2
        fail "devices_seen/$name"
    }
    echo "ok devices_seen/$name"
}

# The index's entries: time (hex, biased big-endian) and view key.
seen_dump() {
    mdb_dump -p -s devices.seen "$1/state" | sed -n '/^HEADER=END/,/^DATA=END/p'
}

cairn stream devices >"$WORK/stream.ndjson"
cairn show devices --tenant t >"$WORK/t.ndjson"
cairn show devices --tenant u >"$WORK/u.ndjson"
compare stream.ndjson "$WORK/stream.ndjson"
compare t.ndjson "$WORK/t.ndjson"
compare u.ndjson "$WORK/u.ndjson"
if [ "$(grep -c device.offline "$WORK/stream.ndjson")" -lt 40 ] ||
    [ "$(grep -c device.online "$WORK/stream.ndjson")" -lt 10 ]; then
    fail "the workload should take devices offline and back"
fi
if command -v mdb_dump >/dev/null; then
    seen_dump "$DATA" >"$WORK/seen.txt"
    compare seen.txt "$WORK/seen.txt"
else
    echo "mdb_dump not installed: the index's entries are checked through the digests only"
fi

# The direct path: the mirror dropped (written out) past 5 entries.
small=$WORK/small
echo '{"handlers":{"devices":{"seen_mirror_max":5}}}' >"$WORK/small.json"
for f in a b c; do
    out=$("$CAIRN" append "$WORK/part.$f.ndjson" --engine --data "$small" --config "$WORK/small.json")
    ! grep -q '"error"' <<<"$out" || fail "appending part $f with the small mirror"
done
[ "$("$CAIRN" digest --data "$small" --config "$WORK/small.json")" = "$(cairn digest)" ] ||
    fail "the state with the mirror dropped differs"
echo "ok the direct path gives the same digest"

# The mirror dropped in the middle of a transaction with work pending:
# three stored entries popped by a tick (three deletes due), three pushed
# (three puts due), then a fourth push over the bound (3) writes both out.
ev() { # ev MINUTE DEVICE
    printf '{"type":"telemetry","tenant":"t","time":"2026-03-01T10:%02d:00Z","payload":{"device_id":"%s","event_type":"heartbeat"}}\n' "$1" "$2"
}
tick() { # tick MINUTE
    printf '{"type":"tick","tenant":"t","time":"2026-03-01T10:%02d:00Z","payload":{"interval_ms":60000}}\n' "$1"
}
{ ev 0 x1; ev 0 x2; ev 0 x3; } >"$WORK/spill.a.ndjson"
{ tick 6; ev 7 y1; ev 7 y2; ev 7 y3; ev 7 y4; ev 8 x2; tick 13; } >"$WORK/spill.b.ndjson"
echo '{"handlers":{"devices":{"seen_mirror_max":3}}}' >"$WORK/spill.json"
for d in spill-mirror spill-direct; do
    cfg=()
    [ $d = spill-mirror ] || cfg=(--config "$WORK/spill.json")
    for f in a b; do
        out=$("$CAIRN" append "$WORK/spill.$f.ndjson" --engine --data "$WORK/$d" "${cfg[@]}")
        ! grep -q '"error"' <<<"$out" || fail "appending spill.$f to $d"
    done
done
[ "$("$CAIRN" digest --data "$WORK/spill-mirror")" = \
    "$("$CAIRN" digest --data "$WORK/spill-direct" --config "$WORK/spill.json")" ] ||
    fail "the mirror dropped with pending deletes and puts gives another state"
[ "$("$CAIRN" stream devices --data "$WORK/spill-mirror" | grep -c device.offline)" = 7 ] ||
    fail "spill workload: 7 devices should have gone offline"
echo "ok the mirror dropped mid-transaction gives the same digest"

replay_matches
chunks_match "$WORK/workload.ndjson"
