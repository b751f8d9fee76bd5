#!/usr/bin/env bash
# Metric alarms against hand-computed state sequences (the rules are in the
# ALARMS comment of handlers/alerts/alerts.c).
#
# Periods of 60 s from T0; the tick at T0 + 60(i+1) closes period i.
# Samples of cpu{host="h1"} per period (B breaches "> 80", G does not,
# - none):
#
#   period   0       1   2   3   4   5   6   7   8   9
#   samples  90,10   10  -   95  95  -   -   -   10  10
#   max      B       G   -   B   B   -   -   -   G   G
#   avg      50:G    G   -   B   B   -   -   -   G   G
#
# plus cpu{host="h2"} 999 in period 1 (not matched) and, after period 2
# closed, cpu{host="h1"} 999 in period 2 (late: dropped, counted).
#
# Windows of N = 3 (oldest first; before period 0: missing), and
# (breaching b, missing m):
#   0 [- - B] b1 m2   1 [- B G] b1 m1   2 [B G -] b1 m1   3 [G - B] b1 m1
#   4 [- B B] b2 m1   5 [B B -] b2 m1   6 [B - -] b1 m2   7 [- - -] b0 m3
#   8 [- - G] b0 m2   9 [- G G] b0 m1
#
# M = 2 unless said:
#   breaching     ALARM iff b+m >= 2:  A A A A A A A A A O
#   notBreaching  ALARM iff b >= 2:    O O O O A A O O O O
#   missing       m = 3: INSUFFICIENT; else b >= 2:  O O O O A A O I O O
#   ignore        m = 3: unchanged;    else b >= 2:  O O O O A A O O O O
#   ignore, M=1   m = 3: unchanged;    else b >= 1:  A A A A A A A A O O
#   avg, N=M=1, notBreaching:                        O O O A A O O O O O
set -euo pipefail
. "$(dirname "$0")/lib.sh"

alarm() { # ID MISSING M N STAT
    printf '{"type":"alarm.define","tenant":"t","time":"%s","payload":{"alarm_id":"%s","metric":"cpu","matchers":{"host":"h1"},"statistic":"%s","period_s":60,"comparison":">","threshold":80,"evaluation_periods":%s,"datapoints_to_alarm":%s,"missing_data":"%s"}}\n' \
        "$(t 0)" "$1" "$5" "$4" "$3" "$2"
}
sample() { # OFFSET HOST VALUE
    printf '{"type":"metric","tenant":"t","time":"%s","payload":{"name":"cpu","labels":{"host":"%s","dc":"x"},"value":%s}}\n' \
        "$(t "$1")" "$2" "$3"
}
{
    alarm breaching breaching 2 3 max
    alarm notbreaching notBreaching 2 3 max
    alarm missing missing 2 3 max
    alarm ignore ignore 2 3 max
    alarm ignore1 ignore 1 3 max
    alarm avg notBreaching 1 1 avg
    sample 5 h1 90
    sample 30 h1 10
    tick 60
    sample 70 h1 10
    sample 80 h2 999
    tick 120
    tick 180
    sample 130 h1 999 # period 2 is closed: late
    sample 190 h1 95
    tick 240
    sample 250 h1 95
    tick 300
    tick 360
    tick 420
    # one tick closes periods 7 and 8 (a gap in the clock)
    sample 500 h1 10
    tick 540
    sample 550 h1 10
    tick 600
} | append

replay_matches
chunks_match

# The alarm documents (GET /v1/alarms); history: the state after each period.
serve_start
curl -sf "$URL/v1/alarms?tenant=t" >"$WORK/alarms.json"
seqs() { jq -r --arg id "$1" '.items[] | select(.alarm_id == $id) |
    [.history[].state | {"ALARM":"A","OK":"O","INSUFFICIENT_DATA":"I"}[.]] | join(" ")' "$WORK/alarms.json"; }
expect "breaching (M=2 of 3)" "A A A A A A A A A O" "$(seqs breaching)"
expect "notBreaching (M=2 of 3)" "O O O O A A O O O O" "$(seqs notbreaching)"
expect "missing (M=2 of 3)" "O O O O A A O I O O" "$(seqs missing)"
expect "ignore (M=2 of 3)" "O O O O A A O O O O" "$(seqs ignore)"
expect "ignore (M=1 of 3): an all-missing window keeps ALARM" "A A A A A A A A O O" "$(seqs ignore1)"
expect "avg (1 of 1, notBreaching)" "O O O A A O O O O O" "$(seqs avg)"
expect "avg values per period" '[50,10,null,95,95,null,null,null,10,10]' \
    "$(jq -c '.items[] | select(.alarm_id == "avg") | [.history[].value]' "$WORK/alarms.json")"
expect "late sample counted, final state, next period" '[1,"OK","2026-03-01T10:10:00Z"]' \
    "$(jq -c '.items[] | select(.alarm_id == "missing") | [.late_samples, .state, .next_period]' "$WORK/alarms.json")"

# Alerts: entering ALARM triggers, leaving resolves (source alarm, key the alarm id).
id() { alert_id alarm t "$1" "$1"; }
expect "alarm alerts, in order" \
    "alert.triggered $(id breaching) firing
alert.triggered $(id ignore1) firing
alert.triggered $(id avg) firing
alert.triggered $(id ignore) firing
alert.triggered $(id missing) firing
alert.triggered $(id notbreaching) firing
alert.resolved $(id avg) resolved
alert.resolved $(id ignore) resolved
alert.resolved $(id missing) resolved
alert.resolved $(id notbreaching) resolved
alert.resolved $(id ignore1) resolved
alert.resolved $(id breaching) resolved" "$(stream_since 0)"
expect "the alarm alert document" '["alarm","alarm.state","high","breaching: max(cpu) > 80.0","alarm.ok"]' \
    "$(cairn show alerts "$(id breaching)" --tenant t | jq -c '[.source, .type, .severity, .title, .resolution]')"
