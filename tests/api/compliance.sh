#!/usr/bin/env bash
# compliance.sh — the violations handler's routes over HTTP, as exact JSON:
# rule.define through POST /v1/events (a malformed condition refused with
# its column, nothing appended), GET /v1/rules and its filters, GET
# /v1/violations with every filter (status severity rule_id rule
# resource_type resource_id account region framework control), limit and
# cursor paging and their errors, GET /v1/violations/{id} (the id computed
# here from the documented scheme), GET /v1/compliance/{framework} (the
# posture per control, hand-computed) before and after a complete rescan
# that fixes one resource and drops another, the derived stream page, and
# tenant isolation (another tenant, an admin with and without ?tenant=).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

start_server
ING=$(token acme ingest)
READ=$(token acme read)
OTHER=$(token globex read,ingest)
ADMIN=$(token ops admin)
HEAD_TOKEN=$(token acme audit)

# post EVENT-JSON: appended (202) or the script stops.
post() {
    post_json "$ING" "$1"
    [ "$STATUS" = 202 ] || die "appending $(head -c 120 <<<"$1"): $STATUS $BODY"
}

# ---------------------------------------------------------------- rules

rule() { # rule ID SEVERITY TYPE CONDITION FRAMEWORKS-JSON [ENABLED]
    jq -cn --arg id "$1" --arg sev "$2" --arg type "$3" --arg c "$4" --argjson fw "$5" \
        --argjson en "${6:-true}" '{type:"rule.define",time:"2026-06-01T00:00:00Z",payload:{
        id:$id,title:("Rule " + $id),severity:$sev,resource_type:$type,condition:$c,frameworks:$fw,
        remediation:{text:("Fix " + $id),cli:"aws s3api ..."},enabled:$en}}'
}
post_json "$ING" "$(rule bad high aws.s3.bucket 'Name == "x" and nope(Name)' '{}')"
expect "a rule with an unknown function: refused with its column" 400 \
    "$(err invalid_rule "column 17: unknown function 'nope'" /payload/condition)"
eq "nothing appended" "$(head_seq)" 0

post "$(rule pab high aws.s3.bucket 'PublicAccessBlockConfiguration.BlockPublicAcls == true' \
    '{"cis-aws-3.0":["2.1.4"],"soc2":["CC6.1"]}')"
post "$(rule ver low aws.s3.bucket 'Versioning.Status == "Enabled"' '{"soc2":["A1.2"]}')"
post "$(rule sg22 critical aws.ec2.security_group \
    'not any(IpPermissions, any(IpRanges, CidrIp == "0.0.0.0/0") and FromPort <= 22 and ToPort >= 22)' \
    '{"cis-aws-3.0":["5.2"],"soc2":["CC6.1","CC6.6"]}')"
post "$(rule off medium aws.s3.bucket 'exists(LoggingEnabled)' '{"soc2":["CC7.2"]}' false)"

get "$READ" '/v1/rules?min_seq=4'
expect_jq "rules: the four, in id order, as stored" 200 '
    .seq == 4 and .next_cursor == null and (.items | map(.rule.id)) == ["off","pab","sg22","ver"] and
    .items[1] == {rule: $r, tenant: "acme", defined_at: "2026-06-01T00:00:00Z", seq: 1}' \
    --argjson r "$(rule pab high aws.s3.bucket 'PublicAccessBlockConfiguration.BlockPublicAcls == true' \
        '{"cis-aws-3.0":["2.1.4"],"soc2":["CC6.1"]}' | jq -c .payload)"
get "$READ" '/v1/rules?resource_type=aws.s3.bucket&enabled=true'
expect_jq "rules: ?resource_type and ?enabled" 200 '(.items | map(.rule.id)) == ["pab","ver"]'
get "$READ" '/v1/rules?enabled=false'
expect_jq "rules: ?enabled=false" 200 '(.items | map(.rule.id)) == ["off"]'
get "$READ" '/v1/rules?severity=critical'
expect_jq "rules: ?severity" 200 '(.items | map(.rule.id)) == ["sg22"]'

# ---------------------------------------------------------------- discovery

