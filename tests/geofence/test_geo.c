/*
 * test_geo.c — fence geometry and the grid index (handlers/geofence/geo.h):
 * hand-checked point-in-polygon cases (concave, holes, MultiPolygon,
 * vertices and edges, antimeridian, tiny and huge fences, poles), circles,
 * segments, validation reasons, the rasters' answers against the exact
 * test, and a brute-force cross-check of the index against a linear scan
 * (10 000 fences x 100 000 fixes, fixed seed); the block pool, and shapes
 * moved into it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "geo.h"

static int parse_json(const char *text, struct geo_shape *s, struct cairn_error *e)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    assert_non_null(j);
    struct cairn_buf b;
    cairn_buf_init(&b, 1u << 24);
    assert_int_equal(cairn_json_to_msgpack(j, &b, NULL), 0);
    json_decref(j);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, (const char *)b.data, b.len, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    int rc = geo_parse(&u.data, "", s, e);
    msgpack_unpacked_destroy(&u);
    cairn_buf_deinit(&b);
    return rc;
}

static void shape(const char *text, struct geo_shape *s)
{
    struct cairn_error e = {0};
    int rc = parse_json(text, s, &e);
    if (rc)
        fail_msg("%s: %s at %s", text, e.message, e.field);
}

#define IN(s, x, y) assert_true(geo_contains(&(s), x, y))
#define OUT(s, x, y) assert_false(geo_contains(&(s), x, y))

static void test_concave(void **state)
{
    (void)state;
    struct geo_shape s;
    /* a U: the notch (1..2 x 1..3) is outside */
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[3,0],[3,3],[2,3],[2,1],[1,1],[1,3],[0,3],"
          "[0,0]]]}",
          &s);
    IN(s, 0.5, 2.5);
    IN(s, 2.5, 2.5);
    IN(s, 1.5, 0.5);
    OUT(s, 1.5, 2);
    OUT(s, 1.5, 3); /* top of the notch: outside (the notch is open) */
    IN(s, 1.5, 1);  /* notch floor: an edge -> inside */
    IN(s, 1, 2);    /* notch wall: an edge */
    IN(s, 0, 0);    /* a vertex */
    IN(s, 3, 1.5);  /* an edge */
    OUT(s, 3.0000001, 1.5);
    OUT(s, -1, 1);
    /* a ray through a vertex must not double count */
    IN(s, 0.5, 1);
    OUT(s, -0.5, 1);
    geo_shape_free(&s);
}

static void test_holes_multi(void **state)
{
    (void)state;
    struct geo_shape s;
    shape("{\"type\":\"MultiPolygon\",\"coordinates\":["
          "[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[4,4],[6,4],[6,6],[4,6],[4,4]]],"
          "[[[5,4.5],[5.5,4.5],[5.5,5.5],[5,5.5],[5,4.5]]],"
          "[[[20,20],[21,20],[21,21],[20,20]]]]}",
          &s);
    IN(s, 1, 1);
    OUT(s, 4.5, 5);    /* in the hole */
    IN(s, 4, 5);       /* on the hole's edge: inside (boundary belongs to the fence) */
    IN(s, 5.2, 5);     /* an island inside the hole (second polygon) */
    IN(s, 20.9, 20.5); /* triangle */
    OUT(s, 20.1, 20.5);
    IN(s, 20.5, 20.5); /* on the triangle's hypotenuse */
    OUT(s, 15, 15);
    assert_int_equal(s.nverts, 4 + 4 + 4 + 3);
    geo_shape_free(&s);
}

static void test_antimeridian_poles(void **state)
{
    (void)state;
    struct geo_shape s;
    /* Fiji-like fence split at 180 */
    shape("{\"type\":\"MultiPolygon\",\"coordinates\":["
          "[[[178,-18],[180,-18],[180,-16],[178,-16],[178,-18]]],"
          "[[[-180,-18],[-179,-18],[-179,-16],[-180,-16],[-180,-18]]]]}",
          &s);
    IN(s, 179, -17);
    IN(s, -179.5, -17);
    IN(s, 180, -17);
    IN(s, -180, -17);
    OUT(s, 0, -17);
    OUT(s, -178, -17);
    geo_shape_free(&s);
    /* north polar cap above 80 */
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[-180,80],[180,80],[180,90],[-180,90],[-180,80]]"
          "]}",
          &s);
    IN(s, 0, 90);
    IN(s, 123, 85);
    IN(s, -180, 89);
    OUT(s, 0, 79.9);
    geo_shape_free(&s);
    /* circle around the south pole */
    shape("{\"type\":\"Circle\",\"center\":[0,-90],\"radius_m\":200000}", &s);
    IN(s, 77, -88.5);
    OUT(s, 77, -88);
    geo_shape_free(&s);
    /* circle across the antimeridian */
    shape("{\"type\":\"Circle\",\"center\":[179.999,0],\"radius_m\":1000}", &s);
    IN(s, -179.998, 0);
    OUT(s, -179.98, 0);
    geo_shape_free(&s);
}

