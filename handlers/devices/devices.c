/*
 * devices — the device view, from `telemetry` and `location` inputs; emits
 * `device.online` / `device.offline`. The worked example of the handler
 * contract (README, "Writing a handler").
 *
 * DBIs:
 *   devices.view  tlen|tenant|device_id -> the device document (msgpack map)
 *   devices.seen  time (i64 BE, biased) | tlen|tenant|device_id -> ""
 *                 one entry per ONLINE device, at or before its last_seen
 *                 (a lazy lower bound, corrected by ticks), so a tick finds
 *                 the devices to mark offline without a scan.
 *
 * Semantics:
 *  - last_seen is the newest event time seen for the device. A late event
 *    (older than last_seen) is counted but never overwrites newer values.
 *  - A device goes offline when a tick's time passes last_seen +
 *    offline_after_s (config, default 300): device.offline. The next event
 *    brings it back: device.online. A device seen for the first time is
 *    online without an event (nothing changed for anyone watching).
 *  - At most OFFLINE_PER_TICK devices go offline per tick; the rest follow
 *    on the next ticks (bounded work per input, still deterministic).
 *  - readings keeps the latest value of each key of telemetry `data`, up to
 *    READINGS_MAX keys (keys beyond are not added).
 *
 * The document (keys in this order): device_id, tenant, online, status,
 * battery, first_seen, last_seen, position {lat, lon, alt, accuracy,
 * heading (those the event had), time} | null, speed, readings {…},
 * counts {telemetry, location}, last_seq.
 *
 * Performance: a device's document is read at most once per process (on
 * first use), kept decoded in a cache (struct dev), updated in memory by
 * each event and written back once per state transaction by the flush
 * hook — one put per device per transaction instead of a get, a decode, an
 * encode and a put per event (devices were over half of replay's time).
 * The cache is the handler's in-memory state in the sense of the contract:
 * the engine closes and reopens the handler after an aborted transaction,
 * so it never holds work that did not commit.
 *
 * A dev keeps its values packed, each in a span of its memory, and an
 * event replaces only the spans it has values for, in place
 * (update_in_place: a value of the same length moves nothing); a
 * location's time stays a number until the flush (struct dev). Rebuilding
 * the memory per event, and formatting a time per location, cost a third
 * of the handler's instructions. The bytes written are the same.
 */
#include "handler.h"

#include <stdlib.h>
#include <string.h>

#define OFFLINE_PER_TICK 10000
#define READINGS_MAX 64
#define DEFAULT_OFFLINE_AFTER_S 300
/* Devices kept decoded in memory across transactions (a few hundred bytes
 * each). Past it, the cache is emptied after the next flush: it then
 * holds at most this many plus those one transaction touches (bounded by
 * the engine's batch). */
#define CACHE_MAX (1u << 18)
/* A document: values copied from events (each at most a payload) plus
 * keys, counters and times. Larger fails the transaction, as it did when
 * documents were packed per event. */
#define DOC_MAX ((size_t)CAIRN_PAYLOAD_MAX_CEILING)
#define VKEY_MAX (1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX)
/* Entries of the seen index kept in memory (the seen index, below): a
 * few dozen bytes each. */
#define SEEN_MIRROR_MAX ((size_t)1 << 22)

static const char *const consumes[] = {"telemetry", "location", "tick", NULL};
static const char *const emits[] = {"device.online", "device.offline", NULL};
/* Read from the payload's bytes, not decoded by the engine (struct rv). */
static const char *const raw_inputs[] = {"telemetry", "location", NULL};

/* Where a packed value lives in a dev's mem; len 0: null. */
struct span {
    uint32_t off, len;
};

/* One device, decoded. mem holds the view key (at 0, vn bytes), then the
 * packed msgpack of status, battery, position, speed and the readings'
 * key/value pairs (nread of them, back to back).
 *
 * A position taken from a location event is kept open: its span holds
 * only the event's fields (npos key/value pairs) and its time stays a
 * number (pos_time); dev_write adds the map header and the formatted time.
 * Formatting the time per location event was ~18 % of the handler's
 * instructions, and only the last one per transaction is written. A
 * position read from a stored document is kept closed (the whole packed
 * map, or null when the span is empty). */
struct dev {
    struct hentry e; /* the cache's part: key hash, dirty, mem */
    bool online;
    bool pos_open;       /* position: npos pairs, the time in pos_time (above) */
    int64_t first, last; /* first_seen, last_seen (INT64_MIN: unreadable) */
    uint8_t nfirst;      /* first_seen formatted in tfirst (0: not yet) */
    char tfirst[31];
    int64_t pos_time;
    uint64_t n_telemetry, n_location, last_seq;
    uint32_t nread, npos;
    struct span status, battery, position, speed, readings;
};

/* An entry of the seen index, in memory (the seen index, below). */
struct sent {
    int64_t t;   /* the entry's time */
    bool in_db;  /* stored in devices.seen (as of the last flush) */
    bool queued; /* listed for the flush's puts */
    bool live;   /* in the heap */
    uint16_t kn;
    uint8_t k[]; /* the view key */
};

/* A heap slot: the entry's time next to its pointer, so the heap's
 * comparisons read the entries only on equal times (a cache miss per
 * level otherwise). tsort: the same, for sort_queued. */
struct hent {
    int64_t t;
    struct sent *e;
};

struct tsort {
    int64_t t;
    struct sent *e;
};

struct seen {
    struct hent *h; /* min-heap in devices.seen's key order */
    size_t n, cap;
    size_t ndel;     /* stored entries popped since the last flush */
    struct sent **q; /* pushed since the last flush (some popped since) */
    size_t nq, qcap;
    struct tsort *ts; /* sort_queued's arrays: 2 * tcap */
    size_t tcap;
    size_t max; /* SEEN_MIRROR_MAX, or the config's seen_mirror_max (tests) */
    bool loaded, off;
};

struct devices {
    unsigned view, seen;
    struct cairn_time_cache ts; /* fmt_time */
    struct seen sn;             /* devices.seen, mirrored (the seen index, below) */
    int64_t offline_after_ns;
    struct hcache cache;  /* of struct dev; the dirty ones are written back by flush */
    struct cairn_buf tmp; /* scratch: a position packed, a dev's next mem (take_values) */
    struct cairn_buf doc; /* the document being written back */
};

static void seen_free(struct seen *s);

static struct devices *self(struct hctx *ctx)
{
    return *hctx_user(ctx);
}

/* Packs o into v->e.mem as the value s (nothing for NULL: null). */
static void put_value(struct mpw *w, struct span *s, const msgpack_object *o)
{
    size_t at = w->buf->len;
    if (o)
        mpw_obj(w, o);
    *s = (struct span){(uint32_t)at, (uint32_t)(w->buf->len - at)};
}

