/*
 * test_chain.c — the hash chain of DATA/log: appending, the stored envelope
 * byte for byte, verify over the whole log and over ranges, and verify
 * catching every kind of tampering done with raw LMDB writes (a flipped
 * payload byte, a flipped stored hash, a flipped prev, a truncated or
 * missing entry, a forged head). Also reading: one entity's events through
 * the keys index, from a given seq; the last seq of an entity; snapshots.
 */
#include "log_test.h"

#include "log_int.h"

#include <msgpack.h>
#include <openssl/evp.h>

/* ====================================================================== a 10 000-event log */

#define CHAIN_N 10000
#define BAD_SEQ 4321

static char g_dir[512];

/* Input i (0-based) of the chain log: seq i + 1. */
static void chain_input(struct tin *t, unsigned i)
{
    char key[32], id[32], payload[128];
    snprintf(key, sizeof key, "dev-%u", i % 50);
    snprintf(id, sizeof id, "id-%u", i);
    snprintf(payload, sizeof payload, "{\"device_id\":\"%s\",\"n\":%u,\"s\":\"payload-%u\"}", key,
             i, i);
    tin_setj(t, "acme", key, id, T0 + (int64_t)i * 1000000, payload);
}

static int chain_setup(void **state)
{
    (void)state;
    scratch_new(g_dir, sizeof g_dir);
    struct log *log = open_log(g_dir, 0);
    /* batches of uneven sizes: 1, 2, 3, … so batch edges fall everywhere */
    struct tin *t = tins_new(CHAIN_N);
    struct log_result *res = calloc(CHAIN_N, sizeof *res);
    assert_non_null(res);
    for (unsigned i = 0; i < CHAIN_N; i++)
        chain_input(&t[i], i);
    unsigned at = 0;
    for (unsigned size = 1; at < CHAIN_N; size = size % 700 + 37) {
        unsigned n = CHAIN_N - at < size ? CHAIN_N - at : size;
        append_tins(log, t + at, n, res + at);
        at += n;
    }
    for (unsigned i = 0; i < CHAIN_N; i++) {
        assert_int_equal(res[i].rc, 0);
        assert_false(res[i].duplicate);
        assert_int_equal(res[i].seq, i + 1);
    }
    free(res);
    tins_free(t, CHAIN_N);
    log_close(log);
    return 0;
}

static int chain_teardown(void **state)
{
    (void)state;
    scratch_free(g_dir);
    return 0;
}

static struct log *open_ro(const char *dir)
{
    struct log *log = NULL;
    struct log_config cfg = {.dir = dir, .readonly = true};
    assert_int_equal(log_open(&log, &cfg), 0);
    return log;
}

static void test_verify_whole(void **state)
{
    (void)state;
    struct log *log = open_ro(g_dir);
    struct log_verify_report r;
    uint64_t seq;
    uint8_t head[LOG_HASH_LEN];
    assert_int_equal(log_head(log, &seq, head), 0);
    assert_int_equal(seq, CHAIN_N);
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, CHAIN_N);
    assert_null(r.reason);
    assert_memory_equal(r.head, head, LOG_HASH_LEN);
    /* the head is the stored hash of the last event */
    struct log_snap *s;
    struct log_event ev;
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_snap_get(s, CHAIN_N, &ev), 0);
    assert_memory_equal(ev.hash, head, LOG_HASH_LEN);
    assert_int_equal(log_snap_get(s, CHAIN_N + 1, &ev), CAIRN_ENOTFOUND);
    assert_int_equal(log_snap_get(s, 0, &ev), CAIRN_ENOTFOUND);
    log_snap_end(s);
    /* what was stored is what was sent */
    json_t *p = stored_payload(log, BAD_SEQ);
    assert_int_equal(json_integer_value(json_object_get(p, "n")), BAD_SEQ - 1);
    assert_string_equal(json_string_value(json_object_get(p, "device_id")), "dev-20");
    json_decref(p);
    log_close(log);
}

