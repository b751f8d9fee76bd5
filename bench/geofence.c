/*
 * geofence.c — bench/geofence: location events through the geofence
 * handler with a large fence set (issue #6).
 *
 *   bench/geofence [-f FENCES] [-d DEVICES] [-n FIXES] [--batch B] [--log-batch L]
 *                  [--inflight K] [--seed S] [--dir DIR] [--out DIR] [--no-e2e]
 *                  [--all-handlers] [--detect | --detect-only] [--no-prefetch]
 *
 * FENCES polygons (8..64 vertices, star-shaped, 100 m .. 3 km across)
 * scattered over 20 cities (~0.5 degree around each centre), DEVICES
 * devices on random walks (~10 m .. 50 m per fix) starting in those
 * cities; every fence detects enter and exit. Phases, each timed:
 *
 *   handler  the handler alone, as the engine drives it on replay: the
 *            events in state transactions of at most B (default: the
 *            engine's, ENGINE_APPLY_BATCH, 524 288; like the engine's, one
 *            ends earlier after ENGINE_APPLY_WRITES_MAX writes or when
 *            proj_txn_full says so), each payload decoded (but those it
 *            reads raw: raw_inputs), applied, the handler's flush and the
 *            commit (with its fsync) included. define: every
 *            geofence.define; open: close + open (the index rebuilt from
 *            the DBIs); fixes: every location.
 *   e2e      end to end, as `cairn serve` runs: a fresh DATA directory, the
 *            engine with the geofence handler (--all-handlers: every
 *            handler), its log writer thread started; this thread parses
 *            each input's NDJSON line (ingest: JSON, schema, msgpack) and
 *            submits requests of 1 024 to the writer, K in flight (8); the
 *            writer group-commits up to L of them durably (the writer's
 *            default, 1 024) and the engine applies each commit to the
 *            state (one state transaction per log commit).
 *            Timed from the first parse to the state reaching the last fix.
 *   detect   with --detect (after the handler phase) or --detect-only (no
 *            handler or e2e phase): the detection steps alone, through
 *            geo.h with no state (phase_detect): the fences built as the
 *            handler builds them (parse, bands, pool, raster, index; timed
 *            as "build"), then every fix's index query through its device's
 *            hint, the candidates' rasters and the exact tests where a
 *            raster cannot answer, with the handler's prefetches. It prints
 *            the CPU per fix, how the candidates were answered (raster in /
 *            out, exact tests) and the index, pool and raster bytes per
 *            fence. With --detect the (fix, fence) pairs it found must equal
 *            the handler's, or the run fails (exit 1).
 *
 * It prints events/s and CPU per event of each (user + system; for the
 * handler phase also the system part alone: the state is written through
 * its map, so the kernel's page faults and write-back count), derived
 * events, heap bytes per fence, and the inside-sets the handler computed:
 * after the handler run, the enter/exit events of stream geofence are
 * replayed per device to give, for every fix, the fences it is inside
 * (fences have no dwell or margin, so membership is containment). With
 * --out DIR it writes
 * fences.csv (id TAB WKT), fixes.csv (i TAB device TAB lon TAB lat) and
 * inside.tsv (i TAB fence_id, one line per pair, in fix order) for
 * bench/geofence_postgis.sh, which runs the same fixes through PostGIS and
 * compares the sets. The last line is one JSON object with every figure.
 * CAIRN_BENCH_PERF_CTL and callgrind: see bench_perf_ctl (bench.h).
 */
#include "bench.h"
#include "engine.h"
#include "handler.h"
#include "proj.h"

#include "../handlers/geofence/geo.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const struct handler geofence_handler;
size_t geofence_memory(struct hctx *ctx);
size_t geofence_device_memory(struct hctx *ctx);

#define REQ 1024 /* e2e: inputs per writer request */
#define INFLIGHT_MAX 64
#define MEMBERS 1024 /* per device in the inside-set replay */

static uint64_t rng;
static double rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static const double cities[20][2] = {
    {13.40, 52.52},   {2.35, 48.86},   {-0.13, 51.51},   {-3.70, 40.42},  {12.50, 41.90},
    {16.37, 48.21},   {4.90, 52.37},   {21.01, 52.23},   {14.42, 50.08},  {18.07, 59.33},
    {-74.0, 40.71},   {-87.63, 41.88}, {-118.24, 34.05}, {139.69, 35.69}, {151.21, -33.87},
    {-46.63, -23.55}, {77.21, 28.61},  {31.24, 30.04},   {28.98, 41.01},  {-99.13, 19.43}};

/* A workload event: its msgpack payload (handler run) and its NDJSON
 * input line (e2e run), both in shared buffers. */
struct ev {
    const char *type;
    int64_t time;
    size_t mp, mpn;     /* in struct work.mp */
    size_t line, linen; /* in struct work.lines, without the newline */
};

struct work {
    size_t nf, nd, nx;
    struct ev *evs; /* nf fence definitions, then nx fixes */
    struct cairn_buf mp, lines;
    size_t vertices;
};

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench/geofence: %s: %s\n", what, cairn_strerror(rc));
    exit(1);
}

