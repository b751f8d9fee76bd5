/*
 * test_ingest.c — turning producer input into log inputs, against the real
 * schemas of the source tree (CAIRN_SCHEMA_DIR).
 *
 * Every refusal is checked for its exact code and field (JSON pointer) and
 * a piece of its message; every acceptance for the exact log input it
 * produced (type, tenant, key, id, time, expected_seq, payload). Then the
 * default entity keys of each type and the result lines of `cairn append`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define NS 1000000000LL
#define T0 (1795255200LL * NS) /* 2026-11-21T10:00:00Z */
#define NOW 424242LL           /* the default event time handed to ingest */

static struct ingest *g_ing;

static struct ingest *open_ingest(size_t payload_max)
{
    struct ingest *ing = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    struct ingest_config cfg = {.schema_dir = CAIRN_SCHEMA_DIR, .payload_max = payload_max};
    int rc = ingest_open(&ing, &cfg, &e);
    if (rc)
        fail_msg("ingest_open(%s): %d %s %s %s", CAIRN_SCHEMA_DIR, rc, e.code ? e.code : "",
                 e.field, e.message);
    return ing;
}

static int setup(void **state)
{
    (void)state;
    g_ing = open_ingest(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ingest_close(g_ing);
    return 0;
}

/* ====================================================================== refusals */

static void refused_by(struct ingest *ing, const char *text, const char *code, const char *field,
                       const char *msg_part)
{
    struct ingest_event ev = {0};
    struct cairn_error e;
    cairn_error_clear(&e);
    /* into an event holding an earlier input (engine.h): the refusal frees
     * its memory (a leak otherwise, which ASan reports) */
    static const char *const earlier = "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":"
                                       "{\"device_id\":\"dev-1\",\"event_type\":\"status\"}}";
    assert_int_equal(ingest_parse_json(g_ing, earlier, strlen(earlier), "test", NOW, &ev, &e), 0);
    assert_non_null(ev.mem);
    int rc = ingest_parse_json(ing, text, strlen(text), "test", NOW, &ev, &e);
    if (rc == CAIRN_EINVAL && (ev.mem || ev.cap))
        fail_msg("%.200s\n  refused, but the event still holds memory", text);
    if (rc != CAIRN_EINVAL || !e.code || strcmp(e.code, code) || strcmp(e.field, field) ||
        !strstr(e.message, msg_part)) {
        if (rc == 0)
            ingest_event_deinit(&ev);
        fail_msg("%.200s\n  got rc %d code %s field \"%s\" message \"%s\"\n  want code %s field "
                 "\"%s\" message containing \"%s\"",
                 text, rc, e.code ? e.code : "(none)", e.field, e.message, code, field, msg_part);
    }
}

static void refused(const char *text, const char *code, const char *field, const char *msg_part)
{
    refused_by(g_ing, text, code, field, msg_part);
}

#define TELEMETRY "{\"device_id\":\"dev-1\",\"event_type\":\"status\"}"

static void test_not_json(void **state)
{
    (void)state;
    refused("", "invalid_json", "", "not valid JSON");
    refused("{", "invalid_json", "", "not valid JSON");
    refused("{\"type\":\"telemetry\",}", "invalid_json", "", "not valid JSON");
    refused("nope", "invalid_json", "", "not valid JSON");
    refused("{\"type\":\"telemetry\"} {}", "invalid_json", "", "not valid JSON");
    /* a key twice is not silently resolved */
    refused("{\"type\":\"telemetry\",\"tenant\":\"a\",\"tenant\":\"b\",\"payload\":" TELEMETRY "}",
            "invalid_json", "", "duplicate");
    /* JSON that is not an object */
    refused("[1,2]", "not_object", "", "must be a JSON object");
    refused("[]", "not_object", "", "must be a JSON object");
}

/* Valid JSON texts that are not objects are "not an object", not "not JSON". */
static void test_not_object_scalars(void **state)
{
    (void)state;
    refused("42", "not_object", "", "must be a JSON object");
    refused("\"telemetry\"", "not_object", "", "must be a JSON object");
    refused("null", "not_object", "", "must be a JSON object");
}

static void test_envelope_fields(void **state)
{
    (void)state;
    /* unknown type, missing type/tenant/payload */
    refused("{\"type\":\"nope\",\"tenant\":\"acme\",\"payload\":{}}", "unknown_type", "/type",
            "unknown type nope");
    refused("{\"tenant\":\"acme\",\"payload\":" TELEMETRY "}", "missing_field", "/type",
            "type is required");
    refused("{\"type\":null,\"tenant\":\"acme\",\"payload\":" TELEMETRY "}", "missing_field",
            "/type", "type is required");
    refused("{\"type\":\"telemetry\",\"payload\":" TELEMETRY "}", "missing_field", "/tenant",
            "tenant is required");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\"}", "missing_field", "/payload",
            "payload is required");
    /* wrongly typed */
    refused("{\"type\":7,\"tenant\":\"acme\",\"payload\":" TELEMETRY "}", "wrong_type", "/type",
            "type must be a string");
    refused("{\"type\":\"telemetry\",\"tenant\":5,\"payload\":" TELEMETRY "}", "wrong_type",
            "/tenant", "tenant must be a string");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":[]}", "wrong_type", "/payload",
            "must be an object, got array");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":null}", "wrong_type",
            "/payload", "must be an object, got null");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":true,\"payload\":" TELEMETRY "}",
            "wrong_type", "/time", "RFC 3339 string or integer");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":1.5,\"payload\":" TELEMETRY "}",
            "wrong_type", "/time", "RFC 3339 string or integer");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":5,\"payload\":" TELEMETRY "}",
            "wrong_type", "/key", "key must be a string");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"id\":[],\"payload\":" TELEMETRY "}",
            "wrong_type", "/id", "id must be a string");
    refused(
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"expected_seq\":\"3\",\"payload\":" TELEMETRY
        "}",
        "wrong_type", "/expected_seq", "must be an integer");
    refused(
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"expected_seq\":3.0,\"payload\":" TELEMETRY
        "}",
        "wrong_type", "/expected_seq", "must be an integer");
    /* unknown top-level field: a typo is an error */
    refused("{\"type\":\"telemetry\",\"tennant\":\"acme\",\"payload\":" TELEMETRY "}",
            "unknown_field", "/tennant", "unknown field");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":" TELEMETRY ",\"seq\":1}",
            "unknown_field", "/seq", "unknown field");
    /* bad time string */
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":\"2026-13-01T00:00:00Z\","
            "\"payload\":" TELEMETRY "}",
            "invalid_time", "/time", "not RFC 3339");
    refused(
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":\"yesterday\",\"payload\":" TELEMETRY
        "}",
        "invalid_time", "/time", "not RFC 3339");
    /* expected_seq */
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"expected_seq\":-1,\"payload\":" TELEMETRY
            "}",
            "out_of_range", "/expected_seq", ">= 0");
    /* a payment whose object names no customer implies no key */
    refused("{\"type\":\"payment\",\"tenant\":\"acme\",\"expected_seq\":0,\"payload\":"
            "{\"id\":\"evt_1\",\"type\":\"charge.refunded\",\"created\":1,"
            "\"data\":{\"object\":{\"id\":\"ch_1\",\"object\":\"charge\"}}}}",
            "missing_field", "/key", "expected_seq needs a key");
    /* producers may not append engine inputs */
    refused("{\"type\":\"tick\",\"tenant\":\"acme\",\"payload\":{\"interval_ms\":1000}}",
            "reserved_type", "/type", "engine");
}

