/*
 * mp.c — small helpers handlers use (declared in handlers/handler.h):
 * view keys, msgpack map lookups and a packer that remembers failure.
 */
#include "proj.h"

#include <stdarg.h>
#include <string.h>

/* ====================================================================== keys */

size_t hkey_make(uint8_t *out, size_t cap, const struct cairn_str *tenant,
                 const struct cairn_str *rest)
{
    return cairn_tkey(out, cap, tenant, rest);
}

bool hkey_split(const uint8_t *k, size_t n, struct cairn_str *tenant, struct cairn_str *rest)
{
    if (n < 1 || (size_t)k[0] + 1 > n)
        return false;
    *tenant = (struct cairn_str){(const char *)k + 1, k[0]};
    *rest = (struct cairn_str){(const char *)k + 1 + k[0], n - 1 - k[0]};
    return true;
}

/* ====================================================================== lookups */

const msgpack_object *mp_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            !memcmp(k->via.str.size ? k->via.str.ptr : "", key, n))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

const msgpack_object *mp_path(const msgpack_object *map, ...)
{
    va_list ap;
    va_start(ap, map);
    for (const char *k = va_arg(ap, const char *); k && map; k = va_arg(ap, const char *))
        map = mp_get(map, k);
    va_end(ap);
    return map;
}

bool mp_str(const msgpack_object *o, struct cairn_str *out)
{
    if (!o || o->type != MSGPACK_OBJECT_STR)
        return false;
    /* msgpack-c gives an empty string a NULL pointer */
    *out = (struct cairn_str){o->via.str.size ? o->via.str.ptr : "", o->via.str.size};
    return true;
}

bool mp_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           !memcmp(o->via.str.size ? o->via.str.ptr : "", s, n);
}

bool mp_num(const msgpack_object *o, double *out)
{
    if (!o)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return true;
    default: return false;
    }
}

bool mp_i64(const msgpack_object *o, int64_t *out)
{
    if (!o)
        return false;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    return false;
}

bool mp_bool(const msgpack_object *o, bool *out)
{
    if (!o || o->type != MSGPACK_OBJECT_BOOLEAN)
        return false;
    *out = o->via.boolean;
    return true;
}

/* ====================================================================== writing */

