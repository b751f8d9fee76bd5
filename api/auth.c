/*
 * auth.c — bearer tokens (JWT, HS256) and Stripe webhook signatures.
 *
 * Both are HMAC-SHA256 (OpenSSL) compared in constant time
 * (CRYPTO_memcmp). The JWT algorithm is pinned to HS256: a token whose
 * header says anything else — "none", "HS512", "RS256" — is refused before
 * its signature is even looked at, which closes the classic algorithm
 * confusion attacks.
 *
 * A verifier (struct api_jwt, loop thread only) keeps one keyed HMAC
 * context, re-initialised per token instead of fetching the digest and MAC
 * on every call, and a bounded cache of tokens it verified: a hit skips
 * the MAC and the JSON decoding, which were most of a GET's cost. The
 * cache is keyed by SipHash of the token bytes under a random per-process
 * key (no one can aim collisions at a set to evict a victim's entry), a
 * candidate is compared in full with CRYPTO_memcmp, and exp and nbf are
 * checked again on every hit, so a cached token expires on time. Only
 * verified tokens are cached: forged, expired or malformed ones take the
 * full path every time and are refused with the same errors.
 */
#include "api.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ====================================================================== base64url */

static int b64url_decode(const char *s, size_t n, uint8_t *out, size_t cap, size_t *outn)
{
    char tmp[API_JWT_MAX + 4];
    if (n > API_JWT_MAX || n % 4 == 1)
        return CAIRN_EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return CAIRN_EINVAL; /* no padding, no standard alphabet in a JWT */
        tmp[i] = c;
    }
    size_t m = n;
    while (m % 4)
        tmp[m++] = '=';
    if (m / 4 * 3 > cap)
        return CAIRN_EINVAL;
    int r = EVP_DecodeBlock(out, (const unsigned char *)tmp, (int)m);
    if (r < 0)
        return CAIRN_EINVAL;
    *outn = (size_t)r - (m - n); /* DecodeBlock counts padding as zero bytes */
    return 0;
}

static int b64url_encode(const uint8_t *p, size_t n, struct cairn_buf *out)
{
    int rc = cairn_buf_reserve(out, (n + 2) / 3 * 4 + 1);
    if (rc)
        return rc;
    char *o = (char *)out->data + out->len;
    int m = EVP_EncodeBlock((unsigned char *)o, p, (int)n);
    while (m > 0 && o[m - 1] == '=')
        m--;
    for (int i = 0; i < m; i++)
        o[i] = o[i] == '+' ? '-' : o[i] == '/' ? '_' : o[i];
    out->len += (size_t)m;
    return 0;
}

/* ====================================================================== JWT */

static unsigned role_bit(const char *s, size_t n)
{
    static const struct {
        const char *name;
        unsigned bit;
    } roles[] = {{"ingest", API_ROLE_INGEST},
                 {"read", API_ROLE_READ},
                 {"audit", API_ROLE_AUDIT},
                 {"admin", API_ROLE_ADMIN},
                 {"metrics", API_ROLE_METRICS}};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
        if (strlen(roles[i].name) == n && !memcmp(roles[i].name, s, n))
            return roles[i].bit;
    return 0;
}

static json_t *decode_part(const char *s, size_t n)
{
    uint8_t raw[API_JWT_MAX];
    size_t rn;
    if (b64url_decode(s, n, raw, sizeof raw, &rn))
        return NULL;
    return json_loadb((const char *)raw, rn, JSON_REJECT_DUPLICATES, NULL);
}

static int check_header(const char *s, size_t n, struct cairn_error *e)
{
    json_t *h = decode_part(s, n);
    const json_t *alg = json_object_get(h, "alg"), *typ = json_object_get(h, "typ");
    int rc = 0;
    if (!json_is_object(h))
        rc = cairn_error_set(e, "invalid_token", "", "the token header is not base64url JSON");
    else if (!json_is_string(alg) || strcmp(json_string_value(alg), "HS256"))
        rc = cairn_error_set(e, "invalid_token", "", "the token algorithm must be HS256");
    else if (typ && (!json_is_string(typ) || strcmp(json_string_value(typ), "JWT")))
        rc = cairn_error_set(e, "invalid_token", "", "the token type must be JWT");
    json_decref(h);
    return rc;
}

