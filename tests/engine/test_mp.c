/*
 * test_mp.c — the msgpack helpers of handler.h that the hot paths use
 * instead of msgpack-c:
 *
 *  - the direct writers (mpd_*) write the very bytes msgpack-c's packer
 *    writes, at every size boundary of every header and integer format
 *    (documents written back by a cache must be byte-identical to the ones
 *    packed per event: the state digest depends on it);
 *  - mp_raw_len measures any object msgpack-c can decode, nested or not,
 *    and refuses every truncation, a never-used type byte, and counts
 *    larger than the bytes left;
 *  - mp_raw_get reads a field of a map's bytes as mp_get finds it in the
 *    decoded map, mp_raw_fields several at once, and mp_get_many finds
 *    several as mp_get does;
 *  - the packer (mpw_*), which writes scalars and strings directly when
 *    its buffer has room and through msgpack-c otherwise, writes msgpack-c's
 *    bytes either way;
 *  - mp_unpack decodes the very objects msgpack_unpack decodes (types,
 *    values, strings pointing at the same bytes) and refuses what it
 *    refuses: every truncation, nesting past 32, and thousands of
 *    mutations of a sample.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../codec_check.h"
#include "handler.h"

/* msgpack-c's bytes of one packing call (into sb, reset first). */
static void expect_same(msgpack_sbuffer *sb, const uint8_t *mine, const uint8_t *end)
{
    assert_int_equal((size_t)(end - mine), sb->size);
    assert_memory_equal(mine, sb->data, sb->size);
    msgpack_sbuffer_clear(sb);
}

static void test_direct_writers_match_msgpack_c(void **state)
{
    (void)state;
    static const int64_t ints[] = {
        INT64_MIN,    -2147483649LL, -2147483648LL, -32769, -32768, -129,
        -128,         -33,           -32,           -1,     0,      1,
        127,          128,           255,           256,    65535,  65536,
        4294967295LL, 4294967296LL,  INT64_MAX};
    static const uint32_t counts[] = {0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint8_t *buf = malloc(70000 + MPD_HDR_MAX);
    char *text = malloc(70000);
    assert_non_null(buf);
    assert_non_null(text);
    memset(text, 'x', 70000);
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        msgpack_pack_int64(&pk, ints[i]);
        expect_same(&sb, buf, mpd_i64(buf, ints[i]));
        if (ints[i] >= 0) {
            msgpack_pack_uint64(&pk, (uint64_t)ints[i]);
            expect_same(&sb, buf, mpd_u64(buf, (uint64_t)ints[i]));
        }
    }
    msgpack_pack_uint64(&pk, UINT64_MAX);
    expect_same(&sb, buf, mpd_u64(buf, UINT64_MAX));
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        msgpack_pack_map(&pk, counts[i]);
        expect_same(&sb, buf, mpd_map(buf, counts[i]));
        msgpack_pack_array(&pk, counts[i]);
        expect_same(&sb, buf, mpd_array(buf, counts[i]));
        msgpack_pack_str_with_body(&pk, text, counts[i]);
        expect_same(&sb, buf, mpd_strn(buf, text, counts[i]));
    }
    msgpack_pack_true(&pk);
    expect_same(&sb, buf, mpd_bool(buf, true));
    msgpack_pack_false(&pk);
    expect_same(&sb, buf, mpd_bool(buf, false));
    msgpack_pack_nil(&pk);
    expect_same(&sb, buf, mpd_nil(buf));
    msgpack_pack_str_with_body(&pk, "last_seq", 8);
    expect_same(&sb, buf, mpd_key(buf, "last_seq"));
    /* mpd_time writes what mpw_kv_time's value is. */
    char t[MPD_TIME_MAX];
    size_t tn = cairn_time_format(1795255200123000000LL, t, sizeof t);
    msgpack_pack_str_with_body(&pk, t, tn);
    expect_same(&sb, buf, mpd_time(buf, 1795255200123000000LL));
    free(text);
    free(buf);
    msgpack_sbuffer_destroy(&sb);
}

