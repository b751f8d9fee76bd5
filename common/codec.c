/*
 * codec.c — JSON (jansson) <-> msgpack (msgpack-c) for payloads.
 *
 * Both directions recurse at most CAIRN_DEPTH_MAX levels, so a hostile
 * document cannot exhaust the stack. The JSON writer works straight from
 * msgpack bytes into a bounded buffer: reads (tail, HTTP) never build a
 * jansson tree.
 */
#include "common.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ====================================================================== doubles */

size_t cairn_fmt_double(double d, char *out, size_t cap)
{
    /* %.15g round-trips every double that has a <= 15-digit decimal form
     * and then is also the shortest; otherwise 16 or 17 digits do. */
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, cap, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            break;
    }
    if (n > 0 && (size_t)n + 2 < cap && !strpbrk(out, ".eEn")) {
        out[n++] = '.';
        out[n++] = '0';
        out[n] = '\0';
    }
    return (size_t)n;
}

/* msgpack-c gives an empty string a NULL pointer: never pass that to
 * memcpy/memcmp or jansson, even with a length of 0. */
#define MP_STR_PTR(o) ((o)->via.str.size ? (o)->via.str.ptr : "")

/* ====================================================================== JSON -> msgpack */

static int pack_json(msgpack_packer *pk, const json_t *v, int depth, int max, struct cairn_error *e)
{
    if (depth > max)
        return cairn_error_set(e, "too_deep", "", "nesting deeper than %d levels", max);
    int rc = 0;
    switch (json_typeof(v)) {
    case JSON_NULL: rc = msgpack_pack_nil(pk); break;
    case JSON_TRUE: rc = msgpack_pack_true(pk); break;
    case JSON_FALSE: rc = msgpack_pack_false(pk); break;
    case JSON_INTEGER: rc = msgpack_pack_int64(pk, json_integer_value(v)); break;
    case JSON_REAL: rc = msgpack_pack_double(pk, json_real_value(v)); break;
    case JSON_STRING: {
        size_t n = json_string_length(v);
        rc = msgpack_pack_str_with_body(pk, json_string_value(v), n);
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        rc = msgpack_pack_array(pk, n);
        for (size_t i = 0; !rc && i < n; i++) {
            int r = pack_json(pk, json_array_get(v, i), depth + 1, max, e);
            if (r)
                return r;
        }
        break;
    }
    case JSON_OBJECT: {
        const char *k;
        json_t *item;
        rc = msgpack_pack_map(pk, json_object_size(v));
        json_object_foreach((json_t *)v, k, item)
        {
            if (rc)
                break;
            rc = msgpack_pack_str_with_body(pk, k, strlen(k));
            if (rc)
                break;
            int r = pack_json(pk, item, depth + 1, max, e);
            if (r)
                return r;
        }
        break;
    }
    }
    return rc ? CAIRN_ETOOBIG : 0;
}

int cairn_json_to_msgpack_depth(const json_t *v, struct cairn_buf *out, int max_depth,
                                struct cairn_error *e)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, cairn_buf_msgpack_write);
    return pack_json(&pk, v, 1, max_depth, e);
}

int cairn_json_to_msgpack(const json_t *v, struct cairn_buf *out, struct cairn_error *e)
{
    return cairn_json_to_msgpack_depth(v, out, CAIRN_DEPTH_MAX, e);
}

/* ====================================================================== msgpack -> JSON text */

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

/* Containers add their items to a count of objects still to skip instead
 * of recursing, so any nesting costs no stack. */
const uint8_t *cairn_mp_skip(const uint8_t *p, const uint8_t *end)
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

size_t cairn_mp_len(const uint8_t *p, size_t n)
{
    const uint8_t *e = cairn_mp_skip(p, p + n);
    return e ? (size_t)(e - p) : 0;
}

/* An integer in decimal, without printf (documents are full of them). */
static int put_int(struct cairn_buf *out, bool neg, uint64_t v)
{
    char tmp[24];
    tmp[0] = '-';
    return cairn_buf_append(out, tmp + !neg, neg + cairn_u64_dec(tmp + 1, v));
}

