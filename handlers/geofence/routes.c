/*
 * routes.c — the geofence queries, served from a snapshot (handler.h):
 *
 *   GET /v1/fences                      fences of the tenant (all tenants for an admin)
 *   GET /v1/fences/containing?lat=&lon= fences containing a point
 *   GET /v1/fences/{id}                 one fence
 *   GET /v1/fences/{id}/inside          devices inside it now (WITHIN)
 *   GET /v1/geofence/hits?fence=&device=&from=&to=&limit=
 *   GET /v1/nearby?lat=&lon=&radius_m=&limit=   devices, nearest first
 *
 * Every answer carries "seq", the log seq the snapshot reflects. All but
 * the list need one tenant: the caller's, or ?tenant= for an admin.
 * Reads only the DBIs (never the writer's in-memory index).
 */
#include "geofence_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000
/* NEARBY looks at no more devices than this (then says truncated). */
#define NEARBY_SCAN_MAX 200000

static int need_tenant(struct hread *rd, const char **t, struct cairn_error *e)
{
    *t = hread_tenant(rd);
    if (!*t) {
        cairn_error_set(e, "missing_parameter", "tenant",
                        "this query needs one tenant: pass ?tenant=");
        return 400;
    }
    return 0;
}

static int get_limit(struct hread *rd, size_t *limit, struct cairn_error *e)
{
    char s[32];
    *limit = LIMIT_DEFAULT;
    if (!hread_param(rd, "limit", s, sizeof s))
        return 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == 0 || *end || v < 1 || v > LIMIT_MAX) {
        cairn_error_set(e, "invalid_parameter", "limit", "limit must be 1..%d", LIMIT_MAX);
        return 400;
    }
    *limit = (size_t)v;
    return 0;
}

static int get_num(struct hread *rd, const char *name, double lo, double hi, bool required,
                   double *out, struct cairn_error *e)
{
    char s[64];
    if (!hread_param(rd, name, s, sizeof s)) {
        if (!required)
            return 0;
        cairn_error_set(e, "missing_parameter", name, "%s is required", name);
        return 400;
    }
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end || !isfinite(v) || v < lo || v > hi) {
        cairn_error_set(e, "invalid_parameter", name, "%s must be a number in [%g, %g]", name, lo,
                        hi);
        return 400;
    }
    *out = v;
    return 0;
}

static int get_time(struct hread *rd, const char *name, int64_t *out, struct cairn_error *e)
{
    char s[64];
    if (!hread_param(rd, name, s, sizeof s))
        return 0;
    if (cairn_time_parse(s, strlen(s), out)) {
        cairn_error_set(e, "invalid_parameter", name, "%s must be an RFC 3339 time", name);
        return 400;
    }
    return 0;
}

static int fail(struct cairn_error *e, int rc)
{
    cairn_error_set(e, "unavailable", "", "reading the state failed: %s", cairn_strerror(rc));
    return 503;
}

static void put_seq(struct hread *rd, struct cairn_buf *out)
{
    cairn_buf_printf(out, "{\"seq\":%llu", (unsigned long long)hread_seq(rd));
}

static void put_num(struct cairn_buf *out, double d)
{
    char s[40];
    cairn_fmt_double(d, s, sizeof s);
    cairn_buf_puts(out, s);
}

static void put_time(struct cairn_buf *out, int64_t t)
{
    char s[48];
    cairn_time_format(t, s, sizeof s);
    cairn_buf_json_str(out, s, strlen(s));
}

/* Iterates keys >= from with the given prefix. */
struct scan {
    MDB_cursor *c;
    const uint8_t *prefix;
    size_t pn;
    bool first;
};

static int scan_open(struct hread *rd, const char *db, const uint8_t *prefix, size_t pn,
                     struct scan *s)
{
    MDB_dbi dbi;
    s->c = NULL;
    s->prefix = prefix;
    s->pn = pn;
    s->first = true;
    int rc = hread_db(rd, db, &dbi);
    if (rc)
        return rc;
    return cairn_mdb_err(mdb_cursor_open(hread_txn(rd), dbi, &s->c));
}

