#!/usr/bin/env bash
# The rule pack and the inventory's expected findings against an
# independent reading of the controls (cis_reference.py, written from the
# CIS AWS Foundations v3.0 audit procedures, not from the conditions):
#  - every rules/tests document reads as labelled (compliant or not);
#  - fixtures/inventory.expected is exactly that reading's findings on
#    fixtures/inventory.ndjson (lifecycle.sh checks the handler finds the
#    same, so the handler and the reading agree through that file).
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