static void add_event(struct work *w, struct ev *e, const char *type, int64_t t, json_t *payload)
{
    e->type = type;
    e->time = t;
    e->mp = w->mp.len;
    if (cairn_json_to_msgpack(payload, &w->mp, NULL))
        die("msgpack", CAIRN_ENOMEM);
    e->mpn = w->mp.len - e->mp;
    json_t *in = json_pack("{ss ss sI sO}", "type", type, "tenant", "t", "time", (json_int_t)t,
                           "payload", payload);
    char *s = json_dumps(in, JSON_COMPACT);
    e->line = w->lines.len;
    e->linen = strlen(s);
    if (cairn_buf_append(&w->lines, s, e->linen))
        die("lines", CAIRN_ENOMEM);
    free(s);
    json_decref(in);
}

/* ====================================================================== the workload */

static void make_fences(struct work *w, int64_t t0, FILE *csv)
{
    for (size_t i = 0; i < w->nf; i++) {
        const double *c = cities[i % 20];
        double cx = c[0] + (rnd() - 0.5), cy = c[1] + (rnd() - 0.5) * 0.6;
        double r = (50 + 1450 * rnd()) / 111000.0, k = 1 / cos(cy * M_PI / 180);
        int nv = 8 + (int)(rnd() * 57);
        w->vertices += (size_t)nv;
        json_t *ring = json_array();
        char wkt[4096];
        size_t at = (size_t)snprintf(wkt, sizeof wkt, "POLYGON((");
        double x0 = 0, y0 = 0;
        for (int v = 0; v <= nv; v++) {
            double a = 2 * M_PI * (v % nv) / nv, rr = r * (0.4 + 0.6 * rnd());
            double x = v < nv ? cx + rr * cos(a) * k : x0, y = v < nv ? cy + rr * sin(a) : y0;
            x = round(x * 1e7) / 1e7, y = round(y * 1e7) / 1e7;
            if (!v)
                x0 = x, y0 = y;
            json_array_append_new(ring, json_pack("[ff]", x, y));
            at += (size_t)snprintf(wkt + at, sizeof wkt - at, "%s%.7f %.7f", v ? "," : "", x, y);
        }
        snprintf(wkt + at, sizeof wkt - at, "))");
        char id[32];
        snprintf(id, sizeof id, "f%06zu", i);
        json_t *pl = json_pack("{ss s{ss s[o]} s[ss]}", "fence_id", id, "geometry", "type",
                               "Polygon", "coordinates", ring, "detect", "enter", "exit");
        add_event(w, &w->evs[i], "geofence.define", t0, pl);
        if (csv)
            fprintf(csv, "%s\t%s\n", id, wkt);
        json_decref(pl);
    }
}

static void make_fixes(struct work *w, int64_t t0, FILE *csv)
{
    double(*pos)[2] = malloc(w->nd * sizeof *pos);
    if (!pos)
        die("positions", CAIRN_ENOMEM);
    for (size_t d = 0; d < w->nd; d++) {
        const double *c = cities[d % 20];
        pos[d][0] = c[0] + (rnd() - 0.5), pos[d][1] = c[1] + (rnd() - 0.5) * 0.6;
    }
    for (size_t i = 0; i < w->nx; i++) {
        size_t d = i % w->nd;
        double step = (10 + 40 * rnd()) / 111000.0, a = 2 * M_PI * rnd();
        pos[d][0] += step * cos(a) / cos(pos[d][1] * M_PI / 180);
        pos[d][1] += step * sin(a);
        double x = round(pos[d][0] * 1e7) / 1e7, y = round(pos[d][1] * 1e7) / 1e7;
        char id[32];
        snprintf(id, sizeof id, "dev%06zu", d);
        int64_t t = t0 + 1000000000LL + (int64_t)(i / w->nd) * 10000000000LL + (int64_t)d;
        json_t *pl = json_pack("{ss sf sf}", "device_id", id, "lat", y, "lon", x);
        add_event(w, &w->evs[w->nf + i], "location", t, pl);
        if (csv)
            fprintf(csv, "%zu\t%s\t%.7f\t%.7f\n", i, id, x, y);
        json_decref(pl);
    }
    free(pos);
}

/* ====================================================================== the handler alone */

/* Feeds events [lo, hi) to the handler in state transactions of `batch`,
 * like the engine's catch-up: decode, apply, flush, commit. Like the
 * engine, a transaction also ends after the input that made
 * ENGINE_APPLY_WRITES_MAX writes or whose writes could soon fill the
 * state's map (proj_txn_full: the map starts small and grows ahead of what
 * commits added). */
static int handler_reopen(struct proj *p, struct hctx *ctx)
{
    geofence_handler.close(ctx);
    proj_hctx_reset(ctx);
    int rc = proj_begin(p);
    if (rc)
        return rc;
    if ((rc = geofence_handler.open(ctx))) {
        proj_abort(p);
        return rc;
    }
    return proj_commit(p, proj_checkpoint(p));
}