B_PUBLIC='{"Name":"b1"}'
B_OK='{"Name":"b2","PublicAccessBlockConfiguration":{"BlockPublicAcls":true},"Versioning":{"Status":"Enabled"}}'
B3='{"Name":"b3","Versioning":{"Status":"Enabled"}}'
SG_OPEN='{"GroupId":"sg1","IpPermissions":[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}'
SG_CLOSED='{"GroupId":"sg2","IpPermissions":[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"10.0.0.0/8"}]}]}'
res() { echo "{\"resource_id\":\"$1\",\"resource_type\":\"$2\",\"attributes\":$3}"; }
scan() { # scan ACCOUNT REGION SCAN COMPLETE TIME RESOURCES…
    local a=$1 r=$2 s=$3 c=$4 t=$5
    shift 5
    local list
    list=$(IFS=,; echo "$*")
    echo "{\"type\":\"discovery\",\"time\":\"$t\",\"payload\":{\"account_id\":\"$a\",\"region\":\"$r\",\"scan_id\":\"$s\",\"complete\":$c,\"resources\":[$list]}}"
}
T1=2026-06-01T01:00:00Z
post "$(scan 111 us-east-1 s1 true $T1 "$(res b1 aws.s3.bucket "$B_PUBLIC")" \
    "$(res b2 aws.s3.bucket "$B_OK")" "$(res sg1 aws.ec2.security_group "$SG_OPEN")" \
    "$(res sg2 aws.ec2.security_group "$SG_CLOSED")")"
post "$(scan 222 eu-west-1 s1 true $T1 "$(res b3 aws.s3.bucket "$B3")")"
# globex: the same resources, no rules: nothing to report
post_json "$OTHER" "$(scan 111 us-east-1 s1 true $T1 "$(res b1 aws.s3.bucket "$B_PUBLIC")")"
expect_status "globex's discovery" 202

# vid RULE ACCOUNT REGION RESOURCE: the documented violation id,
# hex(SHA-256(rule \0 rk))[0..32], rk = SHA-256(account \0 region \0 resource)[0..16].
vid() {
    local rk
    rk=$(printf '%s\0%s\0%s' "$2" "$3" "$4" | sha256sum | cut -c1-32)
    { printf '%s\0' "$1"; printf "$(sed 's/../\\x&/g' <<<"$rk")"; } | sha256sum | cut -c1-32
}
# doc RULE SEVERITY TYPE ACCOUNT REGION RESOURCE CONTROLS-JSON FRAMEWORKS-JSON FAILED-JSON SEQ:
# an open violation as the view holds it.
doc() {
    jq -cn --arg v "$(vid "$1" "$4" "$5" "$6")" --arg r "$1" --arg sev "$2" --arg type "$3" \
        --arg a "$4" --arg reg "$5" --arg id "$6" --argjson ctl "$7" --argjson fw "$8" \
        --argjson failed "$9" --argjson seq "${10}" '{violation_id:$v,tenant:"acme",status:"open",
        rule_id:$r,title:("Rule " + $r),severity:$sev,resource_id:$id,resource_type:$type,account:$a,
        region:$reg,frameworks:$fw,controls:$ctl,remediation:{text:("Fix " + $r),cli:"aws s3api ..."},
        failed:$failed,opened_at:"2026-06-01T01:00:00Z",opened_seq:$seq,resolved_at:null,
        resolved_seq:null,resolution:null,times_opened:1}'
}
PAB_FW='{"cis-aws-3.0":["2.1.4"],"soc2":["CC6.1"]}'
PAB_CTL='["cis-aws-3.0:2.1.4","soc2:CC6.1"]'
V_B1_PAB=$(doc pab high aws.s3.bucket 111 us-east-1 b1 "$PAB_CTL" "$PAB_FW" \
    '{"PublicAccessBlockConfiguration.BlockPublicAcls":null}' 5)
V_B1_VER=$(doc ver low aws.s3.bucket 111 us-east-1 b1 '["soc2:A1.2"]' '{"soc2":["A1.2"]}' \
    '{"Versioning.Status":null}' 5)
V_SG1=$(doc sg22 critical aws.ec2.security_group 111 us-east-1 sg1 \
    '["cis-aws-3.0:5.2","soc2:CC6.1","soc2:CC6.6"]' '{"cis-aws-3.0":["5.2"],"soc2":["CC6.1","CC6.6"]}' \
    "{\"IpPermissions\":$(jq -c .IpPermissions <<<"$SG_OPEN")}" 5)
V_B3_PAB=$(doc pab high aws.s3.bucket 222 eu-west-1 b3 "$PAB_CTL" "$PAB_FW" \
    '{"PublicAccessBlockConfiguration.BlockPublicAcls":null}' 6)