static void test_tenant(void **state)
{
    (void)state;
    static const char *const bad[] = {"ac me", "ac/me", "acme!", "caf\\u00e9", "a:b", "a\\u0001b"};
    char text[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(text, sizeof text,
                 "{\"type\":\"telemetry\",\"tenant\":\"%s\",\"payload\":" TELEMETRY "}", bad[i]);
        /* a control character is refused as such, others as not allowed chars */
        if (strstr(bad[i], "\\u0001"))
            refused(text, "invalid_value", "/tenant", "control characters");
        else
            refused(text, "invalid_value", "/tenant", "letters, digits");
    }
    refused("{\"type\":\"telemetry\",\"tenant\":\"\",\"payload\":" TELEMETRY "}", "too_short",
            "/tenant", "must not be empty");
    refused("{\"type\":\"telemetry\",\"tenant\":\"_engine\",\"payload\":" TELEMETRY "}",
            "reserved_tenant", "/tenant", "reserved");
}

/* {"type":"telemetry","tenant":T,"key":K,"id":I,"payload":…} with strings of
 * n repeated characters. */
static char *with_lengths(size_t tenant_n, size_t key_n, size_t id_n)
{
    size_t cap = tenant_n + key_n + id_n + 256;
    char *s = malloc(cap), *t = malloc(tenant_n + 1), *k = malloc(key_n + 1), *i = malloc(id_n + 1);
    memset(t, 't', tenant_n);
    t[tenant_n] = '\0';
    memset(k, 'k', key_n);
    k[key_n] = '\0';
    memset(i, 'i', id_n);
    i[id_n] = '\0';
    snprintf(s, cap,
             "{\"type\":\"telemetry\",\"tenant\":\"%s\",\"key\":\"%s\",\"id\":\"%s\","
             "\"payload\":" TELEMETRY "}",
             t, k, i);
    free(t);
    free(k);
    free(i);
    return s;
}

static void accepted(const char *text, struct ingest_event *ev)
{
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = ingest_parse_json(g_ing, text, strlen(text), "test", NOW, ev, &e);
    if (rc)
        fail_msg("%.300s\n  refused: rc %d %s %s %s", text, rc, e.code ? e.code : "", e.field,
                 e.message);
}

/* out = s repeated n times (out must hold it). */
static void repeat(char *out, const char *s, int n)
{
    size_t len = strlen(s);
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * len, s, len);
    out[(size_t)n * len] = '\0';
}

static void test_limits(void **state)
{
    (void)state;
    struct ingest_event ev = {0};
    char *s = with_lengths(CAIRN_TENANT_MAX, CAIRN_KEY_MAX, CAIRN_ID_MAX);
    accepted(s, &ev);
    assert_int_equal(ev.in.tenant.n, 64);
    assert_int_equal(ev.in.key.n, 256);
    assert_int_equal(ev.in.id.n, 256);
    ingest_event_deinit(&ev);
    free(s);
    s = with_lengths(CAIRN_TENANT_MAX + 1, 1, 1);
    refused(s, "too_long", "/tenant", "65 bytes, the limit is 64");
    free(s);
    s = with_lengths(1, CAIRN_KEY_MAX + 1, 1);
    refused(s, "too_long", "/key", "257 bytes, the limit is 256");
    free(s);
    s = with_lengths(1, 1, CAIRN_ID_MAX + 1);
    refused(s, "too_long", "/id", "257 bytes, the limit is 256");
    free(s);
    /* limits are in bytes: 129 two-byte characters are 258 bytes */
    char key[600], text[900];
    repeat(key, "\xc3\xa9", 129);
    snprintf(text, sizeof text,
             "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"%s\",\"payload\":" TELEMETRY
             "}",
             key);
    refused(text, "too_long", "/key", "258 bytes");
    /* a key derived from the payload obeys the same limit: a device_id of
     * 200 characters passes the schema (maxLength counts characters) but is
     * 400 bytes */
    char dev[600];
    repeat(dev, "\xc3\xa9", 200);
    snprintf(text, sizeof text,
             "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"%s\","
             "\"event_type\":\"status\"}}",
             dev);
    refused(text, "too_long", "/key", "derived from the payload");
    /* control characters in key or id */
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"a\\nb\",\"payload\":" TELEMETRY
            "}",
            "invalid_value", "/key", "control characters");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"id\":\"a\\tb\",\"payload\":" TELEMETRY
            "}",
            "invalid_value", "/id", "control characters");
    /* a type name over its limit is refused as such */
    char type[100];
    memset(type, 'x', 65);
    type[65] = '\0';
    snprintf(text, sizeof text, "{\"type\":\"%s\",\"tenant\":\"acme\",\"payload\":{}}", type);
    refused(text, "too_long", "/type", "limit is 64");
}

