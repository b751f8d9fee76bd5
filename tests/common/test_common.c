/*
 * test_common.c — the common module: RFC 3339 time, bounded buffers, JSON
 * string escaping, the JSON <-> msgpack codec (key order, integers, reals,
 * the depth limit), hex and big-endian helpers, error helpers, the
 * canonical msgpack reader (cairn_rd_map, cairn_rd_str).
 *
 * Every expected value is spelled out literally: a test that recomputes its
 * expectation with the code under test cannot fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../codec_check.h"
#include "common.h"

#include <msgpack.h>

/* 2026-11-21T10:00:00Z (date -u -d 2026-11-21T10:00:00Z +%s). */
#define T_2026_11_21 1795255200LL
#define NS 1000000000LL

static int64_t parse_ok(const char *s)
{
    int64_t t = 0x5a5a5a5a;
    int rc = cairn_time_parse(s, strlen(s), &t);
    if (rc)
        fail_msg("cairn_time_parse refused \"%s\" (%d)", s, rc);
    return t;
}

static void parse_bad(const char *s)
{
    int64_t t = 12345;
    int rc = cairn_time_parse(s, strlen(s), &t);
    if (rc != CAIRN_EINVAL)
        fail_msg("cairn_time_parse accepted \"%s\" (rc %d, t %lld)", s, rc, (long long)t);
    assert_int_equal(t, 12345); /* untouched on failure */
}

/* ====================================================================== time: parsing */

static void test_time_parse_basic(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(parse_ok("2026-11-21T10:00:00Z"), T_2026_11_21 * NS);
    /* lower-case t/z and a space separator are allowed by RFC 3339 5.6 */
    assert_int_equal(parse_ok("2026-11-21t10:00:00z"), T_2026_11_21 * NS);
    assert_int_equal(parse_ok("2026-11-21 10:00:00Z"), T_2026_11_21 * NS);
    assert_int_equal(parse_ok("1969-12-31T23:59:59Z"), -1 * NS);
    assert_int_equal(parse_ok("1969-12-31T23:59:59.5Z"), -NS / 2);
    assert_int_equal(parse_ok("2016-12-31T23:59:59Z"), 1483228799LL * NS);
}

static void test_time_parse_offsets(void **state)
{
    (void)state;
    int64_t want = T_2026_11_21 * NS;
    assert_int_equal(parse_ok("2026-11-21T12:00:00+02:00"), want);
    assert_int_equal(parse_ok("2026-11-21T04:30:00-05:30"), want);
    assert_int_equal(parse_ok("2026-11-21T10:00:00+00:00"), want);
    assert_int_equal(parse_ok("2026-11-21T10:00:00-00:00"), want);
    /* an offset that crosses midnight and the day before */
    assert_int_equal(parse_ok("2026-11-22T09:59:00+23:59"), want);
    assert_int_equal(parse_ok("2026-11-20T10:01:00-23:59"), want);
    /* the fraction stays when an offset is applied */
    assert_int_equal(parse_ok("2026-11-21T11:00:00.250+01:00"), want + 250000000);
}

static void test_time_parse_fractions(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t frac;
    } cases[] = {
        {"2026-11-21T10:00:00Z", 0},
        {"2026-11-21T10:00:00.1Z", 100000000},
        {"2026-11-21T10:00:00.12Z", 120000000},
        {"2026-11-21T10:00:00.123Z", 123000000},
        {"2026-11-21T10:00:00.1234Z", 123400000},
        {"2026-11-21T10:00:00.12345Z", 123450000},
        {"2026-11-21T10:00:00.123456Z", 123456000},
        {"2026-11-21T10:00:00.1234567Z", 123456700},
        {"2026-11-21T10:00:00.12345678Z", 123456780},
        {"2026-11-21T10:00:00.123456789Z", 123456789},
        {"2026-11-21T10:00:00.000000001Z", 1},
        {"2026-11-21T10:00:00.999999999Z", 999999999},
        {"2026-11-21T10:00:00.0Z", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t t = parse_ok(cases[i].s);
        if (t != T_2026_11_21 * NS + cases[i].frac)
            fail_msg("%s: got %lld, want %lld", cases[i].s, (long long)t,
                     (long long)(T_2026_11_21 * NS + cases[i].frac));
    }
    /* digits past the ninth are below a nanosecond: truncated, not rounded */
    assert_int_equal(parse_ok("2026-11-21T10:00:00.1234567899Z"), T_2026_11_21 * NS + 123456789);
}

static void test_time_parse_leap(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("2024-02-29T00:00:00Z"), 1709164800LL * NS);
    assert_int_equal(parse_ok("2000-02-29T12:34:56Z"), 951827696LL * NS); /* /400: leap */
    parse_bad("2023-02-29T00:00:00Z");
    parse_bad("1900-02-29T00:00:00Z"); /* /100 and not /400: not leap */
    parse_bad("2024-02-30T00:00:00Z");
    /* a leap second folds onto the last nanosecond of its minute */
    assert_int_equal(parse_ok("2016-12-31T23:59:60Z"), 1483228799LL * NS + 999999999);
}

static void test_time_parse_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "2026",
        "2026-11-21",
        "2026-11-21T10:00:00",       /* no offset */
        "2026-11-21T10:00Z",         /* no seconds */
        "2026-11-21T10:00:00.Z",     /* empty fraction */
        "2026-11-21T10:00:00,5Z",    /* comma fraction */
        "2026-13-01T00:00:00Z",      /* month 13 */
        "2026-00-01T00:00:00Z",      /* month 0 */
        "2026-11-00T00:00:00Z",      /* day 0 */
        "2026-04-31T00:00:00Z",      /* April has 30 days */
        "2026-11-31T00:00:00Z",      /* November too */
        "2026-11-21T24:00:00Z",      /* hour 24 */
        "2026-11-21T10:60:00Z",      /* minute 60 */
        "2026-11-21T10:00:61Z",      /* second 61 */
        "2026-11-21T10:00:00+2:00",  /* one-digit offset hour */
        "2026-11-21T10:00:00+0200",  /* offset without colon */
        "2026-11-21T10:00:00+24:00", /* offset hour 24 */
        "2026-11-21T10:00:00+01:60", /* offset minute 60 */
        "2026-11-21T10:00:00ZZ",     /* trailing garbage */
        "2026-11-21T10:00:00Z ",     /* trailing space */
        " 2026-11-21T10:00:00Z",     /* leading space */
        "2026-1-21T10:00:00Z",       /* one-digit month */
        "26-11-21T10:00:00Z",        /* two-digit year */
        "2026/11/21T10:00:00Z",      /* wrong separators */
        "2026-11-21X10:00:00Z",      /* wrong T */
        "2026-11-21T10:00:00.12a4Z", /* junk inside the fraction */
        "+2026-11-21T10:00:00Z",     /* sign before the year */
        "2262-04-12T00:00:00Z",      /* past int64 ns */
        "1677-09-21T00:00:00Z",      /* before int64 ns */
        "9999-12-31T23:59:59Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        parse_bad(bad[i]);
    /* the length is respected: a valid prefix of a longer buffer parses, a
     * cut one does not */
    const char *s = "2026-11-21T10:00:00Zjunk";
    int64_t t;
    assert_int_equal(cairn_time_parse(s, 20, &t), 0);
    assert_int_equal(t, T_2026_11_21 * NS);
    assert_int_equal(cairn_time_parse(s, 19, &t), CAIRN_EINVAL);
    /* the extremes that do fit */
    assert_int_equal(parse_ok("2262-04-11T23:47:15Z"), 9223372035LL * NS);
    assert_int_equal(parse_ok("1677-09-21T00:12:45Z"), -9223372035LL * NS);
}

