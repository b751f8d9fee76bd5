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
 *                  the same object (codec_same: types all the way down,
 *                  floats bit for bit) of the same length. A value cairn_mp_canonical
 *                  accepts is one msgpack-c decodes, that
 *                  cairn_mp_canonical_unpack (checked and trusted) decodes
 *                  the same, and that decoding into jansson and packing
 *                  again reproduces byte for byte, and whose
 *                  cairn_msgpack_to_json text is JSON of the same value.
 *                  Whatever cairn_msgpack_to_jansson takes packs into
 *                  bytes that decode to an equal value.
 *
 * The JSON side and the canonical checks are tests/codec_check.h's, which
 * test_common runs on its fixed and seeded inputs too.
 *
 * A disagreement aborts with the input in hex. tests/fuzz/run.sh runs it
 * after the HTTP target; ctest runs its seeds (tests/fuzz/codec_corpus)
 * once each.
 */
#include "codec_check.h"
#include "common.h"
#include "handler.h"

#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what, const uint8_t *p, size_t n)
{
    fprintf(stderr, "fuzz_codec: %s\n  input (%zu bytes):", what, n);
    for (size_t i = 0; i < n && i < 512; i++)
        fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, "%s\n", n > 512 ? " …" : "");
    abort();
}

static void msgpack_side(const uint8_t *data, size_t size)
{
    size_t n = cairn_mp_len(data, size); /* 0: malformed */
    msgpack_zone z;
    msgpack_object mine;
    size_t used = 0;
    if (!msgpack_zone_init(&z, 256))
        abort();
    int rc = mp_unpack(data, size, &z, &mine, &used);
    if (!n) {
        if (!rc)
            fail("mp_unpack decoded what cairn_mp_len calls malformed", data, size);
    } else {
        msgpack_unpacked u;
        size_t off = 0;
        msgpack_unpacked_init(&u);
        bool theirs =
            msgpack_unpack_next(&u, (const char *)data, n, &off) == MSGPACK_UNPACK_SUCCESS;
        if (theirs != !rc)
            fail(theirs ? "msgpack-c decodes what mp_unpack refuses"
                        : "mp_unpack decodes what msgpack-c refuses",
                 data, n);
        if (theirs && (off != n || used != n))
            fail("cairn_mp_len, mp_unpack and msgpack-c end the value in different places", data,
                 n);
        if (theirs && !codec_same(&mine, &u.data))
            fail("mp_unpack and msgpack-c decode differently", data, n);
        msgpack_unpacked_destroy(&u);
        size_t cn = 0;
        if (cairn_mp_canonical(data, size, CAIRN_DEPTH_MAX, &cn)) {
            const char *why = cn == n ? codec_check_canonical(data, n)
                                      : "cairn_mp_canonical and cairn_mp_len end it apart";
            if (why)
                fail(why, data, n);
        }
    }
    msgpack_zone_destroy(&z);

    /* whatever becomes a jansson value packs into bytes that decode to it */
    json_t *v = NULL, *back = NULL;
    struct cairn_error e;
    struct cairn_buf b;
    cairn_buf_init(&b, SIZE_MAX);
    if (!cairn_msgpack_to_jansson(data, size, &v, &used, &e) &&
        !cairn_json_to_msgpack(v, &b, NULL) &&
        (cairn_msgpack_to_jansson(b.data, b.len, &back, &used, &e) || used != b.len ||
         !json_equal(v, back)))
        fail("a value decoded and packed again decodes to another", data, size);
    json_decref(back);
    json_decref(v);
    cairn_buf_deinit(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool taken;
    const char *why = codec_check_transcode((const char *)data, size, &taken);
    if (why)
        fail(why, data, size);
    msgpack_side(data, size);
    return 0;
}
