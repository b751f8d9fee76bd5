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

void mp_get_many(const msgpack_object *map, const char *const *keys, size_t nk,
                 const msgpack_object **out)
{
    size_t kl[64], left = nk;
    assert(nk <= 64);
    for (size_t i = 0; i < nk; i++)
        out[i] = NULL, kl[i] = strlen(keys[i]);
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t j = 0; j < map->via.map.size && left; j++) {
        const msgpack_object *k = &map->via.map.ptr[j].key;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        const char *kp = k->via.str.size ? k->via.str.ptr : "";
        for (size_t i = 0; i < nk; i++)
            if (!out[i] && k->via.str.size == kl[i] && !memcmp(kp, keys[i], kl[i])) {
                out[i] = &map->via.map.ptr[j].val; /* the first such key, as mp_get */
                left--;
                break;
            }
    }
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

/* Room for n more bytes in w's buffer without growing it (and no error
 * so far): the direct writers (mpd_*) then write the very bytes the
 * msgpack-c packer would, without its callback per token. */
static inline uint8_t *room(struct mpw *w, size_t n)
{
    struct cairn_buf *b = w->buf;
    return !w->err && b->cap - b->len >= n ? b->data + b->len : NULL;
}

static inline void wrote(struct mpw *w, const uint8_t *end)
{
    w->buf->len = (size_t)(end - w->buf->data);
}

static void put_strn(struct mpw *w, const char *s, size_t n)
{
    uint8_t *o = room(w, MPD_HDR_MAX + n);
    if (o)
        wrote(w, mpd_strn(o, s, n));
    else
        msgpack_pack_str_with_body(&w->pk, s, n);
}

void mpw_str(struct mpw *w, const char *s)
{
    put_strn(w, s, strlen(s));
}

void mpw_strn(struct mpw *w, const struct cairn_str *s)
{
    put_strn(w, s->p, s->n);
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
    uint8_t *o = room(w, MPD_HDR_MAX);
    if (o)
        wrote(w, mpd_i64(o, v));
    else
        msgpack_pack_int64(&w->pk, v);
}

void mpw_kv_u64(struct mpw *w, const char *k, uint64_t v)
{
    mpw_str(w, k);
    uint8_t *o = room(w, MPD_HDR_MAX);
    if (o)
        wrote(w, mpd_u64(o, v));
    else
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
    put_strn(w, t, n);
}

/* A scalar written directly, as msgpack_pack_object writes it (floats:
 * msgpack_pack_float of the value as a float, msgpack_pack_double);
 * false for containers, bin and ext, or without room. */
static bool obj_direct(struct mpw *w, const msgpack_object *o)
{
    uint8_t *p = room(w, MPD_HDR_MAX);
    if (!p)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: wrote(w, mpd_nil(p)); return true;
    case MSGPACK_OBJECT_BOOLEAN: wrote(w, mpd_bool(p, o->via.boolean)); return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: wrote(w, mpd_u64(p, o->via.u64)); return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: wrote(w, mpd_i64(p, o->via.i64)); return true;
    case MSGPACK_OBJECT_FLOAT32: {
        float f = (float)o->via.f64;
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        wrote(w, mpd_be(p, 0xca, u, 4));
        return true;
    }
    case MSGPACK_OBJECT_FLOAT64: {
        uint64_t u;
        memcpy(&u, &o->via.f64, sizeof u);
        wrote(w, mpd_be(p, 0xcb, u, 8));
        return true;
    }
    case MSGPACK_OBJECT_STR:
        if (!(p = room(w, MPD_HDR_MAX + o->via.str.size)))
            return false;
        wrote(w, mpd_strn(p, o->via.str.ptr, o->via.str.size));
        return true;
    default: return false;
    }
}