static void test_tiny_huge(void **state)
{
    (void)state;
    struct geo_shape s;
    /* ~1 cm square */
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[13.4,52.5],[13.4000001,52.5],[13.4000001,52."
          "5000001],[13.4,52.5000001],[13.4,52.5]]]}",
          &s);
    IN(s, 13.40000005, 52.50000005);
    OUT(s, 13.4000003, 52.50000005);
    geo_shape_free(&s);
    /* the whole world */
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[-180,-90],[180,-90],[180,90],[-180,90],[-180,-"
          "90]]]}",
          &s);
    IN(s, 0, 0);
    IN(s, -180, -90);
    IN(s, 179.9, 89.9);
    geo_shape_free(&s);
    /* circle: haversine, 1 km around Paris */
    shape("{\"type\":\"Circle\",\"center\":[2.3522,48.8566],\"radius_m\":1000}", &s);
    IN(s, 2.3522, 48.8566 + 0.0089);  /* ~990 m north */
    OUT(s, 2.3522, 48.8566 + 0.0091); /* ~1012 m */
    geo_shape_free(&s);
    assert_true(fabs(geo_dist(0, 0, 1, 0) - 111195.08) < 1);
}

static void test_segments_margin(void **state)
{
    (void)state;
    struct geo_shape s;
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}", &s);
    assert_true(geo_segment_hits(&s, -1, 0.5, 2, 0.5));
    assert_false(geo_segment_hits(&s, -1, 1.5, 2, 1.5));
    assert_true(geo_segment_hits(&s, -1, 1, 2, 1)); /* along the edge */
    assert_true(fabs(geo_boundary_dist(&s, 0.5, 0.5) - 55595.4) < 3);
    assert_true(geo_boundary_dist(&s, 1.0001, 0.5) < 12);
    geo_shape_free(&s);
}

struct badcase {
    const char *geom, *field, *reason;
};