static void test_payload(void **state)
{
    (void)state;
    /* the schema's verdict, with the field inside the payload */
    refused("{\"type\":\"location\",\"tenant\":\"acme\",\"payload\":"
            "{\"device_id\":\"d\",\"lat\":95,\"lon\":0}}",
            "out_of_range", "/payload/lat", "must be <= 90");
    refused("{\"type\":\"location\",\"tenant\":\"acme\",\"payload\":"
            "{\"device_id\":\"d\",\"lat\":0,\"lon\":-180.5}}",
            "out_of_range", "/payload/lon", "must be >= -180");
    refused(
        "{\"type\":\"location\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"d\",\"lat\":0}}",
        "missing_field", "/payload/lon", "is required");
    refused("{\"type\":\"location\",\"tenant\":\"acme\",\"payload\":"
            "{\"device_id\":\"d\",\"lat\":\"0\",\"lon\":0}}",
            "wrong_type", "/payload/lat", "must be a number, got string");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":"
            "{\"device_id\":\"d\",\"event_type\":\"status\",\"status\":\"asleep\"}}",
            "not_allowed", "/payload/status", "must be one of");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":"
            "{\"device_id\":\"d\",\"event_type\":\"status\",\"colour\":\"red\"}}",
            "unknown_field", "/payload/colour", "");
    refused("{\"type\":\"order\",\"tenant\":\"acme\",\"payload\":{\"order_id\":\"o\","
            "\"event_type\":\"order.created\",\"items\":[{\"product_id\":\"p\",\"quantity\":0,"
            "\"price\":1}]}}",
            "out_of_range", "/payload/items/0/quantity", "must be >= 1");
    /* nesting past the depth limit, where the schema does not look */
    char text[4096];
    int n = snprintf(text, sizeof text,
                     "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"d\","
                     "\"event_type\":\"status\",\"data\":");
    for (int i = 0; i < 40; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "{\"a\":");
    n += snprintf(text + n, sizeof text - (size_t)n, "1");
    for (int i = 0; i < 40; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "}");
    snprintf(text + n, sizeof text - (size_t)n, "}}");
    refused(text, "too_deep", "/payload", "deeper than 24");
    /* event times outside 1970..2200 are refused: time arithmetic stays in range */
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":-5,\"payload\":" TELEMETRY "}",
            "out_of_range", "/time", "between 1970-01-01 and 2200-01-01");
    refused("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":\"2250-01-01T00:00:00Z\","
            "\"payload\":" TELEMETRY "}",
            "out_of_range", "/time", "between 1970-01-01 and 2200-01-01");

    /* over the payload limit (msgpack size): a small limit for the test */
    struct ingest *small = open_ingest(64);
    refused_by(small,
               "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"d\","
               "\"event_type\":\"status\",\"data\":{\"blob\":\"" /* > 64 bytes */
               "0123456789012345678901234567890123456789012345678901234567890123456789\"}}}",
               "too_large", "/payload", "over the 64-byte limit");
    /* just under it is fine: {"device_id":"d","event_type":"status"} is 31 bytes */
    struct ingest_event ev = {0};
    struct cairn_error e;
    const char *ok = "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":" TELEMETRY "}";
    assert_int_equal(ingest_parse_json(small, ok, strlen(ok), "test", NOW, &ev, &e), 0);
    assert_true(ev.in.payload_len <= 64);
    ingest_event_deinit(&ev);
    ingest_close(small);
}

/* ====================================================================== acceptance */

static bool str_is(struct cairn_str s, const char *want)
{
    return s.n == strlen(want) && (s.n == 0 || !memcmp(s.p, want, s.n));
}

