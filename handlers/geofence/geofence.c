/*
 * geofence — fences as inputs, detection on every `location`, roam
 * (device proximity) and order arrival. Emits on stream `geofence`.
 *
 * Inputs: geofence.define, geofence.delete (control), location, order.
 * Key layouts: geofence_int.h. Rules of geometry: geo.h.
 *
 * Semantics (README, "Geofencing"):
 *  - State per (device, fence): outside (no record), pending (inside but
 *    min_dwell_s not yet elapsed) or inside, since when. A fix inside a
 *    fence makes it pending, or inside at once when min_dwell_s is 0; a
 *    pending fence becomes inside (geofence.enter) at the first fix still
 *    inside at least min_dwell_s after it became pending; a fix outside
 *    drops a pending fence silently. An inside fence exits (geofence.exit
 *    with dwell_s) at the first fix farther than margin_m outside its
 *    boundary (margin 0: any fix outside); likewise a pending fence is
 *    dropped only by a fix farther than margin_m outside, so GPS jitter
 *    along the border neither flaps nor restarts the dwell.
 *  - A fix older than the device's last fix is ignored (late). A fix with
 *    accuracy > max_accuracy_m of a fence changes nothing for that fence.
 *  - geofence.inside: every fix inside a fence that asks for it (after its
 *    enter). geofence.outside: every fix of a device matching the fence's
 *    `devices` filter (required for `outside`) that is not inside it.
 *    geofence.cross: the segment from the previous fix to this one touches
 *    a fence that contains neither fix.
 *  - Redefining a fence takes effect at once for new fixes; devices inside
 *    are re-evaluated at their next fix against the new definition.
 *    Deleting it emits geofence.exit (reason "deleted") for the devices
 *    inside (up to GF_DELETE_EXITS_MAX; any other at its next fix).
 *  - Emission order for one fix: memberships in fence id order (exit,
 *    enter, inside), then new fences in id order, cross, outside, roam
 *    (nearby/faraway), order.arrived — every list sorted by id, so the
 *    order never depends on the in-memory index.
 *
 * In memory: every fence (geometry + options) and the grid index, rebuilt
 * in open from geofence.fences/geom, so an aborted batch is forgotten.
 */
#include "geofence_int.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const consumes[] = {"geofence.define", "geofence.delete", "location", "order",
                                       NULL};
/* Read from the payload's bytes, not decoded by the engine (location_fields). */
static const char *const raw_inputs[] = {"location", NULL};
static const char *const emits[] = {
    "geofence.enter",  "geofence.exit",    "geofence.inside",  "geofence.outside", "geofence.cross",
    "geofence.nearby", "geofence.faraway", "geofence.refused", "order.arrived",    NULL};
const char *const gf_hit_names[] = {"",        "enter", "exit",   "inside",
                                    "outside", "cross", "nearby", "faraway"};
static const char *const hit_types[] = {"",
                                        "geofence.enter",
                                        "geofence.exit",
                                        "geofence.inside",
                                        "geofence.outside",
                                        "geofence.cross",
                                        "geofence.nearby",
                                        "geofence.faraway"};
static const char *const detect_names[] = {"enter", "exit", "inside", "outside", "cross"};

/* ====================================================================== in-memory fences */

struct fence {
    char *id; /* NULL: free slot */
    uint8_t idlen;
    uint32_t tenant;
    uint8_t detect;
    struct geo_shape shape;
    int64_t dwell_ns;
    double margin, max_acc;
    uint16_t nfilters;
    char **filters; /* "abc" exact, "abc*" prefix */
    char *target;   /* roam */
    uint32_t next_free;
};

struct tenant {
    char name[CAIRN_TENANT_MAX + 1];
    uint8_t tn;
    uint32_t nfences, ncross;
    uint32_t noutside, nroam;
    uint32_t outside[GF_OUTSIDE_PER_TENANT_MAX];
    uint32_t roam[GF_ROAM_PER_TENANT_MAX];
    int64_t open_orders;
};

/* Times as cairn_time_format writes them, with the date and time of day
 * of the last whole second kept (every hit packs one or two times, most
 * of them in the second before): only the fraction is formatted again.
 * Falls back to cairn_time_format when the second's string is not the
 * plain "YYYY-MM-DDTHH:MM:SSZ" (years outside 0..9999). */
struct tcache {
    int64_t secs;
    uint8_t n; /* 0: empty; else the length of s, without the 'Z' */
    char s[MPD_TIME_MAX];
};

/* deferred writes (see "deferred writes" below); the queues' kinds (hitq,
 * insq, posq) are added in key order */
enum { PW_HITS, PW_DHITS, PW_INSIDE, PW_POS, PW_HITQ, PW_INSQ, PW_POSQ, PW_KINDS };
#define PW_QUEUE(kind) ((kind) >= PW_HITQ)

/* The queued sets (geofence_int.h, layout 5): inside and pos, each with
 * its queue of operations */
enum { OQ_INSIDE, OQ_POS, OQ_KINDS };
struct opq {
    unsigned qdb; /* the queue (its kind of deferred writes: opq_qk) */
    size_t n;     /* operations queued (pending puts to qdb included) */
};
#define PEND_BYTES_MAX (64u << 20)

struct pw {
    uint32_t koff, voff; /* in g->pbuf */
    uint32_t seq;        /* the order of the writes: the last of one key counts */
    uint16_t kn, vn;
    bool del;
};

/* The steps of the prefetch chain, and the inputs it keeps (gf_prefetch). */
#define PF_STEPS 4

struct gf {
    unsigned fences, geom, dev, inside, hits, dhits, hitq, pos, near, orders, oby, meta;
    struct hlayout layout; /* geofence.meta "layout" is GF_LAYOUT */
    double arrival_default;
    struct fence *f;
    uint32_t nf, capf, free_head; /* free list through next_free, UINT32_MAX: none */
    uint32_t *idmap;              /* open addressing: slot + 1, 0 empty */
    size_t idcap, idused;
    struct tenant **t;
    uint32_t nt;
    struct geo_index *ix;
    struct geo_pool *pool; /* the fences' ids and geometry (geo.h) */
    /* Bumped whenever a fence slot is taken or freed: the membership
     * slots cached in the device table (struct gdev) are valid while it
     * is unchanged. Starts at 1 (0 marks an entry without slots). */
    uint32_t fgen;
    uint32_t *cand;
    size_t candcap;
    uint32_t *mark; /* per slot: epoch when in the current fix's inside set */
    /* per slot: the fence's raster (geo.h); its user byte is 1 when the
     * fence has a devices filter or max_accuracy_m (see applies) */
    struct geo_raster *raster;
    uint32_t epoch;
    struct cairn_buf rec, tmp;
    struct tcache tc; /* emit_hit's times */
    struct mem *mems; /* GF_MEMBERSHIPS_MAX + 1: a device's memberships while applying */
    /* the device table (below): open addressing over pointers */
    struct gdev **dtab;
    size_t dcap, dused, dbytes;
    struct chunk *arena; /* the entries and records (dev_alloc) */
    struct gdev **dirty; /* changed since the last write-back */
    size_t ndirty, dirtycap;
    size_t dev_max;   /* records the table holds (config device_cache_max) */
    size_t defer_max; /* writes kept for the flush (config defer_max) */
    size_t nq;        /* hits in geofence.hitq (pending puts included) */
    size_t hitq_max;  /* then merged into hits and dhits (config hitq_max) */
    struct opq oq[OQ_KINDS];
    size_t opq_max; /* operations queued in insq or posq before a merge (config opq_max) */
    /* deferred writes (below): per kind, then the keys and values */
    struct pend {
        struct pw *w;
        size_t n, cap;
    } pend[PW_KINDS];
    struct cairn_buf pbuf;
    uint32_t pseq;
    /* the prefetch pipeline (gf_prefetch): the last PF_STEPS inputs it saw */
    struct pf {
        uint64_t h;     /* the device key's hash */
        size_t dcap;    /* the table's size then (0: no entry) */
        struct gdev *d; /* its entry, once step 2 found it */
        uint64_t dgen;  /* dgen then: d is valid while it is unchanged */
    } pf[PF_STEPS];
    unsigned npf;
    uint64_t dgen; /* bumped when the device table is emptied (dev_drop) */
    struct watch {
        uint32_t *c; /* counters (NULL: every device may have orders) */
        size_t cap;  /* a power of two */
        uint64_t n;  /* oby's entries */
    } watch;
    struct hcache ocache; /* order records (struct ordent), written back by flush */
    size_t ocache_max;    /* past it, emptied after a flush (config order_cache_max) */
};

struct mem;
static struct mem *mems_alloc(void);

static struct gf *self(struct hctx *ctx)
{
    return *hctx_user(ctx);
}

static uint64_t hash_id(uint32_t tenant, const char *id, size_t n)
{
    uint64_t h = 1469598103934665603ULL ^ tenant;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)id[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static int tenant_get(struct gf *g, const struct cairn_str *name, bool create, uint32_t *out)
{
    for (uint32_t i = 0; i < g->nt; i++)
        if (g->t[i]->tn == name->n && !memcmp(g->t[i]->name, name->p, name->n)) {
            *out = i;
            return 0;
        }
    if (!create)
        return CAIRN_ENOTFOUND;
    if (name->n > CAIRN_TENANT_MAX || g->nt >= (1u << 20))
        return CAIRN_ETOOBIG;
    struct tenant **p = realloc(g->t, (g->nt + 1) * sizeof *p);
    if (!p)
        return CAIRN_ENOMEM;
    g->t = p;
    struct tenant *t = calloc(1, sizeof *t);
    if (!t)
        return CAIRN_ENOMEM;
    memcpy(t->name, name->p, name->n);
    t->tn = (uint8_t)name->n;
    g->t[g->nt] = t;
    *out = g->nt++;
    return 0;
}

static uint32_t fence_find(struct gf *g, uint32_t tenant, const char *id, size_t n)
{
    if (!g->idcap)
        return UINT32_MAX;
    size_t m = g->idcap - 1;
    for (size_t i = hash_id(tenant, id, n) & m;; i = (i + 1) & m) {
        uint32_t s = g->idmap[i];
        if (!s)
            return UINT32_MAX;
        struct fence *f = &g->f[s - 1];
        if (f->tenant == tenant && f->idlen == n && !memcmp(f->id, id, n))
            return s - 1;
    }
}

static int idmap_grow(struct gf *g)
{
    if ((g->idused + 1) * 2 < g->idcap)
        return 0;
    size_t cap = g->idcap ? g->idcap * 2 : 1024;
    uint32_t *m = calloc(cap, sizeof *m);
    if (!m)
        return CAIRN_ENOMEM;
    for (size_t i = 0; i < g->idcap; i++)
        if (g->idmap[i]) {
            struct fence *f = &g->f[g->idmap[i] - 1];
            size_t j = hash_id(f->tenant, f->id, f->idlen) & (cap - 1);
            while (m[j])
                j = (j + 1) & (cap - 1);
            m[j] = g->idmap[i];
        }
    free(g->idmap);
    g->idmap = m;
    g->idcap = cap;
    return 0;
}

static void idmap_put(struct gf *g, uint32_t slot)
{
    struct fence *f = &g->f[slot];
    size_t m = g->idcap - 1, i = hash_id(f->tenant, f->id, f->idlen) & m;
    while (g->idmap[i])
        i = (i + 1) & m;
    g->idmap[i] = slot + 1;
    g->idused++;
}

/* Linear probing deletion by backward shift. */
static void idmap_del(struct gf *g, uint32_t slot)
{
    size_t m = g->idcap - 1, i = 0;
    struct fence *f = &g->f[slot];
    for (i = hash_id(f->tenant, f->id, f->idlen) & m; g->idmap[i] != slot + 1; i = (i + 1) & m)
        ;
    g->idmap[i] = 0;
    g->idused--;
    for (size_t j = (i + 1) & m; g->idmap[j]; j = (j + 1) & m) {
        struct fence *h = &g->f[g->idmap[j] - 1];
        size_t home = hash_id(h->tenant, h->id, h->idlen) & m;
        /* move j to i when home is not in (i, j] (cyclically) */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            g->idmap[i] = g->idmap[j];
            g->idmap[j] = 0;
            i = j;
        }
    }
}

static void fence_release(struct gf *g, struct fence *f)
{
    if (f->id)
        geo_pool_put(g->pool, f->id, (size_t)f->idlen + 1);
    for (uint16_t i = 0; i < f->nfilters; i++)
        free(f->filters[i]);
    free(f->filters);
    free(f->target);
    geo_shape_free(&f->shape);
    memset(f, 0, sizeof *f);
}

static void list_del(uint32_t *list, uint32_t *n, uint32_t slot)
{
    for (uint32_t i = 0; i < *n; i++)
        if (list[i] == slot) {
            list[i] = list[--*n];
            return;
        }
}

static void fence_remove(struct gf *g, uint32_t slot)
{
    struct fence *f = &g->f[slot];
    struct tenant *t = g->t[f->tenant];
    idmap_del(g, slot);
    if (f->shape.kind != GEO_ROAM)
        geo_index_del(g->ix, f->tenant, slot, &f->shape);
    else
        list_del(t->roam, &t->nroam, slot);
    if (f->detect & D_OUTSIDE)
        list_del(t->outside, &t->noutside, slot);
    if (f->detect & D_CROSS)
        t->ncross--;
    t->nfences--;
    g->fgen++;
    fence_release(g, f);
    f->next_free = g->free_head;
    g->free_head = slot;
}

static int slot_alloc(struct gf *g, uint32_t *out)
{
    if (g->free_head != UINT32_MAX) {
        *out = g->free_head;
        g->free_head = g->f[*out].next_free;
        return 0;
    }
    if (g->nf == g->capf) {
        /* on huge pages (geo.h): fences, marks and rasters are read at
         * random on every fix */
        uint32_t cap = g->capf ? g->capf * 2 : 1024;
        struct fence *f = geo_huge_alloc(cap * sizeof *f);
        uint32_t *mk = geo_huge_alloc(cap * sizeof *mk);
        struct geo_raster *rs = geo_huge_alloc(cap * sizeof *rs);
        if (!f || !mk || !rs) {
            geo_huge_free(f, cap * sizeof *f);
            geo_huge_free(mk, cap * sizeof *mk);
            geo_huge_free(rs, cap * sizeof *rs);
            return CAIRN_ENOMEM;
        }
        if (g->capf) {
            memcpy(f, g->f, g->capf * sizeof *f);
            memcpy(mk, g->mark, g->capf * sizeof *mk);
            memcpy(rs, g->raster, g->capf * sizeof *rs);
        }
        geo_huge_free(g->f, g->capf * sizeof *f);
        geo_huge_free(g->mark, g->capf * sizeof *mk);
        geo_huge_free(g->raster, g->capf * sizeof *rs);
        g->f = f, g->mark = mk, g->raster = rs;
        g->capf = cap;
    }
    memset(&g->f[g->nf], 0, sizeof g->f[g->nf]);
    *out = g->nf++;
    return 0;
}

/* ====================================================================== the device table */

