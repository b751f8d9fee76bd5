/*
 * test_validator.c — the schema validator against the official JSON Schema
 * Test Suite (the draft 7 files of the keywords we support), then our own
 * cases: error codes, fields and messages, the depth limit, schemas that
 * must be refused ($ref cycles, unknown keywords) and schema sets.
 *
 * Which suite cases are skipped, and why. A case is a schema plus tests; the
 * whole case is skipped (and counted) when its schema, anywhere inside:
 *   1. uses a keyword schemas.h does not list (patternProperties,
 *      additionalItems, dependencies, … — and also non-keyword members such
 *      as "tilda~field" that a case only uses as a $ref target): schema_new
 *      refuses unknown keywords by design;
 *   2. gives `items` as an array: draft 7's tuple form, which 2020-12 renamed
 *      prefixItems and which we do not support;
 *   3. has a `$ref` that does not start with "#" (remote or relative URI);
 *   4. has an `$id`: we read it as an annotation, not as a base URI change;
 *   5. has a `$ref` next to validation keywords: draft 7 ignores the
 *      siblings, 2020-12 (our meaning) applies them.
 * Every case not skipped must compile, and each of its tests must give the
 * suite's answer. A file must run at least 80% of its tests, except the five
 * files below whose exact expected number is pinned (so a change is seen):
 *   items.json                 8 of 17  (9 use tuple items)
 *   ref.json                  12 of 27  (2 tuple items, 6 "escaped pointer
 *                              ref" members, 3 sibling keywords, 2 remote,
 *                              2 $id; escaped refs are covered below)
 *   definitions.json           0 of 2   (both $ref the remote draft-07
 *                              meta-schema)
 *   properties.json           10 of 18  (8 use patternProperties)
 *   additionalProperties.json  6 of 14  (8 use patternProperties)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "schemas.h"

/* ====================================================================== suite: skip rules */

/* The keywords schemas.h lists. */
static const char *const supported[] = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "items",
    "$ref",
    "$defs",
    "definitions",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "pattern",
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    NULL,
};

/* Keywords that may sit next to $ref without changing its draft 7 meaning. */
static const char *const ref_neighbours[] = {
    "$ref", "$defs", "definitions", "title", "description", "$comment", NULL,
};

static bool listed(const char *const *list, const char *name)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

static const char *skip_reason(const json_t *s);

static const char *skip_members(const json_t *map)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)map, key, v)
    {
        const char *why = skip_reason(v);
        if (why)
            return why;
    }
    return NULL;
}

/* Rules 1–5 of the header; NULL when the case runs. The reason strings are
 * static: they are tallied per file. */
static const char *skip_keywords(const json_t *s)
{
    const char *key;
    json_t *v;
    bool has_ref = json_object_get(s, "$ref") != NULL;
    json_object_foreach((json_t *)s, key, v)
    {
        if (!listed(supported, key))
            return "unsupported keyword";
        if (strcmp(key, "$id") == 0)
            return "$id base URI";
        if (strcmp(key, "items") == 0 && json_is_array(v))
            return "tuple items";
        if (strcmp(key, "$ref") == 0 && (!json_is_string(v) || json_string_value(v)[0] != '#'))
            return "remote $ref";
        if (has_ref && !listed(ref_neighbours, key))
            return "$ref siblings (draft 7 ignores them)";
    }
    return NULL;
}

static const char *skip_reason(const json_t *s)
{
    if (json_is_boolean(s))
        return NULL;
    const char *why = skip_keywords(s);
    static const char *const maps[] = {"properties", "$defs", "definitions", NULL};
    static const char *const subs[] = {"items", "additionalProperties", "not", NULL};
    static const char *const lists[] = {"allOf", "anyOf", "oneOf", NULL};
    for (size_t i = 0; !why && maps[i]; i++)
        if (json_object_get(s, maps[i]))
            why = skip_members(json_object_get(s, maps[i]));
    for (size_t i = 0; !why && subs[i]; i++)
        if (json_object_get(s, subs[i]))
            why = skip_reason(json_object_get(s, subs[i]));
    for (size_t i = 0; !why && lists[i]; i++) {
        size_t k;
        json_t *v;
        json_array_foreach(json_object_get(s, lists[i]), k, v)
        {
            why = skip_reason(v);
            if (why)
                break;
        }
    }
    return why;
}

