/*
 * codec_check.h — the codec's agreement checks, shared by test_common
 * (fixed and seeded inputs) and fuzz_codec (libFuzzer's). Each returns
 * NULL when the sides agree, else what differs; the caller reports it its
 * own way (cmocka's fail_msg, abort). Header-only (static inline: a test
 * that uses some of them is not warned about the others); test_mp uses
 * codec_same alone.
 */
#ifndef CAIRN_TESTS_CODEC_CHECK_H
#define CAIRN_TESTS_CODEC_CHECK_H

#include "common.h"

#include <jansson.h>
#include <msgpack.h>
#include <stdbool.h>
#include <string.h>

/* Whether a and b are the same object, both decoded from the same bytes:
 * the same types all the way down (msgpack_object_equal takes a positive
 * and a negative integer of one value as equal), the same values, floats
 * bit for bit (a NaN equals itself), and str, bin and ext pointing at the
 * same bytes (neither decoder copies them). */
static inline bool codec_same(const msgpack_object *a, const msgpack_object *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case MSGPACK_OBJECT_NIL: return true;
    case MSGPACK_OBJECT_BOOLEAN: return a->via.boolean == b->via.boolean;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return a->via.u64 == b->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return a->via.i64 == b->via.i64;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return !memcmp(&a->via.f64, &b->via.f64, sizeof a->via.f64);
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN:
        return a->via.str.size == b->via.str.size &&
               (!a->via.str.size || a->via.str.ptr == b->via.str.ptr);
    case MSGPACK_OBJECT_EXT:
        return a->via.ext.type == b->via.ext.type && a->via.ext.size == b->via.ext.size &&
               a->via.ext.ptr == b->via.ext.ptr;
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size)
            return false;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!codec_same(&a->via.array.ptr[i], &b->via.array.ptr[i]))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP:
        if (a->via.map.size != b->via.map.size)
            return false;
        for (uint32_t i = 0; i < a->via.map.size; i++)
            if (!codec_same(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key) ||
                !codec_same(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val))
                return false;
        return true;
    }
    return false;
}

/* p[0..n), which cairn_mp_canonical takes whole: msgpack-c decodes it to
 * its end; cairn_mp_canonical_unpack, checked and trusted, decodes it the
 * same; decoded into jansson and packed again it is the same bytes; its
 * JSON text (cairn_msgpack_to_json: how the log and the streams are read)
 * is JSON of the same value. */
static inline const char *codec_check_canonical(const uint8_t *p, size_t n)
{
    const char *why = NULL;
    size_t used = 0, off = 0;
    msgpack_zone z;
    msgpack_object o, ref;
    json_t *v = NULL, *t = NULL;
    struct cairn_error e;
    struct cairn_buf b;
    cairn_buf_init(&b, SIZE_MAX);
    if (!msgpack_zone_init(&z, 256))
        return "out of memory";
    if (!cairn_mp_canonical(p, n, CAIRN_DEPTH_MAX, &used) || used != n)
        why = "not canonical msgpack, or not all of it";
    else if (msgpack_unpack((const char *)p, n, &off, &z, &ref) != MSGPACK_UNPACK_SUCCESS ||
             off != n)
        why = "msgpack-c does not decode a canonical value to its end";
    for (int trusted = 0; !why && trusted < 2; trusted++) {
        if (!cairn_mp_canonical_unpack(p, n, CAIRN_DEPTH_MAX, trusted, &z, &o, &used) || used != n)
            why = "cairn_mp_canonical_unpack refuses what cairn_mp_canonical takes";
        else if (!codec_same(&o, &ref))
            why = trusted ? "cairn_mp_canonical_unpack (trusted) and msgpack-c decode differently"
                          : "cairn_mp_canonical_unpack and msgpack-c decode differently";
    }
    if (!why && (cairn_msgpack_to_jansson(p, n, &v, &used, &e) || used != n))
        why = "cairn_msgpack_to_jansson refuses a canonical value";
    else if (!why && (cairn_json_to_msgpack(v, &b, NULL) || b.len != n || memcmp(b.data, p, n)))
        why = "a canonical value packs again into other bytes";
    if (!why) {
        cairn_buf_reset(&b);
        if (cairn_msgpack_to_json(p, n, &b, &used) || used != n)
            why = "cairn_msgpack_to_json refuses a canonical value";
        else if (!(t = json_loadb((const char *)b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                                  NULL)) ||
                 !json_equal(t, v))
            why = "cairn_msgpack_to_json writes other JSON";
    }
    json_decref(t);
    json_decref(v);
    cairn_buf_deinit(&b);
    msgpack_zone_destroy(&z);
    return why;
}

/* ingest's JSON fast path against the slow one: cairn_json_text_to_msgpack
 * gives exactly jansson's parse packed by cairn_json_to_msgpack, and
 * canonical bytes (codec_check_canonical: ingest stores them without
 * checking them again, engine/ingest.c) — or declines and
 * appends nothing. It never takes what jansson refuses. *taken: whether it
 * transcoded. */
static inline const char *codec_check_transcode(const char *text, size_t n, bool *taken)
{
    const char *why = NULL;
    struct cairn_buf fast, ref;
    cairn_buf_init(&fast, SIZE_MAX);
    cairn_buf_init(&ref, SIZE_MAX);
    bool ok = cairn_json_text_to_msgpack(text, n, &fast);
    json_t *v = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (!ok)
        why = fast.len ? "the transcoder declined but appended" : NULL;
    else if (!v)
        why = "the transcoder took what jansson refuses";
    else if (cairn_json_to_msgpack(v, &ref, NULL))
        why = "the transcoder took what cairn_json_to_msgpack refuses";
    else if (fast.len != ref.len || memcmp(fast.data, ref.data, ref.len))
        why = "the transcoder and cairn_json_to_msgpack write different bytes";
    else
        why = codec_check_canonical(fast.data, fast.len);
    json_decref(v);
    cairn_buf_deinit(&fast);
    cairn_buf_deinit(&ref);
    *taken = ok;
    return why;
}

#endif
