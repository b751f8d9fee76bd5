/*
 * ingest.c — validation of producer input and its conversion to log inputs.
 *
 * Order of checks (the first failure is reported): the envelope fields
 * (shape, lengths, charset), the type (known, not engine-only), the payload
 * against its schema, the payload size, then the derived key. Nothing is
 * written anywhere until every check passed.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CAIRN_SCHEMA_DIR
#define CAIRN_SCHEMA_DIR "schemas"
#endif

struct ingest {
    struct schema_set *schemas;
    size_t payload_max;
    bool allow_engine_types;
    const struct handler *const *handlers;
    char schema_dir[1024];
};

/* Types only the engine may append. */
static const char *const engine_only_types[] = {"tick", NULL};

static const char *const envelope_fields[] = {"type", "tenant",  "key",          "id",
                                              "time", "payload", "expected_seq", NULL};

int ingest_open(struct ingest **out, const struct ingest_config *cfg, struct cairn_error *e)
{
    struct ingest *ing = calloc(1, sizeof *ing);
    if (!ing)
        return CAIRN_ENOMEM;
    const char *dir = cfg->schema_dir ? cfg->schema_dir : CAIRN_SCHEMA_DIR;
    snprintf(ing->schema_dir, sizeof ing->schema_dir, "%s", dir);
    ing->payload_max = cfg->payload_max ? cfg->payload_max : CAIRN_PAYLOAD_MAX_DEFAULT;
    ing->allow_engine_types = cfg->allow_engine_types;
    ing->handlers = cfg->handlers ? cfg->handlers : handler_table;
    if (ing->payload_max > CAIRN_PAYLOAD_MAX_CEILING)
        ing->payload_max = CAIRN_PAYLOAD_MAX_CEILING;
    int rc = schema_set_open(&ing->schemas, dir, e);
    if (rc) {
        free(ing);
        return rc;
    }
    *out = ing;
    return 0;
}

void ingest_close(struct ingest *ing)
{
    if (!ing)
        return;
    schema_set_close(ing->schemas);
    free(ing);
}

const struct schema_set *ingest_schemas(const struct ingest *ing)
{
    return ing->schemas;
}

const char *ingest_schema_dir(const struct ingest *ing)
{
    return ing->schema_dir;
}

void ingest_event_deinit(struct ingest_event *ev)
{
    free(ev->mem);
    ev->mem = NULL;
}

/* ====================================================================== envelope fields */

static bool in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(s, *list))
            return true;
    return false;
}

static bool tenant_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* Reads an optional string field: *s NULL when absent. */
/* Names the top-level field of an error cairn_error_set just filled; the
 * pointer is formatted only when there is an error (get_str is hot). */
static int at_field(struct cairn_error *e, const char *name, int rc)
{
    if (e)
        snprintf(e->field, sizeof e->field, "/%s", name);
    return rc;
}

static int get_str(const json_t *obj, const char *name, size_t max, bool required, const char **s,
                   size_t *n, struct cairn_error *e)
{
    const json_t *v = json_object_get(obj, name);
    *s = NULL;
    *n = 0;
    if (!v || json_is_null(v)) {
        if (required)
            return at_field(e, name,
                            cairn_error_set(e, "missing_field", "", "%s is required", name));
        return 0;
    }
    if (!json_is_string(v))
        return at_field(e, name, cairn_error_set(e, "wrong_type", "", "%s must be a string", name));
    *s = json_string_value(v);
    *n = json_string_length(v);
    if (*n > max)
        return at_field(
            e, name,
            cairn_error_set(e, "too_long", "", "%s is %zu bytes, the limit is %zu", name, *n, max));
    if (required && *n == 0)
        return at_field(e, name, cairn_error_set(e, "too_short", "", "%s must not be empty", name));
    for (size_t i = 0; i < *n; i++)
        if ((unsigned char)(*s)[i] < 0x20)
            return at_field(e, name,
                            cairn_error_set(e, "invalid_value", "",
                                            "%s must not contain control characters", name));
    return 0;
}