/* ====================================================================== suite: runner */

struct suite_file {
    const char *name;
    int expect_ran; /* -1: at least 80% of the file */
};

#define REASONS_MAX 8
struct tally {
    int ran, skipped, failed;
    const char *reasons[REASONS_MAX];
    int counts[REASONS_MAX];
};

static void tally_skip(struct tally *t, const char *why, int n)
{
    t->skipped += n;
    for (int i = 0; i < REASONS_MAX; i++) {
        if (!t->reasons[i])
            t->reasons[i] = why;
        if (t->reasons[i] == why) {
            t->counts[i] += n;
            return;
        }
    }
}

static void run_case(const char *file, const json_t *c, struct tally *t)
{
    const json_t *tests = json_object_get(c, "tests");
    struct schema *s = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    if (schema_new(&s, json_object_get(c, "schema"), &e) != 0) {
        printf("  FAIL %s / %s: schema refused: %s\n", file,
               json_string_value(json_object_get(c, "description")), e.message);
        t->failed += (int)json_array_size(tests);
        return;
    }
    size_t i;
    json_t *test;
    json_array_foreach(tests, i, test)
    {
        bool want = json_is_true(json_object_get(test, "valid"));
        cairn_error_clear(&e);
        int rc = schema_validate(s, json_object_get(test, "data"), "/payload", &e);
        t->ran++;
        if ((rc == 0) != want) {
            t->failed++;
            printf("  FAIL %s / %s / %s: got %s (%s %s: %s)\n", file,
                   json_string_value(json_object_get(c, "description")),
                   json_string_value(json_object_get(test, "description")),
                   rc == 0 ? "valid" : "invalid", e.code ? e.code : "-", e.field, e.message);
        } else if (rc != 0) {
            /* Every refusal names a reason and a field under `where`. */
            assert_non_null(e.code);
            assert_int_equal(strncmp(e.field, "/payload", 8), 0);
            assert_true(e.message[0] != '\0');
        }
    }
    schema_free(s);
}

static void run_suite_file(void **state)
{
    const struct suite_file *f = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", JSON_SCHEMA_SUITE_DIR, f->name);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (!doc)
        fail_msg("%s: %s", path, jerr.text);
    struct tally t = {0};
    size_t i;
    json_t *c;
    json_array_foreach(doc, i, c)
    {
        const char *why = skip_reason(json_object_get(c, "schema"));
        if (why)
            tally_skip(&t, why, (int)json_array_size(json_object_get(c, "tests")));
        else
            run_case(f->name, c, &t);
    }
    json_decref(doc);
    printf("%-26s ran %3d, skipped %3d", f->name, t.ran, t.skipped);
    for (int k = 0; k < REASONS_MAX && t.reasons[k]; k++)
        printf("%s%s: %d", k ? ", " : " (", t.reasons[k], t.counts[k]);
    printf("%s\n", t.reasons[0] ? ")" : "");
    assert_int_equal(t.failed, 0);
    if (f->expect_ran >= 0)
        assert_int_equal(t.ran, f->expect_ran);
    else
        assert_true(t.ran * 10 >= (t.ran + t.skipped) * 8);
}

static const struct suite_file suite_files[] = {
    {"type.json", -1},
    {"properties.json", 10},
    {"required.json", -1},
    {"additionalProperties.json", 6},
    {"enum.json", -1},
    {"const.json", -1},
    {"minimum.json", -1},
    {"maximum.json", -1},
    {"exclusiveMinimum.json", -1},
    {"exclusiveMaximum.json", -1},
    {"minLength.json", -1},
    {"maxLength.json", -1},
    {"minItems.json", -1},
    {"maxItems.json", -1},
    {"items.json", 8},
    {"ref.json", 12},
    {"definitions.json", 0},
    {"anyOf.json", -1},
    {"oneOf.json", -1},
    {"allOf.json", -1},
    {"not.json", -1},
    {"pattern.json", -1},
    {"boolean_schema.json", -1},
};

