/*
 * schemas.c — JSON Schema (draft 2020-12 subset) compiled into a tree of
 * nodes, and the validator that walks it.
 *
 * Compiling takes three passes over a private deep copy of the document
 * (nodes borrow strings and values from that copy, so it lives as long as
 * the schema):
 *
 *   build   one node per subschema. Every keyword's value is checked and
 *           parsed (patterns compiled, enum texts rendered for messages); an
 *           unknown keyword is refused, so a typo cannot silently accept
 *           everything.
 *   link    each `$ref` (a JSON pointer into the same document) is pointed
 *           at the node built for its target.
 *   check   refs may recurse, but only through a keyword that descends into
 *           the instance (properties, items, additionalProperties). A cycle
 *           that stays at one instance location ($ref, allOf, anyOf, oneOf,
 *           not) would never end, so it is refused, and the chain of
 *           subschemas applied at one location is capped.
 *
 * With the instance depth capped at CAIRN_DEPTH_MAX, the validator's
 * recursion is bounded by (CAIRN_DEPTH_MAX + 1) * SCHEMA_CHAIN_MAX nodes.
 *
 * Validating a valid instance allocates nothing: the path to the current
 * value is a stack of borrowed segments, formatted into a JSON pointer only
 * when a failure is reported; branches of anyOf/oneOf/not are tried without
 * formatting anything. (glibc's regexec allocates internally; that is out of
 * our hands. Its answers for short strings are memoised per thread: see
 * re_memo_match.)
 */
#include "schemas.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ====================================================================== limits */

/* JSON nesting of a schema document. Describing a payload CAIRN_DEPTH_MAX
 * deep takes two schema levels per payload level (properties → name), and
 * combinators add a few more; four times is ample. It also bounds the
 * compiler's recursion and the enum/const comparison. */
#define SCHEMA_DOC_DEPTH_MAX (4 * CAIRN_DEPTH_MAX)
/* Subschemas in one document. Our largest schema has about 40; the cap only
 * stops a generated monster from eating memory at start-up. */
#define SCHEMA_NODES_MAX 4096
/* Subschemas applied in a row at one instance location ($ref → allOf →
 * $ref …). Real schemas stay under 8; the cap bounds the validator's stack
 * per instance level. */
#define SCHEMA_CHAIN_MAX 32
/* Rendered enum/const values in messages; leaves room in the 512-byte
 * message for the words around them. */
#define SCHEMA_TEXT_MAX 320
/* Schema files in one directory: one per input type. */
#define SCHEMA_SET_MAX 256
/* One schema file. Ours are a few KiB. */
#define SCHEMA_FILE_MAX (1u << 20)

/* ====================================================================== nodes */

enum {
    T_NULL = 1u << 0,
    T_BOOLEAN = 1u << 1,
    T_OBJECT = 1u << 2,
    T_ARRAY = 1u << 3,
    T_NUMBER = 1u << 4,
    T_STRING = 1u << 5,
    T_INTEGER = 1u << 6,
};

/* A numeric bound; text is the value as messages print it. */
struct bound {
    const json_t *v; /* NULL: the keyword is absent */
    char text[40];
};

struct prop {
    const char *name;
    size_t len;
    struct node *schema;
};

struct list {
    struct node **v;
    size_t n;
};

/* One compiled subschema. Absent keywords are NULL / 0 / SIZE_MAX, so the
 * boolean schema `true` is a node with nothing set. */
struct node {
    const json_t *doc; /* the subschema in the schema's copy: key for $ref */
    bool never;        /* the boolean schema `false` */
    unsigned types;    /* T_* bits; 0: any type */
    char type_text[96];
    const json_t *enum_v, *const_v;
    char *enum_text, *const_text;
    struct bound min, max, xmin, xmax;
    size_t min_len, max_len, min_items, max_items;
    bool has_re;
    regex_t re;
    uint64_t re_id; /* unique per compiled pattern, process-wide: the memo's key */
    const char *pattern;
    const json_t *props_doc; /* the `properties` object: lookup for additionalProperties */
    struct prop *props;
    size_t nprops;
    const json_t *required;
    int *req_prop; /* per required name, its index in props (-1: none); NULL: no props */
    struct node *additional, *items, *not_;
    struct list all, any, one;
    const char *ref;
    struct node *target;
    unsigned char mark; /* check pass: WHITE, GRAY, BLACK */
    unsigned chain;     /* longest run of nodes applied at one location from here */
};

struct schema {
    json_t *doc;
    struct node *root;
    struct node **nodes; /* every node, for freeing and for $ref lookup */
    size_t n, cap;
};

static void node_free(struct node *n)
{
    if (n->has_re)
        regfree(&n->re);
    free(n->enum_text);
    free(n->const_text);
    free(n->props);
    free(n->req_prop);
    free(n->all.v);
    free(n->any.v);
    free(n->one.v);
    free(n);
}

void schema_free(struct schema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        node_free(s->nodes[i]);
    free(s->nodes);
    json_decref(s->doc);
    free(s);
}

const json_t *schema_doc(const struct schema *s)
{
    return s->doc;
}

/* ====================================================================== small helpers */

/* Appends one JSON pointer segment ("/" + token, ~ and / escaped per RFC
 * 6901). A segment that does not fit is left out whole, so a truncated
 * pointer still names an ancestor of the value. Returns false then. */
static bool ptr_append(char *out, size_t cap, size_t *len, const char *tok, size_t n)
{
    size_t need = 1 + n;
    for (size_t i = 0; i < n; i++)
        need += tok[i] == '~' || tok[i] == '/';
    if (*len + need >= cap)
        return false;
    out[(*len)++] = '/';
    for (size_t i = 0; i < n; i++) {
        if (tok[i] == '~' || tok[i] == '/') {
            out[(*len)++] = '~';
            out[(*len)++] = tok[i] == '~' ? '0' : '1';
        } else {
            out[(*len)++] = tok[i];
        }
    }
    out[*len] = '\0';
    return true;
}

static bool ptr_append_index(char *out, size_t cap, size_t *len, size_t index)
{
    char tok[24];
    int n = snprintf(tok, sizeof tok, "%zu", index);
    return ptr_append(out, cap, len, tok, (size_t)n);
}

/* A real with no fractional part is an integer for JSON Schema (1.0 is 1). */
static bool is_integral(const json_t *v)
{
    if (json_is_integer(v))
        return true;
    if (!json_is_real(v))
        return false;
    double d = json_real_value(v);
    return isfinite(d) && d == floor(d);
}

/* ---- the instance is msgpack (what ingest stores); the schema is JSON ---- */

static bool mp_is_number(const msgpack_object *v)
{
    return v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
           v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || v->type == MSGPACK_OBJECT_FLOAT64 ||
           v->type == MSGPACK_OBJECT_FLOAT32;
}

static unsigned type_bits(const msgpack_object *v)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL: return T_NULL;
    case MSGPACK_OBJECT_BOOLEAN: return T_BOOLEAN;
    case MSGPACK_OBJECT_MAP: return T_OBJECT;
    case MSGPACK_OBJECT_ARRAY: return T_ARRAY;
    case MSGPACK_OBJECT_STR: return T_STRING;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return T_NUMBER | T_INTEGER;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        /* A real with no fractional part is an integer for JSON Schema. */
        double d = v->via.f64;
        return T_NUMBER | (isfinite(d) && d == floor(d) ? T_INTEGER : 0);
    }
    default: return 0; /* bin, ext: never admitted by ingest */
    }
}