/*
 * Every fix reads and rewrites its device's record (position, time,
 * memberships). Through LMDB that was a get and a put per fix, a fifth of
 * the handler's instructions. Instead the records live in memory, keyed
 * and encoded exactly like geofence.dev, and the ones a state transaction
 * changed are written back once per transaction, in flush (sorted by key,
 * so the puts walk the B-tree in order): the get is gone, and a device
 * reporting several times in one transaction is put once. After each flush the table equals
 * the DBI, so it survives commits; an aborted transaction drops it with
 * the handler (the engine's close/open). Readers of geofence.dev inside
 * apply (roam, delete) go through the table too. Bounded: past
 * device_cache_max records (config; default and ceiling GF_DEV_CACHE_MAX)
 * or GF_DEV_CACHE_BYTES, the dirty records are written and the table is
 * emptied (in apply, between two fixes).
 */
struct gdev {
    uint64_t h;
    /* the geofence.dev value (NULL: the device has none), then, at
     * REC_SLOTS(reclen), the fence slot of each membership in record
     * order when slotgen equals the handler's fgen (0: none) */
    uint8_t *rec;
    uint32_t reclen, reccap;
    uint32_t slotgen;
    struct geo_hint hint; /* the device's last index query (geo.h) */
    uint16_t kn;
    bool dirty;
    uint8_t key[]; /* the geofence.dev key */
};

#define REC_SLOTS(n) (((size_t)(n) + 3) & ~(size_t)3)
/* A geofence.dev record: version 1 | lat f64 | lon f64 | time u64 | the
 * membership count u16 (at 25) | the memberships (rec_write). */
#define REC_HEAD 27

static uint32_t rec_count(const uint8_t *p)
{
    return (uint32_t)p[25] << 8 | p[26];
}

static struct gdev **dev_slot(struct gf *g, const uint8_t *k, size_t n, uint64_t h)
{
    size_t m = g->dcap - 1;
    for (size_t i = h & m;; i = (i + 1) & m) {
        struct gdev *d = g->dtab[i];
        if (!d || (d->h == h && d->kn == n && !memcmp(d->key, k, n)))
            return &g->dtab[i];
    }
}

static struct gdev *dev_find(struct gf *g, const uint8_t *k, size_t n)
{
    return g->dcap ? *dev_slot(g, k, n, hcache_hash(k, n)) : NULL;
}

/* The write-back order is LMDB's key order (memcmp, then length): records
 * and deferred writes (below) are sorted with cairn_ksort (common.h), by
 * 16 key bytes past those every key shares, then runs that tie by a full
 * comparison (the keys, then what the caller adds). */

/* cairn_ksort's key and cmp of device entries: by key. */
static const uint8_t *key_ks_dev(const void *p, size_t *n, void *arg)
{
    (void)arg;
    const struct gdev *d = p;
    *n = d->kn;
    return d->key;
}

static int cmp_ks_dev(const void *a, const void *b, void *arg)
{
    (void)arg;
    const struct gdev *p = ((const struct cairn_ksort *)a)->p,
                      *q = ((const struct cairn_ksort *)b)->p;
    return gf_cmp_keys(p->key, p->kn, q->key, q->kn);
}

/* How far ahead dev_writeback and pend_apply load what a later put reads
 * (an LMDB put takes ~0.3 us, a miss ~0.1). */
#define WB_AHEAD 8

/* Writes the changed records to geofence.dev. */
static int dev_writeback(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    /* without memory unsorted: the same puts, only slower */
    if (!cairn_ksort_ptrs(g->dirty, g->ndirty, key_ks_dev, cmp_ks_dev, NULL))
        for (size_t i = 1; i < g->ndirty; i++)
            assert(gf_cmp_keys(g->dirty[i - 1]->key, g->dirty[i - 1]->kn, g->dirty[i]->key,
                               g->dirty[i]->kn) < 0);
    /* through one cursor: in key order most puts stay on its leaf */
    struct hcursor *c = NULL;
    int rc = g->ndirty ? hctx_cursor_open(ctx, g->dev, NULL, 0, &c) : 0;
    size_t i = 0;
    for (; i < g->ndirty && !rc; i++) {
        struct gdev *d = g->dirty[i];
        /* In key order the entries are scattered over the table's chunks:
         * the entry (its key is on its second line) WB_AHEAD ahead, its
         * record when that entry is half way. */
        if (i + WB_AHEAD < g->ndirty) {
            const char *e = (const char *)g->dirty[i + WB_AHEAD];
            __builtin_prefetch(e);
            __builtin_prefetch(e + 64);
        }
        if (i + WB_AHEAD / 2 < g->ndirty && g->dirty[i + WB_AHEAD / 2]->rec)
            __builtin_prefetch(g->dirty[i + WB_AHEAD / 2]->rec);
        rc = hctx_cursor_put(c, d->key, d->kn, d->rec, d->reclen);
        d->dirty = false;
    }
    hctx_cursor_close(c);
    for (; i < g->ndirty; i++) /* after a failure the transaction aborts */
        g->dirty[i]->dirty = false;
    g->ndirty = 0;
    return rc;
}

/* ====================================================================== deferred writes */

/*
 * The writes of hitq, hits, dhits, inside and pos are not made as the fixes come
 * but kept (key, value, order) and made in flush, sorted by key like the
 * device records: each such put or delete went down the B-tree from the
 * root to a random page; in key order the descents share their upper
 * pages and LMDB's dirty-page list lookups their neighbours, and repeated
 * writes of one key in a transaction (an inside entry put and deleted, a
 * device's grid cell left twice) collapse to the last. The state at the
 * commit is the same. Inside apply, a read of one of these DBIs (a fence
 * deleted reads inside; roam reads pos; a merge reads hitq) makes that
 * DBI's pending writes first (pend_apply). Bounded: past PEND_BYTES_MAX of keys and values, or
 * GF_DEFER_MAX writes waiting with the device records (maybe_drain), they
 * are made in apply, between two fixes.
 */
static int pend_apply_all(struct hctx *ctx);

/* Appends to the pending writes' buffer (its capacity stays from one
 * transaction to the next: growing it is rare). */
