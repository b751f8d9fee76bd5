#!/usr/bin/env bash
# The rule pack and the inventory's expected findings against an
# independent reading of the controls (cis_reference.py, written from the
# CIS AWS Foundations v3.0 audit procedures, not from the conditions):
#  - every rules/tests document reads as labelled (compliant or not);
#  - fixtures/inventory.expected is exactly that reading's findings on
#    fixtures/inventory.ndjson (lifecycle.sh checks the handler finds the
#    same, so the handler and the reading agree through that file);
#  - differentially, on 4 200 random documents near the labelled ones
#    (missing, null and wrong-kind attributes included, seeded): the
#    handler's open violations are exactly the reading's findings.
# CAIRN_UPDATE_EXPECTED=1 rewrites inventory.expected from the reading
# (never from the handler: that would make the check circular).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RULES=${CAIRN_SOURCE_DIR:-$HERE/../..}/handlers/compliance/rules
command -v python3 >/dev/null || { echo "FAIL: python3 is required" >&2; exit 1; }
python3 "$HERE/cis_reference.py" labels "$RULES" || { echo "FAIL: rules/tests labels" >&2; exit 1; }
echo "ok every rules/tests document reads as labelled"
if [ "${CAIRN_UPDATE_EXPECTED:-}" = 1 ]; then
    python3 "$HERE/cis_reference.py" findings "$RULES" "$HERE/fixtures/inventory.ndjson" \
        >"$HERE/fixtures/inventory.expected"
fi
diff -u "$HERE/fixtures/inventory.expected" \
    <(python3 "$HERE/cis_reference.py" findings "$RULES" "$HERE/fixtures/inventory.ndjson") ||
    { echo "FAIL: inventory.expected differs from the reference reading" >&2; exit 1; }
echo "ok inventory.expected: $(wc -l <"$HERE/fixtures/inventory.expected") findings, as the reference reads them"

: "${CAIRN:?set CAIRN to the cairn binary (ctest does)}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cairn() { "$CAIRN" "$1" --data "$WORK/data" "${@:2}"; }
SEED=${CAIRN_REFERENCE_SEED:-1}
python3 "$HERE/cis_reference.py" fuzz "$RULES" 300 "$SEED" >"$WORK/random.ndjson"
cairn rules load "$RULES" --tenant acme >/dev/null
out=$(cairn append "$WORK/random.ndjson" --engine)
[ "$(grep -c '"seq":' <<<"$out")" = "$(wc -l <"$WORK/random.ndjson")" ] || { echo "FAIL: append: $out" >&2; exit 1; }
cairn show violations --tenant acme |
    jq -r 'select(.status == "open") | "\(.account) \(.region) \(.resource_id) \(.rule_id)"' |
    LC_ALL=C sort >"$WORK/handler.txt"
python3 "$HERE/cis_reference.py" findings "$RULES" "$WORK/random.ndjson" >"$WORK/reference.txt"
diff -u "$WORK/reference.txt" "$WORK/handler.txt" | head -40 ||
    true
cmp -s "$WORK/reference.txt" "$WORK/handler.txt" ||
    { echo "FAIL: the handler and the reference disagree on random documents (seed $SEED)" >&2; exit 1; }
echo "ok $(wc -l <"$WORK/handler.txt") findings on $(jq -s 'map(.payload.resources | length) | add' "$WORK/random.ndjson") random documents (seed $SEED): the handler and the reference agree"