/* Fills a new dev from its stored document (as read_state read it). */
static int dev_decode(struct dev *v, const msgpack_object *doc)
{
    struct cairn_str t;
    struct mpw w;
    int64_t n;
    v->online = true;
    v->first = v->last = INT64_MIN;
    mp_bool(mp_get(doc, "online"), &v->online);
    if (mp_str(mp_get(doc, "first_seen"), &t))
        cairn_time_parse(t.p, t.n, &v->first);
    if (mp_str(mp_get(doc, "last_seen"), &t))
        cairn_time_parse(t.p, t.n, &v->last);
    const msgpack_object *c = mp_get(doc, "counts"), *r = mp_get(doc, "readings");
    if (mp_i64(mp_get(c, "telemetry"), &n))
        v->n_telemetry = (uint64_t)n;
    if (mp_i64(mp_get(c, "location"), &n))
        v->n_location = (uint64_t)n;
    if (mp_i64(mp_get(doc, "last_seq"), &n))
        v->last_seq = (uint64_t)n;
    mpw_init(&w, &v->e.mem);
    put_value(&w, &v->status, mp_get(doc, "status"));
    put_value(&w, &v->battery, mp_get(doc, "battery"));
    put_value(&w, &v->position, mp_get(doc, "position"));
    put_value(&w, &v->speed, mp_get(doc, "speed"));
    size_t at = v->e.mem.len;
    for (uint32_t i = 0; r && r->type == MSGPACK_OBJECT_MAP && i < r->via.map.size; i++) {
        mpw_obj(&w, &r->via.map.ptr[i].key);
        mpw_obj(&w, &r->via.map.ptr[i].val);
        v->nread++;
    }
    v->readings = (struct span){(uint32_t)at, (uint32_t)(v->e.mem.len - at)};
    return mpw_finish(&w);
}

/* Reads the stored document of vk into a new dev. *found: it exists and
 * decodes (else the dev is new: online, never seen). CAIRN_ECORRUPT with
 * *found false when it exists but does not decode. */
static int dev_load(struct hctx *ctx, struct dev *v, bool *found)
{
    MDB_val val;
    *found = false;
    int rc = hctx_get(ctx, self(ctx)->view, v->e.mem.data, v->e.vn, &val);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, val.mv_data, val.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS) {
        rc = CAIRN_ECORRUPT;
    } else if (!(rc = dev_decode(v, &u.data))) {
        *found = true;
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

/* The cached dev of vk, loaded on first use. *exists: the device has a
 * document (false: a new dev, not yet in the view). A document that does
 * not decode is CAIRN_ECORRUPT when strict, else treated as absent (what
 * an event did before the cache: it rewrote the device from scratch). */
static int dev_get(struct hctx *ctx, const uint8_t *vk, size_t vn, bool strict, struct dev **out,
                   bool *exists)
{
    struct devices *d = self(ctx);
    struct hentry *e;
    bool fresh;
    int rc = hcache_get_or_new(&d->cache, vk, vn, sizeof(struct dev), DOC_MAX, &e, &fresh);
    *out = (struct dev *)e;
    *exists = true; /* a cached dev has been written (or will be, by flush) */
    if (rc || !fresh)
        return rc;
    struct dev *v = *out;
    rc = dev_load(ctx, v, exists);
    if (rc == CAIRN_ECORRUPT && !strict)
        rc = 0; /* rewritten from scratch, below */
    if (rc || (!*exists && strict)) {
        hentry_free(&v->e);
        *out = NULL;
        return rc ? rc : CAIRN_ENOTFOUND;
    }
    if (!*exists) {
        v->e.mem.len = vn;
        v->online = true;
        v->first = v->last = INT64_MIN;
        v->n_telemetry = v->n_location = 0;
        v->nread = 0;
        v->pos_open = false;
        v->npos = 0;
        /* Empty spans where they go (update_in_place inserts there). */
        v->status = v->battery = v->position = v->speed = v->readings =
            (struct span){(uint32_t)vn, 0};
    }
    hcache_add(&d->cache, &v->e);
    return 0;
}

/* ====================================================================== open, close */

/* handlers.devices (README, Configuration). */
static const char config_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"offline_after_s\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":31536000},"
    "\"seen_mirror_max\":{\"type\":\"integer\",\"minimum\":0}}}";

static int devices_open(struct hctx *ctx)
{
    struct devices *d = calloc(1, sizeof *d);
    if (!d)
        return CAIRN_ENOMEM;
    /* Settings in range (config_schema, engine_config_check), or absent. */
    const json_t *oa = json_object_get(hctx_config(ctx), "offline_after_s");
    d->offline_after_ns =
        (json_is_integer(oa) ? json_integer_value(oa) : DEFAULT_OFFLINE_AFTER_S) * 1000000000LL;
    const json_t *sm = json_object_get(hctx_config(ctx), "seen_mirror_max");
    d->sn.max = json_is_integer(sm) ? (size_t)json_integer_value(sm) : SEEN_MIRROR_MAX;
    cairn_time_cache_init(&d->ts);
    cairn_buf_init(&d->tmp, DOC_MAX);
    cairn_buf_init(&d->doc, DOC_MAX + 4096);
    *hctx_user(ctx) = d;
    int rc = hctx_db(ctx, "view", 0, &d->view);
    return rc ? rc : hctx_db(ctx, "seen", 0, &d->seen);
}