static int mpw_write(void *data, const char *p, size_t n)
{
    struct mpw *w = data;
    struct cairn_buf *b = w->buf;
    if (w->err)
        return -1;
    if (b->cap - b->len >= n) { /* the usual case: room already reserved */
        memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    w->err = cairn_buf_append(b, p, n);
    return w->err ? -1 : 0;
}

void mpw_init(struct mpw *w, struct cairn_buf *buf)
{
    w->buf = buf;
    w->err = 0;
    msgpack_packer_init(&w->pk, w, mpw_write);
}

void mpw_str(struct mpw *w, const char *s)
{
    msgpack_pack_str_with_body(&w->pk, s, strlen(s));
}

void mpw_strn(struct mpw *w, const struct cairn_str *s)
{
    msgpack_pack_str_with_body(&w->pk, s->p, s->n);
}

void mpw_kv_str(struct mpw *w, const char *k, const struct cairn_str *v)
{
    mpw_str(w, k);
    if (v && v->p)
        mpw_strn(w, v);
    else
        msgpack_pack_nil(&w->pk);
}

void mpw_kv_cstr(struct mpw *w, const char *k, const char *v)
{
    mpw_str(w, k);
    if (v)
        mpw_str(w, v);
    else
        msgpack_pack_nil(&w->pk);
}

void mpw_kv_i64(struct mpw *w, const char *k, int64_t v)
{
    mpw_str(w, k);
    msgpack_pack_int64(&w->pk, v);
}

void mpw_kv_u64(struct mpw *w, const char *k, uint64_t v)
{
    mpw_str(w, k);
    msgpack_pack_uint64(&w->pk, v);
}

void mpw_kv_num(struct mpw *w, const char *k, double v)
{
    mpw_str(w, k);
    msgpack_pack_double(&w->pk, v);
}

void mpw_kv_bool(struct mpw *w, const char *k, bool v)
{
    mpw_str(w, k);
    if (v)
        msgpack_pack_true(&w->pk);
    else
        msgpack_pack_false(&w->pk);
}

void mpw_kv_time(struct mpw *w, const char *k, int64_t ns)
{
    char t[40];
    size_t n = cairn_time_format(ns, t, sizeof t);
    mpw_str(w, k);
    msgpack_pack_str_with_body(&w->pk, t, n);
}

void mpw_obj(struct mpw *w, const msgpack_object *o)
{
    if (o)
        msgpack_pack_object(&w->pk, *o);
    else
        msgpack_pack_nil(&w->pk);
}

void mpw_kv_obj(struct mpw *w, const char *k, const msgpack_object *o)
{
    mpw_str(w, k);
    mpw_obj(w, o);
}

int mpw_finish(struct mpw *w)
{
    return w->err;
}

void mpw_raw(struct mpw *w, const void *p, size_t n)
{
    if (n)
        mpw_write(w, p, n);
}

/* ====================================================================== raw objects */

/* The type bytes 0xc0..0xdf: the size of their length field (0xff:
 * never used), the fixed bytes after it, and what the length counts:
 * 0 bytes, 1 array items, 2 map pairs. */
static const struct {
    uint8_t lb, fixed, items;
} raw_fmt[32] = {
    {0, 0, 0}, {0xff, 0, 0}, {0, 0, 0}, {0, 0, 0},             /* nil, -, false, true */
    {1, 0, 0}, {2, 0, 0},    {4, 0, 0},                        /* bin 8/16/32 */
    {1, 1, 0}, {2, 1, 0},    {4, 1, 0},                        /* ext 8/16/32 (+ type) */
    {0, 4, 0}, {0, 8, 0},                                      /* float 32/64 */
    {0, 1, 0}, {0, 2, 0},    {0, 4, 0}, {0, 8, 0},             /* uint 8..64 */
    {0, 1, 0}, {0, 2, 0},    {0, 4, 0}, {0, 8, 0},             /* int 8..64 */
    {0, 2, 0}, {0, 3, 0},    {0, 5, 0}, {0, 9, 0}, {0, 17, 0}, /* fixext 1..16 */
    {1, 0, 0}, {2, 0, 0},    {4, 0, 0},                        /* str 8/16/32 */
    {2, 0, 1}, {4, 0, 1},    {2, 0, 2}, {4, 0, 2},             /* array 16/32, map 16/32 */
};

/* The object at p..end: returns its end, NULL when malformed. Containers
 * add their items to a count of objects still to skip instead of
 * recursing, so any nesting costs no stack. */
static const uint8_t *raw_skip(const uint8_t *p, const uint8_t *end)
{
    uint64_t left = 1; /* objects still to skip */
    while (left--) {
        if (p >= end)
            return NULL;
        uint8_t t = *p++;
        uint64_t body = 0, items = 0;
        if (t <= 0x7f || t >= 0xe0) {
            continue; /* fixint */
        } else if (t <= 0x8f) {
            items = 2u * (t & 0x0f);
        } else if (t <= 0x9f) {
            items = t & 0x0f;
        } else if (t <= 0xbf) {
            body = t & 0x1f;
        } else {
            unsigned lb = raw_fmt[t - 0xc0].lb;
            uint64_t len = 0;
            if (lb == 0xff || (size_t)(end - p) < lb)
                return NULL;
            for (unsigned i = 0; i < lb; i++)
                len = len << 8 | *p++;
            body = raw_fmt[t - 0xc0].fixed;
            if (raw_fmt[t - 0xc0].items)
                items = len * raw_fmt[t - 0xc0].items;
            else
                body += len;
        }
        if (body > (uint64_t)(end - p))
            return NULL;
        p += body;
        /* Every object takes at least a byte: more pending than bytes
         * left is malformed (and bounds the counter). */
        if (left + items > (uint64_t)(end - p))
            return NULL;
        left += items;
    }
    return p;
}

size_t mp_raw_len(const uint8_t *p, size_t n)
{
    const uint8_t *e = raw_skip(p, p + n);
    return e ? (size_t)(e - p) : 0;
}
