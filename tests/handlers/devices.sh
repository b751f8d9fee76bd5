#!/usr/bin/env bash
# The devices handler through the real CLI, in three appends (three state
# transactions at least, so cached devices are flushed and updated again):
#
#   d-pos   a position with lat/lon only, readings, a full position (with
#           speed) at a fractional second, a late location (counted, its
#           values not taken); after going offline, readings merged in;
#           then a third position with other fields (one transaction
#           later); tenant u has its own d-pos (a heartbeat: no values)
#   d-read  status reports and readings: values merged by key, new keys
#           appended, a late report (counted, not taken)
#   d-off   offline on the tick, back online with a new position
#   d-many  readings past READINGS_MAX: 2 keys, then data of 70 entries
#           (more than the 64 merged in place), then 4 over the 64 kept
#
# Expected documents: fixtures/devices/<device_id>.json; the derived
# stream: fixtures/devices/stream.json.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

append "$FIXTURES/devices.ndjson"
append "$FIXTURES/devices2.ndjson"
append "$FIXTURES/devices3.ndjson"

for id in d-pos d-read d-off d-many; do
    check "devices/$id.json" show devices "$id" --tenant t
done
check devices/d-pos.u.json show devices d-pos --tenant u
check devices/stream.json stream devices

replay_matches
chunks_match "$FIXTURES/devices.ndjson" "$FIXTURES/devices2.ndjson" "$FIXTURES/devices3.ndjson"