static int obj_to_json(const msgpack_object *o, struct cairn_buf *out, int depth)
{
    char tmp[40];
    int rc = 0;
    if (depth > CAIRN_DEPTH_MAX + 8)
        return CAIRN_ECORRUPT;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return cairn_buf_append(out, "null", 4);
    case MSGPACK_OBJECT_BOOLEAN:
        return o->via.boolean ? cairn_buf_append(out, "true", 4)
                              : cairn_buf_append(out, "false", 5);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return put_int(out, false, o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return put_int(out, o->via.i64 < 0,
                       o->via.i64 < 0 ? 0 - (uint64_t)o->via.i64 : (uint64_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64))
            return cairn_buf_append(out, "null", 4);
        return cairn_buf_append(out, tmp, cairn_fmt_double(o->via.f64, tmp, sizeof tmp));
    case MSGPACK_OBJECT_STR: return cairn_buf_json_str(out, MP_STR_PTR(o), o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        rc = cairn_buf_reserve(out, (size_t)o->via.bin.size * 2 + 3);
        if (rc)
            return rc;
        out->data[out->len++] = '"';
        cairn_hex((const uint8_t *)o->via.bin.ptr, o->via.bin.size, (char *)out->data + out->len);
        out->len += (size_t)o->via.bin.size * 2;
        out->data[out->len++] = '"';
        return 0;
    }
    case MSGPACK_OBJECT_ARRAY:
        rc = cairn_buf_putc(out, '[');
        for (uint32_t i = 0; !rc && i < o->via.array.size; i++) {
            if (i)
                rc = cairn_buf_putc(out, ',');
            if (!rc)
                rc = obj_to_json(&o->via.array.ptr[i], out, depth + 1);
        }
        return rc ? rc : cairn_buf_putc(out, ']');
    case MSGPACK_OBJECT_MAP:
        rc = cairn_buf_putc(out, '{');
        for (uint32_t i = 0; !rc && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR)
                return CAIRN_ECORRUPT;
            if (i)
                rc = cairn_buf_putc(out, ',');
            if (!rc)
                rc = cairn_buf_json_str(out, MP_STR_PTR(&kv->key), kv->key.via.str.size);
            if (!rc)
                rc = cairn_buf_putc(out, ':');
            if (!rc)
                rc = obj_to_json(&kv->val, out, depth + 1);
        }
        return rc ? rc : cairn_buf_putc(out, '}');
    case MSGPACK_OBJECT_EXT: return CAIRN_ECORRUPT;
    }
    return CAIRN_ECORRUPT;
}

int cairn_msgpack_to_json(const uint8_t *p, size_t n, struct cairn_buf *out, size_t *used)
{
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_unpacked_init(&u);
    int rc = CAIRN_ECORRUPT;
    /* bounded first: see cairn_mp_len */
    if ((n = cairn_mp_len(p, n)) &&
        msgpack_unpack_next(&u, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS)
        rc = obj_to_json(&u.data, out, 0);
    msgpack_unpacked_destroy(&u);
    if (!rc && used)
        *used = off;
    return rc;
}

/* ====================================================================== msgpack -> jansson */

static json_t *obj_to_jansson(const msgpack_object *o, int depth, struct cairn_error *e)
{
    if (depth > CAIRN_DEPTH_MAX) {
        cairn_error_set(e, "too_deep", "", "nesting deeper than %d levels", CAIRN_DEPTH_MAX);
        return NULL;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX) {
            cairn_error_set(e, "out_of_range", "", "integer larger than 2^63-1");
            return NULL;
        }
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64)) {
            cairn_error_set(e, "wrong_type", "", "NaN and infinities are not allowed");
            return NULL;
        }
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR: {
        json_t *s = json_stringn(MP_STR_PTR(o), o->via.str.size);
        if (!s && !cairn_utf8_valid((const uint8_t *)MP_STR_PTR(o), o->via.str.size))
            cairn_error_set(e, "invalid_utf8", "", "strings must be valid UTF-8");
        return s;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            json_t *item = obj_to_jansson(&o->via.array.ptr[i], depth + 1, e);
            if (!item || json_array_append_new(a, item)) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            size_t kn = kv->key.via.str.size;
            const char *k = MP_STR_PTR(&kv->key);
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                cairn_error_set(e, "wrong_type", "", "map keys must be strings");
                json_decref(m);
                return NULL;
            }
            /* As JSON input is parsed with JSON_REJECT_DUPLICATES. */
            if (!cairn_utf8_valid((const uint8_t *)k, kn) || memchr(k, 0, kn) ||
                json_object_getn(m, k, kn)) {
                cairn_error_set(e, "invalid_key", "",
                                "map keys must be unique, valid UTF-8 strings without NUL");
                json_decref(m);
                return NULL;
            }
            json_t *item = obj_to_jansson(&kv->val, depth + 1, e);
            if (!item || json_object_setn_new_nocheck(m, k, kn, item)) {
                json_decref(m);
                return NULL;
            }
        }
        return m;
    }
    default:
        cairn_error_set(e, "wrong_type", "", "bin and ext values are not allowed");
        return NULL;
    }
}