static void devices_close(struct hctx *ctx)
{
    struct devices *d = self(ctx);
    if (d) {
        hcache_free(&d->cache);
        seen_free(&d->sn);
        cairn_buf_deinit(&d->tmp);
        cairn_buf_deinit(&d->doc);
        free(d);
    }
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== the seen index */

static size_t seen_key(uint8_t *out, int64_t t, const uint8_t *vk, size_t vn)
{
    cairn_be64_put(out, (uint64_t)t ^ (1ull << 63));
    memcpy(out + 8, vk, vn);
    return 8 + vn;
}

/* The seen index is lazy: a device's entry is a lower bound of its
 * last_seen, written when it comes online and corrected on ticks (see
 * on_tick). Moving it on every event would cost a delete and a put per
 * event; a tick pays one move per device only when it looks due.
 *
 * The index is mirrored in memory (struct seen): a min-heap of its
 * entries in devices.seen's key order, loaded by one scan the first time
 * it is needed. Ticks read and change the heap; the DBI is brought to
 * the same entries once per transaction, by the flush: the stored entries
 * popped since the last flush are always the first ones of the DBI (the
 * heap pops in key order, and the stored ones do not change), so they are
 * deleted from its front, then the entries pushed since and still there
 * are put in key order, through one cursor. A move (a delete and a put
 * from the root of the B-tree, in the tick) cost ~5 000 instructions,
 * 15 % of the handler on the bench log; batched, ~3 500 (most of it the
 * delete: LMDB's node delete walks the page's pointer array). The DBI
 * holds the same entries at every commit as before. Past SEEN_MIRROR_MAX entries (config:
 * seen_mirror_max, for tests of the direct path) the mirror is written
 * out and dropped, and the index is read and written directly. */
/* Allocations of a few dozen bytes: one per online device. */
static void seen_ent_free(struct sent *e)
{
    free(e);
}

/* devices.seen's key order: the time (biased big-endian: signed order),
 * then the view key by memcmp, the shorter first. */
static bool sent_less(const struct sent *a, const struct sent *b)
{
    if (a->t != b->t)
        return a->t < b->t;
    size_t n = a->kn < b->kn ? a->kn : b->kn;
    int c = memcmp(a->k, b->k, n);
    return c ? c < 0 : a->kn < b->kn;
}

static bool hent_less(const struct hent *a, const struct hent *b)
{
    return a->t != b->t ? a->t < b->t : sent_less(a->e, b->e);
}

static bool sent_same(const struct sent *a, const struct sent *b)
{
    return a->t == b->t && a->kn == b->kn && !memcmp(a->k, b->k, a->kn);
}

static int heap_push(struct seen *s, struct sent *e)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        struct hent *h = realloc(s->h, cap * sizeof *h);
        if (!h)
            return CAIRN_ENOMEM;
        s->h = h;
        s->cap = cap;
    }
    size_t i = s->n++;
    struct hent x = {e->t, e};
    while (i > 0 && hent_less(&x, &s->h[(i - 1) / 2])) {
        s->h[i] = s->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->h[i] = x;
    e->live = true;
    return 0;
}

static struct sent *heap_pop(struct seen *s)
{
    struct sent *top = s->h[0].e;
    struct hent last = s->h[--s->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->n)
            break;
        if (c + 1 < s->n && hent_less(&s->h[c + 1], &s->h[c]))
            c++;
        if (!hent_less(&s->h[c], &last))
            break;
        s->h[i] = s->h[c];
        i = c;
    }
    if (s->n)
        s->h[i] = last;
    top->live = false;
    return top;
}

/* Lists e for the flush's puts (once). */
static int seen_queue(struct seen *s, struct sent *e)
{
    if (e->queued)
        return 0;
    if (s->nq == s->qcap) {
        size_t cap = s->qcap ? 2 * s->qcap : 1024;
        struct sent **q = realloc(s->q, cap * sizeof *q);
        if (!q)
            return CAIRN_ENOMEM;
        s->q = q;
        s->qcap = cap;
    }
    s->q[s->nq++] = e;
    e->queued = true;
    return 0;
}

/* e (popped) is gone: freed now, or by the flush when it is queued. */
static void seen_drop(struct sent *e)
{
    if (!e->queued)
        seen_ent_free(e);
}

/* Sorts q[0..n) in key order: a merge sort of (time, entry) pairs, the
 * time compared inline, the keys only on a tie (qsort's call per
 * comparison was a tenth of the index's writing). */
static int sort_queued(struct seen *s, size_t n)
{
    if (n < 2)
        return 0;
    if (n > s->tcap) {
        struct tsort *p = realloc(s->ts, 2 * n * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        s->ts = p;
        s->tcap = n;
    }
    struct tsort *a = s->ts, *b = s->ts + n;
    for (size_t i = 0; i < n; i++)
        a[i] = (struct tsort){s->q[i]->t, s->q[i]};
    for (size_t w = 1; w < n; w *= 2) { /* bottom-up merges of runs of w */
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                b[k++] = a[j].t < a[i].t || (a[j].t == a[i].t && sent_less(a[j].e, a[i].e))
                             ? a[j++]
                             : a[i++];
            while (i < mid)
                b[k++] = a[i++];
            while (j < hi)
                b[k++] = a[j++];
        }
        struct tsort *t = a;
        a = b;
        b = t;
    }
    for (size_t i = 0; i < n; i++)
        s->q[i] = a[i].e;
    return 0;
}

/* Brings devices.seen to the mirror's entries: deletes the first ndel
 * stored entries, puts the queued live ones in key order. */
static int seen_write(struct hctx *ctx)
{
    struct devices *d = self(ctx);
    struct seen *s = &d->sn;
    struct hcursor *c = NULL;
    size_t nput = 0;
    int rc = 0;
    for (size_t i = 0; i < s->nq; i++) { /* the live ones first, the gone ones freed */
        struct sent *e = s->q[i];
        e->queued = false;
        if (e->live && !e->in_db)
            s->q[nput++] = e;
        else if (!e->live)
            seen_ent_free(e);
    }
    s->nq = 0;
    if (!s->ndel && !nput)
        return 0;
    if ((rc = sort_queued(s, nput)))
        return rc;
    rc = hctx_cursor_open(ctx, d->seen, NULL, 0, &c);
    for (; !rc && s->ndel; s->ndel--) {
        MDB_val k, v;
        rc = hctx_cursor_next(c, &k, &v);
        rc = rc == CAIRN_ENOTFOUND ? CAIRN_ECORRUPT : rc; /* the mirror had it */
        if (!rc)
            rc = hctx_cursor_del(c);
    }
    for (size_t i = 0; !rc && i < nput; i++) {
        uint8_t sk[8 + VKEY_MAX];
        struct sent *e = s->q[i];
        rc = hctx_cursor_put(c, sk, seen_key(sk, e->t, e->k, e->kn), "", 0);
        e->in_db = !rc;
    }
    hctx_cursor_close(c);
    return rc;
}

/* Frees the mirror (not the DBI). */
static void seen_free(struct seen *s)
{
    for (size_t i = 0; i < s->nq; i++)
        if (!s->q[i]->live)
            seen_ent_free(s->q[i]);
    for (size_t i = 0; i < s->n; i++)
        seen_ent_free(s->h[i].e);
    free(s->h);
    free(s->q);
    free(s->ts);
    *s = (struct seen){.max = s->max};
}

static struct sent *sent_new(int64_t t, const uint8_t *vk, size_t vn)
{
    struct sent *e = malloc(sizeof *e + vn);
    if (e) {
        *e = (struct sent){.t = t, .kn = (uint16_t)vn};
        memcpy(e->k, vk, vn);
    }
    return e;
}

/* The mirror, loaded (one scan of devices.seen) on first use; false when
 * it is off (the index is then read and written directly). */
