/*
 * fuzz_codec.c — libFuzzer target for the input codec (common/codec.c and
 * projections' decoder): every way a client's bytes become the log's
 * bytes, checked against a reference on the same input.
 *
 * The input is read twice:
 *
 *   as JSON text   cairn_json_text_to_msgpack (ingest's fast path) must
 *                  give exactly the bytes of jansson's parse packed by
 *                  cairn_json_to_msgpack (the slow path), and canonical
 *                  bytes — or decline and append nothing. It never takes
 *                  what jansson refuses.
 *   as msgpack     cairn_mp_len bounds the first value; only then does
 *                  msgpack-c's unpacker see it (given a count beyond the
 *                  bytes, it allocates first). projections' mp_unpack and
 *                  msgpack-c must then agree: both fail, or both decode
 *                  the same object (compared packed: NaN is not equal to
 *                  itself) of the same length. A value cairn_mp_canonical
 *                  accepts is one msgpack-c decodes, that
 *                  cairn_mp_canonical_unpack (checked and trusted) decodes
 *                  the same, and that decoding into jansson and packing
 *                  again reproduces byte for byte, and whose
 *                  cairn_msgpack_to_json text is JSON of the same value.
 *                  Whatever cairn_msgpack_to_jansson takes packs into
 *                  bytes that decode to an equal value.
 *
 * A disagreement aborts with both sides in hex. tests/fuzz/run.sh runs it
 * after the HTTP target; ctest runs its seeds (tests/fuzz/codec_corpus)
 * once each.
 */
#include "common.h"
#include "handler.h"

#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex(const char *label, const uint8_t *p, size_t n)
{
    fprintf(stderr, "%s (%zu bytes):", label, n);
    for (size_t i = 0; i < n && i < 512; i++)
        fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, "%s\n", n > 512 ? " …" : "");
}

static void fail(const char *what, const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    fprintf(stderr, "fuzz_codec: %s\n", what);
    hex("  one", a, an);
    if (b)
        hex("  other", b, bn);
    abort();
}

/* o packed by msgpack-c's packer into b (reset first). */
static void pack(const msgpack_object *o, struct cairn_buf *b)
{
    msgpack_packer pk;
    cairn_buf_reset(b);
    msgpack_packer_init(&pk, b, cairn_buf_msgpack_write);
    if (msgpack_pack_object(&pk, *o))
        abort(); /* out of memory: not a finding about the codec */
}

static void same_object(const char *what, const msgpack_object *x, const msgpack_object *y,
                        struct cairn_buf *bx, struct cairn_buf *by)
{
    pack(x, bx);
    pack(y, by);
    if (bx->len != by->len || memcmp(bx->data, by->data, bx->len))
        fail(what, bx->data, bx->len, by->data, by->len);
}

static void json_side(const uint8_t *data, size_t size)
{
    struct cairn_buf fast, ref;
    cairn_buf_init(&fast, SIZE_MAX);
    cairn_buf_init(&ref, SIZE_MAX);
    bool ok = cairn_json_text_to_msgpack((const char *)data, size, &fast);
    json_t *v =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (ok) {
        if (!v)
            fail("the fast path took JSON that jansson refuses", data, size, NULL, 0);
        if (cairn_json_to_msgpack(v, &ref, NULL))
            fail("the fast path took JSON the slow path refuses", data, size, NULL, 0);
        if (fast.len != ref.len || memcmp(fast.data, ref.data, ref.len))
            fail("the fast and slow paths wrote different bytes", fast.data, fast.len, ref.data,
                 ref.len);
        size_t used = 0;
        if (!cairn_mp_canonical(fast.data, fast.len, CAIRN_DEPTH_MAX, &used) || used != fast.len)
            fail("the fast path's bytes are not canonical", fast.data, fast.len, NULL, 0);
    } else if (fast.len) {
        fail("the fast path declined but appended", fast.data, fast.len, NULL, 0);
    }
    json_decref(v);
    cairn_buf_deinit(&fast);
    cairn_buf_deinit(&ref);
}