ALLV=$(jq -cs 'sort_by(.violation_id)' <<<"$V_B1_PAB $V_B1_VER $V_SG1 $V_B3_PAB")

# ids LIST-BODY: the resource/rule pairs of a page, in page order.
pairs() { jq -c '[.items[] | "\(.resource_id)/\(.rule_id)"]' <<<"$BODY"; }

get "$READ" '/v1/violations?min_seq=7'
expect_jq "violations: the four open ones, exactly, in id order" 200 \
    '.seq == 7 and .next_cursor == null and .items == $all' --argjson all "$ALLV"
get "$READ" "/v1/violations/$(vid sg22 111 us-east-1 sg1)"
expect_jq "one violation by its id" 200 '.item == $v' --argjson v "$V_SG1"
get "$READ" /v1/violations/0123456789abcdef0123456789abcdef
expect "an unknown violation id" 404 "$(err not_found 'no violations entity 0123456789abcdef0123456789abcdef')"

# filters: each against the hand-derived subset (sorted like the view)
filter() { # filter QUERY WANT-PAIRS…
    local q=$1 want
    shift
    want=$(jq -cn --argjson all "$ALLV" '[$all[] | select("\(.resource_id)/\(.rule_id)" as $p |
        $ARGS.positional | index($p))] | map("\(.resource_id)/\(.rule_id)")' --args "$@")
    get "$READ" "/v1/violations?$q"
    eq "violations?$q" "$STATUS $(pairs)" "200 $want"
}
filter 'severity=high' b1/pab b3/pab
filter 'severity=low' b1/ver
filter 'rule_id=pab' b1/pab b3/pab
filter 'rule=sg22' sg1/sg22
filter 'resource_type=aws.ec2.security_group' sg1/sg22
filter 'resource_id=b1' b1/pab b1/ver
filter 'account=222' b3/pab
filter 'region=us-east-1' b1/pab b1/ver sg1/sg22
filter 'account=111&region=eu-west-1'
filter 'status=open' b1/pab b1/ver sg1/sg22 b3/pab
filter 'status=resolved'
filter 'framework=cis-aws-3.0' b1/pab sg1/sg22 b3/pab
filter 'framework=soc2' b1/pab b1/ver sg1/sg22 b3/pab
filter 'framework=pci-dss-4.0'
filter 'control=CC6.6' sg1/sg22
filter 'control=soc2:CC6.1' b1/pab sg1/sg22 b3/pab
filter 'control=2.1.4&framework=cis-aws-3.0' b1/pab b3/pab
filter 'control=2.1.4&framework=soc2'
filter 'control=A1.2&severity=low&resource_id=b1' b1/ver
filter 'nosuch=1' b1/pab b1/ver sg1/sg22 b3/pab

# paging
got=() cursor='' pages=0
while :; do
    get "$READ" "/v1/violations?limit=1${cursor:+&cursor=$cursor}"
    [ "$STATUS" = 200 ] || break
    got+=("$(jq -r '.items[] | "\(.resource_id)/\(.rule_id)"' <<<"$BODY")")
    cursor=$(jq -r '.next_cursor // empty' <<<"$BODY")
    pages=$((pages + 1))
    [ -n "$cursor" ] && [ "$pages" -lt 10 ] || break
done
eq "limit=1 paging visits every violation once, in order" "${got[*]}" \
    "$(jq -r 'map("\(.resource_id)/\(.rule_id)") | join(" ")' <<<"$ALLV")"
get "$READ" '/v1/violations?limit=2&severity=high'
expect_jq "a filtered page of 2" 200 '(.items | length) == 2 and (.items | map(.severity)) == ["high","high"]'
get "$READ" '/v1/violations?limit=0'
expect_jq "limit=0: the default page" 200 '(.items | length) == 4'
get "$READ" '/v1/violations?limit=1001'
expect "limit over 1000" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"
get "$READ" '/v1/violations?limit=x'
expect "limit not a number" 400 "$(err invalid_parameter 'limit must be an integer in 0..1000' limit)"
get "$READ" '/v1/violations?cursor=abc'
expect "a cursor that is not hex" 400 "$(err invalid_parameter 'the cursor is not one this API gave' cursor)"
# A filter that does not decode is refused, not taken as absent (which would
# widen the page to every violation).
get "$READ" "/v1/violations?resource_id=$(printf 'r%.0s' $(seq 600))"
expect "a resource_id filter over 511 bytes (the buffer)" 400 \
    "$(err invalid_parameter 'resource_id is too long for this route, or has a bad %-escape or a NUL' resource_id)"