void mpw_obj(struct mpw *w, const msgpack_object *o)
{
    if (!o)
        msgpack_pack_nil(&w->pk);
    else if (!obj_direct(w, o))
        msgpack_pack_object(&w->pk, *o);
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

size_t mp_raw_len(const uint8_t *p, size_t n)
{
    return cairn_mp_len(p, n);
}

/* ====================================================================== decoding */

/* mp_unpack's depth limit: msgpack-c's unpacker keeps at most
 * MSGPACK_EMBED_STACK_SIZE (32) open non-empty containers and fails when a
 * container starts past that; the same inputs fail here. */
#define MP_DEPTH_MAX 32

struct mpdec {
    const uint8_t *p, *end;
    msgpack_zone *zone;
};

/* A str, bin or ext body of len bytes at d->p. */
static inline bool dec_raw(struct mpdec *d, msgpack_object *o, msgpack_object_type t, uint64_t len)
{
    if (len > (uint64_t)(d->end - d->p))
        return false;
    /* An empty one points where its bytes would be, never NULL: packers
     * memcpy from it (msgpack-c leaves some pointer there too). */
    const char *p = (const char *)d->p;
    d->p += len;
    o->type = t;
    if (t == MSGPACK_OBJECT_EXT) {
        o->via.ext.type = (int8_t)p[0];
        o->via.ext.ptr = p + 1;
        o->via.ext.size = (uint32_t)(len - 1);
    } else { /* str and bin share their layout */
        o->via.str.ptr = p;
        o->via.str.size = (uint32_t)len;
    }
    return true;
}

static bool dec_obj(struct mpdec *d, msgpack_object *o, unsigned depth);

/* An item of a container: the kinds payloads hold most (fixints, fixstr,
 * float64) decoded here, the rest by dec_obj (a call per value was a
 * third of mp_unpack's instructions on the bench workload). */
static inline bool dec_item(struct mpdec *d, msgpack_object *o, unsigned depth)
{
    if (d->p < d->end) {
        uint8_t t = *d->p;
        if (t <= 0x7f) {
            d->p++;
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = t;
            return true;
        }
        if ((t & 0xe0) == 0xa0) {
            d->p++;
            return dec_raw(d, o, MSGPACK_OBJECT_STR, t & 0x1f);
        }
        if (t == 0xcb && d->end - d->p >= 9) {
            uint64_t v = cairn_rd_be(d->p + 1, 8);
            d->p += 9;
            o->type = MSGPACK_OBJECT_FLOAT64;
            memcpy(&o->via.f64, &v, sizeof v);
            return true;
        }
    }
    return dec_obj(d, o, depth);
}

/* n items (maps: n pairs) of a container starting at depth `depth`. */
static bool dec_items(struct mpdec *d, msgpack_object *o, bool map, uint64_t n, unsigned depth)
{
    if (map) {
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = (uint32_t)n;
        o->via.map.ptr = NULL;
    } else {
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)n;
        o->via.array.ptr = NULL;
    }
    if (depth >= MP_DEPTH_MAX)
        return false;
    if (!n)
        return true;
    /* Every object takes at least a byte: a count beyond the bytes left
     * is malformed (and bounds the allocation). */
    if (n * (map ? 2 : 1) > (uint64_t)(d->end - d->p))
        return false;
    if (map) {
        msgpack_object_kv *kv = msgpack_zone_malloc(d->zone, (size_t)n * sizeof *kv);
        if (!kv)
            return false;
        o->via.map.ptr = kv;
        for (uint64_t i = 0; i < n; i++) {
            /* keys are nearly always fixstr: decoded here, without a call */
            if (d->p < d->end && (*d->p & 0xe0) == 0xa0) {
                unsigned len = *d->p++ & 0x1f;
                if (!dec_raw(d, &kv[i].key, MSGPACK_OBJECT_STR, len))
                    return false;
            } else if (!dec_obj(d, &kv[i].key, depth + 1)) {
                return false;
            }
            if (!dec_item(d, &kv[i].val, depth + 1))
                return false;
        }
    } else {
        msgpack_object *a = msgpack_zone_malloc(d->zone, (size_t)n * sizeof *a);
        if (!a)
            return false;
        o->via.array.ptr = a;
        for (uint64_t i = 0; i < n; i++)
            if (!dec_item(d, &a[i], depth + 1))
                return false;
    }
    return true;
}

