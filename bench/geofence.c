/*
 * geofence.c — bench/geofence: location events through the geofence
 * handler with a large fence set.
 *
 *   bench/geofence [-f FENCES] [-d DEVICES] [-n FIXES] [--seed S] [--dir DIR] [--out DIR]
 *
 * FENCES polygons (8..64 vertices, star-shaped, 100 m .. 3 km across)
 * scattered over 20 cities (~0.5 degree around each centre), DEVICES
 * devices on random walks (~10 m .. 50 m per fix) starting in those
 * cities. Phases, each timed:
 *   define   every geofence.define through the handler (one state txn per 1024)
 *   open     close + open: the in-memory index rebuilt from the DBIs
 *   fixes    FIXES location events through the handler, one state txn
 *            (commit included) per 1024 events, like the engine's batches
 * Prints events/s, derived events, and heap bytes per fence. With --out,
 * writes fences.ndjson / fixes.ndjson (for `cairn append`, end to end) and
 * fences.csv / fixes.csv (WKT, for bench/geofence_postgis.sh).
 */
#include "bench.h"
#include "handler.h"
#include "proj.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const struct handler geofence_handler;
size_t geofence_memory(struct hctx *ctx);

#define BATCH 1024

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

struct ev {
    const char *type;
    int64_t time;
    struct cairn_buf payload;
    msgpack_unpacked body;
};

static void make_event(struct ev *e, const char *type, int64_t t, json_t *payload)
{
    e->type = type;
    e->time = t;
    cairn_buf_init(&e->payload, 1u << 20);
    if (cairn_json_to_msgpack(payload, &e->payload, NULL))
        abort();
    msgpack_unpacked_init(&e->body);
    msgpack_unpack_next(&e->body, (const char *)e->payload.data, e->payload.len, NULL);
}

static int run(struct proj *p, struct hctx *ctx, struct ev *evs, size_t n, uint64_t *seq,
               uint64_t *derived)
{
    for (size_t i = 0; i < n;) {
        int rc = proj_begin(p);
        for (size_t k = 0; k < BATCH && i < n && !rc; k++, i++) {
            struct event ev = {.seq = ++*seq,
                               .type = {evs[i].type, strlen(evs[i].type)},
                               .tenant = {"t", 1},
                               .key = {"", 0},
                               .time = evs[i].time,
                               .payload = evs[i].payload.data,
                               .payload_len = evs[i].payload.len,
                               .body = &evs[i].body.data};
            rc = geofence_handler.apply(ctx, &ev);
            const struct event *em;
            *derived += proj_hctx_emitted(ctx, &em);
            proj_hctx_clear(ctx);
        }
        if (!rc)
            rc = proj_commit(p, *seq);
        if (rc == CAIRN_EMAPFULL) {
            fprintf(stderr, "map full: rerun with a larger map\n");
            return rc;
        }
        if (rc)
            return rc;
    }
    return 0;
}