#define assert_str(s, want)                                                                        \
    do {                                                                                           \
        if (!str_is((s), (want)))                                                                  \
            fail_msg("%s is \"%.*s\", want \"%s\"", #s, (int)(s).n, (s).p ? (s).p : "", (want));   \
    } while (0)

/* The payload of ev decoded back to JSON equals `want` (JSON text). */
static void assert_payload(const struct ingest_event *ev, const char *want)
{
    json_t *got = NULL, *w = json_loads(want, 0, NULL);
    assert_non_null(w);
    assert_int_equal(cairn_msgpack_to_jansson(ev->in.payload, ev->in.payload_len, &got, NULL, NULL),
                     0);
    if (!json_equal(got, w)) {
        char *g = json_dumps(got, JSON_COMPACT);
        fail_msg("payload %s, want %s", g, want);
    }
    json_decref(got);
    json_decref(w);
}

static void test_accepted(void **state)
{
    (void)state;
    struct ingest_event ev = {0};
    accepted("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"k-1\",\"id\":\"msg-123\","
             "\"time\":\"2026-11-21T10:00:00.250Z\",\"expected_seq\":41,"
             "\"payload\":{\"device_id\":\"dev-17\",\"event_type\":\"reading\",\"battery\":87.5,"
             "\"data\":{\"temp\":21,\"ok\":true}}}",
             &ev);
    assert_str(ev.in.type, "telemetry");
    assert_str(ev.in.tenant, "acme");
    assert_str(ev.in.key, "k-1"); /* an explicit key wins over the default */
    assert_str(ev.in.id, "msg-123");
    assert_str(ev.in.source, "test");
    assert_int_equal(ev.in.time, T0 + 250000000);
    assert_int_equal(ev.in.expected_seq, 41);
    assert_payload(&ev, "{\"device_id\":\"dev-17\",\"event_type\":\"reading\",\"battery\":87.5,"
                        "\"data\":{\"temp\":21,\"ok\":true}}");
    ingest_event_deinit(&ev);
    assert_null(ev.mem);

    /* the smallest event: defaults everywhere */
    accepted("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":" TELEMETRY "}", &ev);
    assert_str(ev.in.key, "dev-1");
    assert_int_equal(ev.in.id.n, 0);
    assert_int_equal(ev.in.time, NOW); /* no time: the ingest time */
    assert_int_equal(ev.in.expected_seq, -1);

    /* the next input into the same event reuses its memory when it fits,
     * and nothing of the earlier one shows through */
    const uint8_t *mem = ev.mem;
    accepted("{\"type\":\"telemetry\",\"tenant\":\"beta\",\"id\":\"m-2\",\"payload\":"
             "{\"device_id\":\"dev-2\",\"event_type\":\"heartbeat\"}}",
             &ev);
    assert_ptr_equal(ev.mem, mem);
    assert_str(ev.in.tenant, "beta");
    assert_str(ev.in.key, "dev-2");
    assert_str(ev.in.id, "m-2");
    assert_payload(&ev, "{\"device_id\":\"dev-2\",\"event_type\":\"heartbeat\"}");
    char big[1024]; /* one that does not fit: new memory */
    snprintf(big, sizeof big,
             "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"dev-3\","
             "\"event_type\":\"reading\",\"data\":{\"note\":\"%0600d\"}}}",
             7);
    accepted(big, &ev);
    assert_true(ev.cap >= ev.in.payload_len);
    assert_str(ev.in.key, "dev-3");
    assert_int_equal(ev.in.id.n, 0);
    ingest_event_deinit(&ev);

    /* nulls are absent values */
    accepted("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":null,\"id\":null,\"time\":null,"
             "\"expected_seq\":null,\"payload\":" TELEMETRY "}",
             &ev);
    assert_str(ev.in.key, "dev-1");
    assert_int_equal(ev.in.id.n, 0);
    assert_int_equal(ev.in.time, NOW);
    assert_int_equal(ev.in.expected_seq, -1);
    ingest_event_deinit(&ev);

    /* expected_seq 0: "no event yet" */
    accepted("{\"type\":\"telemetry\",\"tenant\":\"acme\",\"expected_seq\":0,\"payload\":" TELEMETRY
             "}",
             &ev);
    assert_int_equal(ev.in.expected_seq, 0);
    ingest_event_deinit(&ev);

    /* the allowed tenant characters */
    accepted("{\"type\":\"telemetry\",\"tenant\":\"Acme-01_eu.west\",\"payload\":" TELEMETRY "}",
             &ev);
    assert_str(ev.in.tenant, "Acme-01_eu.west");
    ingest_event_deinit(&ev);
}

static void test_time(void **state)
{
    (void)state;
    static const struct {
        const char *time;
        int64_t want;
    } cases[] = {
        {"\"2026-11-21T10:00:00Z\"", T0},
        {"\"2026-11-21T12:00:00+02:00\"", T0},
        {"\"2026-11-21T10:00:00.123456789Z\"", T0 + 123456789},
        {"1795255200250000000", T0 + 250000000}, /* integer epoch nanoseconds */
        {"0", 0},
        {"7258118400000000000", CAIRN_TIME_MAX}, /* 2200-01-01, the last accepted */
    };
    char text[512];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct ingest_event ev = {0};
        snprintf(text, sizeof text,
                 "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":%s,\"payload\":" TELEMETRY
                 "}",
                 cases[i].time);
        accepted(text, &ev);
        if (ev.in.time != cases[i].want)
            fail_msg("time %s -> %lld, want %lld", cases[i].time, (long long)ev.in.time,
                     (long long)cases[i].want);
        ingest_event_deinit(&ev);
    }
}

static void key_is(const char *type, const char *payload, const char *want)
{
    char text[2048];
    struct ingest_event ev = {0};
    snprintf(text, sizeof text, "{\"type\":\"%s\",\"tenant\":\"acme\",\"payload\":%s}", type,
             payload);
    accepted(text, &ev);
    if (!str_is(ev.in.key, want))
        fail_msg("%s: key \"%.*s\", want \"%s\"", text, (int)ev.in.key.n, ev.in.key.p, want);
    ingest_event_deinit(&ev);
    /* ingest_default_key says the same */
    json_t *p = json_loads(payload, 0, NULL);
    char out[CAIRN_KEY_MAX + 1];
    int n = ingest_default_key(type, p, out, sizeof out);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, (size_t)n);
    json_decref(p);
}

static void test_default_keys(void **state)
{
    (void)state;
    key_is("telemetry", "{\"device_id\":\"dev-17\",\"event_type\":\"status\"}", "dev-17");
    key_is("location", "{\"device_id\":\"truck-9\",\"lat\":52.5,\"lon\":13.4}", "truck-9");
    key_is("order", "{\"order_id\":\"ord-1\",\"event_type\":\"order.created\"}", "ord-1");
    key_is("payment",
           "{\"id\":\"evt_1\",\"type\":\"invoice.payment_failed\",\"created\":1,"
           "\"data\":{\"object\":{\"id\":\"in_1\",\"object\":\"invoice\",\"customer\":\"cus_A\"}}}",
           "cus_A");
    key_is("payment",
           "{\"id\":\"evt_2\",\"type\":\"invoice.paid\",\"created\":1,"
           "\"data\":{\"object\":{\"id\":\"in_2\",\"customer\":{\"id\":\"cus_B\"}}}}",
           "cus_B");
    key_is("payment",
           "{\"id\":\"evt_3\",\"type\":\"customer.updated\",\"created\":1,"
           "\"data\":{\"object\":{\"id\":\"cus_C\",\"object\":\"customer\"}}}",
           "cus_C");
    key_is("payment",
           "{\"id\":\"evt_4\",\"type\":\"charge.refunded\",\"created\":1,"
           "\"data\":{\"object\":{\"id\":\"ch_1\",\"object\":\"charge\"}}}",
           "");
    key_is("metric",
           "{\"name\":\"http_requests_total\",\"labels\":{\"path\":\"/api\",\"method\":\"GET\","
           "\"code\":\"200\"},\"value\":3}",
           "http_requests_total{code=\"200\",method=\"GET\",path=\"/api\"}");
    key_is("metric", "{\"name\":\"up\",\"value\":1}", "up");
    key_is("metric", "{\"name\":\"up\",\"labels\":{},\"value\":1}", "up");
    key_is("metric", "{\"name\":\"up\",\"labels\":{\"b\":\"y\",\"a\":\"x\"},\"value\":1}",
           "up{a=\"x\",b=\"y\"}");
    key_is("discovery",
           "{\"account_id\":\"123456789012\",\"region\":\"us-east-1\",\"resources\":[]}",
           "123456789012/us-east-1");
    /* the explicit key wins */
    struct ingest_event ev = {0};
    accepted("{\"type\":\"location\",\"tenant\":\"acme\",\"key\":\"mine\",\"payload\":"
             "{\"device_id\":\"truck-9\",\"lat\":1,\"lon\":2}}",
             &ev);
    assert_str(ev.in.key, "mine");
    ingest_event_deinit(&ev);
    /* an implied key over the limit */
    char out[8];
    json_t *p = json_pack("{s:s,s:s}", "device_id", "0123456789", "event_type", "status");
    assert_int_equal(ingest_default_key("telemetry", p, out, sizeof out), CAIRN_ETOOBIG);
    assert_int_equal(ingest_default_key("nope", p, out, sizeof out), 0);
    json_decref(p);
}