static int scan_next(struct scan *s, const void *from, size_t fn, MDB_val *k, MDB_val *v)
{
    int rc;
    if (!s->c)
        return CAIRN_ENOTFOUND;
    if (s->first) {
        k->mv_data = (void *)(from ? from : s->prefix);
        k->mv_size = from ? fn : s->pn;
        rc = k->mv_size ? mdb_cursor_get(s->c, k, v, MDB_SET_RANGE)
                        : mdb_cursor_get(s->c, k, v, MDB_FIRST);
        s->first = false;
    } else {
        rc = mdb_cursor_get(s->c, k, v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND)
        return CAIRN_ENOTFOUND;
    if (rc)
        return cairn_mdb_err(rc);
    if (s->pn && (k->mv_size < s->pn || memcmp(k->mv_data, s->prefix, s->pn)))
        return CAIRN_ENOTFOUND;
    return 0;
}

static void scan_close(struct scan *s)
{
    if (s->c)
        mdb_cursor_close(s->c);
}

/* ====================================================================== queued sets */

/* The operations queued for inside or pos (geofence.insq, posq:
 * geofence_int.h) on keys starting with a prefix: the last one of each key,
 * in key order. They point into the snapshot (valid for the route call). */
struct qop {
    const uint8_t *k, *v;
    size_t kn, vn;
    uint64_t n; /* the operation's number in the queue */
    bool del;
};

static int cmp_qop(const void *a, const void *b)
{
    const struct qop *x = a, *y = b;
    int c = gf_cmp_keys(x->k, x->kn, y->k, y->kn);
    return c ? c : x->n < y->n ? -1 : x->n > y->n;
}

/* Reads the whole queue (at most GF_OPQ_MAX operations). */
static int qops_collect(struct hread *rd, const char *queue, const uint8_t *prefix, size_t pn,
                        struct qop **out, size_t *nout)
{
    struct scan s;
    MDB_val k, v;
    struct qop *q = NULL;
    size_t n = 0, cap = 0;
    int rc = scan_open(rd, queue, NULL, 0, &s);
    while (!rc && !(rc = scan_next(&s, NULL, 0, &k, &v))) {
        const uint8_t *b = v.mv_data;
        size_t kn = v.mv_size >= 3 ? (size_t)b[1] << 8 | b[2] : 0;
        if (k.mv_size != 8 || !gf_opq_ok(b, v.mv_size) || kn < pn || memcmp(b + 3, prefix, pn))
            continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 64;
            struct qop *p = realloc(q, c * sizeof *p);
            if (!p) {
                rc = CAIRN_ENOMEM;
                break;
            }
            q = p, cap = c;
        }
        q[n++] = (struct qop){.k = b + 3,
                              .kn = kn,
                              .v = b + 3 + kn,
                              .vn = v.mv_size - 3 - kn,
                              .n = cairn_be64_get(k.mv_data),
                              .del = !b[0]};
    }
    scan_close(&s);
    if (rc && rc != CAIRN_ENOTFOUND) {
        free(q);
        return rc;
    }
    if (n > 1)
        qsort(q, n, sizeof *q, cmp_qop);
    size_t m = 0; /* the last of each key */
    for (size_t i = 0; i < n; i++) {
        if (m && !gf_cmp_keys(q[m - 1].k, q[m - 1].kn, q[i].k, q[i].kn))
            m--;
        q[m++] = q[i];
    }
    *out = q;
    *nout = m;
    return 0;
}

/* A scan of a set merged with its queued operations: the keys a set with
 * every operation applied would hold. */
struct mscan {
    struct scan s;
    const struct qop *q;
    size_t qn, qi;
    bool have, started, end; /* have: k, v hold the set's next entry */
    MDB_val k, v;
};

static int mscan_open(struct hread *rd, const char *db, const uint8_t *prefix, size_t pn,
                      const struct qop *q, size_t qn, struct mscan *m)
{
    *m = (struct mscan){.q = q, .qn = qn};
    int rc = scan_open(rd, db, prefix, pn, &m->s);
    return rc == CAIRN_ENOTFOUND ? 0 : rc; /* no set yet: the queue only */
}