/* ====================================================================== time: formatting */

static void fmt_is(int64_t ns, const char *want)
{
    char out[40];
    memset(out, 'x', sizeof out);
    size_t n = cairn_time_format(ns, out, sizeof out);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
}

static void test_time_format(void **state)
{
    (void)state;
    fmt_is(0, "1970-01-01T00:00:00Z");
    fmt_is(T_2026_11_21 * NS, "2026-11-21T10:00:00Z");
    /* shortest of 0/3/6/9 digits that is exact */
    fmt_is(T_2026_11_21 * NS + 250000000, "2026-11-21T10:00:00.250Z");
    fmt_is(T_2026_11_21 * NS + 1000000, "2026-11-21T10:00:00.001Z");
    fmt_is(T_2026_11_21 * NS + 123456000, "2026-11-21T10:00:00.123456Z");
    fmt_is(T_2026_11_21 * NS + 1000, "2026-11-21T10:00:00.000001Z");
    fmt_is(T_2026_11_21 * NS + 123456789, "2026-11-21T10:00:00.123456789Z");
    fmt_is(T_2026_11_21 * NS + 1, "2026-11-21T10:00:00.000000001Z");
    fmt_is(1709164800LL * NS, "2024-02-29T00:00:00Z");
    /* before the epoch: the fraction counts forward from the second before */
    fmt_is(-1, "1969-12-31T23:59:59.999999999Z");
    fmt_is(-NS, "1969-12-31T23:59:59Z");
    fmt_is(-NS / 2, "1969-12-31T23:59:59.500Z");
    fmt_is(-86400 * NS, "1969-12-31T00:00:00Z");
    /* the whole int64 range */
    fmt_is(INT64_MAX, "2262-04-11T23:47:16.854775807Z");
    fmt_is(INT64_MIN, "1677-09-21T00:12:43.145224192Z");
}

/* The cached formatter gives cairn_time_format's bytes: seconds seen
 * again (a hit), seconds sharing a slot (64 apart: a replaced slot), every
 * fraction width, and negative times (the slow path). */
static void test_time_format_cached(void **state)
{
    (void)state;
    struct cairn_time_cache c;
    cairn_time_cache_init(&c);
    const int64_t base = T_2026_11_21 * NS;
    static const int64_t fracs[] = {0, 250000000, 123000, 7, 999999999};
    const int64_t secs[] = {0, 1, 0, 64, 0, 128, 63, 86399, 1, -1795255201LL, -9000000000LL};
    char a[48], b[48];
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < sizeof secs / sizeof *secs; i++)
            for (size_t f = 0; f < sizeof fracs / sizeof *fracs; f++) {
                int64_t ns = base + secs[i] * NS + fracs[f];
                size_t n = cairn_time_format(ns, a, sizeof a);
                size_t m = cairn_time_format_cached(&c, ns, b, sizeof b);
                assert_int_equal(m, n);
                assert_string_equal(b, a);
            }
}

static void test_time_round_trip(void **state)
{
    (void)state;
    const int64_t values[] = {
        0,
        1,
        -1,
        999999999,
        T_2026_11_21 * NS,
        T_2026_11_21 * NS + 250000000,
        T_2026_11_21 * NS + 123456,
        951827696LL * NS + 7,
        -2208988800LL * NS + 42000, /* 1900-01-01 */
        9223372035LL * NS + 999999999,
        -9223372035LL * NS,
    };
    char out[40];
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        size_t n = cairn_time_format(values[i], out, sizeof out);
        int64_t back;
        assert_int_equal(cairn_time_parse(out, n, &back), 0);
        if (back != values[i])
            fail_msg("%lld -> %s -> %lld", (long long)values[i], out, (long long)back);
    }
    /* text -> ns -> text normalises offsets and fraction widths */
    static const struct {
        const char *in, *out;
    } norm[] = {
        {"2026-11-21T12:00:00.5+02:00", "2026-11-21T10:00:00.500Z"},
        {"2026-11-21T10:00:00.000100Z", "2026-11-21T10:00:00.000100Z"},
        {"2026-11-21T10:00:00.120000000Z", "2026-11-21T10:00:00.120Z"},
        {"2024-03-01T00:30:00+01:00", "2024-02-29T23:30:00Z"},
    };
    for (size_t i = 0; i < sizeof norm / sizeof *norm; i++) {
        cairn_time_format(parse_ok(norm[i].in), out, sizeof out);
        assert_string_equal(out, norm[i].out);
    }
}

/* ====================================================================== allocation */

static void test_calloc_written(void **state)
{
    (void)state;
    /* 4 MiB: past malloc's mmap threshold, fresh pages from the kernel */
    size_t n = (size_t)1 << 19;
    uint64_t *t = cairn_calloc_written(n, sizeof *t);
    assert_non_null(t);
    for (size_t i = 0; i < n; i++)
        assert_true(t[i] == 0);
    t[n - 1] = 7;
    free(t);
    void *z = cairn_calloc_written(0, 8); /* empty: a valid pointer to free */
    assert_non_null(z);
    free(z);
    assert_null(cairn_calloc_written(SIZE_MAX / 8 + 1, 8)); /* n * size overflows */
    assert_null(cairn_calloc_written(2, SIZE_MAX));
}

/* ====================================================================== buffers */