static bool dec_obj(struct mpdec *d, msgpack_object *o, unsigned depth)
{
    if (d->p >= d->end)
        return false;
    uint8_t t = *d->p++;
    if (t <= 0x7f) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = t;
        return true;
    }
    if (t >= 0xe0) {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = (int8_t)t;
        return true;
    }
    if (t <= 0x8f)
        return dec_items(d, o, true, t & 0x0f, depth);
    if (t <= 0x9f)
        return dec_items(d, o, false, t & 0x0f, depth);
    if (t <= 0xbf)
        return dec_raw(d, o, MSGPACK_OBJECT_STR, t & 0x1f);
    /* 0xc0..0xdf: the fixed part's length, then what it is. */
    static const uint8_t lb[32] = {
        0, 0, 0, 0, 1, 2, 4, 1, 2, 4, 4, 8, /* nil, -, false, true, bin, ext, float */
        1, 2, 4, 8, 1, 2, 4, 8,             /* uint, int */
        0, 0, 0, 0, 0,                      /* fixext */
        1, 2, 4, 2, 4, 2, 4,                /* str, array, map */
    };
    unsigned n = lb[t - 0xc0];
    if ((size_t)(d->end - d->p) < n)
        return false;
    uint64_t v = cairn_rd_be(d->p, n);
    d->p += n;
    switch (t) {
    case 0xc0: o->type = MSGPACK_OBJECT_NIL; return true;
    case 0xc2:
    case 0xc3:
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = t == 0xc3;
        return true;
    case 0xc4:
    case 0xc5:
    case 0xc6: return dec_raw(d, o, MSGPACK_OBJECT_BIN, v);
    case 0xc7:
    case 0xc8:
    case 0xc9: return dec_raw(d, o, MSGPACK_OBJECT_EXT, v + 1);
    case 0xca: {
        uint32_t u = (uint32_t)v;
        float f;
        memcpy(&f, &u, sizeof f);
        o->type = MSGPACK_OBJECT_FLOAT32;
        o->via.f64 = f;
        return true;
    }
    case 0xcb:
        o->type = MSGPACK_OBJECT_FLOAT64;
        memcpy(&o->via.f64, &v, sizeof v);
        return true;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = v;
        return true;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        /* sign-extend the n-byte value; non-negative ones are positive
         * integers, as msgpack-c makes them */
        int64_t s = n == 8 ? (int64_t)v : (int64_t)(v << (64 - 8 * n)) >> (64 - 8 * n);
        if (s < 0) {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = s;
        } else {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = (uint64_t)s;
        }
        return true;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: return dec_raw(d, o, MSGPACK_OBJECT_EXT, (1u << (t - 0xd4)) + 1);
    case 0xd9:
    case 0xda:
    case 0xdb: return dec_raw(d, o, MSGPACK_OBJECT_STR, v);
    case 0xdc:
    case 0xdd: return dec_items(d, o, false, v, depth);
    case 0xde:
    case 0xdf: return dec_items(d, o, true, v, depth);
    default: return false; /* 0xc1: never used */
    }
}

uint64_t mp_raw_fields(const uint8_t *p, size_t n, const char *const *keys, size_t nk,
                       msgpack_object *out, uint64_t *present)
{
    const uint8_t *end = p + n;
    size_t kl[64];
    uint64_t pairs, seen = 0, got = 0, all = nk < 64 ? (1ull << nk) - 1 : ~0ull;
    assert(nk <= 64);
    for (size_t i = 0; i < nk; i++)
        kl[i] = strlen(keys[i]);
    if (present)
        *present = 0;
    struct cairn_rd r = {p, end};
    uint32_t np;
    if (cairn_rd_map(&r, &np))
        return 0; /* not a map */
    p = r.p;
    pairs = np;
    for (uint64_t j = 0; j < pairs && seen != all; j++) {
        const uint8_t *v = cairn_mp_skip(p, end);
        if (!v)
            break;
        /* a string key equal to a key (in any of str's encodings, as mp_get
         * compares them): the first one decides */
        size_t hl = (*p & 0xe0) == 0xa0 ? 1 : *p == 0xd9 ? 2 : *p == 0xda ? 3 : *p == 0xdb ? 5 : 0;
        for (size_t i = 0; hl && i < nk; i++) {
            if (seen >> i & 1 || (size_t)(v - p) != hl + kl[i] || memcmp(p + hl, keys[i], kl[i]))
                continue;
            seen |= 1ull << i;
            struct mpdec d = {v, end, NULL};
            if (v < end && !((*v >= 0x80 && *v <= 0x9f) || (*v >= 0xdc && *v <= 0xdf)) &&
                dec_obj(&d, &out[i], 0))
                got |= 1ull << i; /* a scalar (containers are not decoded) */
            break;
        }
        if (!(p = cairn_mp_skip(v, end)))
            break;
    }
    if (present)
        *present = seen;
    return got;
}

bool mp_raw_get(const uint8_t *p, size_t n, const char *key, msgpack_object *out)
{
    return mp_raw_fields(p, n, &key, 1, out, NULL) & 1;
}

int mp_unpack(const uint8_t *p, size_t n, msgpack_zone *zone, msgpack_object *out, size_t *used)
{
    struct mpdec d = {p, p + n, zone};
    if (!dec_obj(&d, out, 0))
        return CAIRN_EINVAL;
    if (used)
        *used = (size_t)(d.p - p);
    return 0;
}