/* One object of every kind, nested. */
static void pack_sample(msgpack_packer *pk)
{
    static const char bin[300] = {1, 2, 3};
    msgpack_pack_map(pk, 7);
    msgpack_pack_str_with_body(pk, "ints", 4);
    msgpack_pack_array(pk, 5);
    msgpack_pack_int64(pk, -1);
    msgpack_pack_int64(pk, -200);
    msgpack_pack_uint64(pk, 300);
    msgpack_pack_uint64(pk, 1ull << 40);
    msgpack_pack_int64(pk, INT64_MIN);
    msgpack_pack_str_with_body(pk, "floats", 6);
    msgpack_pack_array(pk, 2);
    msgpack_pack_float(pk, 1.5f);
    msgpack_pack_double(pk, -2.25);
    msgpack_pack_str_with_body(pk, "bin", 3);
    msgpack_pack_bin_with_body(pk, bin, sizeof bin);
    msgpack_pack_str_with_body(pk, "ext", 3);
    msgpack_pack_array(pk, 3);
    msgpack_pack_ext_with_body(pk, bin, 4, 7);   /* fixext 4 */
    msgpack_pack_ext_with_body(pk, bin, 5, 7);   /* ext 8 */
    msgpack_pack_ext_with_body(pk, bin, 300, 7); /* ext 16 */
    msgpack_pack_str_with_body(pk, "deep", 4);
    for (int i = 0; i < 24; i++) /* CAIRN_DEPTH_MAX; msgpack-c decodes up to 32 */
        msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 0);
    msgpack_pack_str_with_body(pk, "long", 4);
    msgpack_pack_array(pk, 20);
    for (int i = 0; i < 20; i++)
        msgpack_pack_str_with_body(pk, bin, (size_t)i * 15);
    msgpack_pack_str_with_body(pk, "scalars", 7);
    msgpack_pack_array(pk, 3);
    msgpack_pack_nil(pk);
    msgpack_pack_true(pk);
    msgpack_pack_false(pk);
}

static void test_raw_len(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_sample(&pk);
    size_t whole = sb.size;
    msgpack_pack_uint64(&pk, 5); /* trailing bytes are not part of it */
    const uint8_t *p = (const uint8_t *)sb.data;
    assert_int_equal(mp_raw_len(p, sb.size), whole);
    /* msgpack-c agrees on where it ends. */
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, whole);
    msgpack_unpacked_destroy(&u);
    for (size_t n = 0; n < whole; n++)
        assert_int_equal(mp_raw_len(p, n), 0);
    /* 0xc1 is never used; a map claiming more pairs than bytes left. */
    assert_int_equal(mp_raw_len((const uint8_t *)"\xc1", 1), 0);
    assert_int_equal(mp_raw_len((const uint8_t *)"\xdf\xff\xff\xff\xff\x01\x02", 7), 0);
    assert_int_equal(mp_raw_len((const uint8_t *)"\x92\x01\x02", 3), 3);
    assert_int_equal(mp_raw_len((const uint8_t *)"\x81\xa1k\x7f", 4), 4);
    msgpack_sbuffer_destroy(&sb);
}

/* mp_raw_get finds what mp_get finds in the decoded map, in any of a
 * key's string encodings, the first of two equal keys; refuses
 * containers, missing keys, non-maps and every truncation. */