static void test_buf_max(void **state)
{
    (void)state;
    struct cairn_buf b;
    cairn_buf_init(&b, 10);
    assert_int_equal(cairn_buf_append(&b, "0123456789", 10), 0);
    assert_int_equal(b.len, 10);
    assert_true(b.cap <= 10);
    /* one byte past the maximum is refused and leaves the buffer as it was */
    assert_int_equal(cairn_buf_append(&b, "x", 1), CAIRN_ETOOBIG);
    assert_int_equal(cairn_buf_putc(&b, 'x'), CAIRN_ETOOBIG);
    assert_int_equal(cairn_buf_puts(&b, "x"), CAIRN_ETOOBIG);
    assert_int_equal(cairn_buf_printf(&b, "%d", 1), CAIRN_ETOOBIG);
    assert_int_equal(cairn_buf_reserve(&b, 1), CAIRN_ETOOBIG);
    assert_int_equal(cairn_buf_reserve(&b, SIZE_MAX), CAIRN_ETOOBIG);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.data, "0123456789", 10);
    /* appending nothing is fine even when full */
    assert_int_equal(cairn_buf_append(&b, "", 0), 0);
    cairn_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(cairn_buf_printf(&b, "%s-%d", "abc", 12345), 0); /* 9 bytes */
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data, "abc-12345", 9);
    /* printf needs room for its terminating NUL too: 9 + 1 + NUL > 10 */
    assert_int_equal(cairn_buf_printf(&b, "%d", 7), CAIRN_ETOOBIG);
    assert_int_equal(b.len, 9);
    assert_int_equal(cairn_buf_putc(&b, '!'), 0);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.data, "abc-12345!", 10);
    /* a single append bigger than the maximum from empty */
    cairn_buf_reset(&b);
    assert_int_equal(cairn_buf_append(&b, "0123456789A", 11), CAIRN_ETOOBIG);
    assert_int_equal(b.len, 0);
    cairn_buf_deinit(&b);
    assert_null(b.data);

    /* a big buffer grows through many reallocations and keeps every byte */
    cairn_buf_init(&b, 1u << 20);
    for (unsigned i = 0; i < (1u << 20) / 4; i++)
        assert_int_equal(cairn_buf_append(&b, &i, 4), 0);
    assert_int_equal(b.len, 1u << 20);
    for (unsigned i = 0; i < (1u << 20) / 4; i++) {
        unsigned v;
        memcpy(&v, b.data + 4 * i, 4);
        assert_int_equal(v, i);
    }
    assert_int_equal(cairn_buf_putc(&b, 'x'), CAIRN_ETOOBIG);
    cairn_buf_deinit(&b);
}

static void json_str_is(const char *in, size_t n, const char *want)
{
    struct cairn_buf b;
    cairn_buf_init(&b, 1024);
    assert_int_equal(cairn_buf_json_str(&b, in, n), 0);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    cairn_buf_deinit(&b);
}

static void test_json_escape(void **state)
{
    (void)state;
    json_str_is("", 0, "\"\"");
    json_str_is("plain", 5, "\"plain\"");
    json_str_is("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    json_str_is("l1\nl2\r\tx", 8, "\"l1\\nl2\\r\\tx\"");
    json_str_is("\x01\x1f\x08\x0c", 4, "\"\\u0001\\u001f\\u0008\\u000c\"");
    /* an embedded NUL is data, not the end */
    json_str_is("a\0b", 3, "\"a\\u0000b\"");
    /* '/', DEL and UTF-8 pass through unchanged */
    json_str_is("a/b\x7f", 4, "\"a/b\x7f\"");
    json_str_is("caf\xc3\xa9 \xe2\x82\xac", 9, "\"caf\xc3\xa9 \xe2\x82\xac\"");
    /* the output is valid JSON that jansson reads back to the same bytes */
    const char raw[] = "q\"\\\n\x01z";
    struct cairn_buf b;
    cairn_buf_init(&b, 256);
    assert_int_equal(cairn_buf_json_str(&b, raw, sizeof raw - 1), 0);
    json_error_t je;
    json_t *v = json_loadb((const char *)b.data, b.len, JSON_DECODE_ANY, &je);
    assert_non_null(v);
    assert_int_equal(json_string_length(v), sizeof raw - 1);
    assert_memory_equal(json_string_value(v), raw, sizeof raw - 1);
    json_decref(v);
    /* the buffer's maximum applies */
    cairn_buf_deinit(&b);
    cairn_buf_init(&b, 8);
    assert_int_equal(cairn_buf_json_str(&b, "0123456789", 10), CAIRN_ETOOBIG);
    assert_int_equal(b.len, 0);
    cairn_buf_deinit(&b);
}

/* ====================================================================== codec */

/* JSON text -> jansson -> msgpack -> JSON text. */
static void codec_is(const char *in, const char *want)
{
    json_error_t je;
    json_t *v = json_loads(in, JSON_DECODE_ANY, &je);
    if (!v)
        fail_msg("bad test input %s: %s", in, je.text);
    struct cairn_buf mp, out;
    struct cairn_error e;
    cairn_buf_init(&mp, 1u << 20);
    cairn_buf_init(&out, 1u << 20);
    cairn_error_clear(&e);
    assert_int_equal(cairn_json_to_msgpack(v, &mp, &e), 0);
    size_t used = 0;
    assert_int_equal(cairn_msgpack_to_json(mp.data, mp.len, &out, &used), 0);
    assert_int_equal(used, mp.len);
    assert_int_equal(cairn_buf_putc(&out, '\0'), 0);
    if (strcmp((const char *)out.data, want))
        fail_msg("%s\n  -> %s\n  want %s", in, (const char *)out.data, want);
    /* and msgpack -> jansson gives the same document back */
    json_t *back = NULL;
    assert_int_equal(cairn_msgpack_to_jansson(mp.data, mp.len, &back, &used, &e), 0);
    assert_int_equal(used, mp.len);
    assert_true(json_equal(v, back));
    json_decref(back);
    json_decref(v);
    cairn_buf_deinit(&mp);
    cairn_buf_deinit(&out);
}

