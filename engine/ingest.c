/*
 * ingest.c — validation of producer input and its conversion to log inputs.
 *
 * Order of checks (the first failure is reported): the envelope fields
 * (shape, lengths, charset), the type (known, not engine-only), the payload
 * against its schema, the payload size, then the derived key. Nothing is
 * written anywhere until every check passed.
 */
#include "engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CAIRN_SCHEMA_DIR
#define CAIRN_SCHEMA_DIR "schemas"
#endif

/* The handlers that validate inputs of one type (handler_validate), in
 * table order, found once at open instead of per input. */
struct hooks {
    const struct schema *schema; /* the type's */
    size_t first, n;             /* in ingest.hook */
};

struct ingest {
    struct schema_set *schemas;
    size_t payload_max;
    bool allow_engine_types;
    const struct handler *const *handlers;
    char schema_dir[1024];
    struct hooks *hooks; /* one per schema type */
    size_t nhooks;
    const struct handler **hook;
};

/* Types only the engine may append. */
static const char *const engine_only_types[] = {"tick", NULL};

static const char *const envelope_fields[] = {"type", "tenant",  "key",          "id",
                                              "time", "payload", "expected_seq", NULL};

static bool consumes(const struct handler *h, const char *type)
{
    for (const char *const *t = h->consumes; t && *t; t++)
        if (!strcmp(*t, type))
            return true;
    return false;
}

/* For each schema type, the handlers with a validate hook that consume it. */
static int hooks_build(struct ingest *ing)
{
    size_t types = schema_set_count(ing->schemas), nh = 0, at = 0;
    for (const struct handler *const *h = ing->handlers; *h; h++)
        nh++;
    ing->hooks = calloc(types + 1, sizeof *ing->hooks);
    ing->hook = calloc(types * nh + 1, sizeof *ing->hook);
    if (!ing->hooks || !ing->hook)
        return CAIRN_ENOMEM;
    for (size_t i = 0; i < types; i++) {
        const char *type = schema_set_type(ing->schemas, i);
        struct hooks *k = &ing->hooks[ing->nhooks++];
        k->schema = schema_set_get(ing->schemas, type);
        k->first = at;
        for (const struct handler *const *h = ing->handlers; *h; h++)
            if ((*h)->validate && consumes(*h, type))
                ing->hook[at++] = *h;
        k->n = at - k->first;
    }
    return 0;
}

void ingest_close(struct ingest *ing);

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
    if ((rc = hooks_build(ing))) {
        ingest_close(ing);
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
    free(ing->hooks);
    free(ing->hook);
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
    ev->cap = 0;
}

