/*
 * test_examples.c — the real input schemas (CAIRN_SCHEMA_DIR) against their
 * examples (schemas/examples/<type>.json):
 *
 *   {"valid":   [payload, …],
 *    "invalid": [{"payload": {…}, "code": "out_of_range", "field": "/lat"}, …]}
 *
 * Every valid payload must pass; every invalid one must be refused with
 * exactly its code and field (a JSON pointer from the payload root, i.e.
 * validated with where = ""). Every schema has an examples file and every
 * examples file a schema, so a new input type cannot ship untested.
 *
 * In builds without AddressSanitizer it also checks the promise of
 * schemas.h that validating a valid payload allocates nothing: malloc,
 * calloc and realloc are counted around a second validation (the first one
 * lets glibc's regexec build the DFA states it caches in the regex_t).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "schemas.h"

/* At least this many examples of each kind per type. */
#define VALID_MIN 3
#define INVALID_MIN 4

#define SCHEMA_2020_12 "https://json-schema.org/draft/2020-12/schema"

/* ====================================================================== allocation counter */

/* ASan brings its own allocator; interposing on top of it is not possible. */
#if !defined(__SANITIZE_ADDRESS__) && defined(__GLIBC__)
#define COUNT_ALLOCATIONS 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);

static bool counting;
static long allocations;

void *malloc(size_t n)
{
    allocations += counting;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    allocations += counting;
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    allocations += counting;
    return __libc_realloc(p, n);
}
#endif

static int setup(void **state)
{
    struct schema_set *set = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    if (schema_set_open(&set, CAIRN_SCHEMA_DIR, &e) != 0) {
        print_error("schema_set_open(%s): %s\n", CAIRN_SCHEMA_DIR, e.message);
        return -1;
    }
    *state = set;
    return 0;
}

static int teardown(void **state)
{
    schema_set_close(*state);
    return 0;
}

static json_t *load_examples(const char *type)
{
    char path[512];
    snprintf(path, sizeof path, "%s/examples/%s.json", CAIRN_SCHEMA_DIR, type);
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        fail_msg("%s: %s (every schema needs an examples file)", path, jerr.text);
    return doc;
}

static int check_valid(const char *type, const struct schema *s, const json_t *list)
{
    int bad = 0;
    size_t i;
    json_t *payload;
    json_array_foreach(list, i, payload)
    {
        struct cairn_error e;
        cairn_error_clear(&e);
        if (schema_validate(s, payload, "", &e) != 0) {
            printf("  %s valid[%zu] refused: %s %s: %s\n", type, i, e.code, e.field, e.message);
            bad++;
        }
    }
    return bad;
}

static int check_invalid(const char *type, const struct schema *s, const json_t *list)
{
    int bad = 0;
    size_t i;
    json_t *ex;
    json_array_foreach(list, i, ex)
    {
        const char *code = json_string_value(json_object_get(ex, "code"));
        const char *field = json_string_value(json_object_get(ex, "field"));
        const json_t *payload = json_object_get(ex, "payload");
        if (!code || !field || !payload)
            fail_msg("%s invalid[%zu] needs payload, code and field", type, i);
        struct cairn_error e;
        cairn_error_clear(&e);
        int rc = schema_validate(s, payload, "", &e);
        if (rc != CAIRN_EINVAL || strcmp(e.code, code) != 0 || strcmp(e.field, field) != 0 ||
            e.message[0] == '\0') {
            printf("  %s invalid[%zu]: wanted %s %s, got %s %s: %s\n", type, i, code, field,
                   rc ? e.code : "valid", e.field, e.message);
            bad++;
            continue;
        }
        /* The caller's prefix goes in front of the pointer. */
        schema_validate(s, payload, "/payload", &e);
        char want[CAIRN_ERR_FIELD_MAX];
        snprintf(want, sizeof want, "/payload%s", field);
        assert_string_equal(e.field, want);
    }
    return bad;
}