static int read_claims(json_t *c, int64_t now, struct api_token *tok, int64_t *nbf_out,
                       struct cairn_error *e)
{
    const json_t *exp = json_object_get(c, "exp"), *nbf = json_object_get(c, "nbf");
    const json_t *tenant = json_object_get(c, "tenant"), *roles = json_object_get(c, "roles");
    if (!json_is_integer(exp))
        return cairn_error_set(e, "invalid_token", "", "the token has no exp claim");
    if (json_integer_value(exp) <= now)
        return cairn_error_set(e, "expired_token", "", "the token expired");
    if (nbf && (!json_is_integer(nbf) || json_integer_value(nbf) > now))
        return cairn_error_set(e, "invalid_token", "", "the token is not valid yet (nbf)");
    if (!json_is_string(tenant) || json_string_length(tenant) == 0 ||
        json_string_length(tenant) > CAIRN_TENANT_MAX)
        return cairn_error_set(e, "invalid_token", "", "the token has no valid tenant claim");
    if (!json_is_array(roles))
        return cairn_error_set(e, "invalid_token", "", "the token has no roles claim");
    memcpy(tok->tenant, json_string_value(tenant), json_string_length(tenant) + 1);
    tok->roles = 0;
    size_t i;
    json_t *r;
    json_array_foreach(roles, i, r) if (json_is_string(r)) tok->roles |=
        role_bit(json_string_value(r), json_string_length(r));
    tok->exp = json_integer_value(exp);
    *nbf_out = nbf ? json_integer_value(nbf) : INT64_MIN;
    return 0;
}

/* b64url of {"alg":"HS256","typ":"JWT"}: the header every token of `cairn
 * token` has. Compared before anything is decoded; other spellings of an
 * HS256 header (no typ, other key order or spacing) are decoded and
 * checked. */
