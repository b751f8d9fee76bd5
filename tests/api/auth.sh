#!/usr/bin/env bash
# auth.sh — bearer tokens and roles: a missing or non-Bearer header, an
# expired token (minted with --ttl 2, and crafted), forged tokens (another
# secret, changed claims, a changed signature), `alg: none` and other
# algorithms, bad headers and claims, and the role of every route (403),
# with the exact error documents; the verified-token cache (eviction, each
# token answered for its own tenant).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# jwt HEADER CLAIMS SECRET_FILE|none: a compact JWS crafted by hand
# (openssl HMAC-SHA256), or with an empty signature for "none".
jwt() {
    local h c sig=
    h=$(printf '%s' "$1" | b64url)
    c=$(printf '%s' "$2" | b64url)
    if [ "$3" != none ]; then
        sig=$(printf '%s' "$h.$c" | openssl dgst -sha256 -mac HMAC -macopt "key:$(cat "$3")" -binary | b64url)
    fi
    printf '%s.%s.%s' "$h" "$c" "$sig"
}

NOW=$(date +%s)
HS='{"alg":"HS256","typ":"JWT"}'
claims() { # claims TENANT ROLES-JSON EXP [EXTRA]
    printf '{"tenant":"%s","roles":%s,"iat":%s,"exp":%s%s}' "$1" "$2" "$NOW" "$3" "${4:-}"
}
GOOD_CLAIMS=$(claims acme '["read"]' $((NOW + 600)))

# Precedence (README, Configuration): the --jwt-secret-file flag lib.sh
# passes wins over the config file's, which names a file that is not there
# and so must never be opened.
echo '{"jwt_secret_file":"/nonexistent/cairn-jwt.secret"}' >"$CONFIG"
start_server
pass "the server starts on the flag's secret although the config file names a missing one"
ING=$(token acme ingest)
READ=$(token acme read)
AUD=$(token acme audit)
ADMIN=$(token acme admin)
post_json "$ING" '{"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}'
expect "setup: one event" 202 '{"seq":1}'

unauth() { err unauthorized 'a bearer token is required' Authorization; }
invalid() { err invalid_token "$1"; }

# ---------------------------------------------------------------- no token, wrong scheme

req GET /v1/devices
expect "no Authorization: 401" 401 "$(unauth)"
eq "401 names the scheme" "$(header WWW-Authenticate)" "Bearer"
req GET /v1/devices -H "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l"
expect "Basic credentials: 401" 401 "$(unauth)"
req GET /v1/devices -H "Authorization: $READ"
expect "a token without the Bearer scheme: 401" 401 "$(unauth)"
req GET /v1/devices -H "Authorization: bearer $READ"
expect_status "the scheme is case-insensitive" 200
req POST /v1/events -H 'Content-Type: application/json' --data-binary '{"type":"telemetry","payload":{"device_id":"d1","event_type":"status"}}'
expect "ingest without a token: 401" 401 "$(unauth)"
get "$(token acme read 3600 | sed 's/^/x/')" /v1/devices
expect "a mangled header part: 401" 401 "$(invalid 'the token header is not base64url JSON')"

# ---------------------------------------------------------------- crafted tokens