static int pbuf_put(struct gf *g, const void *p, size_t n, uint32_t *off)
{
    struct cairn_buf *b = &g->pbuf;
    *off = (uint32_t)b->len;
    if (b->cap - b->len < n)
        return cairn_buf_append(b, p, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* Keeps v[0..n) for pending writes (*off: where). */
static int pend_value(struct hctx *ctx, const void *v, size_t n, uint32_t *off)
{
    struct gf *g = self(ctx);
    int rc = 0;
    if (g->pbuf.len + n + 3 * (GF_KEY_MAX + 1) > PEND_BYTES_MAX && (rc = pend_apply_all(ctx)))
        return rc;
    return pbuf_put(g, v, n, off);
}

/* A pending put of k (value at voff, vn bytes: pend_value) or delete. */
static int pend_add(struct hctx *ctx, int kind, const struct gf_key *k, uint32_t voff, size_t vn,
                    bool del)
{
    struct gf *g = self(ctx);
    struct pend *pd = &g->pend[kind];
    int rc = 0;
    /* a put's value is kept by pend_value, which left room for its keys
     * (a hit's dseq: two) */
    if (del && g->pbuf.len + k->n > PEND_BYTES_MAX && (rc = pend_apply_all(ctx)))
        return rc;
    if (pd->n == pd->cap) {
        size_t cap = pd->cap ? pd->cap * 2 : 4096;
        struct pw *p = realloc(pd->w, cap * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        pd->w = p;
        pd->cap = cap;
    }
    struct pw *w = &pd->w[pd->n];
    if ((rc = pbuf_put(g, k->b, k->n, &w->koff)))
        return rc;
    w->voff = voff;
    w->kn = (uint16_t)k->n;
    w->vn = (uint16_t)vn;
    w->del = del;
    w->seq = g->pseq++;
    pd->n++;
    return 0;
}

/* cairn_ksort's key and cmp of deferred writes (keys at arg + koff): by
 * key, then in the order they were made. */
static const uint8_t *key_ks_pw(const void *p, size_t *n, void *arg)
{
    const struct pw *w = p;
    *n = w->kn;
    return (const uint8_t *)arg + w->koff;
}

static int cmp_ks_pw(const void *a, const void *b, void *arg)
{
    const struct pw *p = ((const struct cairn_ksort *)a)->p,
                    *q = ((const struct cairn_ksort *)b)->p;
    const uint8_t *base = arg;
    int c = gf_cmp_keys(base + p->koff, p->kn, base + q->koff, q->kn);
    return c ? c : p->seq < q->seq ? -1 : p->seq > q->seq;
}

/* Makes the pending writes of one kind, in key order. */
static int pend_apply(struct hctx *ctx, int kind)
{
    struct gf *g = self(ctx);
    struct pend *pd = &g->pend[kind];
    unsigned db = kind == PW_HITS     ? g->hits
                  : kind == PW_DHITS  ? g->dhits
                  : kind == PW_INSIDE ? g->inside
                  : kind == PW_HITQ   ? g->hitq
                  : kind == PW_INSQ   ? g->oq[OQ_INSIDE].qdb
                  : kind == PW_POSQ   ? g->oq[OQ_POS].qdb
                                      : g->pos;
    if (!pd->n)
        return 0;
    const uint8_t *base = g->pbuf.data;
    /* a queue's puts come in key order: no sort (o NULL: in their order) */
    struct cairn_ksort *o = PW_QUEUE(kind) ? NULL : malloc(pd->n * sizeof *o);
    if (o) {
        for (size_t i = 0; i < pd->n; i++)
            o[i].p = &pd->w[i];
        cairn_ksort(o, pd->n, key_ks_pw, cmp_ks_pw, (void *)base);
    }
    /* puts through one cursor (in key order most stay on its leaf);
     * deletes by key (LMDB keeps the cursor valid across them) */
    struct hcursor *c = NULL;
    int rc = hctx_cursor_open(ctx, db, NULL, 0, &c);
    for (size_t i = 0; i < pd->n && !rc; i++) {
        const struct pw *w = o ? o[i].p : &pd->w[i]; /* no memory: in their order */
        /* sorted, the writes and their bytes are scattered: the write
         * 2 * WB_AHEAD ahead, then its key and value WB_AHEAD ahead */
        if (o && i + 2 * WB_AHEAD < pd->n)
            __builtin_prefetch(o[i + 2 * WB_AHEAD].p);
        if (o && i + WB_AHEAD < pd->n) {
            const struct pw *a = o[i + WB_AHEAD].p;
            __builtin_prefetch(base + a->koff);
            __builtin_prefetch(base + a->voff);
        }
        assert(o || !PW_QUEUE(kind) || i == 0 ||
               gf_cmp_keys(base + pd->w[i - 1].koff, pd->w[i - 1].kn, base + w->koff, w->kn) < 0);
        if (o && i + 1 < pd->n) {
            const struct pw *nx = o[i + 1].p;
            int ord = gf_cmp_keys(base + w->koff, w->kn, base + nx->koff, nx->kn);
            /* the sort's order (cmp_ks_pw), checked on the one comparison
             * of each pair (a second one was 2 % of a fix's CPU) */
            assert(ord < 0 || (ord == 0 && w->seq < nx->seq));
            if (!ord)
                continue; /* a later write of the same key */
        }
        rc = w->del ? hctx_del(ctx, db, base + w->koff, w->kn)
                    : hctx_cursor_put(c, base + w->koff, w->kn, base + w->voff, w->vn);
    }
    hctx_cursor_close(c);
    free(o);
    pd->n = 0;
    bool empty = true;
    for (int k = 0; k < PW_KINDS; k++)
        empty &= !g->pend[k].n;
    if (empty) {
        cairn_buf_reset(&g->pbuf);
        g->pseq = 0;
    }
    return rc;
}

static int pend_apply_all(struct hctx *ctx)
{
    int rc = 0;
    for (int k = 0; k < PW_KINDS && !rc; k++)
        rc = pend_apply(ctx, k);
    return rc;
}

/* ====================================================================== queued sets */

/*
 * inside and pos are sets that every fix may change (an enter puts, an
 * exit deletes; a device changing grid cell deletes one key and puts
 * another), at random keys: even sorted at the flush, a transaction of
 * 65 536 fixes rewrote nearly every leaf of both trees (bench/geofence:
 * 0.4 of ~3.2 us of CPU per fix). So, as hits are queued in hitq (emit_hit),
 * their operations are queued (layout 5): each set has a queue DBI, insq
 * and posq, keyed by the operation's number in the queue (u64 BE, from 0:
 * appended), the value
 *
 *   op u8 (1 put, 0 delete) | kn u16 BE | the set's key | the put's value
 *
 * When opq_max operations (config; default and ceiling GF_OPQ_MAX) have
 * queued, they are applied to the set in key order (the last of one key
 * wins) and the queue is emptied: each leaf of the set is rewritten once
 * per merge, and the queue's pages once when written and once when
 * emptied. Readers of a set inside apply (roam reads pos, a fence deleted
 * reads inside) merge its queue first; a query (routes.c) reads the queue
 * too. Merges happen at inputs (the operation that fills the queue, a roam
 * fix, a delete), never at transaction boundaries, so the state depends
 * only on the inputs: live, cairn replay and replays in chunks agree.
 */
static const int opq_pk[OQ_KINDS] = {PW_INSIDE, PW_POS}, opq_qk[OQ_KINDS] = {PW_INSQ, PW_POSQ};

static int opq_merge(struct hctx *ctx, int q);

/* Queues a put of k (value v[0..vn)) or a delete of k in set q. */
static int opq_add(struct hctx *ctx, int q, const struct gf_key *k, const void *v, size_t vn,
                   bool del)
{
    struct gf *g = self(ctx);
    struct opq *o = &g->oq[q];
    uint8_t buf[3 + GF_KEY_MAX + 8];
    assert(vn <= 8 && k->n <= GF_KEY_MAX);
    buf[0] = del ? 0 : 1;
    buf[1] = (uint8_t)(k->n >> 8);
    buf[2] = (uint8_t)k->n;
    memcpy(buf + 3, k->b, k->n);
    if (vn)
        memcpy(buf + 3 + k->n, v, vn);
    struct gf_key qk;
    qk.n = 0;
    qk.over = false;
    gk_be64(&qk, o->n);
    uint32_t voff;
    int rc = pend_value(ctx, buf, 3 + k->n + vn, &voff);
    if (!rc)
        rc = pend_add(ctx, opq_qk[q], &qk, voff, 3 + k->n + vn, false);
    if (rc)
        return rc;
    return ++o->n < g->opq_max ? 0 : opq_merge(ctx, q);
}

/* Moves one queued operation (at pbuf offset voff, vn bytes) to the set's
 * deferred writes. */
static int opq_move(struct hctx *ctx, int q, uint32_t voff, size_t vn)
{
    struct gf *g = self(ctx);
    const uint8_t *v = g->pbuf.data + voff;
    if (!gf_opq_ok(v, vn))
        return CAIRN_ECORRUPT;
    size_t kn = (size_t)v[1] << 8 | v[2];
    struct gf_key k;
    k.n = 0;
    k.over = false;
    gk_raw(&k, v + 3, kn);
    /* the value stays where it is in pbuf */
    return pend_add(ctx, opq_pk[q], &k, voff + 3 + (uint32_t)kn, vn - 3 - kn, !v[0]);
}

/* Applies set q's queued operations (as deferred writes of the set, made
 * in key order at the flush) and empties the queue: first the ones in the
 * queue DBI, then the pending ones (queued after them), which never reach
 * it. */
static int opq_merge(struct hctx *ctx, int q)
{
    struct gf *g = self(ctx);
    struct opq *o = &g->oq[q];
    struct pend *pq = &g->pend[opq_qk[q]];
    int rc = 0;
    size_t moved = 0; /* from the DBI */
    while (!rc && o->n) {
        if (o->n - moved > pq->n) { /* some are in the DBI */
            struct hcursor *c = NULL;
            MDB_val k, v;
            rc = hctx_cursor_open(ctx, o->qdb, NULL, 0, &c);
            while (!rc && !(rc = hctx_cursor_next(c, &k, &v))) {
                uint32_t voff;
                if (k.mv_size != 8 || !gf_opq_ok(v.mv_data, v.mv_size)) {
                    rc = CAIRN_ECORRUPT;
                    break;
                }
                /* copied: v is valid until a write. (pend_value may make
                 * every pending write, the queue's included: those are
                 * then in the DBI, after the cursor, and read here.) */
                if ((rc = pend_value(ctx, v.mv_data, v.mv_size, &voff)) ||
                    (rc = opq_move(ctx, q, voff, v.mv_size)))
                    break;
                moved++;
            }
            hctx_cursor_close(c);
            if (rc == CAIRN_ENOTFOUND) /* every entry read: emptied at once */
                rc = hctx_clear(ctx, o->qdb);
        }
        /* the pending ones: their keys must fit pbuf without pend_add
         * making the pending writes midway (else they go to the DBI
         * first, and are read from there) */
        if (rc || g->pbuf.len + pq->n * (GF_KEY_MAX + 1) <= PEND_BYTES_MAX)
            break;
        rc = pend_apply_all(ctx);
    }
    for (size_t i = 0; i < pq->n && !rc; i++)
        rc = opq_move(ctx, q, pq->w[i].voff, pq->w[i].vn);
    assert(rc || moved + pq->n == o->n);
    pq->n = 0;
    o->n = 0;
    return rc;
}

/* Entries and records come from chunks of huge pages (geo.h), bump
 * allocated and freed together by dev_drop: the entry and record of a
 * device sit side by side, and reading them misses the TLB less. A record
 * that outgrows its room moves to a new one (the old room is counted in
 * dbytes until the table is emptied). */
struct chunk {
    struct chunk *next;
    size_t size, used;
};
#define CHUNK_BYTES (32u << 20)

static void *dev_alloc(struct gf *g, size_t n)
{
    n = (n + 15) & ~(size_t)15;
#ifdef GEO_ASAN /* a block per allocation, so the sanitizer checks each */
    struct chunk *b = calloc(1, 64 + n);
    if (!b)
        return NULL;
    b->size = 64 + n;
    b->next = g->arena;
    g->arena = b;
    return (uint8_t *)b + 64;
#endif
    struct chunk *c = g->arena;
    if (!c || c->size - c->used < n) {
        size_t size = n + 64 > CHUNK_BYTES ? n + 64 : CHUNK_BYTES;
        if (!(c = geo_huge_alloc(size)))
            return NULL;
        c->size = size;
        c->used = 64; /* the header, then 16-byte aligned blocks */
        c->next = g->arena;
        g->arena = c;
    }
    void *p = (uint8_t *)c + c->used;
    c->used += n;
    return p;
}

static void dev_drop(struct gf *g)
{
    g->dgen++;
    while (g->arena) {
        struct chunk *c = g->arena;
        g->arena = c->next;
#ifdef GEO_ASAN
        free(c);
#else
        geo_huge_free(c, c->size);
#endif
    }
    geo_huge_free(g->dtab, g->dcap * sizeof *g->dtab);
    free(g->dirty);
    g->dtab = NULL;
    g->dirty = NULL;
    g->dcap = g->dused = g->dbytes = g->ndirty = g->dirtycap = 0;
}

static int dev_grow(struct gf *g)
{
    if (g->dcap && (g->dused + 1) * 2 < g->dcap)
        return 0;
    size_t cap = g->dcap ? g->dcap * 2 : 4096;
    struct gdev **t = geo_huge_alloc(cap * sizeof *t), **old = g->dtab;
    if (!t)
        return CAIRN_ENOMEM;
    size_t ocap = g->dcap;
    g->dtab = t;
    g->dcap = cap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i])
            *dev_slot(g, old[i]->key, old[i]->kn, old[i]->h) = old[i];
    geo_huge_free(old, ocap * sizeof *old);
    return 0;
}

/* The device's entry, loaded from geofence.dev on a miss. Valid until the
 * next dev_get (which may empty the table). */
static int dev_get(struct hctx *ctx, const struct gf_key *k, struct gdev **out)
{
    struct gf *g = self(ctx);
    uint64_t h = hcache_hash(k->b, k->n);
    struct gdev **slot = g->dcap ? dev_slot(g, k->b, k->n, h) : NULL;
    if (slot && *slot) {
        *out = *slot;
        return 0;
    }
    int rc = 0;
    if (g->dused >= g->dev_max || g->dbytes >= GF_DEV_CACHE_BYTES) {
        if ((rc = dev_writeback(ctx)))
            return rc;
        dev_drop(g);
    }
    if ((rc = dev_grow(g)))
        return rc;
    MDB_val v;
    rc = hctx_get(ctx, g->dev, k->b, k->n, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    /* the entry, then room for the record: 64 bytes more than it needs
     * now (arena memory is zeroed) */
    size_t dn = (sizeof(struct gdev) + k->n + 15) & ~(size_t)15;
    size_t rn = rc ? 64 : (v.mv_size + 64 + 15) & ~(size_t)15;
    struct gdev *d = dev_alloc(g, dn + rn);
    if (!d)
        return CAIRN_ENOMEM;
    d->reccap = (uint32_t)rn;
    if (!rc) {
        d->rec = (uint8_t *)d + dn;
        memcpy(d->rec, v.mv_data, v.mv_size);
        d->reclen = (uint32_t)v.mv_size;
    }
    d->h = h;
    d->kn = (uint16_t)k->n;
    memcpy(d->key, k->b, k->n);
    *dev_slot(g, k->b, k->n, h) = d;
    g->dused++;
    g->dbytes += dn + rn + 2 * sizeof d;
    *out = d;
    return 0;
}

/* The device's current record without caching it: *p valid until the
 * next write. CAIRN_ENOTFOUND when it has none. */
static int dev_peek(struct hctx *ctx, const struct gf_key *k, const uint8_t **p, size_t *n)
{
    struct gf *g = self(ctx);
    struct gdev *d = dev_find(g, k->b, k->n);
    if (d) {
        *p = d->rec;
        *n = d->reclen;
        return d->rec ? 0 : CAIRN_ENOTFOUND;
    }
    MDB_val v;
    int rc = hctx_get(ctx, g->dev, k->b, k->n, &v);
    *p = v.mv_data;
    *n = v.mv_size;
    return rc;
}

/* Replaces the entry's record with rec[0..n) and marks it for write-back;
 * keeps the memberships' fence slots (nslots of them, in record order)
 * when slots is not NULL. */
static int dev_store(struct gf *g, struct gdev *d, const uint8_t *rec, size_t n,
                     const uint32_t *slots, uint32_t nslots)
{
    size_t need = slots ? REC_SLOTS(n) + (size_t)nslots * 4 : n;
    if (!d->rec && need <= d->reccap) {
        d->rec = (uint8_t *)d + ((sizeof(struct gdev) + d->kn + 15) & ~(size_t)15);
    } else if (need > d->reccap) {
        size_t cap = (need + 63) & ~(size_t)63;
        uint8_t *p = dev_alloc(g, cap);
        if (!p)
            return CAIRN_ENOMEM;
        g->dbytes += cap;
        d->rec = p;
        d->reccap = (uint32_t)cap;
    }
    memcpy(d->rec, rec, n);
    d->reclen = (uint32_t)n;
    d->slotgen = slots ? g->fgen : 0;
    if (slots && nslots)
        memcpy(d->rec + REC_SLOTS(n), slots, (size_t)nslots * 4);
    if (d->dirty)
        return 0;
    if (g->ndirty == g->dirtycap) {
        size_t cap = g->dirtycap ? g->dirtycap * 2 : 1024;
        struct gdev **p = realloc(g->dirty, cap * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        g->dirty = p;
        g->dirtycap = cap;
    }
    g->dirty[g->ndirty++] = d;
    d->dirty = true;
    return 0;
}

/* ====================================================================== order records
 *
 * geofence.orders holds, per order, the device it is assigned to, its
 * destination and arrival radius, and whether it arrived or closed (a
 * small msgpack map). Every order event read it and wrote it back (a get,
 * a decode, a put: three state calls under the state lock in a parallel
 * apply), and every fix of a device with open orders read those of its
 * orders. Now the records are kept in memory between flushes, as the
 * order view keeps its documents (handler.h, struct hcache): read from
 * the DBI on first use, replaced in memory, written back once per
 * transaction by gf_flush, in key order — the same bytes at the commit.
 * bench/replay, 1M events: the handler's state calls went from 366 000
 * to 189 000, its apply CPU from 0.59 to 0.50 s; the whole replay's time
 * moved within the machine's noise (medians of 8 and 10 alternated runs:
 * 1.52 -> 1.54 s and 1.65 -> 1.57 s). Without this handler's order
 * events at all it took 0.37 s of CPU less: most of the rest is oby,
 * the arrivals' checks and what they emit. */

struct ordent {
    struct hentry e; /* mem: the key, then the record (when `exists`) */
    bool exists;
};

/* The record of order key k (exists false: none yet). */
static int ord_get(struct hctx *ctx, const struct gf_key *k, struct ordent **out)
{
    struct gf *g = self(ctx);
    struct hentry *e;
    bool fresh;
    int rc = hcache_get_or_new(&g->ocache, k->b, k->n, sizeof(struct ordent),
                               (size_t)k->n + CAIRN_PAYLOAD_MAX_CEILING, &e, &fresh);
    if (rc)
        return rc;
    struct ordent *o = (struct ordent *)e;
    if (fresh) {
        MDB_val v;
        int grc = hctx_get(ctx, g->orders, k->b, k->n, &v);
        if (grc && grc != CAIRN_ENOTFOUND) {
            hentry_free(e);
            return grc;
        }
        if (!grc && (rc = cairn_buf_append(&e->mem, v.mv_data, v.mv_size))) {
            hentry_free(e);
            return rc;
        }
        o->exists = !grc;
        hcache_add(&g->ocache, e);
    }
    *out = o;
    return 0;
}

/* The record's bytes (n 0: none). */
static const uint8_t *ord_bytes(const struct ordent *o, size_t *n)
{
    *n = o->exists ? o->e.mem.len - o->e.vn : 0;
    return o->e.mem.data + o->e.vn;
}

/* Replaces the record with rec[0..n), for the next flush. */
static int ord_put(struct hctx *ctx, struct ordent *o, const uint8_t *rec, size_t n)
{
    struct gf *g = self(ctx);
    o->e.mem.len = o->e.vn;
    int rc = cairn_buf_append(&o->e.mem, rec, n);
    if (rc)
        return rc;
    o->exists = true;
    return hcache_mark(&g->ocache, &o->e);
}

/* Writes the changed records back, in key order (a changed record exists:
 * its mem holds it after the key). */
static int ord_writeback(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    return hcache_flush(ctx, &g->ocache, g->orders, NULL, g->ocache_max);
}

static int gf_flush(struct hctx *ctx)
{
    int rc = hlayout_mark(ctx, &self(ctx)->layout);
    if (!rc)
        rc = dev_writeback(ctx);
    if (!rc)
        rc = ord_writeback(ctx);
    return rc ? rc : pend_apply_all(ctx);
}

/* The engine ends a transaction early by the writes it has seen
 * (proj_txn_full: their count, and the map room they may take), and the
 * writes this handler defers are not seen until they are made. So they are
 * made in apply once GF_DEFER_MAX are waiting (records and pending writes
 * together): the count the engine sees lags by at most that many, and a
 * transaction cannot grow unseen until it fills the map at the flush.
 * (Config defer_max: default and ceiling GF_DEFER_MAX, geofence_int.h.) */

static int maybe_drain(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    size_t n = g->ndirty + g->ocache.ndirty;
    for (int k = 0; k < PW_KINDS; k++)
        n += g->pend[k].n;
    return n < g->defer_max ? 0 : gf_flush(ctx);
}

/* ====================================================================== fence options */

static char *dupn(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

static int read_options(const msgpack_object *def, struct fence *f)
{
    const msgpack_object *d = mp_get(def, "detect");
    f->detect = 0;
    for (uint32_t i = 0; d && d->type == MSGPACK_OBJECT_ARRAY && i < d->via.array.size; i++)
        for (int k = 0; k < 5; k++)
            if (mp_str_eq(&d->via.array.ptr[i], detect_names[k]))
                f->detect |= (uint8_t)(1 << k);
    double v;
    f->dwell_ns = mp_num(mp_get(def, "min_dwell_s"), &v) && v > 0 ? (int64_t)(v * 1e9) : 0;
    f->margin = mp_num(mp_get(def, "margin_m"), &v) && v > 0 ? v : 0;
    f->max_acc = mp_num(mp_get(def, "max_accuracy_m"), &v) && v > 0 ? v : 0;
    const msgpack_object *fl = mp_get(def, "devices");
    if (fl && fl->type == MSGPACK_OBJECT_ARRAY && fl->via.array.size) {
        uint32_t n = fl->via.array.size > GF_FILTERS_MAX ? GF_FILTERS_MAX : fl->via.array.size;
        f->filters = calloc(n, sizeof *f->filters);
        if (!f->filters)
            return CAIRN_ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
            struct cairn_str s = {"", 0};
            mp_str(&fl->via.array.ptr[i], &s);
            if (!(f->filters[f->nfilters++] = dupn(s.p, s.n)))
                return CAIRN_ENOMEM;
        }
    }
    struct cairn_str tp;
    if (mp_str(mp_path(def, "geometry", "target_prefix", NULL), &tp) &&
        !(f->target = dupn(tp.p, tp.n)))
        return CAIRN_ENOMEM;
    return 0;
}

static bool match_filter(char *const *filters, uint16_t n, const struct cairn_str *dev)
{
    if (!n)
        return true;
    for (uint16_t i = 0; i < n; i++) {
        size_t l = strlen(filters[i]);
        if (l && filters[i][l - 1] == '*') {
            if (dev->n >= l - 1 && !memcmp(dev->p, filters[i], l - 1))
                return true;
        } else if (l == dev->n && !memcmp(dev->p, filters[i], l)) {
            return true;
        }
    }
    return false;
}

/* Puts a parsed fence (shape moved in) into memory. */
static int fence_insert(struct gf *g, uint32_t tenant, const struct cairn_str *id,
                        const msgpack_object *def, struct geo_shape *shape)
{
    struct tenant *t = g->t[tenant];
    uint32_t old = fence_find(g, tenant, id->p, id->n), slot;
    if (old != UINT32_MAX)
        fence_remove(g, old);
    int rc = idmap_grow(g);
    if (!rc)
        rc = slot_alloc(g, &slot);
    if (rc)
        return rc;
    struct fence *f = &g->f[slot];
    f->tenant = tenant;
    f->shape = *shape;
    memset(shape, 0, sizeof *shape);
    f->idlen = (uint8_t)id->n;
    if ((f->id = geo_pool_alloc(g->pool, id->n + 1))) {
        memcpy(f->id, id->p, id->n);
        f->id[id->n] = 0;
    }
    if (!f->id || (rc = read_options(def, f))) {
        fence_release(g, f);
        f->next_free = g->free_head;
        g->free_head = slot;
        return rc ? rc : CAIRN_ENOMEM;
    }
    idmap_put(g, slot);
    g->fgen++;
    geo_shape_bands(&f->shape);         /* on failure the point tests read every edge */
    geo_shape_pool(&f->shape, g->pool); /* on failure it stays on the heap */
    g->raster[slot].user = f->nfilters || f->max_acc > 0;
    geo_raster_build(&f->shape, &g->raster[slot]);
    t->nfences++;
    if (f->shape.kind == GEO_ROAM)
        t->roam[t->nroam++] = slot;
    else
        rc = geo_index_add(g->ix, tenant, slot, &f->shape);
    if (f->detect & D_OUTSIDE && f->shape.kind != GEO_ROAM)
        t->outside[t->noutside++] = slot;
    else
        f->detect &= (uint8_t)~D_OUTSIDE;
    if (f->detect & D_CROSS)
        t->ncross++;
    return rc;
}

/* ====================================================================== devices awaited */

/*
 * Devices that may have an order awaiting their arrival: counters indexed
 * by the hash of oby's (tenant, device) key prefix, one count per entry
 * of oby (two devices may share a counter; then both are looked up).
 * check_arrivals opens no cursor for a device whose counter is 0 — most
 * fixes: a fleet has far fewer open orders with a destination than
 * devices (bench/replay: 2 048 orders, 16 000 devices; the cursor was
 * 7 % of the handler's replay and three of its five state calls per fix,
 * each taking the state lock in a parallel apply). Built from oby at
 * open, kept by every put and delete of oby; when its entries outnumber
 * half the counters the counters double, rebuilt from oby. Memory only:
 * the state is the same with them or without (no memory: NULL, every
 * device is looked up).
 */
#define WATCH_MIN 4096

static size_t watch_slot(const struct watch *w, const uint8_t *prefix, size_t n)
{
    return (size_t)hcache_hash(prefix, n) & (w->cap - 1);
}

/* The (tenant, device) prefix of an oby key: u8 tenant, u16 device. */
static size_t oby_prefix(const uint8_t *k, size_t n)
{
    if (n < 1 || n < 3 + (size_t)k[0])
        return 0;
    size_t p = 3 + (size_t)k[0] + ((size_t)k[1 + k[0]] << 8 | k[2 + k[0]]);
    return p <= n ? p : 0;
}

/* Stops counting (a key not of oby's form): every device is looked up. */
static void watch_off(struct watch *w)
{
    free(w->c);
    w->c = NULL;
}

/* Counters for cap entries, from oby; with tenants, each tenant's
 * open_orders too (at open). */
static int watch_build(struct hctx *ctx, size_t cap, bool tenants)
{
    struct gf *g = self(ctx);
    free(g->watch.c);
    g->watch = (struct watch){.c = calloc(cap, sizeof *g->watch.c), .cap = cap};
    struct hcursor *c;
    MDB_val k, v;
    int rc = hctx_cursor_open(ctx, g->oby, NULL, 0, &c);
    while (!rc && !(rc = hctx_cursor_next(c, &k, &v))) {
        struct cairn_str tn, rest;
        uint32_t ti;
        if (tenants && hkey_split(k.mv_data, k.mv_size, &tn, &rest) &&
            !tenant_get(g, &tn, true, &ti))
            g->t[ti]->open_orders++;
        size_t p = oby_prefix(k.mv_data, k.mv_size);
        g->watch.n++;
        if (g->watch.c && p)
            g->watch.c[watch_slot(&g->watch, k.mv_data, p)]++;
        else if (g->watch.c)
            watch_off(&g->watch);
    }
    hctx_cursor_close(c);
    rc = rc == CAIRN_ENOTFOUND ? 0 : rc;
    if (!rc && g->watch.c && g->watch.n > g->watch.cap / 2)
        return watch_build(ctx, g->watch.cap * 2, false);
    return rc;
}

/* After a put (+1) or delete (-1) of the oby key k[0, n). */
static int watch_count(struct hctx *ctx, const uint8_t *k, size_t n, int d)
{
    struct gf *g = self(ctx);
    struct watch *w = &g->watch;
    size_t p = oby_prefix(k, n);
    if (d < 0 && w->n)
        w->n--;
    if (d > 0)
        w->n++;
    if (w->c && !p)
        watch_off(w);
    if (!w->c)
        return 0;
    if (d > 0 && w->n > w->cap / 2)
        return watch_build(ctx, w->cap * 2, false); /* counts this entry too */
    uint32_t *ctr = &w->c[watch_slot(w, k, p)];
    if (d > 0)
        ++*ctr;
    else if (*ctr)
        --*ctr;
    return 0;
}

/* Whether the device of the oby prefix p[0, n) may have orders. */
static bool watch_maybe(const struct watch *w, const uint8_t *p, size_t n)
{
    return !w->c || w->c[watch_slot(w, p, n)];
}

/* ====================================================================== open / close */

static int load_fences(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    struct hcursor *c;
    MDB_val k, v, gv;
    int rc = hctx_cursor_open(ctx, g->fences, NULL, 0, &c);
    while (!rc && !(rc = hctx_cursor_next(c, &k, &v))) {
        struct cairn_str tn, id;
        if (!hkey_split(k.mv_data, k.mv_size, &tn, &id))
            rc = CAIRN_ECORRUPT;
        msgpack_unpacked doc;
        msgpack_unpacked_init(&doc);
        struct geo_shape s;
        uint32_t ti;
        if (!rc && msgpack_unpack_next(&doc, v.mv_data, v.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS)
            rc = CAIRN_ECORRUPT;
        if (!rc)
            rc = hctx_get(ctx, g->geom, k.mv_data, k.mv_size, &gv);
        if (!rc && !(rc = geo_unpack(gv.mv_data, gv.mv_size, &s))) {
            rc = tenant_get(g, &tn, true, &ti);
            if (!rc)
                rc = fence_insert(g, ti, &id, &doc.data, &s);
            geo_shape_free(&s);
        }
        msgpack_unpacked_destroy(&doc);
    }
    hctx_cursor_close(c);
    if (rc == CAIRN_ENOTFOUND)
        rc = 0;
    /* open orders per tenant, and per device (watch_build) */
    return rc ? rc : watch_build(ctx, WATCH_MIN, true);
}

static void gf_close(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    if (!g)
        return;
    for (uint32_t i = 0; i < g->nf; i++)
        if (g->f[i].id)
            fence_release(g, &g->f[i]);
    geo_huge_free(g->f, g->capf * sizeof *g->f);
    geo_huge_free(g->mark, g->capf * sizeof *g->mark);
    geo_huge_free(g->raster, g->capf * sizeof *g->raster);
    free(g->idmap);
    for (uint32_t i = 0; i < g->nt; i++)
        free(g->t[i]);
    free(g->t);
    geo_index_free(g->ix);
    geo_pool_free(g->pool);
    dev_drop(g);
    free(g->watch.c);
    free(g->cand);
    free(g->mems);
    cairn_buf_deinit(&g->rec);
    cairn_buf_deinit(&g->tmp);
    for (int k = 0; k < PW_KINDS; k++)
        free(g->pend[k].w);
    cairn_buf_deinit(&g->pbuf);
    hcache_free(&g->ocache);
    free(g);
    *hctx_user(ctx) = NULL;
}

/* *n: the entries of a queue DBI (hitq: at most hitq_max; insq, posq: at
 * most opq_max). */
static int queue_count(struct hctx *ctx, unsigned db, size_t *n)
{
    struct hcursor *c;
    MDB_val k, v;
    int rc = hctx_cursor_open(ctx, db, NULL, 0, &c);
    *n = 0;
    while (!rc && !(rc = hctx_cursor_next(c, &k, &v)))
        ++*n;
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* handlers.geofence (README, Configuration): the maxima are the
 * ceilings below. */
static const char config_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"arrival_radius_m\":{\"type\":\"number\",\"exclusiveMinimum\":0,\"maximum\":1000000},"
    "\"device_cache_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1048576},"
    "\"order_cache_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":262144},"
    "\"defer_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":262144},"
    "\"hitq_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":65536},"
    "\"opq_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":65536}}}";
