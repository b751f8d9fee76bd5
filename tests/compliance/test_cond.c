/*
 * test_cond.c — the compliance condition language (handlers/compliance/
 * cond.h): compile errors with their columns, evaluation truth tables
 * (missing attributes, any/all scope, functions), the bounds, and the
 * shipped rule pack: every rule compiles, passes its schema, and has
 * compliant and non-compliant resource documents in rules/tests/ that
 * evaluate as labelled.
 */
#include "cond.h"
#include "schemas.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NOW 1780272000000000000LL /* 2026-06-01T00:00:00Z */

/* Evaluates src against the JSON document attrs. */
static bool eval_json(const char *src, const char *attrs, int64_t now)
{
    struct cond *c;
    unsigned col;
    char msg[200];
    int rc = cond_compile(src, strlen(src), &c, &col, msg, sizeof msg);
    if (rc)
        fail_msg("compile %s: column %u: %s", src, col, msg);
    json_error_t je;
    json_t *j = json_loads(attrs, 0, &je);
    assert_non_null(j);
    struct cairn_buf b;
    cairn_buf_init(&b, 1u << 24);
    assert_int_equal(cairn_json_to_msgpack(j, &b, NULL), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b.data, b.len, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    bool ok = cond_eval(c, &u.data, now, NULL, NULL);
    msgpack_unpacked_destroy(&u);
    cairn_buf_deinit(&b);
    json_decref(j);
    cond_free(c);
    return ok;
}

static void expect_error(const char *src, unsigned want_col, const char *want_msg)
{
    struct cond *c;
    unsigned col;
    char msg[200];
    assert_int_equal(cond_compile(src, strlen(src), &c, &col, msg, sizeof msg), CAIRN_EINVAL);
    assert_null(c);
    if (col != want_col || !strstr(msg, want_msg))
        fail_msg("%s: got column %u '%s', want column %u '%s'", src, col, msg, want_col, want_msg);
}

static void test_compile_errors(void **state)
{
    (void)state;
    expect_error("Name == \"x\" and foo(Name)", 17, "unknown function 'foo'");
    expect_error("Name == ", 9, "expected an operand, found the end");
    expect_error("Name = \"x\"", 6, "did you mean '=='");
    expect_error("(a == 1", 8, "expected ')'");
    expect_error("a == \"x", 6, "unterminated string");
    expect_error("a == 1 b", 8, "unexpected 'b' after the condition");
    expect_error("any(Items)", 10, "expected ','");
    expect_error("exists(a, b)", 9, "takes 1 argument");
    expect_error("a in 3", 6, "'in' takes a list");
    expect_error("a in [b]", 7, "literals only");
    expect_error("a matches b", 11, "takes a string pattern");
    expect_error("@ == 1", 1, "only meaningful inside any() or all()");
    expect_error("a == #", 6, "unexpected character '#'");
    expect_error("", 1, "empty condition");
    expect_error("and", 1, "expected an operand, found 'and'");
    /* Too deep: 17 nested parentheses. */
    char deep[128] = "";
    for (int i = 0; i < 17; i++)
        strcat(deep, "(");
    strcat(deep, "a");
    for (int i = 0; i < 17; i++)
        strcat(deep, ")");
    expect_error(deep, 17, "nesting deeper than 16");
    expect_error("not not not not not not not not not not not not not not not not not a", 61,
                 "nesting deeper than 16");
    /* Too long. */
    char *big = malloc(COND_SRC_MAX + 10);
    memset(big, 'a', COND_SRC_MAX + 9);
    big[COND_SRC_MAX + 9] = '\0';
    struct cond *c;
    unsigned col;
    char msg[200];
    assert_int_equal(cond_compile(big, strlen(big), &c, &col, msg, sizeof msg), CAIRN_EINVAL);
    assert_non_null(strstr(msg, "over 4096 bytes"));
    free(big);
}

static void test_missing_semantics(void **state)
{
    (void)state;
    const char *d = "{\"A\":{\"B\":true,\"N\":5,\"S\":\"x\",\"Z\":null}}";
    assert_true(eval_json("A.B == true", d, NOW));
    assert_false(eval_json("A.C == true", d, NOW)); /* missing: false */
    assert_false(eval_json("A.C != true", d, NOW)); /* != too */
    assert_true(eval_json("not (A.C == true)", d, NOW));
    assert_false(eval_json("A.C < 3 or A.C >= 3", d, NOW));
    assert_false(eval_json("A.C in [1, 2]", d, NOW));
    assert_false(eval_json("A.C matches \"*\"", d, NOW));
    assert_true(eval_json("A.Z == null", d, NOW));
    assert_false(eval_json("exists(A.Z)", d, NOW));
    assert_true(eval_json("exists(A.N) and not exists(A.Q.R)", d, NOW));
    assert_true(eval_json("A.N != \"5\"", d, NOW)); /* kinds differ: not equal */
    assert_false(eval_json("A.N < \"9\"", d, NOW)); /* and not ordered */
    assert_true(eval_json("A.N >= 5 and A.N <= 5.0 and A.N > 4.5 and A.N < 6", d, NOW));
    assert_true(eval_json("A.S > \"w\" and A.S in [\"y\", \"x\"]", d, NOW));
    assert_true(eval_json("A.B", d, NOW));
    assert_false(eval_json("A.N", d, NOW)); /* only boolean true is true */
    assert_false(eval_json("Missing", "{}", NOW));
    assert_false(eval_json("Missing == 1", "[]", NOW)); /* not a map: no attributes */
}

static void test_quantifiers(void **state)
{
    (void)state;
    const char *sg = "{\"IpPermissions\":[{\"IpProtocol\":\"tcp\",\"FromPort\":80,\"ToPort\":80,"
                     "\"IpRanges\":[{\"CidrIp\":\"10.0.0.0/8\"}]},{\"IpProtocol\":\"tcp\","
                     "\"FromPort\":0,\"ToPort\":1024,\"IpRanges\":[{\"CidrIp\":\"0.0.0.0/0\"}]}],"
                     "\"GroupName\":\"web\"}";
    assert_true(eval_json("any(IpPermissions, any(IpRanges, CidrIp == \"0.0.0.0/0\") and "
                          "FromPort <= 22 and ToPort >= 22)",
                          sg, NOW));
    assert_false(eval_json("any(IpPermissions, any(IpRanges, CidrIp == \"0.0.0.0/0\") and "
                           "FromPort <= 3389 and ToPort >= 3389)",
                           sg, NOW));
    assert_true(eval_json("all(IpPermissions, IpProtocol == \"tcp\")", sg, NOW));
    assert_true(eval_json("any(IpPermissions, $.GroupName == \"web\")", sg, NOW));
    assert_false(eval_json("any(IpPermissions, GroupName == \"web\")", sg, NOW)); /* relative */
    assert_true(eval_json("count(IpPermissions) == 2 and count(IpPermissions, FromPort == 0) == 1",
                          sg, NOW));
    assert_true(eval_json("count(Nope) == 0 and count(GroupName) == 1", sg, NOW));
    /* missing list: any false, all true; a single object/scalar is a one-element list */
    assert_false(eval_json("any(Nope, true)", "{}", NOW));
    assert_true(eval_json("all(Nope, false)", "{}", NOW));
    assert_true(eval_json("any(S, Effect == \"Deny\")", "{\"S\":{\"Effect\":\"Deny\"}}", NOW));
    assert_true(eval_json("any(A, @ == \"*\")", "{\"A\":\"*\"}", NOW));
    assert_true(eval_json("any(A, @ == \"*\")", "{\"A\":[\"s3:Get\",\"*\"]}", NOW));
    assert_true(
        eval_json("A.1 == \"*\" and A.0 matches \"s3:*\"", "{\"A\":[\"s3:Get\",\"*\"]}", NOW));
    assert_true(eval_json("C.Bool.\"aws:SecureTransport\" == \"false\"",
                          "{\"C\":{\"Bool\":{\"aws:SecureTransport\":\"false\"}}}", NOW));
}

static void test_functions(void **state)
{
    (void)state;
    assert_true(eval_json("age_days(D) > 90 and age_days(D) < 92",
                          "{\"D\":\"2026-03-02T00:00:00Z\"}", NOW));
    assert_true(eval_json("age_days(D) <= 1", "{\"D\":\"2026-05-31T12:00:00+00:00\"}", NOW));
    assert_true(eval_json("age_days(E) >= 1", "{\"E\":1780185600}", NOW)); /* epoch seconds */
    assert_false(eval_json("age_days(D) >= 0", "{\"D\":\"yesterday\"}", NOW));
    assert_false(eval_json("age_days(X) >= 0 or age_days(X) < 0", "{}", NOW));
    assert_true(eval_json("cidr_contains(\"10.0.0.0/8\", C)", "{\"C\":\"10.1.2.3\"}", NOW));
    assert_true(eval_json("cidr_contains(\"10.0.0.0/8\", C)", "{\"C\":\"10.1.0.0/16\"}", NOW));
    assert_false(eval_json("cidr_contains(\"10.0.0.0/8\", C)", "{\"C\":\"0.0.0.0/0\"}", NOW));
    assert_true(eval_json("cidr_contains(C, \"192.168.1.1\")", "{\"C\":\"0.0.0.0/0\"}", NOW));
    assert_true(
        eval_json("cidr_contains(\"2001:db8::/32\", C)", "{\"C\":\"2001:db8:1::/48\"}", NOW));
    assert_false(eval_json("cidr_contains(\"2001:db8::/32\", C)", "{\"C\":\"10.0.0.1\"}", NOW));
    assert_false(eval_json("cidr_contains(\"10.0.0.0/33\", C)", "{\"C\":\"10.0.0.1\"}", NOW));
    assert_false(eval_json("cidr_contains(X, C)", "{\"C\":\"10.0.0.1\"}", NOW));
    assert_true(eval_json("N matches \"arn:aws:iam::*:mfa/root-?ccount*\"",
                          "{\"N\":\"arn:aws:iam::1:mfa/root-account-mfa-device\"}", NOW));
    assert_false(eval_json("N matches \"*x\"", "{\"N\":\"abc\"}", NOW));
    assert_true(eval_json("N matches \"\\\"q\\\"*\"", "{\"N\":\"\\\"q\\\" and\"}", NOW));
}

static void test_bounds(void **state)
{
    (void)state;
    /* any/all look at COND_LIST_MAX elements: a match at index 1500 is not seen. */
    struct cairn_buf b;
    cairn_buf_init(&b, 1u << 20);
    cairn_buf_puts(&b, "{\"L\":[");
    for (int i = 0; i < 2000; i++)
        cairn_buf_printf(&b, "%s%d", i ? "," : "", i);
    cairn_buf_puts(&b, "]}");
    cairn_buf_putc(&b, '\0');
    assert_true(eval_json("any(L, @ == 1000)", (char *)b.data, NOW));
    assert_false(eval_json("any(L, @ == 1500)", (char *)b.data, NOW));
    /* Nested any over 1000 x 1000 runs into the step budget: the rule fails. */
    struct cond *c;
    unsigned col;
    char msg[200];
    const char *src = "all(L, all($.L, @ >= 0))";
    assert_int_equal(cond_compile(src, strlen(src), &c, &col, msg, sizeof msg), 0);
    json_t *j = json_loads((char *)b.data, 0, NULL);
    struct cairn_buf mp;
    cairn_buf_init(&mp, 1u << 20);
    assert_int_equal(cairn_json_to_msgpack(j, &mp, NULL), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    msgpack_unpack_next(&u, (const char *)mp.data, mp.len, NULL);
    bool hit = false;
    uint64_t steps = 0;
    assert_false(cond_eval(c, &u.data, NOW, &steps, &hit));
    assert_true(hit);
    assert_true(steps > COND_STEPS_MAX && steps < COND_STEPS_MAX + 64);
    msgpack_unpacked_destroy(&u);
    cairn_buf_deinit(&mp);
    cairn_buf_deinit(&b);
    json_decref(j);
    cond_free(c);
    /* The failed-value roots: top-level paths in order, deduplicated. */
    src = "A.B == 1 and any(L, X == 1) and A.B != 2 and exists(C) and count(D, E == 1) > 0";
    assert_int_equal(cond_compile(src, strlen(src), &c, &col, msg, sizeof msg), 0);
    assert_int_equal(cond_roots(c), 4);
    assert_string_equal(cond_root_text(c, 0), "A.B");
    assert_string_equal(cond_root_text(c, 1), "L");
    assert_string_equal(cond_root_text(c, 2), "C");
    assert_string_equal(cond_root_text(c, 3), "D");
    cond_free(c);
}

/* ====================================================================== the rule pack */

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n)
        n = 0;
    s[n] = '\0';
    fclose(f);
    return s;
}

