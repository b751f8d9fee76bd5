/*
 * envelope.c — encoding, decoding and hashing of stored envelopes.
 *
 * Encoding uses msgpack-c's packer. Decoding reads the eight fixed fields
 * with a small reader that accepts exactly the canonical shape (log.h): we
 * wrote these bytes ourselves, and a reader that knows the layout gives the
 * payload as a raw byte span (msgpack-c cannot), so handlers decode payloads
 * once and `verify` never decodes them at all.
 */
#include "log_int.h"

#include <msgpack.h>
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

static void pack_key(msgpack_packer *pk, const char *k)
{
    msgpack_pack_str_with_body(pk, k, strlen(k));
}

static void pack_str(msgpack_packer *pk, const struct cairn_str *s, bool nil_if_empty)
{
    if (nil_if_empty && s->n == 0)
        msgpack_pack_nil(pk);
    else
        msgpack_pack_str_with_body(pk, s->p, s->n);
}

int log_envelope_encode(struct cairn_buf *b, EVP_MD_CTX *md, const struct log_input *in,
                        uint64_t seq, int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                        uint8_t hash[LOG_HASH_LEN])
{
    cairn_buf_reset(b);
    /* Reserve everything once so the packer's appends cannot fail midway. */
    size_t need = 64 + LOG_HASH_LEN + in->type.n + in->tenant.n + in->key.n + in->id.n +
                  in->source.n + in->payload_len + 3 * 9 + 8 * 5 + TAIL_LEN;
    int rc = cairn_buf_reserve(b, need);
    if (rc)
        return rc;
    cairn_buf_append(b, prev, LOG_HASH_LEN);
    cairn_buf_putc(b, (char)0x8a); /* the map without hash: hashed */

    msgpack_packer pk;
    msgpack_packer_init(&pk, b, cairn_buf_msgpack_write);
    pack_key(&pk, "seq");
    msgpack_pack_uint64(&pk, seq);
    pack_key(&pk, "time");
    msgpack_pack_int64(&pk, in->time);
    pack_key(&pk, "ingested");
    msgpack_pack_int64(&pk, ingested);
    pack_key(&pk, "type");
    pack_str(&pk, &in->type, false);
    pack_key(&pk, "tenant");
    pack_str(&pk, &in->tenant, false);
    pack_key(&pk, "key");
    pack_str(&pk, &in->key, false);
    pack_key(&pk, "id");
    pack_str(&pk, &in->id, true);
    pack_key(&pk, "source");
    pack_str(&pk, &in->source, false);
    pack_key(&pk, "payload");
    cairn_buf_append(b, in->payload, in->payload_len);
    pack_key(&pk, "prev");
    msgpack_pack_bin_with_body(&pk, prev, LOG_HASH_LEN);

    unsigned int hl = 0;
    if (!EVP_DigestInit_ex2(md, sha256(), NULL) || !EVP_DigestUpdate(md, b->data, b->len) ||
        !EVP_DigestFinal_ex(md, hash, &hl))
        return CAIRN_EIO;
    b->data[LOG_HASH_LEN] = (uint8_t)0x8b; /* the stored map has hash too */
    pack_key(&pk, "hash");
    msgpack_pack_bin_with_body(&pk, hash, LOG_HASH_LEN);
    assert(b->len <= need);
    return 0;
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