static void test_codec_round_trip(void **state)
{
    (void)state;
    /* key order is kept (not sorted), nesting, every scalar */
    codec_is("{\"zeta\":1,\"alpha\":{\"y\":[1,-2,{\"k\":null}],\"b\":true,\"a\":false},"
             "\"mid\":\"s\\\"\\n\",\"e\":{},\"l\":[]}",
             "{\"zeta\":1,\"alpha\":{\"y\":[1,-2,{\"k\":null}],\"b\":true,\"a\":false},"
             "\"mid\":\"s\\\"\\n\",\"e\":{},\"l\":[]}");
    /* integers at the edges */
    codec_is("[0,1,127,128,255,256,65535,65536,4294967295,4294967296,9223372036854775807]",
             "[0,1,127,128,255,256,65535,65536,4294967295,4294967296,9223372036854775807]");
    codec_is("[-1,-32,-33,-128,-129,-32768,-32769,-2147483648,-2147483649,"
             "-9223372036854775808]",
             "[-1,-32,-33,-128,-129,-32768,-32769,-2147483648,-2147483649,"
             "-9223372036854775808]");
    /* reals: shortest round-trip form, integral reals keep ".0" */
    codec_is("[0.1,1.0,1e300,2.5,-0.5,0.0,-0.0,100000.0,1e15,1e16,1e-7,0.30000000000000004,"
             "1.7976931348623157e308,2.2250738585072014e-308,123456.789]",
             "[0.1,1.0,1e+300,2.5,-0.5,0.0,-0.0,100000.0,1e+15,1e+16,1e-07,0.30000000000000004,"
             "1.7976931348623157e+308,2.2250738585072014e-308,123456.789]");
    /* a nested real stays a real; an integer stays an integer */
    codec_is("{\"a\":{\"b\":[3,3.0]}}", "{\"a\":{\"b\":[3,3.0]}}");
    /* unicode and escapes survive */
    codec_is("{\"caf\\u00e9\":\"\\u20ac\\u0001\"}", "{\"caf\xc3\xa9\":\"\xe2\x82\xac\\u0001\"}");
}

static void test_codec_bytes(void **state)
{
    (void)state;
    /* the exact msgpack: smallest int forms, map order as given */
    json_t *v =
        json_pack("{s:i, s:i, s:f, s:s, s:[n,b]}", "a", 1, "b", -1, "c", 1.0, "d", "xy", "e", 1);
    struct cairn_buf mp;
    cairn_buf_init(&mp, 1024);
    assert_int_equal(cairn_json_to_msgpack(v, &mp, NULL), 0);
    static const uint8_t want[] = {
        0x85, 0xa1, 'a', 0x01, 0xa1, 'b', 0xff, 0xa1, 'c', 0xcb, 0x3f, 0xf0, 0,    0,
        0,    0,    0,   0,    0xa1, 'd', 0xa2, 'x',  'y', 0xa1, 'e',  0x92, 0xc0, 0xc3,
    };
    assert_int_equal(mp.len, sizeof want);
    assert_memory_equal(mp.data, want, sizeof want);
    json_decref(v);
    /* an output over its maximum is CAIRN_ETOOBIG */
    cairn_buf_deinit(&mp);
    cairn_buf_init(&mp, 8);
    v = json_pack("{s:s}", "key", "a string longer than eight bytes");
    assert_int_equal(cairn_json_to_msgpack(v, &mp, NULL), CAIRN_ETOOBIG);
    json_decref(v);
    cairn_buf_deinit(&mp);
}