_Static_assert(GF_DEV_CACHE_MAX == 1048576 && GF_ORDER_CACHE_MAX == 262144 &&
                   GF_DEFER_MAX == 262144 && GF_HITQ_MAX == 65536 && GF_OPQ_MAX == 65536,
               "the maxima of config_schema");

/* A count setting: in range (engine_config_check), or absent: dflt. */
static size_t cfg_count(struct hctx *ctx, const char *name, size_t dflt)
{
    const json_t *v = json_object_get(hctx_config(ctx), name);
    return json_is_integer(v) ? (size_t)json_integer_value(v) : dflt;
}

static int gf_open(struct hctx *ctx)
{
    struct gf *g = calloc(1, sizeof *g);
    if (!g)
        return CAIRN_ENOMEM;
    *hctx_user(ctx) = g;
    g->free_head = UINT32_MAX;
    g->fgen = 1;
    cairn_buf_init(&g->rec, 1u << 20);
    cairn_buf_init(&g->tmp, CAIRN_PAYLOAD_MAX_CEILING);
    cairn_buf_init(&g->pbuf, PEND_BYTES_MAX + 4 * (GF_KEY_MAX + 1) + 2048);
    g->dev_max = cfg_count(ctx, "device_cache_max", GF_DEV_CACHE_MAX);
    g->ocache_max = cfg_count(ctx, "order_cache_max", GF_ORDER_CACHE_MAX);
    g->defer_max = cfg_count(ctx, "defer_max", GF_DEFER_MAX);
    /* part of the state's shape: live and replay must use the same (it
     * changes what hitq and the indexes hold at a checkpoint, not any
     * answer) */
    g->hitq_max = cfg_count(ctx, "hitq_max", GF_HITQ_MAX);
    g->opq_max = cfg_count(ctx, "opq_max", GF_OPQ_MAX); /* likewise */
    const json_t *ar = json_object_get(hctx_config(ctx), "arrival_radius_m");
    g->arrival_default = json_is_number(ar) ? json_number_value(ar) : GF_ARRIVAL_RADIUS_DEFAULT;
    int rc = geo_index_new(&g->ix);
    if (!rc && !(g->pool = geo_pool_new()))
        rc = CAIRN_ENOMEM;
    if (!rc && !(g->mems = mems_alloc()))
        rc = CAIRN_ENOMEM;
    struct {
        const char *name;
        unsigned *db;
    } dbs[] = {{"fences", &g->fences},
               {"geom", &g->geom},
               {"dev", &g->dev},
               {"inside", &g->inside},
               {"hits", &g->hits},
               {"dhits", &g->dhits},
               {"hitq", &g->hitq},
               {"pos", &g->pos},
               {"near", &g->near},
               {"orders", &g->orders},
               {"oby", &g->oby},
               {"meta", &g->meta},
               {"insq", &g->oq[OQ_INSIDE].qdb},
               {"posq", &g->oq[OQ_POS].qdb}};
    for (size_t i = 0; !rc && i < sizeof dbs / sizeof *dbs; i++)
        rc = hctx_db(ctx, dbs[i].name, 0, dbs[i].db);
    /* A state without the mark is new (nothing in hits yet: the mark goes
     * in at the first flush) or of layout 1 (geofence_int.h), which is
     * refused, as are layouts 2, 3 and 4 (marks 2 and 3: no hitq; 4: no
     * insq and posq). */
    g->layout = (struct hlayout){
        .meta = g->meta, .probe = g->hits, .layout = GF_LAYOUT, .what = "geofence"};
    if (!rc)
        rc = hlayout_check(ctx, &g->layout);
    if (!rc)
        rc = queue_count(ctx, g->hitq, &g->nq);
    for (int q = 0; q < OQ_KINDS && !rc; q++)
        rc = queue_count(ctx, g->oq[q].qdb, &g->oq[q].n);
    if (!rc)
        rc = load_fences(ctx);
    if (rc)
        gf_close(ctx);
    return rc;
}

/* ====================================================================== validate */

static int gf_validate(const struct event *ev, struct cairn_error *e)
{
    if (!(ev->type.n == 15 && !memcmp(ev->type.p, "geofence.define", 15)))
        return 0;
    struct geo_shape s;
    int rc = geo_parse(mp_get(ev->body, "geometry"), "/payload/geometry", &s, e);
    if (rc)
        return rc;
    const msgpack_object *d = mp_get(ev->body, "detect");
    const msgpack_object *devs = mp_get(ev->body, "devices");
    bool outside = false;
    for (uint32_t i = 0; d && d->type == MSGPACK_OBJECT_ARRAY && i < d->via.array.size; i++)
        outside |= mp_str_eq(&d->via.array.ptr[i], "outside");
    if (s.kind == GEO_ROAM && !mp_get(mp_get(ev->body, "geometry"), "target_prefix"))
        rc = cairn_error_set(e, "invalid_geometry", "/payload/geometry/target_prefix",
                             "a Roam fence needs target_prefix");
    else if (outside && (!devs || devs->type != MSGPACK_OBJECT_ARRAY || !devs->via.array.size))
        rc = cairn_error_set(e, "invalid_value", "/payload/devices",
                             "detect outside needs a devices filter (it fires on every fix of "
                             "every matching device)");
    geo_shape_free(&s);
    return rc;
}

/* ====================================================================== emitting */

struct fix {
    const struct event *ev;
    struct cairn_str dev;
    double lat, lon, acc;
    bool has_acc;
};

static size_t time_fmt(struct tcache *c, int64_t ns, char *out)
{
    int64_t secs = ns / 1000000000LL, frac = ns % 1000000000LL;
    if (frac < 0)
        frac += 1000000000LL, secs -= 1;
    if (!c->n || c->secs != secs) {
        char t[MPD_TIME_MAX];
        size_t n = secs > INT64_MIN / 1000000000LL + 1
                       ? cairn_time_format(secs * 1000000000LL, t, sizeof t)
                       : 0;
        if (n != 20)
            return cairn_time_format(ns, out, MPD_TIME_MAX);
        memcpy(c->s, t, 19);
        c->n = 19;
        c->secs = secs;
    }
    memcpy(out, c->s, 19);
    char *o = out + 19;
    if (frac) {
        int w = 9;
        if (frac % 1000000 == 0)
            frac /= 1000000, w = 3;
        else if (frac % 1000 == 0)
            frac /= 1000, w = 6;
        *o++ = '.';
        for (int i = w - 1; i >= 0; i--, frac /= 10)
            o[i] = (char)('0' + frac % 10);
        o += w;
    }
    *o++ = 'Z';
    return (size_t)(o - out);
}