static void test_raw_get(void **state)
{
    (void)state;
    /* {"name":"cpu", "labels":{"a":1}, "value":-2.5, str8 "name":7, "n":true,
     *  "big":300, "nil":nil} */
    static const uint8_t m[] = {
        0x87, 0xa4, 'n',  'a',  'm', 'e',  0xa3, 'c',  'p',  'u', 0xa6, 'l', 'a',  'b',  'e',
        'l',  's',  0x81, 0xa1, 'a', 0x01, 0xa5, 'v',  'a',  'l', 'u',  'e', 0xcb, 0xc0, 0x04,
        0,    0,    0,    0,    0,   0,    0xd9, 4,    'n',  'a', 'm',  'e', 0x07, 0xa1, 'n',
        0xc3, 0xa3, 'b',  'i',  'g', 0xcd, 0x01, 0x2c, 0xa3, 'n', 'i',  'l', 0xc0};
    msgpack_zone z;
    msgpack_object body, o;
    assert_true(msgpack_zone_init(&z, 1024));
    assert_int_equal(mp_unpack(m, sizeof m, &z, &body, NULL), 0);
    static const char *const keys[] = {"name", "value", "n", "big", "nil"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        assert_true(mp_raw_get(m, sizeof m, keys[i], &o));
        assert_true(codec_same(&o, mp_get(&body, keys[i])));
    }
    struct cairn_str s;
    assert_true(mp_raw_get(m, sizeof m, "name", &o) && mp_str(&o, &s));
    assert_true(s.n == 3 && !memcmp(s.p, "cpu", 3));     /* the first "name" */
    assert_false(mp_raw_get(m, sizeof m, "labels", &o)); /* a map */
    assert_false(mp_raw_get(m, sizeof m, "nam", &o));
    assert_false(mp_raw_get(m, sizeof m, "names", &o));
    assert_false(mp_raw_get((const uint8_t *)"\x92\xa1n\x01", 4, "n", &o)); /* not a map */
    /* the key only in its str8 form */
    static const uint8_t m8[] = {0x81, 0xd9, 5, 'v', 'a', 'l', 'u', 'e', 0x2a};
    assert_true(mp_raw_get(m8, sizeof m8, "value", &o));
    assert_true(o.type == MSGPACK_OBJECT_POSITIVE_INTEGER && o.via.u64 == 42);
    /* truncated: never past the bytes, found only when whole */
    for (size_t n = 0; n < sizeof m; n++) {
        bool got = mp_raw_get(m, n, "nil", &o);
        assert_false(got);
    }

    /* mp_raw_fields: several keys in one pass, each as mp_raw_get reads
     * it; `present` also has the container and the missing keys' bits
     * clear; mp_get_many: each as mp_get */
    static const char *const many[] = {"nil", "labels", "name", "missing", "big", "n", "value"};
    enum { NK = sizeof many / sizeof *many };
    msgpack_object out[NK];
    const msgpack_object *got[NK];
    uint64_t present, bits = mp_raw_fields(m, sizeof m, many, NK, out, &present);
    mp_get_many(&body, many, NK, got);
    for (size_t i = 0; i < NK; i++) {
        bool one = mp_raw_get(m, sizeof m, many[i], &o);
        assert_int_equal(bits >> i & 1, one);
        if (one)
            assert_true(codec_same(&out[i], &o));
        assert_int_equal(present >> i & 1, mp_get(&body, many[i]) != NULL);
        assert_ptr_equal(got[i], mp_get(&body, many[i]));
    }
    assert_int_equal(present, 0x77);        /* all but "missing" */
    assert_int_equal(bits, 0x75);           /* and not "labels", a map */
    for (size_t n = 0; n < sizeof m; n++) { /* truncated: what is whole before the cut */
        uint64_t b = mp_raw_fields(m, n, many, NK, out, &present);
        assert_int_equal(b & ~present, 0);
        assert_int_equal(b & 1, 0); /* "nil" is last: never whole */
    }
    assert_int_equal(mp_raw_fields((const uint8_t *)"\x92\xa1n\x01", 4, many, NK, out, &present),
                     0);
    assert_int_equal(present, 0);
    mp_get_many(NULL, many, NK, got);
    for (size_t i = 0; i < NK; i++)
        assert_null(got[i]);
    msgpack_zone_destroy(&z);
}

/* mp_unpack and msgpack_unpack on p[0..n): both fail, or both decode the
 * same object of the same length. Returns whether they decoded. */
static bool unpack_agree(const uint8_t *p, size_t n)
{
    msgpack_zone z1, z2;
    msgpack_zone_init(&z1, 256);
    msgpack_zone_init(&z2, 256);
    msgpack_object a, b;
    size_t used = 0, off = 0;
    bool mine = mp_unpack(p, n, &z1, &a, &used) == 0;
    msgpack_unpack_return urc = msgpack_unpack((const char *)p, n, &off, &z2, &b);
    bool theirs = urc == MSGPACK_UNPACK_SUCCESS || urc == MSGPACK_UNPACK_EXTRA_BYTES;
    assert_int_equal(mine, theirs);
    if (mine) {
        assert_int_equal(used, off);
        assert_true(codec_same(&a, &b));
    }
    msgpack_zone_destroy(&z1);
    msgpack_zone_destroy(&z2);
    return mine;
}