static int seen_ready(struct hctx *ctx, bool *on)
{
    struct devices *d = self(ctx);
    struct seen *s = &d->sn;
    struct hcursor *c = NULL;
    MDB_val k, v;
    *on = !s->off;
    if (s->loaded || s->off)
        return 0;
    bool over = false;
    int rc = hctx_cursor_open(ctx, d->seen, NULL, 0, &c);
    while (!rc && !(rc = hctx_cursor_next(c, &k, &v))) {
        struct sent *e;
        if ((over = s->n >= s->max))
            break;
        if (k.mv_size < 8 || k.mv_size - 8 > VKEY_MAX)
            rc = CAIRN_ECORRUPT;
        else if (!(e = sent_new((int64_t)(cairn_be64_get(k.mv_data) ^ (1ull << 63)),
                                (const uint8_t *)k.mv_data + 8, k.mv_size - 8)))
            rc = CAIRN_ENOMEM;
        else if ((rc = heap_push(s, e))) /* in key order: each lands at the end */
            seen_ent_free(e);
        else
            e->in_db = true;
    }
    if (c)
        hctx_cursor_close(c);
    if (over || rc != CAIRN_ENOTFOUND) {
        seen_free(s); /* nothing written yet: the DBI is as loaded */
        s->off = over;
        *on = false;
        return over ? 0 : rc;
    }
    s->loaded = true;
    return 0;
}

/* Past SEEN_MIRROR_MAX: the DBI brought up to date, the mirror dropped. */
static int seen_spill(struct hctx *ctx)
{
    struct seen *s = &self(ctx)->sn;
    int rc = seen_write(ctx);
    seen_free(s);
    s->off = true;
    return rc;
}

static int seen_put(struct hctx *ctx, const uint8_t *vk, size_t vn, int64_t t)
{
    struct seen *s = &self(ctx)->sn;
    bool on;
    int rc = seen_ready(ctx, &on);
    if (rc)
        return rc;
    if (on && s->n >= s->max && (rc = seen_spill(ctx)))
        return rc;
    if (s->off) {
        uint8_t sk[8 + VKEY_MAX];
        return hctx_put(ctx, self(ctx)->seen, sk, seen_key(sk, t, vk, vn), "", 0);
    }
    struct sent *e = sent_new(t, vk, vn);
    if (!e)
        return CAIRN_ENOMEM;
    if ((rc = heap_push(s, e))) {
        seen_ent_free(e);
        return rc;
    }
    return seen_queue(s, e);
}

/* Takes the index's first entry when it is older than threshold: 1 with
 * *out (popped; the caller pushes it again or drops it), 0 when there is
 * none. Entries equal to it (a put of a key already there) go with it:
 * the DBI held one. */
static int seen_take(struct seen *s, int64_t threshold, struct sent **out)
{
    if (!s->n || s->h[0].t >= threshold)
        return 0;
    struct sent *e = heap_pop(s);
    bool stored = e->in_db;
    while (s->n && s->h[0].t == e->t && sent_same(s->h[0].e, e)) {
        struct sent *x = heap_pop(s);
        stored |= x->in_db;
        seen_drop(x);
    }
    s->ndel += stored;
    e->in_db = false;
    *out = e;
    return 1;
}

/* ====================================================================== updating a dev */

/* A value of the payload, as its bytes (p NULL: absent). Telemetry and
 * location reach devices undecoded (raw_inputs): ingest stores every
 * payload as the bytes cairn_json_to_msgpack writes (canonical msgpack
 * input as it came, anything else transcoded: the packer's forms, unique
 * string keys), so a value's bytes are the ones packing its decoded form
 * wrote before, and are copied as they are. Decoding every telemetry and
 * location body into msgpack objects, for devices to pack most of it
 * again, was ~8 % of a replay. (A payload in other forms, which ingest
 * never stores, would keep them: still the same state on every replay.) */
struct rv {
    const uint8_t *p;
    uint32_t n;
};

/* The payload fields devices reads, found in one pass over the payload
 * (five mp_get scans per event were 2.3 % of replay); p NULL when absent.
 * The first occurrence wins, as with mp_get. */
#define POS_FIELDS 5
static const char *const pos_names[POS_FIELDS] = {"lat", "lon", "alt", "accuracy", "heading"};
static const uint8_t pos_len[POS_FIELDS] = {3, 3, 3, 8, 7};

struct devin {
    struct rv device_id, status, battery, data, speed, pos[POS_FIELDS];
};

/* mp_raw_len, with the kinds payloads and readings hold most (short
 * strings, ints, floats, nil, booleans) measured inline. 0: malformed. */
static inline size_t raw_len(const uint8_t *p, size_t n)
{
    size_t len;
    if (!n)
        return 0;
    if (p[0] <= 0x7f || p[0] >= 0xe0 || p[0] == 0xc0 || p[0] == 0xc2 || p[0] == 0xc3)
        len = 1; /* fixints, nil, booleans */
    else if ((p[0] & 0xe0) == 0xa0)
        len = 1u + (p[0] & 0x1f);
    else if (p[0] == 0xcb)
        len = 9;
    else if (p[0] >= 0xcc && p[0] <= 0xd3) /* u8..u64, i8..i64 */
        len = 1 + (1u << ((p[0] - 0xcc) & 3));
    else if (p[0] == 0xca)
        len = 5;
    else
        return mp_raw_len(p, n); /* refuses 0xc1 (never written) */
    return len <= n ? len : 0;
}

/* A packed msgpack string's bytes; false for any other type. */
static bool raw_str(const uint8_t *p, size_t n, struct cairn_str *s)
{
    if (!n)
        return false; /* p may be NULL: an absent value */
    struct cairn_rd r = {p, p + n};
    return !cairn_rd_str(&r, s, false);
}

/* The pairs of a packed map, read one at a time (rmap_next). */
struct rmap {
    struct cairn_rd r;
    uint32_t left;
};

/* Starts reading the map in v; false when v is absent or not a map. */
static bool rmap_open(struct rmap *m, const struct rv *v)
{
    if (!v->p)
        return false;
    m->r = (struct cairn_rd){v->p, v->p + v->n};
    return !cairn_rd_map(&m->r, &m->left);
}

/* The next pair: 1 with *k and *val, 0 past the last, CAIRN_ECORRUPT
 * when the bytes end inside one (the map is not what its header says). */
static int rmap_next(struct rmap *m, struct rv *k, struct rv *val)
{
    if (!m->left)
        return 0;
    const uint8_t *p = m->r.p;
    size_t left = (size_t)(m->r.end - p), kn = raw_len(p, left), vn;
    if (!kn || !(vn = raw_len(p + kn, left - kn)))
        return CAIRN_ECORRUPT;
    *k = (struct rv){p, (uint32_t)kn};
    *val = (struct rv){p + kn, (uint32_t)vn};
    m->r.p = p + kn + vn;
    m->left--;
    return 1;
}