int cairn_msgpack_to_jansson(const uint8_t *p, size_t n, json_t **out, size_t *used,
                             struct cairn_error *e)
{
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_unpacked_init(&u);
    if (!(n = cairn_mp_len(p, n)) || /* bounded first: see cairn_mp_len */
        msgpack_unpack_next(&u, (const char *)p, n, &off) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_unpacked_destroy(&u);
        return cairn_error_set(e, "invalid_msgpack", "", "not a complete msgpack value");
    }
    cairn_error_clear(e);
    json_t *v = obj_to_jansson(&u.data, 1, e);
    msgpack_unpacked_destroy(&u);
    if (!v)
        return e && e->code ? CAIRN_EINVAL : CAIRN_ENOMEM;
    *out = v;
    if (used)
        *used = off;
    return 0;
}

/* ====================================================================== canonical msgpack */

/* Length of the valid UTF-8 sequence at p (what jansson accepts: no
 * overlong forms, no surrogates, nothing above U+10FFFF), 0 if invalid. */
static size_t utf8_seq(const uint8_t *p, const uint8_t *end)
{
    uint8_t c = p[0];
    size_t n = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
    if (!n || (size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if (n == 3) {
        uint32_t cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
    } else if (n == 4) {
        uint32_t cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
                      (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
        if (cp < 0x10000 || cp > 0x10FFFF)
            return 0;
    }
    return n;
}

bool cairn_utf8_valid(const uint8_t *p, size_t n)
{
    if (!n)
        return true; /* p may be NULL (msgpack-c's empty strings) */
    const uint8_t *end = p + n;
    while (p < end) {
        /* ASCII runs are the common case: eight bytes at a time */
        while ((size_t)(end - p) >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (w & 0x8080808080808080ull)
                break;
            p += 8;
        }
        if (p == end)
            break;
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t k = utf8_seq(p, end);
        if (!k)
            return false;
        p += k;
    }
    return true;
}

static uint64_t be_n(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Maps with more keys than this are left to the slow path (the duplicate
 * check below is quadratic). */
#define CANON_MAP_KEYS_MAX 64

/* The checker, and optionally the unpacker: with z set, every value
 * checked is also decoded into the msgpack_object that msgpack_unpack
 * would give for the same bytes (strings point into them, arrays and maps
 * are allocated in z), so the caller needs no second pass. */
struct canon {
    const uint8_t *p, *end;
    msgpack_zone *z; /* NULL: check only */
    bool trusted;    /* known canonical (the transcoder's output): decode only */
};

/* Whether the n bytes at p are ASCII, n <= 8, when 8 bytes from p may be
 * read (they are inside the input). */
static bool ascii8(const uint8_t *p, size_t n)
{
    uint64_t w;
    memcpy(&w, p, 8);
    uint64_t mask = n == 8 ? ~0ull : (1ull << (8 * n)) - 1; /* the first n bytes (little-endian) */
    if (!(w & mask & 0x8080808080808080ull))
        return true;
    return false;
}

static bool canon_value(struct canon *c, int depth, int max, msgpack_object *o);

/* A str of the canonical width; s/n its body. */
static bool canon_str(struct canon *c, const uint8_t **s, size_t *n)
{
    if (c->p >= c->end)
        return false;
    uint8_t t = *c->p++;
    size_t hdr = t >= 0xa0 && t <= 0xbf ? 0 : t == 0xd9 ? 1 : t == 0xda ? 2 : t == 0xdb ? 4 : 9;
    if (hdr == 9 || (size_t)(c->end - c->p) < hdr)
        return false;
    size_t len = hdr ? (size_t)be_n(c->p, (int)hdr) : (size_t)(t & 0x1f);
    size_t min = hdr == 1 ? 32 : hdr == 2 ? 256 : hdr == 4 ? 65536 : 0;
    c->p += hdr;
    size_t room = (size_t)(c->end - c->p);
    if (len < min || room < len)
        return false;
    /* short strings (most keys and values) checked in one load when the
     * input holds eight more bytes */
    if (!c->trusted && !(len <= 8 && room >= 8 && ascii8(c->p, len)) &&
        !cairn_utf8_valid(c->p, len))
        return false;
    *s = c->p;
    *n = len;
    c->p += len;
    return true;
}

static void set_str(msgpack_object *o, const uint8_t *s, size_t n)
{
    o->type = MSGPACK_OBJECT_STR;
    o->via.str.size = (uint32_t)n;
    o->via.str.ptr = (const char *)s;
}

static bool canon_map(struct canon *c, size_t count, int depth, int max, msgpack_object *o)
{
    const uint8_t *ks[CANON_MAP_KEYS_MAX];
    size_t kn[CANON_MAP_KEYS_MAX];
    msgpack_object_kv *kv = NULL;
    if (count > CANON_MAP_KEYS_MAX)
        return false;
    if (c->z) {
        kv = msgpack_zone_malloc(c->z, count * sizeof *kv);
        if (!kv)
            return false;
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = (uint32_t)count;
        o->via.map.ptr = kv;
    }
    for (size_t i = 0; i < count; i++) {
        if (!canon_str(c, &ks[i], &kn[i]))
            return false;
        if (!c->trusted && memchr(ks[i], 0, kn[i]))
            return false;
        for (size_t j = 0; j < i && !c->trusted; j++)
            if (kn[j] == kn[i] && !memcmp(ks[j], ks[i], kn[i]))
                return false; /* a duplicate key */
        if (kv)
            set_str(&kv[i].key, ks[i], kn[i]);
        if (!canon_value(c, depth + 1, max, kv ? &kv[i].val : NULL))
            return false;
    }
    return true;
}

static bool canon_array(struct canon *c, size_t n, int depth, int max, msgpack_object *o)
{
    msgpack_object *item = NULL;
    if (c->z) {
        item = msgpack_zone_malloc(c->z, n * sizeof *item);
        if (!item)
            return false;
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)n;
        o->via.array.ptr = item;
    }
    for (size_t i = 0; i < n; i++)
        if (!canon_value(c, depth + 1, max, item ? &item[i] : NULL))
            return false;
    return true;
}

/* The scalars; 1 byte of type at c->p, left bytes after it. */
static bool canon_scalar(struct canon *c, uint8_t t, size_t left, msgpack_object *o)
{
    msgpack_object v;
    if (t <= 0x7f || t >= 0xe0) { /* fixint */
        c->p++;
        if (t <= 0x7f)
            v = (msgpack_object){.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = t};
        else
            v = (msgpack_object){.type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = (int8_t)t};
    } else if (t == 0xc0) {
        c->p++;
        v = (msgpack_object){.type = MSGPACK_OBJECT_NIL};
    } else if (t == 0xc2 || t == 0xc3) {
        c->p++;
        v = (msgpack_object){.type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = t == 0xc3};
    } else if (t == 0xcb) { /* float64: any finite double (JSON has no NaN) */
        if (left < 8)
            return false;
        uint64_t bits = be_n(c->p + 1, 8);
        double d;
        memcpy(&d, &bits, sizeof d);
        c->p += 9;
        if (!isfinite(d))
            return false;
        v = (msgpack_object){.type = MSGPACK_OBJECT_FLOAT64, .via.f64 = d};
    } else if (t >= 0xcc && t <= 0xcf) { /* uint: positive ints only in the smallest width */
        int w = 1 << (t - 0xcc);
        if (left < (size_t)w)
            return false;
        uint64_t u = be_n(c->p + 1, w);
        uint64_t min = w == 1 ? 0x80 : w == 2 ? 0x100 : w == 4 ? 0x10000 : 0x100000000ull;
        c->p += 1 + w;
        if (u < min || u > (uint64_t)INT64_MAX)
            return false;
        v = (msgpack_object){.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = u};
    } else if (t >= 0xd0 && t <= 0xd3) { /* int: negative ints only, in the smallest width */
        int w = 1 << (t - 0xd0);
        if (left < (size_t)w)
            return false;
        uint64_t raw = be_n(c->p + 1, w);
        int64_t i = w == 1   ? (int8_t)raw
                    : w == 2 ? (int16_t)raw
                    : w == 4 ? (int32_t)raw
                             : (int64_t)raw;
        int64_t lim = w == 1 ? -32 : w == 2 ? -128 : w == 4 ? -32768 : -2147483648LL;
        c->p += 1 + w;
        if (i >= lim)
            return false;
        v = (msgpack_object){.type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = i};
    } else {
        return false; /* bin, ext, float32 */
    }
    if (o)
        *o = v;
    return true;
}

static bool canon_value(struct canon *c, int depth, int max, msgpack_object *o)
{
    if (depth > max || c->p >= c->end)
        return false;
    uint8_t t = *c->p;
    size_t left = (size_t)(c->end - c->p) - 1;
    if ((t >= 0xa0 && t <= 0xbf) || (t >= 0xd9 && t <= 0xdb)) {
        const uint8_t *s;
        size_t n;
        if (!canon_str(c, &s, &n))
            return false;
        if (o)
            set_str(o, s, n);
        return true;
    }
    if (t >= 0x80 && t <= 0x9f) { /* fixmap, fixarray */
        c->p++;
        size_t n = t & 0x0f;
        return t >= 0x90 ? canon_array(c, n, depth, max, o) : canon_map(c, n, depth, max, o);
    }
    if (t >= 0xdc && t <= 0xdf) { /* array16, array32, map16, map32 */
        int w = t == 0xdc || t == 0xde ? 2 : 4;
        if (left < (size_t)w)
            return false;
        size_t n = (size_t)be_n(c->p + 1, w);
        c->p += 1 + w;
        if (n < (w == 2 ? 16u : 65536u))
            return false;
        if (t == 0xde || t == 0xdf)
            return canon_map(c, n, depth, max, o);
        if (n > (size_t)(c->end - c->p)) /* each item is at least one byte */
            return false;
        return canon_array(c, n, depth, max, o);
    }
    return canon_scalar(c, t, left, o);
}

bool cairn_mp_canonical(const uint8_t *p, size_t n, int max_depth, size_t *used)
{
    struct canon c = {p, p + n, NULL, false};
    if (!canon_value(&c, 1, max_depth, NULL))
        return false;
    *used = (size_t)(c.p - p);
    return true;
}

bool cairn_mp_canonical_unpack(const uint8_t *p, size_t n, int max_depth, bool trusted,
                               msgpack_zone *z, msgpack_object *o, size_t *used)
{
    struct canon c = {p, p + n, z, trusted};
    if (!canon_value(&c, 1, max_depth, o))
        return false;
    *used = (size_t)(c.p - p);
    return true;
}

/* ====================================================================== JSON text -> msgpack */

/* A one-pass transcoder for the common case of the ingest path: JSON text
 * straight to the canonical msgpack cairn_json_to_msgpack would write for
 * jansson's parse of it, with no tree in between. It accepts a subset of
 * what jansson accepts and declines (returns false) everything else —
 * malformed text, \u0000, numbers jansson would refuse, duplicate keys,
 * deep nesting, huge containers — so that the caller falls back to jansson,
 * which produces the exact error. Containers and strings get a one-byte
 * header first and are moved up in the rare case they need a wider one. */

struct tx {
    const uint8_t *p, *end;
    uint8_t *o; /* output cursor; the buffer holds 3 * input + 16 */
    uint8_t *base;
};

static void tx_ws(struct tx *t)
{
    while (t->p < t->end && (*t->p == ' ' || *t->p == '\t' || *t->p == '\n' || *t->p == '\r'))
        t->p++;
}

static void put_be(uint8_t *o, uint64_t v, int w)
{
    for (int i = w - 1; i >= 0; i--, v >>= 8)
        o[i] = (uint8_t)v;
}

/* Rewrites the one-byte header at h for a str/array/map of n: fix* when
 * small, otherwise moves the body up to make room for the wide header. */
static bool tx_header(struct tx *t, uint8_t *h, size_t n, uint8_t fix, size_t fixmax,
                      const uint8_t *wide, const size_t *wmin)
{
    if (n <= fixmax) {
        *h = (uint8_t)(fix | n);
        return true;
    }
    int w = n < wmin[1] ? 1 : n < wmin[2] ? 2 : 4;
    int k = w == 1 ? 0 : w == 2 ? 1 : 2;
    if (!wide[k])
        w = 2, k = 1; /* arrays and maps have no 8-bit form */
    memmove(h + 1 + w, h + 1, (size_t)(t->o - (h + 1)));
    t->o += w;
    h[0] = wide[k];
    put_be(h + 1, n, w);
    return true;
}

/* The bytes of x (little-endian: the first in memory is the least
 * significant) that need tx_str's attention — a quote, a backslash, a
 * control character or a non-ASCII byte — as their high bits. The classic
 * has-zero-byte and has-byte-less-than tests: no false negatives, and a
 * false positive only in a byte above a true one, so the lowest bit set
 * marks the first byte that needs attention. */
static inline uint64_t tx_special8(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    return (x | ((q - ones) & ~q) | ((b - ones) & ~b) | ((x - ones * 0x20) & ~x)) & high;
}

static bool tx_str(struct tx *t)
{
    static const uint8_t wide[] = {0xd9, 0xda, 0xdb};
    static const size_t wmin[] = {0, 256, 65536};
    uint8_t *h = t->o++;
    t->p++; /* the opening quote */
    for (;;) {
        /* plain ASCII eight bytes at a time, up to the first byte that
         * needs attention (the output has room for all eight: see struct
         * tx; ASCII is copied one for one) */
        while (t->end - t->p >= 8) {
            uint64_t x;
            memcpy(&x, t->p, 8);
            uint64_t m = tx_special8(x);
            memcpy(t->o, &x, 8);
            size_t k = m ? (size_t)__builtin_ctzll(m) / 8 : 8;
            t->o += k;
            t->p += k;
            if (m)
                break;
        }
        if (t->p >= t->end)
            return false;
        uint8_t c = *t->p;
        if (c == '"') {
            t->p++;
            break;
        }
        if (c < 0x20)
            return false;
        if (c < 0x80 && c != '\\') {
            *t->o++ = c;
            t->p++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_seq(t->p, t->end);
            if (!k)
                return false;
            memcpy(t->o, t->p, k);
            t->o += k;
            t->p += k;
            continue;
        }
        if (t->end - t->p < 2)
            return false;
        uint8_t x = t->p[1];
        t->p += 2;
        const char *simple = strchr("\"\\/bfnrt", x);
        if (x && simple) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            *t->o++ = (uint8_t)map[simple - "\"\\/bfnrt"];
            continue;
        }
        if (x != 'u')
            return false;
        uint32_t cp = 0;
        for (int pair = 0; pair < 2; pair++) {
            if (t->end - t->p < 4)
                return false;
            uint32_t u = 0;
            for (int i = 0; i < 4; i++) {
                int d = cairn_hex_digit((char)t->p[i]);
                if (d < 0)
                    return false;
                u = u << 4 | (uint32_t)d;
            }
            t->p += 4;
            if (!pair) {
                cp = u;
                if (cp < 0xD800 || cp > 0xDFFF)
                    break;
                if (cp > 0xDBFF || t->end - t->p < 2 || t->p[0] != '\\' || t->p[1] != 'u')
                    return false; /* a lone surrogate: jansson refuses it */
                t->p += 2;
            } else {
                if (u < 0xDC00 || u > 0xDFFF)
                    return false;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (u - 0xDC00);
            }
        }
        if (cp == 0)
            return false; /* \u0000: jansson refuses it without JSON_ALLOW_NUL */
        if (cp < 0x80) {
            *t->o++ = (uint8_t)cp;
        } else if (cp < 0x800) {
            *t->o++ = (uint8_t)(0xC0 | cp >> 6);
            *t->o++ = (uint8_t)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *t->o++ = (uint8_t)(0xE0 | cp >> 12);
            *t->o++ = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            *t->o++ = (uint8_t)(0x80 | (cp & 0x3F));
        } else {
            *t->o++ = (uint8_t)(0xF0 | cp >> 18);
            *t->o++ = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            *t->o++ = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            *t->o++ = (uint8_t)(0x80 | (cp & 0x3F));
        }
    }
    size_t n = (size_t)(t->o - (h + 1));
    return tx_header(t, h, n, 0xa0, 31, wide, wmin);
}

static void tx_int(struct tx *t, int64_t v)
{
    if (v >= 0 && v < 128) {
        *t->o++ = (uint8_t)v;
    } else if (v >= 0) {
        int w = v < 256 ? 1 : v < 65536 ? 2 : v < 4294967296LL ? 4 : 8;
        *t->o++ = (uint8_t)(w == 1 ? 0xcc : w == 2 ? 0xcd : w == 4 ? 0xce : 0xcf);
        put_be(t->o, (uint64_t)v, w);
        t->o += w;
    } else if (v >= -32) {
        *t->o++ = (uint8_t)(int8_t)v;
    } else {
        int w = v >= -128 ? 1 : v >= -32768 ? 2 : v >= -2147483648LL ? 4 : 8;
        *t->o++ = (uint8_t)(w == 1 ? 0xd0 : w == 2 ? 0xd1 : w == 4 ? 0xd2 : 0xd3);
        put_be(t->o, (uint64_t)v, w);
        t->o += w;
    }
}

/* The double strtod gives for the JSON number [s, end) (already checked
 * to be one), when that is cheap to get exactly: all its digits as an
 * integer m < 2^53 and a decimal exponent k with |k| <= 22. Then m and
 * 10^|k| are exact doubles and one multiplication or division rounds
 * correctly (Clinger's fast path), which is what glibc's strtod does too.
 * False: use strtod. */
static bool tx_real_fast(const uint8_t *s, const uint8_t *end, double *out)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    bool neg = *s == '-';
    uint64_t m = 0;
    int k = 0;
    const uint8_t *p = s + neg;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        m = m * 10 + (uint64_t)(*p - '0');
        if (m >= (1ull << 53))
            return false;
    }
    if (p < end && *p == '.')
        for (p++; p < end && *p >= '0' && *p <= '9'; p++, k--) {
            m = m * 10 + (uint64_t)(*p - '0');
            if (m >= (1ull << 53))
                return false;
        }
    if (p < end && (*p == 'e' || *p == 'E')) {
        bool eneg = false;
        int e = 0;
        p++;
        if (*p == '+' || *p == '-')
            eneg = *p++ == '-';
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if ((e = e * 10 + (*p - '0')) > 1000)
                return false;
        k += eneg ? -e : e;
    }
    if (k < -22 || k > 22)
        return false;
    double d = (double)m;
    d = k < 0 ? d / pow10[-k] : d * pow10[k];
    *out = neg ? -d : d;
    return true;
}