/* JSON's own names: integers and reals are both "number". */
static const char *type_name(const msgpack_object *v)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL: return "null";
    case MSGPACK_OBJECT_BOOLEAN: return "boolean";
    case MSGPACK_OBJECT_MAP: return "object";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_STR: return "string";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "number";
    default: return "unknown";
    }
}

/* Compares an instance number with a schema number exactly: as integers
 * when both are, otherwise as long double, which holds every int64, every
 * uint64 and every double. */
static int num_cmp(const msgpack_object *a, const json_t *b)
{
    if (json_is_integer(b) && a->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        json_int_t y = json_integer_value(b);
        return y < 0 ? 1 : (a->via.u64 > (uint64_t)y) - (a->via.u64 < (uint64_t)y);
    }
    if (json_is_integer(b) && a->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        json_int_t y = json_integer_value(b);
        return (a->via.i64 > y) - (a->via.i64 < y);
    }
    long double x = a->type == MSGPACK_OBJECT_POSITIVE_INTEGER   ? (long double)a->via.u64
                    : a->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? (long double)a->via.i64
                                                                 : (long double)a->via.f64;
    long double y = json_is_integer(b) ? (long double)json_integer_value(b) : json_real_value(b);
    return (x > y) - (x < y);
}

/* The member `key` of an instance map, or NULL. */
static const msgpack_object *mp_member(const msgpack_object *map, const char *key, size_t n)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            !memcmp(k->via.str.size ? k->via.str.ptr : "", key, n))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* JSON Schema equality of a schema value `a` and an instance value `b`:
 * numbers by value (1 == 1.0), objects regardless of key order. `a` comes
 * from the schema, whose depth is bounded, and the recursion stops where
 * `a` has no children. */
static bool same(const json_t *a, const msgpack_object *b)
{
    switch (json_typeof(a)) {
    case JSON_INTEGER:
    case JSON_REAL: return mp_is_number(b) && num_cmp(b, a) == 0;
    case JSON_NULL: return b->type == MSGPACK_OBJECT_NIL;
    case JSON_TRUE: return b->type == MSGPACK_OBJECT_BOOLEAN && b->via.boolean;
    case JSON_FALSE: return b->type == MSGPACK_OBJECT_BOOLEAN && !b->via.boolean;
    case JSON_STRING:
        return b->type == MSGPACK_OBJECT_STR && json_string_length(a) == b->via.str.size &&
               memcmp(json_string_value(a), b->via.str.size ? b->via.str.ptr : "",
                      b->via.str.size) == 0;
    case JSON_ARRAY:
        if (b->type != MSGPACK_OBJECT_ARRAY || json_array_size(a) != b->via.array.size)
            return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!same(json_array_get(a, i), &b->via.array.ptr[i]))
                return false;
        return true;
    case JSON_OBJECT:
        if (b->type != MSGPACK_OBJECT_MAP || json_object_size(a) != b->via.map.size)
            return false;
        for (void *it = json_object_iter((json_t *)a); it;
             it = json_object_iter_next((json_t *)a, it)) {
            const msgpack_object *bv =
                mp_member(b, json_object_iter_key(it), json_object_iter_key_len(it));
            if (!bv || !same(json_object_iter_value(it), bv))
                return false;
        }
        return true;
    }
    return false;
}

/* True when v nests more than `left` arrays/objects deep. Recurses at most
 * `left` levels, so it is safe on any document. */
static bool nests_deeper(const json_t *v, int left)
{
    if (!json_is_object(v) && !json_is_array(v))
        return false;
    if (left == 0)
        return true;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (nests_deeper(json_array_get(v, i), left - 1))
                return true;
        return false;
    }
    for (void *it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it))
        if (nests_deeper(json_object_iter_value(it), left - 1))
            return true;
    return false;
}

/* Unicode code points in valid UTF-8 (ingest guarantees validity): count
 * the bytes that do not continue a sequence. */
static size_t utf8_count(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* A number as messages print it: integers exactly, reals in the shortest of
 * %.15g / %.17g that reads back the same. Messages must not depend on the
 * locale, hence the ',' repair. */
static void number_text(const json_t *v, char *out, size_t cap)
{
    if (json_is_integer(v)) {
        snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return;
    }
    double d = json_real_value(v);
    snprintf(out, cap, "%.15g", d);
    if (strtod(out, NULL) != d)
        snprintf(out, cap, "%.17g", d);
    for (char *p = out; *p; p++)
        if (*p == ',')
            *p = '.';
}

/* ====================================================================== build: context */

struct build {
    struct schema *s;
    struct cairn_error *e;
    char path[CAIRN_ERR_FIELD_MAX]; /* JSON pointer of the current keyword */
    size_t plen;
};

static int oom(struct cairn_error *e)
{
    cairn_error_set(e, "no_memory", "", "out of memory while compiling a schema");
    return CAIRN_ENOMEM;
}

/* Refuses the value of keyword `kw` (whose pointer is b->path). */
static int bad(struct build *b, const char *kw, const char *what)
{
    return cairn_error_set(b->e, "invalid_schema", b->path, "\"%s\" %s (at #%s)", kw, what,
                           b->path);
}

static size_t path_push(struct build *b, const char *tok, size_t n)
{
    size_t mark = b->plen;
    ptr_append(b->path, sizeof b->path, &b->plen, tok, n);
    return mark;
}

static size_t path_push_index(struct build *b, size_t i)
{
    size_t mark = b->plen;
    ptr_append_index(b->path, sizeof b->path, &b->plen, i);
    return mark;
}

static void path_pop(struct build *b, size_t mark)
{
    b->plen = mark;
    b->path[mark] = '\0';
}

static int node_new(struct build *b, const json_t *doc, struct node **out)
{
    struct schema *s = b->s;
    if (s->n == SCHEMA_NODES_MAX)
        return cairn_error_set(b->e, "invalid_schema", b->path,
                               "schema has more than %d subschemas", SCHEMA_NODES_MAX);
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        struct node **v = realloc(s->nodes, cap * sizeof *v);
        if (!v)
            return oom(b->e);
        s->nodes = v;
        s->cap = cap;
    }
    struct node *n = calloc(1, sizeof *n);
    if (!n)
        return oom(b->e);
    n->doc = doc;
    n->max_len = SIZE_MAX;
    n->max_items = SIZE_MAX;
    s->nodes[s->n++] = n;
    *out = n;
    return 0;
}

static int build_node(struct build *b, const json_t *j, struct node **out);

/* ====================================================================== build: keywords */

struct keyword;
typedef int (*keyword_fn)(struct build *b, struct node *n, const json_t *v,
                          const struct keyword *k);

struct keyword {
    const char *name;
    keyword_fn fn;
    size_t off; /* the node member the keyword fills, for the shared parsers */
};

#define MEMBER(T, n, off) ((T *)(void *)((char *)(n) + (off)))

/* title, description, $comment, $schema, $id: annotations, checked for
 * type only. $id does not change the base URI: only "#…" refs exist here. */
