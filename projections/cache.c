/*
 * cache.c — the write-back cache of view documents that handlers keep
 * between flushes (handler.h, struct hcache): an open-addressing table of
 * entries found by their view key, and the list of entries changed since
 * the last flush; the key sets (struct hkset) handlers keep to skip
 * reads that would find nothing; and the state layout mark (struct
 * hlayout).
 */
#include "handler.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A word at a time: each 8-byte word (the tail zero-padded) is mixed in by
 * a multiply and a shift (both bijections, so keys of one length that
 * differ never meet inside the loop), then MurmurHash3's finalizer spreads
 * every bit into the low ones that pick a slot. It was FNV-1a, one serial
 * multiply per byte: with 37-byte keys the key sets' lookups and adds were
 * ~5 % of a first discovery. In memory only (slots; nothing stored or
 * ordered by it), so its value may differ between builds and byte orders. */
uint64_t hcache_hash(const uint8_t *k, size_t n)
{
    const uint64_t m = 0xff51afd7ed558ccdull;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;
    bool whole = n >= 8; /* a tail can be loaded as the key's last 8 bytes */
    for (; n >= 8; k += 8, n -= 8) {
        memcpy(&w, k, 8);
        h = (h ^ w) * m;
        h ^= h >> 32;
    }
    if (n) {
        /* The tail's n bytes alone, in the word's low bytes: when the key
         * has 8 bytes, one load of its last 8 and a shift. The copy of a
         * variable length compiles to a byte loop into the stack and a
         * reload that waits for its stores: 30 % of the hash's
         * instructions in a replay (callgrind), and the keys of the
         * handlers' caches are rarely a multiple of 8 bytes. */
        if (whole) {
            memcpy(&w, k + n - 8, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            w &= ~0ull >> 8 * (8 - n);
#else
            w >>= 8 * (8 - n);
#endif
        } else {
            w = 0;
            memcpy(&w, k, n);
        }
        h = (h ^ w) * m;
        h ^= h >> 32;
    }
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ h >> 33;
}

void hentry_free(struct hentry *e)
{
    if (e) {
        cairn_buf_deinit(&e->mem);
        free(e);
    }
}

/* Entries in every cache of the process (hcache_add adds one, hcache_clear
 * takes its cache's away): what the engine bounds a transaction's cached
 * entities by (hcache_live). */
static _Atomic size_t live;

size_t hcache_live(void)
{
    return atomic_load_explicit(&live, memory_order_relaxed);
}

void hcache_clear(struct hcache *c)
{
    atomic_fetch_sub_explicit(&live, c->count, memory_order_relaxed);
    c->gen++; /* hcache_prefetch's entries are gone */
    for (size_t i = 0; i < c->nslots; i++)
        hentry_free(c->slots[i].e);
    free(c->slots);
    c->slots = NULL;
    c->fresh = NULL;
    c->nslots = c->count = c->ndirty = 0;
}

void hcache_free(struct hcache *c)
{
    hcache_clear(c);
    free(c->dirty);
    c->dirty = NULL;
    c->dirty_cap = 0;
}

/* The slot of key k: its entry's, or the empty one where it goes (whose
 * hash is set now, for the entry the caller may store there; an empty
 * slot's hash means nothing). */
static struct hentry **slot_of(struct hcache *c, uint64_t h, const uint8_t *k, size_t n)
{
    size_t mask = c->nslots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct hslot *s = &c->slots[i];
        if (!s->e) {
            s->hash = h;
            return &s->e;
        }
        if (s->hash == h && s->e->vn == n && !memcmp(s->e->mem.data, k, n))
            return &s->e;
    }
}

/* Keeps the load under one half. */
static int grow(struct hcache *c)
{
    if (c->nslots && (c->count + 1) * 2 <= c->nslots)
        return 0;
    size_t n = c->nslots ? c->nslots * 2 : 1024;
    struct hslot *old = c->slots;
    size_t oldn = c->nslots;
    if (!(c->slots = cairn_calloc_written(n, sizeof *c->slots))) {
        c->slots = old;
        return CAIRN_ENOMEM;
    }
    c->nslots = n;
    for (size_t i = 0; i < oldn; i++)
        if (old[i].e)
            *slot_of(c, old[i].hash, old[i].e->mem.data, old[i].e->vn) = old[i].e;
    free(old);
    return 0;
}

int hcache_slot(struct hcache *c, const uint8_t *k, size_t n, uint64_t *hash, struct hentry ***slot)
{
    int rc = grow(c);
    if (rc)
        return rc;
    *hash = hcache_hash(k, n);
    *slot = slot_of(c, *hash, k, n);
    return 0;
}