/* Two different label sets must not name the same series: label values are
 * quoted, so a quote inside one must be escaped (as Prometheus does). */
static void test_metric_key_escaping(void **state)
{
    (void)state;
    json_t *a = json_pack("{s:s,s:{s:s},s:i}", "name", "m", "labels", "a", "x\",b=\"y", "value", 1);
    json_t *b =
        json_pack("{s:s,s:{s:s,s:s},s:i}", "name", "m", "labels", "a", "x", "b", "y", "value", 1);
    char ka[CAIRN_KEY_MAX + 1], kb[CAIRN_KEY_MAX + 1];
    int na = ingest_default_key("metric", a, ka, sizeof ka);
    int nb = ingest_default_key("metric", b, kb, sizeof kb);
    assert_true(na > 0 && nb > 0);
    assert_string_equal(kb, "m{a=\"x\",b=\"y\"}");
    if (na == nb && !memcmp(ka, kb, (size_t)na))
        fail_msg("labels {a: 'x\",b=\"y'} and {a: x, b: y} both give the key %s", ka);
    assert_string_equal(ka, "m{a=\"x\\\",b=\\\"y\"}");
    json_decref(a);
    json_decref(b);
}

static void test_engine_only(void **state)
{
    (void)state;
    json_t *tick = json_pack("{s:s,s:s,s:{s:i}}", "type", "tick", "tenant", "_engine", "payload",
                             "interval_ms", 1000);
    struct ingest_event ev = {0};
    struct cairn_error e;
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_value(g_ing, tick, "engine", 7, true, &ev, &e), 0);
    assert_str(ev.in.type, "tick");
    assert_str(ev.in.tenant, "_engine");
    assert_str(ev.in.source, "engine");
    assert_int_equal(ev.in.time, 7);
    ingest_event_deinit(&ev);
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_value(g_ing, tick, "http", 7, false, &ev, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "reserved_type");
    assert_string_equal(e.field, "/type");
    json_decref(tick);
    /* the tick schema applies to the engine too */
    tick = json_pack("{s:s,s:s,s:{s:i}}", "type", "tick", "tenant", "_engine", "payload",
                     "interval_ms", 0);
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_value(g_ing, tick, "engine", 7, true, &ev, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "out_of_range");
    assert_string_equal(e.field, "/payload/interval_ms");
    json_decref(tick);
}

/* The handlers that consume a type validate it (handler.h, validate), in
 * table order, after the schema; the ones that do not consume it are not
 * asked. */
static int hook_calls[3];

static int hook_a(const struct event *ev, struct cairn_error *e)
{
    hook_calls[0]++;
    if (ev->key.n == 4 && !memcmp(ev->key.p, "bad1", 4))
        return cairn_error_set(e, "bad_a", "/payload", "a says no");
    return 0;
}

static int hook_b(const struct event *ev, struct cairn_error *e)
{
    hook_calls[1]++;
    if (ev->key.n == 4 && !memcmp(ev->key.p, "bad2", 4))
        return cairn_error_set(e, "bad_b", "/payload", "b says no");
    if (!ev->body || ev->body->type != MSGPACK_OBJECT_MAP)
        return cairn_error_set(e, "no_body", "", "no decoded payload");
    return 0;
}

static int hook_c(const struct event *ev, struct cairn_error *e)
{
    (void)ev, (void)e;
    hook_calls[2]++;
    return 0;
}

static void test_handler_validate(void **state)
{
    (void)state;
    static const char *const ca[] = {"telemetry", "location", NULL};
    static const char *const cb[] = {"order", "telemetry", NULL};
    static const char *const cc[] = {"metric", NULL};
    static const struct handler ha = {.name = "a", .consumes = ca, .validate = hook_a};
    static const struct handler hb = {.name = "b", .consumes = cb, .validate = hook_b};
    static const struct handler hn = {.name = "n", .consumes = cb}; /* no hook */
    static const struct handler hc = {.name = "c", .consumes = cc, .validate = hook_c};
    static const struct handler *const table[] = {&hn, &ha, &hb, &hc, NULL};
    struct ingest *ing = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    struct ingest_config cfg = {.schema_dir = CAIRN_SCHEMA_DIR, .handlers = table};
    assert_int_equal(ingest_open(&ing, &cfg, &e), 0);
    static const char *const ok =
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"fine\",\"payload\":" TELEMETRY "}";
    struct ingest_event ev = {0};
    assert_int_equal(ingest_parse_json(ing, ok, strlen(ok), "test", NOW, &ev, &e), 0);
    ingest_event_deinit(&ev);
    assert_int_equal(hook_calls[0], 1);
    assert_int_equal(hook_calls[1], 1);
    assert_int_equal(hook_calls[2], 0);
    /* the first refusal is the answer: a's, before b is asked */
    refused_by(ing,
               "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"bad1\",\"payload\":" TELEMETRY
               "}",
               "bad_a", "/payload", "a says no");
    assert_int_equal(hook_calls[0], 2);
    assert_int_equal(hook_calls[1], 1);
    refused_by(ing,
               "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"bad2\",\"payload\":" TELEMETRY
               "}",
               "bad_b", "/payload", "b says no");
    /* a schema failure comes first: no hook is asked */
    refused_by(ing, "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"bad1\",\"payload\":{}}",
               "missing_field", "/payload/device_id", "required");
    assert_int_equal(hook_calls[0], 3);
    assert_int_equal(hook_calls[1], 2);
    /* types nobody with a hook consumes */
    static const char *const pay =
        "{\"type\":\"payment\",\"tenant\":\"acme\",\"key\":\"bad1\",\"payload\":{\"id\":\"evt_1\","
        "\"type\":\"invoice.paid\",\"created\":1,\"livemode\":false,\"data\":{\"object\":{}}}}";
    assert_int_equal(ingest_parse_json(ing, pay, strlen(pay), "test", NOW, &ev, &e), 0);
    ingest_event_deinit(&ev);
    assert_int_equal(hook_calls[0] + hook_calls[1] + hook_calls[2], 5);
    ingest_close(ing);
    /* the real table: the compliance handler compiles rule conditions */
    refused(
        "{\"type\":\"rule.define\",\"tenant\":\"acme\",\"payload\":{\"id\":\"r1\",\"title\":\"t\","
        "\"severity\":\"high\",\"resource_type\":\"aws.s3.bucket\",\"condition\":\"((\"}}",
        "invalid_rule", "/payload/condition", "column");
}