/* ====================================================================== helpers */

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!v)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    return v;
}

static struct schema *compile(const char *text)
{
    json_t *doc = parse(text);
    struct schema *s = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = schema_new(&s, doc, &e);
    json_decref(doc);
    if (rc != 0)
        fail_msg("schema %s refused: %s", text, e.message);
    return s;
}

/* Compiling must fail with invalid_schema and a message holding `needle`. */
static void refused(const char *text, const char *needle)
{
    json_t *doc = parse(text);
    struct schema *s = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = schema_new(&s, doc, &e);
    json_decref(doc);
    if (rc != CAIRN_EINVAL || !strstr(e.message, needle))
        fail_msg("schema %s: rc %d, message \"%s\", wanted \"%s\"", text, rc, e.message, needle);
    assert_null(s);
    assert_string_equal(e.code, "invalid_schema");
}

/* ====================================================================== errors */

struct err_case {
    const char *schema, *instance, *where;
    const char *code, *field, *message; /* code NULL: must be valid */
};

static const struct err_case err_cases[] = {
    {"{\"type\":\"string\"}", "5", "/payload", "wrong_type", "/payload",
     "must be a string, got number"},
    {"{\"type\":\"integer\"}", "1.0", "", NULL, NULL, NULL},
    {"{\"type\":\"integer\"}", "1.5", "", "wrong_type", "", "must be an integer, got number"},
    {"{\"type\":[\"string\",\"null\"]}", "true", NULL, "wrong_type", "",
     "must be a string or null, got boolean"},
    {"{\"type\":[\"object\",\"array\",\"null\"]}", "1", NULL, "wrong_type", "",
     "must be an object, an array or null, got number"},
    {"{\"required\":[\"lat\"]}", "{}", "/payload", "missing_field", "/payload/lat", "is required"},
    {"{\"properties\":{\"a\":{}},\"additionalProperties\":false}", "{\"a\":1,\"b\":2}", "",
     "unknown_field", "/b", "is not allowed"},
    {"{\"additionalProperties\":{\"type\":\"string\"}}", "{\"env\":\"prod\",\"n\":1}", "",
     "wrong_type", "/n", "must be a string, got number"},
    {"{\"enum\":[\"a\",\"b\",1,null]}", "\"c\"", "", "not_allowed", "",
     "must be one of: a, b, 1, null"},
    {"{\"enum\":[1]}", "1.0", "", NULL, NULL, NULL},
    {"{\"const\":\"event\"}", "\"evt\"", "", "not_allowed", "", "must be event"},
    {"{\"const\":{\"a\":[1,2]}}", "{\"a\":[1,2.0]}", "", NULL, NULL, NULL},
    {"{\"maximum\":90}", "90.5", "", "out_of_range", "", "must be <= 90"},
    {"{\"minimum\":0.5}", "0", "", "out_of_range", "", "must be >= 0.5"},
    {"{\"exclusiveMaximum\":360}", "360", "", "out_of_range", "", "must be < 360"},
    {"{\"exclusiveMinimum\":0}", "0.0", "", "out_of_range", "", "must be > 0"},
    {"{\"maximum\":9007199254740992}", "9007199254740993", "", "out_of_range", "",
     "must be <= 9007199254740992"},
    {"{\"maxLength\":3}", "\"h\\u00e9llo\"", "", "too_long", "",
     "must be at most 3 characters long, got 5"},
    {"{\"maxLength\":3}", "\"\\u00e9\\u00e9\\u00e9\"", "", NULL, NULL, NULL},
    {"{\"minLength\":2}", "\"\\u00e9\"", "", "too_short", "",
     "must be at least 2 characters long, got 1"},
    {"{\"maxItems\":1}", "[1,2]", "", "too_long", "", "must have at most 1 item, got 2"},
    {"{\"minItems\":1}", "[]", "", "too_short", "", "must have at least 1 item, got 0"},
    {"{\"pattern\":\"^evt_\"}", "\"ch_1\"", "", "pattern_mismatch", "",
     "must match the pattern ^evt_"},
    {"{\"pattern\":\"c$\"}", "\"ab\\u0000c\"", "", NULL, NULL, NULL},
    {"{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}", "{\"x\":1}", "/p", "no_match", "/p",
     "must match at least one of the 2 anyOf schemas (#0, the closest, says: /p must be a "
     "string, got object)"},
    /* the branch that got furthest into the value is the one named */
    {"{\"anyOf\":[{\"enum\":[\"low\",\"high\"]},{\"type\":\"object\",\"properties\":{"
     "\"geofence\":{\"enum\":[\"low\"]}},\"additionalProperties\":false}]}",
     "{\"geofenc\":\"low\"}", "/p", "no_match", "/p",
     "must match at least one of the 2 anyOf schemas (#1, the closest, says: /p/geofenc is not "
     "allowed)"},
    {"{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"object\",\"properties\":{\"a\":{"
     "\"type\":\"integer\"}}}]}",
     "{\"a\":\"x\"}", "", "no_match", "",
     "must match exactly one of the 2 oneOf schemas (#1, the closest, says: /a must be an "
     "integer, got string)"},
    {"{\"oneOf\":[{\"minimum\":0},{\"maximum\":10}]}", "5", "", "ambiguous", "",
     "must match exactly one of the 2 oneOf schemas, matches #0 and #1"},
    {"{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}", "1", "", "no_match", "", NULL},
    {"{\"not\":{\"type\":\"null\"}}", "null", "", "not_allowed", "",
     "must not match the \"not\" schema"},
    {"{\"properties\":{\"a/b\":{\"properties\":{\"c~d\":{\"type\":\"string\"}}}}}",
     "{\"a/b\":{\"c~d\":1}}", "/payload", "wrong_type", "/payload/a~1b/c~0d", NULL},
    {"{\"items\":{\"type\":\"integer\"}}", "[1,2,\"x\"]", "", "wrong_type", "/2", NULL},
    {"{\"items\":false}", "[1]", "", "not_allowed", "/0", "is not allowed"},
    {"{\"properties\":{\"x\":false}}", "{\"x\":1}", "", "not_allowed", "/x", "is not allowed"},
    {"false", "{}", "/payload", "not_allowed", "/payload", "is not allowed"},
    {"{\"$defs\":{\"lat\":{\"type\":\"number\",\"maximum\":90}},"
     "\"properties\":{\"lat\":{\"$ref\":\"#/$defs/lat\"}}}",
     "{\"lat\":91}", "/payload", "out_of_range", "/payload/lat", "must be <= 90"},
    /* 2020-12: siblings of $ref apply too. */
    {"{\"$defs\":{\"a\":{\"type\":\"array\"}},\"$ref\":\"#/$defs/a\",\"maxItems\":1}", "[1,2]", "",
     "too_long", "", NULL},
};