get "$READ" '/v1/violations?severity=high&control=2.1%zz'
expect "a control filter with a bad escape" 400 \
    "$(err invalid_parameter 'control is too long for this route, or has a bad %-escape or a NUL' control)"

# ---------------------------------------------------------------- posture

# ctl ID PASS FAIL RULES-JSON: one control of a posture answer.
ctl() {
    jq -cn --arg id "$1" --argjson p "$2" --argjson f "$3" --argjson r "$4" '{control:$id,
        status:(if $f > 0 then "fail" elif $p > 0 then "pass" else "not_evaluated" end),
        pass:$p,fail:$f,resources_evaluated:($p + $f),rules:$r}'
}
posture() { # posture SEQ FRAMEWORK CONTROL-JSON…
    local seq=$1 fw=$2
    shift 2
    jq -cn --argjson seq "$seq" --arg fw "$fw" '$ARGS.positional | map(fromjson) | {seq:$seq,
        tenant:"acme",framework:$fw,summary:{controls:length,
        passing:(map(select(.status == "pass")) | length),failing:(map(select(.status == "fail")) | length),
        not_evaluated:(map(select(.status == "not_evaluated")) | length)},controls:.}' --args "$@"
}
# by hand: 2.1.4 (pab) b1 fail, b2 pass, b3 fail; 5.2 (sg22) sg1 fail, sg2 pass;
# soc2 CC6.1 (pab, sg22) b1 b3 sg1 fail, b2 sg2 pass; CC6.6 (sg22); A1.2 (ver)
# b1 fail, b2 b3 pass; CC7.2 belongs to the disabled rule only: not listed.
get "$READ" /v1/compliance/cis-aws-3.0
expect "posture cis-aws-3.0" 200 "$(posture 7 cis-aws-3.0 "$(ctl 2.1.4 1 2 '["pab"]')" \
    "$(ctl 5.2 1 1 '["sg22"]')")"
get "$READ" /v1/compliance/soc2
expect "posture soc2 (controls in version order)" 200 "$(posture 7 soc2 "$(ctl A1.2 2 1 '["ver"]')" \
    "$(ctl CC6.1 2 3 '["pab","sg22"]')" "$(ctl CC6.6 1 1 '["sg22"]')")"
get "$READ" /v1/compliance/pci-dss-4.0
expect "posture of a framework no rule maps" 200 "$(posture 7 pci-dss-4.0)"
get "$READ" "/v1/compliance/$(printf 'x%.0s' $(seq 65))"
expect "a framework name over 64 bytes" 400 \
    "$(err invalid_parameter 'framework must be 1 to 64 bytes' framework)"
get "$ADMIN" /v1/compliance/soc2
expect "an admin without ?tenant=: its own tenant's (empty) posture" 200 \
    '{"seq":7,"tenant":"ops","framework":"soc2","summary":{"controls":0,"passing":0,"failing":0,"not_evaluated":0},"controls":[]}'
get "$ADMIN" '/v1/compliance/soc2?tenant=acme'
expect "an admin with ?tenant=acme" 200 "$(posture 7 soc2 "$(ctl A1.2 2 1 '["ver"]')" \
    "$(ctl CC6.1 2 3 '["pab","sg22"]')" "$(ctl CC6.6 1 1 '["sg22"]')")"

# ---------------------------------------------------------------- tenants

get "$OTHER" '/v1/violations?min_seq=7'
expect "globex has no violations" 200 '{"seq":7,"items":[],"next_cursor":null}'
get "$OTHER" "/v1/violations/$(vid pab 111 us-east-1 b1)"
expect_status "acme's violation id is not globex's" 404
get "$OTHER" /v1/rules
expect "globex has no rules" 200 '{"seq":7,"items":[],"next_cursor":null}'
get "$OTHER" /v1/compliance/soc2
expect "globex's posture" 200 \
    '{"seq":7,"tenant":"globex","framework":"soc2","summary":{"controls":0,"passing":0,"failing":0,"not_evaluated":0},"controls":[]}'
get "$READ" '/v1/violations?tenant=globex'
expect_status "acme reading globex's violations" 403
get "$ADMIN" '/v1/violations?tenant=acme'
expect_jq "an admin with ?tenant=acme sees acme's violations" 200 '.items == $all' --argjson all "$ALLV"