int main(int argc, char **argv)
{
    size_t nf = 100000, nd = 100000, nx = 1000000;
    const char *dir = "/tmp", *out = NULL;
    rng = 42;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-f"))
            nf = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "-d"))
            nd = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "-n"))
            nx = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--seed"))
            rng = strtoull(argv[i + 1], NULL, 10) | 1;
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--out"))
            out = argv[i + 1];
    }
    char tmp[512], path[600];
    if (bench_tmpdir(dir, tmp, sizeof tmp))
        return 1;
    snprintf(path, sizeof path, "%s/state", tmp);
    FILE *fn = NULL, *fc = NULL, *xn = NULL, *xc = NULL;
    if (out) {
        char b[600];
        snprintf(b, sizeof b, "%s/fences.ndjson", out), fn = fopen(b, "w");
        snprintf(b, sizeof b, "%s/fences.csv", out), fc = fopen(b, "w");
        snprintf(b, sizeof b, "%s/fixes.ndjson", out), xn = fopen(b, "w");
        snprintf(b, sizeof b, "%s/fixes.csv", out), xc = fopen(b, "w");
    }
    /* ---- workload */
    int64_t t0 = 1772359200000000000LL;
    struct ev *fences = calloc(nf, sizeof *fences), *fixes = calloc(nx, sizeof *fixes);
    size_t vertices = 0;
    for (size_t i = 0; i < nf; i++) {
        const double *c = cities[i % 20];
        double cx = c[0] + (rnd() - 0.5), cy = c[1] + (rnd() - 0.5) * 0.6;
        double r = (50 + 1450 * rnd()) / 111000.0, k = 1 / cos(cy * M_PI / 180);
        int nv = 8 + (int)(rnd() * 57);
        vertices += (size_t)nv;
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
        make_event(&fences[i], "geofence.define", t0, pl);
        if (fn) {
            char *s = json_dumps(pl, JSON_COMPACT);
            fprintf(
                fn,
                "{\"type\":\"geofence.define\",\"tenant\":\"t\",\"time\":%lld,\"payload\":%s}\n",
                (long long)t0, s);
            free(s);
            fprintf(fc, "%s\t%s\n", id, wkt);
        }
        json_decref(pl);
    }
    double(*pos)[2] = malloc(nd * sizeof *pos);
    for (size_t d = 0; d < nd; d++) {
        const double *c = cities[d % 20];
        pos[d][0] = c[0] + (rnd() - 0.5), pos[d][1] = c[1] + (rnd() - 0.5) * 0.6;
    }
    for (size_t i = 0; i < nx; i++) {
        size_t d = i % nd;
        double step = (10 + 40 * rnd()) / 111000.0, a = 2 * M_PI * rnd();
        pos[d][0] += step * cos(a) / cos(pos[d][1] * M_PI / 180);
        pos[d][1] += step * sin(a);
        double x = round(pos[d][0] * 1e7) / 1e7, y = round(pos[d][1] * 1e7) / 1e7;
        char id[32];
        snprintf(id, sizeof id, "dev%06zu", d);
        int64_t t = t0 + 1000000000LL + (int64_t)(i / nd) * 10000000000LL + (int64_t)d;
        json_t *pl = json_pack("{ss sf sf}", "device_id", id, "lat", y, "lon", x);
        make_event(&fixes[i], "location", t, pl);
        if (xn) {
            fprintf(xn,
                    "{\"type\":\"location\",\"tenant\":\"t\",\"time\":%lld,\"payload\":{\"device_"
                    "id\":\"%s\",\"lat\":%.7f,\"lon\":%.7f}}\n",
                    (long long)t, id, y, x);
            fprintf(xc, "%zu\t%s\t%.7f\t%.7f\n", i, id, x, y);
        }
        json_decref(pl);
    }
    if (fn)
        fclose(fn), fclose(fc), fclose(xn), fclose(xc);
    /* ---- the handler */
    struct proj *p;
    struct hctx *ctx;
    int rc = proj_open(&p, &(struct proj_config){.dir = path, .map_size = 16ull << 30});
    if (!rc)
        rc = proj_hctx_new(p, &geofence_handler, NULL, &ctx);
    if (!rc && !(rc = proj_begin(p)) && !(rc = geofence_handler.open(ctx)))
        rc = proj_commit(p, 0);
    uint64_t seq = 0, derived = 0;
    int64_t a = bench_mono_ns();
    if (!rc)
        rc = run(p, ctx, fences, nf, &seq, &derived);
    int64_t b = bench_mono_ns();
    size_t mem = rc ? 0 : geofence_memory(ctx);
    geofence_handler.close(ctx);
    proj_hctx_free(ctx);
    if (!rc)
        rc = proj_hctx_new(p, &geofence_handler, NULL, &ctx);
    int64_t c0 = bench_mono_ns();
    if (!rc && !(rc = proj_begin(p)) && !(rc = geofence_handler.open(ctx)))
        rc = proj_commit(p, seq);
    int64_t c1 = bench_mono_ns();
    derived = 0;
    if (!rc)
        rc = run(p, ctx, fixes, nx, &seq, &derived);
    int64_t d1 = bench_mono_ns();
    if (rc) {
        fprintf(stderr, "bench/geofence: %s\n", cairn_strerror(rc));
        return 1;
    }
    printf("fences %zu (%.1f vertices avg), devices %zu, fixes %zu\n", nf, (double)vertices / nf,
           nd, nx);
    printf("define     %8.0f fences/s\n", nf / ((b - a) / 1e9));
    printf("open       %8.3f s (index rebuilt from the DBIs)\n", (c1 - c0) / 1e9);
    printf("fixes      %8.0f location events/s through the handler (commit per %d)\n",
           nx / ((d1 - c1) / 1e9), BATCH);
    printf("derived    %8llu events (enter/exit)\n", (unsigned long long)derived);
    printf("memory     %8.0f bytes per fence (geometry + index, heap)\n", (double)mem / nf);
    printf(
        "{\"fences\":%zu,\"fixes\":%zu,\"define_per_s\":%.0f,\"open_s\":%.3f,\"fixes_per_s\":%.0f,"
        "\"derived\":%llu,\"bytes_per_fence\":%.0f}\n",
        nf, nx, nf / ((b - a) / 1e9), (c1 - c0) / 1e9, nx / ((d1 - c1) / 1e9),
        (unsigned long long)derived, (double)mem / nf);
    geofence_handler.close(ctx);
    proj_hctx_free(ctx);
    proj_close(p);
    bench_rmtree(tmp);
    return 0;
}