static void test_error_reports(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof err_cases / sizeof err_cases[0]; i++) {
        const struct err_case *c = &err_cases[i];
        struct schema *s = compile(c->schema);
        json_t *v = parse(c->instance);
        struct cairn_error e;
        cairn_error_clear(&e);
        int rc = schema_validate(s, v, c->where, &e);
        if (!c->code && rc != 0)
            fail_msg("case %zu: %s refused: %s", i, c->instance, e.message);
        if (c->code) {
            if (rc != CAIRN_EINVAL || strcmp(e.code, c->code) != 0 ||
                strcmp(e.field, c->field) != 0 ||
                (c->message && strcmp(e.message, c->message) != 0))
                fail_msg("case %zu: got rc %d, %s \"%s\" \"%s\"", i, rc, e.code ? e.code : "-",
                         e.field, e.message);
        }
        json_decref(v);
        schema_free(s);
    }
}

/* The document is borrowed only during schema_new: the schema keeps its own
 * copy, returned by schema_doc. */
static void test_doc_is_copied(void **state)
{
    (void)state;
    json_t *doc = parse("{\"enum\":[\"a\",\"b\"],\"properties\":{\"x\":{\"type\":\"string\"}}}");
    struct schema *s = NULL;
    assert_int_equal(schema_new(&s, doc, NULL), 0);
    assert_true(json_equal(doc, (json_t *)schema_doc(s)));
    json_decref(doc);
    json_t *v = parse("\"b\"");
    assert_int_equal(schema_validate(s, v, NULL, NULL), 0);
    json_decref(v);
    v = parse("\"c\"");
    assert_int_equal(schema_validate(s, v, NULL, NULL), CAIRN_EINVAL); /* e may be NULL */
    json_decref(v);
    schema_free(s);
}

