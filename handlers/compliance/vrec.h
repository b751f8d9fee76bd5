/*
 * vrec.h — the violations view's records (layout 3), shared by the handler
 * (compliance.c, which writes them) and its read side (compliance_routes.c,
 * which turns them back into violation documents).
 *
 * A violation's document is immutable but for its lifecycle fields, and the
 * handler emits it whole, as the compliance.violation event that opened it,
 * on its stream (append-only, never trimmed). So the view keeps only what
 * changes and where the rest is: the document is that event's payload with
 * status, resolved_at, resolved_seq and resolution set from the record
 * (vrec_doc). The record is ~50 bytes where the document is ~1 KB: the
 * view's keys are hashes, so with whole documents nearly every insert
 * dirtied (and split) its own leaf page and each commit wrote most of the
 * view again; with records ~40 share a page.
 *
 * Value (big-endian):
 *   0  u8   'O' open | 'R' resolved
 *   1  u64  dseq of the compliance.violation that opened it (stream.violations)
 *   9  u32  times_opened (as that event's document says)
 *   13 i64  opened_at, ns (its opened_at; compliance.resolved repeats it)
 *   21 u8   n, then n bytes: severity (the document's: a rule redefined with
 *           another severity but the same meaning keeps its open violations)
 *   resolved only, after the severity:
 *      u64 resolved_seq · i64 resolved_at, ns · u8 n, then n bytes: resolution
 */
#ifndef CAIRN_VREC_H
#define CAIRN_VREC_H

#include "handler.h"

#define VREC_STR_MAX 255

struct vrec {
    bool resolved;
    uint64_t dseq;
    uint32_t times;
    int64_t opened_at;
    struct cairn_str severity;
    uint64_t resolved_seq;
    int64_t resolved_at;
    struct cairn_str resolution;
};

/* The encoded size of r (<= VREC_MAX). */
#define VREC_MAX (22 + VREC_STR_MAX + 17 + VREC_STR_MAX)

static inline size_t vrec_encode(const struct vrec *r, uint8_t *o)
{
    size_t sn = r->severity.n < VREC_STR_MAX ? r->severity.n : VREC_STR_MAX;
    size_t k = 0;
    o[k++] = r->resolved ? 'R' : 'O';
    cairn_be64_put(o + k, r->dseq), k += 8;
    for (int i = 3; i >= 0; i--)
        o[k++] = (uint8_t)(r->times >> (8 * i));
    cairn_be64_put(o + k, (uint64_t)r->opened_at), k += 8;
    o[k++] = (uint8_t)sn;
    if (sn)
        memcpy(o + k, r->severity.p, sn), k += sn;
    if (r->resolved) {
        size_t rn = r->resolution.n < VREC_STR_MAX ? r->resolution.n : VREC_STR_MAX;
        cairn_be64_put(o + k, r->resolved_seq), k += 8;
        cairn_be64_put(o + k, (uint64_t)r->resolved_at), k += 8;
        o[k++] = (uint8_t)rn;
        if (rn)
            memcpy(o + k, r->resolution.p, rn), k += rn;
    }
    return k;
}

/* Decodes p[0..n) (the strings point into it); false when malformed. */
static inline bool vrec_decode(const uint8_t *p, size_t n, struct vrec *r)
{
    memset(r, 0, sizeof *r);
    if (n < 22 || (p[0] != 'O' && p[0] != 'R'))
        return false;
    r->resolved = p[0] == 'R';
    r->dseq = cairn_be64_get(p + 1);
    r->times = (uint32_t)p[9] << 24 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 8 | p[12];
    r->opened_at = (int64_t)cairn_be64_get(p + 13);
    size_t k = 22 + p[21];
    if (k > n)
        return false;
    r->severity = (struct cairn_str){(const char *)p + 22, p[21]};
    if (!r->resolved)
        return k == n;
    if (k + 17 > n || k + 17 + p[k + 16] != n)
        return false;
    r->resolved_seq = cairn_be64_get(p + k);
    r->resolved_at = (int64_t)cairn_be64_get(p + k + 8);
    r->resolution = (struct cairn_str){(const char *)p + k + 17, p[k + 16]};
    return true;
}

#endif