/* The pairs of a map in v, 0 when v is absent or not a map. */
static uint32_t rmap_size(const struct rv *v)
{
    struct rmap m;
    return rmap_open(&m, v) ? m.left : 0;
}

/* Finds devices' fields in the payload (p, n): 0, or CAIRN_ECORRUPT when
 * it is a map whose bytes do not hold its pairs. */
static int scan_body(const uint8_t *p, size_t n, struct devin *in)
{
    struct rmap m;
    struct rv k, val;
    int more;
    memset(in, 0, sizeof *in);
    if (!rmap_open(&m, &(struct rv){p, (uint32_t)n}))
        return 0; /* not a map: no fields */
    while ((more = rmap_next(&m, &k, &val)) > 0) {
        struct cairn_str s;
        struct rv *slot = NULL;
        if (!raw_str(k.p, k.n, &s))
            continue;
        switch (s.n) {
        case 9: slot = !memcmp(s.p, "device_id", 9) ? &in->device_id : NULL; break;
        case 6: slot = !memcmp(s.p, "status", 6) ? &in->status : NULL; break;
        case 4: slot = !memcmp(s.p, "data", 4) ? &in->data : NULL; break;
        case 5: slot = !memcmp(s.p, "speed", 5) ? &in->speed : NULL; break;
        case 7:
            slot = !memcmp(s.p, "battery", 7)   ? &in->battery
                   : !memcmp(s.p, "heading", 7) ? &in->pos[4]
                                                : NULL;
            break;
        case 8: slot = !memcmp(s.p, "accuracy", 8) ? &in->pos[3] : NULL; break;
        case 3:
            for (int f = 0; f < 3 && !slot; f++)
                slot = !memcmp(s.p, pos_names[f], 3) ? &in->pos[f] : NULL;
            break;
        default: break;
        }
        if (slot && !slot->p)
            *slot = val;
    }
    return more;
}

/* The value of data's first string key equal to s: true with *val. */
static bool data_find(const struct rv *data, const struct cairn_str *s, struct rv *val)
{
    struct rmap m;
    struct rv k;
    struct cairn_str ks;
    if (!rmap_open(&m, data))
        return false;
    while (rmap_next(&m, &k, val) > 0)
        if (raw_str(k.p, k.n, &ks) && ks.n == s->n && !memcmp(ks.p, s->p, s->n))
            return true;
    return false;
}

/* Writes the readings pairs: data (new) merged over the dev's (old): old
 * keys keep their order, new values win, new string keys are appended up
 * to READINGS_MAX. Keys are only ever strings (only string keys are
 * added), so they are compared as strings. */
static int merge_readings(struct mpw *w, const struct dev *v, const struct rv *data,
                          uint32_t *count)
{
    struct {
        const uint8_t *k, *val;
        size_t kn, vn;
        struct cairn_str s;
        bool str;
    } old[READINGS_MAX];
    uint32_t no = v->nread;
    const uint8_t *p = v->e.mem.data + v->readings.off, *end = p + v->readings.len;
    if (no > READINGS_MAX)
        return CAIRN_ECORRUPT;
    for (uint32_t j = 0; j < no; j++) {
        old[j].k = p;
        if (!(old[j].kn = raw_len(p, (size_t)(end - p))))
            return CAIRN_ECORRUPT;
        p += old[j].kn;
        old[j].val = p;
        if (!(old[j].vn = raw_len(p, (size_t)(end - p))))
            return CAIRN_ECORRUPT;
        p += old[j].vn;
        old[j].str = raw_str(old[j].k, old[j].kn, &old[j].s);
    }
    for (uint32_t j = 0; j < no; j++) {
        struct rv nv;
        mpw_raw(w, old[j].k, old[j].kn);
        if (old[j].str && data_find(data, &old[j].s, &nv))
            mpw_raw(w, nv.p, nv.n);
        else
            mpw_raw(w, old[j].val, old[j].vn);
    }
    uint32_t nadd = 0;
    struct rmap m;
    struct rv k, val;
    int more = rmap_open(&m, data);
    while (more && no + nadd < READINGS_MAX && (more = rmap_next(&m, &k, &val)) > 0) {
        struct cairn_str s;
        if (!raw_str(k.p, k.n, &s))
            continue;
        bool known = false;
        for (uint32_t j = 0; j < no && !known; j++)
            known = old[j].str && old[j].s.n == s.n && !memcmp(old[j].s.p, s.p, s.n);
        if (!known) {
            mpw_raw(w, k.p, k.n);
            mpw_raw(w, val.p, val.n);
            nadd++;
        }
    }
    *count = no + nadd;
    return more < 0 ? more : 0;
}

/* A value from the event when it has one (and use), else the dev's. */
static void value_or_keep(struct mpw *w, struct span *out, const struct dev *v,
                          const struct span *keep, const struct rv *o)
{
    size_t at = w->buf->len;
    if (o && o->p)
        mpw_raw(w, o->p, o->n);
    else
        mpw_raw(w, v->e.mem.data + keep->off, keep->len);
    *out = (struct span){(uint32_t)at, (uint32_t)(w->buf->len - at)};
}

/* The fields of a location event's position (the open form: no map
 * header, no time; see struct dev) into t, emptied first: each field the
 * event has, as its key and its value's bytes. *npos: how many. */
static int pack_position(struct cairn_buf *t, const struct devin *in, uint32_t *npos)
{
    size_t need = 0;
    for (size_t i = 0; i < POS_FIELDS; i++)
        need += in->pos[i].p ? 1 + pos_len[i] + in->pos[i].n : 0;
    cairn_buf_reset(t);
    int rc = t->cap >= need ? 0 : cairn_buf_reserve(t, need);
    if (rc)
        return rc;
    uint8_t *o = t->data;
    *npos = 0;
    for (size_t i = 0; i < POS_FIELDS; i++)
        if (in->pos[i].p) {
            o = mpd_raw(mpd_strn(o, pos_names[i], pos_len[i]), in->pos[i].p, in->pos[i].n);
            ++*npos;
        }
    t->len = (size_t)(o - t->data);
    return 0;
}

/* The values of a newer event over the dev's: status, battery and
 * readings from telemetry, position and speed from location. Built in
 * the scratch buffer, then copied into the dev's mem. Only for telemetry
 * data of more than 64 entries now (update_in_place does the rest, to the
 * same bytes; JSON objects of more than 64 keys are stored through the
 * transcoder's slow path). */