# The longest token, API_JWT_MAX (8 KiB) bytes, is accepted; one byte more
# passes the Authorization header's limit ("Bearer " and 8 KiB): 431.
# (Header and signature take 36 + 43 bytes and two dots: claims of 6 083
# bytes encode to the other 8 111.)
padded() { # padded BYTES: valid read claims of exactly BYTES bytes
    local base n
    base=$(claims acme '["read"]' $((NOW + 600)) ',"pad":""')
    n=$(($1 - ${#base}))
    claims acme '["read"]' $((NOW + 600)) ",\"pad\":\"$(head -c "$n" /dev/zero | tr '\0' a)\""
}
big=$(jwt "$HS" "$(padded 6083)" "$JWT_FILE")
eq "a token of 8 192 bytes" "${#big}" 8192
get "$big" /v1/devices
expect_status "... is accepted" 200
big=$(jwt "$HS" "$(padded 6084)" "$JWT_FILE")
eq "a token of 8 193 bytes" "${#big}" 8193
get "$big" /v1/devices
expect "... passes the Authorization header's limit: 431" 431 \
    "$(err too_large 'the Authorization header is over its 8199-byte limit' Authorization)"

get "$(jwt "$HS" "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect_status "a correctly crafted token is accepted (the crafting works)" 200
get "$(jwt '{"alg":"HS256"}' "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect_status "typ is optional" 200

get "$(jwt "$HS" "$(claims acme '["read"]' $((NOW - 10)))" "$JWT_FILE")" /v1/devices
expect "a crafted expired token" 401 "$(err expired_token 'the token expired')"
get "$(jwt "$HS" "$(claims acme '["read"]' "$NOW")" "$JWT_FILE")" /v1/devices
expect "exp == now is expired" 401 "$(err expired_token 'the token expired')"
get "$(jwt "$HS" '{"tenant":"acme","roles":["read"]}' "$JWT_FILE")" /v1/devices
expect "no exp" 401 "$(invalid 'the token has no exp claim')"
get "$(jwt "$HS" "$(claims acme '["read"]' $((NOW + 600)) ",\"nbf\":$((NOW + 300))")" "$JWT_FILE")" /v1/devices
expect "nbf in the future" 401 "$(invalid 'the token is not valid yet (nbf)')"
get "$(jwt "$HS" "$(claims acme '["read"]' $((NOW + 600)) ",\"nbf\":$((NOW - 5))")" "$JWT_FILE")" /v1/devices
expect_status "nbf in the past" 200
get "$(jwt "$HS" "{\"roles\":[\"read\"],\"exp\":$((NOW + 600))}" "$JWT_FILE")" /v1/devices
expect "no tenant" 401 "$(invalid 'the token has no valid tenant claim')"
get "$(jwt "$HS" "{\"tenant\":\"acme\",\"exp\":$((NOW + 600))}" "$JWT_FILE")" /v1/devices
expect "no roles" 401 "$(invalid 'the token has no roles claim')"

# forged
get "$(jwt "$HS" "$GOOD_CLAIMS" "$OTHER_JWT_FILE")" /v1/devices
expect "signed with another secret" 401 "$(invalid 'the token signature does not verify')"
get "$("$CAIRN" token --tenant acme --role read --jwt-secret-file "$OTHER_JWT_FILE")" /v1/devices
expect "cairn token with another secret" 401 "$(invalid 'the token signature does not verify')"
good=$(jwt "$HS" "$GOOD_CLAIMS" "$JWT_FILE")
forged_claims=$(printf '%s' "$(claims globex '["read","admin"]' $((NOW + 600)))" | b64url)
get "${good%%.*}.$forged_claims.${good##*.}" /v1/devices
expect "claims changed (tenant, admin), signature kept" 401 "$(invalid 'the token signature does not verify')"
sig=${good##*.}
mid=${sig:10:1}
[ "$mid" = A ] && flip=B || flip=A
get "${good%.*}.${sig:0:10}$flip${sig:11}" /v1/devices
expect "one signature character changed" 401 "$(invalid 'the token signature does not verify')"
get "${good%.*}." /v1/devices
expect "HS256 with an empty signature" 401 "$(invalid 'the token signature does not verify')"
get "${good%.*}" /v1/devices
expect "two parts only" 401 "$(invalid 'the token is not a compact JWT')"
get "$good.x" /v1/devices
expect "four parts" 401 "$(invalid 'the token is not a compact JWT')"

# alg: none and friends are refused before the signature is looked at
get "$(jwt '{"alg":"none","typ":"JWT"}' "$GOOD_CLAIMS" none)" /v1/devices
expect "alg none, empty signature" 401 "$(invalid 'the token algorithm must be HS256')"
get "$(jwt '{"alg":"none"}' "$(claims acme '["admin"]' $((NOW + 600)))" none)" /v1/devices
expect "alg none claiming admin" 401 "$(invalid 'the token algorithm must be HS256')"
none_h=$(printf '%s' '{"alg":"none","typ":"JWT"}' | b64url)
get "$none_h.${good#*.}" /v1/devices
expect "alg none with a valid HS256 signature attached" 401 "$(invalid 'the token algorithm must be HS256')"
get "$(jwt '{"alg":"NONE","typ":"JWT"}' "$GOOD_CLAIMS" none)" /v1/devices
expect "alg NONE" 401 "$(invalid 'the token algorithm must be HS256')"
get "$(jwt '{"alg":"HS512","typ":"JWT"}' "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect "alg HS512" 401 "$(invalid 'the token algorithm must be HS256')"
get "$(jwt '{"alg":"RS256","typ":"JWT"}' "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect "alg RS256" 401 "$(invalid 'the token algorithm must be HS256')"
get "$(jwt '{"typ":"JWT"}' "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect "no alg" 401 "$(invalid 'the token algorithm must be HS256')"
get "$(jwt '{"alg":"HS256","typ":"JWE"}' "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect "typ other than JWT" 401 "$(invalid 'the token type must be JWT')"
get "$(jwt '{"alg":"HS256","alg":"none"}' "$GOOD_CLAIMS" "$JWT_FILE")" /v1/devices
expect "a header with a duplicate alg" 401 "$(invalid 'the token header is not base64url JSON')"

# roles the server does not know give no access
get "$(jwt "$HS" "$(claims acme '["superuser","Read"]' $((NOW + 600)))" "$JWT_FILE")" /v1/devices
expect "unknown role names" 403 "$(err forbidden "this token's roles do not allow view_list" Authorization)"
get "$(jwt "$HS" "$(claims acme '[]' $((NOW + 600)))" "$JWT_FILE")" /v1/schemas
expect "no roles at all" 403 "$(err forbidden "this token's roles do not allow schemas" Authorization)"

# expiry of a minted token, in real time (--ttl 2: exp is whole seconds, so
# a --ttl 1 token can already be expired when first used near a second's end)
SHORT=$(token acme read 2)
get "$SHORT" /v1/devices
expect_status "a token with --ttl 2, at once" 200
sleep 3.1
get "$SHORT" /v1/devices
expect "the same token three seconds later" 401 "$(err expired_token 'the token expired')"

# ---------------------------------------------------------------- the verified-token cache

# More distinct valid tokens than the cache holds (1 024), each of its own
# tenant, on one connection: every one is answered for its own tenant
# (?tenant= of its own: 200; of the next token's tenant: 403), also when
# used again after the cache evicted it.
node -e '
const crypto = require("crypto"), fs = require("fs");
const [secret, url, n] = [fs.readFileSync(process.argv[1], "utf8").trim(), process.argv[2], +process.argv[3]];
const b64 = (b) => Buffer.from(b).toString("base64url");
const exp = Math.floor(Date.now() / 1000) + 600;
const tok = (i) => { const hc = b64(JSON.stringify({alg: "HS256", typ: "JWT"})) + "." +
    b64(JSON.stringify({tenant: "t-" + i, roles: ["read"], exp}));
    return hc + "." + crypto.createHmac("sha256", secret).update(hc).digest("base64url"); };
const out = [];
const one = (i, t) => out.push(`url = "${url}/v1/devices?tenant=t-${t}&limit=1"`,
    `header = "Authorization: Bearer ${tok(i)}"`, "output = /dev/null", "write-out = \"%{http_code}\\n\"", "next");
for (let i = 0; i < n; i++) one(i, i);         /* fills and overflows the cache */
for (let i = 0; i < 20; i++) one(i, i);        /* the first ones again */
for (let i = 0; i < 20; i++) one(i, i + 1);    /* another tenant: 403 */
out.pop();
fs.writeFileSync(process.argv[4], out.join("\n") + "\n");
' "$JWT_FILE" "$URL" 1100 "$WORK/many.curl"
curl -s -m 120 -K "$WORK/many.curl" >"$WORK/many.codes" 2>/dev/null || true
eq "1 100 distinct tokens, each for its own tenant: all 200" "$(head -n 1100 "$WORK/many.codes" | sort | uniq -c | awk '{print $2 "x" $1}')" "200x1100"
eq "the first 20 again, after eviction: 200" "$(sed -n 1101,1120p "$WORK/many.codes" | sort -u)" "200"
eq "the first 20 with the next token's tenant: 403" "$(sed -n 1121,1140p "$WORK/many.codes" | sort -u)" "403"

# ---------------------------------------------------------------- roles of each route

forbid() { err forbidden "this token's roles do not allow $1" Authorization; }
# role NAME TOKEN METHOD PATH WANT: WANT is "ok" (any 2xx) or the route
# name the 403 must give.
role() {
    local name=$1 tok=$2 method=$3 path=$4 want=$5
    if [ "$method" = POST ]; then
        req POST "$path" -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' \
            --data-binary '{"type":"telemetry","payload":{"device_id":"d2","event_type":"status"}}'
    else
        req GET "$path" -H "Authorization: Bearer $tok"
    fi
    if [ "$want" = ok ]; then
        case $STATUS in
        2??) pass "$name may $method $path" ;;
        *) fail "$name may $method $path: got $STATUS $BODY" ;;
        esac
    else
        expect "$name may not $method $path" 403 "$(forbid "$want")"
    fi
}
# method path route-name roles-allowed (admin is always allowed)
while read -r method path name allowed; do
    for r in ingest read audit; do
        case $r in ingest) tok=$ING ;; read) tok=$READ ;; audit) tok=$AUD ;; esac
        if [[ ",$allowed," == *",$r,"* ]]; then
            role "$r" "$tok" "$method" "$path" ok
        else
            role "$r" "$tok" "$method" "$path" "$name"
        fi
    done
    role admin "$ADMIN" "$method" "$path" ok
done <<'TABLE'
POST /v1/events             events      ingest
GET  /v1/devices            view_list   read
GET  /v1/devices/d1         view_item   read
GET  /v1/orders             view_list   read
GET  /v1/subscriptions      view_list   read
GET  /v1/streams            streams     read
GET  /v1/streams/devices    stream      read
GET  /v1/log                log         audit
GET  /v1/log/head           log_head    audit
GET  /v1/log/verify         log_verify  audit
GET  /v1/schemas            schemas     ingest,read,audit
GET  /v1/schemas/telemetry  schema      ingest,read,audit
GET  /metrics               metrics     -
TABLE
MET=$(token acme metrics)
role metrics "$MET" GET /metrics ok
role metrics "$MET" GET /v1/devices view_list
role metrics "$MET" GET /v1/log/head log_head
req GET /metrics
expect "/metrics needs a token" 401 "$(unauth)"
for p in /healthz /readyz; do
    req GET "$p"
    expect_status "$p needs no token" 200
    req GET "$p" -H "Authorization: Bearer not-a-token"
    expect_status "$p ignores a bad token" 200
done

stop_server
finish