static int kw_note(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    (void)n;
    return json_is_string(v) ? 0 : bad(b, k->name, "must be a string");
}

static const struct tname {
    const char *name;
    unsigned bit;
    const char *phrase;
} tnames[] = {
    {"null", T_NULL, "null"},
    {"boolean", T_BOOLEAN, "a boolean"},
    {"object", T_OBJECT, "an object"},
    {"array", T_ARRAY, "an array"},
    {"number", T_NUMBER, "a number"},
    {"string", T_STRING, "a string"},
    {"integer", T_INTEGER, "an integer"},
};

static int type_add(struct build *b, struct node *n, const json_t *name, size_t i, size_t count)
{
    for (size_t t = 0; t < sizeof tnames / sizeof tnames[0]; t++) {
        if (!json_is_string(name) || strcmp(json_string_value(name), tnames[t].name) != 0)
            continue;
        if (n->types & tnames[t].bit)
            return bad(b, "type", "names a type twice");
        n->types |= tnames[t].bit;
        size_t len = strlen(n->type_text);
        const char *sep = i == 0 ? "" : i + 1 == count ? " or " : ", ";
        snprintf(n->type_text + len, sizeof n->type_text - len, "%s%s", sep, tnames[t].phrase);
        return 0;
    }
    return bad(b, "type", "must name null, boolean, object, array, number, string or integer");
}

static int kw_type(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (json_is_string(v))
        return type_add(b, n, v, 0, 1);
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(b, k->name, "must be a type name or a non-empty array of them");
    for (size_t i = 0; i < json_array_size(v); i++) {
        int rc = type_add(b, n, json_array_get(v, i), i, json_array_size(v));
        if (rc)
            return rc;
    }
    return 0;
}

/* Appends one value to an enum/const text: strings as they are, other
 * values as compact JSON. Whole values only; "…" once one does not fit. */
static int text_add(char *buf, size_t *len, const json_t *v, bool first)
{
    char *dumped = NULL;
    const char *s;
    size_t n;
    if (json_is_string(v)) {
        s = json_string_value(v);
        n = strlen(s);
    } else {
        dumped = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!dumped)
            return CAIRN_ENOMEM;
        s = dumped;
        n = strlen(s);
    }
    const char *sep = first ? "" : ", ";
    /* Keep room for ", …" (2 + 3 bytes) and the terminator. */
    if (*len + strlen(sep) + n + 6 > SCHEMA_TEXT_MAX) {
        snprintf(buf + *len, SCHEMA_TEXT_MAX + 1 - *len, "%s…", sep);
        *len = SCHEMA_TEXT_MAX;
    } else {
        *len += (size_t)snprintf(buf + *len, SCHEMA_TEXT_MAX + 1 - *len, "%s%s", sep, s);
    }
    free(dumped);
    return 0;
}

static int render(struct build *b, const json_t *v, bool list, char **out)
{
    char *buf = malloc(SCHEMA_TEXT_MAX + 1);
    if (!buf)
        return oom(b->e);
    size_t len = 0;
    buf[0] = '\0';
    size_t count = list ? json_array_size(v) : 1;
    for (size_t i = 0; i < count && len < SCHEMA_TEXT_MAX; i++) {
        if (text_add(buf, &len, list ? json_array_get(v, i) : v, i == 0)) {
            free(buf);
            return oom(b->e);
        }
    }
    *out = buf;
    return 0;
}

static int kw_enum(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(b, k->name, "must be a non-empty array");
    n->enum_v = v;
    return render(b, v, true, &n->enum_text);
}

static int kw_const(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    (void)k;
    n->const_v = v;
    return render(b, v, false, &n->const_text);
}

/* minimum, maximum, exclusiveMinimum, exclusiveMaximum. Draft 4's boolean
 * exclusiveMinimum is refused by the number check. */
static int kw_bound(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_number(v))
        return bad(b, k->name, "must be a number");
    struct bound *bd = MEMBER(struct bound, n, k->off);
    bd->v = v;
    number_text(v, bd->text, sizeof bd->text);
    return 0;
}

/* minLength, maxLength, minItems, maxItems: non-negative integers (2.0
 * counts as 2). Counts beyond size_t cannot be reached, so they saturate. */
static int kw_count(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    size_t *dst = MEMBER(size_t, n, k->off);
    if (!is_integral(v))
        return bad(b, k->name, "must be a non-negative integer");
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0)
            return bad(b, k->name, "must be a non-negative integer");
        *dst = (uintmax_t)i > SIZE_MAX ? SIZE_MAX : (size_t)i;
        return 0;
    }
    double d = json_real_value(v);
    if (d < 0)
        return bad(b, k->name, "must be a non-negative integer");
    *dst = d >= (double)SIZE_MAX ? SIZE_MAX : (size_t)d;
    return 0;
}

/* ECMA-262 escapes that POSIX ERE lacks but would silently read as plain
 * letters (glibc takes "\d" for "d"): refused, so ^\d+$ cannot match "ddd". */
static bool has_foreign_escape(const char *p)
{
    for (; *p; p++) {
        if (*p != '\\')
            continue;
        if (p[1] && strchr("dDpP", p[1]))
            return true;
        if (p[1])
            p++;
    }
    return false;
}

static int kw_pattern(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return bad(b, k->name, "must be a string without NUL bytes");
    const char *src = json_string_value(v);
    if (has_foreign_escape(src))
        return bad(b, k->name,
                   "uses \\d, \\D, \\p or \\P, which POSIX regular expressions do not have "
                   "(write a bracket expression such as [0-9])");
    int rc = regcomp(&n->re, src, REG_EXTENDED | REG_NOSUB);
    if (rc) {
        char why[128], what[192];
        regerror(rc, &n->re, why, sizeof why);
        snprintf(what, sizeof what, "is not a POSIX extended regular expression: %s", why);
        return bad(b, k->name, what);
    }
    static _Atomic uint64_t re_ids;
    n->has_re = true;
    n->re_id = atomic_fetch_add(&re_ids, 1) + 1;
    n->pattern = src;
    return 0;
}

static int kw_properties(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_object(v))
        return bad(b, k->name, "must be an object of schemas");
    n->props_doc = v;
    if (json_object_size(v) == 0)
        return 0;
    n->props = calloc(json_object_size(v), sizeof *n->props);
    if (!n->props)
        return oom(b->e);
    for (void *it = json_object_iter((json_t *)v); it;
         it = json_object_iter_next((json_t *)v, it)) {
        struct prop *p = &n->props[n->nprops++];
        p->name = json_object_iter_key(it);
        p->len = json_object_iter_key_len(it);
        size_t mark = path_push(b, p->name, p->len);
        int rc = build_node(b, json_object_iter_value(it), &p->schema);
        path_pop(b, mark);
        if (rc)
            return rc;
    }
    return 0;
}

static int kw_required(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_array(v))
        return bad(b, k->name, "must be an array of property names");
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_string(json_array_get(v, i)))
            return bad(b, k->name, "must be an array of property names");
    n->required = v;
    return 0;
}

/* additionalProperties, items, not: one schema. items has its 2020-12
 * meaning; the older tuple form (an array) is refused, not misread. */