static uint8_t *mpd_f64(uint8_t *o, double v)
{
    uint64_t b;
    memcpy(&b, &v, 8);
    return mpd_be(o, 0xcb, b, 8); /* msgpack_pack_double's encoding */
}

static uint8_t *mpd_gtime(uint8_t *o, struct tcache *c, int64_t ns)
{
    char t[MPD_TIME_MAX];
    return mpd_strn(o, t, time_fmt(c, ns, t));
}

/* Moves the hits of geofence.hitq into hits and dhits (pending writes,
 * made in key order at the flush) and empties it (see emit_hit). */
static int hitq_merge(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    int rc = pend_apply(ctx, PW_HITQ);
    struct hcursor *c = NULL;
    if (!rc)
        rc = hctx_cursor_open(ctx, g->hitq, NULL, 0, &c);
    MDB_val k, v;
    while (!rc && !(rc = hctx_cursor_next(c, &k, &v))) {
        struct gf_key h, d;
        uint8_t d8[8];
        uint32_t voff;
        if (k.mv_size != 8 || v.mv_size > GF_KEY_MAX || !gf_hits_key_ok(v.mv_data, v.mv_size)) {
            rc = CAIRN_ECORRUPT;
            break;
        }
        memcpy(d8, k.mv_data, 8);
        h.n = 0;
        h.over = false;
        gk_raw(&h, v.mv_data, v.mv_size); /* copied: v is valid until a write */
        gf_dhits_key(&d, h.b, h.n);
        if ((rc = pend_value(ctx, d8, 8, &voff)) ||
            (rc = pend_add(ctx, PW_HITS, &h, voff, 8, false)))
            break;
        /* the dhits key is one byte longer than the hits key */
        if (!d.over && (rc = pend_add(ctx, PW_DHITS, &d, voff, 8, false)))
            break;
    }
    hctx_cursor_close(c);
    if (rc == CAIRN_ENOTFOUND)
        rc = 0;
    if (!rc) /* every entry read: emptied at once (no write to hitq came meanwhile) */
        rc = hctx_clear(ctx, g->hitq);
    g->nq = 0;
    return rc;
}

/* Emits a hit and queues its event (the dseq hctx_emit stored it at) in
 * geofence.hitq, to be indexed in hits and dhits (geofence_int.h). The
 * payload is packed directly (handler.h's mpd_*: the bytes msgpack-c's
 * packer wrote before, key by key), into a buffer larger than any hit: ids
 * are at most GF_FENCE_ID_MAX and CAIRN_KEY_MAX bytes, the rest under 300.
 *
 * Why a queue: hits and dhits are ordered by fence and by device, so hits
 * arriving in time order land on random leaves of two trees that grow with
 * the history; a transaction of 14 000 hits (65 536 fixes of
 * bench/geofence) rewrote nearly every leaf of both, a page copy, a page
 * fault and a page written back each. hitq is keyed by dseq, so its puts
 * append; once it holds hitq_max hits (GF_HITQ_MAX, geofence_int.h) they
 * are merged into the indexes in key order, together, each leaf rewritten
 * once per merge instead of once per transaction. The merge comes at the
 * hit that fills the queue, so where it happens depends only on the
 * inputs, never on how they were cut into transactions: live, replayed or
 * replayed in chunks, the state is the same. Queries read both (routes.c). */
static int emit_hit(struct hctx *ctx, const struct fix *x, const struct fence *f, int kind,
                    const char *reason, int64_t since, const double *from)
{
    struct gf *g = self(ctx);
    uint8_t buf[1024];
    _Static_assert(GF_FENCE_ID_MAX + CAIRN_KEY_MAX + 9 * MPD_HDR_MAX + 2 * (MPD_TIME_MAX + 2) +
                           160 <
                       sizeof buf,
                   "a hit fits its buffer");
    uint32_t n =
        5 + (kind == HIT_EXIT ? 3 : 0) + (kind == HIT_ENTER ? 1 : 0) + (kind == HIT_CROSS ? 1 : 0);
    struct cairn_str fid = {f ? f->id : "", f ? f->idlen : 0};
    uint8_t *o = mpd_map(buf, n);
    o = mpd_strn(mpd_key(o, "fence_id"), fid.p, fid.n);
    o = mpd_key(o, "device_id");
    o = x->dev.p ? mpd_strn(o, x->dev.p, x->dev.n) : mpd_nil(o);
    o = mpd_f64(mpd_key(o, "lat"), x->lat);
    o = mpd_f64(mpd_key(o, "lon"), x->lon);
    o = mpd_gtime(mpd_key(o, "at"), &g->tc, x->ev->time);
    if (kind == HIT_ENTER)
        o = mpd_gtime(mpd_key(o, "since"), &g->tc, since);
    if (kind == HIT_EXIT) {
        o = mpd_gtime(mpd_key(o, "since"), &g->tc, since);
        o = mpd_f64(mpd_key(o, "dwell_s"), (double)(x->ev->time - since) / 1e9);
        o = mpd_key(o, "reason");
        o = reason ? mpd_strn(o, reason, strlen(reason)) : mpd_nil(o);
    }
    if (kind == HIT_CROSS) {
        o = mpd_map(mpd_key(o, "from"), 2);
        o = mpd_f64(mpd_key(o, "lat"), from[1]);
        o = mpd_f64(mpd_key(o, "lon"), from[0]);
    }
    size_t len = (size_t)(o - buf);
    int rc = hctx_emit(ctx, x->ev, hit_types[kind], NULL, &x->dev, buf, len);
    if (rc)
        return rc;
    const struct cairn_str *t = &x->ev->tenant;
    struct gf_key h, q;
    uint8_t kb = (uint8_t)kind;
    uint32_t voff = 0;
    /* the payload is kept once, in the event; hitq holds its dseq -> the
     * hit's hits key (the four fields) */
    gk_tenant(&h, t->p, t->n);
    gk_u8str(&h, fid.p, fid.n);
    gk_be64(&h, gf_time_key(x->ev->time));
    gk_raw(&h, &kb, 1);
    gk_raw(&h, x->dev.p, x->dev.n);
    if (h.over)
        return 0; /* not indexed */
    q.n = 0;
    q.over = false;
    gk_be64(&q, hctx_emitted_dseq(ctx));
    if ((rc = pend_value(ctx, h.b, h.n, &voff)) ||
        (rc = pend_add(ctx, PW_HITQ, &q, voff, h.n, false)))
        return rc;
    return ++g->nq < g->hitq_max ? 0 : hitq_merge(ctx);
}

static int inside_key(struct gf_key *k, const struct cairn_str *t, const char *fid, size_t fn,
                      const struct cairn_str *dev)
{
    gk_tenant(k, t->p, t->n);
    gk_u8str(k, fid, fn);
    gk_raw(k, dev->p, dev->n);
    return k->over ? CAIRN_ETOOBIG : 0;
}

static int set_inside(struct hctx *ctx, const struct fix *x, const char *fid, size_t fn,
                      int64_t since, bool in)
{
    struct gf_key k;
    if (inside_key(&k, &x->ev->tenant, fid, fn, &x->dev))
        return 0;
    uint8_t v[8];
    cairn_be64_put(v, (uint64_t)since);
    return opq_add(ctx, OQ_INSIDE, &k, v, in ? 8 : 0, !in);
}

/* ====================================================================== the device record */

struct mem {
    uint8_t state;
    int64_t since;
    uint32_t slot; /* in memory only: the fence's slot, UINT32_MAX unknown */
    uint8_t idlen;
    char id[GF_FENCE_ID_MAX + 1];
};

static struct mem *mems_alloc(void)
{
    return malloc((GF_MEMBERSHIPS_MAX + 1) * sizeof(struct mem));
}

struct devrec {
    bool exists;
    double lat, lon;
    int64_t time;
    uint32_t n;
    struct mem *m; /* points into a caller buffer */
};

static double get_f64(const uint8_t *p)
{
    uint64_t b = cairn_be64_get(p);
    double d;
    memcpy(&d, &b, 8);
    return d;
}

static void put_f64(uint8_t *p, double d)
{
    uint64_t b;
    memcpy(&b, &d, 8);
    cairn_be64_put(p, b);
}

static int rec_decode(const uint8_t *p, size_t n, struct devrec *r, struct mem *mems)
{
    if (n < REC_HEAD || p[0] != 1)
        return CAIRN_ECORRUPT;
    r->exists = true;
    r->lat = get_f64(p + 1);
    r->lon = get_f64(p + 9);
    r->time = (int64_t)cairn_be64_get(p + 17);
    r->n = rec_count(p);
    r->m = mems;
    size_t at = REC_HEAD;
    if (r->n > GF_MEMBERSHIPS_MAX)
        return CAIRN_ECORRUPT;
    for (uint32_t i = 0; i < r->n; i++) {
        if (at + 10 > n || at + 10 + p[at + 9] > n || p[at + 9] > GF_FENCE_ID_MAX)
            return CAIRN_ECORRUPT;
        mems[i].state = p[at];
        mems[i].since = (int64_t)cairn_be64_get(p + at + 1);
        mems[i].slot = UINT32_MAX;
        mems[i].idlen = p[at + 9];
        memcpy(mems[i].id, p + at + 10, mems[i].idlen);
        at += 10 + mems[i].idlen;
    }
    return 0;
}

static int cmp_mem(const void *a, const void *b)
{
    const struct mem *x = a, *y = b;
    int c = memcmp(x->id, y->id, x->idlen < y->idlen ? x->idlen : y->idlen);
    return c ? c : (int)x->idlen - (int)y->idlen;
}

/* Encodes the record; with_slots keeps m[i].slot in the device table
 * (every slot must then be known). */
static int rec_write(struct hctx *ctx, const struct fix *x, struct mem *m, uint32_t n,
                     struct gdev *d, bool with_slots)
{
    struct gf *g = self(ctx);
    if (n > 8) {
        qsort(m, n, sizeof *m, cmp_mem);
    } else { /* a few, nearly in order (kept ones are, new ones come last) */
        for (uint32_t i = 1; i < n; i++)
            if (cmp_mem(&m[i - 1], &m[i]) > 0) {
                struct mem t = m[i];
                uint32_t j = i;
                for (; j > 0 && cmp_mem(&m[j - 1], &t) > 0; j--)
                    m[j] = m[j - 1];
                m[j] = t;
            }
    }
    uint32_t slots[GF_MEMBERSHIPS_MAX];
    cairn_buf_reset(&g->rec);
    /* n <= GF_MEMBERSHIPS_MAX: at most ~140 KB, within the buffer's max */
    int rc = cairn_buf_reserve(&g->rec, REC_HEAD + (size_t)n * (10 + GF_FENCE_ID_MAX));
    if (rc)
        return rc;
    uint8_t *h = g->rec.data;
    h[0] = 1;
    put_f64(h + 1, x->lat);
    put_f64(h + 9, x->lon);
    cairn_be64_put(h + 17, (uint64_t)x->ev->time);
    h[25] = (uint8_t)(n >> 8);
    h[26] = (uint8_t)n;
    uint8_t *e = h + REC_HEAD;
    for (uint32_t i = 0; i < n; i++) {
        e[0] = m[i].state;
        cairn_be64_put(e + 1, (uint64_t)m[i].since);
        e[9] = m[i].idlen;
        memcpy(e + 10, m[i].id, m[i].idlen);
        e += 10 + m[i].idlen;
        slots[i] = m[i].slot;
        with_slots &= m[i].slot != UINT32_MAX;
    }
    g->rec.len = (size_t)(e - h);
    return dev_store(g, d, g->rec.data, g->rec.len, with_slots ? slots : NULL, n);
}

/* ====================================================================== detection */

static int cmp_slot_id(const void *a, const void *b, void *arg)
{
    struct gf *g = arg;
    const struct fence *x = &g->f[*(const uint32_t *)a], *y = &g->f[*(const uint32_t *)b];
    int c = memcmp(x->id, y->id, x->idlen < y->idlen ? x->idlen : y->idlen);
    return c ? c : (int)x->idlen - (int)y->idlen;
}

/* qsort_r (glibc, POSIX 2024): no global for the context, so apply keeps
 * no state outside the handler's (handler.h, `concurrent`). */
static void sort_slots(struct gf *g, uint32_t *s, size_t n)
{
    if (n > 8) {
        qsort_r(s, n, sizeof *s, cmp_slot_id, g);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        uint32_t t = s[i];
        size_t j = i;
        for (; j > 0 && cmp_slot_id(&s[j - 1], &t, g) > 0; j--)
            s[j] = s[j - 1];
        s[j] = t;
    }
}

static bool acc_ok(const struct fence *f, const struct fix *x)
{
    return !(f->max_acc > 0 && x->has_acc && x->acc > f->max_acc);
}

static bool applies(const struct fence *f, const struct fix *x)
{
    return f->shape.kind != GEO_ROAM && acc_ok(f, x) &&
           match_filter(f->filters, f->nfilters, &x->dev);
}

/* Detection in two steps, so that the device record is read while the
 * index's loads are on their way (both are cache misses at scale):
 * find_candidates puts the fences whose box holds the fix into g->cand
 * (through the device's hint) and prefetches their rasters; find_inside
 * keeps those containing it. */
static int find_candidates(struct gf *g, uint32_t ti, const struct fix *x, struct geo_hint *hint,
                           size_t *out)
{
    int n = geo_index_point_hint(g->ix, ti, x->lon, x->lat, hint, &g->cand, &g->candcap);
    if (n >= 0 && fabs(x->lon) == 180) { /* the same meridian: query the other side */
        uint32_t *more = NULL;
        size_t cap = 0;
        int m = geo_index_point(g->ix, ti, -x->lon, x->lat, &more, &cap);
        for (int i = 0; i < m && n >= 0; i++) {
            bool dup = false;
            for (int j = 0; j < n && !dup; j++)
                dup = g->cand[j] == more[i];
            if (dup)
                continue;
            if ((size_t)n == g->candcap) {
                uint32_t *p = realloc(g->cand, (g->candcap * 2 + 8) * sizeof *p);
                if (!p)
                    n = CAIRN_ENOMEM;
                else
                    g->cand = p, g->candcap = g->candcap * 2 + 8;
            }
            if (n >= 0)
                g->cand[n++] = more[i];
        }
        free(more);
    }
    if (n < 0)
        return n;
    for (int i = 0; i < n; i++) { /* both lines: the cell may be in either */
        __builtin_prefetch(&g->raster[g->cand[i]]);
        __builtin_prefetch((const char *)&g->raster[g->cand[i]] + 64);
    }
    *out = (size_t)n;
    return 0;
}

/* The n candidates containing the fix, sorted by id, into g->cand; marks
 * them. Every candidate is a cache miss: its raster answers most of them
 * (fences without filters, points away from edges); the rest need the
 * fence and its rings. Each kind of load is issued for all candidates
 * before any is used, so the misses overlap. */