static int take_values(struct devices *d, struct dev *v, const struct devin *in)
{
    struct cairn_buf *t = &d->tmp;
    struct mpw w;
    struct dev n = *v;
    cairn_buf_reset(t);
    /* Room for everything but the event's values, so most appends take
     * the packer's fast path. */
    int rc = cairn_buf_reserve(t, v->e.mem.len + 256);
    if (!rc)
        rc = cairn_buf_append(t, v->e.mem.data, v->e.vn);
    if (rc)
        return rc;
    mpw_init(&w, t);
    value_or_keep(&w, &n.status, v, &v->status, &in->status);
    value_or_keep(&w, &n.battery, v, &v->battery, &in->battery);
    size_t at = t->len;
    mpw_raw(&w, v->e.mem.data + v->position.off, v->position.len);
    n.position = (struct span){(uint32_t)at, (uint32_t)(t->len - at)};
    value_or_keep(&w, &n.speed, v, &v->speed, NULL);
    at = t->len;
    if ((rc = merge_readings(&w, v, &in->data, &n.nread)))
        return rc;
    n.readings = (struct span){(uint32_t)at, (uint32_t)(t->len - at)};
    if ((rc = mpw_finish(&w)))
        return rc;
    /* Copied into the dev's memory, which keeps its capacity: swapping
     * the two buffers (as before) handed each dev the previous one's
     * memory, too small as often as not, so the scratch was reallocated on
     * most events (reserve was 3 % of the handler). */
    n.e.mem = v->e.mem;
    cairn_buf_reset(&n.e.mem);
    if ((rc = cairn_buf_append(&n.e.mem, t->data, t->len)))
        return rc;
    *v = n;
    return 0;
}

/* ====================================================================== updating in place */

/* update_in_place's spans, in the order of their bytes in mem. */
enum { SP_STATUS, SP_BATTERY, SP_POSITION, SP_SPEED, SP_READINGS, SP_N };

/* Replaces the n bytes at `at` of v's memory, inside span sp, with the
 * len bytes at src (never inside v's memory): the rest of the memory
 * moves when the length differs, and the spans after sp with it. */
static int replace(struct dev *v, int sp, size_t at, size_t n, const uint8_t *src, size_t len)
{
    struct cairn_buf *m = &v->e.mem;
    struct span *s[SP_N] = {&v->status, &v->battery, &v->position, &v->speed, &v->readings};
    if (len != n) {
        int rc = len > n ? cairn_buf_reserve(m, len - n) : 0;
        if (rc)
            return rc;
        memmove(m->data + at + len, m->data + at + n, m->len - at - n);
        m->len = m->len - n + len;
        s[sp]->len = (uint32_t)(s[sp]->len - n + len);
        for (int k = sp + 1; k < SP_N; k++)
            s[k]->off = (uint32_t)(s[k]->off - n + len);
    }
    memcpy(m->data + at, src, len);
    return 0;
}

/* Span sp becomes the event's value o (kept when it has none). */
static int replace_value(struct dev *v, int sp, const struct span *s, const struct rv *o)
{
    return o->p ? replace(v, sp, s->off, s->len, o->p, o->n) : 0;
}

/* Two keys of n bytes equal: 8 <= n <= 16 as two overlapping words
 * (reading keys are mostly that long: a memcmp call each was 1.5 % of
 * the handler), else memcmp. */
static inline bool key_eq(const char *a, const char *b, size_t n)
{
    if (n < 8 || n > 16)
        return !memcmp(a, b, n);
    uint64_t a0, a1, b0, b1;
    memcpy(&a0, a, 8);
    memcpy(&b0, b, 8);
    memcpy(&a1, a + n - 8, 8);
    memcpy(&b1, b + n - 8, 8);
    return a0 == b0 && a1 == b1;
}

/* Data's key p (n bytes; NULL: not a string) is s: length, first byte,
 * then key_eq. */
static inline bool name_eq(const char *p, uint32_t n, const struct cairn_str *s)
{
    return p && n == s->n && (!n || (p[0] == s->p[0] && key_eq(p, s->p, n)));
}

/* merge_readings in place (for data of at most 64 entries: one bit
 * each): each old key's value is replaced by data's first value of that
 * key, then data's other string keys are appended (readings is the last
 * span: at the end of mem), up to READINGS_MAX. Keys are compared by
 * length and first byte, then key_eq. When data's string keys are
 * distinct (always, from JSON producers; checked for data of up to 16
 * entries), an old key matches at most one, and it is looked for first
 * right after the previous match: data lists its keys in the order they
 * were first stored, so most old keys are found at the first try
 * instead of by a scan of data (the scans were 8 % of the handler). */
static int merge_in_place(struct dev *v, const struct rv *data)
{
    struct {
        const char *p;
        uint32_t n;
        struct rv k, val;
    } dk[64];           /* data's pairs; p NULL: a key that is not a string */
    uint64_t known = 0; /* data entries whose key is an old key */
    uint32_t no = v->nread, hint = 0, nd = 0;
    size_t at = v->readings.off;
    struct rmap m;
    int rc = rmap_open(&m, data);
    if (no > READINGS_MAX)
        return CAIRN_ECORRUPT;
    while (rc && nd < 64 && (rc = rmap_next(&m, &dk[nd].k, &dk[nd].val)) > 0) {
        struct cairn_str s;
        bool str = raw_str(dk[nd].k.p, dk[nd].k.n, &s);
        dk[nd].p = str ? s.p : NULL;
        dk[nd++].n = str ? (uint32_t)s.n : 0;
    }
    if (rc < 0)
        return rc;
    bool distinct = nd <= 16;
    for (uint32_t i = 1; distinct && i < nd; i++)
        for (uint32_t i2 = 0; distinct && dk[i].p && i2 < i; i2++)
            distinct = !name_eq(dk[i2].p, dk[i2].n, &(struct cairn_str){dk[i].p, dk[i].n});
    for (uint32_t j = 0; j < no; j++) {
        size_t end = (size_t)v->readings.off + v->readings.len, kn, vn;
        const uint8_t *p = v->e.mem.data + at;
        struct cairn_str s;
        long first = -1;
        if (!(kn = raw_len(p, end - at)) || !(vn = raw_len(p + kn, end - at - kn)))
            return CAIRN_ECORRUPT;
        if ((p[0] & 0xe0) == 0xa0) /* a short string key: raw_str inline */
            s = (struct cairn_str){(const char *)p + 1, kn - 1};
        else if (!raw_str(p, kn, &s))
            s.p = NULL; /* not a string: matches no data key */
        if (s.p && distinct && hint < nd && name_eq(dk[hint].p, dk[hint].n, &s)) {
            first = hint;
        } else {
            for (uint32_t i = 0; s.p && i < nd && !(distinct && first >= 0); i++)
                if (name_eq(dk[i].p, dk[i].n, &s))
                    first = first < 0 ? (long)i : first, known |= 1ull << i;
        }
        if (first >= 0) {
            known |= 1ull << first;
            hint = (uint32_t)first + 1;
        }
        at += kn;
        if (first >= 0) {
            const struct rv *nv = &dk[first].val;
            if ((rc = replace(v, SP_READINGS, at, vn, nv->p, nv->n)))
                return rc;
            vn = nv->n;
        }
        at += vn;
    }
    uint32_t nadd = 0;
    size_t len = v->e.mem.len;
    for (uint32_t i = 0; i < nd && no + nadd < READINGS_MAX; i++)
        if (dk[i].p && !(known >> i & 1)) { /* appended: readings ends mem */
            if ((rc = cairn_buf_append(&v->e.mem, dk[i].k.p, dk[i].k.n)) ||
                (rc = cairn_buf_append(&v->e.mem, dk[i].val.p, dk[i].val.n)))
                return rc;
            nadd++;
        }
    v->readings.len += (uint32_t)(v->e.mem.len - len);
    v->nread = no + nadd;
    return 0;
}