static void test_bad(void **state)
{
    (void)state;
    static const struct badcase cases[] = {
        {"{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[1,1],[0,1],[0,0.5]]]}",
         "/coordinates/0/4", "not closed"},
        {"{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[0,0]]]}", "/coordinates/0",
         "at least 4"},
        {"{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[1,1e999],[0,0]]]}",
         "/coordinates/0/2", NULL},
        {"{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[181,0],[1,1],[0,0]]]}", "/coordinates/0/1",
         "out of range"},
        {"{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}",
         "/coordinates/0/2", "intersects itself"},
        {"{\"type\":\"Polygon\",\"coordinates\":[[[170,0],[-170,0],[-170,1],[170,0]]]}",
         "/coordinates/0/1", "antimeridian"},
        {"{\"type\":\"Polygon\",\"coordinates\":[]}", "/coordinates", "outer ring"},
        {"{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0],[1,\"a\"],[0,0]]]}",
         "/coordinates/0/2", "numbers"},
        {"{\"type\":\"MultiPolygon\",\"coordinates\":[[[[0,0],[1,0],[1,1],[0,0]]],[[[0,0],[1,0],[1,"
         "1]]]]}",
         "/coordinates/1/0", "at least 4"},
        {"{\"type\":\"Circle\",\"center\":[0,95],\"radius_m\":5}", "/center", "out of range"},
        {"{\"type\":\"Circle\",\"center\":[0,0],\"radius_m\":-5}", "/radius_m", "radius_m"},
        {"{\"type\":\"Point\",\"coordinates\":[0,0]}", "/type", "Polygon"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct geo_shape s;
        struct cairn_error e = {0};
        json_error_t je;
        json_t *j = json_loads(cases[i].geom, 0, &je);
        if (!j) { /* 1e999: jansson refuses it; NaN cannot be written in JSON either */
            continue;
        }
        json_decref(j);
        int rc = parse_json(cases[i].geom, &s, &e);
        if (rc != CAIRN_EINVAL)
            fail_msg("case %zu accepted", i);
        assert_string_equal(e.code, "invalid_geometry");
        if (strcmp(e.field, cases[i].field))
            fail_msg("case %zu: field %s, want %s (%s)", i, e.field, cases[i].field, e.message);
        if (cases[i].reason && !strstr(e.message, cases[i].reason))
            fail_msg("case %zu: reason '%s' lacks '%s'", i, e.message, cases[i].reason);
    }
}

/* ====================================================================== brute force */

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static double rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* A random star-shaped polygon (never self-intersecting) or circle. */
static void random_fence(struct geo_shape *s, char *buf, size_t cap)
{
    double cx = -10 + 20 * rnd(), cy = 40 + 10 * rnd();
    double size = pow(10, -3 + 2.5 * rnd()); /* 0.001 .. ~0.3 degrees */
    if (rnd() < 0.2) {
        snprintf(buf, cap, "{\"type\":\"Circle\",\"center\":[%.9f,%.9f],\"radius_m\":%.3f}", cx, cy,
                 size * 111000);
    } else {
        int n = 3 + (int)(rnd() * 30);
        size_t at = (size_t)snprintf(buf, cap, "{\"type\":\"Polygon\",\"coordinates\":[[");
        double x0 = 0, y0 = 0;
        for (int i = 0; i < n; i++) {
            double a = 2 * M_PI * i / n, r = size * (0.3 + 0.7 * rnd());
            double x = cx + r * cos(a), y = cy + r * sin(a);
            if (!i)
                x0 = x, y0 = y;
            at += (size_t)snprintf(buf + at, cap - at, "[%.9f,%.9f],", x, y);
        }
        snprintf(buf + at, cap - at, "[%.9f,%.9f]]]}", x0, y0);
    }
    shape(buf, s);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void test_brute_force(void **state)
{
    (void)state;
    enum { NF = 10000, NP = 100000 };
    struct geo_shape *f = calloc(NF, sizeof *f);
    char *buf = malloc(8192);
    struct geo_index *ix;
    assert_int_equal(geo_index_new(&ix), 0);
    for (uint32_t i = 0; i < NF; i++) {
        random_fence(&f[i], buf, 8192);
        assert_int_equal(geo_index_add(ix, 1, i, &f[i]), 0);
    }
    /* a second space with the same fences must not leak into space 1 */
    for (uint32_t i = 0; i < 100; i++)
        assert_int_equal(geo_index_add(ix, 2, NF + i, &f[i]), 0);
    double *bx = malloc(NF * 4 * sizeof *bx);
    for (uint32_t i = 0; i < NF; i++) {
        bx[4 * i] = f[i].minx, bx[4 * i + 1] = f[i].miny;
        bx[4 * i + 2] = f[i].maxx, bx[4 * i + 3] = f[i].maxy;
    }
    uint32_t *ids = NULL, got[256], want[256];
    size_t cap = 0;
    long total = 0;
    for (int p = 0; p < NP; p++) {
        double x = -10.5 + 21 * rnd(), y = 39.5 + 11 * rnd();
        int n = geo_index_point(ix, 1, x, y, &ids, &cap);
        assert_true(n >= 0);
        size_t ng = 0, nw = 0;
        for (int i = 0; i < n; i++) {
            assert_true(ids[i] < NF);
            if (geo_contains(&f[ids[i]], x, y) && ng < 256)
                got[ng++] = ids[i];
        }
        for (uint32_t i = 0; i < NF; i++) /* linear scan: bbox, then exact */
            if (x >= bx[4 * i] && x <= bx[4 * i + 2] && y >= bx[4 * i + 1] && y <= bx[4 * i + 3] &&
                geo_contains(&f[i], x, y) && nw < 256)
                want[nw++] = i;
        qsort(got, ng, sizeof *got, cmp_u32);
        assert_int_equal(ng, nw);
        assert_memory_equal(got, want, nw * sizeof *got);
        total += (long)nw;
    }
    assert_true(total > 1000); /* the test says something */
    /* box queries against a linear bbox scan */
    for (int q = 0; q < 2000; q++) {
        double x = -10.5 + 21 * rnd(), y = 39.5 + 11 * rnd(), w = rnd() * rnd(), h = rnd() * rnd();
        int n = geo_index_box(ix, 1, x, y, x + w, y + h, &ids, &cap);
        size_t nw = 0;
        for (uint32_t i = 0; i < NF; i++)
            nw += !(f[i].maxx < x || f[i].minx > x + w || f[i].maxy < y || f[i].miny > y + h);
        size_t ng = 0;
        for (int i = 0; i < n; i++)
            ng += !(f[ids[i]].maxx < x || f[ids[i]].minx > x + w || f[ids[i]].maxy < y ||
                    f[ids[i]].miny > y + h);
        assert_int_equal(ng, nw);
    }
    /* hints (a per-device memory of the previous query): walkers with steps
     * from 1 m to 10 km get exactly the ids of a query without one, before
     * and after the index changes */
    enum { NW = 200 };
    struct geo_hint *hint = calloc(NW, sizeof *hint);
    double *wx = malloc(NW * 2 * sizeof *wx);
    uint32_t *ids2 = NULL;
    size_t cap2 = 0;
    long reused = 0;
    for (int w = 0; w < NW; w++)
        wx[2 * w] = -10 + 20 * rnd(), wx[2 * w + 1] = 40 + 10 * rnd();
    for (int round = 0; round < 2; round++) {
        if (round == 1) /* the index changes: every hint is stale */
            for (uint32_t i = NF - 50; i < NF; i++)
                geo_index_del(ix, 1, i, &f[i]);
        for (int step = 0; step < 300; step++)
            for (int w = 0; w < NW; w++) {
                double d = pow(10, -5 + 4 * rnd()), a = 2 * M_PI * rnd();
                wx[2 * w] += d * cos(a), wx[2 * w + 1] += d * sin(a);
                if (step % 97 == 0) /* now and then exactly on a cell line */
                    wx[2 * w] = floor(wx[2 * w] * 4) / 4;
                uint32_t gen = hint[w].gen;
                int n = geo_index_point_hint(ix, 1, wx[2 * w], wx[2 * w + 1], &hint[w], &ids, &cap);
                int n2 = geo_index_point(ix, 1, wx[2 * w], wx[2 * w + 1], &ids2, &cap2);
                assert_int_equal(n, n2);
                qsort(ids, (size_t)n, sizeof *ids, cmp_u32);
                qsort(ids2, (size_t)n2, sizeof *ids2, cmp_u32);
                assert_memory_equal(ids, ids2, (size_t)n * sizeof *ids);
                reused += gen && gen == hint[w].gen;
            }
    }
    assert_true(reused > NW * 300); /* the hints were used, not only refilled */
    for (uint32_t i = NF - 50; i < NF; i++)
        assert_int_equal(geo_index_add(ix, 1, i, &f[i]), 0);
    free(ids2);
    free(wx);
    free(hint);
    /* deleting every other fence */
    for (uint32_t i = 0; i < NF; i += 2)
        geo_index_del(ix, 1, i, &f[i]);
    for (int p = 0; p < 10000; p++) {
        double x = -10.5 + 21 * rnd(), y = 39.5 + 11 * rnd();
        int n = geo_index_point(ix, 1, x, y, &ids, &cap);
        size_t ng = 0, nw = 0;
        for (int i = 0; i < n; i++) {
            assert_true(ids[i] % 2 == 1);
            ng += geo_contains(&f[ids[i]], x, y);
        }
        for (uint32_t i = 1; i < NF; i += 2)
            nw += geo_contains(&f[i], x, y);
        assert_int_equal(ng, nw);
    }
    free(ids);
    free(bx);
    geo_index_free(ix);
    for (uint32_t i = 0; i < NF; i++)
        geo_shape_free(&f[i]);
    free(f);
    free(buf);
}

/* ====================================================================== rasters */

/* Checks every answer the raster gives against geo_contains at points that
 * stress it: uniform over the box, every vertex, every edge's midpoint and
 * points beside it at distances around the tolerances. Returns how many
 * uniform points it answered. */
/* geo_contains at (x, y) without and with the shape's bands (s has none
 * on entry and keeps them). */
static struct geo_pool *tpool; /* test_raster's */

/* The banded test, then the shape moved into a pool (geo_shape_pool),
 * answer as the full loop did. */
static void bands_check(struct geo_shape *s, const double *pts, size_t n)
{
    char *plain = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        plain[i] = (char)geo_contains(s, pts[2 * i], pts[2 * i + 1]);
    assert_int_equal(geo_shape_bands(s), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(plain[i], geo_contains(s, pts[2 * i], pts[2 * i + 1]));
    uint32_t nverts = s->nverts;
    size_t banded_before = geo_shape_bands_bytes(s);
    assert_int_equal(geo_shape_pool(s, tpool), 0);
    assert_true(s->kind != GEO_POLYGON || s->pool == tpool);
    assert_int_equal(s->nverts, nverts);
    assert_int_equal(geo_shape_bands_bytes(s), banded_before);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(plain[i], geo_contains(s, pts[2 * i], pts[2 * i + 1]));
    free(plain);
}

static long banded; /* rings the band checks covered */

static long raster_check(struct geo_shape *s, int uniform)
{
    struct geo_raster r = {.user = 7};
    size_t np = 0, npcap = (size_t)uniform + 64;
    double *all = malloc(npcap * 2 * sizeof *all);
    geo_raster_build(s, &r);
    assert_int_equal(r.user, 7); /* the caller's byte survives */
    double w = s->maxx - s->minx, h = s->maxy - s->miny;
    long known = 0;
    for (int i = 0; i < uniform; i++) {
        double x = s->minx - 0.05 * w + 1.1 * w * rnd(), y = s->miny - 0.05 * h + 1.1 * h * rnd();
        int t = geo_raster_test(&r, x, y);
        if (t >= 0) {
            known++;
            assert_int_equal(t, geo_contains(s, x, y));
        }
        all[2 * np] = x, all[2 * np + 1] = y, np++;
    }
    static const double d[] = {0, 1e-9, 5e-9, 1e-8, 1.5e-8, 5e-8, 1e-7, 1.5e-7, 1e-6, 1e-5};
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t k = 0; k < s->polys[p].nrings; k++) {
            const struct geo_ring *g = &s->polys[p].rings[k];
            for (uint32_t i = 0, j = g->n - 1; i < g->n; j = i++) {
                double ax = g->xy[2 * j], ay = g->xy[2 * j + 1], bx = g->xy[2 * i],
                       by = g->xy[2 * i + 1];
                double mx = (ax + bx) / 2, my = (ay + by) / 2, l = hypot(bx - ax, by - ay);
                double nx = l > 0 ? -(by - ay) / l : 0, ny = l > 0 ? (bx - ax) / l : 0;
                for (size_t q = 0; q < sizeof d / sizeof *d; q++)
                    for (int sg = -1; sg <= 1; sg += 2) {
                        double pts[3][2] = {{ax + sg * d[q], ay},
                                            {mx + sg * d[q] * nx, my + sg * d[q] * ny},
                                            {ax, ay + sg * d[q]}};
                        for (int c = 0; c < 3; c++) {
                            int t = geo_raster_test(&r, pts[c][0], pts[c][1]);
                            if (t >= 0)
                                assert_int_equal(t, geo_contains(s, pts[c][0], pts[c][1]));
                            if (np == npcap)
                                all = realloc(all, (npcap *= 2) * 2 * sizeof *all);
                            all[2 * np] = pts[c][0], all[2 * np + 1] = pts[c][1], np++;
                        }
                    }
            }
        }
    bands_check(s, all, np);
    /* built again on the pooled shape: the same cells, and the block to
     * prefetch (its rings and bands, from a line boundary) */
    struct geo_raster r2 = {.user = 7};
    geo_raster_build(s, &r2);
    assert_int_equal(r2.ok, r.ok);
    assert_true(r2.x0 == r.x0 && r2.y0 == r.y0 && r2.sx == r.sx && r2.sy == r.sy);
    assert_memory_equal(r2.cell, r.cell, sizeof r.cell);
    if (s->kind == GEO_POLYGON) {
        assert_ptr_equal(r2.geom, s->polys);
        assert_int_equal((uintptr_t)s->polys % 64, 0);
        assert_true(r2.glines >= 1 && r2.glines <= 8);
        assert_true(r2.glines == 8 || s->headn <= 64u * r2.glines);
        for (uint32_t p = 0; p < s->npolys; p++) /* the rings and bands lie in the head */
            for (uint32_t k = 0; k < s->polys[p].nrings; k++) {
                const struct geo_ring *g = &s->polys[p].rings[k];
                const char *hd = (const char *)s->polys;
                assert_true((const char *)g >= hd && (const char *)(g + 1) <= hd + s->headn);
                assert_true(!g->band ||
                            ((const char *)g->band >= hd && (const char *)g->band < hd + s->headn));
                assert_true((const char *)g->xy >= hd + s->headn);
            }
    }
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t k = 0; k < s->polys[p].nrings; k++)
            banded += s->polys[p].rings[k].band != NULL;
    free(all);
    return known;
}

/* A star around (cx, cy): radii in [lo, hi) x size, n vertices, as a ring
 * of JSON positions (no brackets around it). */
static size_t star(char *buf, size_t cap, double cx, double cy, double size, double lo, double hi,
                   int n, bool clockwise)
{
    size_t at = 0;
    double x0 = 0, y0 = 0;
    for (int i = 0; i < n; i++) {
        double a = 2 * M_PI * (clockwise ? n - i : i) / n, r = size * (lo + (hi - lo) * rnd());
        double x = round((cx + r * cos(a)) * 1e7) / 1e7, y = round((cy + r * sin(a)) * 1e7) / 1e7;
        if (!i)
            x0 = x, y0 = y;
        at += (size_t)snprintf(buf + at, cap - at, "[%.7f,%.7f],", x, y);
    }
    at += (size_t)snprintf(buf + at, cap - at, "[%.7f,%.7f]", x0, y0);
    return at;
}

static void test_raster(void **state)
{
    (void)state;
    struct geo_shape s;
    long known = 0, total = 0;
    tpool = geo_pool_new();
    assert_non_null(tpool);
    /* hand-made: the U, a square with a hole, a MultiPolygon whose parts
     * touch, a sliver, edges on the cell lines of a 12 x 12 and of a
     * 20 x 20 raster (GEO_RASTER_N) */
    static const char *const hand[] = {
        "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[3,0],[3,3],[2,3],[2,1],[1,1],[1,3],[0,3],"
        "[0,0]]]}",
        "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[4,4],[6,4],"
        "[6,6],[4,6],[4,4]]]}",
        "{\"type\":\"MultiPolygon\",\"coordinates\":[[[[0,0],[1,0],[1,1],[0,1],[0,0]]],[[[1,0],[2,"
        "0],[2,1],[1,1],[1,0]]]]}",
        "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[1,0.0001],[1,0.0002],[0,0]]]}",
        "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[12,0],[12,12],[1,12],[1,1],[0,1],[0,0]]]}",
        "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[20,0],[20,20],[1,20],[1,1],[0,1],[0,0]]]}",
        "{\"type\":\"Polygon\",\"coordinates\":[[[179,-89],[180,-89],[180,89],[179,89],[179,"
        "-89]]]}",
    };
    for (size_t i = 0; i < sizeof hand / sizeof *hand; i++) {
        shape(hand[i], &s);
        known += raster_check(&s, 20000);
        total += 20000;
        geo_shape_free(&s);
    }
    /* random stars with holes, and MultiPolygons of two overlapping stars */
    char *buf = malloc(1 << 16);
    for (int f = 0; f < 300; f++) {
        double cx = -170 + 340 * rnd(), cy = -80 + 160 * rnd();
        double size = pow(10, -4 + 4 * rnd());
        int n = 8 + (int)(rnd() * 60);
        size_t at = 0, cap = 1 << 16;
        if (f % 3 == 2) {
            at += (size_t)snprintf(buf + at, cap - at,
                                   "{\"type\":\"MultiPolygon\",\"coordinates\":[[[");
            at += star(buf + at, cap - at, cx, cy, size, 0.5, 1, n, false);
            at += (size_t)snprintf(buf + at, cap - at, "]],[[");
            at += star(buf + at, cap - at, cx + size / 2, cy, size, 0.5, 1, n, false);
            snprintf(buf + at, cap - at, "]]]}");
        } else {
            at += (size_t)snprintf(buf + at, cap - at, "{\"type\":\"Polygon\",\"coordinates\":[[");
            at += star(buf + at, cap - at, cx, cy, size, 0.4, 1, n, false);
            if (f % 3 == 1) { /* a hole well inside the smallest radius */
                at += (size_t)snprintf(buf + at, cap - at, "],[");
                at += star(buf + at, cap - at, cx, cy, size, 0.1, 0.3, 3 + n / 4, true);
            }
            snprintf(buf + at, cap - at, "]]}");
        }
        shape(buf, &s);
        known += raster_check(&s, 2000);
        total += 2000;
        geo_shape_free(&s);
    }
    free(buf);
    assert_true(known > total / 3); /* it answers most points: the test says something */
    assert_true(banded > 100);      /* the band checks covered rings with bands */
    /* no raster: circles and tiny polygons answer -1 */
    struct geo_raster r;
    shape("{\"type\":\"Circle\",\"center\":[1,1],\"radius_m\":1000}", &s);
    geo_raster_build(&s, &r);
    assert_int_equal(geo_raster_test(&r, 1, 1), -1);
    geo_shape_free(&s);
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[0.000001,0],[0.000001,0.000001],[0,0]]]}",
          &s);
    geo_raster_build(&s, &r);
    assert_int_equal(r.ok, 0);
    geo_shape_free(&s);
    geo_pool_free(tpool); /* the shapes were freed into it */
    tpool = NULL;
}