/* Inputs decoded ahead, as the engine decodes a run before applying it
 * (engine.c, PAR_BATCH): the handler's prefetch is called
 * HANDLER_PREFETCH_AHEAD inputs ahead, as in apply_early_one. */
#define RUN_AHEAD 256

static bool no_prefetch;   /* --no-prefetch: to measure what it gains */
static uint64_t n_commits; /* state transactions run_handler committed */

static int decode_ev(const struct work *w, size_t i, msgpack_zone *zone, msgpack_object *body,
                     struct event *ev)
{
    const struct ev *e = &w->evs[i];
    size_t off = 0;
    bool raw = false; /* the handler reads it from the payload (raw_inputs): not decoded */
    for (const char *const *t = geofence_handler.raw_inputs; t && *t && !raw; t++)
        raw = !strcmp(*t, e->type);
    if (raw)
        body = NULL;
    else if (msgpack_unpack((const char *)w->mp.data + e->mp, e->mpn, &off, zone, body) !=
             MSGPACK_UNPACK_SUCCESS)
        return CAIRN_ECORRUPT;
    *ev = (struct event){.seq = i + 1,
                         .type = {e->type, strlen(e->type)},
                         .tenant = {"t", 1},
                         .key = {"", 0},
                         .time = e->time,
                         .payload = w->mp.data + e->mp,
                         .payload_len = e->mpn,
                         .body = body};
    return 0;
}

static int run_handler(struct proj *p, struct hctx *ctx, const struct work *w, size_t lo, size_t hi,
                       size_t batch, uint64_t *derived)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, 65536);
    static msgpack_object body[RUN_AHEAD];
    static struct event run[RUN_AHEAD];
    int rc = 0;
    for (size_t i = lo; i < hi && !rc;) {
        if ((rc = proj_begin(p)))
            break;
        size_t i0 = i;
        uint64_t d0 = *derived;
        bool full = false;
        for (size_t k = 0; k < batch && i < hi && !rc && !full;) {
            size_t nr = hi - i < RUN_AHEAD ? hi - i : RUN_AHEAD;
            if (nr > batch - k)
                nr = batch - k;
            for (size_t j = 0; j < nr && !rc; j++)
                rc = decode_ev(w, i + j, &zone, &body[j], &run[j]);
            for (size_t j = 0; !no_prefetch && j < nr && j < HANDLER_PREFETCH_AHEAD && !rc; j++)
                geofence_handler.prefetch(ctx, &run[j]);
            size_t j = 0;
            while (j < nr && !rc) {
                if (!no_prefetch && j + HANDLER_PREFETCH_AHEAD < nr)
                    geofence_handler.prefetch(ctx, &run[j + HANDLER_PREFETCH_AHEAD]);
                rc = geofence_handler.apply(ctx, &run[j++]);
                const struct event *em;
                *derived += proj_hctx_emitted(ctx, &em);
                proj_hctx_clear(ctx);
                if (!rc && proj_txn_full(p, ENGINE_APPLY_WRITES_MAX)) {
                    full = true;
                    break;
                }
            }
            i += j;
            k += j;
            msgpack_zone_clear(&zone);
        }
        if (!rc && geofence_handler.flush)
            rc = geofence_handler.flush(ctx);
        if (rc)
            proj_abort(p);
        else if (!(rc = proj_commit(p, i)))
            n_commits++;
        if (rc == CAIRN_EMAPFULL) {
            /* aborted: like the engine, reopen the handler (its memory saw
             * the batch), grow the map and redo the batch */
            fprintf(stderr, "bench/geofence: map full at event %zu: grown, batch redone\n", i);
            i = i0;
            *derived = d0;
            if (!(rc = proj_grow(p)))
                rc = handler_reopen(p, ctx);
        }
    }
    msgpack_zone_destroy(&zone);
    return rc;
}

struct members {
    uint32_t n;
    uint32_t *f; /* fence numbers, unsorted */
};