static void test_msgpack_input(void **state)
{
    (void)state;
    json_t *obj = json_pack("{s:s,s:s,s:s,s:{s:s,s:f,s:f}}", "type", "location", "tenant", "acme",
                            "id", "m-1", "payload", "device_id", "d-1", "lat", 10.5, "lon", -20.25);
    struct cairn_buf mp;
    cairn_buf_init(&mp, 4096);
    assert_int_equal(cairn_json_to_msgpack(obj, &mp, NULL), 0);
    assert_int_equal(cairn_buf_putc(&mp, (char)0xc0), 0); /* a second value follows */
    struct ingest_event ev = {0};
    struct cairn_error e;
    size_t used = 0;
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_msgpack(g_ing, mp.data, mp.len, &used, "nats", NOW, &ev, &e), 0);
    assert_int_equal(used, mp.len - 1);
    assert_str(ev.in.type, "location");
    assert_str(ev.in.key, "d-1");
    assert_str(ev.in.id, "m-1");
    assert_str(ev.in.source, "nats");
    assert_payload(&ev, "{\"device_id\":\"d-1\",\"lat\":10.5,\"lon\":-20.25}");
    ingest_event_deinit(&ev);
    /* not a map; cut short */
    static const uint8_t arr[] = {0x91, 0x01};
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_msgpack(g_ing, arr, sizeof arr, NULL, "nats", NOW, &ev, &e),
                     CAIRN_EINVAL);
    assert_string_equal(e.code, "not_object");
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_msgpack(g_ing, mp.data, 5, NULL, "nats", NOW, &ev, &e),
                     CAIRN_EINVAL);
    assert_string_equal(e.code, "invalid_msgpack");
    /* a refused object still says how long it was, so a batch goes on */
    json_t *bad = json_pack("{s:s,s:s,s:i,s:{}}", "type", "telemetry", "tenant", "acme", "nope", 1,
                            "payload");
    mp.len = 0;
    assert_int_equal(cairn_json_to_msgpack(bad, &mp, NULL), 0);
    size_t bad_len = mp.len;
    assert_int_equal(cairn_buf_putc(&mp, (char)0xc0), 0);
    used = 0;
    cairn_error_clear(&e);
    assert_int_equal(ingest_parse_msgpack(g_ing, mp.data, mp.len, &used, "nats", NOW, &ev, &e),
                     CAIRN_EINVAL);
    assert_string_equal(e.code, "unknown_field");
    assert_int_equal(used, bad_len);
    json_decref(bad);
    json_decref(obj);
    cairn_buf_deinit(&mp);
}

/* One input through both encodings: JSON text, and msgpack (canonical, so
 * the in-place path). Same outcome: the same fields and payload bytes, or
 * the same error code and field. */
static void both_paths_agree(json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    struct cairn_buf mp;
    cairn_buf_init(&mp, 1 << 20);
    assert_int_equal(cairn_json_to_msgpack(obj, &mp, NULL), 0);
    struct ingest_event a = {0}, b = {0};
    struct cairn_error ea, eb;
    cairn_error_clear(&ea);
    cairn_error_clear(&eb);
    size_t used = 0;
    int ra = ingest_parse_json(g_ing, text, strlen(text), "t", NOW, &a, &ea);
    int rb = ingest_parse_msgpack(g_ing, mp.data, mp.len, &used, "t", NOW, &b, &eb);
    if (ra != rb || (ra && (strcmp(ea.code, eb.code) || strcmp(ea.field, eb.field))))
        fail_msg("%s: json %d %s %s, msgpack %d %s %s", text, ra, ea.code ? ea.code : "", ea.field,
                 rb, eb.code ? eb.code : "", eb.field);
    if (!ra) {
        assert_int_equal(used, mp.len);
        const struct cairn_str *fa[] = {&a.in.type, &a.in.tenant, &a.in.key, &a.in.id},
                               *fb[] = {&b.in.type, &b.in.tenant, &b.in.key, &b.in.id};
        for (int i = 0; i < 4; i++) {
            assert_int_equal(fa[i]->n, fb[i]->n);
            assert_memory_equal(fa[i]->p, fb[i]->p, fa[i]->n);
        }
        assert_int_equal(a.in.time, b.in.time);
        assert_int_equal(a.in.expected_seq, b.in.expected_seq);
        assert_int_equal(a.in.payload_len, b.in.payload_len);
        assert_memory_equal(a.in.payload, b.in.payload, a.in.payload_len);
        ingest_event_deinit(&a);
        ingest_event_deinit(&b);
    }
    free(text);
    cairn_buf_deinit(&mp);
}