/* A schema file states its dialect and documents itself. */
static void check_header(const char *type, const struct schema *s)
{
    const json_t *doc = schema_doc(s);
    const char *dialect = json_string_value(json_object_get(doc, "$schema"));
    if (!dialect || strcmp(dialect, SCHEMA_2020_12) != 0)
        fail_msg("%s.json: \"$schema\" must be %s", type, SCHEMA_2020_12);
    if (!json_is_string(json_object_get(doc, "title")) ||
        !json_is_string(json_object_get(doc, "description")))
        fail_msg("%s.json: needs a title and a description", type);
}

static void test_examples(void **state)
{
    const struct schema_set *set = *state;
    assert_true(schema_set_count(set) > 0);
    int bad = 0;
    for (size_t t = 0; t < schema_set_count(set); t++) {
        const char *type = schema_set_type(set, t);
        const struct schema *s = schema_set_get(set, type);
        check_header(type, s);
        json_t *doc = load_examples(type);
        const json_t *valid = json_object_get(doc, "valid");
        const json_t *invalid = json_object_get(doc, "invalid");
        if (json_array_size(valid) < VALID_MIN || json_array_size(invalid) < INVALID_MIN)
            fail_msg("%s: wants at least %d valid and %d invalid examples", type, VALID_MIN,
                     INVALID_MIN);
        bad += check_valid(type, s, valid) + check_invalid(type, s, invalid);
        printf("%-12s %zu valid, %zu invalid examples\n", type, json_array_size(valid),
               json_array_size(invalid));
        json_decref(doc);
    }
    assert_int_equal(bad, 0);
}

static void test_valid_allocates_nothing(void **state)
{
#ifdef COUNT_ALLOCATIONS
    const struct schema_set *set = *state;
    for (size_t t = 0; t < schema_set_count(set); t++) {
        const char *type = schema_set_type(set, t);
        const struct schema *s = schema_set_get(set, type);
        json_t *doc = load_examples(type);
        size_t i;
        json_t *payload;
        json_array_foreach(json_object_get(doc, "valid"), i, payload)
        {
            /* Ingest validates the decoded msgpack payload (schema_validate_mp);
             * schema_validate over jansson encodes it first, which allocates. */
            struct cairn_buf b;
            cairn_buf_init(&b, SIZE_MAX);
            assert_int_equal(cairn_json_to_msgpack(payload, &b, NULL), 0);
            msgpack_zone z;
            assert_true(msgpack_zone_init(&z, 2048));
            msgpack_object o;
            size_t off = 0;
            assert_int_equal(msgpack_unpack((const char *)b.data, b.len, &off, &z, &o),
                             MSGPACK_UNPACK_SUCCESS);
            assert_int_equal(schema_validate_mp(s, &o, "/payload", NULL), 0);
            allocations = 0;
            counting = true;
            int rc = schema_validate_mp(s, &o, "/payload", NULL);
            counting = false;
            assert_int_equal(rc, 0);
            if (allocations != 0)
                fail_msg("%s valid[%zu]: %ld allocations", type, i, allocations);
            msgpack_zone_destroy(&z);
            cairn_buf_deinit(&b);
        }
        json_decref(doc);
    }
#else
    (void)state;
    skip();
#endif
}

/* Every examples/<type>.json names a type that has a schema. */
static void test_examples_have_schemas(void **state)
{
    const struct schema_set *set = *state;
    DIR *d = opendir(CAIRN_SCHEMA_DIR "/examples");
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len <= 5 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        char type[256];
        snprintf(type, sizeof type, "%.*s", (int)(len - 5), de->d_name);
        if (!schema_set_get(set, type))
            fail_msg("examples/%s has no schema %s.json", de->d_name, type);
        files++;
    }
    closedir(d);
    assert_int_equal((size_t)files, schema_set_count(set));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_examples_have_schemas),
        cmocka_unit_test(test_valid_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