static void test_pack(void **state)
{
    (void)state;
    struct geo_shape s, u;
    shape("{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[10,0],[10,10],[0,10],[0,0]],[[4,4],[6,4],"
          "[6,6],[4,6],[4,4]]]}",
          &s);
    struct cairn_buf b;
    cairn_buf_init(&b, 1 << 20);
    assert_int_equal(geo_pack(&s, &b), 0);
    assert_int_equal(geo_unpack(b.data, b.len, &u), 0);
    assert_int_equal(u.nverts, 8);
    IN(u, 1, 1);
    OUT(u, 5, 5);
    geo_shape_free(&u);
    assert_int_equal(geo_unpack(b.data, b.len - 3, &u), CAIRN_ECORRUPT);
    geo_shape_free(&s);
    cairn_buf_deinit(&b);
}

/* The pool (geo.h): blocks of random sizes, from one byte to past the
 * largest class, allocated and returned in random order, each filled with
 * its own bytes: none overlaps another, all are 16-byte aligned, and the
 * pool reports at least what is live. */
static void test_pool(void **state)
{
    (void)state;
    enum { LIVE = 2000, OPS = 60000 };
    struct geo_pool *p = geo_pool_new();
    assert_non_null(p);
    uint8_t *blk[LIVE] = {0};
    size_t len[LIVE] = {0};
    uint8_t tag[LIVE] = {0};
    for (int op = 0; op < OPS; op++) {
        int i = (int)(rnd() * LIVE);
        if (blk[i]) {
            for (size_t k = 0; k < len[i]; k++)
                assert_int_equal(blk[i][k], (uint8_t)(tag[i] + k));
            geo_pool_put(p, blk[i], len[i]);
            blk[i] = NULL;
            continue;
        }
        double u = rnd();
        len[i] = u < 0.6    ? 1 + (size_t)(rnd() * 1024)
                 : u < 0.95 ? 1025 + (size_t)(rnd() * 20000)
                 : u < 0.99 ? 20000 + (size_t)(rnd() * 250000)
                            : 262144 + (size_t)(rnd() * 100000);
        blk[i] = geo_pool_alloc(p, len[i]);
        assert_non_null(blk[i]);
        assert_int_equal((uintptr_t)blk[i] % 16, 0);
        tag[i] = (uint8_t)op;
        for (size_t k = 0; k < len[i]; k++)
            blk[i][k] = (uint8_t)(tag[i] + k);
    }
    size_t live = 0;
    for (int i = 0; i < LIVE; i++)
        if (blk[i]) {
            live += len[i];
            for (size_t k = 0; k < len[i]; k++)
                assert_int_equal(blk[i][k], (uint8_t)(tag[i] + k));
        }
    assert_true(geo_pool_bytes(p) >= live);
    for (int i = 0; i < LIVE; i += 2) /* half returned, the rest with the pool */
        geo_pool_put(p, blk[i], len[i]);
    geo_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concave),
        cmocka_unit_test(test_holes_multi),
        cmocka_unit_test(test_antimeridian_poles),
        cmocka_unit_test(test_tiny_huge),
        cmocka_unit_test(test_segments_margin),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_pack),
        cmocka_unit_test(test_brute_force),
        cmocka_unit_test(test_raster),
        cmocka_unit_test(test_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