int hcache_get_or_new(struct hcache *c, const uint8_t *k, size_t n, size_t size, size_t max,
                      struct hentry **out, bool *fresh)
{
    uint64_t h;
    struct hentry **slot;
    assert(size >= sizeof(struct hentry) && n <= max && n <= UINT32_MAX);
    *out = NULL;
    int rc = hcache_slot(c, k, n, &h, &slot);
    if (rc)
        return rc;
    if ((*out = *slot)) {
        *fresh = false;
        return 0;
    }
    struct hentry *e = calloc(1, size);
    if (!e)
        return CAIRN_ENOMEM;
    e->hash = h;
    e->vn = (uint32_t)n;
    cairn_buf_init(&e->mem, max);
    if ((rc = cairn_buf_append(&e->mem, k, n))) {
        hentry_free(e);
        return rc;
    }
    c->fresh = slot;
    *out = e;
    *fresh = true;
    return 0;
}

void hcache_store(struct hcache *c, struct hentry **slot, struct hentry *e)
{
    assert(!*slot);
    *slot = e;
    c->count++;
    atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
}

void hcache_add(struct hcache *c, struct hentry *e)
{
    assert(c->fresh);
    hcache_store(c, c->fresh, e);
    c->fresh = NULL;
}

struct hentry *hcache_find(struct hcache *c, const uint8_t *k, size_t n)
{
    return c->nslots ? *slot_of(c, hcache_hash(k, n), k, n) : NULL;
}

void hcache_prefetch(struct hcache *c, const uint8_t *k, size_t n)
{
    unsigned i = c->npf++;
    struct hcache_pf *p1 = &c->pf[i % 3], *p2 = &c->pf[(i + 2) % 3], *p3 = &c->pf[(i + 1) % 3];
    p1->nslots = 0;
    p1->e = NULL;
    if (k && c->nslots) {
        p1->h = hcache_hash(k, n);
        p1->nslots = c->nslots;
        __builtin_prefetch(&c->slots[p1->h & (c->nslots - 1)]);
    }
    if (p2->nslots && p2->nslots == c->nslots) {
        const struct hslot *s = &c->slots[p2->h & (c->nslots - 1)];
        if (s->e && s->hash == p2->h) {
            __builtin_prefetch(s->e);
            p2->e = s->e;
            p2->gen = c->gen;
        }
    }
    if (p3->e && p3->gen == c->gen) {
        const uint8_t *m = p3->e->mem.data;
        __builtin_prefetch(m);
        __builtin_prefetch(m + 64);
        __builtin_prefetch(m + 128);
        p3->e = NULL;
    }
}