static int check_fields(const json_t *obj, struct cairn_error *e)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        if (!in_list(k, envelope_fields)) {
            char field[CAIRN_ERR_FIELD_MAX];
            snprintf(field, sizeof field, "/%.200s", k);
            return cairn_error_set(e, "unknown_field", field,
                                   "unknown field; an event has type, tenant, key, id, time, "
                                   "expected_seq and payload");
        }
    }
    return 0;
}

static int get_time(const json_t *obj, int64_t now, int64_t *out, struct cairn_error *e)
{
    const json_t *v = json_object_get(obj, "time");
    if (!v || json_is_null(v)) {
        *out = now;
        return 0;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        if (*out < CAIRN_TIME_MIN || *out > CAIRN_TIME_MAX)
            return cairn_error_set(e, "out_of_range", "/time",
                                   "time must be between 1970-01-01 and 2200-01-01");
        return 0;
    }
    if (!json_is_string(v))
        return cairn_error_set(e, "wrong_type", "/time",
                               "time must be an RFC 3339 string or integer epoch nanoseconds");
    if (cairn_time_parse(json_string_value(v), json_string_length(v), out))
        return cairn_error_set(e, "invalid_time", "/time",
                               "time is not RFC 3339 (e.g. 2026-11-21T10:00:00.250Z)");
    if (*out < CAIRN_TIME_MIN || *out > CAIRN_TIME_MAX)
        return cairn_error_set(e, "out_of_range", "/time",
                               "time must be between 1970-01-01 and 2200-01-01");
    return 0;
}

static int get_expected(const json_t *obj, int64_t *out, struct cairn_error *e)
{
    const json_t *v = json_object_get(obj, "expected_seq");
    *out = -1;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return cairn_error_set(e, "wrong_type", "/expected_seq", "expected_seq must be an integer");
    if (json_integer_value(v) < 0)
        return cairn_error_set(e, "out_of_range", "/expected_seq", "expected_seq must be >= 0");
    *out = json_integer_value(v);
    return 0;
}

/* ====================================================================== default keys */

static int copy_key(const json_t *v, char *out, size_t cap)
{
    if (!json_is_string(v))
        return 0;
    size_t n = json_string_length(v);
    if (n >= cap)
        return CAIRN_ETOOBIG;
    memcpy(out, json_string_value(v), n);
    out[n] = '\0';
    return (int)n;
}

static int label_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Appends s to out[*n..cap) with Prometheus label-value escaping (\\, \",
 * \n), so distinct label sets never give the same series key. */
static bool put_escaped(char *out, size_t cap, int *n, const char *s)
{
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        size_t k = esc ? 2 : 1;
        if ((size_t)*n + k >= cap)
            return false;
        if (esc)
            memcpy(out + *n, esc, 2);
        else
            out[*n] = *s;
        *n += (int)k;
    }
    out[*n] = '\0';
    return true;
}

/* name{a="x",b="y"}: the Prometheus series identity, labels sorted. */
static int metric_series(const json_t *payload, char *out, size_t cap)
{
    const json_t *labels = json_object_get(payload, "labels");
    const char *names[64], *k;
    json_t *v;
    size_t nl = 0;
    int n = snprintf(out, cap, "%s", json_string_value(json_object_get(payload, "name")));
    if (n < 0 || (size_t)n >= cap)
        return CAIRN_ETOOBIG;
    json_object_foreach((json_t *)labels, k, v)
    {
        if (nl == sizeof names / sizeof *names)
            return CAIRN_ETOOBIG;
        names[nl++] = k;
    }
    qsort(names, nl, sizeof *names, label_cmp);
    for (size_t i = 0; i < nl; i++) {
        int m = snprintf(out + n, cap - (size_t)n, "%s%s=\"", i ? "," : "{", names[i]);
        if (m < 0 || (size_t)(n + m) >= cap)
            return CAIRN_ETOOBIG;
        n += m;
        const char *val = json_string_value(json_object_get(labels, names[i]));
        if (!put_escaped(out, cap, &n, val ? val : "") || (size_t)n + 2 >= cap)
            return CAIRN_ETOOBIG;
        out[n++] = '"';
        out[n] = '\0';
    }
    if (nl) {
        if ((size_t)n + 2 > cap)
            return CAIRN_ETOOBIG;
        out[n++] = '}';
        out[n] = '\0';
    }
    return n;
}