static bool tx_number(struct tx *t)
{
    const uint8_t *s = t->p;
    bool neg = *t->p == '-', real = false;
    if (neg)
        t->p++;
    if (t->p >= t->end || *t->p < '0' || *t->p > '9')
        return false;
    if (*t->p == '0' && t->p + 1 < t->end && t->p[1] >= '0' && t->p[1] <= '9')
        return false; /* a leading zero */
    uint64_t mag = 0;
    bool big = false;
    for (; t->p < t->end && *t->p >= '0' && *t->p <= '9'; t->p++) {
        if (mag > (UINT64_MAX - 9) / 10)
            big = true;
        mag = mag * 10 + (uint64_t)(*t->p - '0');
    }
    if (t->p < t->end && *t->p == '.') {
        real = true;
        t->p++;
        if (t->p >= t->end || *t->p < '0' || *t->p > '9')
            return false;
        while (t->p < t->end && *t->p >= '0' && *t->p <= '9')
            t->p++;
    }
    if (t->p < t->end && (*t->p == 'e' || *t->p == 'E')) {
        real = true;
        t->p++;
        if (t->p < t->end && (*t->p == '+' || *t->p == '-'))
            t->p++;
        if (t->p >= t->end || *t->p < '0' || *t->p > '9')
            return false;
        while (t->p < t->end && *t->p >= '0' && *t->p <= '9')
            t->p++;
    }
    if (!real) { /* what jansson's strtoll accepts, else its error */
        if (big || (!neg && mag > (uint64_t)INT64_MAX) || (neg && mag > (uint64_t)INT64_MAX + 1))
            return false;
        tx_int(t, neg ? (int64_t)(0 - mag) : (int64_t)mag);
        return true;
    }
    double d;
    if (!tx_real_fast(s, t->p, &d)) {
        char tmp[64];
        size_t len = (size_t)(t->p - s);
        if (len >= sizeof tmp)
            return false;
        memcpy(tmp, s, len);
        tmp[len] = '\0';
        d = strtod(tmp, NULL);
    }
    if (!isfinite(d))
        return false; /* jansson: real number overflow */
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    *t->o++ = 0xcb;
    put_be(t->o, bits, 8);
    t->o += 8;
    return true;
}