int hcache_mark(struct hcache *c, struct hentry *e)
{
    if (e->dirty)
        return 0;
    if (c->ndirty == c->dirty_cap) {
        size_t cap = c->dirty_cap ? c->dirty_cap * 2 : 1024;
        struct hentry **p = realloc(c->dirty, cap * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        c->dirty = p;
        c->dirty_cap = cap;
    }
    c->dirty[c->ndirty++] = e;
    e->dirty = true;
    return 0;
}

static int key_cmp(const void *x, const void *y)
{
    const struct hentry *a = *(struct hentry *const *)x, *b = *(struct hentry *const *)y;
    int c = memcmp(a->mem.data, b->mem.data, a->vn < b->vn ? a->vn : b->vn);
    return c ? c : (a->vn > b->vn) - (a->vn < b->vn);
}

/* cairn_ksort's key and cmp of entries: key_cmp. */
static const uint8_t *key_ksort_key(const void *p, size_t *n, void *arg)
{
    (void)arg;
    const struct hentry *e = p;
    *n = e->vn;
    return e->mem.data;
}

static int key_ksort_cmp(const void *x, const void *y, void *arg)
{
    (void)arg;
    const struct cairn_ksort *a = x, *b = y;
    return key_cmp(&a->p, &b->p);
}

/* Through cairn_ksort (common.h): one load of each entry's key instead of
 * two per comparison; qsort when there is no memory for it. */
void hcache_sort_dirty(struct hcache *c)
{
    if (cairn_ksort_ptrs(c->dirty, c->ndirty, key_ksort_key, key_ksort_cmp, NULL))
        qsort(c->dirty, c->ndirty, sizeof *c->dirty, key_cmp);
}

/* ====================================================================== key sets */

static uint64_t hkset_hash(const uint8_t *k, size_t n)
{
    uint64_t h = hcache_hash(k, n);
    return h ? h : 1; /* 0 marks a free slot */
}

static uint64_t *hkset_slot(uint64_t *t, size_t cap, uint64_t h)
{
    for (size_t i = (size_t)h & (cap - 1);; i = (i + 1) & (cap - 1))
        if (!t[i] || t[i] == h)
            return &t[i];
}

void hkset_free(struct hkset *ks)
{
    free(ks->t);
    *ks = (struct hkset){0};
}

void hkset_add(struct hkset *ks, const uint8_t *k, size_t n)
{
    if (ks->off)
        return;
    if ((ks->n + 1) * 2 > ks->cap) {
        size_t cap = ks->cap ? 2 * ks->cap : 4096;
        uint64_t *t = cap / 2 <= HKSET_MAX ? cairn_calloc_written(cap, sizeof *t) : NULL;
        if (!t) {
            hkset_free(ks);
            ks->loaded = ks->off = true;
            return;
        }
        for (size_t i = 0; i < ks->cap; i++)
            if (ks->t[i])
                *hkset_slot(t, cap, ks->t[i]) = ks->t[i];
        free(ks->t);
        ks->t = t;
        ks->cap = cap;
    }
    uint64_t h = hkset_hash(k, n), *slot = hkset_slot(ks->t, ks->cap, h);
    ks->n += !*slot;
    *slot = h;
}

int hkset_maybe(struct hctx *ctx, struct hkset *ks, unsigned db, const uint8_t *k, size_t n,
                bool *maybe)
{
    *maybe = true;
    if (!ks->loaded) {
        struct hcursor *c;
        MDB_val ck, cv;
        ks->loaded = true;
        int rc = hctx_cursor_open(ctx, db, NULL, 0, &c);
        if (rc)
            return rc;
        while (!ks->off && !(rc = hctx_cursor_next(c, &ck, &cv)))
            hkset_add(ks, ck.mv_data, ks->prefix ? ks->prefix(ck.mv_data, ck.mv_size) : ck.mv_size);
        hctx_cursor_close(c);
        if (rc && rc != CAIRN_ENOTFOUND)
            return rc;
    }
    *maybe = ks->off || (ks->cap && *hkset_slot(ks->t, ks->cap, hkset_hash(k, n)));
    return 0;
}

int hkset_get(struct hctx *ctx, struct hkset *ks, unsigned db, const uint8_t *k, size_t n,
              MDB_val *v)
{
    bool maybe;
    int rc = hkset_maybe(ctx, ks, db, k, n, &maybe);
    return rc ? rc : maybe ? hctx_get(ctx, db, k, n, v) : CAIRN_ENOTFOUND;
}

/* ====================================================================== layout mark */

int hlayout_check(struct hctx *ctx, struct hlayout *l)
{
    MDB_val k, v;
    int rc = hctx_get(ctx, l->meta, "layout", 6, &v);
    if (!rc) {
        const uint8_t *b = v.mv_data;
        if (v.mv_size != 4 ||
            ((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]) != l->layout)
            goto old;
        l->written = true;
        return 0;
    }
    if (rc != CAIRN_ENOTFOUND)
        return rc;
    struct hcursor *c;
    if ((rc = hctx_cursor_open(ctx, l->probe, NULL, 0, &c)))
        return rc;
    rc = hctx_cursor_next(c, &k, &v);
    hctx_cursor_close(c);
    if (rc == CAIRN_ENOTFOUND)
        return 0; /* empty: this layout from the start */
    if (rc)
        return rc;
old:
    fprintf(stderr,
            "cairn: the %s state has an older layout: rebuild the state from the log (cairn "
            "replay)\n",
            l->what);
    return CAIRN_EINVAL;
}

int hlayout_mark(struct hctx *ctx, struct hlayout *l)
{
    if (l->written)
        return 0;
    uint8_t v[4] = {(uint8_t)(l->layout >> 24), (uint8_t)(l->layout >> 16),
                    (uint8_t)(l->layout >> 8), (uint8_t)l->layout};
    int rc = hctx_put(ctx, l->meta, "layout", 6, v, 4);
    l->written = !rc;
    return rc;
}

int hcache_flush(struct hctx *ctx, struct hcache *c, unsigned db, hcache_write_fn write,
                 size_t keep_max)
{
    struct hcursor *cur = NULL;
    hcache_sort_dirty(c);
    /* through one cursor: sorted puts stay on the leaf (hctx_cursor_put) */
    int rc = c->ndirty ? hctx_cursor_open(ctx, db, NULL, 0, &cur) : 0;
    size_t i = 0;
    for (; i < c->ndirty && !rc; i++) {
        struct hentry *e = c->dirty[i];
        hcache_prefetch_dirty(c, i);
        e->dirty = false; /* here, not in a pass of its own: an entry is a cache miss */
        rc = write ? write(ctx, cur, e)
                   : hctx_cursor_put(cur, e->mem.data, e->vn, e->mem.data + e->vn,
                                     e->mem.len - e->vn);
    }
    for (; i < c->ndirty; i++) /* after a failure (the transaction aborts) */
        c->dirty[i]->dirty = false;
    hctx_cursor_close(cur);
    c->ndirty = 0;
    if (!rc && c->count > keep_max)
        hcache_clear(c); /* every entry is clean (stored): drop them all */
    return rc;
}