int ingest_default_key(const char *type, const json_t *payload, char *out, size_t cap)
{
    if (!strcmp(type, "telemetry") || !strcmp(type, "location"))
        return copy_key(json_object_get(payload, "device_id"), out, cap);
    if (!strcmp(type, "order"))
        return copy_key(json_object_get(payload, "order_id"), out, cap);
    if (!strcmp(type, "payment")) {
        const json_t *o = json_object_get(json_object_get(payload, "data"), "object");
        const json_t *cust = json_object_get(o, "customer");
        if (json_is_string(cust))
            return copy_key(cust, out, cap);
        if (json_is_object(cust)) /* an expanded customer */
            return copy_key(json_object_get(cust, "id"), out, cap);
        const json_t *kind = json_object_get(o, "object");
        if (json_is_string(kind) && !strcmp(json_string_value(kind), "customer"))
            return copy_key(json_object_get(o, "id"), out, cap);
        return 0;
    }
    if (!strcmp(type, "metric"))
        return metric_series(payload, out, cap);
    if (!strcmp(type, "discovery")) {
        const json_t *a = json_object_get(payload, "account_id"),
                     *r = json_object_get(payload, "region");
        if (!json_is_string(a) || !json_is_string(r))
            return 0;
        int n = snprintf(out, cap, "%s/%s", json_string_value(a), json_string_value(r));
        return n < 0 || (size_t)n >= cap ? CAIRN_ETOOBIG : n;
    }
    return 0;
}

/* ====================================================================== handler validation */

/* Lets the handlers that consume this type refuse a bad control input
 * (a malformed rule, an invalid fence) before it enters the log. */
static int handler_validate(struct ingest *ing, const struct ingest_event *iev,
                            struct cairn_error *e)
{
    int rc = 0;
    msgpack_unpacked body;
    bool decoded = false;
    for (const struct handler *const *h = ing->handlers; *h && !rc; h++) {
        if (!(*h)->validate)
            continue;
        bool consumes = false;
        for (const char *const *t = (*h)->consumes; *t && !consumes; t++)
            consumes = strlen(*t) == iev->in.type.n && !memcmp(*t, iev->in.type.p, iev->in.type.n);
        if (!consumes)
            continue;
        if (!decoded) {
            msgpack_unpacked_init(&body);
            if (msgpack_unpack_next(&body, (const char *)iev->in.payload, iev->in.payload_len,
                                    NULL) != MSGPACK_UNPACK_SUCCESS) {
                msgpack_unpacked_destroy(&body);
                return CAIRN_EINVAL;
            }
            decoded = true;
        }
        struct event ev = {.type = iev->in.type,
                           .tenant = iev->in.tenant,
                           .key = iev->in.key,
                           .time = iev->in.time,
                           .payload = iev->in.payload,
                           .payload_len = iev->in.payload_len,
                           .body = &body.data};
        rc = (*h)->validate(&ev, e);
    }
    if (decoded)
        msgpack_unpacked_destroy(&body);
    return rc;
}

/* ====================================================================== assembling */

/* Copies the strings and payload into one block owned by ev. */
static int build_event(struct ingest_event *ev, const struct cairn_str *parts, const char *source,
                       const struct cairn_buf *payload)
{
    size_t srcn = strlen(source), total = srcn + payload->len;
    for (int i = 0; i < 4; i++)
        total += parts[i].n;
    uint8_t *m = malloc(total ? total : 1);
    if (!m)
        return CAIRN_ENOMEM;
    struct cairn_str *dst[] = {&ev->in.type, &ev->in.tenant, &ev->in.key, &ev->in.id};
    size_t at = 0;
    for (int i = 0; i < 4; i++) {
        if (parts[i].n)
            memcpy(m + at, parts[i].p, parts[i].n);
        *dst[i] = (struct cairn_str){(const char *)m + at, parts[i].n};
        at += parts[i].n;
    }
    memcpy(m + at, source, srcn);
    ev->in.source = (struct cairn_str){(const char *)m + at, srcn};
    at += srcn;
    memcpy(m + at, payload->data, payload->len);
    ev->in.payload = m + at;
    ev->in.payload_len = payload->len;
    ev->mem = m;
    return 0;
}