/* The canonical value p[0..n): msgpack-c's object is *ref. */
static void canonical_side(const uint8_t *p, size_t n, const msgpack_object *ref,
                           struct cairn_buf *bx, struct cairn_buf *by)
{
    msgpack_zone z;
    msgpack_object o;
    size_t used = 0;
    if (!msgpack_zone_init(&z, 256))
        abort();
    for (int trusted = 0; trusted < 2; trusted++) {
        if (!cairn_mp_canonical_unpack(p, n, CAIRN_DEPTH_MAX, trusted, &z, &o, &used) || used != n)
            fail("cairn_mp_canonical_unpack refuses what cairn_mp_canonical took", p, n, NULL, 0);
        same_object("cairn_mp_canonical_unpack and msgpack-c decode differently", &o, ref, bx, by);
    }
    msgpack_zone_destroy(&z);
    /* canonical: decoding and packing again changes nothing */
    json_t *v = NULL;
    struct cairn_error e;
    if (cairn_msgpack_to_jansson(p, n, &v, &used, &e) || used != n)
        fail("cairn_msgpack_to_jansson refuses a canonical value", p, n, NULL, 0);
    cairn_buf_reset(bx);
    if (cairn_json_to_msgpack(v, bx, NULL) || bx->len != n || memcmp(bx->data, p, n))
        fail("a canonical value packs again into other bytes", p, n, bx->data, bx->len);
    /* the JSON text view (how the log and the streams are read) is JSON of
     * the same value */
    cairn_buf_reset(bx);
    if (cairn_msgpack_to_json(p, n, bx, &used) || used != n)
        fail("cairn_msgpack_to_json refuses a canonical value", p, n, NULL, 0);
    json_t *t = json_loadb((const char *)bx->data, bx->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!t || !json_equal(t, v))
        fail("cairn_msgpack_to_json wrote other JSON", p, n, bx->data, bx->len);
    json_decref(t);
    json_decref(v);
}

static void msgpack_side(const uint8_t *data, size_t size)
{
    struct cairn_buf bx, by;
    cairn_buf_init(&bx, SIZE_MAX);
    cairn_buf_init(&by, SIZE_MAX);
    size_t n = cairn_mp_len(data, size); /* 0: malformed */
    msgpack_zone z;
    msgpack_object mine;
    size_t used = 0;
    if (!msgpack_zone_init(&z, 256))
        abort();
    int rc = mp_unpack(data, size, &z, &mine, &used);
    if (!n) {
        if (!rc)
            fail("mp_unpack decoded what cairn_mp_len calls malformed", data, size, NULL, 0);
    } else {
        msgpack_unpacked u;
        size_t off = 0;
        msgpack_unpacked_init(&u);
        bool theirs =
            msgpack_unpack_next(&u, (const char *)data, n, &off) == MSGPACK_UNPACK_SUCCESS;
        if (theirs != !rc)
            fail(theirs ? "msgpack-c decodes what mp_unpack refuses"
                        : "mp_unpack decodes what msgpack-c refuses",
                 data, n, NULL, 0);
        if (theirs) {
            if (off != n || used != n)
                fail("cairn_mp_len, mp_unpack and msgpack-c end the value in different places",
                     data, n, NULL, 0);
            same_object("mp_unpack and msgpack-c decode differently", &mine, &u.data, &bx, &by);
        }
        size_t cn = 0;
        if (cairn_mp_canonical(data, size, CAIRN_DEPTH_MAX, &cn)) {
            if (!theirs || cn != n)
                fail("cairn_mp_canonical took a value msgpack-c does not decode so", data, n, NULL,
                     0);
            canonical_side(data, n, &u.data, &bx, &by);
        }
        msgpack_unpacked_destroy(&u);
    }
    msgpack_zone_destroy(&z);

    /* whatever becomes a jansson value packs into bytes that decode to it */
    json_t *v = NULL, *back = NULL;
    struct cairn_error e;
    if (!cairn_msgpack_to_jansson(data, size, &v, &used, &e)) {
        cairn_buf_reset(&bx);
        if (cairn_json_to_msgpack(v, &bx, NULL) == 0) {
            if (cairn_msgpack_to_jansson(bx.data, bx.len, &back, &used, &e) || used != bx.len ||
                !json_equal(v, back))
                fail("a value decoded and packed again decodes to another", data, size, bx.data,
                     bx.len);
        }
        json_decref(back);
        json_decref(v);
    }
    cairn_buf_deinit(&bx);
    cairn_buf_deinit(&by);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_side(data, size);
    msgpack_side(data, size);
    return 0;
}