/* Pattern answers are memoised per thread (schemas.c, re_match): repeated
 * and colliding strings, a pattern freed and another compiled (perhaps at
 * the same address), and strings past the memo's length must all get
 * regexec's own answer. */
static void pattern_expect(const struct schema *s, const char *str, bool ok)
{
    json_t *v = json_string(str);
    int rc = schema_validate(s, v, NULL, NULL);
    json_decref(v);
    if (rc != (ok ? 0 : CAIRN_EINVAL))
        fail_msg("\"%s\": expected %s", str, ok ? "a match" : "no match");
}

static void test_pattern_memo(void **state)
{
    (void)state;
    char str[128];
    for (int round = 0; round < 3; round++) {
        struct schema *a = compile("{\"pattern\":\"^a+$\"}");
        struct schema *b = compile("{\"pattern\":\"^[a-z]+[0-9]$\"}");
        for (int i = 0; i < 2000; i++) { /* far more strings than memo slots */
            size_t len = 1 + (size_t)(i * 7 + round) % 100;
            memset(str, 'a', len);
            str[len] = '\0';
            if (i % 3 == 0)
                str[len / 2] = 'b'; /* no match for a, a match for neither */
            pattern_expect(a, str, i % 3 != 0);
            str[len - 1] = (char)('0' + i % 10);
            pattern_expect(b, str, len > 1);
            pattern_expect(a, str, false);
        }
        schema_free(a);
        schema_free(b);
        /* the same strings against a new pattern: nothing may come from a */
        struct schema *c = compile("{\"pattern\":\"^b+$\"}");
        pattern_expect(c, "aaa", false);
        pattern_expect(c, "bbb", true);
        pattern_expect(c, "a", false);
        schema_free(c);
    }
}

/* ====================================================================== limits */

static json_t *nested_arrays(int depth)
{
    json_t *v = json_array();
    for (int i = 1; i < depth; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, v);
        v = outer;
    }
    return v;
}