static void test_codec_bad_msgpack(void **state)
{
    (void)state;
    struct cairn_buf out;
    struct cairn_error e;
    json_t *j = NULL;
    cairn_buf_init(&out, 1024);
    /* truncated: a map of one entry with no entry */
    static const uint8_t cut[] = {0x81, 0xa1, 'a'};
    assert_int_equal(cairn_msgpack_to_json(cut, sizeof cut, &out, NULL), CAIRN_ECORRUPT);
    cairn_error_clear(&e);
    assert_int_equal(cairn_msgpack_to_jansson(cut, sizeof cut, &j, NULL, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "invalid_msgpack");
    /* a map key that is not a string */
    static const uint8_t intkey[] = {0x81, 0x01, 0x02};
    cairn_buf_reset(&out);
    assert_int_equal(cairn_msgpack_to_json(intkey, sizeof intkey, &out, NULL), CAIRN_ECORRUPT);
    cairn_error_clear(&e);
    assert_int_equal(cairn_msgpack_to_jansson(intkey, sizeof intkey, &j, NULL, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "wrong_type");
    /* bin becomes hex text in JSON, but is refused as input */
    static const uint8_t bin[] = {0xc4, 0x02, 0xab, 0x01};
    cairn_buf_reset(&out);
    assert_int_equal(cairn_msgpack_to_json(bin, sizeof bin, &out, NULL), 0);
    assert_int_equal(out.len, 6);
    assert_memory_equal(out.data, "\"ab01\"", 6);
    cairn_error_clear(&e);
    assert_int_equal(cairn_msgpack_to_jansson(bin, sizeof bin, &j, NULL, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "wrong_type");
    /* uint64 over INT64_MAX cannot become a jansson integer */
    static const uint8_t huge[] = {0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    cairn_error_clear(&e);
    assert_int_equal(cairn_msgpack_to_jansson(huge, sizeof huge, &j, NULL, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "out_of_range");
    cairn_buf_reset(&out);
    assert_int_equal(cairn_msgpack_to_json(huge, sizeof huge, &out, NULL), 0);
    assert_int_equal(out.len, 20);
    assert_memory_equal(out.data, "18446744073709551615", 20);
    /* two values back to back: *used names the first */
    static const uint8_t two[] = {0x01, 0x02};
    size_t used = 0;
    cairn_buf_reset(&out);
    assert_int_equal(cairn_msgpack_to_json(two, sizeof two, &out, &used), 0);
    assert_int_equal(used, 1);
    assert_int_equal(out.len, 1);
    assert_int_equal(out.data[0], '1');
    /* Counts the bytes cannot hold: an array32 or map32 of 2^32-1 items in
     * five bytes, and the same inside a map, are refused without first
     * allocating room for their items (msgpack-c's unpacker asked malloc
     * for 128 GiB and AddressSanitizer aborted: the HTTP fuzz target, a
     * five-byte application/msgpack body). */
    static const uint8_t big_arr[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t big_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a', 0x01};
    static const uint8_t inner[] = {0x81, 0xa1, 'a', 0xdd, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x02};
    const struct {
        const uint8_t *p;
        size_t n;
    } bad[] = {{big_arr, sizeof big_arr}, {big_map, sizeof big_map}, {inner, sizeof inner}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cairn_buf_reset(&out);
        assert_int_equal(cairn_msgpack_to_json(bad[i].p, bad[i].n, &out, NULL), CAIRN_ECORRUPT);
        cairn_error_clear(&e);
        assert_int_equal(cairn_msgpack_to_jansson(bad[i].p, bad[i].n, &j, NULL, &e), CAIRN_EINVAL);
        assert_string_equal(e.code, "invalid_msgpack");
    }
    cairn_buf_deinit(&out);
    assert_null(j);
}

/* n nested objects {"a":{"a":…{}…}}. */
static json_t *nested(int n)
{
    json_t *v = json_object();
    for (int i = 1; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "a", v);
        v = o;
    }
    return v;
}

/* Encodes v; 0 or the encoder's error (e filled). */
static int encode(const json_t *v, struct cairn_buf *mp, struct cairn_error *e)
{
    cairn_buf_reset(mp);
    cairn_error_clear(e);
    return cairn_json_to_msgpack(v, mp, e);
}

static void test_codec_depth(void **state)
{
    (void)state;
    struct cairn_buf mp;
    struct cairn_error e;
    cairn_buf_init(&mp, 1u << 20);
    /* CAIRN_DEPTH_MAX levels are fine */
    json_t *ok = nested(CAIRN_DEPTH_MAX);
    assert_int_equal(encode(ok, &mp, &e), 0);
    assert_null(e.code);
    json_decref(ok);
    /* two more are refused, with the code clients switch on */
    json_t *deep = nested(CAIRN_DEPTH_MAX + 2);
    assert_int_equal(encode(deep, &mp, &e), CAIRN_EINVAL);
    assert_non_null(e.code);
    assert_string_equal(e.code, "too_deep");
    char limit[16];
    snprintf(limit, sizeof limit, "%d", CAIRN_DEPTH_MAX);
    assert_non_null(strstr(e.message, limit));
    json_decref(deep);
    /* a hostile depth is refused without exhausting the stack */
    json_t *hostile = nested(10000);
    assert_int_equal(encode(hostile, &mp, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "too_deep");
    json_decref(hostile);
    /* a scalar two levels past the limit counts too */
    json_t *arr = json_integer(7);
    for (int i = 0; i <= CAIRN_DEPTH_MAX; i++) {
        json_t *a = json_array();
        json_array_append_new(a, arr);
        arr = a;
    }
    assert_int_equal(encode(arr, &mp, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "too_deep");
    json_decref(arr);

    /* msgpack built by someone else, too deep: refused on the way in */
    cairn_buf_reset(&mp);
    for (int i = 0; i < CAIRN_DEPTH_MAX + 2; i++)
        cairn_buf_putc(&mp, (char)0x91); /* array of 1 */
    cairn_buf_putc(&mp, 0x01);
    cairn_error_clear(&e);
    json_t *back = NULL;
    assert_int_equal(cairn_msgpack_to_jansson(mp.data, mp.len, &back, NULL, &e), CAIRN_EINVAL);
    assert_non_null(e.code);
    assert_null(back);
    cairn_buf_deinit(&mp);
}

/* Whatever the encoder accepts must decode again: a payload that is stored
 * but cannot be read back breaks `cairn tail`, the API and every handler.
 * Walks every depth up to the first one refused. */
static void test_codec_depth_round_trip(void **state)
{
    (void)state;
    struct cairn_buf mp, out;
    struct cairn_error e;
    cairn_buf_init(&mp, 1u << 20);
    cairn_buf_init(&out, 1u << 20);
    int n;
    for (n = 1; n <= CAIRN_DEPTH_MAX + 2; n++) {
        json_t *v = nested(n);
        if (encode(v, &mp, &e)) {
            json_decref(v);
            break;
        }
        cairn_buf_reset(&out);
        int rc = cairn_msgpack_to_json(mp.data, mp.len, &out, NULL);
        if (rc)
            fail_msg("%d nested objects were encoded but cairn_msgpack_to_json answers %d", n, rc);
        json_t *back = NULL;
        cairn_error_clear(&e);
        rc = cairn_msgpack_to_jansson(mp.data, mp.len, &back, NULL, &e);
        if (rc)
            fail_msg("%d nested objects were encoded but cairn_msgpack_to_jansson answers %d "
                     "(%s)",
                     n, rc, e.code ? e.code : "");
        assert_true(json_equal(v, back));
        json_decref(back);
        json_decref(v);
    }
    /* the limit was reached: either CAIRN_DEPTH_MAX + 1 or + 2 levels */
    assert_true(n == CAIRN_DEPTH_MAX + 1 || n == CAIRN_DEPTH_MAX + 2);
    cairn_buf_deinit(&mp);
    cairn_buf_deinit(&out);
}

static void test_fmt_double(void **state)
{
    (void)state;
    static const struct {
        double d;
        const char *s;
    } cases[] = {
        {0.1, "0.1"},
        {1.0, "1.0"},
        {1e300, "1e+300"},
        {-2.0, "-2.0"},
        {0.5, "0.5"},
        {1e21, "1e+21"},
        {123.0, "123.0"},
        {1.0 / 3, "0.3333333333333333"},
        {2.0 / 3, "0.6666666666666666"},
        {2.2250738585072014e-308, "2.2250738585072014e-308"},
    };
    char out[40];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = cairn_fmt_double(cases[i].d, out, sizeof out);
        assert_string_equal(out, cases[i].s);
        assert_int_equal(n, strlen(cases[i].s));
    }
    /* subnormals have fewer significant digits; they must still read back */
    const double sub[] = {5e-324, 1e-310, -3.5e-320};
    for (size_t i = 0; i < sizeof sub / sizeof *sub; i++) {
        cairn_fmt_double(sub[i], out, sizeof out);
        assert_true(strtod(out, NULL) == sub[i]);
    }
}

/* ====================================================================== small helpers */

/* cairn_ksort: keys (lengths 0-72, from an alphabet of four bytes with 0
 * among them, so long shared prefixes, prefixes of each other, zero bytes
 * at the end and ties past its 32-byte window, twice over, all come up;
 * from round 20 on, after a 20-byte stem every key shares, like a long
 * tenant name, so ties go levels deep), duplicates ordered by their
 * index: the order of a qsort by memcmp, then length, then index. */
struct ks_key {
    uint8_t b[92];
    size_t n, idx;
};

static int ks_full_cmp(const struct ks_key *a, const struct ks_key *b)
{
    int c = memcmp(a->b, b->b, a->n < b->n ? a->n : b->n);
    if (c)
        return c;
    if (a->n != b->n)
        return a->n < b->n ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static int ks_qsort_cmp(const void *a, const void *b)
{
    return ks_full_cmp(a, b);
}

static const uint8_t *ks_key(const void *p, size_t *n, void *arg)
{
    const struct ks_key *k = p;
    assert_ptr_equal(arg, (void *)ks_key);
    *n = k->n;
    return k->b;
}

static int ks_cmp(const void *a, const void *b, void *arg)
{
    const struct cairn_ksort *x = a, *y = b;
    assert_ptr_equal(arg, (void *)ks_key);
    return ks_full_cmp(x->p, y->p);
}

static void test_ksort(void **state)
{
    (void)state;
    static const uint8_t alphabet[4] = {0, 1, 'a', 0xff};
    uint64_t seed = 12345;
    for (int round = 0; round < 60; round++) {
        size_t n = round < 10 ? (size_t)round : 1 + (size_t)(seed % 5000);
        struct ks_key *k = calloc(n ? n : 1, sizeof *k), *want = calloc(n ? n : 1, sizeof *k);
        struct cairn_ksort *o = calloc(n ? n : 1, sizeof *o);
        assert_non_null(k);
        assert_non_null(want);
        assert_non_null(o);
        for (size_t i = 0; i < n; i++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            size_t stem = round >= 20 ? 20 : 0;
            if (i && seed % 4 == 0) { /* a duplicate, or a key extending another */
                k[i] = k[seed % i];
                if (seed % 8 == 4 && k[i].n < stem + 72)
                    k[i].b[k[i].n++] = alphabet[(seed >> 8) % 4];
            } else {
                memset(k[i].b, 'T', stem);
                k[i].n = stem + (size_t)(seed % 73);
                for (size_t j = stem; j < k[i].n; j++)
                    k[i].b[j] = alphabet[(seed >> (2 * (j % 28))) % 4];
            }
            k[i].idx = i;
            o[i].p = &k[i];
        }
        memcpy(want, k, n * sizeof *k);
        qsort(want, n, sizeof *want, ks_qsort_cmp);
        cairn_ksort(o, n, ks_key, ks_cmp, (void *)ks_key);
        for (size_t i = 0; i < n; i++)
            if (((const struct ks_key *)o[i].p)->idx != want[i].idx)
                fail_msg("round %d, %zu keys: position %zu holds key %zu, want %zu", round, n, i,
                         ((const struct ks_key *)o[i].p)->idx, want[i].idx);
        free(k);
        free(want);
        free(o);
    }
}

static void test_hex_be64(void **state)
{
    (void)state;
    uint8_t in[] = {0x00, 0x01, 0xab, 0xff}, back[4];
    char hex[9];
    cairn_hex(in, 4, hex);
    assert_string_equal(hex, "0001abff");
    assert_int_equal(cairn_unhex("0001ABff", 8, back), 0);
    assert_memory_equal(back, in, 4);
    assert_int_equal(cairn_unhex("abc", 3, back), CAIRN_EINVAL);
    assert_int_equal(cairn_unhex("zz", 2, back), CAIRN_EINVAL);

    uint8_t be[8];
    cairn_be64_put(be, 0x0102030405060708ull);
    static const uint8_t want[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_memory_equal(be, want, 8);
    assert_true(cairn_be64_get(be) == 0x0102030405060708ull);
    /* big-endian keys sort as numbers under memcmp */
    uint8_t a[8], b[8];
    cairn_be64_put(a, 255);
    cairn_be64_put(b, 256);
    assert_true(memcmp(a, b, 8) < 0);
}

static void test_errors(void **state)
{
    (void)state;
    struct cairn_error e;
    cairn_error_clear(&e);
    assert_null(e.code);
    assert_string_equal(e.field, "");
    assert_int_equal(cairn_error_set(&e, "too_long", "/key", "key is %d bytes", 300), CAIRN_EINVAL);
    assert_string_equal(e.code, "too_long");
    assert_string_equal(e.field, "/key");
    assert_string_equal(e.message, "key is 300 bytes");
    assert_int_equal(cairn_error_set(NULL, "x", "", "y"), CAIRN_EINVAL);
    cairn_error_set(&e, "x", NULL, "m");
    assert_string_equal(e.field, "");
    /* a long field is cut, never overflowed */
    char longf[600];
    memset(longf, 'f', sizeof longf - 1);
    longf[sizeof longf - 1] = '\0';
    cairn_error_set(&e, "x", longf, "%s", longf);
    assert_int_equal(strlen(e.field), CAIRN_ERR_FIELD_MAX - 1);
    assert_int_equal(strlen(e.message), CAIRN_ERR_MSG_MAX - 1);

    assert_string_equal(cairn_strerror(CAIRN_OK), "ok");
    assert_string_equal(cairn_strerror(CAIRN_ETOOBIG), "too large");
    assert_string_equal(cairn_strerror(CAIRN_EBUSY), "busy, retry later");
    assert_string_equal(cairn_strerror(-999), "unknown error");
}

/* ====================================================================== canonical msgpack */

/* cairn_mp_canonical_unpack accepts exactly what cairn_mp_canonical does,
 * and what they take agrees with msgpack-c and packs back to its bytes
 * (codec_check_canonical). */
static void unpack_agrees(const uint8_t *p, size_t n, bool canonical)
{
    size_t used = 0;
    msgpack_zone z;
    msgpack_object o;
    assert_true(msgpack_zone_init(&z, 64));
    bool ok = cairn_mp_canonical(p, n, CAIRN_DEPTH_MAX, &used);
    assert_int_equal(ok, canonical);
    assert_int_equal(cairn_mp_canonical_unpack(p, n, CAIRN_DEPTH_MAX, false, &z, &o, &used), ok);
    msgpack_zone_destroy(&z);
    const char *why = ok ? codec_check_canonical(p, used) : NULL;
    if (why)
        fail_msg("%s", why);
}

static void test_canonical_bytes(void **state)
{
    (void)state;
    static const struct {
        const char *hex;
        bool canonical;
    } cases[] = {
        {"80", true},
        {"81a161c0", true},
        {"82a161c2a162c3", true},
        {"83a1617fa162e0a163ccff", true},
        {"81a161cc7f", false},               /* 127 in a uint8 */
        {"81a161d0df", true},                /* -33 */
        {"81a161d0e0", false},               /* -32 in an int8 */
        {"81a161cf8000000000000000", false}, /* above int64 */
        {"81a161d3ffffffff7fffffff", true},  /* -2^31 - 1 */
        {"81a161cb3ff8000000000000", true},  /* 1.5 */
        {"81a161cb7ff8000000000000", false}, /* NaN */
        {"81a161ca3fc00000", false},         /* float32 */
        {"81a161c40100", false},             /* bin */
        {"82a161c0a161c0", false},           /* a duplicate key */
        {"81a16193c0c2c3", true},
        {"81a161dc000fc0c0c0c0c0c0c0c0c0c0c0c0c0c0c0", false}, /* array16 of 15 */
        {"81a161a2c3a9", true},                                /* é */
        {"81a161a2c328", false},                               /* invalid UTF-8 */
        {"81a161d90141", false},                               /* str8 of 1 */
        {"81a001", true},                                      /* {"": 1} */
        {"81a2610001", false},                                 /* a key holding NUL */
        {"81a161", false},                                     /* truncated */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t b[64];
        size_t n = strlen(cases[i].hex) / 2;
        assert_int_equal(cairn_unhex(cases[i].hex, 2 * n, b), 0);
        unpack_agrees(b, n, cases[i].canonical);
    }
}

/* UTF-8 around the eight-byte ASCII steps: one bad or multi-byte sequence
 * at every position of strings of 1 to 40 bytes. */
static void test_utf8_positions(void **state)
{
    (void)state;
    for (size_t len = 1; len <= 40; len++) {
        for (size_t at = 0; at < len; at++) {
            uint8_t s[48];
            memset(s, 'a', sizeof s);
            s[at] = 0x80; /* a lone continuation byte */
            assert_false(cairn_utf8_valid(s, len));
            s[at] = 0xff;
            assert_false(cairn_utf8_valid(s, len));
            if (at + 2 <= len) {
                s[at] = 0xc3, s[at + 1] = 0xa9; /* é */
                assert_true(cairn_utf8_valid(s, len));
                s[at + 1] = 'a'; /* truncated */
                assert_false(cairn_utf8_valid(s, len));
            } else {
                s[at] = 0xc3; /* cut by the end */
                assert_false(cairn_utf8_valid(s, len));
            }
            memset(s, 'a', sizeof s);
            assert_true(cairn_utf8_valid(s, len));
        }
    }
}

/* ====================================================================== JSON text -> msgpack */

/* The transcoder against jansson + cairn_json_to_msgpack
 * (codec_check_transcode). Returns whether it transcoded. */
static bool transcode_agrees(const char *text, size_t n)
{
    bool taken;
    const char *why = codec_check_transcode(text, n, &taken);
    if (why)
        fail_msg("%s: %.*s", why, (int)n, text);
    return taken;
}

static void test_transcode_cases(void **state)
{
    (void)state;
    static const char *const yes[] = {
        "{}",
        " {\"a\" : [ ] , \"b\":{}} \n",
        "{\"n\":[0,-0,1,-1,127,128,255,256,65535,65536,"
        "4294967295,4294967296,9223372036854775807,-9223372036854775808,-32,-33,-128,-129,"
        "-32768,-32769,-2147483648,-2147483649]}",
        "{\"r\":[0.0,-0.0,1.5,1e5,1E-5,2.5e+300,-1.0e-320,0.1,123456789.123456789]}",
        "{\"s\":[\"\",\"a\",\"\\\"\\\\\\/\\b\\f\\n\\r\\t\",\"\\u00e9\\u4e2d\\ud83d\\ude00\","
        "\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\",\"0123456789012345678901234567890\","
        "\"01234567890123456789012345678901\"]}",
        /* reals on both sides of the transcoder's exact fast path (|digits|
         * < 2^53, |exponent| <= 22) and strtod's */
        "{\"r\":[0.1,0.25,52.520008,-13.404954,1e22,1e-22,1e23,1e-23,9007199254740991.0,"
        "9007199254740993.0,0.000001,1.7976931348623157e308,4.9e-324,2.2250738585072014e-308,"
        "-0.0,-0,100.0e-2,3.14159265358979323846,0.30000000000000004,123.456E+3,7e-0,"
        "0.0000000000000000000001,1000000000000000000000.5]}",
        "{\"t\":true,\"f\":false,\"z\":null,\"a\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15],"
        "\"b\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}",
        "{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,"
        "\"k10\":10,\"k11\":11,\"k12\":12,\"k13\":13,\"k14\":14,\"k15\":15,\"k16\":16}",
    };
    static const char *const no[] = {
        "",
        "[]",
        "1",
        "\"s\"",
        "{",
        "{\"a\":}",
        "{\"a\":1,}",
        "{\"a\":1}x",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":-}",
        "{\"a\":1e}",
        "{\"a\":tru}",
        "{\"a\":\"\\u0000\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\x01\"}",
        "{\"a\":\"\xff\"}",
        "{\"a\":\"\xc0\xaf\"}",
        "{\"a\":1,\"a\":2}",
        "{\"a\":9223372036854775808}",
        "{\"a\":-9223372036854775809}",
        "{\"a\":1e400}",
        "{'a':1}",
        "{\"a\":[1 2]}",
    };
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (!transcode_agrees(yes[i], strlen(yes[i])))
            fail_msg("declined %s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (transcode_agrees(no[i], strlen(no[i])))
            fail_msg("accepted %s", no[i]);
    /* strings copied eight bytes at a time: a byte that needs attention at
     * every offset of strings of every length up to three words */
    static const char *const special[] = {"\\\"", "\\\\", "\\n", "\\u00e9", "\xc3\xa9", "\x7f"};
    for (size_t len = 0; len <= 24; len++)
        for (size_t at = 0; at <= len; at++)
            for (size_t k = 0; k < sizeof special / sizeof *special; k++) {
                char doc[96];
                int m = snprintf(doc, sizeof doc, "{\"%.*s%s%.*s\":\"%.*s%s\"}", (int)at,
                                 "abcdefghijklmnopqrstuvwxyz", special[k], (int)(len - at),
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ", (int)len,
                                 "0123456789012345678901234", special[k]);
                if (!transcode_agrees(doc, (size_t)m))
                    fail_msg("declined %s", doc);
            }
    /* a raw control character or invalid UTF-8 is declined wherever it is */
    for (size_t at = 0; at < 20; at++) {
        char doc[64];
        int m = snprintf(doc, sizeof doc, "{\"a\":\"%.*s\x01%.*s\"}", (int)at,
                         "abcdefghijklmnopqrstuvwxyz", (int)(20 - at), "abcdefghijklmnopqrstu");
        assert_false(transcode_agrees(doc, (size_t)m));
        doc[6 + at] = (char)0xff;
        assert_false(transcode_agrees(doc, (size_t)m));
    }
    /* long strings and arrays: the wide headers (str16, array16/32) */
    size_t big = 70000;
    char *t = malloc(big * 2 + 64);
    int n = sprintf(t, "{\"s\":\"");
    memset(t + n, 'x', big);
    n += (int)big;
    n += sprintf(t + n, "\",\"a\":[");
    for (int i = 0; i < 20000; i++)
        n += sprintf(t + n, i ? ",%d" : "%d", i % 10);
    n += sprintf(t + n, "]}");
    assert_true(transcode_agrees(t, (size_t)n));
    /* long keys (str16 headers): a duplicate is still found */
    char key[301];
    memset(key, 'k', 300);
    key[300] = '\0';
    n = sprintf(t, "{\"%s\":1,\"%s\":2}", key, key);
    assert_false(transcode_agrees(t, (size_t)n));
    char other[301];
    memcpy(other, key, sizeof other);
    other[299] = 'x';
    n = sprintf(t, "{\"%s\":1,\"%s\":2}", key, other);
    assert_true(transcode_agrees(t, (size_t)n));
    /* nesting: CAIRN_DEPTH_MAX levels (an object, then arrays, the last
     * one empty) are transcoded, and canonical at that depth; one more is
     * declined */
    for (int depth = CAIRN_DEPTH_MAX; depth <= CAIRN_DEPTH_MAX + 1; depth++) {
        n = 0;
        for (int i = 0; i < depth; i++)
            n += sprintf(t + n, i ? "[" : "{\"a\":");
        for (int i = 1; i < depth; i++)
            n += sprintf(t + n, "]");
        n += sprintf(t + n, "}");
        assert_int_equal(transcode_agrees(t, (size_t)n), depth == CAIRN_DEPTH_MAX);
    }
    free(t);
}

/* Random documents, dumped by jansson with and without \u escapes. */
static json_t *random_json(unsigned *seed, int depth)
{
    int kind = rand_r(seed) % (depth > 5 ? 6 : 8);
    static const char *const pieces[] = {
        "a", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\"", "\\", "\n", "\x1f", "/", " "};
    switch (kind) {
    case 0: return json_null();
    case 1: return json_boolean(rand_r(seed) & 1);
    case 2: {
        int64_t v = (int64_t)(((uint64_t)rand_r(seed) << (rand_r(seed) % 40)) & INT64_MAX);
        return json_integer(rand_r(seed) & 1 ? -v : v);
    }
    case 3: return json_real((rand_r(seed) - RAND_MAX / 2) / (double)(1 + rand_r(seed) % 1000));
    case 4:
    case 5: {
        char buf[256];
        size_t len = 0, parts = (size_t)(rand_r(seed) % 40);
        for (size_t i = 0; i < parts; i++) {
            const char *p = pieces[rand_r(seed) % 10];
            memcpy(buf + len, p, strlen(p));
            len += strlen(p);
        }
        return json_stringn(buf, len);
    }
    case 6: {
        json_t *a = json_array();
        int k = rand_r(seed) % 20;
        for (int i = 0; i < k; i++)
            json_array_append_new(a, random_json(seed, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        int k = rand_r(seed) % 20;
        for (int i = 0; i < k; i++) {
            char key[16];
            snprintf(key, sizeof key, "k%d", rand_r(seed) % 30);
            json_object_set_new(o, key, random_json(seed, depth + 1));
        }
        return o;
    }
    }
}

static void test_transcode_random(void **state)
{
    (void)state;
    unsigned seed = 7;
    int transcoded = 0;
    for (int i = 0; i < 2000; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "v", random_json(&seed, 1));
        char *t = json_dumps(o, JSON_COMPACT | (i & 1 ? JSON_ENSURE_ASCII : 0) |
                                    (i & 2 ? JSON_INDENT(2) : 0));
        transcoded += transcode_agrees(t, strlen(t));
        free(t);
        json_decref(o);
    }
    assert_true(transcoded == 2000); /* every one of these is in its subset */
}

/* ====================================================================== the canonical reader */

/* cairn_rd_map and cairn_rd_str over literal bytes (the forms msgpack-c's
 * packer writes): each header's count, where the reader stops, and the
 * refusals — another type, a header cut short — which leave p alone
 * (cairn_rd_map) or report CAIRN_ECORRUPT. */
static void test_rd_map_str(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t n, used;
        int rc;
        uint32_t pairs;
    } maps[] = {
        {"\x80", 1, 1, 0, 0},                          /* fixmap, empty */
        {"\x8f", 1, 1, 0, 15},                         /* fixmap, 15 pairs */
        {"\xde\x00\x10", 3, 3, 0, 16},                 /* map16 */
        {"\xde\x01\x02", 3, 3, 0, 258},                /* map16, both bytes */
        {"\xdf\x00\x01\x00\x00", 5, 5, 0, 65536},      /* map32 */
        {"\xdf\x01\x02\x03\x04", 5, 5, 0, 0x01020304}, /* map32, every byte */
        {"\xde\x00", 2, 0, CAIRN_ECORRUPT, 0},         /* map16 cut short */
        {"\xdf\x00\x00\x01", 4, 0, CAIRN_ECORRUPT, 0}, /* map32 cut short */
        {"\x90", 1, 0, CAIRN_ECORRUPT, 0},             /* an array */
        {"\xa1x", 2, 0, CAIRN_ECORRUPT, 0},            /* a string */
        {"", 0, 0, CAIRN_ECORRUPT, 0},                 /* nothing */
    };
    for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++) {
        const uint8_t *b = (const uint8_t *)maps[i].bytes;
        struct cairn_rd r = {b, b + maps[i].n};
        uint32_t pairs = 77;
        assert_int_equal(cairn_rd_map(&r, &pairs), maps[i].rc);
        assert_ptr_equal(r.p, b + maps[i].used);
        assert_int_equal(pairs, maps[i].rc ? 77 : maps[i].pairs);
    }
    /* A map then its first key: the reader goes on where the header ended. */
    static const uint8_t doc[] = {0x81, 0xa2, 'i', 'd', 0xd9, 0x20, 'a'};
    struct cairn_rd r = {doc, doc + sizeof doc};
    uint32_t pairs;
    struct cairn_str k;
    assert_int_equal(cairn_rd_map(&r, &pairs), 0);
    assert_int_equal(pairs, 1);
    assert_int_equal(cairn_rd_str(&r, &k, false), 0);
    assert_int_equal(k.n, 2);
    assert_memory_equal(k.p, "id", 2);
    /* str8 of 32 bytes with one byte left: refused */
    assert_int_equal(cairn_rd_str(&r, &k, false), CAIRN_ECORRUPT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_parse_basic),
        cmocka_unit_test(test_time_parse_offsets),
        cmocka_unit_test(test_time_parse_fractions),
        cmocka_unit_test(test_time_parse_leap),
        cmocka_unit_test(test_time_parse_invalid),
        cmocka_unit_test(test_time_format),
        cmocka_unit_test(test_time_round_trip),
        cmocka_unit_test(test_time_format_cached),
        cmocka_unit_test(test_calloc_written),
        cmocka_unit_test(test_buf_max),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_codec_round_trip),
        cmocka_unit_test(test_codec_bytes),
        cmocka_unit_test(test_codec_bad_msgpack),
        cmocka_unit_test(test_codec_depth),
        cmocka_unit_test(test_codec_depth_round_trip),
        cmocka_unit_test(test_fmt_double),
        cmocka_unit_test(test_hex_be64),
        cmocka_unit_test(test_ksort),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_canonical_bytes),
        cmocka_unit_test(test_utf8_positions),
        cmocka_unit_test(test_transcode_cases),
        cmocka_unit_test(test_transcode_random),
        cmocka_unit_test(test_rd_map_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