/* Clears ev for a parse, keeping the memory of an earlier input. */
static void event_reset(struct ingest_event *ev)
{
    uint8_t *mem = ev->mem;
    size_t cap = ev->cap;
    memset(ev, 0, sizeof *ev);
    ev->mem = mem;
    ev->cap = cap;
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

/* An envelope field as read from either encoding, before any check. */
enum fkind { F_ABSENT, F_NULL, F_STR, F_INT, F_OTHER };

struct field {
    enum fkind kind;
    const char *s; /* F_STR */
    size_t n;
    int64_t i; /* F_INT */
};

/* In the order of envelope_fields. */
enum { FX_TYPE, FX_TENANT, FX_KEY, FX_ID, FX_TIME, FX_PAYLOAD, FX_EXPECTED, FX_N };

/* The envelope of one input, read from JSON (jansson) or msgpack (in
 * place). The checks below run on this, so both encodings give the same
 * answers and errors. */
struct raw_env {
    struct field f[FX_N];
    const json_t *payload_json;                 /* JSON: the payload value */
    const uint8_t *payload_mp, *payload_mp_end; /* msgpack: its bytes */
    msgpack_object body;                        /* msgpack: them decoded */
};

/* Names the top-level field of an error cairn_error_set just filled; the
 * pointer is formatted only when there is an error (this is hot). */
static int at_field(struct cairn_error *e, const char *name, int rc)
{
    if (e)
        snprintf(e->field, sizeof e->field, "/%s", name);
    return rc;
}

static int unknown_field(const char *k, size_t n, struct cairn_error *e)
{
    char field[CAIRN_ERR_FIELD_MAX];
    snprintf(field, sizeof field, "/%.*s", (int)(n > 200 ? 200 : n), k);
    return cairn_error_set(e, "unknown_field", field,
                           "unknown field; an event has type, tenant, key, id, time, "
                           "expected_seq and payload");
}

static int field_index(const char *k, size_t n)
{
    int i = -1; /* the candidate of that length (the names' lengths tell them apart but for 4) */
    switch (n) {
    case 2: i = FX_ID; break;
    case 3: i = FX_KEY; break;
    case 4: i = k[1] == 'y' ? FX_TYPE : FX_TIME; break;
    case 6: i = FX_TENANT; break;
    case 7: i = FX_PAYLOAD; break;
    case 12: i = FX_EXPECTED; break;
    default: return -1;
    }
    return memcmp(envelope_fields[i], k, n) ? -1 : i;
}

static int env_from_json(const json_t *obj, struct raw_env *r, struct cairn_error *e)
{
    const char *k;
    json_t *v;
    memset(r, 0, sizeof *r);
    json_object_foreach((json_t *)obj, k, v)
    {
        int i = field_index(k, strlen(k));
        if (i < 0)
            return unknown_field(k, strlen(k), e);
        struct field *f = &r->f[i];
        if (json_is_null(v)) {
            f->kind = F_NULL;
        } else if (json_is_string(v)) {
            *f = (struct field){F_STR, json_string_value(v), json_string_length(v), 0};
        } else if (json_is_integer(v)) {
            *f = (struct field){F_INT, NULL, 0, json_integer_value(v)};
        } else {
            f->kind = F_OTHER;
        }
        if (i == FX_PAYLOAD)
            r->payload_json = v;
    }
    return 0;
}

/* 1: leave this input to the slow path (through jansson), which
 * canonicalises what it can and reports what it cannot. */
#define SLOW 1

/* Reads the envelope map of a msgpack input in place. 0, SLOW, or an
 * error (unknown field). `trusted`: the bytes are the transcoder's output
 * (cairn_json_text_to_msgpack), canonical by construction, so each value
 * is only measured, not checked again (tests/common checks that every
 * transcoded document passes cairn_mp_canonical). */
static int env_from_msgpack(const uint8_t *p, size_t n, bool trusted, msgpack_zone *z,
                            struct raw_env *r, size_t *used, struct cairn_error *e)
{
    const uint8_t *at = p, *end = p + n;
    memset(r, 0, sizeof *r);
    if (at >= end || (*at & 0xf0) != 0x80)
        return SLOW; /* not a fixmap: an event has at most seven fields */
    size_t count = *at++ & 0x0f;
    for (size_t i = 0; i < count; i++) {
        size_t kl;
        if (at >= end || (*at & 0xe0) != 0xa0)
            return SLOW; /* keys are short strings */
        kl = *at++ & 0x1f;
        if ((size_t)(end - at) < kl)
            return SLOW;
        const char *k = (const char *)at;
        at += kl;
        int fi = field_index(k, kl); /* a known name is ASCII: valid UTF-8 */
        if (fi < 0 && !cairn_utf8_valid((const uint8_t *)k, kl))
            return SLOW;
        if (fi < 0)
            return unknown_field(k, kl, e);
        struct field *f = &r->f[fi];
        if (f->kind != F_ABSENT)
            return SLOW; /* a duplicate: the slow path names it */
        const uint8_t *v = at;
        size_t vn;
        /* The payload sits one level below the envelope. It is checked
         * (a trusted one only measured) and decoded (into z, for the
         * schema) in one pass. */
        if (fi == FX_PAYLOAD ? !cairn_mp_canonical_unpack(v, (size_t)(end - v), CAIRN_DEPTH_MAX - 1,
                                                          trusted, z, &r->body, &vn)
            : trusted        ? !(vn = mp_raw_len(v, (size_t)(end - v)))
                             : !cairn_mp_canonical(v, (size_t)(end - v), CAIRN_DEPTH_MAX - 1, &vn))
            return SLOW;
        at += vn;
        if (fi == FX_PAYLOAD) {
            r->payload_mp = v;
            r->payload_mp_end = at;
            f->kind = F_OTHER;
        } else if (*v == 0xc0) {
            f->kind = F_NULL;
        } else if ((*v >= 0xa0 && *v <= 0xbf) || (*v >= 0xd9 && *v <= 0xdb)) {
            size_t hdr = *v <= 0xbf ? 1 : *v == 0xd9 ? 2 : *v == 0xda ? 3 : 5;
            *f = (struct field){F_STR, (const char *)v + hdr, vn - hdr, 0};
        } else if (*v <= 0x7f || *v >= 0xe0 || (*v >= 0xcc && *v <= 0xd3)) {
            struct cairn_rd rd = {v, at};
            f->kind = F_INT;
            if (cairn_rd_int(&rd, &f->i))
                return SLOW;
        } else {
            f->kind = F_OTHER;
        }
    }
    *used = (size_t)(at - p);
    return 0;
}

/* Reads an optional string field: s->p NULL when absent. */
static int get_str(const struct raw_env *r, int fi, size_t max, bool required, struct cairn_str *s,
                   struct cairn_error *e)
{
    const struct field *f = &r->f[fi];
    const char *name = envelope_fields[fi];
    *s = (struct cairn_str){NULL, 0};
    if (f->kind == F_ABSENT || f->kind == F_NULL) {
        if (required)
            return at_field(e, name,
                            cairn_error_set(e, "missing_field", "", "%s is required", name));
        return 0;
    }
    if (f->kind != F_STR)
        return at_field(e, name, cairn_error_set(e, "wrong_type", "", "%s must be a string", name));
    *s = (struct cairn_str){f->s, f->n};
    if (f->n > max)
        return at_field(e, name,
                        cairn_error_set(e, "too_long", "", "%s is %zu bytes, the limit is %zu",
                                        name, f->n, max));
    if (required && f->n == 0)
        return at_field(e, name, cairn_error_set(e, "too_short", "", "%s must not be empty", name));
    for (size_t i = 0; i < f->n; i++)
        if ((unsigned char)f->s[i] < 0x20)
            return at_field(e, name,
                            cairn_error_set(e, "invalid_value", "",
                                            "%s must not contain control characters", name));
    return 0;
}

static int get_time(const struct raw_env *r, int64_t now, int64_t *out, struct cairn_error *e)
{
    const struct field *f = &r->f[FX_TIME];
    if (f->kind == F_ABSENT || f->kind == F_NULL) {
        *out = now;
        return 0;
    }
    if (f->kind == F_INT) {
        *out = f->i;
    } else if (f->kind != F_STR) {
        return cairn_error_set(e, "wrong_type", "/time",
                               "time must be an RFC 3339 string or integer epoch nanoseconds");
    } else if (cairn_time_parse(f->s, f->n, out)) {
        return cairn_error_set(e, "invalid_time", "/time",
                               "time is not RFC 3339 (e.g. 2026-11-21T10:00:00.250Z)");
    }
    if (*out < CAIRN_TIME_MIN || *out > CAIRN_TIME_MAX)
        return cairn_error_set(e, "out_of_range", "/time",
                               "time must be between 1970-01-01 and 2200-01-01");
    return 0;
}

static int get_expected(const struct raw_env *r, int64_t *out, struct cairn_error *e)
{
    const struct field *f = &r->f[FX_EXPECTED];
    *out = -1;
    if (f->kind == F_ABSENT || f->kind == F_NULL)
        return 0;
    if (f->kind != F_INT)
        return cairn_error_set(e, "wrong_type", "/expected_seq", "expected_seq must be an integer");
    if (f->i < 0)
        return cairn_error_set(e, "out_of_range", "/expected_seq", "expected_seq must be >= 0");
    *out = f->i;
    return 0;
}

/* ====================================================================== default keys */

static int copy_key(const msgpack_object *v, char *out, size_t cap)
{
    struct cairn_str s;
    if (!mp_str(v, &s))
        return 0;
    if (s.n >= cap)
        return CAIRN_ETOOBIG;
    memcpy(out, s.p, s.n);
    out[s.n] = '\0';
    return (int)s.n;
}

/* A string as C code saw it when keys were made from jansson values: up
 * to its first NUL. Kept so that keys never change. */
static size_t c_len(const struct cairn_str *s)
{
    return strnlen(s->p, s->n);
}

static int span_cmp(const void *a, const void *b)
{
    const struct cairn_str *x = a, *y = b;
    int c = memcmp(x->p, y->p, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static bool put_raw(char *out, size_t cap, int *n, const char *s, size_t len)
{
    if ((size_t)*n + len >= cap)
        return false;
    memcpy(out + *n, s, len);
    *n += (int)len;
    out[*n] = '\0';
    return true;
}

/* Appends s to out[*n..cap) with Prometheus label-value escaping (\\, \",
 * \n), so distinct label sets never give the same series key. */
static bool put_escaped(char *out, size_t cap, int *n, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        const char *esc = c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : NULL;
        if (!put_raw(out, cap, n, esc ? esc : &s[i], esc ? 2 : 1))
            return false;
    }
    return true;
}

/* name{a="x",b="y"}: the Prometheus series identity, labels sorted. */
static int metric_series(const msgpack_object *payload, char *out, size_t cap)
{
    const msgpack_object *labels = mp_get(payload, "labels");
    struct cairn_str name = {"", 0}, keys[64];
    const msgpack_object *vals[64];
    size_t nl = 0;
    int n = 0;
    mp_str(mp_get(payload, "name"), &name);
    out[0] = '\0';
    if (!put_raw(out, cap, &n, name.p, c_len(&name)))
        return CAIRN_ETOOBIG;
    for (uint32_t i = 0; labels && labels->type == MSGPACK_OBJECT_MAP && i < labels->via.map.size;
         i++) {
        if (nl == sizeof keys / sizeof *keys)
            return CAIRN_ETOOBIG;
        if (!mp_str(&labels->via.map.ptr[i].key, &keys[nl]))
            continue;
        vals[nl] = &labels->via.map.ptr[i].val;
        nl++;
    }
    /* sort keys, carrying their values along */
    for (size_t i = 1; i < nl; i++)
        for (size_t j = i; j > 0 && span_cmp(&keys[j - 1], &keys[j]) > 0; j--) {
            struct cairn_str tk = keys[j];
            const msgpack_object *tv = vals[j];
            keys[j] = keys[j - 1];
            vals[j] = vals[j - 1];
            keys[j - 1] = tk;
            vals[j - 1] = tv;
        }
    for (size_t i = 0; i < nl; i++) {
        struct cairn_str v = {"", 0};
        mp_str(vals[i], &v);
        if (!put_raw(out, cap, &n, i ? "," : "{", 1) ||
            !put_raw(out, cap, &n, keys[i].p, c_len(&keys[i])) ||
            !put_raw(out, cap, &n, "=\"", 2) || !put_escaped(out, cap, &n, v.p, c_len(&v)) ||
            (size_t)n + 2 >= cap)
            return CAIRN_ETOOBIG;
        out[n++] = '"';
        out[n] = '\0';
    }
    if (nl && !put_raw(out, cap, &n, "}", 1))
        return CAIRN_ETOOBIG;
    return n;
}

int ingest_default_key_mp(const char *type, const msgpack_object *payload, char *out, size_t cap)
{
    if (!strcmp(type, "telemetry") || !strcmp(type, "location"))
        return copy_key(mp_get(payload, "device_id"), out, cap);
    if (!strcmp(type, "order"))
        return copy_key(mp_get(payload, "order_id"), out, cap);
    if (!strcmp(type, "payment")) {
        const msgpack_object *o = mp_path(payload, "data", "object", NULL);
        const msgpack_object *cust = o ? mp_get(o, "customer") : NULL;
        if (cust && cust->type == MSGPACK_OBJECT_STR)
            return copy_key(cust, out, cap);
        if (cust && cust->type == MSGPACK_OBJECT_MAP) /* an expanded customer */
            return copy_key(mp_get(cust, "id"), out, cap);
        if (o && mp_str_eq(mp_get(o, "object"), "customer"))
            return copy_key(mp_get(o, "id"), out, cap);
        return 0;
    }
    if (!strcmp(type, "metric"))
        return metric_series(payload, out, cap);
    if (!strcmp(type, "discovery")) {
        struct cairn_str a, r;
        if (!mp_str(mp_get(payload, "account_id"), &a) || !mp_str(mp_get(payload, "region"), &r))
            return 0;
        int n = 0;
        out[0] = '\0';
        if (!put_raw(out, cap, &n, a.p, c_len(&a)) || !put_raw(out, cap, &n, "/", 1) ||
            !put_raw(out, cap, &n, r.p, c_len(&r)))
            return CAIRN_ETOOBIG;
        return n;
    }
    return 0;
}

/* ====================================================================== per-thread scratch */

/* Each parsing thread keeps the msgpack zone its payloads are unpacked
 * into and the buffer NDJSON is transcoded into, from input to input:
 * they were a malloc/free pair each per input. A thread's are freed when
 * it exits (the key's destructor). Either is taken only while not in use,
 * so a nested use gets its own, as before. */
#define SCRATCH_ZONE_CHUNK 4096
#define SCRATCH_BUF_KEEP (64u << 10) /* a bigger transcoding is not kept */

struct scratch {
    msgpack_zone zone;
    bool zone_ok, zone_busy, buf_busy;
    struct cairn_buf buf;
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_key_ok;

static void scratch_free(void *p)
{
    struct scratch *s = p;
    if (s->zone_ok)
        msgpack_zone_destroy(&s->zone);
    cairn_buf_deinit(&s->buf);
    free(s);
}

static void scratch_key_init(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

/* The calling thread's scratch, NULL when it cannot have one. */
static struct scratch *scratch_get(void)
{
    pthread_once(&scratch_once, scratch_key_init);
    if (!scratch_key_ok)
        return NULL;
    struct scratch *s = pthread_getspecific(scratch_key);
    if (s)
        return s;
    if (!(s = calloc(1, sizeof *s)))
        return NULL;
    cairn_buf_init(&s->buf, SIZE_MAX);
    s->zone_ok = msgpack_zone_init(&s->zone, SCRATCH_ZONE_CHUNK);
    if (pthread_setspecific(scratch_key, s)) {
        scratch_free(s);
        return NULL;
    }
    return s;
}

static void zone_give(msgpack_zone *z, msgpack_zone *own);

/* A buffer for transcoding: the thread's, or *own (initialised). */
static struct cairn_buf *buf_take(struct cairn_buf *own)
{
    struct scratch *s = scratch_get();
    if (s && !s->buf_busy) {
        s->buf_busy = true;
        cairn_buf_reset(&s->buf);
        return &s->buf;
    }
    cairn_buf_init(own, SIZE_MAX);
    return own;
}

static void buf_give(struct cairn_buf *b, struct cairn_buf *own)
{
    if (b == own) {
        cairn_buf_deinit(own);
        return;
    }
    struct scratch *s = pthread_getspecific(scratch_key);
    if (b->cap > SCRATCH_BUF_KEEP) { /* a huge input: do not keep its memory */
        cairn_buf_deinit(b);
        cairn_buf_init(b, SIZE_MAX);
    }
    s->buf_busy = false;
}

/* A zone for decoding one input: the thread's, or *own (initialised); *z
 * is the one taken, for zone_give. */
static int zone_take(msgpack_zone *own, msgpack_zone **z)
{
    struct scratch *s = scratch_get();
    if (s && s->zone_ok && !s->zone_busy) {
        s->zone_busy = true;
        *z = &s->zone;
    } else if (msgpack_zone_init(own, 1024)) {
        *z = own;
    } else {
        return CAIRN_ENOMEM;
    }
    return 0;
}

/* Unpacks canonical msgpack bytes (which cannot fail but for memory) into
 * a zone from zone_take; *z is the one used, for zone_give. */
static int unpack(const uint8_t *p, size_t n, msgpack_zone *own, msgpack_zone **z,
                  msgpack_object *o)
{
    size_t off = 0;
    int rc = zone_take(own, z);
    if (rc)
        return rc;
    if (msgpack_unpack((const char *)p, n, &off, *z, o) != MSGPACK_UNPACK_SUCCESS) {
        zone_give(*z, own);
        return CAIRN_ENOMEM;
    }
    return 0;
}

/* Releases what unpack returned: the thread's zone is emptied (its first
 * chunk is kept), another is destroyed. */
static void zone_give(msgpack_zone *z, msgpack_zone *own)
{
    if (z == own) {
        msgpack_zone_destroy(own);
        return;
    }
    struct scratch *s = pthread_getspecific(scratch_key);
    msgpack_zone_clear(z);
    s->zone_busy = false;
}

int ingest_default_key(const char *type, const json_t *payload, char *out, size_t cap)
{
    struct cairn_buf own, *b = buf_take(&own);
    msgpack_zone zown, *z;
    msgpack_object o;
    int rc = cairn_json_to_msgpack(payload, b, NULL);
    if (!rc && !(rc = unpack(b->data, b->len, &zown, &z, &o))) {
        rc = ingest_default_key_mp(type, &o, out, cap);
        zone_give(z, &zown);
    }
    buf_give(b, &own);
    return rc;
}

/* ====================================================================== handler validation */

/* Lets the handlers that consume this type refuse a bad control input
 * (a malformed rule, an invalid fence) before it enters the log. */
static int handler_validate(struct ingest *ing, const struct schema *schema,
                            const struct ingest_event *iev, const msgpack_object *body,
                            struct cairn_error *e)
{
    int rc = 0;
    const struct hooks *k = NULL;
    for (size_t i = 0; i < ing->nhooks && !k; i++)
        if (ing->hooks[i].schema == schema)
            k = &ing->hooks[i];
    for (size_t i = 0; k && i < k->n && !rc; i++) {
        const struct handler *const *h = &ing->hook[k->first + i];
        struct event ev = {.type = iev->in.type,
                           .tenant = iev->in.tenant,
                           .key = iev->in.key,
                           .time = iev->in.time,
                           .payload = iev->in.payload,
                           .payload_len = iev->in.payload_len,
                           .body = body};
        rc = (*h)->validate(&ev, e);
    }
    return rc;
}

/* ====================================================================== assembling */

/* Copies the strings and payload into one block owned by ev. */
static int build_event(struct ingest_event *ev, const struct cairn_str *parts, const char *source,
                       const uint8_t *payload, size_t plen)
{
    size_t srcn = strlen(source), total = srcn + plen;
    for (int i = 0; i < 4; i++)
        total += parts[i].n;
    if (total > ev->cap || !ev->mem) {
        /* room for the next inputs too (most are about this size); a
         * multiple of 256, never 0 */
        size_t cap = (total | 255) + 1;
        free(ev->mem);
        ev->cap = 0;
        if (!(ev->mem = malloc(cap)))
            return CAIRN_ENOMEM;
        ev->cap = cap;
    }
    uint8_t *m = ev->mem;
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
    memcpy(m + at, payload, plen);
    ev->in.payload = m + at;
    ev->in.payload_len = plen;
    return 0;
}

static int check_type(struct ingest *ing, const struct raw_env *r, bool engine_only,
                      struct cairn_str *t, char type[CAIRN_TYPE_MAX + 1],
                      const struct schema **schema, struct cairn_error *e)
{
    int rc = get_str(r, FX_TYPE, CAIRN_TYPE_MAX, true, t, e);
    if (rc)
        return rc;
    memcpy(type, t->p, t->n); /* no NUL inside: get_str refused control characters */
    type[t->n] = '\0';
    if (!engine_only && in_list(type, engine_only_types))
        return cairn_error_set(e, "reserved_type", "/type",
                               "type %s is appended by the engine only", type);
    *schema = schema_set_get(ing->schemas, type);
    if (!*schema)
        return cairn_error_set(e, "unknown_type", "/type",
                               "unknown type %.64s (known types have a schema in %s)", type,
                               ing->schema_dir);
    return 0;
}

static int check_tenant(const struct raw_env *r, bool engine_only, struct cairn_str *t,
                        struct cairn_error *e)
{
    int rc = get_str(r, FX_TENANT, CAIRN_TENANT_MAX, true, t, e);
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

/* A caller bound to one tenant (an HTTP token): an input without a tenant
 * gets it; one naming another is refused. NULL tenant: no binding. */
struct bind {
    const char *tenant;
    bool any; /* may write any tenant (admin) */
};

static int apply_bind(struct raw_env *r, const struct bind *b, struct cairn_error *e)
{
    struct field *f = &r->f[FX_TENANT];
    if (!b || !b->tenant || !b->tenant[0])
        return 0;
    size_t n = strlen(b->tenant);
    if (f->kind == F_ABSENT)
        *f = (struct field){F_STR, b->tenant, n, 0};
    else if (f->kind == F_STR && !b->any && (f->n != n || memcmp(f->s, b->tenant, n)))
        return cairn_error_set(e, "forbidden", "/tenant", "this token may only write tenant %s",
                               b->tenant);
    return 0;
}

/* What the envelope checks found, for finish(). */
struct checked {
    char type[CAIRN_TYPE_MAX + 1];
    const struct schema *schema;
    struct cairn_str parts[4]; /* type tenant key id */
};

/* The envelope checks, in the documented order (file comment). */
static int check_env(struct ingest *ing, const struct raw_env *r, int64_t now, bool engine_only,
                     struct checked *c, struct ingest_event *ev, struct cairn_error *e)
{
    int rc = check_type(ing, r, engine_only, &c->parts[0], c->type, &c->schema, e);
    if (!rc)
        rc = check_tenant(r, engine_only, &c->parts[1], e);
    if (!rc)
        rc = get_str(r, FX_KEY, CAIRN_KEY_MAX, false, &c->parts[2], e);
    if (!rc)
        rc = get_str(r, FX_ID, CAIRN_ID_MAX, false, &c->parts[3], e);
    if (!rc)
        rc = get_time(r, now, &ev->in.time, e);
    if (!rc)
        rc = get_expected(r, &ev->in.expected_seq, e);
    if (!rc && r->f[FX_PAYLOAD].kind == F_ABSENT)
        rc = cairn_error_set(e, "missing_field", "/payload", "payload is required");
    return rc;
}

/* The payload checks on its canonical msgpack bytes and their decoding,
 * then the event is assembled. */
static int finish(struct ingest *ing, struct checked *c, const uint8_t *payload, size_t plen,
                  const msgpack_object *body, const char *source, struct ingest_event *ev,
                  struct cairn_error *e)
{
    char keybuf[CAIRN_KEY_MAX + 1];
    int rc = schema_validate_mp(c->schema, body, "/payload", e);
    if (rc)
        return rc;
    if (!c->parts[2].p) {
        int kn = ingest_default_key_mp(c->type, body, keybuf, sizeof keybuf);
        if (kn < 0)
            return cairn_error_set(e, "too_long", "/key",
                                   "the key derived from the payload is over %d bytes; give an "
                                   "explicit key",
                                   CAIRN_KEY_MAX);
        c->parts[2] = (struct cairn_str){keybuf, (size_t)kn};
    }
    if (ev->in.expected_seq >= 0 && c->parts[2].n == 0)
        return cairn_error_set(e, "missing_field", "/key",
                               "expected_seq needs a key (the entity it refers to)");
    if (plen > ing->payload_max)
        return cairn_error_set(e, "too_large", "/payload", "payload is over the %zu-byte limit",
                               ing->payload_max);
    if ((rc = build_event(ev, c->parts, source, payload, plen)))
        return rc;
    return handler_validate(ing, c->schema, ev, body, e);
}

/* What a public parse returns: a refused input leaves the event without
 * memory (engine.h), whatever the event held before. */
static int settled(struct ingest_event *ev, int rc)
{
    if (rc)
        ingest_event_deinit(ev);
    return rc;
}

static int parse_value(struct ingest *ing, const json_t *obj, const char *source, int64_t now,
                       bool engine_only, const struct bind *bind, struct ingest_event *ev,
                       struct cairn_error *e)
{
    struct raw_env r;
    struct checked c = {0};
    event_reset(ev);
    if (!json_is_object(obj))
        return cairn_error_set(e, "not_object", "", "an event must be a JSON object");
    int rc = env_from_json(obj, &r, e);
    if (!rc)
        rc = apply_bind(&r, bind, e);
    if (!rc)
        rc = check_env(ing, &r, now, engine_only, &c, ev, e);
    if (rc)
        return rc;
    /* The payload is stored as msgpack and validated in that form. Encoded
     * without a size limit (the input line bounds it), so that a schema
     * error is still reported before the size. */
    struct cairn_buf own, *mp = buf_take(&own);
    msgpack_zone zown, *z;
    msgpack_object body;
    rc = cairn_json_to_msgpack(r.payload_json, mp, e);
    if (rc == CAIRN_EINVAL && e)
        snprintf(e->field, sizeof e->field, "/payload");
    if (!rc && !(rc = unpack(mp->data, mp->len, &zown, &z, &body))) {
        rc = finish(ing, &c, mp->data, mp->len, &body, source, ev, e);
        zone_give(z, &zown);
    }
    buf_give(mp, &own);
    return rc;
}

int ingest_parse_value_for(struct ingest *ing, const json_t *obj, const char *source, int64_t now,
                           bool engine_only, const char *tenant, bool any_tenant,
                           struct ingest_event *ev, struct cairn_error *e)
{
    struct bind bind = {tenant, any_tenant};
    return settled(ev, parse_value(ing, obj, source, now, engine_only, &bind, ev, e));
}

int ingest_parse_value(struct ingest *ing, const json_t *obj, const char *source, int64_t now,
                       bool engine_only, struct ingest_event *ev, struct cairn_error *e)
{
    return ingest_parse_value_for(ing, obj, source, now, engine_only, NULL, true, ev, e);
}

/* The in-place path for canonical msgpack: 0, an error, or SLOW when the
 * input needs the path through jansson. */
static int parse_mp_fast(struct ingest *ing, const uint8_t *p, size_t n, bool trusted, size_t *used,
                         const char *source, int64_t now, const struct bind *bind,
                         struct ingest_event *ev, struct cairn_error *e)
{
    struct raw_env r;
    struct checked c = {0};
    size_t end = 0;
    msgpack_zone zown, *z;
    event_reset(ev);
    int rc = zone_take(&zown, &z);
    if (rc)
        return rc;
    rc = env_from_msgpack(p, n, trusted, z, &r, &end, e);
    if (!rc)
        rc = apply_bind(&r, bind, e);
    if (!rc)
        rc = check_env(ing, &r, now, ing->allow_engine_types, &c, ev, e);
    if (!rc) {
        const uint8_t *pl = r.payload_mp;
        rc = finish(ing, &c, pl, (size_t)(r.payload_mp_end - pl), &r.body, source, ev, e);
    }
    zone_give(z, &zown);
    if (!rc && used)
        *used = end;
    return rc;
}

/* JSON text is transcoded to msgpack in one pass and takes the msgpack
 * path; what the transcoder declines (cairn_json_text_to_msgpack) is
 * parsed by jansson, which also words every JSON syntax error. */
static int parse_json_for(struct ingest *ing, const char *text, size_t n, const char *source,
                          int64_t now, const char *tenant, bool any_tenant, struct ingest_event *ev,
                          struct cairn_error *e)
{
    json_error_t je;
    struct bind bind = {tenant, any_tenant};
    if (n > CAIRN_LINE_MAX)
        return cairn_error_set(e, "too_large", "", "input is over the %u-byte limit",
                               (unsigned)CAIRN_LINE_MAX);
    struct cairn_buf own, *mp = buf_take(&own);
    int rc = SLOW;
    if (cairn_json_text_to_msgpack(text, n, mp))
        rc = parse_mp_fast(ing, mp->data, mp->len, true, NULL, source, now, &bind, ev, e);
    buf_give(mp, &own);
    if (rc != SLOW)
        return rc;
    cairn_error_clear(e);
    /* REJECT_DUPLICATES: {"tenant":"a","tenant":"b"} must not pick one. */
    /* DECODE_ANY: a scalar is valid JSON but not an event (not_object). */
    json_t *obj = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!obj)
        return cairn_error_set(e, "invalid_json", "", "not valid JSON at byte %d: %s", je.position,
                               je.text);
    rc = parse_value(ing, obj, source, now, ing->allow_engine_types, &bind, ev, e);
    json_decref(obj);
    return rc;
}

int ingest_parse_json_for(struct ingest *ing, const char *text, size_t n, const char *source,
                          int64_t now, const char *tenant, bool any_tenant, struct ingest_event *ev,
                          struct cairn_error *e)
{
    return settled(ev, parse_json_for(ing, text, n, source, now, tenant, any_tenant, ev, e));
}

int ingest_parse_json(struct ingest *ing, const char *text, size_t n, const char *source,
                      int64_t now, struct ingest_event *ev, struct cairn_error *e)
{
    return ingest_parse_json_for(ing, text, n, source, now, NULL, true, ev, e);
}

/* Canonical msgpack input (what any msgpack library writes for a JSON-like
 * object) is checked in place and its payload bytes stored as they are: no
 * jansson tree, no re-encoding. Anything else — other widths, float32,
 * duplicate or non-string keys, bin/ext — takes the slow path through
 * jansson, which canonicalises it or reports the error. Bound to `tenant`
 * as parse_json_for is. */
int ingest_parse_msgpack_for(struct ingest *ing, const uint8_t *p, size_t n, size_t *used,
                             const char *source, int64_t now, const char *tenant, bool any_tenant,
                             struct ingest_event *ev, struct cairn_error *e)
{
    struct bind bind = {tenant, any_tenant};
    int rc = parse_mp_fast(ing, p, n, false, used, source, now, &bind, ev, e);
    if (!rc)
        return 0;
    /* Refused or declined: the path through jansson decides, so that the
     * error and the length of input consumed (*used, which lets a batch
     * carry on after a bad object) are what they always were. Errors are
     * rare; their cost does not matter. */
    json_t *obj;
    event_reset(ev);
    cairn_error_clear(e);
    if ((rc = cairn_msgpack_to_jansson(p, n, &obj, used, e)))
        return settled(ev, rc);
    rc = parse_value(ing, obj, source, now, ing->allow_engine_types, &bind, ev, e);
    json_decref(obj);
    return settled(ev, rc);
}

int ingest_parse_msgpack(struct ingest *ing, const uint8_t *p, size_t n, size_t *used,
                         const char *source, int64_t now, struct ingest_event *ev,
                         struct cairn_error *e)
{
    return ingest_parse_msgpack_for(ing, p, n, used, source, now, NULL, true, ev, e);
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