static void test_verify_ranges(void **state)
{
    (void)state;
    struct log *log = open_ro(g_dir);
    struct log_verify_report r;
    struct log_snap *s;
    struct log_event ev;
    uint8_t h200[LOG_HASH_LEN], head[LOG_HASH_LEN];
    uint64_t seq;
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_snap_get(s, 200, &ev), 0);
    memcpy(h200, ev.hash, LOG_HASH_LEN);
    log_snap_end(s);
    assert_int_equal(log_head(log, &seq, head), 0);

    assert_int_equal(log_verify(log, 100, 200, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 101);
    assert_memory_equal(r.head, h200, LOG_HASH_LEN);

    assert_int_equal(log_verify(log, 1, 1, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 1);

    assert_int_equal(log_verify(log, 0, 200, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 200);
    assert_memory_equal(r.head, h200, LOG_HASH_LEN);

    /* `to` past the head is clamped to it */
    assert_int_equal(log_verify(log, 9990, 20000, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 11);
    assert_memory_equal(r.head, head, LOG_HASH_LEN);

    assert_int_equal(log_verify(log, CHAIN_N, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 1);
    assert_memory_equal(r.head, head, LOG_HASH_LEN);

    /* nothing to check past the head */
    assert_int_equal(log_verify(log, CHAIN_N + 1, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 0);
    log_close(log);
}

/* Corrupts a copy of seq's envelope with `mutate`, checks verify's answers,
 * then restores the original and checks the log is whole again. */
struct expect {
    uint64_t from, to;
    bool ok;
    uint64_t bad_seq, events;
    const char *reason;
};

static void check_verify(const char *dir, const struct expect *x, size_t n)
{
    struct log *log = open_ro(dir);
    for (size_t i = 0; i < n; i++) {
        struct log_verify_report r;
        assert_int_equal(log_verify(log, x[i].from, x[i].to, &r), 0);
        if (r.ok != x[i].ok || r.events != x[i].events || (!r.ok && r.bad_seq != x[i].bad_seq))
            fail_msg("verify(%llu, %llu): ok %d events %llu bad_seq %llu (%s); want ok %d "
                     "events %llu bad_seq %llu",
                     (unsigned long long)x[i].from, (unsigned long long)x[i].to, r.ok,
                     (unsigned long long)r.events, (unsigned long long)r.bad_seq,
                     r.reason ? r.reason : "-", x[i].ok, (unsigned long long)x[i].events,
                     (unsigned long long)x[i].bad_seq);
        if (x[i].reason)
            assert_string_equal(r.reason, x[i].reason);
    }
    log_close(log);
}

static void verify_intact(const char *dir)
{
    const struct expect whole = {0, 0, true, 0, CHAIN_N, NULL};
    check_verify(dir, &whole, 1);
}

#define HASH_MISMATCH "hash does not match the envelope"
#define PREV_MISMATCH "prev does not match the hash of the previous event"

static void test_tamper_payload(void **state)
{
    (void)state;
    size_t n;
    uint8_t *orig = raw_get(g_dir, BAD_SEQ, &n);
    uint8_t *bad = malloc(n);
    memcpy(bad, orig, n);
    struct log_event ev;
    assert_int_equal(log_event_decode(bad, n, &ev), 0);
    /* the last byte of the payload is the last character of "payload-4320" */
    size_t at = (size_t)(ev.payload - bad) + ev.payload_len - 1;
    assert_int_equal(bad[at], '0');
    bad[at] ^= 0x01;
    raw_put(g_dir, BAD_SEQ, bad, n);
    const struct expect x[] = {
        {0, 0, false, BAD_SEQ, BAD_SEQ - 1, HASH_MISMATCH},
        {1, BAD_SEQ - 1, true, 0, BAD_SEQ - 1, NULL},
        {BAD_SEQ, BAD_SEQ, false, BAD_SEQ, 0, HASH_MISMATCH},
        {4000, 5000, false, BAD_SEQ, BAD_SEQ - 4000, HASH_MISMATCH},
        /* the stored hash is untouched, so the rest of the chain links to it */
        {BAD_SEQ + 1, 0, true, 0, CHAIN_N - BAD_SEQ, NULL},
    };
    check_verify(g_dir, x, sizeof x / sizeof *x);
    raw_put(g_dir, BAD_SEQ, orig, n);
    verify_intact(g_dir);
    free(bad);
    free(orig);
}

static void test_tamper_hash(void **state)
{
    (void)state;
    size_t n;
    uint8_t *orig = raw_get(g_dir, BAD_SEQ, &n);
    uint8_t *bad = malloc(n);
    memcpy(bad, orig, n);
    bad[n - 1] ^= 0x80; /* the stored hash is the last 32 bytes */
    raw_put(g_dir, BAD_SEQ, bad, n);
    const struct expect x[] = {
        {0, 0, false, BAD_SEQ, BAD_SEQ - 1, HASH_MISMATCH},
        {1, BAD_SEQ - 1, true, 0, BAD_SEQ - 1, NULL},
        /* from the next one: its prev no longer matches the stored hash */
        {BAD_SEQ + 1, 0, false, BAD_SEQ + 1, 0, PREV_MISMATCH},
    };
    check_verify(g_dir, x, sizeof x / sizeof *x);
    raw_put(g_dir, BAD_SEQ, orig, n);
    verify_intact(g_dir);
    free(bad);
    free(orig);
}

static void test_tamper_prev(void **state)
{
    (void)state;
    size_t n;
    uint8_t *orig = raw_get(g_dir, BAD_SEQ, &n);
    uint8_t *bad = malloc(n);
    memcpy(bad, orig, n);
    bad[n - 39 - 1] ^= 0x01; /* last byte of prev ("prev" bin32 then "hash" bin32) */
    raw_put(g_dir, BAD_SEQ, bad, n);
    const struct expect x[] = {
        {0, 0, false, BAD_SEQ, BAD_SEQ - 1, PREV_MISMATCH},
        {BAD_SEQ + 1, 0, true, 0, CHAIN_N - BAD_SEQ, NULL},
    };
    check_verify(g_dir, x, sizeof x / sizeof *x);
    raw_put(g_dir, BAD_SEQ, orig, n);
    verify_intact(g_dir);
    free(bad);
    free(orig);
}

static void test_tamper_truncated(void **state)
{
    (void)state;
    size_t n;
    uint8_t *orig = raw_get(g_dir, BAD_SEQ, &n);
    raw_put(g_dir, BAD_SEQ, orig, n - 1);
    const struct expect x[] = {
        {0, 0, false, BAD_SEQ, BAD_SEQ - 1, "malformed envelope"},
        /* starting right after it needs its stored hash: still malformed */
        {BAD_SEQ + 1, 0, false, BAD_SEQ, 0, "malformed envelope"},
    };
    check_verify(g_dir, x, sizeof x / sizeof *x);
    raw_put(g_dir, BAD_SEQ, orig, n);
    verify_intact(g_dir);
    free(orig);
}

static void raw_del(const char *dir, uint64_t seq)
{
    MDB_env *env = raw_open(dir, 0);
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t k8[8];
    cairn_be64_put(k8, seq);
    MDB_val k = {8, k8};
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "events", 0, &dbi), 0);
    assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void test_tamper_missing(void **state)
{
    (void)state;
    size_t n;
    uint8_t *orig = raw_get(g_dir, BAD_SEQ, &n);
    raw_del(g_dir, BAD_SEQ);
    const struct expect x[] = {
        {0, 0, false, BAD_SEQ, BAD_SEQ - 1, "missing or misplaced seq"},
    };
    check_verify(g_dir, x, 1);
    raw_put(g_dir, BAD_SEQ, orig, n);
    verify_intact(g_dir);
    free(orig);
}

/* The last event damaged or removed: verify must still open the log and
 * say what is wrong (an auditor runs it precisely on a damaged log). Runs
 * last in its group: it leaves the log damaged if it fails. */
static void test_tamper_last(void **state)
{
    (void)state;
    size_t n;
    uint8_t *last = raw_get(g_dir, CHAIN_N, &n);
    /* truncated: malformed */
    raw_put(g_dir, CHAIN_N, last, n - 1);
    const struct expect x[] = {
        {0, 0, false, CHAIN_N, CHAIN_N - 1, "malformed envelope"},
    };
    check_verify(g_dir, x, 1);
    /* removed: the head names an event that is not there */
    raw_del(g_dir, CHAIN_N);
    const struct expect y[] = {
        {0, 0, false, CHAIN_N, CHAIN_N - 1, "head does not match the last event"},
    };
    check_verify(g_dir, y, 1);
    raw_put(g_dir, CHAIN_N, last, n);
    verify_intact(g_dir);
    free(last);
}

/* ====================================================================== the envelope */

struct bytes {
    uint8_t b[1024];
    size_t n;
};

static void put(struct bytes *o, const void *p, size_t n)
{
    assert_true(o->n + n <= sizeof o->b);
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static void put_fixstr(struct bytes *o, const char *s)
{
    size_t n = strlen(s);
    assert_true(n < 32);
    uint8_t t = (uint8_t)(0xa0 | n);
    put(o, &t, 1);
    put(o, s, n);
}

static void put_u64(struct bytes *o, uint8_t tag, uint64_t v)
{
    uint8_t b[9] = {tag};
    cairn_be64_put(b + 1, v);
    put(o, b, 9);
}

static void put_bin32(struct bytes *o, const uint8_t *h)
{
    static const uint8_t hdr[2] = {0xc4, 0x20};
    put(o, hdr, 2);
    put(o, h, 32);
}

static void sha256(const void *a, size_t an, const void *b, size_t bn, uint8_t out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int hl = 0;
    assert_non_null(md);
    assert_true(EVP_DigestInit_ex(md, EVP_sha256(), NULL));
    assert_true(EVP_DigestUpdate(md, a, an));
    assert_true(EVP_DigestUpdate(md, b, bn));
    assert_true(EVP_DigestFinal_ex(md, out, &hl));
    assert_int_equal(hl, 32);
    EVP_MD_CTX_free(md);
}

/* The encoder writes bytes itself; they must be what msgpack-c's packer
 * writes for the same fields (the encoder this replaced, below), for every
 * width of every integer and string. */
static void ref_str(msgpack_packer *pk, const struct cairn_str *s, bool nil_if_empty)
{
    if (nil_if_empty && s->n == 0)
        msgpack_pack_nil(pk);
    else
        msgpack_pack_str_with_body(pk, s->p, s->n);
}

static void ref_encode(struct cairn_buf *b, const struct log_input *in, uint64_t seq,
                       int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                       const uint8_t hash[LOG_HASH_LEN])
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, cairn_buf_msgpack_write);
    cairn_buf_reset(b);
    msgpack_pack_map(&pk, 11);
    msgpack_pack_str_with_body(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_str_with_body(&pk, "time", 4);
    msgpack_pack_int64(&pk, in->time);
    msgpack_pack_str_with_body(&pk, "ingested", 8);
    msgpack_pack_int64(&pk, ingested);
    msgpack_pack_str_with_body(&pk, "type", 4);
    ref_str(&pk, &in->type, false);
    msgpack_pack_str_with_body(&pk, "tenant", 6);
    ref_str(&pk, &in->tenant, false);
    msgpack_pack_str_with_body(&pk, "key", 3);
    ref_str(&pk, &in->key, false);
    msgpack_pack_str_with_body(&pk, "id", 2);
    ref_str(&pk, &in->id, true);
    msgpack_pack_str_with_body(&pk, "source", 6);
    ref_str(&pk, &in->source, false);
    msgpack_pack_str_with_body(&pk, "payload", 7);
    cairn_buf_append(b, in->payload, in->payload_len);
    msgpack_pack_str_with_body(&pk, "prev", 4);
    msgpack_pack_bin_with_body(&pk, prev, LOG_HASH_LEN);
    msgpack_pack_str_with_body(&pk, "hash", 4);
    msgpack_pack_bin_with_body(&pk, hash, LOG_HASH_LEN);
}

static void test_envelope_packer(void **state)
{
    (void)state;
    static const int64_t ints[] = {
        0,         1,  127, 128, 255,  256,  65535,  65536,  4294967295LL,  4294967296LL,
        INT64_MAX, -1, -32, -33, -128, -129, -32768, -32769, -2147483648LL, -2147483649LL,
        INT64_MIN, T0};
    static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536, 70000};
    enum { NI = sizeof ints / sizeof *ints, NL = sizeof lens / sizeof *lens };
    char *text = malloc(70000);
    assert_non_null(text);
    memset(text, 'x', 70000);
    static const uint8_t payload[] = {0x81, 0xa1, 'a', 0x01};
    struct cairn_buf got, want;
    cairn_buf_init(&got, CAIRN_PAYLOAD_MAX_CEILING + 4096);
    cairn_buf_init(&want, SIZE_MAX);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_non_null(md);
    uint8_t prev[LOG_HASH_LEN], hash[LOG_HASH_LEN], h2[LOG_HASH_LEN];
    for (unsigned i = 0; i < 200; i++) {
        for (unsigned j = 0; j < LOG_HASH_LEN; j++)
            prev[j] = (uint8_t)(i * 31 + j);
        /* each field walks the widths at its own pace */
        struct log_input in = {
            .type = {text, lens[i % NL]},
            .tenant = {text, lens[(i / 2) % NL]},
            .key = {text, lens[(i / 3) % NL]},
            .id = {text, lens[(i / 5) % NL]},
            .source = {text, lens[(i / 7) % NL]},
            .time = ints[i % NI],
            .payload = payload,
            .payload_len = sizeof payload,
        };
        uint64_t seq = i < NI && ints[i] >= 0 ? (uint64_t)ints[i] : UINT64_MAX - i;
        int64_t ingested = ints[(i / 3) % NI];
        assert_int_equal(log_envelope_encode(&got, md, &in, seq, ingested, prev, hash), 0);
        ref_encode(&want, &in, seq, ingested, prev, hash);
        assert_int_equal(got.len - LOG_HASH_LEN, want.len);
        assert_memory_equal(got.data + LOG_HASH_LEN, want.data, want.len);
        assert_memory_equal(got.data, prev, LOG_HASH_LEN);
        /* the hash is SHA-256(prev || 0x8a || entries seq..prev) */
        want.data[0] = 0x8a;
        sha256(prev, LOG_HASH_LEN, want.data, want.len - (1 + 4 + 2 + LOG_HASH_LEN), h2);
        assert_memory_equal(hash, h2, LOG_HASH_LEN);
    }
    EVP_MD_CTX_free(md);
    cairn_buf_deinit(&got);
    cairn_buf_deinit(&want);
    free(text);
}

static void test_envelope(void **state)
{
    (void)state;
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = open_log(dir, 0);
    struct tin t[2] = {{{{0}}}};
    int64_t time1 = T0 + 250000000; /* 2026-11-21T10:00:00.250Z */
    tin_setj(&t[0], "acme", "dev-17", "msg-1", time1, "{\"device_id\":\"dev-17\",\"temp\":21.5}");
    /* no id, a key that needs escaping, the first time accepted (1 ns after
     * the epoch; earlier times are refused), empty payload */
    tin_setj(&t[1], "acme", "a\"b", NULL, 1, "{}");
    int64_t before = cairn_now_ns();
    struct log_result res[2];
    append_tins(log, t, 2, res);
    int64_t after = cairn_now_ns();
    assert_int_equal(res[0].seq, 1);
    assert_int_equal(res[1].seq, 2);

    struct log_snap *s;
    struct log_event ev, ev2;
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_snap_get(s, 1, &ev), 0);
    assert_int_equal(log_snap_get(s, 2, &ev2), 0);

    /* decoded fields */
    assert_int_equal(ev.seq, 1);
    assert_int_equal(ev.time, time1);
    assert_true(ev.ingested >= before && ev.ingested <= after);
    assert_true(ev2.ingested >= ev.ingested);
    assert_int_equal(ev.type.n, 9);
    assert_memory_equal(ev.type.p, "telemetry", 9);
    assert_int_equal(ev.id.n, 5);
    assert_memory_equal(ev.id.p, "msg-1", 5);
    assert_null(ev2.id.p);
    assert_int_equal(ev2.time, 1);
    static const uint8_t zero[LOG_HASH_LEN] = {0};
    assert_memory_equal(ev.prev, zero, LOG_HASH_LEN); /* the first prev is 32 zero bytes */
    assert_memory_equal(ev2.prev, ev.hash, LOG_HASH_LEN);

    /* the stored bytes, built by hand from log.h's layout */
    struct bytes x = {.n = 0};
    static const uint8_t map11 = 0x8b;
    put(&x, &map11, 1);
    put_fixstr(&x, "seq");
    put(&x, "\x01", 1);
    put_fixstr(&x, "time");
    put_u64(&x, 0xcf, (uint64_t)time1);
    put_fixstr(&x, "ingested");
    put_u64(&x, 0xcf, (uint64_t)ev.ingested);
    put_fixstr(&x, "type");
    put_fixstr(&x, "telemetry");
    put_fixstr(&x, "tenant");
    put_fixstr(&x, "acme");
    put_fixstr(&x, "key");
    put_fixstr(&x, "dev-17");
    put_fixstr(&x, "id");
    put_fixstr(&x, "msg-1");
    put_fixstr(&x, "source");
    put_fixstr(&x, "test");
    put_fixstr(&x, "payload");
    put(&x, "\x82", 1);
    put_fixstr(&x, "device_id");
    put_fixstr(&x, "dev-17");
    put_fixstr(&x, "temp");
    put(&x, "\xcb\x40\x35\x80\x00\x00\x00\x00\x00", 9); /* 21.5 */
    put_fixstr(&x, "prev");
    put_bin32(&x, zero);
    /* hash = SHA-256(prev || 0x8a || entries seq..prev) */
    uint8_t h[32];
    uint8_t *hashed = malloc(x.n);
    hashed[0] = 0x8a;
    memcpy(hashed + 1, x.b + 1, x.n - 1);
    sha256(zero, 32, hashed, x.n, h);
    free(hashed);
    put_fixstr(&x, "hash");
    put_bin32(&x, h);
    assert_int_equal(ev.raw_len, x.n);
    assert_memory_equal(ev.raw, x.b, x.n);
    assert_memory_equal(ev.hash, h, 32);
    uint8_t again[LOG_HASH_LEN];
    log_event_hash(&ev, again);
    assert_memory_equal(again, h, LOG_HASH_LEN);

    /* the JSON form */
    char ing[40], hex[65], want[1024];
    cairn_time_format(ev.ingested, ing, sizeof ing);
    cairn_hex(h, 32, hex);
    snprintf(want, sizeof want,
             "{\"seq\":1,\"time\":\"2026-11-21T10:00:00.250Z\",\"ingested\":\"%s\","
             "\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"dev-17\",\"id\":\"msg-1\","
             "\"source\":\"test\",\"payload\":{\"device_id\":\"dev-17\",\"temp\":21.5},"
             "\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\","
             "\"hash\":\"%s\"}",
             ing, hex);
    struct cairn_buf b;
    cairn_buf_init(&b, 1u << 16);
    assert_int_equal(log_event_json(&ev, &b), 0);
    assert_int_equal(cairn_buf_putc(&b, '\0'), 0);
    assert_string_equal((const char *)b.data, want);

    char hex2[65];
    cairn_hex(ev2.hash, 32, hex2);
    cairn_time_format(ev2.ingested, ing, sizeof ing);
    snprintf(want, sizeof want,
             "{\"seq\":2,\"time\":\"1970-01-01T00:00:00.000000001Z\",\"ingested\":\"%s\","
             "\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"a\\\"b\",\"id\":null,"
             "\"source\":\"test\",\"payload\":{},\"prev\":\"%s\",\"hash\":\"%s\"}",
             ing, hex, hex2);
    cairn_buf_reset(&b);
    assert_int_equal(log_event_json(&ev2, &b), 0);
    assert_int_equal(cairn_buf_putc(&b, '\0'), 0);
    assert_string_equal((const char *)b.data, want);
    cairn_buf_deinit(&b);

    /* decoding refuses what is not a canonical envelope */
    struct log_event bad;
    assert_int_equal(log_event_decode(ev.raw, ev.raw_len - 1, &bad), CAIRN_ECORRUPT);
    assert_int_equal(log_event_decode(ev.raw, 10, &bad), CAIRN_ECORRUPT);
    uint8_t *copy = malloc(ev.raw_len);
    memcpy(copy, ev.raw, ev.raw_len);
    copy[0] = 0x8a;
    assert_int_equal(log_event_decode(copy, ev.raw_len, &bad), CAIRN_ECORRUPT);
    copy[0] = 0x8b;
    copy[2] = 'S'; /* "Seq" */
    assert_int_equal(log_event_decode(copy, ev.raw_len, &bad), CAIRN_ECORRUPT);
    free(copy);

    uint8_t h2[LOG_HASH_LEN];
    memcpy(h2, ev2.hash, LOG_HASH_LEN);
    log_snap_end(s);
    struct log_verify_report r;
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 2);
    assert_memory_equal(r.head, h2, LOG_HASH_LEN);
    log_close(log);
    tin_free(&t[0]);
    tin_free(&t[1]);
    scratch_free(dir);
}

/* ====================================================================== reading */

static void expect_entity(struct log_snap *s, const char *tenant, const char *key, uint64_t from,
                          const uint64_t *want, size_t n)
{
    struct cairn_str t = {tenant, strlen(tenant)}, k = {key, strlen(key)};
    struct log_iter *it;
    struct log_event ev;
    assert_int_equal(log_iter_open(s, from, &t, &k, &it), 0);
    size_t i = 0;
    int rc;
    while ((rc = log_iter_next(it, &ev)) == 0) {
        if (i >= n || ev.seq != want[i])
            fail_msg("%s/%s from %llu: item %zu is seq %llu, want %llu", tenant, key,
                     (unsigned long long)from, i, (unsigned long long)ev.seq,
                     (unsigned long long)(i < n ? want[i] : 0));
        assert_int_equal(ev.tenant.n, strlen(tenant));
        assert_memory_equal(ev.tenant.p, tenant, ev.tenant.n);
        assert_int_equal(ev.key.n, strlen(key));
        assert_memory_equal(ev.key.p, key, ev.key.n);
        i++;
    }
    assert_int_equal(rc, CAIRN_ENOTFOUND);
    assert_int_equal(i, n);
    /* the end stays the end */
    assert_int_equal(log_iter_next(it, &ev), CAIRN_ENOTFOUND);
    log_iter_close(it);
}

static void expect_all(struct log_snap *s, uint64_t from, uint64_t first, uint64_t last)
{
    struct log_iter *it;
    struct log_event ev;
    assert_int_equal(log_iter_open(s, from, NULL, NULL, &it), 0);
    uint64_t want = first;
    int rc;
    while ((rc = log_iter_next(it, &ev)) == 0)
        assert_int_equal(ev.seq, want++);
    assert_int_equal(rc, CAIRN_ENOTFOUND);
    assert_int_equal(want, last + 1);
    log_iter_close(it);
}

static uint64_t last_of(struct log_snap *s, const char *tenant, const char *key)
{
    struct cairn_str t = {tenant, strlen(tenant)}, k = {key, strlen(key)};
    uint64_t seq = 12345;
    assert_int_equal(log_snap_last_of(s, &t, &k, &seq), 0);
    return seq;
}

/* Entity reads of test_entity_reads' log of N events. */
static void check_entities(struct log_snap *s, uint64_t N)
{
    static const uint64_t t1a[] = {1, 4, 5, 8}, t1b[] = {2, 6}, t2a[] = {3, 7}, t1ab[] = {9};
    expect_entity(s, "t1", "a", 0, t1a, 4);
    expect_entity(s, "t1", "a", 1, t1a, 4);
    expect_entity(s, "t1", "a", 2, t1a + 1, 3);
    expect_entity(s, "t1", "a", 5, t1a + 2, 2);
    expect_entity(s, "t1", "a", 6, t1a + 3, 1);
    expect_entity(s, "t1", "a", 9, NULL, 0);
    expect_entity(s, "t1", "b", 0, t1b, 2);
    expect_entity(s, "t2", "a", 0, t2a, 2);
    expect_entity(s, "t2", "a", 4, t2a + 1, 1);
    expect_entity(s, "t1", "ab", 0, t1ab, 1); /* "a" is a prefix of "ab": not mixed */
    expect_entity(s, "t1", "zz", 0, NULL, 0);
    expect_entity(s, "t1a", "", 0, NULL, 0); /* an empty key is not indexed */
    expect_entity(s, "t", "1a", 0, NULL, 0); /* tenant "t" + key "1a" is not "t1"+"a" */
    expect_all(s, 0, 1, N);
    expect_all(s, 7, 7, N);
    expect_all(s, N, N, N);
    expect_all(s, N + 1, N + 1, N);

    assert_int_equal(last_of(s, "t1", "a"), 8);
    assert_int_equal(last_of(s, "t1", "b"), 6);
    assert_int_equal(last_of(s, "t2", "a"), 7);
    assert_int_equal(last_of(s, "t1", "ab"), 9);
    assert_int_equal(last_of(s, "t2", "b"), 0);
    assert_int_equal(last_of(s, "nobody", "a"), 0);
}

static void test_entity_reads(void **state)
{
    (void)state;
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = open_log(dir, 0);
    /* seq:        1      2      3      4      5      6      7      8      9       10 */
    static const char *const tenants[] = {"t1", "t1", "t2", "t1", "t1",
                                          "t1", "t2", "t1", "t1", "t1a"};
    static const char *const keys[] = {"a", "b", "a", "a", "a", "b", "a", "a", "ab", ""};
    enum { N = 10 };
    struct tin t[N];
    memset(t, 0, sizeof t);
    struct log_result res[N];
    for (int i = 0; i < N; i++)
        tin_setj(&t[i], tenants[i], keys[i], NULL, T0 + i, "{\"x\":1}");
    append_tins(log, t, 4, res); /* two batches; the index commits the first only */
    assert_int_equal(log_index_flush(log), 0);
    append_tins(log, t + 4, N - 4, res + 4);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i].seq, i + 1);

    struct log_snap *s;
    assert_int_equal(log_snap_begin(log, &s), 0);
    check_entities(s, N);
    log_snap_end(s);
    /* the same once the index covers everything (above, seqs 5..10 came
     * from scanning the log past what the index had committed) */
    assert_int_equal(log_index_flush(log), 0);
    assert_int_equal(log_snap_begin(log, &s), 0);
    check_entities(s, N);

    /* a snapshot does not see later appends (MVCC) */
    struct tin more = {{{0}}};
    tin_setj(&more, "t1", "a", NULL, T0 + 100, "{\"x\":2}");
    struct log_result r = append1(log, &more);
    assert_int_equal(r.seq, N + 1);
    uint64_t seq;
    log_snap_head(s, &seq, NULL);
    assert_int_equal(seq, N);
    assert_int_equal(last_of(s, "t1", "a"), 8);
    struct log_event ev;
    assert_int_equal(log_snap_get(s, N + 1, &ev), CAIRN_ENOTFOUND);
    log_snap_end(s);
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(last_of(s, "t1", "a"), N + 1);
    static const uint64_t t1a2[] = {8, N + 1};
    expect_entity(s, "t1", "a", 7, t1a2, 2);
    log_snap_end(s);

    /* over-long tenant or key: refused, not overflowed */
    char longkey[CAIRN_KEY_MAX + 2];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    struct cairn_str tt = {"t1", 2}, kk = {longkey, strlen(longkey)};
    struct log_iter *it = NULL;
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_iter_open(s, 0, &tt, &kk, &it), CAIRN_EINVAL);
    log_snap_end(s);

    /* reopened, the chain goes on where it was */
    uint8_t h_before[LOG_HASH_LEN];
    assert_int_equal(log_head(log, &seq, h_before), 0);
    log_close(log);
    log = open_log(dir, 0);
    assert_int_equal(head_seq(log), N + 1);
    tin_setj(&more, "t1", "a", NULL, T0 + 101, "{\"x\":3}");
    r = append1(log, &more);
    assert_int_equal(r.seq, N + 2);
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_snap_get(s, N + 2, &ev), 0);
    assert_memory_equal(ev.prev, h_before, LOG_HASH_LEN);
    log_snap_end(s);
    struct log_verify_report vr;
    assert_int_equal(log_verify(log, 0, 0, &vr), 0);
    assert_true(vr.ok);
    assert_int_equal(vr.events, N + 2);
    log_close(log);

    /* a read-only log cannot append */
    struct log_config ro = {.dir = dir, .readonly = true};
    assert_int_equal(log_open(&log, &ro), 0);
    struct log_result rr;
    assert_int_equal(log_append(log, &more.in, &rr, 1), CAIRN_EINVAL);
    assert_int_equal(head_seq(log), N + 2);
    log_close(log);

    tin_free(&more);
    for (int i = 0; i < N; i++)
        tin_free(&t[i]);
    scratch_free(dir);
}

