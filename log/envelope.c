/*
 * envelope.c — encoding, decoding and hashing of stored envelopes.
 *
 * Encoding writes the canonical bytes directly (as msgpack-c's packer
 * would: tests/log compares them). Decoding reads the eight fixed fields
 * with a small reader that accepts exactly the canonical shape (log.h): we
 * wrote these bytes ourselves, and a reader that knows the layout gives the
 * payload as a raw byte span (msgpack-c cannot), so handlers decode payloads
 * once and `verify` never decodes them at all.
 */
#include "log_int.h"

#include <pthread.h>
#include <string.h>

/* The tail: "prev" bin32 then "hash" bin32, 39 bytes each. */
#define TAIL_FIELD (1 + 4 + 2 + LOG_HASH_LEN)
#define TAIL_LEN (2 * TAIL_FIELD)

/* OpenSSL 3 looks the algorithm up on every EVP_sha256() use (an implicit
 * fetch: ~10 % of the writer's CPU); fetch it once for the process. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256(void)
{
    pthread_once(&sha256_once, sha256_fetch);
    return sha256_md ? sha256_md : EVP_sha256();
}

/* ====================================================================== encoding */

/* The envelope is written byte by byte, in the forms msgpack-c's packer
 * chooses (its msgpack_pack_uint64/int64/str/bin/nil; tests/log checks the
 * bytes against it): the packer's write callback per token cost ~10 % of
 * the writer. Every write lands in space reserved up front. */

static uint8_t *put_be(uint8_t *o, uint64_t v, int w)
{
    for (int i = w - 1; i >= 0; i--, v >>= 8)
        o[i] = (uint8_t)v;
    return o + w;
}

/* A fixstr key: the literal's length folds. */
static inline uint8_t *put_key(uint8_t *o, const char *k)
{
    size_t n = strlen(k);
    *o++ = (uint8_t)(0xa0 | n);
    memcpy(o, k, n);
    return o + n;
}

static uint8_t *put_uint(uint8_t *o, uint64_t v)
{
    if (v < 128) {
        *o++ = (uint8_t)v;
        return o;
    }
    int w = v < 256 ? 1 : v < 65536 ? 2 : v < 4294967296ull ? 4 : 8;
    *o++ = (uint8_t)(w == 1 ? 0xcc : w == 2 ? 0xcd : w == 4 ? 0xce : 0xcf);
    return put_be(o, v, w);
}

static uint8_t *put_int(uint8_t *o, int64_t v)
{
    if (v >= 0)
        return put_uint(o, (uint64_t)v);
    if (v >= -32) {
        *o++ = (uint8_t)(int8_t)v;
        return o;
    }
    int w = v >= -128 ? 1 : v >= -32768 ? 2 : v >= -2147483648LL ? 4 : 8;
    *o++ = (uint8_t)(w == 1 ? 0xd0 : w == 2 ? 0xd1 : w == 4 ? 0xd2 : 0xd3);
    return put_be(o, (uint64_t)v, w);
}

static uint8_t *put_str(uint8_t *o, const struct cairn_str *s, bool nil_if_empty)
{
    size_t n = s->n;
    if (nil_if_empty && n == 0) {
        *o++ = 0xc0;
        return o;
    }
    if (n < 32) {
        *o++ = (uint8_t)(0xa0 | n);
    } else {
        int w = n < 256 ? 1 : n < 65536 ? 2 : 4;
        *o++ = (uint8_t)(w == 1 ? 0xd9 : w == 2 ? 0xda : 0xdb);
        o = put_be(o, n, w);
    }
    if (n)
        memcpy(o, s->p, n);
    return o + n;
}

/* "prev" or "hash" and its bin8 of LOG_HASH_LEN bytes. */
static uint8_t *put_hash_field(uint8_t *o, const char *name, const uint8_t h[LOG_HASH_LEN])
{
    o = put_key(o, name);
    *o++ = 0xc4;
    *o++ = LOG_HASH_LEN;
    memcpy(o, h, LOG_HASH_LEN);
    return o + LOG_HASH_LEN;
}

int log_envelope_encode_append(struct cairn_buf *b, EVP_MD_CTX *md, const struct log_input *in,
                               uint64_t seq, int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                               uint8_t hash[LOG_HASH_LEN])
{
    /* Reserve everything once: prev, the map header, 11 keys of at most 9
     * bytes, 3 integers of at most 9, 5 strings of at most 5 + body, the
     * payload, the two bin8 hashes. */
    size_t need = 64 + LOG_HASH_LEN + in->type.n + in->tenant.n + in->key.n + in->id.n +
                  in->source.n + in->payload_len + 3 * 9 + 8 * 5 + TAIL_LEN;
    int rc = cairn_buf_reserve(b, need);
    if (rc)
        return rc;
    uint8_t *start = b->data + b->len, *o = start;
    memcpy(o, prev, LOG_HASH_LEN);
    o += LOG_HASH_LEN;
    *o++ = 0x8a; /* the map without hash: hashed */
    o = put_uint(put_key(o, "seq"), seq);
    o = put_int(put_key(o, "time"), in->time);
    o = put_int(put_key(o, "ingested"), ingested);
    o = put_str(put_key(o, "type"), &in->type, false);
    o = put_str(put_key(o, "tenant"), &in->tenant, false);
    o = put_str(put_key(o, "key"), &in->key, false);
    o = put_str(put_key(o, "id"), &in->id, true);
    o = put_str(put_key(o, "source"), &in->source, false);
    o = put_key(o, "payload");
    if (in->payload_len)
        memcpy(o, in->payload, in->payload_len);
    o += in->payload_len;
    o = put_hash_field(o, "prev", prev);

    unsigned int hl = 0;
    size_t hashed = (size_t)(o - start);
    if (!EVP_DigestInit_ex2(md, sha256(), NULL) || !EVP_DigestUpdate(md, start, hashed) ||
        !EVP_DigestFinal_ex(md, hash, &hl))
        return CAIRN_EIO;
    start[LOG_HASH_LEN] = (uint8_t)0x8b; /* the stored map has hash too */
    o = put_hash_field(o, "hash", hash);
    assert((size_t)(o - start) <= need);
    b->len += (size_t)(o - start);
    return 0;
}

