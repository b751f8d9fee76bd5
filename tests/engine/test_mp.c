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
 *    larger than the bytes left.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_writers_match_msgpack_c),
        cmocka_unit_test(test_raw_len),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
