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

/* ====================================================================== JSON -> msgpack */

static int pack_json(msgpack_packer *pk, const json_t *v, int depth, struct cairn_error *e)
{
    if (depth > CAIRN_DEPTH_MAX)
        return cairn_error_set(e, "too_deep", "", "nesting deeper than %d levels", CAIRN_DEPTH_MAX);
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
            int r = pack_json(pk, json_array_get(v, i), depth + 1, e);
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
            int r = pack_json(pk, item, depth + 1, e);
            if (r)
                return r;
        }
        break;
    }
    }
    return rc ? CAIRN_ETOOBIG : 0;
}

int cairn_json_to_msgpack(const json_t *v, struct cairn_buf *out, struct cairn_error *e)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, cairn_buf_msgpack_write);
    return pack_json(&pk, v, 1, e);
}

/* ====================================================================== msgpack -> JSON text */

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
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return cairn_buf_printf(out, "%llu", (unsigned long long)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return cairn_buf_printf(out, "%lld", (long long)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64))
            return cairn_buf_append(out, "null", 4);
        return cairn_buf_append(out, tmp, cairn_fmt_double(o->via.f64, tmp, sizeof tmp));
    case MSGPACK_OBJECT_STR: return cairn_buf_json_str(out, o->via.str.ptr, o->via.str.size);
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
                rc = cairn_buf_json_str(out, kv->key.via.str.ptr, kv->key.via.str.size);
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
    if (msgpack_unpack_next(&u, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS)
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
    case MSGPACK_OBJECT_STR: return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
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
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                cairn_error_set(e, "wrong_type", "", "map keys must be strings");
                json_decref(m);
                return NULL;
            }
            json_t *item = obj_to_jansson(&kv->val, depth + 1, e);
            if (!item ||
                json_object_setn_new_nocheck(m, kv->key.via.str.ptr, kv->key.via.str.size, item)) {
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
    int rc = msgpack_unpack_next(&u, (const char *)p, n, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS) {
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

/* ====================================================================== canonical reader */

int cairn_rd_key(struct cairn_rd *r, const char *name)
{
    size_t n = strlen(name);
    if (r->end - r->p < (ptrdiff_t)(n + 1) || r->p[0] != (0xa0 | n) || memcmp(r->p + 1, name, n))
        return CAIRN_ECORRUPT;
    r->p += n + 1;
    return 0;
}

static int rd_be(struct cairn_rd *r, unsigned w, uint64_t *v)
{
    if (r->end - r->p < (ptrdiff_t)w)
        return CAIRN_ECORRUPT;
    *v = 0;
    for (unsigned i = 0; i < w; i++)
        *v = *v << 8 | r->p[i];
    r->p += w;
    return 0;
}

int cairn_rd_int(struct cairn_rd *r, int64_t *out)
{
    if (r->p >= r->end)
        return CAIRN_ECORRUPT;
    uint8_t t = *r->p++;
    uint64_t v;
    if (t <= 0x7f)
        return *out = t, 0;
    if (t >= 0xe0)
        return *out = (int8_t)t, 0;
    if (t >= 0xcc && t <= 0xcf) { /* uint 8..64 */
        if (rd_be(r, 1u << (t - 0xcc), &v) || v > INT64_MAX)
            return CAIRN_ECORRUPT;
        return *out = (int64_t)v, 0;
    }
    if (t >= 0xd0 && t <= 0xd3) { /* int 8..64 */
        unsigned w = 1u << (t - 0xd0);
        if (rd_be(r, w, &v))
            return CAIRN_ECORRUPT;
        if (w < 8 && (v >> (8 * w - 1)) & 1) /* sign-extend */
            v |= ~(uint64_t)0 << (8 * w);
        return *out = (int64_t)v, 0;
    }
    return CAIRN_ECORRUPT;
}

int cairn_rd_str(struct cairn_rd *r, struct cairn_str *s, bool nil_ok)
{
    if (r->p >= r->end)
        return CAIRN_ECORRUPT;
    uint8_t t = *r->p++;
    uint64_t n;
    if (t == 0xc0 && nil_ok) {
        s->p = NULL;
        s->n = 0;
        return 0;
    }
    if ((t & 0xe0) == 0xa0)
        n = t & 0x1f;
    else if (t >= 0xd9 && t <= 0xdb) {
        if (rd_be(r, 1u << (t - 0xd9), &n))
            return CAIRN_ECORRUPT;
    } else
        return CAIRN_ECORRUPT;
    if ((uint64_t)(r->end - r->p) < n)
        return CAIRN_ECORRUPT;
    s->p = (const char *)r->p;
    s->n = (size_t)n;
    r->p += n;
    return 0;
}