/* Like scan_next (from: where to start, at the first call). */
static int mscan_next(struct mscan *m, const void *from, size_t fn, MDB_val *k, MDB_val *v)
{
    const uint8_t *p = m->s.prefix;
    size_t pn = m->s.pn;
    if (!m->started) { /* the first queued key >= from (or the prefix) */
        const uint8_t *f = from ? from : p;
        size_t lo = 0, hi = m->qn, n = from ? fn : pn;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (gf_cmp_keys(m->q[mid].k, m->q[mid].kn, f, n) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        m->qi = lo;
        m->started = true;
    }
    for (;;) {
        if (!m->have && !m->end) {
            int rc = scan_next(&m->s, from, fn, &m->k, &m->v);
            if (rc && rc != CAIRN_ENOTFOUND)
                return rc;
            m->have = !rc;
            m->end = rc != 0;
        }
        const struct qop *q = m->qi < m->qn ? &m->q[m->qi] : NULL;
        if (q && (q->kn < pn || memcmp(q->k, p, pn)))
            q = NULL; /* past the prefix */
        if (!m->have && !q)
            return CAIRN_ENOTFOUND;
        int c = !m->have ? 1 : !q ? -1 : gf_cmp_keys(m->k.mv_data, m->k.mv_size, q->k, q->kn);
        if (c < 0) {
            *k = m->k, *v = m->v;
            m->have = false;
            return 0;
        }
        m->qi++;
        if (!c) /* the queued operation replaces the set's entry */
            m->have = false;
        if (!q->del) {
            *k = (MDB_val){q->kn, (void *)q->k};
            *v = (MDB_val){q->vn, (void *)q->v};
            return 0;
        }
    }
}

static int doc_json(struct cairn_buf *out, const MDB_val *v)
{
    size_t used;
    return cairn_msgpack_to_json(v->mv_data, v->mv_size, out, &used);
}

/* ====================================================================== fences */

static int get_fences(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    (void)args;
    const char *t = hread_tenant(rd);
    size_t limit, n = 0;
    int st = get_limit(rd, &limit, e);
    if (st)
        return st;
    char after[GF_FENCE_ID_MAX + 1];
    bool has_after = hread_param(rd, "after", after, sizeof after);
    struct gf_key p, from;
    p.n = 0;
    if (t)
        gk_tenant(&p, t, strlen(t));
    from = p;
    if (t && has_after) {
        gk_raw(&from, after, strlen(after));
        gk_raw(&from, "", 1); /* strictly after */
    }
    struct scan s;
    MDB_val k, v;
    put_seq(rd, out);
    cairn_buf_puts(out, ",\"fences\":[");
    int rc = scan_open(rd, "fences", p.b, p.n, &s);
    bool more = false;
    struct cairn_str last = {NULL, 0}, tn;
    char lastbuf[GF_FENCE_ID_MAX + 1];
    while (!rc && !(rc = scan_next(&s, from.b, from.n, &k, &v))) {
        if (n == limit) {
            more = true;
            break;
        }
        if (n++)
            cairn_buf_putc(out, ',');
        if ((rc = doc_json(out, &v)))
            break;
        if (hkey_split(k.mv_data, k.mv_size, &tn, &last) && last.n <= GF_FENCE_ID_MAX) {
            memcpy(lastbuf, last.p, last.n);
            last.p = lastbuf;
        }
    }
    scan_close(&s);
    if (rc && rc != CAIRN_ENOTFOUND)
        return fail(e, rc);
    cairn_buf_puts(out, "],\"next\":");
    if (more && t)
        cairn_buf_json_str(out, last.p, last.n);
    else
        cairn_buf_puts(out, "null");
    return cairn_buf_puts(out, "}") ? fail(e, CAIRN_ENOMEM) : 200;
}

static int fence_doc(struct hread *rd, const char *t, const char *id, MDB_val *v)
{
    MDB_dbi dbi;
    struct gf_key k;
    int rc = hread_db(rd, "fences", &dbi);
    if (rc)
        return rc;
    gk_tenant(&k, t, strlen(t));
    gk_raw(&k, id, strlen(id));
    MDB_val kv = {k.n, k.b};
    rc = mdb_get(hread_txn(rd), dbi, &kv, v);
    return rc == MDB_NOTFOUND ? CAIRN_ENOTFOUND : cairn_mdb_err(rc);
}

static int not_found(struct cairn_error *e, const char *id)
{
    cairn_error_set(e, "not_found", "", "no fence %.128s", id);
    return 404;
}

static int get_fence(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    const char *t;
    MDB_val v;
    int st = need_tenant(rd, &t, e);
    if (st)
        return st;
    int rc = fence_doc(rd, t, args[0], &v);
    if (rc == CAIRN_ENOTFOUND)
        return not_found(e, args[0]);
    if (rc)
        return fail(e, rc);
    put_seq(rd, out);
    cairn_buf_puts(out, ",\"fence\":");
    rc = doc_json(out, &v);
    return rc || cairn_buf_puts(out, "}") ? fail(e, rc ? rc : CAIRN_ENOMEM) : 200;
}

static int get_inside(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    const char *t;
    MDB_val k, v;
    size_t limit, n = 0;
    int st = need_tenant(rd, &t, e);
    if (!st)
        st = get_limit(rd, &limit, e);
    if (st)
        return st;
    int rc = fence_doc(rd, t, args[0], &v);
    if (rc == CAIRN_ENOTFOUND)
        return not_found(e, args[0]);
    struct gf_key p;
    gk_tenant(&p, t, strlen(t));
    gk_u8str(&p, args[0], strlen(args[0]));
    put_seq(rd, out);
    cairn_buf_puts(out, ",\"fence_id\":");
    cairn_buf_json_str(out, args[0], strlen(args[0]));
    cairn_buf_puts(out, ",\"devices\":[");
    struct mscan s = {0};
    struct qop *q = NULL;
    size_t qn = 0;
    bool more = false;
    /* the devices inside with the queued operations applied (insq) */
    if (!rc)
        rc = qops_collect(rd, "insq", p.b, p.n, &q, &qn);
    if (!rc)
        rc = mscan_open(rd, "inside", p.b, p.n, q, qn, &s);
    while (!rc && !(rc = mscan_next(&s, NULL, 0, &k, &v))) {
        if (n == limit) {
            more = true;
            break;
        }
        cairn_buf_puts(out, n++ ? ",{\"device_id\":" : "{\"device_id\":");
        cairn_buf_json_str(out, (const char *)k.mv_data + p.n, k.mv_size - p.n);
        cairn_buf_puts(out, ",\"since\":");
        put_time(out, v.mv_size == 8 ? (int64_t)cairn_be64_get(v.mv_data) : 0);
        cairn_buf_putc(out, '}');
    }
    scan_close(&s.s);
    free(q);
    if (rc && rc != CAIRN_ENOTFOUND)
        return fail(e, rc);
    cairn_buf_printf(out, "],\"truncated\":%s}", more ? "true" : "false");
    return 200;
}

/* ====================================================================== containing */

static int get_containing(struct hread *rd, char **args, struct cairn_buf *out,
                          struct cairn_error *e)
{
    (void)args;
    const char *t;
    double lat, lon;
    int st = need_tenant(rd, &t, e);
    if (!st)
        st = get_num(rd, "lat", -90, 90, true, &lat, e);
    if (!st)
        st = get_num(rd, "lon", -180, 180, true, &lon, e);
    if (st)
        return st;
    struct gf_key p;
    gk_tenant(&p, t, strlen(t));
    struct scan s;
    MDB_val k, v;
    size_t n = 0;
    put_seq(rd, out);
    cairn_buf_puts(out, ",\"fences\":[");
    int rc = scan_open(rd, "geom", p.b, p.n, &s);
    MDB_dbi fdbi;
    if (!rc)
        rc = hread_db(rd, "fences", &fdbi);
    /* Every fence of the tenant: a bbox test on the packed form, the
     * exact test only for the few whose bbox holds the point. */
    while (!rc && !(rc = scan_next(&s, NULL, 0, &k, &v))) {
        const uint8_t *b = v.mv_data;
        double box[4];
        if (v.mv_size < 33 || b[0] == GEO_ROAM)
            continue;
        memcpy(box, b + 1, sizeof box);
        bool maybe = (lon >= box[0] && lon <= box[2]) || fabs(lon) == 180;
        if (!maybe || lat < box[1] || lat > box[3])
            continue;
        struct geo_shape g;
        if ((rc = geo_unpack(b, v.mv_size, &g)))
            break;
        bool in = geo_contains(&g, lon, lat);
        geo_shape_free(&g);
        MDB_val dv;
        if (in && !mdb_get(hread_txn(rd), fdbi, &k, &dv)) {
            if (n++)
                cairn_buf_putc(out, ',');
            doc_json(out, &dv);
        }
    }
    scan_close(&s);
    if (rc && rc != CAIRN_ENOTFOUND)
        return fail(e, rc);
    cairn_buf_puts(out, "]}");
    return 200;
}

/* ====================================================================== hits */

/* The queued hits (geofence.hitq) a query may answer with: the first cap
 * in key order, with their dseq. */
struct hitq {
    struct qhit {
        uint64_t dseq;
        size_t kn;
        uint8_t k[GF_KEY_MAX + 1];
    } * slot;      /* cap of them */
    uint32_t *ord; /* the n kept, in key order (indices into slot) */
    size_t n, cap;
};

/* Keeps the hit (k, dseq) if it is among the first cap keys; of equal keys
 * the later queued one (larger dseq), as the merge into the index does. */
static void hitq_keep(struct hitq *q, const struct gf_key *k, uint64_t dseq)
{
    if (q->n == q->cap) {
        const struct qhit *last = &q->slot[q->ord[q->n - 1]];
        if (gf_cmp_keys(k->b, k->n, last->k, last->kn) > 0)
            return;
    }
    size_t lo = 0, hi = q->n;
    while (lo < hi) { /* the first kept key >= k */
        size_t mid = (lo + hi) / 2;
        const struct qhit *h = &q->slot[q->ord[mid]];
        if (gf_cmp_keys(h->k, h->kn, k->b, k->n) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < q->n) {
        struct qhit *h = &q->slot[q->ord[lo]];
        if (!gf_cmp_keys(h->k, h->kn, k->b, k->n)) {
            if (dseq > h->dseq)
                h->dseq = dseq;
            return;
        }
    }
    uint32_t s = (uint32_t)q->n;
    if (q->n == q->cap) /* the last one goes (lo < n: k is smaller) */
        s = q->ord[--q->n];
    memmove(q->ord + lo + 1, q->ord + lo, (q->n - lo) * sizeof *q->ord);
    q->ord[lo] = s;
    q->slot[s].dseq = dseq;
    q->slot[s].kn = k->n;
    memcpy(q->slot[s].k, k->b, k->n);
    q->n++;
}

/* The queued hits of tenant prefix tp[0..tn) matching the query (fence
 * and/or device, time in [from, to]), as keys of the index it walks (hits
 * when fence is given, else dhits): the first q->cap of them in that
 * index's order. hitq holds at most GF_HITQ_MAX hits, and the whole of it
 * is read. */
static int hitq_collect(struct hread *rd, const uint8_t *tp, size_t tn, const char *fence,
                        const char *dev, int64_t from, int64_t to, struct hitq *q)
{
    struct scan s;
    MDB_val k, v;
    size_t fn = fence ? strlen(fence) : 0, dn = dev ? strlen(dev) : 0;
    int rc = scan_open(rd, "hitq", NULL, 0, &s);
    while (!rc && !(rc = scan_next(&s, NULL, 0, &k, &v))) {
        const uint8_t *h = v.mv_data;
        size_t hn = v.mv_size;
        if (k.mv_size != 8 || hn > GF_KEY_MAX || !gf_hits_key_ok(h, hn) || hn < tn ||
            memcmp(h, tp, tn))
            continue;
        size_t fl = h[tn], at = tn + 1 + fl;
        int64_t tm = (int64_t)(cairn_be64_get(h + at) ^ (1ull << 63));
        if (tm < from || tm > to || (fence && (fl != fn || memcmp(h + tn + 1, fence, fn))) ||
            (dev && (hn - at - 9 != dn || memcmp(h + at + 9, dev, dn))))
            continue;
        struct gf_key key;
        if (fence) {
            key.n = 0;
            key.over = false;
            gk_raw(&key, h, hn);
        } else {
            gf_dhits_key(&key, h, hn);
        }
        if (!key.over) /* else not in dhits either */
            hitq_keep(q, &key, cairn_be64_get(k.mv_data));
    }
    scan_close(&s);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static int get_hits(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    (void)args;
    const char *t;
    char fence[GF_FENCE_ID_MAX + 2], dev[CAIRN_KEY_MAX + 2];
    int64_t from = INT64_MIN, to = INT64_MAX;
    size_t limit, n = 0;
    int st = need_tenant(rd, &t, e);
    if (!st)
        st = get_limit(rd, &limit, e);
    if (!st)
        st = get_time(rd, "from", &from, e);
    if (!st)
        st = get_time(rd, "to", &to, e);
    if (st)
        return st;
    bool hf = hread_param(rd, "fence", fence, sizeof fence);
    bool hd = hread_param(rd, "device", dev, sizeof dev);
    if (!hf && !hd) {
        cairn_error_set(e, "missing_parameter", "fence", "give fence= or device= (or both)");
        return 400;
    }
    struct gf_key tp, p, start;
    gk_tenant(&tp, t, strlen(t));
    p = tp;
    if (hf)
        gk_u8str(&p, fence, strlen(fence));
    else
        gk_u16str(&p, dev, strlen(dev));
    start = p;
    gk_be64(&start, gf_time_key(from));
    /* The hits still queued in hitq (geofence_int.h), merged in key order
     * with those of the index: the answer is the one a single index of
     * every hit would give. */
    /* (the answer takes at most limit + 1 of them: limit, then one to
     * say truncated) */
    struct hitq q = {.cap = limit + 1};
    q.slot = malloc(q.cap * sizeof *q.slot);
    q.ord = malloc(q.cap * sizeof *q.ord);
    int rc = !q.slot || !q.ord ? CAIRN_ENOMEM
             : p.over
                 ? 0
                 : hitq_collect(rd, tp.b, tp.n, hf ? fence : NULL, hd ? dev : NULL, from, to, &q);
    struct scan s = {0};
    MDB_val k, v;
    put_seq(rd, out);
    cairn_buf_puts(out, ",\"hits\":[");
    if (!rc)
        rc = scan_open(rd, hf ? "hits" : "dhits", p.b, p.n, &s);
    if (rc == CAIRN_ENOTFOUND)
        rc = 0; /* no index yet: the queue only */
    bool more = false, have = false, idx_end = false;
    size_t qi = 0;
    struct cairn_buf tmp;
    cairn_buf_init(&tmp, 1u << 20);
    while (!rc) {
        /* the next hit of the index, unless the one read last is pending */
        if (!have && !idx_end) {
            int r = scan_next(&s, start.b, start.n, &k, &v);
            if (r == CAIRN_ENOTFOUND) {
                idx_end = true;
            } else if (r) {
                rc = r;
                break;
            } else {
                const uint8_t *kb = k.mv_data;
                if (k.mv_size < p.n + 9)
                    continue;
                int64_t tm = (int64_t)(cairn_be64_get(kb + p.n) ^ (1ull << 63));
                if (tm > to) {
                    idx_end = true;
                } else {
                    const char *rest = (const char *)kb + p.n + 9;
                    size_t rn = k.mv_size - p.n - 9;
                    if (hf && hd && (rn != strlen(dev) || memcmp(rest, dev, rn)))
                        continue;
                    have = true;
                }
            }
        }
        if (!have && qi == q.n)
            break;
        /* the smaller key of the two; on a tie the queued one, the later */
        const uint8_t *kb;
        uint64_t dseq;
        const struct qhit *qh = qi < q.n ? &q.slot[q.ord[qi]] : NULL;
        int c = !have ? 1 : !qh ? -1 : gf_cmp_keys(k.mv_data, k.mv_size, qh->k, qh->kn);
        if (c < 0) {
            if (v.mv_size != 8) { /* indexed, so it is there */
                rc = CAIRN_ECORRUPT;
                break;
            }
            kb = k.mv_data;
            dseq = cairn_be64_get(v.mv_data);
        } else {
            kb = qh->k;
            dseq = qh->dseq;
        }
        if (n == limit) {
            more = true;
            break;
        }
        if (c <= 0)
            have = false;
        if (c >= 0)
            qi++;
        unsigned kind = kb[p.n + 8];
        /* the payload, from the hit's event in stream.geofence */
        const uint8_t *doc;
        size_t dn;
        rc = hread_stream_payload(rd, dseq, &doc, &dn);
        if (rc) { /* indexed, so it is there */
            rc = rc == CAIRN_ENOTFOUND ? CAIRN_ECORRUPT : rc;
            break;
        }
        cairn_buf_reset(&tmp);
        size_t used;
        if ((rc = cairn_msgpack_to_json(doc, dn, &tmp, &used)) || tmp.len < 2)
            break;
        cairn_buf_printf(out, "%s{\"type\":\"geofence.%s\",", n++ ? "," : "",
                         kind < 8 ? gf_hit_names[kind] : "?");
        cairn_buf_append(out, tmp.data + 1, tmp.len - 1);
    }
    cairn_buf_deinit(&tmp);
    free(q.slot);
    free(q.ord);
    scan_close(&s);
    if (rc && rc != CAIRN_ENOTFOUND)
        return fail(e, rc);
    cairn_buf_printf(out, "],\"truncated\":%s}", more ? "true" : "false");
    return 200;
}

/* ====================================================================== nearby */

struct near {
    char id[CAIRN_KEY_MAX];
    size_t n;
    double d, lat, lon;
    int64_t time;
};

static int cmp_near(const void *a, const void *b)
{
    const struct near *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    int c = memcmp(x->id, y->id, x->n < y->n ? x->n : y->n);
    return c ? c : (int)x->n - (int)y->n;
}

static double f64_at(const uint8_t *p)
{
    uint64_t b = cairn_be64_get(p);
    double d;
    memcpy(&d, &b, 8);
    return d;
}

static int nearby_scan(struct hread *rd, const char *t, double lat, double lon, double r,
                       struct near **res, size_t *nres, size_t *cap, bool *truncated)
{
    double dlat = r / GEO_EARTH_R * 180 / M_PI, cl = cos(lat * M_PI / 180);
    double dlon = cl > 1e-6 ? dlat / cl : 360;
    uint32_t x0 = (uint32_t)floor((fmax(lon - dlon, -180) + 180) / GF_POS_CELL_DEG);
    uint32_t x1 = (uint32_t)floor((fmin(lon + dlon, 180) + 180) / GF_POS_CELL_DEG);
    uint32_t y0 = (uint32_t)floor((fmax(lat - dlat, -90) + 90) / GF_POS_CELL_DEG);
    uint32_t y1 = (uint32_t)floor((fmin(lat + dlat, 90) + 90) / GF_POS_CELL_DEG);
    MDB_dbi ddb;
    int rc = hread_db(rd, "dev", &ddb);
    size_t seen = 0, qn = 0;
    struct qop *ops = NULL;
    struct gf_key tp;
    gk_tenant(&tp, t, strlen(t));
    /* the grid with the queued operations applied (posq) */
    if (!rc)
        rc = qops_collect(rd, "posq", tp.b, tp.n, &ops, &qn);
    for (uint32_t cy = y0; !rc && cy <= y1 && !*truncated; cy++) {
        struct gf_key p, from, end;
        gk_tenant(&p, t, strlen(t));
        gk_be32(&p, cy);
        from = p;
        gk_be32(&from, x0);
        end = p;
        gk_be32(&end, x1);
        struct mscan s;
        MDB_val k, v;
        rc = mscan_open(rd, "pos", p.b, p.n, ops, qn, &s);
        while (!rc && !(rc = mscan_next(&s, from.b, from.n, &k, &v))) {
            if (k.mv_size < p.n + 4) /* never so in the set; a queue is read as found */
                continue;
            if (memcmp(k.mv_data, end.b, end.n) > 0)
                break;
            if (++seen > NEARBY_SCAN_MAX) {
                *truncated = true;
                break;
            }
            struct gf_key dk;
            MDB_val dv;
            size_t dn = k.mv_size - p.n - 4;
            gk_tenant(&dk, t, strlen(t));
            gk_raw(&dk, (const uint8_t *)k.mv_data + p.n + 4, dn);
            MDB_val dkv = {dk.n, dk.b};
            if (mdb_get(hread_txn(rd), ddb, &dkv, &dv) || dv.mv_size < 27)
                continue;
            double dlat2 = f64_at((uint8_t *)dv.mv_data + 1),
                   dlon2 = f64_at((uint8_t *)dv.mv_data + 9);
            double d = geo_dist(lon, lat, dlon2, dlat2);
            if (d > r)
                continue;
            if (*nres == *cap) {
                size_t c = *cap ? *cap * 2 : 64;
                struct near *q = realloc(*res, c * sizeof *q);
                if (!q) {
                    rc = CAIRN_ENOMEM;
                    break;
                }
                *res = q;
                *cap = c;
            }
            struct near *nr = &(*res)[(*nres)++];
            memcpy(nr->id, (const uint8_t *)k.mv_data + p.n + 4, dn);
            nr->n = dn;
            nr->d = d;
            nr->lat = dlat2;
            nr->lon = dlon2;
            nr->time = (int64_t)cairn_be64_get((uint8_t *)dv.mv_data + 17);
        }
        scan_close(&s.s);
        if (rc == CAIRN_ENOTFOUND)
            rc = 0;
    }
    free(ops);
    return rc;
}

static int get_nearby(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    (void)args;
    const char *t;
    double lat, lon, r;
    size_t limit;
    int st = need_tenant(rd, &t, e);
    if (!st)
        st = get_num(rd, "lat", -90, 90, true, &lat, e);
    if (!st)
        st = get_num(rd, "lon", -180, 180, true, &lon, e);
    if (!st)
        st = get_num(rd, "radius_m", 0, GF_NEARBY_RADIUS_MAX, true, &r, e);
    if (!st)
        st = get_limit(rd, &limit, e);
    if (st)
        return st;
    struct near *res = NULL;
    size_t nres = 0, cap = 0;
    bool truncated = false;
    int rc = nearby_scan(rd, t, lat, lon, r, &res, &nres, &cap, &truncated);
    if (rc && rc != CAIRN_ENOTFOUND) {
        free(res);
        return fail(e, rc);
    }
    if (nres > 1)
        qsort(res, nres, sizeof *res, cmp_near);
    put_seq(rd, out);
    cairn_buf_puts(out, ",\"devices\":[");
    for (size_t i = 0; i < nres && i < limit; i++) {
        cairn_buf_puts(out, i ? ",{\"device_id\":" : "{\"device_id\":");
        cairn_buf_json_str(out, res[i].id, res[i].n);
        cairn_buf_puts(out, ",\"distance_m\":");
        put_num(out, res[i].d);
        cairn_buf_puts(out, ",\"lat\":");
        put_num(out, res[i].lat);
        cairn_buf_puts(out, ",\"lon\":");
        put_num(out, res[i].lon);
        cairn_buf_puts(out, ",\"time\":");
        put_time(out, res[i].time);
        cairn_buf_putc(out, '}');
    }
    cairn_buf_printf(out, "],\"truncated\":%s}", truncated ? "true" : "false");
    free(res);
    return 200;
}

/* "fences/containing" comes before "fences/{}": routes match in order. */
const struct handler_route gf_routes[] = {
    {"fences", get_fences, NULL},
    {"fences/containing", get_containing, NULL},
    {"fences/{}/inside", get_inside, NULL},
    {"fences/{}", get_fence, NULL},
    {"geofence/hits", get_hits, NULL},
    {"nearby", get_nearby, NULL},
    {NULL, NULL, NULL},
};