/* Every example payload of every schema, valid and invalid. */
static void test_msgpack_json_agree(void **state)
{
    (void)state;
    const struct schema_set *set = ingest_schemas(g_ing);
    size_t checked = 0;
    for (size_t i = 0; i < schema_set_count(set); i++) {
        const char *type = schema_set_type(set, i);
        if (!strcmp(type, "tick"))
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/examples/%s.json", CAIRN_SCHEMA_DIR, type);
        json_t *ex = json_load_file(path, 0, NULL);
        assert_non_null(ex);
        const json_t *v;
        size_t k;
        json_array_foreach(json_object_get(ex, "valid"), k, v)
        {
            json_t *obj = json_pack("{s:s,s:s,s:s,s:O}", "type", type, "tenant", "acme", "time",
                                    "2026-11-21T10:00:00Z", "payload", v);
            both_paths_agree(obj);
            json_decref(obj);
            checked++;
        }
        json_array_foreach(json_object_get(ex, "invalid"), k, v)
        {
            json_t *obj = json_pack("{s:s,s:s,s:O}", "type", type, "tenant", "acme", "payload",
                                    json_object_get(v, "payload"));
            both_paths_agree(obj);
            json_decref(obj);
            checked++;
        }
        json_decref(ex);
    }
    assert_true(checked > 50);
    /* envelope errors, wide values (str8/str16, array16, map16), ids, keys */
    static const char *const inputs[] = {
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"key\":\"k\",\"id\":\"i\",\"expected_seq\":3,"
        "\"time\":1700000000000000000,\"payload\":{\"device_id\":\"d\",\"event_type\":\"reading\","
        "\"data\":{\"a\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17],\"n\":-40000,\"m\":-200,"
        "\"big\":9000000000,\"neg\":-3000000000,\"f\":0.1,"
        "\"s\":\"0123456789012345678901234567890123456789\"}}}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"d\",\"event_type"
        "\":\"reading\",\"data\":{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,"
        "\"k8\":8,\"k9\":9,\"k10\":10,\"k11\":11,\"k12\":12,\"k13\":13,\"k14\":14,\"k15\":15,"
        "\"k16\":16,\"k17\":\"\\u00e9\\u4e2d\\ud83d\\ude00\"}}}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"nope\":1,\"payload\":{}}",
        "{\"type\":\"telemetry\",\"tenant\":5,\"payload\":{}}",
        "{\"type\":\"telemetry\",\"tenant\":\"_x\",\"payload\":{}}",
        "{\"type\":\"tick\",\"tenant\":\"acme\",\"payload\":{}}",
        "{\"type\":\"nope\",\"tenant\":\"acme\",\"payload\":{}}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\"}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":1.5,\"payload\":{}}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"time\":\"yesterday\",\"payload\":{}}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"expected_seq\":-1,\"payload\":{}}",
        "{\"type\":\"metric\",\"tenant\":\"acme\",\"payload\":{\"name\":\"m\",\"value\":1,"
        "\"labels\":{\"z\":\"1\",\"a\":\"q\\\"\\n\\\\\",\"m\":\"\"}}}",
        "{\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{\"device_id\":\"d\","
        "\"event_type\":\"reading\",\"data\":{\"\":\"\",\"e\":[\"\",{\"\":[]}]}}}",
        "{\"\":1,\"type\":\"telemetry\",\"tenant\":\"acme\",\"payload\":{}}",
        "{\"type\":\"discovery\",\"tenant\":\"acme\",\"payload\":{\"account_id\":\"123456789012\","
        "\"region\":\"eu-west-1\",\"scan_id\":\"s\",\"resources\":[]}}",
    };
    for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
        json_t *obj = json_loads(inputs[i], 0, NULL);
        assert_non_null(obj);
        both_paths_agree(obj);
        json_decref(obj);
    }
}

static int parse_mp(const uint8_t *p, size_t n, struct ingest_event *ev, struct cairn_error *e)
{
    cairn_error_clear(e);
    return ingest_parse_msgpack(g_ing, p, n, NULL, "t", NOW, ev, e);
}