/* Applies one derived event of the fixes run to the per-device sets. */
static int replay_one(const struct work *w, struct members *m, const struct proj_derived *d)
{
    bool enter = d->type.n == 14 && !memcmp(d->type.p, "geofence.enter", 14);
    bool exit_ = d->type.n == 13 && !memcmp(d->type.p, "geofence.exit", 13);
    if (!enter && !exit_)
        return CAIRN_ECORRUPT; /* the fences detect only these */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    struct cairn_str fid = {NULL, 0};
    if (msgpack_unpack_next(&u, (const char *)d->payload, d->payload_len, NULL) ==
        MSGPACK_UNPACK_SUCCESS)
        mp_str(mp_get(&u.data, "fence_id"), &fid);
    uint32_t fence = 0;
    for (size_t k = 1; k < fid.n; k++)
        fence = fence * 10 + (uint32_t)(fid.p[k] - '0');
    msgpack_unpacked_destroy(&u);
    size_t i = d->cause - w->nf - 1; /* seq of fix i is nf + 1 + i */
    struct members *s = &m[i % w->nd];
    if (!fid.n || fid.p[0] != 'f')
        return CAIRN_ECORRUPT;
    if (enter) {
        if (s->n == MEMBERS)
            return CAIRN_ETOOBIG;
        if (!s->f && !(s->f = malloc(MEMBERS * sizeof *s->f)))
            return CAIRN_ENOMEM;
        s->f[s->n++] = fence;
        return 0;
    }
    for (uint32_t k = 0; k < s->n; k++)
        if (s->f[k] == fence) {
            s->f[k] = s->f[--s->n];
            return 0;
        }
    return CAIRN_ECORRUPT; /* an exit without an enter */
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Rebuilds every fix's inside-set from stream geofence (untimed); counts
 * the (fix, fence) pairs and writes them to tsv when given. */
static int inside_sets(struct proj *p, const struct work *w, FILE *tsv, uint64_t *pairs)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *c = NULL;
    MDB_val k, v;
    struct members *m = calloc(w->nd, sizeof *m);
    int rc = m ? proj_snap_begin(p, &s) : CAIRN_ENOMEM;
    if (rc)
        return free(m), rc;
    if (!(rc = proj_snap_dbi(s, "stream.geofence", &dbi)))
        rc = cairn_mdb_err(mdb_cursor_open(proj_snap_txn(s), dbi, &c));
    int mrc = rc ? MDB_NOTFOUND : mdb_cursor_get(c, &k, &v, MDB_FIRST);
    struct proj_derived d = {0};
    bool have = false;
    *pairs = 0;
    for (size_t i = 0; i < w->nx && !rc; i++) {
        uint64_t seq = w->nf + 1 + i;
        for (;;) {
            if (!have && mrc == 0) {
                rc = proj_derived_decode(v.mv_data, v.mv_size, &d);
                have = !rc;
                mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
            }
            if (rc || !have || d.cause > seq)
                break;
            if (d.cause > w->nf)
                rc = replay_one(w, m, &d);
            have = false;
        }
        struct members *set = &m[i % w->nd];
        *pairs += set->n;
        if (tsv && set->n) {
            qsort(set->f, set->n, sizeof *set->f, cmp_u32);
            for (uint32_t j = 0; j < set->n; j++)
                fprintf(tsv, "%zu\tf%06u\n", i, set->f[j]);
        }
    }
    if (c)
        mdb_cursor_close(c);
    proj_snap_end(s);
    for (size_t i = 0; i < w->nd; i++)
        free(m[i].f);
    free(m);
    return rc;
}

struct handler_figures {
    double define_s, open_s, fixes_s, fixes_cpu_s, fixes_sys_s;
    uint64_t derived, pairs, commits;
    size_t mem, devmem;
};

static int phase_handler(const struct work *w, const char *tmp, size_t batch, FILE *tsv,
                         struct handler_figures *hf)
{
    char path[600];
    snprintf(path, sizeof path, "%s/state", tmp);
    struct proj *p;
    struct hctx *ctx;
    int rc = proj_open(&p, &(struct proj_config){.dir = path}); /* the map grows by itself */
    if (rc)
        return rc;
    if (!(rc = proj_hctx_new(p, &geofence_handler, NULL, &ctx)) && !(rc = proj_begin(p))) {
        if (!(rc = geofence_handler.open(ctx)))
            rc = proj_commit(p, 0);
        else
            proj_abort(p);
    }
    uint64_t derived = 0;
    int64_t a = bench_mono_ns();
    if (!rc)
        rc = run_handler(p, ctx, w, 0, w->nf, batch, &derived);
    hf->define_s = (bench_mono_ns() - a) / 1e9;
    if (!rc) {
        hf->mem = geofence_memory(ctx);
        geofence_handler.close(ctx);
        proj_hctx_reset(ctx);
        a = bench_mono_ns();
        if (!(rc = proj_begin(p))) {
            if (!(rc = geofence_handler.open(ctx)))
                rc = proj_commit(p, w->nf);
            else
                proj_abort(p);
        }
        hf->open_s = (bench_mono_ns() - a) / 1e9;
    }
    derived = 0;
    bench_perf_ctl("enable");
    a = bench_mono_ns();
    int64_t cpu = bench_cpu_ns(), sys = bench_sys_ns();
    uint64_t c0 = n_commits;
    if (!rc)
        rc = run_handler(p, ctx, w, w->nf, w->nf + w->nx, batch, &derived);
    hf->commits = n_commits - c0;
    hf->fixes_s = (bench_mono_ns() - a) / 1e9;
    bench_perf_ctl("disable");
    hf->fixes_cpu_s = (bench_cpu_ns() - cpu) / 1e9;
    hf->fixes_sys_s = (bench_sys_ns() - sys) / 1e9;
    hf->derived = derived;
    hf->devmem = geofence_device_memory(ctx);
    if (!rc)
        rc = inside_sets(p, w, tsv, &hf->pairs);
    geofence_handler.close(ctx);
    proj_hctx_free(ctx);
    proj_close(p);
    return rc;
}