/* Packs the same values through mpw_* into b and through msgpack-c into
 * sb. */
static void pack_both(struct mpw *w, msgpack_packer *pk, const char *text)
{
    static const int64_t ints[] = {INT64_MIN, -2147483649LL, -32769, -129, -33,   -32,         -1,
                                   0,         127,           128,    256,  65536, 4294967296LL};
    static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        msgpack_object o = {.type = ints[i] < 0 ? MSGPACK_OBJECT_NEGATIVE_INTEGER
                                                : MSGPACK_OBJECT_POSITIVE_INTEGER};
        if (ints[i] < 0)
            o.via.i64 = ints[i];
        else
            o.via.u64 = (uint64_t)ints[i];
        mpw_kv_obj(w, "int", &o);
        mpw_kv_i64(w, "i64", ints[i]);
        msgpack_pack_str_with_body(pk, "int", 3);
        msgpack_pack_object(pk, o);
        msgpack_pack_str_with_body(pk, "i64", 3);
        msgpack_pack_int64(pk, ints[i]);
        if (ints[i] >= 0) {
            mpw_kv_u64(w, "u64", (uint64_t)ints[i]);
            msgpack_pack_str_with_body(pk, "u64", 3);
            msgpack_pack_uint64(pk, (uint64_t)ints[i]);
        }
    }
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        msgpack_object o = {.type = MSGPACK_OBJECT_STR};
        o.via.str.ptr = text;
        o.via.str.size = (uint32_t)lens[i];
        struct cairn_str cs = {text, lens[i]};
        mpw_obj(w, &o);
        mpw_strn(w, &cs);
        msgpack_pack_object(pk, o);
        msgpack_pack_str_with_body(pk, text, lens[i]);
    }
    msgpack_object scalars[6] = {
        {.type = MSGPACK_OBJECT_NIL},     {.type = MSGPACK_OBJECT_BOOLEAN},
        {.type = MSGPACK_OBJECT_BOOLEAN}, {.type = MSGPACK_OBJECT_FLOAT32},
        {.type = MSGPACK_OBJECT_FLOAT64}, {.type = MSGPACK_OBJECT_FLOAT64}};
    scalars[2].via.boolean = true;
    scalars[3].via.f64 = 1.1; /* packed as the float 1.1f */
    scalars[4].via.f64 = -2.25;
    scalars[5].via.f64 = 1e300;
    for (size_t i = 0; i < 6; i++) {
        mpw_obj(w, &scalars[i]);
        msgpack_pack_object(pk, scalars[i]);
    }
    mpw_obj(w, NULL);
    msgpack_pack_nil(pk);
    mpw_kv_time(w, "t", 1700000000123456789LL);
    mpw_kv_cstr(w, "c", "value");
    msgpack_pack_str_with_body(pk, "t", 1);
    msgpack_pack_str_with_body(pk, "2023-11-14T22:13:20.123456789Z", 30);
    msgpack_pack_str_with_body(pk, "c", 1);
    msgpack_pack_str_with_body(pk, "value", 5);
}

static void test_packer_matches_msgpack_c(void **state)
{
    (void)state;
    char *text = malloc(65536);
    assert_non_null(text);
    memset(text, 'y', 65536);
    /* reserved: the direct writes; empty: every write grows the buffer
     * (msgpack-c's packer and mpw_write) */
    for (int reserved = 0; reserved < 2; reserved++) {
        struct cairn_buf b;
        struct mpw w;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        cairn_buf_init(&b, 1u << 20);
        if (reserved)
            assert_int_equal(cairn_buf_reserve(&b, 1u << 19), 0);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        mpw_init(&w, &b);
        pack_both(&w, &pk, text);
        assert_int_equal(mpw_finish(&w), 0);
        assert_int_equal(b.len, sb.size);
        assert_memory_equal(b.data, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        cairn_buf_deinit(&b);
    }
    /* past the buffer's maximum: the error sticks, nothing is written
     * past it */
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, 16);
    mpw_init(&w, &b);
    struct cairn_str big = {text, 100};
    mpw_strn(&w, &big);
    mpw_kv_u64(&w, "k", 1);
    assert_int_not_equal(mpw_finish(&w), 0);
    assert_true(b.len <= 16);
    cairn_buf_deinit(&b);
    free(text);
}