static bool eval_obj(const struct cond *c, const json_t *attrs, int64_t now)
{
    struct cairn_buf b;
    cairn_buf_init(&b, 1u << 24);
    assert_int_equal(cairn_json_to_msgpack(attrs, &b, NULL), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    msgpack_unpack_next(&u, (const char *)b.data, b.len, NULL);
    bool ok = cond_eval(c, &u.data, now, NULL, NULL);
    msgpack_unpacked_destroy(&u);
    cairn_buf_deinit(&b);
    return ok;
}

static void check_rule(const struct schema *sch, const char *dir, const char *file, int *cases)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_error_t je;
    json_t *rule = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!rule)
        fail_msg("%s: %s", file, je.text);
    struct cairn_error e;
    cairn_error_clear(&e);
    if (schema_validate(sch, rule, "", &e))
        fail_msg("%s: %s %s", file, e.field, e.message);
    const char *id = json_string_value(json_object_get(rule, "id")),
               *src = json_string_value(json_object_get(rule, "condition"));
    struct cond *c;
    unsigned col;
    char msg[200];
    if (cond_compile(src, strlen(src), &c, &col, msg, sizeof msg))
        fail_msg("%s: column %u: %s", file, col, msg);
    snprintf(path, sizeof path, "%s/tests/%s.json", dir, id);
    json_t *t = json_load_file(path, 0, &je);
    if (!t)
        fail_msg("%s: no test file tests/%s.json", file, id);
    int64_t now;
    const char *ts = json_string_value(json_object_get(t, "time"));
    assert_int_equal(cairn_time_parse(ts, strlen(ts), &now), 0);
    const json_t *ok = json_object_get(t, "compliant"), *bad = json_object_get(t, "non_compliant");
    if (json_array_size(ok) < 1 || json_array_size(bad) < 1)
        fail_msg("%s: needs at least one compliant and one non-compliant document", id);
    size_t i;
    const json_t *doc;
    json_array_foreach(ok, i, doc) if (!eval_obj(c, doc, now))
        fail_msg("%s: compliant document %zu fails", id, i);
    json_array_foreach(bad, i, doc) if (eval_obj(c, doc, now))
        fail_msg("%s: non-compliant document %zu passes", id, i);
    *cases += (int)(json_array_size(ok) + json_array_size(bad));
    cond_free(c);
    json_decref(t);
    json_decref(rule);
}

static void test_rule_pack(void **state)
{
    (void)state;
    const char *dir = CAIRN_SOURCE_DIR "/handlers/compliance/rules";
    char *text = read_all(CAIRN_SCHEMA_DIR "/rule.define.json");
    assert_non_null(text);
    json_t *sdoc = json_loads(text, 0, NULL);
    struct schema *sch;
    struct cairn_error e;
    assert_int_equal(schema_new(&sch, sdoc, &e), 0);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int rules = 0, cases = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json"))
            continue;
        check_rule(sch, dir, de->d_name, &cases);
        rules++;
    }
    closedir(d);
    print_message("rule pack: %d rules, %d test documents\n", rules, cases);
    assert_true(rules >= 40);
    schema_free(sch);
    json_decref(sdoc);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compile_errors), cmocka_unit_test(test_missing_semantics),
        cmocka_unit_test(test_quantifiers),    cmocka_unit_test(test_functions),
        cmocka_unit_test(test_bounds),         cmocka_unit_test(test_rule_pack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