# ---------------------------------------------------------------- a rescan

# 111/us-east-1 again, complete: b1 now blocks public ACLs (still unversioned),
# sg1 is gone.
T2=2026-06-02T00:00:00Z
post "$(scan 111 us-east-1 s2 true $T2 \
    "$(res b1 aws.s3.bucket '{"Name":"b1","PublicAccessBlockConfiguration":{"BlockPublicAcls":true}}')" \
    "$(res b2 aws.s3.bucket "$B_OK")" "$(res sg2 aws.ec2.security_group "$SG_CLOSED")")"
resolved() { # resolved DOC REASON: the document after resolution at seq 8
    jq -c --arg why "$2" '.status = "resolved" | .resolved_at = "2026-06-02T00:00:00Z" |
        .resolved_seq = 8 | .resolution = $why' <<<"$1"
}
get "$READ" '/v1/violations?status=resolved&min_seq=8'
expect_jq "the fixed and the dropped resource's violations are resolved" 200 '.seq == 8 and .items == $r' \
    --argjson r "$(jq -cs 'sort_by(.violation_id)' <<<"$(resolved "$V_B1_PAB" compliant) $(resolved "$V_SG1" resource_gone)")"
filter 'status=open' b1/ver b3/pab
get "$READ" /v1/compliance/cis-aws-3.0
expect "posture cis-aws-3.0 after the rescan" 200 "$(posture 8 cis-aws-3.0 \
    "$(ctl 2.1.4 2 1 '["pab"]')" "$(ctl 5.2 1 0 '["sg22"]')")"
get "$READ" /v1/compliance/soc2
expect "posture soc2 after the rescan" 200 "$(posture 8 soc2 "$(ctl A1.2 2 1 '["ver"]')" \
    "$(ctl CC6.1 3 1 '["pab","sg22"]')" "$(ctl CC6.6 1 0 '["sg22"]')")"

# the derived stream: four violations, then the two resolutions of seq 8
get "$READ" '/v1/streams/violations?limit=1000'
expect_jq "stream violations" 200 '[.events[] | "\(.dseq) \(.cause) \(.type) \(.key) \(.payload.rule_id) \(.payload.reason // "-")"] ==
    ["1 5 compliance.violation b1 pab -", "2 5 compliance.violation b1 ver -",
     "3 5 compliance.violation sg1 sg22 -", "4 6 compliance.violation b3 pab -",
     "5 8 compliance.resolved b1 pab compliant", "6 8 compliance.resolved sg1 sg22 resource_gone"]'

# ---------------------------------------------------------------- a control listed twice

# globex: one rule naming its control twice; a resource counts once in it.
post_json "$OTHER" "$(rule twice high aws.s3.bucket 'Name == "ok"' '{"fw":["D1","D1"]}')"
expect_status "globex's rule" 202
post_json "$OTHER" "$(scan 111 us-east-1 s3 true $T2 "$(res b1 aws.s3.bucket "$B_PUBLIC")" \
    "$(res ok aws.s3.bucket '{"Name":"ok"}')")"
expect_status "globex's rescan" 202
get "$OTHER" '/v1/compliance/fw?min_seq=10'
expect "a control listed twice counts each resource once" 200 \
    '{"seq":10,"tenant":"globex","framework":"fw","summary":{"controls":1,"passing":0,"failing":1,"not_evaluated":0},"controls":[{"control":"D1","status":"fail","pass":1,"fail":1,"resources_evaluated":2,"rules":["twice"]}]}'
stop_server

# ---------------------------------------------------------------- --insecure-no-auth: every tenant

start_server --insecure-no-auth
req GET /v1/compliance/soc2
expect "no auth: a posture needs ?tenant=" 400 \
    "$(err missing_parameter 'a posture is per tenant: give ?tenant=' tenant)"
req GET '/v1/compliance/cis-aws-3.0?tenant=acme'
expect "no auth: a posture with ?tenant=acme" 200 "$(posture 10 cis-aws-3.0 \
    "$(ctl 2.1.4 2 1 '["pab"]')" "$(ctl 5.2 1 0 '["sg22"]')")"
req GET '/v1/violations?status=open'
expect_jq "no auth: the open violations of every tenant" 200 '[.items[] | "\(.tenant)/\(.resource_id)/\(.rule_id)"] | sort == ["acme/b1/ver","acme/b3/pab","globex/b1/twice"]'
stop_server
finish