static int kw_schema(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (json_is_array(v))
        return bad(b, k->name,
                   "must be a schema (the tuple form of draft 7 and earlier is not supported)");
    return build_node(b, v, MEMBER(struct node *, n, k->off));
}

/* allOf, anyOf, oneOf. */
static int kw_list(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad(b, k->name, "must be a non-empty array of schemas");
    struct list *l = MEMBER(struct list, n, k->off);
    l->v = calloc(json_array_size(v), sizeof *l->v);
    if (!l->v)
        return oom(b->e);
    for (size_t i = 0; i < json_array_size(v); i++) {
        size_t mark = path_push_index(b, i);
        int rc = build_node(b, json_array_get(v, i), &l->v[l->n]);
        path_pop(b, mark);
        if (rc)
            return rc;
        l->n++;
    }
    return 0;
}

/* $defs, definitions (draft 7's name, so its documents compile): every
 * entry is compiled now, so a typo in an unused definition is still found. */
static int kw_defs(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    (void)n;
    if (!json_is_object(v))
        return bad(b, k->name, "must be an object of schemas");
    for (void *it = json_object_iter((json_t *)v); it;
         it = json_object_iter_next((json_t *)v, it)) {
        struct node *def;
        size_t mark = path_push(b, json_object_iter_key(it), json_object_iter_key_len(it));
        int rc = build_node(b, json_object_iter_value(it), &def);
        path_pop(b, mark);
        if (rc)
            return rc;
    }
    return 0;
}

static int kw_ref(struct build *b, struct node *n, const json_t *v, const struct keyword *k)
{
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return bad(b, k->name, "must be a string");
    if (json_string_value(v)[0] != '#')
        return bad(b, k->name,
                   "must point into the same document (\"#\", \"#/$defs/…\"): "
                   "remote and relative references are not supported");
    n->ref = json_string_value(v);
    return 0;
}

#define AT(m) offsetof(struct node, m)
static const struct keyword keywords[] = {
    {"$schema", kw_note, 0},
    {"$id", kw_note, 0},
    {"$comment", kw_note, 0},
    {"title", kw_note, 0},
    {"description", kw_note, 0},
    {"$defs", kw_defs, 0},
    {"definitions", kw_defs, 0},
    {"$ref", kw_ref, 0},
    {"type", kw_type, 0},
    {"enum", kw_enum, 0},
    {"const", kw_const, 0},
    {"minimum", kw_bound, AT(min)},
    {"maximum", kw_bound, AT(max)},
    {"exclusiveMinimum", kw_bound, AT(xmin)},
    {"exclusiveMaximum", kw_bound, AT(xmax)},
    {"minLength", kw_count, AT(min_len)},
    {"maxLength", kw_count, AT(max_len)},
    {"minItems", kw_count, AT(min_items)},
    {"maxItems", kw_count, AT(max_items)},
    {"pattern", kw_pattern, 0},
    {"properties", kw_properties, 0},
    {"required", kw_required, 0},
    {"additionalProperties", kw_schema, AT(additional)},
    {"items", kw_schema, AT(items)},
    {"not", kw_schema, AT(not_)},
    {"allOf", kw_list, AT(all)},
    {"anyOf", kw_list, AT(any)},
    {"oneOf", kw_list, AT(one)},
};
#undef AT

static const struct keyword *keyword_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof keywords / sizeof keywords[0]; i++)
        if (strlen(keywords[i].name) == len && memcmp(keywords[i].name, name, len) == 0)
            return &keywords[i];
    return NULL;
}

/* ====================================================================== build: nodes */

/* Which property each required name is (check_object looks it up per
 * object validated otherwise): once both keywords are read. */
static int map_required(struct build *b, struct node *n)
{
    size_t nreq = n->required ? json_array_size(n->required) : 0;
    if (!nreq || !n->nprops)
        return 0;
    n->req_prop = malloc(nreq * sizeof *n->req_prop);
    if (!n->req_prop)
        return oom(b->e);
    for (size_t i = 0; i < nreq; i++) {
        const json_t *name = json_array_get(n->required, i);
        size_t len = json_string_length(name), j = 0;
        while (j < n->nprops &&
               (n->props[j].len != len || memcmp(n->props[j].name, json_string_value(name), len)))
            j++;
        n->req_prop[i] = j < n->nprops ? (int)j : -1;
    }
    return 0;
}

static int build_node(struct build *b, const json_t *j, struct node **out)
{
    struct node *n = NULL;
    int rc = node_new(b, j, &n);
    if (rc)
        return rc;
    *out = n;
    if (json_is_boolean(j)) {
        n->never = json_is_false(j);
        return 0;
    }
    if (!json_is_object(j))
        return cairn_error_set(b->e, "invalid_schema", b->path,
                               "schema at #%s must be an object or a boolean", b->path);
    for (void *it = json_object_iter((json_t *)j); it;
         it = json_object_iter_next((json_t *)j, it)) {
        const char *key = json_object_iter_key(it);
        size_t klen = json_object_iter_key_len(it);
        const struct keyword *k = keyword_find(key, klen);
        if (!k) {
            char at[CAIRN_ERR_FIELD_MAX];
            snprintf(at, sizeof at, "%s", b->path);
            path_push(b, key, klen);
            return cairn_error_set(b->e, "invalid_schema", b->path, "unknown keyword \"%s\" at #%s",
                                   key, at);
        }
        size_t mark = path_push(b, key, klen);
        rc = k->fn(b, n, json_object_iter_value(it), k);
        if (rc)
            return rc; /* b->path keeps naming the failing keyword */
        path_pop(b, mark);
    }
    return map_required(b, n);
}

/* ====================================================================== link: $ref */

/* The fragment of a URI is percent-encoded (RFC 3986); it is decoded before
 * it is read as a JSON pointer, so "%25" is "%" and "%2F" a separator. */
static bool percent_decode(const char *in, char *out, size_t *outlen)
{
    size_t n = 0;
    for (size_t i = 0; in[i]; i++) {
        if (in[i] != '%') {
            out[n++] = in[i];
            continue;
        }
        int hi = cairn_hex_digit(in[i + 1]), lo = hi < 0 ? -1 : cairn_hex_digit(in[i + 2]);
        if (hi < 0 || lo < 0)
            return false;
        out[n++] = (char)(hi * 16 + lo);
        i += 2;
    }
    *outlen = n;
    return true;
}

/* Steps from `cur` by one RFC 6901 token (tok[0, n), still escaped). */
static const json_t *pointer_step(const json_t *cur, char *tok, size_t n)
{
    size_t w = 0;
    for (size_t r = 0; r < n; r++, w++) {
        if (tok[r] != '~') {
            tok[w] = tok[r];
            continue;
        }
        if (r + 1 == n || (tok[r + 1] != '0' && tok[r + 1] != '1'))
            return NULL;
        tok[w] = tok[++r] == '0' ? '~' : '/';
    }
    if (json_is_object(cur))
        return json_object_getn(cur, tok, w);
    if (!json_is_array(cur) || w == 0 || (w > 1 && tok[0] == '0'))
        return NULL;
    size_t index = 0;
    for (size_t i = 0; i < w; i++) {
        if (tok[i] < '0' || tok[i] > '9' || index > SIZE_MAX / 10 - 1)
            return NULL;
        index = index * 10 + (size_t)(tok[i] - '0');
    }
    return json_array_get(cur, index);
}