static void find_inside(struct gf *g, const struct fix *x, size_t n, size_t *out)
{
    if (++g->epoch == 0) {
        memset(g->mark, 0, g->capf * sizeof *g->mark);
        g->epoch = 1;
    }
    size_t m = 0; /* cand[0, m): inside or unknown */
    for (size_t i = 0; i < n; i++) {
        uint32_t s = g->cand[i];
        int in = g->raster[s].user ? -1 : geo_raster_test(&g->raster[s], x->lon, x->lat);
        if (in)
            g->cand[m++] = s;
        if (in < 0) {
            /* the raster prefetched a pooled polygon's geometry (geom);
             * reading f[s].shape.mem here would wait for the fence's line */
            __builtin_prefetch(&g->f[s]);
            if (!g->raster[s].geom)
                __builtin_prefetch((const char *)g->f[s].shape.mem);
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t s = g->cand[i];
        const struct fence *f = &g->f[s];
        bool in = true; /* the raster said inside, or: */
        if (g->raster[s].user || geo_raster_test(&g->raster[s], x->lon, x->lat) < 0)
            in = applies(f, x) && geo_contains(&f->shape, x->lon, x->lat);
        if (in)
            g->cand[k++] = s;
    }
    for (size_t i = 0; i < k; i++)
        g->mark[g->cand[i]] = g->epoch;
    sort_slots(g, g->cand, k);
    *out = k;
}

/* Re-evaluates one existing membership; *keep says whether it stays. */
static int eval_member(struct hctx *ctx, const struct fix *x, uint32_t ti, struct mem *m,
                       bool *keep)
{
    struct gf *g = self(ctx);
    uint32_t s = m->slot != UINT32_MAX ? m->slot : fence_find(g, ti, m->id, m->idlen);
    struct fence *f = s == UINT32_MAX ? NULL : &g->f[s];
    m->slot = s;
    int rc = 0;
    *keep = true;
    if (!f || f->shape.kind == GEO_ROAM || !match_filter(f->filters, f->nfilters, &x->dev)) {
        *keep = false;
        if (m->state == GF_INSIDE) {
            /* here only: zeroing a struct fence per membership was ~1 % of
             * a fix */
            struct fence gone = {.id = m->id, .idlen = m->idlen};
            if (!f || f->detect & D_EXIT)
                rc = emit_hit(ctx, x, f ? f : &gone, HIT_EXIT, f ? "filtered" : "deleted", m->since,
                              NULL);
            if (!rc)
                rc = set_inside(ctx, x, m->id, m->idlen, 0, false);
        }
        return rc;
    }
    if (!acc_ok(f, x))
        return 0;
    bool in = g->mark[s] == g->epoch; /* in the fix's inside set */
    g->mark[s] = 0;                   /* handled: not a new membership */
    if (in) {
        if (m->state == GF_PENDING && x->ev->time - m->since >= f->dwell_ns) {
            m->state = GF_INSIDE;
            if (f->detect & D_ENTER)
                rc = emit_hit(ctx, x, f, HIT_ENTER, NULL, m->since, NULL);
            if (!rc)
                rc = set_inside(ctx, x, m->id, m->idlen, m->since, true);
        }
        if (!rc && m->state == GF_INSIDE && f->detect & D_INSIDE)
            rc = emit_hit(ctx, x, f, HIT_INSIDE, NULL, 0, NULL);
        return rc;
    }
    if (f->margin > 0 && geo_boundary_dist(&f->shape, x->lon, x->lat) <= f->margin)
        return 0; /* within the margin: still inside or pending (hysteresis) */
    *keep = false;
    if (m->state == GF_PENDING)
        return 0;
    if (f->detect & D_EXIT)
        rc = emit_hit(ctx, x, f, HIT_EXIT, "left", m->since, NULL);
    return rc ? rc : set_inside(ctx, x, m->id, m->idlen, 0, false);
}

static int enter_new(struct hctx *ctx, const struct fix *x, uint32_t s, struct mem *m)
{
    struct gf *g = self(ctx);
    const struct fence *f = &g->f[s];
    m->idlen = f->idlen;
    m->slot = s;
    memcpy(m->id, f->id, f->idlen);
    m->since = x->ev->time;
    m->state = f->dwell_ns > 0 ? GF_PENDING : GF_INSIDE;
    if (m->state == GF_PENDING)
        return 0;
    int rc = f->detect & D_ENTER ? emit_hit(ctx, x, f, HIT_ENTER, NULL, m->since, NULL) : 0;
    if (!rc)
        rc = set_inside(ctx, x, f->id, f->idlen, m->since, true);
    if (!rc && f->detect & D_INSIDE)
        rc = emit_hit(ctx, x, f, HIT_INSIDE, NULL, 0, NULL);
    return rc;
}

static int detect_cross(struct hctx *ctx, const struct fix *x, uint32_t ti, const struct devrec *r)
{
    struct gf *g = self(ctx);
    int n = geo_index_box(g->ix, ti, fmin(r->lon, x->lon), fmin(r->lat, x->lat),
                          fmax(r->lon, x->lon), fmax(r->lat, x->lat), &g->cand, &g->candcap);
    if (n < 0)
        return n;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        const struct fence *f = &g->f[g->cand[i]];
        if ((f->detect & D_CROSS) && applies(f, x) &&
            geo_segment_hits(&f->shape, r->lon, r->lat, x->lon, x->lat) &&
            !geo_contains(&f->shape, x->lon, x->lat) && !geo_contains(&f->shape, r->lon, r->lat))
            g->cand[k++] = g->cand[i];
    }
    sort_slots(g, g->cand, k);
    double from[2] = {r->lon, r->lat};
    int rc = 0;
    for (size_t i = 0; i < k && !rc; i++)
        rc = emit_hit(ctx, x, &g->f[g->cand[i]], HIT_CROSS, NULL, 0, from);
    return rc;
}

static int detect_outside(struct hctx *ctx, const struct fix *x, struct tenant *t,
                          const struct mem *m, uint32_t nm)
{
    struct gf *g = self(ctx);
    uint32_t list[GF_OUTSIDE_PER_TENANT_MAX];
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->noutside; i++) {
        const struct fence *f = &g->f[t->outside[i]];
        if (!applies(f, x) || geo_contains(&f->shape, x->lon, x->lat))
            continue;
        bool member = false;
        for (uint32_t j = 0; j < nm && !member; j++)
            member = m[j].state == GF_INSIDE && m[j].idlen == f->idlen &&
                     !memcmp(m[j].id, f->id, f->idlen);
        if (!member)
            list[n++] = t->outside[i];
    }
    sort_slots(g, list, n);
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++)
        rc = emit_hit(ctx, x, &g->f[list[i]], HIT_OUTSIDE, NULL, 0, NULL);
    return rc;
}

/* ====================================================================== the device grid */

static void pos_cell(double lon, double lat, uint32_t *cx, uint32_t *cy)
{
    *cx = (uint32_t)floor((lon + 180) / GF_POS_CELL_DEG);
    *cy = (uint32_t)floor((lat + 90) / GF_POS_CELL_DEG);
}

static int pos_move(struct hctx *ctx, const struct fix *x, const struct devrec *r)
{
    uint32_t ncx, ncy, ocx = 0, ocy = 0;
    pos_cell(x->lon, x->lat, &ncx, &ncy);
    if (r->exists) {
        pos_cell(r->lon, r->lat, &ocx, &ocy);
        if (ocx == ncx && ocy == ncy)
            return 0;
    }
    struct gf_key k;
    const struct cairn_str *t = &x->ev->tenant;
    int rc = 0;
    if (r->exists) {
        gk_tenant(&k, t->p, t->n);
        gk_be32(&k, ocy);
        gk_be32(&k, ocx);
        gk_raw(&k, x->dev.p, x->dev.n);
        rc = k.over ? 0 : opq_add(ctx, OQ_POS, &k, NULL, 0, true);
    }
    gk_tenant(&k, t->p, t->n);
    gk_be32(&k, ncy);
    gk_be32(&k, ncx);
    gk_raw(&k, x->dev.p, x->dev.n);
    return rc || k.over ? rc : opq_add(ctx, OQ_POS, &k, NULL, 0, false);
}

/* ====================================================================== roam */

struct other {
    char id[CAIRN_KEY_MAX];
    uint16_t n;
    double dist;
};

static int cmp_other(const void *a, const void *b)
{
    const struct other *x = a, *y = b;
    int c = memcmp(x->id, y->id, x->n < y->n ? x->n : y->n);
    return c ? c : (int)x->n - (int)y->n;
}

static bool has_prefix(const struct cairn_str *s, const char *p)
{
    size_t l = strlen(p);
    return s->n >= l && !memcmp(s->p, p, l);
}

/* Devices within radius of the fix that pair with it under fence f. */
static int roam_scan(struct hctx *ctx, const struct fix *x, const struct fence *f, double radius,
                     struct other *out, uint32_t *nout)
{
    struct gf *g = self(ctx);
    bool src = match_filter(f->filters, f->nfilters, &x->dev), tgt = has_prefix(&x->dev, f->target);
    double dlat = radius / GEO_EARTH_R * 180 / M_PI;
    double cl = cos(x->lat * M_PI / 180);
    double dlon = cl > 1e-6 ? dlat / cl : 360;
    uint32_t x0, y0, x1, y1;
    pos_cell(fmax(x->lon - dlon, -180), fmax(x->lat - dlat, -90), &x0, &y0);
    pos_cell(fmin(x->lon + dlon, 180), fmin(x->lat + dlat, 90), &x1, &y1);
    int rc = opq_merge(ctx, OQ_POS); /* the grid as of this fix */
    if (!rc)
        rc = pend_apply(ctx, PW_POS);
    *nout = 0;
    for (uint32_t cy = y0; cy <= y1 && !rc; cy++)
        for (uint32_t cx = x0; cx <= x1 && !rc; cx++) {
            struct gf_key k;
            gk_tenant(&k, x->ev->tenant.p, x->ev->tenant.n);
            gk_be32(&k, cy);
            gk_be32(&k, cx);
            size_t pn = k.n;
            struct hcursor *c;
            MDB_val kk, vv;
            if ((rc = hctx_cursor_open(ctx, g->pos, k.b, pn, &c)))
                break;
            while (!rc && !(rc = hctx_cursor_next(c, &kk, &vv))) {
                struct cairn_str o = {(const char *)kk.mv_data + pn, kk.mv_size - pn};
                if ((o.n == x->dev.n && !memcmp(o.p, x->dev.p, o.n)) || *nout >= GF_NEAR_MAX)
                    continue;
                if (!((src && has_prefix(&o, f->target)) ||
                      (tgt && match_filter(f->filters, f->nfilters, &o))))
                    continue;
                struct other *ot = &out[*nout];
                memcpy(ot->id, o.p, o.n);
                ot->n = (uint16_t)o.n;
                ot->dist = -1;
                (*nout)++;
            }
            hctx_cursor_close(c);
            if (rc == CAIRN_ENOTFOUND)
                rc = 0;
        }
    /* positions: from the dev records (after the cursors are closed) */
    uint32_t k = 0;
    for (uint32_t i = 0; i < *nout && !rc; i++) {
        struct gf_key dk;
        const uint8_t *v;
        size_t vn;
        gk_tenant(&dk, x->ev->tenant.p, x->ev->tenant.n);
        gk_raw(&dk, out[i].id, out[i].n);
        if ((rc = dev_peek(ctx, &dk, &v, &vn)) || vn < REC_HEAD) {
            rc = rc == CAIRN_ENOTFOUND ? 0 : rc;
            continue;
        }
        double d = geo_dist(x->lon, x->lat, get_f64(v + 9), get_f64(v + 1));
        if (d <= radius) {
            out[i].dist = d;
            out[k++] = out[i];
        }
    }
    *nout = k;
    if (k > 1)
        qsort(out, k, sizeof *out, cmp_other);
    return rc;
}

static int near_key(struct gf_key *k, const struct cairn_str *t, const struct fence *f,
                    const char *a, size_t an, const char *b, size_t bn)
{
    gk_tenant(k, t->p, t->n);
    gk_u8str(k, f->id, f->idlen);
    gk_u16str(k, a, an);
    gk_raw(k, b, bn);
    return k->over ? CAIRN_ETOOBIG : 0;
}

static int emit_pair(struct hctx *ctx, const struct fix *x, const struct fence *f,
                     const struct other *o, int kind)
{
    struct gf *g = self(ctx);
    uint8_t tmp[1024];
    struct cairn_buf b = {.data = tmp, .cap = sizeof tmp, .max = sizeof tmp};
    struct mpw w;
    struct cairn_str fid = {f->id, f->idlen}, oid = {o->id, o->n};
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 5);
    mpw_kv_str(&w, "fence_id", &fid);
    mpw_kv_str(&w, "device_id", &x->dev);
    mpw_kv_str(&w, "other_id", &oid);
    mpw_kv_num(&w, "distance_m", o->dist);
    mpw_kv_time(&w, "at", x->ev->time);
    int rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_emit(ctx, x->ev, kind == HIT_NEARBY ? "geofence.nearby" : "geofence.faraway",
                       NULL, &x->dev, b.data, b.len);
    struct gf_key k, k2;
    int pk = near_key(&k, &x->ev->tenant, f, x->dev.p, x->dev.n, o->id, o->n);
    int pk2 = near_key(&k2, &x->ev->tenant, f, o->id, o->n, x->dev.p, x->dev.n);
    if (!rc && !pk && !pk2) {
        if (kind == HIT_NEARBY) {
            rc = hctx_put(ctx, g->near, k.b, k.n, "", 0);
            if (!rc)
                rc = hctx_put(ctx, g->near, k2.b, k2.n, "", 0);
        } else {
            rc = hctx_del(ctx, g->near, k.b, k.n);
            if (!rc)
                rc = hctx_del(ctx, g->near, k2.b, k2.n);
        }
    }
    return rc;
}

static int roam_one(struct hctx *ctx, const struct fix *x, const struct fence *f, struct other *cur,
                    struct other *old)
{
    struct gf *g = self(ctx);
    uint32_t nc, no = 0;
    /* pairs keep until beyond radius + margin (hysteresis) */
    int rc = roam_scan(ctx, x, f, f->shape.r + f->margin, cur, &nc);
    struct gf_key k;
    if (rc || near_key(&k, &x->ev->tenant, f, x->dev.p, x->dev.n, "", 0))
        return rc;
    struct hcursor *c;
    MDB_val kk, vv;
    size_t pn = k.n;
    if ((rc = hctx_cursor_open(ctx, g->near, k.b, pn, &c)))
        return rc;
    while (!(rc = hctx_cursor_next(c, &kk, &vv)) && no < GF_NEAR_MAX) {
        old[no].n = (uint16_t)(kk.mv_size - pn);
        memcpy(old[no].id, (const char *)kk.mv_data + pn, old[no].n);
        old[no++].dist = -1;
    }
    hctx_cursor_close(c);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    rc = 0;
    /* merge two sorted lists */
    uint32_t i = 0, j = 0;
    while (!rc && (i < nc || j < no)) {
        int cmpv = i < nc && j < no ? cmp_other(&cur[i], &old[j]) : i < nc ? -1 : 1;
        if (cmpv < 0) {
            if (cur[i].dist <= f->shape.r)
                rc = emit_pair(ctx, x, f, &cur[i], HIT_NEARBY);
            i++;
        } else if (cmpv > 0) {
            rc = emit_pair(ctx, x, f, &old[j], HIT_FARAWAY);
            j++;
        } else {
            i++, j++;
        }
    }
    return rc;
}