/* ====================================================================== detection alone */

/*
 * The detection steps of the handler's location path, without the state:
 * the same fences through geo.h as the handler builds them (parse, bands,
 * moved into a pool, raster, index), and for every fix the index query
 * through the device's hint, the raster of each candidate, and the exact
 * test where the raster does not answer — with the same prefetches as
 * geofence.c's find_candidates and find_inside. No filters (the bench's
 * fences have none). It counts the (fix, fence) pairs, which must equal
 * the handler's, and how the candidates were answered.
 */
struct detect_figures {
    double build_s, fixes_s, fixes_cpu_s;
    uint64_t cand, raster_in, raster_out, exact, pairs;
    size_t mem;
};

static int phase_detect(const struct work *w, struct detect_figures *df)
{
    struct geo_shape *f = calloc(w->nf, sizeof *f);
    struct geo_raster *ras = geo_huge_alloc(w->nf * sizeof *ras);
    struct geo_hint *hint = geo_huge_alloc(w->nd * sizeof *hint);
    double *fix = malloc(w->nx * 2 * sizeof *fix);
    struct geo_pool *pool = geo_pool_new();
    struct geo_index *ix = NULL;
    int rc = f && ras && hint && fix && pool ? geo_index_new(&ix) : CAIRN_ENOMEM;
    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    int64_t a = bench_mono_ns();
    for (size_t i = 0; i < w->nf + w->nx && !rc; i++) {
        const struct ev *e = &w->evs[i];
        msgpack_object body;
        size_t off = 0;
        if (msgpack_unpack((const char *)w->mp.data + e->mp, e->mpn, &off, &zone, &body) !=
            MSGPACK_UNPACK_SUCCESS) {
            rc = CAIRN_ECORRUPT;
            break;
        }
        if (i >= w->nf) { /* a fix: its position, read before the timed loop */
            size_t x = i - w->nf;
            if (!mp_num(mp_get(&body, "lon"), &fix[2 * x]) ||
                !mp_num(mp_get(&body, "lat"), &fix[2 * x + 1]))
                rc = CAIRN_ECORRUPT;
        } else {
            struct cairn_error err = {0};
            if (!(rc = geo_parse(mp_get(&body, "geometry"), "", &f[i], &err))) {
                geo_shape_bands(&f[i]);
                geo_shape_pool(&f[i], pool);
                geo_raster_build(&f[i], &ras[i]);
                rc = geo_index_add(ix, 0, (uint32_t)i, &f[i]);
            }
        }
        msgpack_zone_clear(&zone);
    }
    msgpack_zone_destroy(&zone);
    df->build_s = (bench_mono_ns() - a) / 1e9;
    df->mem = ix ? geo_index_bytes(ix) + geo_pool_bytes(pool) + w->nf * sizeof *ras : 0;
    uint32_t *cand = NULL;
    size_t cap = 0;
    bench_perf_ctl("enable");
    a = bench_mono_ns();
    int64_t cpu = bench_cpu_ns();
    for (size_t i = 0; i < w->nx && !rc; i++) {
        double lon = fix[2 * i], lat = fix[2 * i + 1];
        int n = geo_index_point_hint(ix, 0, lon, lat, &hint[i % w->nd], &cand, &cap);
        if (n < 0) {
            rc = n;
            break;
        }
        for (int k = 0; k < n; k++) {
            __builtin_prefetch(&ras[cand[k]]);
            __builtin_prefetch((const char *)&ras[cand[k]] + 64);
        }
        int m = 0;
        for (int k = 0; k < n; k++) {
            int in = geo_raster_test(&ras[cand[k]], lon, lat);
            df->raster_in += in == 1;
            df->raster_out += in == 0;
            if (in)
                cand[m++] = cand[k];
            if (in < 0) /* (geo_raster_test prefetched the geometry) */
                __builtin_prefetch(&f[cand[k]]);
        }
        for (int k = 0; k < m; k++) {
            bool in = true;
            if (geo_raster_test(&ras[cand[k]], lon, lat) < 0) {
                in = geo_contains(&f[cand[k]], lon, lat);
                df->exact++;
            }
            df->pairs += in;
        }
        df->cand += (uint64_t)n;
    }
    df->fixes_s = (bench_mono_ns() - a) / 1e9;
    df->fixes_cpu_s = (bench_cpu_ns() - cpu) / 1e9;
    bench_perf_ctl("disable");
    free(cand);
    geo_index_free(ix);
    for (size_t i = 0; f && i < w->nf; i++)
        geo_shape_free(&f[i]);
    geo_pool_free(pool);
    free(f);
    free(fix);
    geo_huge_free(ras, w->nf * sizeof *ras);
    geo_huge_free(hint, w->nd * sizeof *hint);
    return rc;
}

/* ====================================================================== end to end */

struct slot {
    struct log_req req; /* first: done gets it back */
    struct ingest_event evs[REQ];
    struct log_input ins[REQ];
    struct log_result res[REQ];
    size_t nev;
    bool busy;
};