/* Resolves "#…" against the document. *out is NULL when it does not resolve. */
static int pointer_resolve(struct build *b, const char *ref, const json_t **out)
{
    *out = NULL;
    char *buf = malloc(strlen(ref) + 1);
    if (!buf)
        return oom(b->e);
    size_t n;
    const json_t *cur = b->s->doc;
    if (!percent_decode(ref + 1, buf, &n) || (n > 0 && buf[0] != '/'))
        cur = NULL;
    for (size_t at = 0; cur && at < n;) {
        size_t end = at + 1;
        while (end < n && buf[end] != '/')
            end++;
        cur = pointer_step(cur, buf + at + 1, end - at - 1);
        at = end;
    }
    free(buf);
    *out = cur;
    return 0;
}

static int by_doc(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)(*(struct node *const *)a)->doc;
    uintptr_t y = (uintptr_t)(*(struct node *const *)b)->doc;
    return (x > y) - (x < y);
}

/* Points every $ref at the node compiled from its target. A target that was
 * not compiled as a schema (inside an enum, say) is refused. */
static int link_refs(struct build *b)
{
    struct schema *s = b->s;
    struct node **sorted = malloc(s->n * sizeof *sorted);
    if (!sorted)
        return oom(b->e);
    memcpy(sorted, s->nodes, s->n * sizeof *sorted);
    qsort(sorted, s->n, sizeof *sorted, by_doc);
    int rc = 0;
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        struct node *n = s->nodes[i];
        if (!n->ref)
            continue;
        const json_t *t;
        rc = pointer_resolve(b, n->ref, &t);
        if (rc)
            break;
        struct node key = {.doc = t}, *kp = &key, **hit = NULL;
        if (t)
            hit = bsearch(&kp, sorted, s->n, sizeof *sorted, by_doc);
        if (!hit)
            rc = cairn_error_set(b->e, "invalid_schema", "",
                                 "$ref \"%s\" does not point to a schema in this document", n->ref);
        else
            n->target = *hit;
    }
    free(sorted);
    return rc;
}

/* ====================================================================== check: cycles */

enum { WHITE, GRAY, BLACK };

static int check_chain(struct build *b, struct node *n, unsigned depth, const char *via);

static int check_edge(struct build *b, struct node *to, unsigned depth, const char *via,
                      unsigned *longest)
{
    int rc = check_chain(b, to, depth + 1, via);
    if (rc == 0 && to->chain > *longest)
        *longest = to->chain;
    return rc;
}

static int check_list(struct build *b, const struct list *l, unsigned depth, const char *via,
                      unsigned *longest)
{
    for (size_t i = 0; i < l->n; i++) {
        int rc = check_edge(b, l->v[i], depth, via, longest);
        if (rc)
            return rc;
    }
    return 0;
}

/* Depth-first over the edges that stay at one instance location. A GRAY
 * node met again is a cycle; `via` is the last $ref taken, which lies on
 * it, because a cycle must go through a ref (the rest is a tree). */
static int check_chain(struct build *b, struct node *n, unsigned depth, const char *via)
{
    if (n->mark == BLACK)
        return 0;
    if (n->mark == GRAY)
        return cairn_error_set(b->e, "invalid_schema", "",
                               "$ref \"%s\" loops back to itself without descending into the "
                               "instance",
                               via ? via : "#");
    if (depth > SCHEMA_CHAIN_MAX)
        goto too_long;
    n->mark = GRAY;
    unsigned longest = 0;
    int rc = 0;
    if (n->target)
        rc = check_edge(b, n->target, depth, n->ref, &longest);
    if (rc == 0 && n->not_)
        rc = check_edge(b, n->not_, depth, via, &longest);
    if (rc == 0)
        rc = check_list(b, &n->all, depth, via, &longest);
    if (rc == 0)
        rc = check_list(b, &n->any, depth, via, &longest);
    if (rc == 0)
        rc = check_list(b, &n->one, depth, via, &longest);
    if (rc)
        return rc;
    n->chain = longest + 1;
    if (n->chain > SCHEMA_CHAIN_MAX)
        goto too_long;
    n->mark = BLACK;
    return 0;
too_long:
    return cairn_error_set(b->e, "invalid_schema", "",
                           "more than %d subschemas apply in a row to one location "
                           "(last $ref: \"%s\")",
                           SCHEMA_CHAIN_MAX, via ? via : "none");
}

/* ====================================================================== compile */

int schema_new(struct schema **out, const json_t *doc, struct cairn_error *e)
{
    assert(out && doc);
    *out = NULL;
    struct build b = {.e = e};
    if (nests_deeper(doc, SCHEMA_DOC_DEPTH_MAX))
        return cairn_error_set(e, "invalid_schema", "", "schema nests deeper than %d levels",
                               SCHEMA_DOC_DEPTH_MAX);
    int rc = CAIRN_ENOMEM;
    b.s = calloc(1, sizeof *b.s);
    if (!b.s)
        return oom(e);
    b.s->doc = json_deep_copy(doc);
    if (!b.s->doc) {
        oom(e);
        goto fail;
    }
    rc = build_node(&b, b.s->doc, &b.s->root);
    if (rc)
        goto fail;
    rc = link_refs(&b);
    if (rc)
        goto fail;
    for (size_t i = 0; i < b.s->n && rc == 0; i++)
        rc = check_chain(&b, b.s->nodes[i], 1, NULL);
    if (rc)
        goto fail;
    *out = b.s;
    return 0;
fail:
    schema_free(b.s);
    return rc;
}

/* ====================================================================== validate: context */

/* One step from the root of the instance: an object key (borrowed from the
 * instance) or, when key is NULL, an array index. */
struct seg {
    const char *key;
    size_t len;
    size_t index;
};

struct vctx {
    struct cairn_error *e;   /* where failures go; NULL while trying a branch */
    struct cairn_error *top; /* the caller's: too_deep ends the whole walk */
    const char *where;
    int depth;
    struct seg segs[CAIRN_DEPTH_MAX];
};

/* What a check returns: V_ABORT stops everything, even a branch being
 * tried, because it is a limit, not a mismatch. */
enum { V_OK = 0, V_FAIL = 1, V_ABORT = 2 };

static bool seg_append(char *out, size_t cap, size_t *len, const struct seg *s)
{
    if (s->key)
        return ptr_append(out, cap, len, s->key, s->len);
    return ptr_append_index(out, cap, len, s->index);
}

static void field_format(const struct vctx *c, const struct seg *extra, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s", c->where);
    size_t len = n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
    for (int i = 0; i < c->depth; i++)
        if (!seg_append(out, cap, &len, &c->segs[i]))
            return;
    if (extra)
        seg_append(out, cap, &len, extra);
}

static void report(struct vctx *c, struct cairn_error *e, const struct seg *extra, const char *code,
                   const char *fmt, va_list ap)
{
    char field[CAIRN_ERR_FIELD_MAX], msg[CAIRN_ERR_MSG_MAX];
    field_format(c, extra, field, sizeof field);
    vsnprintf(msg, sizeof msg, fmt, ap);
    cairn_error_set(e, code, field, "%s", msg);
}