static bool tx_value(struct tx *t, int depth);

static bool tx_container(struct tx *t, int depth, bool map)
{
    static const uint8_t wide[] = {0, 0xdc, 0xdd}, wide_map[] = {0, 0xde, 0xdf};
    static const size_t wmin[] = {0, 0, 65536};
    const uint8_t *keys[CANON_MAP_KEYS_MAX];
    size_t klen[CANON_MAP_KEYS_MAX];
    uint8_t *h = t->o++;
    size_t n = 0;
    t->p++; /* { or [ */
    tx_ws(t);
    if (t->p < t->end && *t->p == (map ? '}' : ']')) {
        t->p++;
        *h = map ? 0x80 : 0x90;
        return true;
    }
    for (;;) {
        if (map) {
            if (t->p >= t->end || *t->p != '"' || n >= CANON_MAP_KEYS_MAX)
                return false;
            uint8_t *k = t->o;
            if (!tx_str(t))
                return false;
            /* the key's body, after its header */
            size_t kl = (size_t)(t->o - k) - (*k >= 0xa0 && *k <= 0xbf ? 1
                                              : *k == 0xd9             ? 2
                                              : *k == 0xda             ? 3
                                                                       : 5);
            const uint8_t *kb = t->o - kl;
            for (size_t j = 0; j < n; j++)
                if (klen[j] == kl && !memcmp(keys[j], kb, kl))
                    return false; /* a duplicate key: jansson names it */
            keys[n] = kb;         /* stable: later moves only shift what follows h */
            klen[n] = kl;
            tx_ws(t);
            if (t->p >= t->end || *t->p != ':')
                return false;
            t->p++;
            tx_ws(t);
        }
        if (!tx_value(t, depth + 1))
            return false;
        n++;
        tx_ws(t);
        if (t->p >= t->end)
            return false;
        if (*t->p == ',') {
            t->p++;
            tx_ws(t);
            continue;
        }
        if (*t->p != (map ? '}' : ']'))
            return false;
        t->p++;
        break;
    }
    return tx_header(t, h, n, map ? 0x80 : 0x90, 15, map ? wide_map : wide, wmin);
}

