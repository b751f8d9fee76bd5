#!/usr/bin/env bash
# The violations handler end to end through the real CLI:
#  - malformed rules are refused at ingest with their column (nothing enters the log)
#  - `cairn rules load` appends the shipped pack, and only what changed on a reload
#  - the pack's findings on a multi-account inventory (fixtures/inventory.ndjson),
#    checked exactly against fixtures/inventory.expected (account region resource
#    rule), which cis_reference.py derives independently (reference.sh)
#  - the lifecycle: violation -> stays open without duplicates -> resolved when fixed;
#    a complete scan that drops a resource resolves it; disabling / deleting a rule
#    resolves its violations; posture counts follow
#  - replay determinism with rules changing mid-history (replay, chunked batches)
set -euo pipefail
. "$CAIRN_SOURCE_DIR/tests/handlers/lib.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RULES=$CAIRN_SOURCE_DIR/handlers/compliance/rules
ALL=$WORK/history.ndjson
: >"$ALL"

# add LINE…: appends (each must be accepted) and keeps them for the chunked rerun.
add() {
    printf '%s\n' "$@" >"$WORK/in.ndjson"
    append "$WORK/in.ndjson"
    cat "$WORK/in.ndjson" >>"$ALL"
}

# --- malformed rules: refused with positions, nothing appended
bad() {
    local cond=$1 want=$2 out
    out=$(jq -cn --arg c "$cond" '{type:"rule.define",tenant:"acme",payload:{id:"bad",title:"t",
        severity:"low",resource_type:"aws.s3.bucket",condition:$c}}' | cairn append - || true)
    jq -e --arg w "$want" '.error.code == "invalid_rule" and .error.field == "/payload/condition"
        and .error.message == $w' <<<"$out" >/dev/null || fail "bad rule: $out (want $want)"
    echo "ok refused: $want"
}
bad 'Name == "x" and foo(Name)' "column 17: unknown function 'foo'"
bad 'Name == ' 'column 9: expected an operand, found the end'
bad "$(printf '(%.0s' $(seq 17))a$(printf ')%.0s' $(seq 17))" 'column 17: nesting deeper than 16'
[ "$(cairn head | jq .seq)" = 0 ] || fail "a refused rule entered the log"