/* msgpack that is not canonical takes the slow path: stored canonical. */
static void test_msgpack_noncanonical(void **state)
{
    (void)state;
    /* {"type":"location","tenant":"acme","payload":{"device_id":"d","lat":X,"lon":Y}}
     * with lat a float32 and lon a uint16 holding 7, and "d" a str8 */
    static const uint8_t in[] = {0x83, 0xa4, 't',  'y',  'p',  'e',  0xa8, 'l',  'o',  'c',  'a',
                                 't',  'i',  'o',  'n',  0xa6, 't',  'e',  'n',  'a',  'n',  't',
                                 0xa4, 'a',  'c',  'm',  'e',  0xa7, 'p',  'a',  'y',  'l',  'o',
                                 'a',  'd',  0x83, 0xa9, 'd',  'e',  'v',  'i',  'c',  'e',  '_',
                                 'i',  'd',  0xd9, 0x01, 'd',  0xa3, 'l',  'a',  't',  0xca, 0x3f,
                                 0xc0, 0x00, 0x00, 0xa3, 'l',  'o',  'n',  0xcd, 0x00, 0x07};
    struct ingest_event ev = {0};
    struct cairn_error e;
    assert_int_equal(parse_mp(in, sizeof in, &ev, &e), 0);
    static const uint8_t want[] = {0x83, 0xa9, 'd',  'e', 'v',  'i', 'c',  'e',  '_',  'i', 'd',
                                   0xa1, 'd',  0xa3, 'l', 'a',  't', 0xcb, 0x3f, 0xf8, 0,   0,
                                   0,    0,    0,    0,   0xa3, 'l', 'o',  'n',  0x07};
    assert_int_equal(ev.in.payload_len, sizeof want);
    assert_memory_equal(ev.in.payload, want, sizeof want);
    assert_str(ev.in.key, "d");
    ingest_event_deinit(&ev);

    /* invalid UTF-8 in a payload string; a duplicate payload key; a
     * duplicate envelope field; NaN */
    uint8_t bad[sizeof in];
    memcpy(bad, in, sizeof in);
    bad[48] = 0xff; /* the device id's only byte */
    assert_int_equal(parse_mp(bad, sizeof bad, &ev, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "invalid_utf8");
    memcpy(bad, in, sizeof in);
    memcpy(bad + 59, "lat", 3); /* "lon" becomes a second "lat" */
    assert_int_equal(parse_mp(bad, sizeof bad, &ev, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "invalid_key");
    static const uint8_t dup[] = {0x83, 0xa4, 't', 'y',  'p', 'e', 0xa1, 'x', 0xa4, 't', 'y', 'p',
                                  'e',  0xa1, 'y', 0xa7, 'p', 'a', 'y',  'l', 'o',  'a', 'd', 0x80};
    assert_int_equal(parse_mp(dup, sizeof dup, &ev, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "invalid_key");
    static const uint8_t nan[] = {0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0};
    uint8_t withnan[sizeof in + 4];
    memcpy(withnan, in, 53);               /* up to the float32 of lat */
    memcpy(withnan + 53, nan, sizeof nan); /* a float64 NaN instead */
    memcpy(withnan + 62, in + 58, sizeof in - 58);
    assert_int_equal(parse_mp(withnan, sizeof in + 4, &ev, &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "wrong_type");
}

/* One JSON text through a bound parser: as text (form 0), as canonical
 * msgpack (1: the in-place path) and as msgpack with the outer map in a
 * wider form than needed (2: declined by the in-place path, decided by the
 * path through jansson). */
static int parse_bound(int form, const char *text, const char *tenant, bool any,
                       struct ingest_event *ev, struct cairn_error *e)
{
    cairn_error_clear(e);
    if (form == 0)
        return ingest_parse_json_for(g_ing, text, strlen(text), "t", NOW, tenant, any, ev, e);
    json_t *obj = json_loads(text, 0, NULL);
    struct cairn_buf mp;
    cairn_buf_init(&mp, 4096);
    assert_non_null(obj);
    assert_int_equal(cairn_json_to_msgpack(obj, &mp, NULL), 0);
    json_decref(obj);
    assert_int_equal(mp.data[0] & 0xf0, 0x80); /* a fixmap */
    if (form == 2) {
        uint8_t n = mp.data[0] & 0x0f;
        assert_int_equal(cairn_buf_reserve(&mp, 2), 0);
        memmove(mp.data + 3, mp.data + 1, mp.len - 1);
        mp.data[0] = 0xde; /* map16 */
        mp.data[1] = 0;
        mp.data[2] = n;
        mp.len += 2;
    }
    size_t used = 0;
    int rc = ingest_parse_msgpack_for(g_ing, mp.data, mp.len, &used, "t", NOW, tenant, any, ev, e);
    assert_int_equal(used, mp.len); /* consumed, accepted or not */
    cairn_buf_deinit(&mp);
    return rc;
}

/* A caller bound to a tenant (an HTTP token), in every form of input. */
static void test_bound_tenant(void **state)
{
    (void)state;
    struct ingest_event ev = {0};
    struct cairn_error e;
    const char *none = "{\"type\":\"telemetry\",\"payload\":" TELEMETRY "}";
    const char *other = "{\"type\":\"telemetry\",\"tenant\":\"beta\",\"payload\":" TELEMETRY "}";
    const char *nul = "{\"type\":\"telemetry\",\"tenant\":null,\"payload\":" TELEMETRY "}";
    for (int form = 0; form < 3; form++) {
        assert_int_equal(parse_bound(form, none, "acme", false, &ev, &e), 0);
        assert_str(ev.in.tenant, "acme");
        ingest_event_deinit(&ev);
        assert_int_equal(parse_bound(form, other, "acme", false, &ev, &e), CAIRN_EINVAL);
        assert_string_equal(e.code, "forbidden");
        assert_string_equal(e.field, "/tenant");
        assert_int_equal(parse_bound(form, other, "acme", true, &ev, &e), 0);
        assert_str(ev.in.tenant, "beta");
        ingest_event_deinit(&ev);
        assert_int_equal(parse_bound(form, nul, "acme", false, &ev, &e), CAIRN_EINVAL);
        assert_string_equal(e.code, "missing_field");
        /* unbound: no tenant is an error */
        assert_int_equal(parse_bound(form, none, NULL, true, &ev, &e), CAIRN_EINVAL);
        assert_string_equal(e.code, "missing_field");
    }
}

/* ====================================================================== result lines */

static void result_is(unsigned long line, const struct log_result *r, const struct cairn_error *e,
                      const char *want)
{
    struct cairn_buf b;
    cairn_buf_init(&b, 4096);
    assert_int_equal(ingest_result_json(&b, line, r, e), 0);
    assert_int_equal(cairn_buf_putc(&b, '\0'), 0);
    assert_string_equal((const char *)b.data, want);
    cairn_buf_deinit(&b);
}

static void test_result_json(void **state)
{
    (void)state;
    struct log_result r = {.seq = 17};
    result_is(3, &r, NULL, "{\"line\":3,\"seq\":17}");
    result_is(0, &r, NULL, "{\"seq\":17}");
    r.duplicate = true;
    result_is(4, &r, NULL, "{\"line\":4,\"seq\":17,\"duplicate\":true}");
    struct cairn_error e;
    cairn_error_clear(&e);
    result_is(5, &(struct log_result){.seq = 9}, &e, "{\"line\":5,\"seq\":9}"); /* no code: ok */
    cairn_error_set(&e, "missing_field", "/tenant", "tenant is required");
    result_is(2, NULL, &e,
              "{\"line\":2,\"error\":{\"code\":\"missing_field\",\"field\":\"/tenant\","
              "\"message\":\"tenant is required\"}}");
    cairn_error_set(&e, "invalid_json", "", "bad \"quote\"\n");
    result_is(0, NULL, &e,
              "{\"error\":{\"code\":\"invalid_json\",\"field\":\"\","
              "\"message\":\"bad \\\"quote\\\"\\n\"}}");
    /* refused by the log rather than by ingest */
    struct log_result c = {.rc = CAIRN_ECONFLICT, .actual_seq = 9};
    result_is(7, &c, NULL,
              "{\"line\":7,\"error\":{\"code\":\"conflict\",\"field\":\"/expected_seq\","
              "\"message\":\"the last event of this tenant and key is seq 9\",\"actual_seq\":9}}");
    struct log_result big = {.rc = CAIRN_ETOOBIG};
    result_is(8, &big, NULL,
              "{\"line\":8,\"error\":{\"code\":\"too_large\",\"field\":\"/payload\","
              "\"message\":\"the envelope is too large\"}}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_not_object_scalars),
        cmocka_unit_test(test_envelope_fields),
        cmocka_unit_test(test_tenant),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_payload),
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_default_keys),
        cmocka_unit_test(test_metric_key_escaping),
        cmocka_unit_test(test_engine_only),
        cmocka_unit_test(test_msgpack_input),
        cmocka_unit_test(test_msgpack_json_agree),
        cmocka_unit_test(test_msgpack_noncanonical),
        cmocka_unit_test(test_bound_tenant),
        cmocka_unit_test(test_result_json),
        cmocka_unit_test(test_handler_validate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