static bool tx_value(struct tx *t, int depth)
{
    if (depth > CAIRN_DEPTH_MAX || t->p >= t->end)
        return false;
    switch (*t->p) {
    case '{': return tx_container(t, depth, true);
    case '[': return tx_container(t, depth, false);
    case '"': return tx_str(t);
    case 't':
    case 'f':
    case 'n': {
        static const char *const words[] = {"true", "false", "null"};
        static const uint8_t codes[] = {0xc3, 0xc2, 0xc0};
        int i = *t->p == 't' ? 0 : *t->p == 'f' ? 1 : 2;
        size_t len = strlen(words[i]);
        if ((size_t)(t->end - t->p) < len || memcmp(t->p, words[i], len))
            return false;
        t->p += len;
        *t->o++ = codes[i];
        return true;
    }
    default: return tx_number(t);
    }
}

bool cairn_json_text_to_msgpack(const char *text, size_t n, struct cairn_buf *out)
{
    if (!text || !n || cairn_buf_reserve(out, 3 * n + 16))
        return false;
    struct tx t = {(const uint8_t *)text, (const uint8_t *)text + n, out->data + out->len,
                   out->data + out->len};
    tx_ws(&t);
    if (t.p >= t.end || *t.p != '{' || !tx_value(&t, 1))
        return false;
    tx_ws(&t);
    if (t.p != t.end)
        return false;
    out->len += (size_t)(t.o - t.base);
    return true;
}