/* An empty log: head 0 and a zero hash, verify ok with no events. */
static void test_empty(void **state)
{
    (void)state;
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = open_log(dir, 0);
    uint64_t seq = 99;
    uint8_t h[LOG_HASH_LEN], zero[LOG_HASH_LEN] = {0};
    memset(h, 0xff, sizeof h);
    assert_int_equal(log_head(log, &seq, h), 0);
    assert_int_equal(seq, 0);
    assert_memory_equal(h, zero, LOG_HASH_LEN);
    struct log_verify_report r;
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 0);
    log_close(log);
    scratch_free(dir);
}

/* More events than one verify chunk (65 536): the chunk edge is checked too. */
static void test_verify_chunks(void **state)
{
    (void)state;
    enum { N = 70000, BATCH = 5000, EDGE = 65537 };
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = open_log(dir, 0);
    struct tin *t = tins_new(BATCH);
    struct log_result *res = calloc(BATCH, sizeof *res);
    for (unsigned at = 0; at < N; at += BATCH) {
        for (unsigned i = 0; i < BATCH; i++)
            tin_setj(&t[i], "c", "k", NULL, T0 + at + i, "{\"v\":1}");
        append_tins(log, t, BATCH, res);
        assert_int_equal(res[BATCH - 1].seq, at + BATCH);
    }
    struct log_verify_report r;
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, N);
    log_close(log);

    size_t n;
    uint8_t *orig = raw_get(dir, EDGE, &n);
    uint8_t *bad = malloc(n);
    memcpy(bad, orig, n);
    bad[n - 39 - 1] ^= 0x01; /* prev of the first event of the second chunk */
    raw_put(dir, EDGE, bad, n);
    const struct expect x[] = {
        {0, 0, false, EDGE, EDGE - 1, PREV_MISMATCH},
        {0, EDGE - 1, true, 0, EDGE - 1, NULL},
        {EDGE - 10, 0, false, EDGE, 10, PREV_MISMATCH},
    };
    check_verify(dir, x, sizeof x / sizeof *x);
    free(bad);
    free(orig);
    free(res);
    tins_free(t, BATCH);
    scratch_free(dir);
}

int main(void)
{
    const struct CMUnitTest chain[] = {
        cmocka_unit_test(test_verify_whole),   cmocka_unit_test(test_verify_ranges),
        cmocka_unit_test(test_tamper_payload), cmocka_unit_test(test_tamper_hash),
        cmocka_unit_test(test_tamper_prev),    cmocka_unit_test(test_tamper_truncated),
        cmocka_unit_test(test_tamper_missing), cmocka_unit_test(test_tamper_last),
    };
    const struct CMUnitTest others[] = {
        cmocka_unit_test(test_envelope),      cmocka_unit_test(test_envelope_packer),
        cmocka_unit_test(test_entity_reads),  cmocka_unit_test(test_empty),
        cmocka_unit_test(test_verify_chunks),
    };
    int failed = cmocka_run_group_tests_name("chain", chain, chain_setup, chain_teardown);
    failed += cmocka_run_group_tests_name("log", others, NULL, NULL);
    return failed;
}