struct e2e {
    struct engine *eng;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t applied; /* the state's checkpoint */
    struct slot slots[INFLIGHT_MAX];
    unsigned inflight, turn;
    int failed;
};

static void on_applied(void *arg, uint64_t checkpoint)
{
    struct e2e *x = arg;
    pthread_mutex_lock(&x->mu);
    x->applied = checkpoint;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static void slot_done(struct log_req *req)
{
    struct slot *s = (struct slot *)req;
    struct e2e *x = req->arg;
    pthread_mutex_lock(&x->mu);
    s->busy = false;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

/* Waits for slot s to be answered; checks and frees its inputs. */
static void slot_reap(struct e2e *x, struct slot *s)
{
    pthread_mutex_lock(&x->mu);
    while (s->busy)
        pthread_cond_wait(&x->cv, &x->mu);
    pthread_mutex_unlock(&x->mu);
    if (s->nev && s->req.rc)
        x->failed = s->req.rc;
    for (size_t i = 0; i < s->nev; i++) {
        if (s->res[i].rc || s->res[i].duplicate)
            x->failed = s->res[i].rc ? s->res[i].rc : CAIRN_EINVAL;
        ingest_event_deinit(&s->evs[i]);
    }
    s->nev = 0;
}

/* Parses events [lo, hi) as NDJSON lines and pumps them through the log
 * writer; returns once the state has applied them all. */
static int pump(struct e2e *x, const struct work *w, size_t lo, size_t hi)
{
    struct cairn_error e;
    struct ingest *ing = engine_ingest(x->eng);
    for (size_t i = lo; i < hi && !x->failed;) {
        struct slot *s = &x->slots[x->turn++ % x->inflight];
        slot_reap(x, s);
        int64_t now = cairn_now_ns();
        for (; s->nev < REQ && i < hi; i++) {
            const struct ev *ev = &w->evs[i];
            int rc = ingest_parse_json(ing, (const char *)w->lines.data + ev->line, ev->linen,
                                       "bench", now, &s->evs[s->nev], &e);
            if (rc) {
                fprintf(stderr, "bench/geofence: input %zu refused: %s %s\n", i, e.field,
                        e.message);
                x->failed = rc;
                break;
            }
            s->ins[s->nev] = s->evs[s->nev].in;
            s->nev++;
        }
        s->req = (struct log_req){
            .inputs = s->ins, .results = s->res, .n = s->nev, .done = slot_done, .arg = x};
        s->busy = true;
        int rc = log_writer_submit(engine_writer(x->eng), &s->req, true);
        if (rc) {
            s->busy = false;
            x->failed = rc;
        }
    }
    for (unsigned k = 0; k < x->inflight; k++)
        slot_reap(x, &x->slots[k]);
    pthread_mutex_lock(&x->mu);
    while (!x->failed && x->applied < hi)
        pthread_cond_wait(&x->cv, &x->mu);
    pthread_mutex_unlock(&x->mu);
    return x->failed ? x->failed : engine_apply_error(x->eng);
}

struct e2e_figures {
    double define_s, fixes_s, fixes_cpu_s, apply_s;
    uint64_t batches, events;
};

static int phase_e2e(const struct work *w, const char *tmp, bool all, unsigned log_batch,
                     unsigned inflight, struct e2e_figures *ef)
{
    static const struct handler *const only[] = {&geofence_handler, NULL};
    char data[600];
    snprintf(data, sizeof data, "%s/e2e", tmp);
    struct e2e *x = calloc(1, sizeof *x);
    if (!x)
        return CAIRN_ENOMEM;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    x->inflight = inflight;
    struct cairn_error e = {0};
    struct engine_config cfg = {.data = data,
                                .schema_dir = CAIRN_SCHEMA_DIR,
                                .handlers = all ? NULL : only,
                                .log = {.batch_max = log_batch},
                                .on_applied = on_applied,
                                .on_applied_arg = x};
    int rc = engine_open(&x->eng, &cfg, &e);
    if (rc) {
        fprintf(stderr, "bench/geofence: engine: %s\n", e.message);
        goto out;
    }
    if ((rc = engine_start(x->eng)))
        goto out;
    int64_t a = bench_mono_ns();
    rc = pump(x, w, 0, w->nf);
    ef->define_s = (bench_mono_ns() - a) / 1e9;
    struct engine_handler_stats st[64];
    size_t ns = engine_handler_stats(x->eng, st, 64);
    uint64_t apply0 = 0;
    for (size_t i = 0; i < ns; i++)
        apply0 += st[i].apply_ns;
    struct log_writer_stats ws0, ws1;
    log_writer_stats(engine_writer(x->eng), &ws0);
    bench_perf_ctl("enable");
    a = bench_mono_ns();
    int64_t cpu = bench_cpu_ns();
    if (!rc)
        rc = pump(x, w, w->nf, w->nf + w->nx);
    ef->fixes_s = (bench_mono_ns() - a) / 1e9;
    bench_perf_ctl("disable");
    ef->fixes_cpu_s = (bench_cpu_ns() - cpu) / 1e9;
    log_writer_stats(engine_writer(x->eng), &ws1);
    ef->batches = ws1.batches - ws0.batches;
    ef->events = ws1.events - ws0.events;
    ns = engine_handler_stats(x->eng, st, 64);
    uint64_t apply1 = 0;
    for (size_t i = 0; i < ns; i++)
        apply1 += st[i].apply_ns;
    ef->apply_s = (apply1 - apply0) / 1e9;
out:
    engine_close(x->eng);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x);
    return rc;
}

/* ====================================================================== main */

static FILE *out_file(const char *dir, const char *name)
{
    char b[600];
    snprintf(b, sizeof b, "%s/%s", dir, name);
    FILE *f = fopen(b, "w");
    if (!f)
        die(b, CAIRN_EIO);
    return f;
}

int main(int argc, char **argv)
{
    struct work w = {.nf = 100000, .nd = 100000, .nx = 1000000};
    size_t batch = ENGINE_APPLY_BATCH;
    unsigned log_batch = 0, inflight = 8;
    const char *dir = "/tmp", *out = NULL;
    bool e2e = true, all = false, detect = false, handler = true;
    rng = 42;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(argv[i], "--no-e2e"))
            e2e = false;
        else if (!strcmp(argv[i], "--no-prefetch"))
            no_prefetch = true;
        else if (!strcmp(argv[i], "--detect"))
            detect = true;
        else if (!strcmp(argv[i], "--detect-only"))
            detect = true, handler = e2e = false;
        else if (!strcmp(argv[i], "--all-handlers"))
            all = true;
        else if (!strcmp(argv[i], "-f") && ++i)
            w.nf = strtoull(v, NULL, 10);
        else if (!strcmp(argv[i], "-d") && ++i)
            w.nd = strtoull(v, NULL, 10);
        else if (!strcmp(argv[i], "-n") && ++i)
            w.nx = strtoull(v, NULL, 10);
        else if (!strcmp(argv[i], "--batch") && ++i)
            batch = strtoull(v, NULL, 10);
        else if (!strcmp(argv[i], "--log-batch") && ++i)
            log_batch = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(argv[i], "--inflight") && ++i)
            inflight = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(argv[i], "--seed") && ++i)
            rng = strtoull(v, NULL, 10) | 1;
        else if (!strcmp(argv[i], "--dir") && ++i)
            dir = v;
        else if (!strcmp(argv[i], "--out") && ++i)
            out = v;
        else {
            fprintf(stderr,
                    "usage: bench/geofence [-f FENCES] [-d DEVICES] [-n FIXES] [--batch "
                    "B] [--log-batch L] [--inflight K] [--seed S] [--dir DIR] [--out DIR] "
                    "[--no-e2e] [--all-handlers] [--detect | --detect-only] [--no-prefetch]\n");
            return 2;
        }
    }
    if (!w.nf || !w.nd || !w.nx || !batch || w.nf > 999999 || !inflight ||
        inflight > INFLIGHT_MAX || log_batch > CAIRN_BATCH_MAX_CEILING) {
        fprintf(stderr, "bench/geofence: FENCES 1..999999, DEVICES, FIXES and B at least 1, "
                        "K 1..64, L at most 65536\n");
        return 2;
    }
    char tmp[512];
    if (bench_tmpdir(dir, tmp, sizeof tmp))
        return 1;
    FILE *fc = out ? out_file(out, "fences.csv") : NULL,
         *xc = out ? out_file(out, "fixes.csv") : NULL;
    int64_t t0 = 1772359200000000000LL;
    w.evs = calloc(w.nf + w.nx, sizeof *w.evs);
    cairn_buf_init(&w.mp, SIZE_MAX);
    cairn_buf_init(&w.lines, SIZE_MAX);
    if (!w.evs)
        die("workload", CAIRN_ENOMEM);
    make_fences(&w, t0, fc);
    make_fixes(&w, t0, xc);
    if (fc)
        fclose(fc), fclose(xc);

    struct handler_figures hf = {0};
    struct e2e_figures ef = {0};
    FILE *tsv = out ? out_file(out, "inside.tsv") : NULL;
    struct detect_figures df = {0};
    double load0 = bench_loadavg();
    int rc = handler ? phase_handler(&w, tmp, batch, tsv, &hf) : 0;
    if (tsv)
        fclose(tsv);
    if (rc)
        die("handler run", rc);
    if (detect && (rc = phase_detect(&w, &df)))
        die("detection run", rc);
    if (detect && handler && df.pairs != hf.pairs) {
        fprintf(stderr,
                "bench/geofence: detection alone found %llu (fix, fence) pairs, the handler "
                "%llu\n",
                (unsigned long long)df.pairs, (unsigned long long)hf.pairs);
        return 1;
    }
    if (e2e && (rc = phase_e2e(&w, tmp, all, log_batch, inflight, &ef)))
        die("end-to-end run", rc);
    double load1 = bench_loadavg();

    double hrate = handler ? w.nx / hf.fixes_s : 0, erate = e2e ? w.nx / ef.fixes_s : 0;
    printf("fences %zu (%.1f vertices avg), devices %zu, fixes %zu; load average %.2f -> %.2f\n",
           w.nf, (double)w.vertices / w.nf, w.nd, w.nx, load0, load1);
    if (detect) {
        double nx = (double)w.nx;
        printf("detection alone (geo.h: index through the device's hint, rasters, exact tests; "
               "no state):\n");
        printf("  build      %9.3f s (parse, bands, pool, raster, index)\n", df.build_s);
        printf("  fixes      %9.0f location events/s (%.3f us CPU per event)\n", nx / df.fixes_s,
               df.fixes_cpu_s * 1e6 / nx);
        printf("  per fix    %9.3f candidates: %.3f inside and %.3f outside by raster, %.3f exact "
               "tests; %.3f fences inside\n",
               df.cand / nx, df.raster_in / nx, df.raster_out / nx, df.exact / nx, df.pairs / nx);
        printf("  memory     %9.0f bytes per fence (index, pool, raster)\n", (double)df.mem / w.nf);
    }
    if (!handler)
        goto json;
    printf("handler alone, state transactions of at most %zu events or %d writes (decode, apply, "
           "flush, commit):\n",
           batch, ENGINE_APPLY_WRITES_MAX);
    printf("  define     %9.0f fences/s\n", w.nf / hf.define_s);
    printf("  open       %9.3f s (index rebuilt from the DBIs)\n", hf.open_s);
    printf("  fixes      %9.0f location events/s (%.2f us CPU per event, %.2f of it system)\n",
           hrate, hf.fixes_cpu_s * 1e6 / w.nx, hf.fixes_sys_s * 1e6 / w.nx);
    printf("  commits    %9llu state transactions for the fixes\n", (unsigned long long)hf.commits);
    printf("  derived    %9llu events (enter/exit)\n", (unsigned long long)hf.derived);
    printf("  inside     %9llu (fix, fence) pairs (%.3f fences per fix)\n",
           (unsigned long long)hf.pairs, (double)hf.pairs / w.nx);
    printf("  memory     %9.0f bytes per fence (geometry + index, heap)\n", (double)hf.mem / w.nf);
    printf("  devices    %9.0f bytes per device (the handler's device table)\n",
           (double)hf.devmem / w.nd);
    if (e2e) {
        printf("end to end (%s; parse + log writer + engine), requests of %d, %u in flight, "
               "writer batches of at most %u:\n",
               all ? "every handler" : "geofence handler", REQ, inflight,
               log_batch ? log_batch : CAIRN_BATCH_MAX_DEFAULT);
        printf("  define     %9.0f fences/s\n", w.nf / ef.define_s);
        printf("  fixes      %9.0f location events/s (%.2f us CPU per event; %.2f us in apply; "
               "%.0f events per log commit)\n",
               erate, ef.fixes_cpu_s * 1e6 / w.nx, ef.apply_s * 1e6 / w.nx,
               ef.batches ? (double)ef.events / ef.batches : 0);
    }