static bool mine_decodes(const uint8_t *p, size_t n)
{
    msgpack_zone z;
    msgpack_object o;
    msgpack_zone_init(&z, 256);
    bool ok = mp_unpack(p, n, &z, &o, NULL) == 0;
    msgpack_zone_destroy(&z);
    return ok;
}

static void test_unpack_matches_msgpack_c(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_sample(&pk);
    size_t whole = sb.size;
    msgpack_pack_uint64(&pk, 5); /* trailing bytes: left alone */
    const uint8_t *p = (const uint8_t *)sb.data;
    assert_true(unpack_agree(p, sb.size));
    for (size_t n = 0; n < whole; n++)
        assert_false(unpack_agree(p, n));
    /* Every integer and float format, empty and fixext-16 ones. */
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 15);
    msgpack_pack_int8(&pk, 5); /* a non-negative int 8: a positive integer */
    msgpack_pack_int8(&pk, -100);
    msgpack_pack_int16(&pk, -30000);
    msgpack_pack_int32(&pk, -2000000000);
    msgpack_pack_int64(&pk, 7);
    msgpack_pack_uint8(&pk, 200);
    msgpack_pack_uint16(&pk, 60000);
    msgpack_pack_uint32(&pk, 4000000000u);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    msgpack_pack_float(&pk, -0.0f);
    msgpack_pack_str(&pk, 0);
    msgpack_pack_bin(&pk, 0);
    msgpack_pack_ext_with_body(&pk, "0123456789abcdef", 16, -1);
    msgpack_pack_ext(&pk, 0, 3);
    msgpack_pack_array(&pk, 0);
    static const uint8_t raw_ints[] = {0xd0, 0x05, 0xd1, 0x00, 0x05, 0xd3, 0, 0, 0, 0, 0, 0, 0, 9};
    msgpack_sbuffer_write(&sb, (const char *)raw_ints, sizeof raw_ints);
    p = (const uint8_t *)sb.data;
    assert_true(unpack_agree(p, sb.size));
    assert_true(unpack_agree(p + sb.size - sizeof raw_ints, 2));
    assert_true(unpack_agree(p + sb.size - sizeof raw_ints + 2, 3));
    assert_true(unpack_agree(p + sb.size - 9, 9));
    /* Nesting: msgpack-c refuses a container inside 32 open ones. */
    for (int depth = 30; depth <= 34; depth++) {
        msgpack_sbuffer_clear(&sb);
        for (int i = 0; i < depth; i++)
            msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 0);
        assert_int_equal(unpack_agree((const uint8_t *)sb.data, sb.size), depth < 32);
    }
    assert_false(unpack_agree((const uint8_t *)"\xc1", 1));
    /* (msgpack-c would try to allocate the 2^32 pairs first) */
    assert_false(mine_decodes((const uint8_t *)"\xdf\xff\xff\xff\xff\x01\x02", 7));
    /* Mutations of the sample: wherever the result is well-formed (so
     * msgpack-c's allocations stay bounded by its length), they agree. */
    msgpack_sbuffer_clear(&sb);
    pack_sample(&pk);
    uint8_t *m = malloc(sb.size);
    assert_non_null(m);
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 20000; round++) {
        memcpy(m, sb.data, sb.size);
        for (int k = 0; k < 1 + round % 4; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            m[x % sb.size] = (uint8_t)(x >> 32);
        }
        size_t n = sb.size - (round % 3 ? 0 : (x >> 40) % sb.size);
        if (mp_raw_len(m, n))
            unpack_agree(m, n);
        else
            assert_false(mine_decodes(m, n));
    }
    free(m);
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_writers_match_msgpack_c),
        cmocka_unit_test(test_raw_len),
        cmocka_unit_test(test_raw_get),
        cmocka_unit_test(test_unpack_matches_msgpack_c),
        cmocka_unit_test(test_packer_matches_msgpack_c),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