static int check_type(struct ingest *ing, const json_t *obj, bool engine_only, const char **type,
                      const struct schema **schema, struct cairn_error *e)
{
    size_t n;
    int rc = get_str(obj, "type", CAIRN_TYPE_MAX, true, type, &n, e);
    if (rc)
        return rc;
    if (!engine_only && in_list(*type, engine_only_types))
        return cairn_error_set(e, "reserved_type", "/type",
                               "type %s is appended by the engine only", *type);
    *schema = schema_set_get(ing->schemas, *type);
    if (!*schema)
        return cairn_error_set(e, "unknown_type", "/type",
                               "unknown type %.64s (known types have a schema in %s)", *type,
                               ing->schema_dir);
    return 0;
}

static int check_tenant(const json_t *obj, bool engine_only, struct cairn_str *t,
                        struct cairn_error *e)
{
    int rc = get_str(obj, "tenant", CAIRN_TENANT_MAX, true, &t->p, &t->n, e);
    if (rc)
        return rc;
    if (!engine_only && t->p[0] == '_')
        return cairn_error_set(e, "reserved_tenant", "/tenant",
                               "tenants starting with '_' are reserved for the engine");
    for (size_t i = 0; i < t->n; i++)
        if (!tenant_char_ok(t->p[i]))
            return cairn_error_set(e, "invalid_value", "/tenant",
                                   "tenant may only contain letters, digits, '.', '_' and '-'");
    return 0;
}

int ingest_parse_value(struct ingest *ing, const json_t *obj, const char *source, int64_t now,
                       bool engine_only, struct ingest_event *ev, struct cairn_error *e)
{
    const char *type;
    const struct schema *schema;
    struct cairn_str parts[4] = {{0}}; /* type tenant key id */
    char keybuf[CAIRN_KEY_MAX + 1];
    memset(ev, 0, sizeof *ev);
    if (!json_is_object(obj))
        return cairn_error_set(e, "not_object", "", "an event must be a JSON object");
    int rc = check_fields(obj, e);
    if (!rc)
        rc = check_type(ing, obj, engine_only, &type, &schema, e);
    if (!rc)
        rc = check_tenant(obj, engine_only, &parts[1], e);
    if (!rc)
        rc = get_str(obj, "key", CAIRN_KEY_MAX, false, &parts[2].p, &parts[2].n, e);
    if (!rc)
        rc = get_str(obj, "id", CAIRN_ID_MAX, false, &parts[3].p, &parts[3].n, e);
    if (!rc)
        rc = get_time(obj, now, &ev->in.time, e);
    if (!rc)
        rc = get_expected(obj, &ev->in.expected_seq, e);
    if (rc)
        return rc;
    const json_t *payload = json_object_get(obj, "payload");
    if (!payload)
        return cairn_error_set(e, "missing_field", "/payload", "payload is required");
    if ((rc = schema_validate(schema, payload, "/payload", e)))
        return rc;
    parts[0] = (struct cairn_str){type, strlen(type)};
    if (!parts[2].p) {
        int kn = ingest_default_key(type, payload, keybuf, sizeof keybuf);
        if (kn < 0)
            return cairn_error_set(e, "too_long", "/key",
                                   "the key derived from the payload is over %d bytes; give an "
                                   "explicit key",
                                   CAIRN_KEY_MAX);
        parts[2] = (struct cairn_str){keybuf, (size_t)kn};
    }
    if (ev->in.expected_seq >= 0 && parts[2].n == 0)
        return cairn_error_set(e, "missing_field", "/key",
                               "expected_seq needs a key (the entity it refers to)");
    struct cairn_buf mp;
    cairn_buf_init(&mp, ing->payload_max);
    rc = cairn_json_to_msgpack(payload, &mp, e);
    if (rc == CAIRN_ETOOBIG)
        rc = cairn_error_set(e, "too_large", "/payload", "payload is over the %zu-byte limit",
                             ing->payload_max);
    else if (rc == CAIRN_EINVAL && e)
        snprintf(e->field, sizeof e->field, "/payload");
    if (!rc)
        rc = build_event(ev, parts, source, &mp);
    cairn_buf_deinit(&mp);
    if (!rc && (rc = handler_validate(ing, ev, e)))
        ingest_event_deinit(ev);
    return rc;
}