static const char canon_header[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/* The full check. ctx: a keyed HMAC-SHA256 context to re-initialise, or
 * NULL for a one-shot HMAC with secret. */
static int verify_full(EVP_MAC_CTX *ctx, const uint8_t *secret, size_t slen, const char *jwt,
                       size_t n, int64_t now, struct api_token *tok, int64_t *nbf,
                       struct cairn_error *e)
{
    const char *d1 = memchr(jwt, '.', n),
               *d2 = d1 ? memchr(d1 + 1, '.', n - (size_t)(d1 + 1 - jwt)) : NULL;
    if (n > API_JWT_MAX || !d1 || !d2 || memchr(d2 + 1, '.', n - (size_t)(d2 + 1 - jwt)))
        return cairn_error_set(e, "invalid_token", "", "the token is not a compact JWT");
    size_t hn = (size_t)(d1 - jwt);
    if (hn != sizeof canon_header - 1 || memcmp(jwt, canon_header, hn)) {
        int rc = check_header(jwt, hn, e);
        if (rc)
            return rc;
    }
    uint8_t mac[EVP_MAX_MD_SIZE], sig[64];
    size_t maclen = 0, siglen;
    if (ctx) {
        /* A NULL key re-initialises the context with the key it holds. */
        if (!EVP_MAC_init(ctx, NULL, 0, NULL) ||
            !EVP_MAC_update(ctx, (const unsigned char *)jwt, (size_t)(d2 - jwt)) ||
            !EVP_MAC_final(ctx, mac, &maclen, sizeof mac))
            maclen = 0;
    } else {
        unsigned int ml = 0;
        if (HMAC(EVP_sha256(), secret, (int)slen, (const unsigned char *)jwt, (size_t)(d2 - jwt),
                 mac, &ml))
            maclen = ml;
    }
    if (maclen == 0 ||
        b64url_decode(d2 + 1, n - (size_t)(d2 + 1 - jwt), sig, sizeof sig, &siglen) ||
        siglen != maclen || CRYPTO_memcmp(sig, mac, maclen))
        return cairn_error_set(e, "invalid_token", "", "the token signature does not verify");
    json_t *claims = decode_part(d1 + 1, (size_t)(d2 - d1 - 1));
    if (!json_is_object(claims)) {
        json_decref(claims);
        return cairn_error_set(e, "invalid_token", "", "the token claims are not JSON");
    }
    int rc = read_claims(claims, now, tok, nbf, e);
    json_decref(claims);
    return rc;
}

int api_jwt_verify(const uint8_t *secret, size_t slen, const char *jwt, size_t n, int64_t now,
                   struct api_token *tok, struct cairn_error *e)
{
    int64_t nbf;
    return verify_full(NULL, secret, slen, jwt, n, now, tok, &nbf, e);
}

/* ---------------------------------------------------------------------- the verifier */

/* One verified token. tag 0: the way is empty. */
struct jwt_entry {
    uint64_t tag;  /* the token's keyed hash | 1 */
    uint64_t used; /* the verifier's clock at the last hit: the least recent is evicted */
    int64_t nbf;   /* INT64_MIN: none */
    struct api_token tok;
    size_t n;
    char token[API_JWT_CACHE_TOKEN_MAX];
};

struct api_jwt {
    EVP_MAC *mac;
    EVP_MAC_CTX *ctx; /* keyed with the secret */
    uint64_t k0, k1;  /* SipHash key, random per verifier */
    uint64_t clock;
    uint64_t hits, misses;
    struct jwt_entry *sets; /* API_JWT_CACHE_SETS x API_JWT_CACHE_WAYS */
};

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-2-4 (Aumasson and Bernstein) of p[0..n) under (k0, k1). */
static uint64_t siphash(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL,
             v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t b = (uint64_t)n << 56, m;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        m = 0;
        for (int k = 7; k >= 0; k--)
            m = m << 8 | p[i + (size_t)k];
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t k = 0; i + k < n; k++)
        b |= (uint64_t)p[i + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

int api_jwt_new(const uint8_t *secret, size_t slen, struct api_jwt **out)
{
    struct api_jwt *j = calloc(1, sizeof *j);
    uint8_t key[16];
    int rc = CAIRN_ENOMEM;
    if (!j)
        return rc;
    j->sets = calloc((size_t)API_JWT_CACHE_SETS * API_JWT_CACHE_WAYS, sizeof *j->sets);
    j->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    j->ctx = j->mac ? EVP_MAC_CTX_new(j->mac) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    if (!j->sets || !j->ctx)
        goto fail;
    rc = CAIRN_EIO;
    if (!EVP_MAC_init(j->ctx, secret, slen, params) || RAND_bytes(key, sizeof key) != 1)
        goto fail;
    memcpy(&j->k0, key, 8);
    memcpy(&j->k1, key + 8, 8);
    OPENSSL_cleanse(key, sizeof key);
    *out = j;
    return 0;
fail:
    api_jwt_free(j);
    return rc;
}

void api_jwt_free(struct api_jwt *j)
{
    if (!j)
        return;
    if (j->sets) /* the tokens are credentials */
        OPENSSL_cleanse(j->sets, (size_t)API_JWT_CACHE_SETS * API_JWT_CACHE_WAYS * sizeof *j->sets);
    free(j->sets);
    EVP_MAC_CTX_free(j->ctx);
    EVP_MAC_free(j->mac);
    OPENSSL_cleanse(j, sizeof *j);
    free(j);
}

void api_jwt_stats(const struct api_jwt *j, uint64_t *hits, uint64_t *misses)
{
    *hits = j->hits;
    *misses = j->misses;
}

int api_jwt_check(struct api_jwt *j, const char *jwt, size_t n, int64_t now, struct api_token *tok,
                  struct cairn_error *e)
{
    uint64_t tag = siphash(j->k0, j->k1, (const uint8_t *)jwt, n) | 1;
    struct jwt_entry *set = &j->sets[(tag >> 1) % API_JWT_CACHE_SETS * API_JWT_CACHE_WAYS];
    j->clock++;
    for (int w = 0; w < API_JWT_CACHE_WAYS && n <= API_JWT_CACHE_TOKEN_MAX; w++) {
        struct jwt_entry *x = &set[w];
        if (x->tag != tag || x->n != n || CRYPTO_memcmp(x->token, jwt, n))
            continue;
        if (x->tok.exp > now && x->nbf <= now) {
            j->hits++;
            x->used = j->clock;
            *tok = x->tok;
            return 0;
        }
        x->tag = 0; /* expired (or the clock went back): the full check answers */
    }
    j->misses++;
    int64_t nbf;
    int rc = verify_full(j->ctx, NULL, 0, jwt, n, now, tok, &nbf, e);
    if (rc || n > API_JWT_CACHE_TOKEN_MAX)
        return rc;
    struct jwt_entry *victim = NULL; /* an empty way, else the least recently used */
    for (int w = 0; w < API_JWT_CACHE_WAYS; w++) {
        if (!set[w].tag) {
            victim = &set[w];
            break;
        }
        if (!victim || set[w].used < victim->used)
            victim = &set[w];
    }
    victim->tag = tag;
    victim->used = j->clock;
    victim->nbf = nbf;
    victim->tok = *tok;
    victim->n = n;
    memcpy(victim->token, jwt, n);
    return 0;
}

int api_jwt_mint(const uint8_t *secret, size_t slen, const char *tenant, const char *roles,
                 int64_t now, int64_t ttl_s, struct cairn_buf *out, struct cairn_error *e)
{
    json_t *r = json_array();
    for (const char *p = roles; r && *p;) {
        size_t n = strcspn(p, ",");
        if (!role_bit(p, n)) {
            json_decref(r);
            return cairn_error_set(e, "usage", "",
                                   "unknown role '%.*s' (ingest, read, audit, "
                                   "admin, metrics)",
                                   (int)n, p);
        }
        json_array_append_new(r, json_stringn(p, n));
        p += n + (p[n] == ',');
    }
    json_t *claims = json_pack("{s:s, s:o, s:I, s:I}", "tenant", tenant, "roles", r, "iat",
                               (json_int_t)now, "exp", (json_int_t)(now + ttl_s));
    char *body = claims ? json_dumps(claims, JSON_COMPACT) : NULL;
    json_decref(claims);
    if (!body)
        return CAIRN_ENOMEM;
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    int rc = b64url_encode((const uint8_t *)hdr, strlen(hdr), out);
    if (!rc)
        rc = cairn_buf_putc(out, '.');
    if (!rc)
        rc = b64url_encode((const uint8_t *)body, strlen(body), out);
    free(body);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!rc) {
        HMAC(EVP_sha256(), secret, (int)slen, out->data, out->len, mac, &maclen);
        rc = cairn_buf_putc(out, '.');
    }
    if (!rc)
        rc = b64url_encode(mac, maclen, out);
    return rc;
}

/* ====================================================================== Stripe */

struct stripe_sig {
    int64_t t;
    bool has_t;
    uint8_t v1[API_STRIPE_SECRETS_MAX * 2][32];
    size_t nv1;
};

static int parse_stripe_header(const char *h, struct stripe_sig *s, struct cairn_error *e)
{
    memset(s, 0, sizeof *s);
    for (const char *p = h; *p;) {
        size_t n = strcspn(p, ",");
        const char *eq = memchr(p, '=', n);
        if (eq) {
            size_t kn = (size_t)(eq - p), vn = n - kn - 1;
            if (kn == 1 && p[0] == 't') {
                char tmp[24], *end;
                if (vn == 0 || vn >= sizeof tmp)
                    break;
                memcpy(tmp, eq + 1, vn);
                tmp[vn] = '\0';
                s->t = strtoll(tmp, &end, 10);
                s->has_t = *end == '\0';
            } else if (kn == 2 && !memcmp(p, "v1", 2) && vn == 64 &&
                       s->nv1 < sizeof s->v1 / sizeof *s->v1 &&
                       !cairn_unhex(eq + 1, 64, s->v1[s->nv1])) {
                s->nv1++;
            }
        }
        p += n + (p[n] == ',');
    }
    if (!s->has_t)
        return cairn_error_set(e, "invalid_signature", "Stripe-Signature",
                               "the Stripe-Signature header has no timestamp (t=)");
    if (!s->nv1)
        return cairn_error_set(e, "invalid_signature", "Stripe-Signature",
                               "the Stripe-Signature header has no v1 signature");
    return 0;
}

int api_stripe_verify(char *const *secrets, size_t nsecrets, const char *header,
                      const uint8_t *body, size_t n, int64_t now_s, int64_t tolerance_s,
                      struct cairn_error *e)
{
    struct stripe_sig s;
    if (!header)
        return cairn_error_set(e, "invalid_signature", "Stripe-Signature",
                               "the Stripe-Signature header is missing");
    int rc = parse_stripe_header(header, &s, e);
    if (rc)
        return rc;
    char ts[24];
    int tn = snprintf(ts, sizeof ts, "%lld.", (long long)s.t);
    bool ok = false;
    for (size_t i = 0; i < nsecrets && !ok; i++) {
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned int ml = 0;
        EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
        EVP_MAC_CTX *ctx = m ? EVP_MAC_CTX_new(m) : NULL;
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                               OSSL_PARAM_construct_end()};
        size_t outl = 0;
        if (ctx &&
            EVP_MAC_init(ctx, (const unsigned char *)secrets[i], strlen(secrets[i]), params) &&
            EVP_MAC_update(ctx, (const unsigned char *)ts, (size_t)tn) &&
            EVP_MAC_update(ctx, body, n) && EVP_MAC_final(ctx, mac, &outl, sizeof mac))
            ml = (unsigned int)outl;
        EVP_MAC_CTX_free(ctx);
        EVP_MAC_free(m);
        for (size_t k = 0; k < s.nv1 && ml == 32 && !ok; k++)
            ok = CRYPTO_memcmp(mac, s.v1[k], 32) == 0;
    }
    if (!ok)
        return cairn_error_set(e, "invalid_signature", "Stripe-Signature",
                               "no v1 signature matches a configured endpoint secret");
    if (s.t < now_s - tolerance_s || s.t > now_s + tolerance_s)
        return cairn_error_set(e, "invalid_signature", "Stripe-Signature",
                               "the signature timestamp is outside the %llds tolerance",
                               (long long)tolerance_s);
    return 0;
}