static int detect_roam(struct hctx *ctx, const struct fix *x, struct tenant *t)
{
    struct gf *g = self(ctx);
    if (!t->nroam)
        return 0;
    uint32_t list[GF_ROAM_PER_TENANT_MAX], n = 0;
    for (uint32_t i = 0; i < t->nroam; i++) {
        const struct fence *f = &g->f[t->roam[i]];
        if (match_filter(f->filters, f->nfilters, &x->dev) || has_prefix(&x->dev, f->target))
            list[n++] = t->roam[i];
    }
    if (!n)
        return 0;
    sort_slots(g, list, n);
    struct other *buf = malloc(2 * GF_NEAR_MAX * sizeof *buf);
    if (!buf)
        return CAIRN_ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++)
        rc = roam_one(ctx, x, &g->f[list[i]], buf, buf + GF_NEAR_MAX);
    free(buf);
    return rc;
}

/* ====================================================================== order arrival */

/* The order record's fields (on_order and check_arrivals read them with
 * mp_raw_fields). */
enum { OR_DEV, OR_LAT, OR_LON, OR_RADIUS, OR_ARRIVED, OR_CLOSED, OR_N };
static const char *const record_keys[OR_N] = {"device_id", "lat",        "lon",
                                              "radius_m",  "arrived_at", "closed"};

/* An order record's fields in one pass over its bytes (r: their values;
 * *present: which are there), its destination's into *lat, *lon and
 * *radius, each left as it is when the record has none. Returns
 * mp_raw_fields's answer. */
static uint64_t record_read(const uint8_t *vp, size_t vn, msgpack_object r[OR_N], uint64_t *present,
                            double *lat, double *lon, double *radius)
{
    uint64_t got = mp_raw_fields(vp, vn, record_keys, OR_N, r, present);
    if (got >> OR_LAT & 1)
        mp_num(&r[OR_LAT], lat);
    if (got >> OR_LON & 1)
        mp_num(&r[OR_LON], lon);
    if (got >> OR_RADIUS & 1)
        mp_num(&r[OR_RADIUS], radius);
    return got;
}

static int check_arrivals(struct hctx *ctx, const struct fix *x, struct tenant *t)
{
    struct gf *g = self(ctx);
    if (t->open_orders <= 0)
        return 0;
    struct gf_key k;
    gk_tenant(&k, x->ev->tenant.p, x->ev->tenant.n);
    gk_u16str(&k, x->dev.p, x->dev.n);
    if (k.over || !watch_maybe(&g->watch, k.b, k.n))
        return 0;
    size_t pn = k.n;
    struct hcursor *c;
    MDB_val kk, vv;
    char ids[16][CAIRN_KEY_MAX];
    size_t idn[16], n = 0;
    int rc = hctx_cursor_open(ctx, g->oby, k.b, pn, &c);
    while (!rc && n < 16 && !(rc = hctx_cursor_next(c, &kk, &vv))) {
        idn[n] = kk.mv_size - pn;
        memcpy(ids[n++], (const char *)kk.mv_data + pn, kk.mv_size - pn);
    }
    if (c)
        hctx_cursor_close(c);
    rc = rc == CAIRN_ENOTFOUND ? 0 : rc;
    for (size_t i = 0; i < n && !rc; i++) {
        struct gf_key ok;
        gk_tenant(&ok, x->ev->tenant.p, x->ev->tenant.n);
        gk_raw(&ok, ids[i], idn[i]);
        struct ordent *oe;
        if ((rc = ord_get(ctx, &ok, &oe)))
            break;
        if (!oe->exists) {
            rc = CAIRN_ENOTFOUND; /* oby names it: its record was put with it */
            break;
        }
        size_t vn;
        const uint8_t *vp = ord_bytes(oe, &vn);
        /* Read from the record's bytes (on_order says why): decoding it
         * with msgpack_unpack_next took a zone, an 8 KiB malloc and free,
         * per order a fix checks. */
        msgpack_object r[OR_N];
        double lat = 0, lon = 0, radius = 0;
        record_read(vp, vn, r, NULL, &lat, &lon, &radius);
        double d = geo_dist(lon, lat, x->lon, x->lat);
        if (d > radius)
            continue;
        uint8_t tmp[1024];
        struct cairn_buf b = {.data = tmp, .cap = sizeof tmp, .max = sizeof tmp};
        struct mpw w;
        struct cairn_str oid = {ids[i], idn[i]};
        mpw_init(&w, &b);
        msgpack_pack_map(&w.pk, 6);
        mpw_kv_str(&w, "order_id", &oid);
        mpw_kv_str(&w, "device_id", &x->dev);
        mpw_kv_time(&w, "at", x->ev->time);
        mpw_kv_num(&w, "distance_m", d);
        mpw_kv_num(&w, "lat", x->lat);
        mpw_kv_num(&w, "lon", x->lon);
        rc = mpw_finish(&w);
        if (!rc)
            rc = hctx_emit(ctx, x->ev, "order.arrived", NULL, &oid, b.data, b.len);
        gk_tenant(&k, x->ev->tenant.p, x->ev->tenant.n);
        gk_u16str(&k, x->dev.p, x->dev.n);
        gk_raw(&k, ids[i], idn[i]);
        if (!rc)
            rc = hctx_del(ctx, g->oby, k.b, k.n);
        if (!rc)
            rc = watch_count(ctx, k.b, k.n, -1);
        t->open_orders--;
        /* the order record remembers the arrival */
        if (!rc) {
            cairn_buf_reset(&g->tmp);
            mpw_init(&w, &g->tmp);
            msgpack_pack_map(&w.pk, 5);
            mpw_kv_str(&w, "device_id", &x->dev);
            mpw_kv_num(&w, "lat", lat);
            mpw_kv_num(&w, "lon", lon);
            mpw_kv_num(&w, "radius_m", radius);
            mpw_kv_time(&w, "arrived_at", x->ev->time);
            rc = mpw_finish(&w);
            if (!rc)
                rc = ord_put(ctx, oe, g->tmp.data, g->tmp.len);
        }
    }
    return rc;
}

/* ====================================================================== location */

/* The fields of a location payload (device_id, lat, lon, accuracy) in
 * one pass over its bytes: location reaches geofence undecoded
 * (raw_inputs), and only these four scalars are read. f[j] is &o[j], or
 * NULL when the field is missing or not a scalar (which no reader here
 * takes); like mp_get, the first of duplicate keys counts. */
static void location_fields(const struct event *ev, msgpack_object o[4], const msgpack_object *f[4])
{
    static const char *const names[4] = {"device_id", "lat", "lon", "accuracy"};
    uint64_t got = mp_raw_fields(ev->payload, ev->payload_len, names, 4, o, NULL);
    for (int j = 0; j < 4; j++)
        f[j] = got >> j & 1 ? &o[j] : NULL;
}

static int on_location(struct hctx *ctx, const struct event *ev)
{
    struct gf *g = self(ctx);
    struct fix x = {.ev = ev};
    msgpack_object fo[4];
    const msgpack_object *fl[4];
    location_fields(ev, fo, fl);
    if (!mp_str(fl[0], &x.dev) || x.dev.n > CAIRN_KEY_MAX || !mp_num(fl[1], &x.lat) ||
        !mp_num(fl[2], &x.lon) || !isfinite(x.lat) || !isfinite(x.lon))
        return 0;
    x.has_acc = mp_num(fl[3], &x.acc);
    struct gf_key dk;
    gk_tenant(&dk, ev->tenant.p, ev->tenant.n);
    gk_raw(&dk, x.dev.p, x.dev.n);
    if (dk.over)
        return 0;
    struct mem *mems = g->mems;
    struct devrec r = {.m = mems};
    uint32_t ti;
    struct tenant *t = NULL;
    if (!tenant_get(g, &ev->tenant, false, &ti))
        t = g->t[ti];
    /* The device first: its entry holds the hint that spares the index
     * lookups of cells it has not left (geo.h). */
    size_t ncand = 0;
    struct gdev *d;
    int rc = dev_get(ctx, &dk, &d);
    if (!rc && d->rec)
        __builtin_prefetch(d->rec);
    if (!rc && t && t->nfences)
        rc = find_candidates(g, ti, &x, &d->hint, &ncand);
    if (!rc && d->rec)
        rc = rec_decode(d->rec, d->reclen, &r, mems);
    if (rc)
        return rc;
    if (d->slotgen == g->fgen) { /* the slots kept with the record: no fence_find */
        const uint8_t *sp = d->rec + REC_SLOTS(d->reclen);
        for (uint32_t i = 0; i < r.n; i++) {
            memcpy(&mems[i].slot, sp + 4 * (size_t)i, 4);
            __builtin_prefetch(&g->f[mems[i].slot]);
        }
    }
    if (r.exists && ev->time < r.time)
        return 0; /* late fix: ignored */
    uint32_t nm = r.n;
    if (t && t->nfences) {
        size_t nin;
        find_inside(g, &x, ncand, &nin);
        uint32_t k = 0;
        for (uint32_t i = 0; i < r.n && !rc; i++) {
            bool keep;
            rc = eval_member(ctx, &x, ti, &mems[i], &keep);
            if (keep)
                mems[k++] = mems[i];
        }
        nm = k;
        /* g->cand still holds the inside set: eval_member only looks up */
        for (size_t i = 0; i < nin && !rc; i++)
            if (g->mark[g->cand[i]] == g->epoch && nm < GF_MEMBERSHIPS_MAX)
                rc = enter_new(ctx, &x, g->cand[i], &mems[nm++]);
        if (!rc && t->ncross && r.exists)
            rc = detect_cross(ctx, &x, ti, &r);
        if (!rc && t->noutside)
            rc = detect_outside(ctx, &x, t, mems, nm);
    }
    if (!rc)
        rc = rec_write(ctx, &x, mems, nm, d, true);
    if (!rc)
        rc = pos_move(ctx, &x, &r);
    if (!rc && t)
        rc = detect_roam(ctx, &x, t);
    if (!rc && t)
        rc = check_arrivals(ctx, &x, t);
    return rc;
}

/*
 * The handler's prefetch (handler.h): with 100 000 devices and fences, a
 * fix's apply is mostly waiting on cache misses that depend on each other
 * — the device's slot in the table, then its entry, then its record and
 * the index entries its hint names, then the fences its memberships name.
 * Each call takes one step for each of the last four inputs it saw, so by
 * the time an input is applied (the engine calls HANDLER_PREFETCH_AHEAD,
 * 4, ahead) its chain has been loaded one link per call, behind other
 * inputs' applies:
 *   step 1 (this input): its slot in the device table;
 *   step 2 (the input before): the entry the slot points to;
 *   step 3 (two before): the entry's record and the index entries;
 *   step 4 (three before): the fences and rasters of its memberships.
 * Only loads: an entry freed since (dgen) or a table resized (dcap) ends
 * that input's chain. On bench/geofence (100 000 devices and fences) the
 * device lookup went from 7 % of the handler's samples to 2 %.
 */
static void gf_prefetch(struct hctx *ctx, const struct event *ev)
{
    struct gf *g = self(ctx);
    /* e1 this input, e2 the one before, … (the ring holds PF_STEPS) */
    unsigned k = g->npf;
    struct pf *e1 = &g->pf[k % PF_STEPS], *e2 = &g->pf[(k + PF_STEPS - 1) % PF_STEPS],
              *e3 = &g->pf[(k + PF_STEPS - 2) % PF_STEPS],
              *e4 = &g->pf[(k + PF_STEPS - 3) % PF_STEPS];
    g->npf++;
    e1->dcap = 0;
    e1->d = NULL;
    if (ev->type.n == 8 && !memcmp(ev->type.p, "location", 8) && g->dcap) {
        msgpack_object fo[4];
        const msgpack_object *fl[4];
        location_fields(ev, fo, fl);
        struct gf_key dk;
        gk_tenant(&dk, ev->tenant.p, ev->tenant.n);
        if (fl[0] && fl[0]->type == MSGPACK_OBJECT_STR)
            gk_raw(&dk, fl[0]->via.str.ptr, fl[0]->via.str.size);
        if (fl[0] && !dk.over) {
            e1->h = hcache_hash(dk.b, dk.n);
            e1->dcap = g->dcap;
            __builtin_prefetch(&g->dtab[e1->h & (g->dcap - 1)]);
        }
    }
    if (e2->dcap && e2->dcap == g->dcap) {
        struct gdev *d = g->dtab[e2->h & (g->dcap - 1)];
        if (d) {
            __builtin_prefetch(d);
            __builtin_prefetch((const char *)d + 64);
            e2->d = d;
            e2->dgen = g->dgen;
        }
    }
    if (e3->d && e3->dgen == g->dgen) {
        const struct gdev *d = e3->d;
        if (d->rec) {
            __builtin_prefetch(d->rec);
            __builtin_prefetch(d->rec + 64);
        }
        geo_index_prefetch_hint(g->ix, &d->hint);
    }
    if (e4->d && e4->dgen == g->dgen) {
        const struct gdev *d = e4->d;
        if (d->rec && d->reclen >= REC_HEAD && d->slotgen == g->fgen) {
            uint32_t n = rec_count(d->rec);
            const uint8_t *sp = d->rec + REC_SLOTS(d->reclen);
            for (uint32_t i = 0; i < n && i < 4; i++) {
                uint32_t slot;
                memcpy(&slot, sp + 4 * (size_t)i, 4);
                if (slot < g->nf) {
                    __builtin_prefetch(&g->raster[slot]);
                    __builtin_prefetch((const char *)&g->raster[slot] + 64);
                    __builtin_prefetch(&g->f[slot]);
                }
            }
        }
        e4->d = NULL;
    }
}

/* ====================================================================== define / delete */

static int emit_refused(struct hctx *ctx, const struct event *ev, const struct cairn_str *id,
                        const char *reason)
{
    uint8_t tmp[512];
    struct cairn_buf b = {.data = tmp, .cap = sizeof tmp, .max = sizeof tmp};
    struct mpw w;
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 2);
    mpw_kv_str(&w, "fence_id", id);
    mpw_kv_cstr(&w, "reason", reason);
    int rc = mpw_finish(&w);
    return rc ? rc : hctx_emit(ctx, ev, "geofence.refused", NULL, id, b.data, b.len);
}