json:
    printf("{\"fences\":%zu,\"devices\":%zu,\"fixes\":%zu,\"batch\":%zu,\"vertices_avg\":%.1f,"
           "\"define_per_s\":%.0f,\"open_s\":%.3f,\"handler_per_s\":%.0f,\"handler_cpu_us\":%.3f,"
           "\"derived\":%llu,\"pairs\":%llu,\"bytes_per_fence\":%.0f,\"bytes_per_device\":%.0f,"
           "\"e2e_per_s\":%.0f,"
           "\"e2e_cpu_us\":%.3f,\"e2e_apply_us\":%.3f,\"e2e_events_per_commit\":%.0f,"
           "\"load\":[%.2f,%.2f],\"handler_sys_us\":%.3f,\"detect_cpu_us\":%.3f,"
           "\"detect_cand\":%.3f,\"detect_exact\":%.3f,\"handler_commits\":%llu}\n",
           w.nf, w.nd, w.nx, batch, (double)w.vertices / w.nf, w.nf / hf.define_s, hf.open_s, hrate,
           hf.fixes_cpu_s * 1e6 / w.nx, (unsigned long long)hf.derived,
           (unsigned long long)hf.pairs, (double)hf.mem / w.nf, (double)hf.devmem / w.nd, erate,
           e2e ? ef.fixes_cpu_s * 1e6 / w.nx : 0, e2e ? ef.apply_s * 1e6 / w.nx : 0,
           ef.batches ? (double)ef.events / ef.batches : 0, load0, load1,
           hf.fixes_sys_s * 1e6 / w.nx, df.fixes_cpu_s * 1e6 / w.nx, (double)df.cand / w.nx,
           (double)df.exact / w.nx, (unsigned long long)hf.commits);
    free(w.evs);
    cairn_buf_deinit(&w.mp);
    cairn_buf_deinit(&w.lines);
    bench_rmtree(tmp);
    return 0;
}