static void expect_too_deep(const struct schema *s, const json_t *v)
{
    struct cairn_error e;
    cairn_error_clear(&e);
    assert_int_equal(schema_validate(s, v, "/payload", &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "too_deep");
    assert_non_null(strstr(e.message, "deeper than"));
}

static void test_depth_limit(void **state)
{
    (void)state;
    struct schema *s = compile("{\"$defs\":{\"n\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$"
                               "defs/n\"}}},\"$ref\":\"#/$defs/n\"}");
    /* CAIRN_DEPTH_MAX + 1 arrays: the innermost is at depth CAIRN_DEPTH_MAX. */
    json_t *ok = nested_arrays(CAIRN_DEPTH_MAX + 1);
    assert_int_equal(schema_validate(s, ok, "", NULL), 0);
    json_t *deep = nested_arrays(CAIRN_DEPTH_MAX + 2);
    expect_too_deep(s, deep);
    json_t *huge = nested_arrays(20000);
    expect_too_deep(s, huge);
    schema_free(s);

    /* A limit is not a mismatch: anyOf must not turn it into no_match, nor
     * `not` into a match. */
    s = compile("{\"$defs\":{\"n\":{\"items\":{\"$ref\":\"#/$defs/n\"}}},"
                "\"anyOf\":[{\"$ref\":\"#/$defs/n\"},{\"type\":\"string\"}]}");
    expect_too_deep(s, deep);
    schema_free(s);
    s = compile("{\"$defs\":{\"n\":{\"items\":{\"$ref\":\"#/$defs/n\"}}},"
                "\"not\":{\"not\":{\"$ref\":\"#/$defs/n\"}}}");
    expect_too_deep(s, deep);
    schema_free(s);
    json_decref(ok);
    json_decref(deep);
    json_decref(huge);
}

static void test_schema_depth_limit(void **state)
{
    (void)state;
    json_t *doc = json_object();
    for (int i = 0; i < 200; i++) {
        json_t *outer = json_object();
        json_object_set_new(outer, "not", doc);
        doc = outer;
    }
    struct schema *s = NULL;
    struct cairn_error e;
    assert_int_equal(schema_new(&s, doc, &e), CAIRN_EINVAL);
    assert_non_null(strstr(e.message, "nests deeper"));
    json_decref(doc);
}

/* ====================================================================== refused schemas */

static void test_unknown_keyword(void **state)
{
    (void)state;
    json_t *doc = parse("{\"properties\":{\"lat\":{\"type\":\"number\",\"minimun\":-90}}}");
    struct schema *s = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    assert_int_equal(schema_new(&s, doc, &e), CAIRN_EINVAL);
    assert_null(s);
    assert_string_equal(e.code, "invalid_schema");
    assert_string_equal(e.message, "unknown keyword \"minimun\" at #/properties/lat");
    assert_string_equal(e.field, "/properties/lat/minimun");
    json_decref(doc);
    refused("{\"$defs\":{\"unused\":{\"tpye\":\"string\"}}}", "\"tpye\" at #/$defs/unused");
    refused("{\"patternProperties\":{}}", "unknown keyword \"patternProperties\" at #");
    refused("{\"items\":{\"format\":\"date-time\"}}", "unknown keyword \"format\" at #/items");
}

static void test_bad_keyword_values(void **state)
{
    (void)state;
    refused("{\"type\":\"strin\"}", "\"type\" must name");
    refused("{\"type\":[\"string\",\"string\"]}", "names a type twice");
    refused("{\"type\":[]}", "\"type\" must be");
    refused("{\"minLength\":-1}", "\"minLength\" must be a non-negative integer");
    refused("{\"maxItems\":1.5}", "\"maxItems\" must be a non-negative integer");
    refused("{\"maximum\":\"90\"}", "\"maximum\" must be a number");
    refused("{\"exclusiveMinimum\":true}", "\"exclusiveMinimum\" must be a number");
    refused("{\"enum\":[]}", "\"enum\" must be a non-empty array");
    refused("{\"required\":[1]}", "\"required\" must be an array of property names");
    refused("{\"properties\":{\"a\":1}}", "schema at #/properties/a must be an object");
    refused("{\"anyOf\":[]}", "\"anyOf\" must be a non-empty array");
    refused("{\"items\":[{}]}", "tuple form");
    refused("{\"pattern\":\"(\"}", "not a POSIX extended regular expression");
    refused("{\"pattern\":\"^\\\\d+$\"}", "[0-9]");
    refused("{\"title\":1}", "\"title\" must be a string");
    refused("{\"$ref\":\"other.json#/$defs/a\"}", "remote and relative references");
    refused("{\"$ref\":\"#/$defs/missing\"}", "$ref \"#/$defs/missing\" does not point");
    refused("{\"$ref\":\"#/enum/0\",\"enum\":[{}]}", "$ref \"#/enum/0\" does not point");
    refused("{\"$ref\":\"#/properties/a~2\",\"properties\":{\"a\":{}}}", "does not point");
    refused("{\"$ref\":\"#/allOf/01\",\"allOf\":[{},{}]}", "does not point");
}

static void test_ref_cycles(void **state)
{
    (void)state;
    refused("{\"$ref\":\"#\"}", "loops back");
    refused("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},"
            "\"$ref\":\"#/$defs/a\"}",
            "loops back");
    refused("{\"$defs\":{\"a\":{\"allOf\":[{\"not\":{\"$ref\":\"#/$defs/a\"}}]}}}",
            "$ref \"#/$defs/a\" loops back");
    refused("{\"anyOf\":[{\"type\":\"null\"},{\"oneOf\":[{\"$ref\":\"#\"}]}]}", "loops back");

    /* A chain longer than the cap, built as d0 → d1 → … → d40. */
    json_t *defs = json_object();
    for (int i = 0; i <= 40; i++) {
        char name[16], ref[32];
        snprintf(name, sizeof name, "d%d", i);
        snprintf(ref, sizeof ref, "#/$defs/d%d", i + 1);
        json_object_set_new(defs, name, i == 40 ? json_true() : json_pack("{s:s}", "$ref", ref));
    }
    json_t *doc = json_pack("{s:o}", "$defs", defs);
    struct schema *s = NULL;
    struct cairn_error e;
    assert_int_equal(schema_new(&s, doc, &e), CAIRN_EINVAL);
    assert_non_null(strstr(e.message, "in a row"));
    json_decref(doc);

    /* Recursion that descends into the instance is fine. */
    s = compile("{\"type\":\"object\",\"properties\":{\"value\":{\"type\":\"number\"},"
                "\"children\":{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}},"
                "\"required\":[\"value\"],\"additionalProperties\":false}");
    json_t *tree = parse("{\"value\":1,\"children\":[{\"value\":2},{\"value\":3,\"children\":"
                         "[{\"value\":4}]}]}");
    assert_int_equal(schema_validate(s, tree, "", NULL), 0);
    json_decref(tree);
    tree = parse("{\"value\":1,\"children\":[{\"value\":2,\"children\":[{}]}]}");
    cairn_error_clear(&e);
    assert_int_equal(schema_validate(s, tree, "", &e), CAIRN_EINVAL);
    assert_string_equal(e.code, "missing_field");
    assert_string_equal(e.field, "/children/0/children/0/value");
    json_decref(tree);
    schema_free(s);
}

/* RFC 6901 escapes and URI percent-encoding in $ref (the suite's "escaped
 * pointer ref" case, rewritten with $defs since members that are not
 * keywords are refused). */
static void test_ref_escapes(void **state)
{
    (void)state;
    struct schema *s =
        compile("{\"$defs\":{\"tilda~field\":{\"type\":\"integer\"},\"slash/field\":{\"type\":"
                "\"integer\"},\"percent%field\":{\"type\":\"integer\"}},\"properties\":{"
                "\"tilda\":{\"$ref\":\"#/$defs/tilda~0field\"},\"slash\":{\"$ref\":\"#/$defs/"
                "slash~1field\"},\"percent\":{\"$ref\":\"#/$defs/percent%25field\"},"
                "\"second\":{\"$ref\":\"#/properties/tilda\"},\"first\":{\"$ref\":\"#/anyOf/0\"}},"
                "\"anyOf\":[{\"type\":\"object\"}]}");
    static const char *const good[] = {"{\"tilda\":1}", "{\"slash\":1}", "{\"percent\":1}",
                                       "{\"second\":1}", "{\"first\":{}}"};
    static const char *const bad[] = {"{\"tilda\":\"a\"}", "{\"slash\":\"a\"}",
                                      "{\"percent\":\"a\"}", "{\"second\":\"a\"}", "{\"first\":1}"};
    for (size_t i = 0; i < 5; i++) {
        json_t *v = parse(good[i]);
        assert_int_equal(schema_validate(s, v, "", NULL), 0);
        json_decref(v);
        v = parse(bad[i]);
        assert_int_equal(schema_validate(s, v, "", NULL), CAIRN_EINVAL);
        json_decref(v);
    }
    schema_free(s);
}

/* ====================================================================== schema sets */

static char set_dir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", set_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", set_dir, name);
    unlink(path);
}