/* take_values without rebuilding the dev's memory: each value the event
 * has replaces its span in place (most keep their length: nothing else
 * moves). Rebuilding copied every value of the device twice per event.
 * Data of more than 64 entries goes through take_values. Same bytes. */
static int update_in_place(struct devices *d, struct dev *v, const struct event *ev,
                           const struct devin *in, bool loc)
{
    int rc;
    if (loc) {
        uint32_t npos;
        if ((rc = pack_position(&d->tmp, in, &npos)) ||
            (rc = replace(v, SP_POSITION, v->position.off, v->position.len, d->tmp.data,
                          d->tmp.len)))
            return rc;
        v->npos = npos;
        v->pos_open = true;
        v->pos_time = ev->time;
        return replace_value(v, SP_SPEED, &v->speed, &in->speed);
    }
    if (rmap_size(&in->data) > 64)
        return take_values(d, v, in);
    if ((rc = replace_value(v, SP_STATUS, &v->status, &in->status)) ||
        (rc = replace_value(v, SP_BATTERY, &v->battery, &in->battery)))
        return rc;
    return merge_in_place(v, &in->data);
}

/* ====================================================================== writing back */

/* cairn_time_format's bytes (out: MPD_TIME_MAX), through the handler's
 * cache of recently formatted seconds: a transaction's last_seen and
 * position times fall in a few dozen seconds, and the whole format was
 * 3 % of the handler. */
static size_t fmt_time(struct devices *d, int64_t ns, char *out)
{
    return cairn_time_format_cached(&d->ts, ns, out, MPD_TIME_MAX);
}

static uint8_t *put_span(uint8_t *o, const struct dev *v, const struct span *s)
{
    return s->len ? mpd_raw(o, v->e.mem.data + s->off, s->len) : mpd_nil(o);
}

/* Packs the dev's document (keys in the order of the file comment) and
 * puts it in the view through c. */
static int dev_write(struct hctx *ctx, struct hcursor *c, struct hentry *e)
{
    struct devices *d = self(ctx);
    struct dev *v = (struct dev *)e;
    struct cairn_str tenant, id;
    if (!hkey_split(v->e.mem.data, v->e.vn, &tenant, &id))
        return CAIRN_ECORRUPT;
    cairn_buf_reset(&d->doc);
    /* mem holds every variable-length part; the rest is 12 keys (and the
     * open position's "time"), 3 times, and headers and numbers. */
    int rc = cairn_buf_reserve(&d->doc, v->e.mem.len + 3 * MPD_TIME_MAX + 32 * MPD_HDR_MAX + 136);
    if (rc)
        return rc;
    uint8_t *o = mpd_map(d->doc.data, 12);
    o = mpd_strn(mpd_key(o, "device_id"), id.p, id.n);
    o = mpd_strn(mpd_key(o, "tenant"), tenant.p, tenant.n);
    o = mpd_bool(mpd_key(o, "online"), v->online);
    o = put_span(mpd_key(o, "status"), v, &v->status);
    o = put_span(mpd_key(o, "battery"), v, &v->battery);
    /* last_seen formatted once: a location's time is mostly the same
     * (mpd_time's bytes; formatting was a quarter of the flush). */
    char last[MPD_TIME_MAX], t[MPD_TIME_MAX];
    size_t nlast = fmt_time(d, v->last, last);
    if (v->first != v->last && !v->nfirst) { /* kept: it seldom changes */
        size_t n = fmt_time(d, v->first, t);
        if (n <= sizeof v->tfirst) {
            memcpy(v->tfirst, t, n);
            v->nfirst = (uint8_t)n;
        }
    }
    o = mpd_key(o, "first_seen");
    o = v->first == v->last ? mpd_strn(o, last, nlast)
        : v->nfirst         ? mpd_strn(o, v->tfirst, v->nfirst)
                            : mpd_strn(o, t, fmt_time(d, v->first, t));
    o = mpd_strn(mpd_key(o, "last_seen"), last, nlast);
    o = mpd_key(o, "position");
    if (v->pos_open) { /* the same bytes as the closed form (struct dev) */
        o = mpd_map(o, v->npos + 1);
        o = mpd_raw(o, v->e.mem.data + v->position.off, v->position.len);
        o = mpd_key(o, "time");
        o = v->pos_time == v->last ? mpd_strn(o, last, nlast)
                                   : mpd_strn(o, t, fmt_time(d, v->pos_time, t));
    } else {
        o = put_span(o, v, &v->position);
    }
    o = put_span(mpd_key(o, "speed"), v, &v->speed);
    o = mpd_map(mpd_key(o, "readings"), v->nread);
    o = mpd_raw(o, v->e.mem.data + v->readings.off, v->readings.len);
    o = mpd_map(mpd_key(o, "counts"), 2);
    o = mpd_u64(mpd_key(o, "telemetry"), v->n_telemetry);
    o = mpd_u64(mpd_key(o, "location"), v->n_location);
    o = mpd_u64(mpd_key(o, "last_seq"), v->last_seq);
    d->doc.len = (size_t)(o - d->doc.data);
    assert(d->doc.len <= d->doc.cap);
    return hctx_cursor_put(c, v->e.mem.data, v->e.vn, d->doc.data, d->doc.len);
}

/* Writes back every device this transaction changed. */
static int devices_flush(struct hctx *ctx)
{
    struct devices *d = self(ctx);
    int rc = hcache_flush(ctx, &d->cache, d->view, dev_write, CACHE_MAX);
    return rc ? rc : seen_write(ctx);
}

/* ====================================================================== apply */