/* A mismatch at the current value (or at its member `extra`). Costs nothing
 * while a branch is being tried. */
__attribute__((format(printf, 4, 5))) static int fail_at(struct vctx *c, const struct seg *extra,
                                                         const char *code, const char *fmt, ...)
{
    if (!c->e)
        return V_FAIL;
    va_list ap;
    va_start(ap, fmt);
    report(c, c->e, extra, code, fmt, ap);
    va_end(ap);
    return V_FAIL;
}

#define mismatch(c, ...) fail_at((c), NULL, __VA_ARGS__)

/* A limit was hit: told to the caller even from inside a branch. */
__attribute__((format(printf, 3, 4))) static int abort_at(struct vctx *c, const char *code,
                                                          const char *fmt, ...)
{
    if (c->top) {
        va_list ap;
        va_start(ap, fmt);
        report(c, c->top, NULL, code, fmt, ap);
        va_end(ap);
    }
    return V_ABORT;
}

static int validate_node(struct vctx *c, const struct node *n, const msgpack_object *v);

static int descend(struct vctx *c, const struct node *n, const msgpack_object *v, struct seg s)
{
    if (c->depth >= CAIRN_DEPTH_MAX)
        return abort_at(c, "too_deep", "nesting deeper than %d levels", CAIRN_DEPTH_MAX);
    c->segs[c->depth++] = s;
    int r = validate_node(c, n, v);
    c->depth--;
    return r;
}

/* ====================================================================== validate: keywords */

static int check_value(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    if (n->types && !(n->types & type_bits(v)))
        return mismatch(c, "wrong_type", "must be %s, got %s", n->type_text, type_name(v));
    if (n->const_v && !same(n->const_v, v))
        return mismatch(c, "not_allowed", "must be %s", n->const_text);
    if (n->enum_v) {
        for (size_t i = 0; i < json_array_size(n->enum_v); i++)
            if (same(json_array_get(n->enum_v, i), v))
                return V_OK;
        return mismatch(c, "not_allowed", "must be one of: %s", n->enum_text);
    }
    return V_OK;
}

static int check_number(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    if (n->min.v && num_cmp(v, n->min.v) < 0)
        return mismatch(c, "out_of_range", "must be >= %s", n->min.text);
    if (n->max.v && num_cmp(v, n->max.v) > 0)
        return mismatch(c, "out_of_range", "must be <= %s", n->max.text);
    if (n->xmin.v && num_cmp(v, n->xmin.v) <= 0)
        return mismatch(c, "out_of_range", "must be > %s", n->xmin.text);
    if (n->xmax.v && num_cmp(v, n->xmax.v) >= 0)
        return mismatch(c, "out_of_range", "must be < %s", n->xmax.text);
    return V_OK;
}

static const char *plural(size_t n)
{
    return n == 1 ? "" : "s";
}

/* Answers of regexec for short strings, per thread, keyed by the pattern's
 * re_id and the string itself (compared in full, so a hit is always the
 * answer regexec would give). Patterns check low-cardinality fields (event
 * types, metric names, resource types), and glibc's regexec costs about as
 * much as the rest of a payload's validation; a hit costs a hash and a
 * compare. Direct-mapped: a collision only evicts. */
#define RE_MEMO_SLOTS 256
#define RE_MEMO_LEN 46

struct re_memo {
    uint64_t re_id; /* 0: empty */
    uint8_t len;
    bool match;
    char s[RE_MEMO_LEN];
};

static _Thread_local struct re_memo re_memo[RE_MEMO_SLOTS];

/* REG_STARTEND: the string's own length, so an embedded NUL does not end
 * it early. msgpack strings are not NUL-terminated, and regexec may look
 * for one (sanitizers check that it can), so the string is matched from a
 * terminated copy. 0, REG_NOMATCH, another regexec failure, or -1 when
 * out of memory. */
static int re_memo_exec(const struct node *n, const char *s, size_t len)
{
    char small[256], *z = len < sizeof small ? small : malloc(len + 1);
    if (!z)
        return -1;
    memcpy(z, s, len);
    z[len] = '\0';
    regmatch_t m[1] = {{.rm_so = 0, .rm_eo = (regoff_t)len}};
    int rc = regexec(&n->re, z, 1, m, REG_STARTEND);
    if (z != small)
        free(z);
    return rc;
}

static int re_memo_match(const struct node *n, const char *s, size_t len)
{
    if (len > RE_MEMO_LEN)
        return re_memo_exec(n, s, len);
    uint64_t h = 1469598103934665603ull ^ n->re_id; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    struct re_memo *m = &re_memo[(h ^ h >> 32) & (RE_MEMO_SLOTS - 1)];
    if (m->re_id == n->re_id && m->len == len && !memcmp(m->s, s, len))
        return m->match ? 0 : REG_NOMATCH;
    int rc = re_memo_exec(n, s, len);
    if (rc == 0 || rc == REG_NOMATCH) {
        m->re_id = n->re_id;
        m->len = (uint8_t)len;
        m->match = rc == 0;
        memcpy(m->s, s, len);
    }
    return rc;
}

static int check_string(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    const char *s = v->via.str.size ? v->via.str.ptr : ""; /* msgpack-c: NULL when empty */
    size_t len = v->via.str.size;
    if (n->min_len > 0 || n->max_len != SIZE_MAX) {
        size_t cp = utf8_count(s, len);
        if (cp > n->max_len)
            return mismatch(c, "too_long", "must be at most %zu character%s long, got %zu",
                            n->max_len, plural(n->max_len), cp);
        if (cp < n->min_len)
            return mismatch(c, "too_short", "must be at least %zu character%s long, got %zu",
                            n->min_len, plural(n->min_len), cp);
    }
    if (n->has_re) {
        int rc = re_memo_match(n, s, len);
        if (rc < 0)
            return abort_at(c, "pattern_mismatch", "out of memory matching %s", n->pattern);
        if (rc == REG_NOMATCH)
            return mismatch(c, "pattern_mismatch", "must match the pattern %s", n->pattern);
        if (rc)
            return abort_at(c, "pattern_mismatch", "pattern %s could not be evaluated", n->pattern);
    }
    return V_OK;
}

static int check_array(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    size_t size = v->via.array.size;
    if (size > n->max_items)
        return mismatch(c, "too_long", "must have at most %zu item%s, got %zu", n->max_items,
                        plural(n->max_items), size);
    if (size < n->min_items)
        return mismatch(c, "too_short", "must have at least %zu item%s, got %zu", n->min_items,
                        plural(n->min_items), size);
    if (!n->items)
        return V_OK;
    for (size_t i = 0; i < size; i++) {
        int r = descend(c, n->items, &v->via.array.ptr[i], (struct seg){.index = i});
        if (r)
            return r;
    }
    return V_OK;
}

/* additionalProperties: members not named in `properties`. */
static int check_additional(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        struct seg s = {.key = kv->key.via.str.size ? kv->key.via.str.ptr : "",
                        .len = kv->key.via.str.size};
        if (n->props_doc && json_object_getn(n->props_doc, s.key, s.len))
            continue;
        int r = n->additional->never ? fail_at(c, &s, "unknown_field", "is not allowed")
                                     : descend(c, n->additional, &kv->val, s);
        if (r)
            return r;
    }
    return V_OK;
}