static int open_set_expect(int want, const char *needle)
{
    struct schema_set *set = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = schema_set_open(&set, set_dir, &e);
    if (rc != want || (needle && !strstr(e.message, needle)))
        fail_msg("schema_set_open: rc %d, \"%s\", wanted %d \"%s\"", rc, e.message, want,
                 needle ? needle : "");
    assert_null(set);
    return rc;
}

static void test_schema_set(void **state)
{
    (void)state;
    snprintf(set_dir, sizeof set_dir, "/tmp/cairn-schemas-XXXXXX");
    assert_non_null(mkdtemp(set_dir));
    write_file("telemetry.json", "{\"type\":\"object\",\"required\":[\"device_id\"]}");
    write_file("geofence.define.json", "{\"type\":\"object\"}");
    write_file("alert.json", "true");
    write_file(".hidden.json", "{\"nonsense\":1}");
    write_file("README.md", "not a schema");
    char sub[128];
    snprintf(sub, sizeof sub, "%s/examples", set_dir);
    assert_int_equal(mkdir(sub, 0700), 0);

    struct schema_set *set = NULL;
    assert_int_equal(schema_set_open(&set, set_dir, NULL), 0);
    assert_int_equal(schema_set_count(set), 3);
    assert_string_equal(schema_set_type(set, 0), "alert");
    assert_string_equal(schema_set_type(set, 1), "geofence.define");
    assert_string_equal(schema_set_type(set, 2), "telemetry");
    assert_non_null(schema_set_get(set, "geofence.define"));
    assert_null(schema_set_get(set, "examples"));
    assert_null(schema_set_get(set, "location"));
    json_t *v = parse("{}");
    struct cairn_error e;
    assert_int_equal(schema_validate(schema_set_get(set, "telemetry"), v, "/payload", &e),
                     CAIRN_EINVAL);
    assert_string_equal(e.field, "/payload/device_id");
    json_decref(v);
    schema_set_close(set);

    write_file("order.json", "{\"properties\":{\"total\":{\"minimun\":0}}}");
    open_set_expect(CAIRN_EINVAL, "order.json: unknown keyword \"minimun\"");
    remove_file("order.json");
    write_file("order.json", "{\"type\":\"object\",}");
    open_set_expect(CAIRN_EINVAL, "order.json:1:");
    remove_file("order.json");
    write_file("bad type.json", "true");
    open_set_expect(CAIRN_EINVAL, "bad type.json: a type name");
    remove_file("bad type.json");

    static const char *const names[] = {"telemetry.json", "geofence.define.json", "alert.json",
                                        ".hidden.json", "README.md"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        remove_file(names[i]);
    rmdir(sub);
    assert_int_equal(schema_set_open(&set, set_dir, NULL), 0); /* empty is fine */
    assert_int_equal(schema_set_count(set), 0);
    schema_set_close(set);
    rmdir(set_dir);
    open_set_expect(CAIRN_EIO, "cannot read schema directory");
}

/* ====================================================================== main */

int main(void)
{
    enum { NFILES = sizeof suite_files / sizeof suite_files[0] };
    struct CMUnitTest tests[NFILES + 10];
    size_t n = 0;
    for (size_t i = 0; i < NFILES; i++) {
        tests[n] =
            (struct CMUnitTest)cmocka_unit_test_prestate(run_suite_file, (void *)&suite_files[i]);
        tests[n++].name = suite_files[i].name;
    }
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_error_reports),   cmocka_unit_test(test_doc_is_copied),
        cmocka_unit_test(test_depth_limit),     cmocka_unit_test(test_schema_depth_limit),
        cmocka_unit_test(test_unknown_keyword), cmocka_unit_test(test_bad_keyword_values),
        cmocka_unit_test(test_ref_cycles),      cmocka_unit_test(test_ref_escapes),
        cmocka_unit_test(test_schema_set),      cmocka_unit_test(test_pattern_memo),
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        tests[n++] = own[i];
    return _cmocka_run_group_tests("schemas", tests, n, NULL, NULL);
}