static int emit_simple(struct hctx *ctx, const struct event *cause, const char *type,
                       const struct cairn_str *tenant, const struct cairn_str *id,
                       int64_t last_seen)
{
    uint8_t tmp[512];
    struct cairn_buf b = {.data = tmp, .cap = sizeof tmp, .max = sizeof tmp};
    struct mpw w;
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 3);
    mpw_kv_str(&w, "device_id", id);
    mpw_kv_time(&w, "last_seen", last_seen);
    mpw_kv_time(&w, "at", cause->time);
    int rc = mpw_finish(&w);
    return rc ? rc : hctx_emit(ctx, cause, type, tenant, id, b.data, b.len);
}

static int on_device_event(struct hctx *ctx, const struct event *ev)
{
    struct devices *d = self(ctx);
    struct cairn_str id;
    uint8_t vk[VKEY_MAX];
    size_t vn;
    struct devin in;
    int rc = scan_body(ev->payload, ev->payload_len, &in);
    if (rc)
        return rc;
    if (!raw_str(in.device_id.p, in.device_id.n, &id) || id.n > CAIRN_KEY_MAX ||
        !(vn = hkey_make(vk, sizeof vk, &ev->tenant, &id)))
        return 0; /* the schema requires it; an old log may not have it */
    struct dev *v;
    bool exists;
    if ((rc = dev_get(ctx, vk, vn, false, &v, &exists)))
        return rc;
    bool loc = ev->type.n == 8 && !memcmp(ev->type.p, "location", 8);
    bool was_online = exists && v->online;
    if ((!exists || ev->time >= v->last) && (rc = update_in_place(d, v, ev, &in, loc)))
        return rc;
    int64_t last = exists && v->last > ev->time ? v->last : ev->time;
    if (!exists || v->first > ev->time) {
        v->first = ev->time;
        v->nfirst = 0;
    }
    v->last = last;
    v->online = true;
    v->n_telemetry += !loc;
    v->n_location += loc;
    v->last_seq = ev->seq;
    if ((rc = hcache_mark(&d->cache, &v->e)))
        return rc;
    if (!was_online && (rc = seen_put(ctx, vk, vn, last)))
        return rc;
    return exists && !was_online ? emit_simple(ctx, ev, "device.online", &ev->tenant, &id, last)
                                 : 0;
}

/* The tick's work on one due entry of the index (key vk): the device
 * goes offline (and its entry away), or, seen since, its entry moves to
 * its last_seen (*move set; the caller puts it). */
static int tick_device(struct hctx *ctx, const struct event *tick, const uint8_t *vk, size_t vn,
                       int64_t threshold, int64_t *move)
{
    struct devices *d = self(ctx);
    struct cairn_str tenant, id;
    struct dev *dv;
    bool exists;
    *move = INT64_MIN;
    if (!hkey_split(vk, vn, &tenant, &id))
        return CAIRN_ECORRUPT;
    int rc = dev_get(ctx, vk, vn, true, &dv, &exists);
    if (rc == CAIRN_ENOTFOUND)
        return 0; /* no document: a stale entry */
    if (rc || !dv->online)
        return rc;
    if (dv->last >= threshold) { /* seen since: the entry moves up, past this scan */
        *move = dv->last;
        return 0;
    }
    dv->online = false;
    rc = hcache_mark(&d->cache, &dv->e);
    return rc ? rc : emit_simple(ctx, tick, "device.offline", &tenant, &id, dv->last);
}

/* Marks offline the devices whose last_seen is older than the threshold.
 * Index entries are lower bounds: an entry that is due but whose device
 * was seen since is moved to its real last_seen instead. */
static int on_tick(struct hctx *ctx, const struct event *tick)
{
    struct devices *d = self(ctx);
    struct seen *s = &d->sn;
    int64_t threshold = tick->time - d->offline_after_ns, move;
    bool on;
    int rc = seen_ready(ctx, &on);
    if (rc)
        return rc;
    if (on) { /* the mirror: the same entries, in the same order */
        struct sent *e;
        for (int n = 0; !rc && n < OFFLINE_PER_TICK && seen_take(s, threshold, &e); n++) {
            rc = tick_device(ctx, tick, e->k, e->kn, threshold, &move);
            if (rc || move == INT64_MIN) {
                seen_drop(e);
                continue;
            }
            e->t = move;
            if (!(rc = heap_push(s, e)))
                rc = seen_queue(s, e);
            else
                seen_drop(e);
        }
        return rc;
    }
    struct hcursor *c;
    MDB_val k, v;
    rc = hctx_cursor_open(ctx, d->seen, NULL, 0, &c);
    for (int n = 0; !rc && n < OFFLINE_PER_TICK; n++) {
        if ((rc = hctx_cursor_next(c, &k, &v)))
            break;
        int64_t entry = (int64_t)(cairn_be64_get(k.mv_data) ^ (1ull << 63));
        if (entry >= threshold)
            break;
        uint8_t vk[VKEY_MAX];
        size_t vn = k.mv_size - 8;
        if (vn > sizeof vk)
            rc = CAIRN_ECORRUPT;
        else
            memcpy(vk, (uint8_t *)k.mv_data + 8, vn);
        if (!rc)
            rc = hctx_cursor_del(c);
        if (!rc)
            rc = tick_device(ctx, tick, vk, vn, threshold, &move);
        if (!rc && move != INT64_MIN)
            rc = seen_put(ctx, vk, vn, move);
    }
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* The device's cache entry, loaded ahead (hcache_prefetch). Producers put
 * device_id first; a body that does not is left to the apply. */
static void devices_prefetch(struct hctx *ctx, const struct event *ev)
{
    struct devices *d = self(ctx);
    struct cairn_str id;
    uint8_t vk[VKEY_MAX];
    size_t vn = 0;
    struct rmap m;
    struct rv k, val;
    if (rmap_open(&m, &(struct rv){ev->payload, (uint32_t)ev->payload_len}) &&
        rmap_next(&m, &k, &val) > 0 && k.n == 10 && k.p[0] == 0xa9 &&
        !memcmp(k.p + 1, "device_id", 9) && raw_str(val.p, val.n, &id) && id.n <= CAIRN_KEY_MAX)
        vn = hkey_make(vk, sizeof vk, &ev->tenant, &id);
    hcache_prefetch(&d->cache, vn ? vk : NULL, vn);
}

static int devices_apply(struct hctx *ctx, const struct event *ev)
{
    if (ev->type.n == 4 && !memcmp(ev->type.p, "tick", 4))
        return on_tick(ctx, ev);
    return on_device_event(ctx, ev);
}

const struct handler devices_handler = {
    .version = HANDLER_VERSION,
    .name = "devices",
    .config_schema = config_schema,
    .consumes = consumes,
    .emits = emits,
    .open = devices_open,
    .apply = devices_apply,
    .prefetch = devices_prefetch,
    .close = devices_close,
    .view = "view",
    .flush = devices_flush,
    .concurrent = true, /* touches only its context (handler.h) */
    .raw_inputs = raw_inputs,
};