# --- the rule pack, loaded twice: the second load appends nothing
n=$(ls "$RULES"/*.json | wc -l)
out=$(cairn rules load "$RULES" --tenant acme)
[ "$(grep -c '"seq":' <<<"$out")" = "$n" ] || fail "rules load: $out"
out=$(cairn rules load "$RULES" --tenant acme)
[ "$(grep -c '"unchanged":true' <<<"$out")" = "$n" ] || fail "reload: $out"
echo "ok rules load: $n rules, reload appends nothing"
# the log's rule.define inputs replayed into $ALL for the chunked rerun
cairn tail | jq -c '{type, tenant, id, time, payload}' >>"$ALL"

# --- the inventory: exact findings
append "$HERE/fixtures/inventory.ndjson"
cat "$HERE/fixtures/inventory.ndjson" >>"$ALL"
findings() {
    cairn show violations --tenant acme |
        jq -r 'select(.status == "open") | "\(.account) \(.region) \(.resource_id) \(.rule_id)"' | LC_ALL=C sort
}
# (inventory.expected is not written from these findings: reference.sh
# derives and checks it from an independent reading of the controls.)
diff -u "$HERE/fixtures/inventory.expected" <(findings) || fail "inventory findings differ"
echo "ok inventory: $(wc -l <"$HERE/fixtures/inventory.expected") findings, exactly"

# --- the lifecycle on one bucket (tenant t, one rule)
rule() { # rule ENABLED
    echo '{"type":"rule.define","tenant":"t","time":"2026-06-01T00:00:00Z","payload":{"id":"pab","title":"Block public access","severity":"high","resource_type":"aws.s3.bucket","condition":"PublicAccessBlockConfiguration.BlockPublicAcls == true","frameworks":{"cis-aws-3.0":["2.1.4"],"soc2":["CC6.1"]},"enabled":'"$1"'}}'
}
scan() { # scan TIME SCAN_ID COMPLETE RESOURCES-JSON
    echo '{"type":"discovery","tenant":"t","time":"'"$1"'","payload":{"account_id":"111","region":"us-east-1","scan_id":"'"$2"'","complete":'"$3"',"resources":'"$4"'}}'
}
B_BAD='{"resource_id":"b1","resource_type":"aws.s3.bucket","attributes":{"Name":"b1"}}'
B_OK='{"resource_id":"b1","resource_type":"aws.s3.bucket","attributes":{"Name":"b1","PublicAccessBlockConfiguration":{"BlockPublicAcls":true}}}'
B2_BAD='{"resource_id":"b2","resource_type":"aws.s3.bucket","attributes":{"Name":"b2"}}'
events() { cairn stream violations --tenant t | jq -r '"\(.type) \(.payload.resource_id) \(.payload.reason // "-")"' | paste -sd, -; }

add "$(rule true)" "$(scan 2026-06-01T01:00:00Z s1 true "[$B_BAD,$B2_BAD]")"
[ "$(events)" = "compliance.violation b1 -,compliance.violation b2 -" ] || fail "open: $(events)"
add "$(scan 2026-06-01T02:00:00Z s2 false "[$B_BAD]")"
[ "$(events)" = "compliance.violation b1 -,compliance.violation b2 -" ] || fail "no duplicate: $(events)"
echo "ok a failing resource opens one violation, and only one"
add "$(scan 2026-06-01T03:00:00Z s3 false "[$B_OK]")"
[ "$(events | cut -d, -f3)" = "compliance.resolved b1 compliant" ] || fail "fixed: $(events)"
echo "ok rediscovered compliant: compliance.resolved"
add "$(scan 2026-06-01T04:00:00Z s4 true "[$B_BAD]")"
[ "$(events | cut -d, -f4-)" = "compliance.violation b1 -,compliance.resolved b2 resource_gone" ] ||
    fail "complete scan: $(events)"
cairn show violations --tenant t | jq -s -e '[.[] | select(.resource_id == "b1")][0] |
        .status == "open" and .times_opened == 2' >/dev/null || fail "b1 reopened"
echo "ok a complete scan that drops a resource resolves its violations"
add "$(rule false)"
[ "$(events | cut -d, -f6)" = "compliance.resolved b1 rule_disabled" ] || fail "disabled: $(events)"
echo "ok disabling a rule resolves its violations"
add "$(rule true)" "$(scan 2026-06-01T05:00:00Z s5 true "[$B_BAD]")"
add '{"type":"rule.delete","tenant":"t","time":"2026-06-01T06:00:00Z","payload":{"id":"pab"}}'
[ "$(events | cut -d, -f7-)" = "compliance.violation b1 -,compliance.resolved b1 rule_deleted" ] ||
    fail "deleted: $(events)"
echo "ok deleting a rule resolves its violations"
cairn show violations --tenant t | jq -s -e 'all(.status == "resolved")' >/dev/null || fail "all resolved"

# --- a failed value over 4096 bytes is cut from the violation (the document stays bounded)
perms=$(jq -cn '[range(300) | {IpProtocol: "tcp", FromPort: 22, ToPort: 22,
    IpRanges: [{CidrIp: "0.0.0.0/0", Description: "rule \(.)"}]}]')
add '{"type":"rule.define","tenant":"big","time":"2026-06-01T00:00:00Z","payload":{"id":"ssh","title":"t","severity":"high","resource_type":"aws.ec2.security_group","condition":"GroupName == \"x\" and not any(IpPermissions, FromPort <= 22 and ToPort >= 22)"}}' \
    "{\"type\":\"discovery\",\"tenant\":\"big\",\"time\":\"2026-06-01T00:00:00Z\",\"payload\":{\"account_id\":\"1\",\"region\":\"r\",\"resources\":[{\"resource_id\":\"sg\",\"resource_type\":\"aws.ec2.security_group\",\"attributes\":{\"GroupName\":\"x\",\"IpPermissions\":$perms}}]}}"
cairn show violations --tenant big | jq -e '.failed == {"GroupName": "x", "IpPermissions": "(value over 4096 bytes)"}' >/dev/null ||
    fail "a huge failed value: $(cairn show violations --tenant big | head -c 300)"
echo "ok a failed value over 4096 bytes is cut"

# --- a resource dropped by a complete scan and discovered failing again: its violation
# reopens and counts the opening (times_opened), whether the document was written in
# the same process or read back by a new one (the handler's in-memory set of the view's
# keys must know it either way)
t2() { sed 's/"tenant":"t"/"tenant":"t2"/'; }
times_opened() { cairn show violations --tenant t2 | jq -s -r '.[0] | "\(.status) \(.times_opened)"'; }
add "$(rule true | t2)" "$(scan 2026-06-01T01:00:00Z a1 true "[$B_BAD]" | t2)" \
    "$(scan 2026-06-01T02:00:00Z a2 true "[]" | t2)" "$(scan 2026-06-01T03:00:00Z a3 false "[$B_BAD]" | t2)"
[ "$(times_opened)" = "open 2" ] || fail "reopened after a drop: $(times_opened)"
add "$(scan 2026-06-01T04:00:00Z a4 true "[]" | t2)"
add "$(scan 2026-06-01T05:00:00Z a5 false "[$B_BAD]" | t2)"
[ "$(times_opened)" = "open 3" ] || fail "reopened after a drop, in a new process: $(times_opened)"
echo "ok a dropped resource found failing again reopens its violation (times_opened 2, 3)"

# --- replay determinism (rules changed mid-history) and batching
replay_matches
# Applied again 5 lines per append (many state transactions): the same digest.
# (lib.sh's chunks_match splits by bytes, which leaves empty chunks with the
# large inventory lines.)
split -l 5 "$ALL" "$WORK/part."
for f in "$WORK"/part.*; do DATA_DIR=$WORK/chunked append "$f"; done
[ "$(DATA_DIR=$WORK/chunked cairn digest)" = "$(cairn digest)" ] || fail "chunked state differs"
echo "ok $(ls "$WORK"/part.* | wc -l) chunks give the same digest"