/* The stored document: the definition as given plus what Cairn derived. */
static int write_doc(struct hctx *ctx, const struct event *ev, const struct cairn_str *id,
                     const struct geo_shape *s, const struct gf_key *k)
{
    struct gf *g = self(ctx);
    const msgpack_object *b = ev->body;
    static const char *const opt[] = {"name",     "detect",         "devices", "min_dwell_s",
                                      "margin_m", "max_accuracy_m", "geometry"};
    uint32_t n = 6;
    for (size_t i = 0; i < 7; i++)
        n += mp_get(b, opt[i]) != NULL;
    cairn_buf_reset(&g->tmp);
    struct mpw w;
    mpw_init(&w, &g->tmp);
    msgpack_pack_map(&w.pk, n);
    mpw_kv_str(&w, "fence_id", id);
    mpw_kv_str(&w, "tenant", &ev->tenant);
    for (size_t i = 0; i < 7; i++)
        if (mp_get(b, opt[i]))
            mpw_kv_obj(&w, opt[i], mp_get(b, opt[i]));
    mpw_kv_u64(&w, "vertices", s->kind == GEO_POLYGON ? s->nverts : 0);
    mpw_str(&w, "bbox");
    msgpack_pack_array(&w.pk, 4);
    msgpack_pack_double(&w.pk, s->minx);
    msgpack_pack_double(&w.pk, s->miny);
    msgpack_pack_double(&w.pk, s->maxx);
    msgpack_pack_double(&w.pk, s->maxy);
    mpw_kv_time(&w, "defined_at", ev->time);
    mpw_kv_u64(&w, "version", ev->seq);
    int rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_put(ctx, g->fences, k->b, k->n, g->tmp.data, g->tmp.len);
    cairn_buf_reset(&g->tmp);
    if (!rc)
        rc = geo_pack(s, &g->tmp);
    if (!rc)
        rc = hctx_put(ctx, g->geom, k->b, k->n, g->tmp.data, g->tmp.len);
    return rc;
}

static int on_define(struct hctx *ctx, const struct event *ev)
{
    struct gf *g = self(ctx);
    struct cairn_str id;
    struct geo_shape s;
    struct cairn_error e;
    if (!mp_str(mp_get(ev->body, "fence_id"), &id) || id.n == 0 || id.n > GF_FENCE_ID_MAX)
        return 0;
    /* Validated at ingest; an old log may hold what a newer rule refuses. */
    if (gf_validate(ev, &e))
        return emit_refused(ctx, ev, &id, e.message);
    if (geo_parse(mp_get(ev->body, "geometry"), "/payload/geometry", &s, &e))
        return emit_refused(ctx, ev, &id, e.message);
    uint32_t ti;
    int rc = tenant_get(g, &ev->tenant, true, &ti);
    struct tenant *t = rc ? NULL : g->t[ti];
    uint32_t old = t ? fence_find(g, ti, id.p, id.n) : UINT32_MAX;
    const struct fence *of = old == UINT32_MAX ? NULL : &g->f[old];
    const char *why = NULL;
    bool outside = false;
    const msgpack_object *d = mp_get(ev->body, "detect");
    for (uint32_t i = 0; d && d->type == MSGPACK_OBJECT_ARRAY && i < d->via.array.size; i++)
        outside |= mp_str_eq(&d->via.array.ptr[i], "outside");
    if (!rc && !of && t->nfences >= GF_FENCES_PER_TENANT_MAX)
        why = "the tenant has the maximum number of fences (1000000)";
    else if (!rc && s.kind == GEO_ROAM && !(of && of->shape.kind == GEO_ROAM) &&
             t->nroam >= GF_ROAM_PER_TENANT_MAX)
        why = "the tenant has the maximum number of Roam fences (100)";
    else if (!rc && outside && s.kind != GEO_ROAM && !(of && of->detect & D_OUTSIDE) &&
             t->noutside >= GF_OUTSIDE_PER_TENANT_MAX)
        why = "the tenant has the maximum number of fences detecting outside (1000)";
    if (rc || why) {
        geo_shape_free(&s);
        return rc ? rc : emit_refused(ctx, ev, &id, why);
    }
    struct gf_key k;
    gk_tenant(&k, ev->tenant.p, ev->tenant.n);
    gk_raw(&k, id.p, id.n);
    rc = write_doc(ctx, ev, &id, &s, &k);
    if (!rc)
        rc = fence_insert(g, ti, &id, ev->body, &s);
    geo_shape_free(&s);
    return rc;
}

static int delete_exits(struct hctx *ctx, const struct event *ev, const struct cairn_str *id)
{
    struct gf *g = self(ctx);
    struct gf_key k;
    gk_tenant(&k, ev->tenant.p, ev->tenant.n);
    gk_u8str(&k, id->p, id->n);
    size_t pn = k.n;
    struct fence gone = {.id = (char *)id->p, .idlen = (uint8_t)id->n};
    int rc = opq_merge(ctx, OQ_INSIDE); /* the devices inside as of now */
    if (!rc)
        rc = pend_apply(ctx, PW_INSIDE);
    for (int n = 0; !rc && n < GF_DELETE_EXITS_MAX; n++) {
        struct hcursor *c;
        MDB_val kk, vv;
        /* one entry at a time: the emits and puts below invalidate cursors */
        if ((rc = hctx_cursor_open(ctx, g->inside, k.b, pn, &c)))
            break;
        rc = hctx_cursor_next(c, &kk, &vv);
        char dev[CAIRN_KEY_MAX];
        size_t dn = rc ? 0 : kk.mv_size - pn;
        int64_t since = rc || vv.mv_size != 8 ? 0 : (int64_t)cairn_be64_get(vv.mv_data);
        if (!rc) {
            memcpy(dev, (const char *)kk.mv_data + pn, dn);
            rc = hctx_cursor_del(c);
        }
        hctx_cursor_close(c);
        if (rc)
            break;
        /* the device's record: drop the membership, keep the position */
        struct fix x = {.ev = ev, .dev = {dev, dn}};
        struct gf_key dk;
        struct gdev *dv;
        struct mem *mems = g->mems;
        struct devrec r;
        gk_tenant(&dk, ev->tenant.p, ev->tenant.n);
        gk_raw(&dk, dev, dn);
        if ((rc = dev_get(ctx, &dk, &dv)))
            break;
        if (dv->rec && !rec_decode(dv->rec, dv->reclen, &r, mems)) {
            uint32_t m = 0;
            for (uint32_t i = 0; i < r.n; i++)
                if (!(mems[i].idlen == id->n && !memcmp(mems[i].id, id->p, id->n)))
                    mems[m++] = mems[i];
            x.lat = r.lat, x.lon = r.lon;
            struct event at = *ev;
            at.time = r.time; /* rec_write stores the fix time, not the delete's */
            struct fix rx = x;
            rx.ev = &at;
            rc = rec_write(ctx, &rx, mems, m, dv, false);
        }
        if (!rc)
            rc = emit_hit(ctx, &x, &gone, HIT_EXIT, "deleted", since, NULL);
    }
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static int on_delete(struct hctx *ctx, const struct event *ev)
{
    struct gf *g = self(ctx);
    struct cairn_str id;
    uint32_t ti;
    if (!mp_str(mp_get(ev->body, "fence_id"), &id) || id.n == 0 || id.n > GF_FENCE_ID_MAX ||
        tenant_get(g, &ev->tenant, false, &ti))
        return 0;
    uint32_t s = fence_find(g, ti, id.p, id.n);
    if (s == UINT32_MAX)
        return 0;
    fence_remove(g, s);
    struct gf_key k;
    gk_tenant(&k, ev->tenant.p, ev->tenant.n);
    gk_raw(&k, id.p, id.n);
    int rc = hctx_del(ctx, g->fences, k.b, k.n);
    if (!rc)
        rc = hctx_del(ctx, g->geom, k.b, k.n);
    return rc ? rc : delete_exits(ctx, ev, &id);
}

/* ====================================================================== orders */

static bool is_status(const struct cairn_str *et, const char *s)
{
    return et->n == strlen(s) && !memcmp(et->p, s, et->n);
}

/* The order record: device, destination, radius; while open, complete
 * and not arrived, oby holds (device, order). */
/* The order's fields (one pass over the body: mp_get_many) and its
 * record's (record_keys, one pass over its bytes: mp_raw_fields; decoding the record
 * with msgpack_unpack_next and reading it with five mp_get was a third of
 * the handler's instructions per order event). */
enum { OB_ID, OB_TYPE, OB_DEV, OB_DST, OB_N };
static const char *const order_keys[OB_N] = {"order_id", "event_type", "assigned_device_id",
                                             "destination"};
static const char *const dest_keys[3] = {"lat", "lon", "arrival_radius_m"};

static int on_order(struct hctx *ctx, const struct event *ev)
{
    struct gf *g = self(ctx);
    struct cairn_str oid, et, dev = {NULL, 0};
    const msgpack_object *ob[OB_N];
    mp_get_many(ev->body, order_keys, OB_N, ob);
    if (!mp_str(ob[OB_ID], &oid) || oid.n > CAIRN_KEY_MAX || !mp_str(ob[OB_TYPE], &et))
        return 0;
    struct gf_key k;
    gk_tenant(&k, ev->tenant.p, ev->tenant.n);
    gk_raw(&k, oid.p, oid.n);
    struct ordent *oe;
    int rc = ord_get(ctx, &k, &oe);
    if (rc)
        return rc;
    size_t vn;
    const uint8_t *vp = ord_bytes(oe, &vn);
    char devbuf[CAIRN_KEY_MAX];
    double lat = NAN, lon = NAN, radius = g->arrival_default;
    bool arrived = false, closed = false;
    if (oe->exists) {
        msgpack_object r[OR_N];
        uint64_t present, got = record_read(vp, vn, r, &present, &lat, &lon, &radius);
        struct cairn_str d;
        if (got >> OR_DEV & 1 && mp_str(&r[OR_DEV], &d) && d.n <= sizeof devbuf) {
            memcpy(devbuf, d.p, d.n);
            dev = (struct cairn_str){devbuf, d.n};
        }
        arrived = present >> OR_ARRIVED & 1;
        closed = present >> OR_CLOSED & 1;
    }
    struct cairn_str odev = dev;
    bool was_waiting = !arrived && !closed && odev.p && isfinite(lat);
    struct cairn_str nd;
    if (mp_str(ob[OB_DEV], &nd) && nd.n <= CAIRN_KEY_MAX)
        dev = nd; /* borrowed from the event, valid for the call */
    if (ob[OB_DST]) {
        const msgpack_object *df[3];
        mp_get_many(ob[OB_DST], dest_keys, 3, df);
        mp_num(df[0], &lat);
        mp_num(df[1], &lon);
        mp_num(df[2], &radius);
    }
    if (is_status(&et, "order.delivered") || is_status(&et, "order.cancelled"))
        closed = true;
    bool waiting = !arrived && !closed && dev.p && isfinite(lat);
    uint32_t ti;
    if ((rc = tenant_get(g, &ev->tenant, true, &ti)))
        return rc;
    /* Waiting before and after for the same device: its oby key stays
     * (deleting and putting it again, 40 % of the order events, changed
     * nothing but cost two state writes). */
    if (was_waiting && waiting && odev.n == dev.n && !memcmp(odev.p, dev.p, dev.n))
        was_waiting = waiting = false;
    struct gf_key bk;
    if (was_waiting) {
        gk_tenant(&bk, ev->tenant.p, ev->tenant.n);
        gk_u16str(&bk, odev.p, odev.n);
        gk_raw(&bk, oid.p, oid.n);
        /* (a key too long was never put, below: nothing to delete or
         * count off) */
        if (!bk.over &&
            ((rc = hctx_del(ctx, g->oby, bk.b, bk.n)) || (rc = watch_count(ctx, bk.b, bk.n, -1))))
            return rc;
        g->t[ti]->open_orders -= !bk.over;
    }
    if (waiting) {
        gk_tenant(&bk, ev->tenant.p, ev->tenant.n);
        gk_u16str(&bk, dev.p, dev.n);
        gk_raw(&bk, oid.p, oid.n);
        if (!bk.over && ((rc = hctx_put(ctx, g->oby, bk.b, bk.n, "", 0)) ||
                         (rc = watch_count(ctx, bk.b, bk.n, +1))))
            return rc;
        g->t[ti]->open_orders += !bk.over;
    }
    cairn_buf_reset(&g->tmp);
    struct mpw w;
    mpw_init(&w, &g->tmp);
    msgpack_pack_map(&w.pk, 4 + (uint32_t)closed);
    mpw_kv_str(&w, "device_id", &dev);
    mpw_kv_num(&w, "lat", lat);
    mpw_kv_num(&w, "lon", lon);
    mpw_kv_num(&w, "radius_m", radius);
    if (closed)
        mpw_kv_bool(&w, "closed", true);
    rc = mpw_finish(&w);
    return rc ? rc : ord_put(ctx, oe, g->tmp.data, g->tmp.len);
}

/* ====================================================================== apply */

static int gf_apply(struct hctx *ctx, const struct event *ev)
{
    const struct cairn_str *t = &ev->type;
    if (t->n == 8 && !memcmp(t->p, "location", 8)) {
        int rc = on_location(ctx, ev);
        return rc ? rc : maybe_drain(ctx);
    }
    if (t->n == 5 && !memcmp(t->p, "order", 5))
        return on_order(ctx, ev);
    if (t->n == 15 && !memcmp(t->p, "geofence.define", 15))
        return on_define(ctx, ev);
    if (t->n == 15 && !memcmp(t->p, "geofence.delete", 15))
        return on_delete(ctx, ev);
    return 0;
}

/* For the benchmark: bytes of the in-memory fences and index (the tables,
 * and what the pools took from the system for ids, geometry, bands and
 * cell entries). */
size_t geofence_memory(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    size_t n = (size_t)g->capf * (sizeof *g->f + sizeof *g->mark + sizeof *g->raster) +
               g->idcap * 4 + geo_index_bytes(g->ix) + geo_pool_bytes(g->pool);
    for (uint32_t i = 0; i < g->nf; i++)
        if (g->f[i].id && !g->f[i].shape.pool) { /* left on the heap */
            const struct geo_shape *s = &g->f[i].shape;
            n += s->npolys * sizeof(struct geo_poly) + (size_t)s->nverts * 16 +
                 geo_shape_bands_bytes(s);
            for (uint32_t p = 0; p < s->npolys; p++)
                n += s->polys[p].nrings * sizeof(struct geo_ring);
        }
    return n;
}

/* For the benchmark: bytes of the device table (entries, records with
 * their room and slots, the hash table). */
size_t geofence_device_memory(struct hctx *ctx)
{
    struct gf *g = self(ctx);
    return g->dbytes + g->dcap * sizeof *g->dtab;
}

const struct handler geofence_handler = {
    .version = HANDLER_VERSION,
    .name = "geofence",
    .config_schema = config_schema,
    .consumes = consumes,
    .emits = emits,
    .open = gf_open,
    .validate = gf_validate,
    .apply = gf_apply,
    .prefetch = gf_prefetch,
    .close = gf_close,
    .view = "fences",
    .routes = gf_routes,
    .flush = gf_flush,
    /* apply keeps everything in its context (the device table, the index,
     * the membership buffer; qsort_r, no globals), so catch-up and replay
     * may run it on the engine's second thread */
    .concurrent = true,
    .raw_inputs = raw_inputs,
};