int log_envelope_encode(struct cairn_buf *b, EVP_MD_CTX *md, const struct log_input *in,
                        uint64_t seq, int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                        uint8_t hash[LOG_HASH_LEN])
{
    cairn_buf_reset(b);
    return log_envelope_encode_append(b, md, in, seq, ingested, prev, hash);
}

/* ====================================================================== decoding */

static int rd_tail_field(const uint8_t *p, const char *name, const uint8_t **hash)
{
    if (p[0] != 0xa4 || memcmp(p + 1, name, 4) || p[5] != 0xc4 || p[6] != LOG_HASH_LEN)
        return CAIRN_ECORRUPT;
    *hash = p + 7;
    return 0;
}

int log_event_decode(const uint8_t *p, size_t n, struct log_event *ev)
{
    struct cairn_rd r = {p + 1, p + n};
    int64_t seq;
    if (n < 1 + TAIL_LEN || p[0] != 0x8b)
        return CAIRN_ECORRUPT;
    r.end = p + n - TAIL_LEN;
    if (cairn_rd_key(&r, "seq") || cairn_rd_int(&r, &seq) || seq <= 0 || cairn_rd_key(&r, "time") ||
        cairn_rd_int(&r, &ev->time) || cairn_rd_key(&r, "ingested") ||
        cairn_rd_int(&r, &ev->ingested) || cairn_rd_key(&r, "type") ||
        cairn_rd_str(&r, &ev->type, false) || cairn_rd_key(&r, "tenant") ||
        cairn_rd_str(&r, &ev->tenant, false) || cairn_rd_key(&r, "key") ||
        cairn_rd_str(&r, &ev->key, false) || cairn_rd_key(&r, "id") ||
        cairn_rd_str(&r, &ev->id, true) || cairn_rd_key(&r, "source") ||
        cairn_rd_str(&r, &ev->source, false) || cairn_rd_key(&r, "payload"))
        return CAIRN_ECORRUPT;
    if (r.p >= r.end || (*r.p & 0xf0) != 0x80) { /* payload is a map */
        if (r.p >= r.end || (*r.p != 0xde && *r.p != 0xdf))
            return CAIRN_ECORRUPT;
    }
    ev->seq = (uint64_t)seq;
    ev->payload = r.p;
    ev->payload_len = (size_t)(r.end - r.p);
    if (rd_tail_field(r.end, "prev", &ev->prev) ||
        rd_tail_field(r.end + TAIL_FIELD, "hash", &ev->hash))
        return CAIRN_ECORRUPT;
    ev->raw = p;
    ev->raw_len = n;
    return 0;
}

void log_event_hash_md(EVP_MD_CTX *md, const struct log_event *ev, uint8_t out[LOG_HASH_LEN])
{
    /* prev || 0x8a || the stored entries up to, not including, "hash". */
    static const uint8_t hdr = 0x8a;
    unsigned int hl = 0;
    EVP_DigestInit_ex2(md, sha256(), NULL);
    EVP_DigestUpdate(md, ev->prev, LOG_HASH_LEN);
    EVP_DigestUpdate(md, &hdr, 1);
    EVP_DigestUpdate(md, ev->raw + 1, ev->raw_len - 1 - TAIL_FIELD);
    EVP_DigestFinal_ex(md, out, &hl);
}

void log_event_hash(const struct log_event *ev, uint8_t out[LOG_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert(md);
    log_event_hash_md(md, ev, out);
    EVP_MD_CTX_free(md);
}

/* ====================================================================== JSON */

static int json_field_str(struct cairn_buf *b, const char *name, const struct cairn_str *s)
{
    int rc = cairn_buf_printf(b, ",\"%s\":", name);
    if (rc)
        return rc;
    if (!s->p)
        return cairn_buf_append(b, "null", 4);
    return cairn_buf_json_str(b, s->p, s->n);
}

int log_event_json(const struct log_event *ev, struct cairn_buf *b)
{
    char t1[40], t2[40], prev[2 * LOG_HASH_LEN + 1], hash[2 * LOG_HASH_LEN + 1];
    cairn_time_format(ev->time, t1, sizeof t1);
    cairn_time_format(ev->ingested, t2, sizeof t2);
    cairn_hex(ev->prev, LOG_HASH_LEN, prev);
    cairn_hex(ev->hash, LOG_HASH_LEN, hash);
    int rc = cairn_buf_printf(b, "{\"seq\":%llu,\"time\":\"%s\",\"ingested\":\"%s\"",
                              (unsigned long long)ev->seq, t1, t2);
    if (!rc)
        rc = json_field_str(b, "type", &ev->type);
    if (!rc)
        rc = json_field_str(b, "tenant", &ev->tenant);
    if (!rc)
        rc = json_field_str(b, "key", &ev->key);
    if (!rc)
        rc = json_field_str(b, "id", &ev->id);
    if (!rc)
        rc = json_field_str(b, "source", &ev->source);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"payload\":");
    if (!rc)
        rc = cairn_msgpack_to_json(ev->payload, ev->payload_len, b, NULL);
    if (!rc)
        rc = cairn_buf_printf(b, ",\"prev\":\"%s\",\"hash\":\"%s\"}", prev, hash);
    return rc;
}