/* check_object in one pass over the members, for objects of at most 64
 * members against at most OBJ_FAST_PROPS properties (all of ours): each
 * member is matched to its property once, instead of a scan of the members
 * per property and per required name and a hash lookup per member for
 * additionalProperties. The checks then run in the same order as the
 * general version below, so the first failure reported is the same. */
#define OBJ_FAST_PROPS 32

static int check_object_general(struct vctx *c, const struct node *n, const msgpack_object *v);

static int check_object(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    uint32_t size = v->via.map.size;
    const msgpack_object *val[OBJ_FAST_PROPS];
    uint64_t extra = 0; /* members named by no property */
    if (n->nprops > OBJ_FAST_PROPS || size > 64)
        return check_object_general(c, n, v);
    for (size_t j = 0; j < n->nprops; j++)
        val[j] = NULL;
    size_t hint = 0; /* members mostly come in the properties' order: look there first */
    for (uint32_t i = 0; i < size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return check_object_general(c, n, v);
        size_t kn = kv->key.via.str.size, j = n->nprops;
        const char *ks = kn ? kv->key.via.str.ptr : "";
        for (size_t t = 0, q = hint; t < n->nprops; t++, q = q + 1 == n->nprops ? 0 : q + 1) {
            const struct prop *pr = &n->props[q];
            if (pr->len == kn && (!kn || (pr->name[0] == ks[0] && !memcmp(pr->name, ks, kn)))) {
                j = q;
                break;
            }
        }
        if (j == n->nprops) {
            extra |= 1ull << i;
            continue;
        }
        hint = j + 1 == n->nprops ? 0 : j + 1;
        if (!val[j]) /* the first of duplicates, as mp_member */
            val[j] = &kv->val;
    }
    for (size_t i = 0; n->required && i < json_array_size(n->required); i++) {
        const json_t *name = json_array_get(n->required, i);
        struct seg s = {.key = json_string_value(name), .len = json_string_length(name)};
        int j = n->req_prop ? n->req_prop[i] : -1;
        if (j >= 0 ? !val[j] : !mp_member(v, s.key, s.len))
            return fail_at(c, &s, "missing_field", "is required");
    }
    for (size_t j = 0; j < n->nprops; j++) {
        const struct prop *p = &n->props[j];
        if (!val[j])
            continue;
        int r = descend(c, p->schema, val[j], (struct seg){.key = p->name, .len = p->len});
        if (r)
            return r;
    }
    if (!n->additional)
        return V_OK;
    for (uint32_t i = 0; extra && i < size; i++) {
        if (!(extra >> i & 1))
            continue;
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        struct seg s = {.key = kv->key.via.str.size ? kv->key.via.str.ptr : "",
                        .len = kv->key.via.str.size};
        int r = n->additional->never ? fail_at(c, &s, "unknown_field", "is not allowed")
                                     : descend(c, n->additional, &kv->val, s);
        if (r)
            return r;
    }
    return V_OK;
}

static int check_object_general(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    if (n->required) {
        for (size_t i = 0; i < json_array_size(n->required); i++) {
            const json_t *name = json_array_get(n->required, i);
            struct seg s = {.key = json_string_value(name), .len = json_string_length(name)};
            if (!mp_member(v, s.key, s.len))
                return fail_at(c, &s, "missing_field", "is required");
        }
    }
    for (size_t i = 0; i < n->nprops; i++) {
        const struct prop *p = &n->props[i];
        const msgpack_object *m = mp_member(v, p->name, p->len);
        if (!m)
            continue;
        int r = descend(c, p->schema, m, (struct seg){.key = p->name, .len = p->len});
        if (r)
            return r;
    }
    return n->additional ? check_additional(c, n, v) : V_OK;
}

/* ====================================================================== validate: combinators */

/* Tries a branch without reporting: V_OK, V_FAIL or V_ABORT. */
static int try_branch(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    struct cairn_error *saved = c->e;
    c->e = NULL;
    int r = validate_node(c, n, v);
    c->e = saved;
    return r;
}

/* No branch matched: names the reason of the branch that got furthest into
 * the value (the deepest pointer; the first of equals), the one the input
 * most likely meant: {"geofenc": "info"} against [a severity string, an
 * object of severities by source] is told that /geofenc is not allowed,
 * not that it is no severity. Kept out of line, so the scratch errors do
 * not sit in every anyOf frame of the recursion. */
__attribute__((noinline)) static int fail_branches(struct vctx *c, const struct list *l,
                                                   const char *kw, const char *how,
                                                   const msgpack_object *v)
{
    if (!c->e)
        return V_FAIL;
    struct cairn_error best, cur, *saved = c->e;
    size_t bi = 0;
    for (size_t i = 0; i < l->n; i++) {
        cairn_error_clear(&cur);
        c->e = &cur;
        validate_node(c, l->v[i], v);
        if (i == 0 || strlen(cur.field) > strlen(best.field)) {
            best = cur;
            bi = i;
        }
    }
    c->e = saved;
    return mismatch(c, "no_match",
                    "must match %s of the %zu %s schemas (#%zu, the closest, says: %s%s%s)", how,
                    l->n, kw, bi, best.field, best.field[0] ? " " : "", best.message);
}

static int check_any(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    for (size_t i = 0; i < n->any.n; i++) {
        int r = try_branch(c, n->any.v[i], v);
        if (r != V_FAIL)
            return r;
    }
    return fail_branches(c, &n->any, "anyOf", "at least one", v);
}

static int check_one(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    size_t first = SIZE_MAX;
    for (size_t i = 0; i < n->one.n; i++) {
        int r = try_branch(c, n->one.v[i], v);
        if (r == V_ABORT)
            return r;
        if (r == V_FAIL)
            continue;
        if (first != SIZE_MAX)
            return mismatch(
                c, "ambiguous",
                "must match exactly one of the %zu oneOf schemas, matches #%zu and #%zu", n->one.n,
                first, i);
        first = i;
    }
    return first != SIZE_MAX ? V_OK : fail_branches(c, &n->one, "oneOf", "exactly one", v);
}

static int check_applicators(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    int r;
    if (n->target && (r = validate_node(c, n->target, v)))
        return r;
    for (size_t i = 0; i < n->all.n; i++)
        if ((r = validate_node(c, n->all.v[i], v)))
            return r;
    if (n->any.n && (r = check_any(c, n, v)))
        return r;
    if (n->one.n && (r = check_one(c, n, v)))
        return r;
    if (n->not_) {
        r = try_branch(c, n->not_, v);
        if (r == V_OK)
            return mismatch(c, "not_allowed", "must not match the \"not\" schema");
        if (r == V_ABORT)
            return r;
    }
    return V_OK;
}

static int validate_node(struct vctx *c, const struct node *n, const msgpack_object *v)
{
    if (n->never)
        return mismatch(c, "not_allowed", "is not allowed");
    int r = check_value(c, n, v);
    if (r)
        return r;
    switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: r = check_number(c, n, v); break;
    case MSGPACK_OBJECT_STR: r = check_string(c, n, v); break;
    case MSGPACK_OBJECT_ARRAY: r = check_array(c, n, v); break;
    case MSGPACK_OBJECT_MAP: r = check_object(c, n, v); break;
    default: break;
    }
    return r ? r : check_applicators(c, n, v);
}