int ingest_parse_json(struct ingest *ing, const char *text, size_t n, const char *source,
                      int64_t now, struct ingest_event *ev, struct cairn_error *e)
{
    json_error_t je;
    if (n > CAIRN_LINE_MAX)
        return cairn_error_set(e, "too_large", "", "input is over the %u-byte limit",
                               (unsigned)CAIRN_LINE_MAX);
    /* REJECT_DUPLICATES: {"tenant":"a","tenant":"b"} must not pick one. */
    /* DECODE_ANY: a scalar is valid JSON but not an event (not_object). */
    json_t *obj = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!obj)
        return cairn_error_set(e, "invalid_json", "", "not valid JSON at byte %d: %s", je.position,
                               je.text);
    int rc = ingest_parse_value(ing, obj, source, now, ing->allow_engine_types, ev, e);
    json_decref(obj);
    return rc;
}

int ingest_parse_msgpack(struct ingest *ing, const uint8_t *p, size_t n, size_t *used,
                         const char *source, int64_t now, struct ingest_event *ev,
                         struct cairn_error *e)
{
    json_t *obj;
    int rc = cairn_msgpack_to_jansson(p, n, &obj, used, e);
    if (rc)
        return rc;
    rc = ingest_parse_value(ing, obj, source, now, ing->allow_engine_types, ev, e);
    json_decref(obj);
    return rc;
}

/* ====================================================================== results */

int ingest_result_json(struct cairn_buf *b, unsigned long line, const struct log_result *r,
                       const struct cairn_error *e)
{
    struct cairn_error own;
    if ((!e || !e->code) && r && r->rc) { /* refused by the log, not by ingest */
        e = &own;
        if (r->rc == CAIRN_ECONFLICT)
            cairn_error_set(&own, "conflict", "/expected_seq",
                            "the last event of this tenant and key is seq %llu",
                            (unsigned long long)r->actual_seq);
        else if (r->rc == CAIRN_ETOOBIG)
            cairn_error_set(&own, "too_large", "/payload", "the envelope is too large");
        else
            cairn_error_set(&own, "internal", "", "%s", cairn_strerror(r->rc));
    }
    int rc = line ? cairn_buf_printf(b, "{\"line\":%lu,", line) : cairn_buf_putc(b, '{');
    if (rc)
        return rc;
    if (e && e->code) {
        rc = cairn_buf_printf(b, "\"error\":{\"code\":\"%s\",\"field\":", e->code);
        if (!rc)
            rc = cairn_buf_json_str(b, e->field, strlen(e->field));
        if (!rc)
            rc = cairn_buf_puts(b, ",\"message\":");
        if (!rc)
            rc = cairn_buf_json_str(b, e->message, strlen(e->message));
        if (!rc && r && r->rc == CAIRN_ECONFLICT)
            rc = cairn_buf_printf(b, ",\"actual_seq\":%llu", (unsigned long long)r->actual_seq);
        return rc ? rc : cairn_buf_puts(b, "}}");
    }
    rc = cairn_buf_printf(b, "\"seq\":%llu", (unsigned long long)r->seq);
    if (!rc && r->duplicate)
        rc = cairn_buf_puts(b, ",\"duplicate\":true");
    return rc ? rc : cairn_buf_putc(b, '}');
}