int schema_validate_mp(const struct schema *s, const msgpack_object *instance, const char *where,
                       struct cairn_error *e)
{
    assert(s && instance);
    struct vctx c = {.e = e, .top = e, .where = where ? where : ""};
    return validate_node(&c, s->root, instance) == V_OK ? 0 : CAIRN_EINVAL;
}

int schema_validate(const struct schema *s, const json_t *instance, const char *where,
                    struct cairn_error *e)
{
    assert(s && instance);
    /* Encoded one level deeper than the validator descends, so that a deep
     * instance reports the validator's own too_deep (with its pointer);
     * deeper still is too_deep at once. */
    struct vctx c = {.e = e, .top = e, .where = where ? where : ""};
    struct cairn_buf b;
    msgpack_zone z;
    msgpack_object o;
    size_t off = 0;
    cairn_buf_init(&b, SIZE_MAX);
    int rc = cairn_json_to_msgpack_depth(instance, &b, CAIRN_DEPTH_MAX + 1, NULL);
    if (rc == CAIRN_EINVAL) {
        abort_at(&c, "too_deep", "nesting deeper than %d levels", CAIRN_DEPTH_MAX);
    } else if (!rc && !msgpack_zone_init(&z, 2048)) {
        rc = CAIRN_ENOMEM;
    } else if (!rc) {
        if (msgpack_unpack((const char *)b.data, b.len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS)
            rc = CAIRN_ENOMEM;
        else
            rc = validate_node(&c, s->root, &o) == V_OK ? 0 : CAIRN_EINVAL;
        msgpack_zone_destroy(&z);
    }
    cairn_buf_deinit(&b);
    return rc;
}

/* ====================================================================== schema sets */

struct entry {
    char *type;
    struct schema *schema;
};

struct schema_set {
    struct entry *v;
    size_t n;
};

void schema_set_close(struct schema_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++) {
        free(set->v[i].type);
        schema_free(set->v[i].schema);
    }
    free(set->v);
    free(set);
}

/* Type names go into envelopes, index keys and URLs: [A-Za-z0-9._-], at
 * most CAIRN_TYPE_MAX bytes. */
static bool type_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > CAIRN_TYPE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Re-sets e with the file name in front of its message. */
static int name_file(struct cairn_error *e, const char *file, int rc)
{
    if (e) {
        char msg[CAIRN_ERR_MSG_MAX];
        snprintf(msg, sizeof msg, "%s", e->message);
        char field[CAIRN_ERR_FIELD_MAX];
        snprintf(field, sizeof field, "%s", e->field);
        cairn_error_set(e, e->code ? e->code : "invalid_schema", field, "%s: %s", file, msg);
    }
    return rc;
}

static int read_doc(int dirfd, const char *file, json_t **doc, struct cairn_error *e)
{
    int fd = openat(dirfd, file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cairn_error_set(e, "io_error", "", "%s: %s", file, strerror(errno));
        return CAIRN_EIO;
    }
    struct stat st;
    FILE *fp = NULL;
    if (fstat(fd, &st) != 0 || !(fp = fdopen(fd, "r"))) {
        cairn_error_set(e, "io_error", "", "%s: %s", file, strerror(errno));
        close(fd);
        return CAIRN_EIO;
    }
    if (st.st_size > (off_t)SCHEMA_FILE_MAX) {
        fclose(fp);
        return cairn_error_set(e, "invalid_schema", "", "%s: larger than %u bytes", file,
                               SCHEMA_FILE_MAX);
    }
    json_error_t jerr;
    *doc = json_loadf(fp, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    fclose(fp);
    if (!*doc)
        return cairn_error_set(e, "invalid_schema", "", "%s:%d:%d: %s", file, jerr.line,
                               jerr.column, jerr.text);
    return 0;
}

/* Loads `file` (a regular file named <type>.json) as the next entry. */
static int load_entry(struct schema_set *set, int dirfd, const char *file, size_t tlen,
                      struct cairn_error *e)
{
    if (!type_name_ok(file, tlen))
        return cairn_error_set(e, "invalid_schema", "",
                               "%s: a type name is 1 to %d characters of [A-Za-z0-9._-]", file,
                               CAIRN_TYPE_MAX);
    if (set->n == SCHEMA_SET_MAX)
        return cairn_error_set(e, "invalid_schema", "", "more than %d schema files",
                               SCHEMA_SET_MAX);
    json_t *doc = NULL;
    int rc = read_doc(dirfd, file, &doc, e);
    if (rc)
        return rc;
    struct entry *en = &set->v[set->n];
    rc = schema_new(&en->schema, doc, e);
    json_decref(doc);
    if (rc)
        return name_file(e, file, rc);
    en->type = strndup(file, tlen);
    if (!en->type) {
        schema_free(en->schema);
        return oom(e);
    }
    set->n++;
    return 0;
}

/* A schema file: "<type>.json", not hidden (editor droppings), a regular
 * file (examples/ and other folders are skipped). Returns the type length,
 * 0 to skip. */
static size_t schema_file(int dirfd, const char *name)
{
    size_t len = strlen(name);
    const size_t ext = sizeof ".json" - 1;
    if (name[0] == '.' || len <= ext || strcmp(name + len - ext, ".json") != 0)
        return 0;
    struct stat st;
    if (fstatat(dirfd, name, &st, 0) != 0 || !S_ISREG(st.st_mode))
        return 0;
    return len - ext;
}

static int by_type(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->type, ((const struct entry *)b)->type);
}

int schema_set_open(struct schema_set **out, const char *dir, struct cairn_error *e)
{
    assert(out && dir);
    *out = NULL;
    int rc = CAIRN_EIO;
    DIR *d = opendir(dir);
    if (!d) {
        cairn_error_set(e, "io_error", "", "cannot read schema directory %s: %s", dir,
                        strerror(errno));
        return CAIRN_EIO;
    }
    struct schema_set *set = calloc(1, sizeof *set);
    if (!set || !(set->v = calloc(SCHEMA_SET_MAX, sizeof *set->v))) {
        rc = oom(e);
        goto fail;
    }
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno == 0)
                break;
            cairn_error_set(e, "io_error", "", "cannot read schema directory %s: %s", dir,
                            strerror(errno));
            rc = CAIRN_EIO;
            goto fail;
        }
        size_t tlen = schema_file(dirfd(d), de->d_name);
        if (tlen && (rc = load_entry(set, dirfd(d), de->d_name, tlen, e)))
            goto fail;
    }
    closedir(d);
    qsort(set->v, set->n, sizeof *set->v, by_type);
    *out = set;
    return 0;
fail:
    schema_set_close(set);
    closedir(d);
    return rc;
}

const struct schema *schema_set_get(const struct schema_set *set, const char *type)
{
    struct entry key = {.type = (char *)type};
    const struct entry *hit = bsearch(&key, set->v, set->n, sizeof *set->v, by_type);
    return hit ? hit->schema : NULL;
}

size_t schema_set_count(const struct schema_set *set)
{
    return set->n;
}

const char *schema_set_type(const struct schema_set *set, size_t i)
{
    assert(i < set->n);
    return set->v[i].type;
}
