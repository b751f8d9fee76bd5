/*
 * geo.c — fence geometry and the grid index (see geo.h for the rules:
 * planar edges in lon/lat, boundary counts as inside, antimeridian split by
 * the producer, haversine circles).
 */
#include "geo.h"
#include "handler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define DEG2RAD (M_PI / 180.0)
/* Tolerance, in degrees, of the on-edge test: ~1 mm. GPS fixes are never
 * that precise, so the rule only matters for points given exactly on an
 * edge (hand-written tests, snapped coordinates). */
#define EDGE_EPS 1e-8

static float f_down(double d);

/* ====================================================================== parsing */

struct parse {
    const char *where;
    struct cairn_error *e;
    char path[CAIRN_ERR_FIELD_MAX];
};

static int bad(struct parse *ps, const char *fmt, double a, double b)
{
    char msg[200];
    snprintf(msg, sizeof msg, fmt, a, b);
    return cairn_error_set(ps->e, "invalid_geometry", ps->path, "%s", msg);
}

static void at(struct parse *ps, const char *suffix_fmt, long a, long b, long c)
{
    char s[96];
    snprintf(s, sizeof s, suffix_fmt, a, b, c);
    snprintf(ps->path, sizeof ps->path, "%s%s", ps->where, s);
}

static bool num(const msgpack_object *o, double *v)
{
    return mp_num(o, v);
}

static bool is_array(const msgpack_object *o)
{
    return o && o->type == MSGPACK_OBJECT_ARRAY;
}

/* Checks a position array at coordinates path; fills lon/lat. */
static int parse_pos(struct parse *ps, const msgpack_object *p, double *lon, double *lat)
{
    if (!is_array(p) || p->via.array.size < 2 || p->via.array.size > 3)
        return bad(ps, "a position is an array [lon, lat]", 0, 0);
    if (!num(&p->via.array.ptr[0], lon) || !num(&p->via.array.ptr[1], lat))
        return bad(ps, "a position holds numbers", 0, 0);
    if (!isfinite(*lon) || !isfinite(*lat))
        return bad(ps, "coordinates must be finite (no NaN or infinity)", 0, 0);
    if (*lon < -180 || *lon > 180 || *lat < -90 || *lat > 90)
        return bad(ps,
                   "coordinate out of range: lon %g, lat %g (lon in [-180, 180], lat in [-90, 90])",
                   *lon, *lat);
    return 0;
}

static bool seg_cross(double ax, double ay, double bx, double by, double cx, double cy, double dx,
                      double dy, bool proper);

/* Proper intersection between two non-adjacent edges of a ring. */
static int check_selfx(struct parse *ps, const struct geo_ring *r, long pi, long ri)
{
    uint32_t n = r->n;
    if (n > GEO_SELFX_CHECK_MAX)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        const double *a = r->xy + 2 * i, *b = r->xy + 2 * ((i + 1) % n);
        for (uint32_t j = i + 2; j < n; j++) {
            if (i == 0 && j == n - 1)
                continue; /* adjacent through the closing vertex */
            const double *c = r->xy + 2 * j, *d = r->xy + 2 * ((j + 1) % n);
            if (seg_cross(a[0], a[1], b[0], b[1], c[0], c[1], d[0], d[1], false)) {
                if (pi >= 0)
                    at(ps, "/coordinates/%ld/%ld/%ld", pi, ri, (long)j);
                else
                    at(ps, "/coordinates/%ld/%ld", ri, (long)j, 0);
                return bad(ps, "the ring intersects itself (edges %g and %g)", i, j);
            }
        }
    }
    return 0;
}

/* A ring: >= 4 positions, closed, no long-way edges, not self-intersecting. */
static int parse_ring(struct parse *ps, const msgpack_object *o, long pi, long ri,
                      struct geo_ring *r, double **xy, struct geo_shape *s)
{
#define RING_AT(k)                                                                                 \
    (pi >= 0 ? at(ps, "/coordinates/%ld/%ld/%ld", pi, ri, (long)(k))                               \
             : at(ps, "/coordinates/%ld/%ld", ri, (long)(k), 0))
    if (pi >= 0)
        at(ps, "/coordinates/%ld/%ld", pi, ri, 0);
    else
        at(ps, "/coordinates/%ld", ri, 0, 0);
    if (!is_array(o))
        return bad(ps, "a ring is an array of positions", 0, 0);
    uint32_t n = o->via.array.size;
    if (n < 4)
        return bad(ps, "a ring needs at least 4 positions (first = last), it has %g", n, 0);
    if (s->nverts + n - 1 > GEO_VERTICES_MAX)
        return bad(ps, "over %g vertices in one fence", GEO_VERTICES_MAX, 0);
    r->n = n - 1;
    r->xy = *xy;
    for (uint32_t k = 0; k < n; k++) {
        double lon, lat;
        RING_AT(k);
        int rc = parse_pos(ps, &o->via.array.ptr[k], &lon, &lat);
        if (rc)
            return rc;
        if (k == n - 1) {
            if (lon != r->xy[0] || lat != r->xy[1])
                return bad(ps, "the ring is not closed: its last position must equal the first", 0,
                           0);
            break;
        }
        if (k > 0) {
            double plon = r->xy[2 * k - 2];
            bool full_parallel = fabs(plon) == 180 && fabs(lon) == 180 && lat == r->xy[2 * k - 1];
            if (fabs(lon - plon) > 180 && !full_parallel)
                return bad(ps,
                           "an edge spans %g degrees of longitude: a fence across the antimeridian "
                           "must be split at +-180 into a MultiPolygon",
                           fabs(lon - plon), 0);
        }
        r->xy[2 * k] = lon;
        r->xy[2 * k + 1] = lat;
        if (lon < s->minx)
            s->minx = lon;
        if (lon > s->maxx)
            s->maxx = lon;
        if (lat < s->miny)
            s->miny = lat;
        if (lat > s->maxy)
            s->maxy = lat;
    }
    /* the closing edge */
    double l0 = r->xy[0], ln = r->xy[2 * (r->n - 1)];
    if (fabs(l0 - ln) > 180 &&
        !(fabs(l0) == 180 && fabs(ln) == 180 && r->xy[1] == r->xy[2 * r->n - 1])) {
        RING_AT(n - 1);
        return bad(ps, "an edge spans %g degrees of longitude: split the fence at +-180",
                   fabs(l0 - ln), 0);
    }
    *xy += 2 * r->n;
    s->nverts += r->n;
#undef RING_AT
    return check_selfx(ps, r, pi, ri);
}

/* Counts rings and positions first so one block holds everything. */
static int count(const msgpack_object *coords, bool multi, size_t *npolys, size_t *nrings,
                 size_t *npos)
{
    *npolys = multi ? coords->via.array.size : 1;
    *nrings = *npos = 0;
    for (size_t p = 0; p < *npolys; p++) {
        const msgpack_object *poly = multi ? &coords->via.array.ptr[p] : coords;
        if (!is_array(poly))
            return -1;
        *nrings += poly->via.array.size;
        for (size_t r = 0; r < poly->via.array.size; r++)
            if (is_array(&poly->via.array.ptr[r]))
                *npos += poly->via.array.ptr[r].via.array.size;
    }
    return 0;
}

static int parse_polys(struct parse *ps, const msgpack_object *coords, bool multi,
                       struct geo_shape *s)
{
    at(ps, "/coordinates", 0, 0, 0);
    if (!is_array(coords))
        return bad(ps, "coordinates must be an array", 0, 0);
    if (coords->via.array.size == 0)
        return bad(ps,
                   multi ? "a MultiPolygon needs at least one polygon"
                         : "a Polygon needs an outer ring",
                   0, 0);
    if (multi && coords->via.array.size > GEO_POLYS_MAX)
        return bad(ps, "over %g polygons", GEO_POLYS_MAX, 0);
    size_t np, nr, npos;
    if (count(coords, multi, &np, &nr, &npos)) {
        return bad(ps, "a polygon is an array of rings", 0, 0);
    }
    if (npos > GEO_VERTICES_MAX + nr)
        return bad(ps, "over %g vertices in one fence", GEO_VERTICES_MAX, 0);
    size_t bytes =
        np * sizeof(struct geo_poly) + nr * sizeof(struct geo_ring) + npos * 2 * sizeof(double);
    s->mem = calloc(1, bytes ? bytes : 1);
    if (!s->mem)
        return CAIRN_ENOMEM;
    s->polys = s->mem;
    struct geo_ring *rings = (struct geo_ring *)(s->polys + np);
    double *xy = (double *)(rings + nr);
    s->npolys = (uint32_t)np;
    s->minx = s->miny = 1e9;
    s->maxx = s->maxy = -1e9;
    for (size_t p = 0; p < np; p++) {
        const msgpack_object *poly = multi ? &coords->via.array.ptr[p] : coords;
        if (poly->via.array.size == 0 || poly->via.array.size > GEO_RINGS_MAX) {
            if (multi)
                at(ps, "/coordinates/%ld", (long)p, 0, 0);
            return bad(ps, "a polygon has 1 to %g rings (outer ring, then holes)", GEO_RINGS_MAX,
                       0);
        }
        s->polys[p].nrings = poly->via.array.size;
        s->polys[p].rings = rings;
        for (uint32_t r = 0; r < poly->via.array.size; r++) {
            int rc =
                parse_ring(ps, &poly->via.array.ptr[r], multi ? (long)p : -1, r, &rings[r], &xy, s);
            if (rc)
                return rc;
        }
        rings += poly->via.array.size;
    }
    return 0;
}

static int parse_circle(struct parse *ps, const msgpack_object *g, struct geo_shape *s)
{
    const msgpack_object *c = mp_get(g, "center");
    at(ps, "/center", 0, 0, 0);
    if (!c)
        return bad(ps, "a Circle needs a center [lon, lat]", 0, 0);
    int rc = parse_pos(ps, c, &s->cx, &s->cy);
    if (rc)
        return rc;
    at(ps, "/radius_m", 0, 0, 0);
    if (!num(mp_get(g, "radius_m"), &s->r) || !isfinite(s->r) || s->r <= 0 || s->r > GEO_RADIUS_MAX)
        return bad(ps, "radius_m must be a number in (0, %g]", GEO_RADIUS_MAX, 0);
    double dlat = s->r / GEO_EARTH_R / DEG2RAD;
    s->miny = s->cy - dlat;
    s->maxy = s->cy + dlat;
    double cl = cos(s->cy * DEG2RAD);
    double dlon = cl > 1e-9 ? dlat / cl : 360;
    s->minx = s->cx - dlon;
    s->maxx = s->cx + dlon;
    /* Across a pole or the antimeridian: every longitude (the distance test
     * is exact; only the index gets coarser for such rare circles). */
    if (s->miny < -90 || s->maxy > 90 || s->minx < -180 || s->maxx > 180 || dlon >= 180) {
        s->minx = -180;
        s->maxx = 180;
    }
    if (s->miny < -90)
        s->miny = -90;
    if (s->maxy > 90)
        s->maxy = 90;
    s->nverts = 1;
    return 0;
}

int geo_parse(const msgpack_object *g, const char *where, struct geo_shape *s,
              struct cairn_error *e)
{
    struct parse ps = {.where = where ? where : "", .e = e};
    memset(s, 0, sizeof *s);
    at(&ps, "", 0, 0, 0);
    if (!g || g->type != MSGPACK_OBJECT_MAP)
        return bad(&ps, "geometry must be an object", 0, 0);
    const msgpack_object *t = mp_get(g, "type");
    int rc;
    if (mp_str_eq(t, "Polygon") || mp_str_eq(t, "MultiPolygon")) {
        s->kind = GEO_POLYGON;
        rc = parse_polys(&ps, mp_get(g, "coordinates"), mp_str_eq(t, "MultiPolygon"), s);
    } else if (mp_str_eq(t, "Circle")) {
        s->kind = GEO_CIRCLE;
        rc = parse_circle(&ps, g, s);
    } else if (mp_str_eq(t, "Roam")) {
        s->kind = GEO_ROAM;
        at(&ps, "/radius_m", 0, 0, 0);
        rc = 0;
        if (!num(mp_get(g, "radius_m"), &s->r) || !isfinite(s->r) || s->r <= 0 || s->r > 100000)
            rc = bad(&ps, "radius_m must be a number in (0, %g]", 100000, 0);
        s->minx = -180, s->maxx = 180, s->miny = -90, s->maxy = 90;
    } else {
        at(&ps, "/type", 0, 0, 0);
        rc = bad(&ps, "type must be Polygon, MultiPolygon, Circle or Roam", 0, 0);
    }
    if (rc)
        geo_shape_free(s);
    return rc;
}

void geo_shape_free(struct geo_shape *s)
{
    if (s->pool)
        geo_pool_put(s->pool, s->mem, s->memn);
    else
        free(s->mem);
    s->pool = NULL;
    s->memn = s->headn = 0;
    free(s->bands);
    s->bands = NULL;
    s->mem = NULL;
    s->polys = NULL;
    s->npolys = 0;
}

/* ====================================================================== packing */

/* kind u8 | bbox 4 x f64 | circle: cx cy r | polygon: npolys u32, per
 * polygon nrings u32, per ring n u32 + 2n f64. Native byte order: the
 * packed form only lives in this machine's state (it is rebuilt by
 * replay), and digests compare states built on the same architecture. */
static int put(struct cairn_buf *b, const void *p, size_t n)
{
    return cairn_buf_append(b, p, n);
}

int geo_pack(const struct geo_shape *s, struct cairn_buf *b)
{
    uint8_t k = (uint8_t)s->kind;
    double box[4] = {s->minx, s->miny, s->maxx, s->maxy};
    int rc = put(b, &k, 1);
    if (!rc)
        rc = put(b, box, sizeof box);
    if (rc || s->kind != GEO_POLYGON) {
        double c[3] = {s->cx, s->cy, s->r};
        return rc ? rc : put(b, c, sizeof c);
    }
    rc = put(b, &s->npolys, 4);
    for (uint32_t p = 0; p < s->npolys && !rc; p++) {
        rc = put(b, &s->polys[p].nrings, 4);
        for (uint32_t r = 0; r < s->polys[p].nrings && !rc; r++) {
            const struct geo_ring *g = &s->polys[p].rings[r];
            rc = put(b, &g->n, 4);
            if (!rc)
                rc = put(b, g->xy, g->n * 2 * sizeof(double));
        }
    }
    return rc;
}

int geo_unpack(const uint8_t *p, size_t n, struct geo_shape *s)
{
    const uint8_t *end = p + n;
    memset(s, 0, sizeof *s);
    if (n < 33)
        return CAIRN_ECORRUPT;
    s->kind = p[0];
    double box[4];
    memcpy(box, p + 1, sizeof box);
    s->minx = box[0], s->miny = box[1], s->maxx = box[2], s->maxy = box[3];
    p += 33;
    if (s->kind != GEO_POLYGON) {
        double c[3];
        if (end - p < (long)sizeof c)
            return CAIRN_ECORRUPT;
        memcpy(c, p, sizeof c);
        s->cx = c[0], s->cy = c[1], s->r = c[2];
        return 0;
    }
    /* first pass: sizes */
    const uint8_t *q = p;
    uint32_t np, nr = 0, npos = 0;
    if (end - q < 4)
        return CAIRN_ECORRUPT;
    memcpy(&np, q, 4);
    q += 4;
    for (uint32_t i = 0; i < np; i++) {
        uint32_t k;
        if (end - q < 4)
            return CAIRN_ECORRUPT;
        memcpy(&k, q, 4);
        q += 4;
        nr += k;
        for (uint32_t j = 0; j < k; j++) {
            uint32_t m;
            if (end - q < 4)
                return CAIRN_ECORRUPT;
            memcpy(&m, q, 4);
            q += 4;
            if ((size_t)(end - q) < (size_t)m * 16)
                return CAIRN_ECORRUPT;
            q += (size_t)m * 16;
            npos += m;
        }
    }
    s->mem = malloc(np * sizeof(struct geo_poly) + nr * sizeof(struct geo_ring) + npos * 16 + 1);
    if (!s->mem)
        return CAIRN_ENOMEM;
    s->polys = s->mem;
    s->npolys = np;
    struct geo_ring *rings = (struct geo_ring *)(s->polys + np);
    double *xy = (double *)(rings + nr);
    q = p + 4;
    for (uint32_t i = 0; i < np; i++) {
        memcpy(&s->polys[i].nrings, q, 4);
        q += 4;
        s->polys[i].rings = rings;
        for (uint32_t j = 0; j < s->polys[i].nrings; j++) {
            memcpy(&rings[j].n, q, 4);
            q += 4;
            rings[j].xy = xy;
            rings[j].band = NULL;
            memcpy(xy, q, (size_t)rings[j].n * 16);
            q += (size_t)rings[j].n * 16;
            xy += 2 * rings[j].n;
            s->nverts += rings[j].n;
        }
        rings += s->polys[i].nrings;
    }
    return 0;
}

/* ====================================================================== tests */

double geo_dist(double lon1, double lat1, double lon2, double lat2)
{
    double p1 = lat1 * DEG2RAD, p2 = lat2 * DEG2RAD;
    double dp = p2 - p1, dl = (lon2 - lon1) * DEG2RAD;
    double a = sin(dp / 2) * sin(dp / 2) + cos(p1) * cos(p2) * sin(dl / 2) * sin(dl / 2);
    if (a > 1)
        a = 1;
    return 2 * GEO_EARTH_R * asin(sqrt(a));
}

static double orient(double ax, double ay, double bx, double by, double cx, double cy)
{
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax);
}

/* (Coordinates are finite: plain comparisons are fmin/fmax, inline.) */
static inline bool on_segment(double px, double py, double ax, double ay, double bx, double by)
{
    if (px < (ax < bx ? ax : bx) - EDGE_EPS || px > (ax > bx ? ax : bx) + EDGE_EPS ||
        py < (ay < by ? ay : by) - EDGE_EPS || py > (ay > by ? ay : by) + EDGE_EPS)
        return false;
    double dx = bx - ax, dy = by - ay, len = sqrt(dx * dx + dy * dy);
    if (len == 0)
        return fabs(px - ax) <= EDGE_EPS && fabs(py - ay) <= EDGE_EPS;
    return fabs(orient(ax, ay, bx, by, px, py)) / len <= EDGE_EPS;
}

/* Segments ab and cd intersect (proper only when `proper`: touching at an
 * end does not count then). */
static bool seg_cross(double ax, double ay, double bx, double by, double cx, double cy, double dx,
                      double dy, bool proper)
{
    double d1 = orient(cx, cy, dx, dy, ax, ay), d2 = orient(cx, cy, dx, dy, bx, by);
    double d3 = orient(ax, ay, bx, by, cx, cy), d4 = orient(ax, ay, bx, by, dx, dy);
    if (((d1 > 0 && d2 < 0) || (d1 < 0 && d2 > 0)) && ((d3 > 0 && d4 < 0) || (d3 < 0 && d4 > 0)))
        return true;
    if (proper)
        return false;
    return (d1 == 0 && on_segment(ax, ay, cx, cy, dx, dy)) ||
           (d2 == 0 && on_segment(bx, by, cx, cy, dx, dy)) ||
           (d3 == 0 && on_segment(cx, cy, ax, ay, bx, by)) ||
           (d4 == 0 && on_segment(dx, dy, ax, ay, bx, by));
}

/*
 * Bands. ring_test below skips every edge whose latitudes, widened by
 * EDGE_EPS, miss the point's, and the answer depends only on the edges it
 * does not skip: it is 2 as soon as one of them holds the point, else the
 * parity of those crossing the ray, in any order. A band lists every edge
 * whose widened latitudes meet the band's (the first and last bands
 * reaching to -inf and +inf), so for a point in the band it lists every
 * edge the full loop would not skip, and testing only those gives the same
 * answer. The point's band is computed with the same expression as the
 * edges' (monotone in the latitude, rounding included), which is all the
 * argument needs.
 */
struct geo_band {
    double y0, k;                /* band of y: floor((y - y0) * k), clamped */
    uint32_t off[GEO_BANDS + 1]; /* band b: idx[off[b] .. off[b + 1]) */
    uint16_t idx[];              /* edge i runs from vertex i - 1 (n - 1 for 0) to i */
};

static unsigned band_of(const struct geo_band *b, double y)
{
    double f = floor((y - b->y0) * b->k);
    return !(f >= 0) ? 0 : f > GEO_BANDS - 1 ? GEO_BANDS - 1 : (unsigned)f; /* NaN: 0 */
}

static void ring_span(const struct geo_ring *r, double *lo, double *hi)
{
    *lo = INFINITY, *hi = -INFINITY;
    for (uint32_t i = 0; i < r->n; i++) {
        *lo = fmin(*lo, r->xy[2 * i + 1]);
        *hi = fmax(*hi, r->xy[2 * i + 1]);
    }
}

static bool ring_banded(const struct geo_ring *r)
{
    double lo, hi;
    ring_span(r, &lo, &hi);
    return r->n >= GEO_BAND_MIN && r->n <= UINT16_MAX && hi > lo;
}

/* Counts the band entries of ring r (b: y0 and k set); with fill, also
 * fills b's offsets and edge lists. */
static size_t band_fill(const struct geo_ring *r, struct geo_band *b, bool fill)
{
    size_t total = 0;
    uint32_t cnt[GEO_BANDS] = {0};
    for (int pass = 0; pass < (fill ? 2 : 1); pass++) {
        if (pass == 1) {
            uint32_t at = 0;
            for (int k = 0; k < GEO_BANDS; k++) {
                b->off[k] = at;
                at += cnt[k];
                cnt[k] = b->off[k];
            }
            b->off[GEO_BANDS] = at;
        }
        for (uint32_t i = 0, j = r->n - 1; i < r->n; j = i++) {
            double yi = r->xy[2 * i + 1], yj = r->xy[2 * j + 1];
            unsigned k0 = band_of(b, fmin(yi, yj) - EDGE_EPS),
                     k1 = band_of(b, fmax(yi, yj) + EDGE_EPS);
            for (unsigned k = k0; k <= k1; k++) {
                if (pass == 1)
                    b->idx[cnt[k]++] = (uint16_t)i;
                else
                    cnt[k]++, total++;
            }
        }
    }
    return total;
}

static size_t band_size(size_t nidx)
{
    return (sizeof(struct geo_band) + nidx * sizeof(uint16_t) + 7) & ~(size_t)7;
}

int geo_shape_bands(struct geo_shape *s)
{
    if (s->kind != GEO_POLYGON || s->bands)
        return 0;
    size_t bytes = 0;
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t k = 0; k < s->polys[p].nrings; k++) {
            const struct geo_ring *r = &s->polys[p].rings[k];
            if (!ring_banded(r))
                continue;
            struct geo_band b;
            double lo, hi;
            ring_span(r, &lo, &hi);
            b.y0 = lo, b.k = GEO_BANDS / (hi - lo);
            bytes += band_size(band_fill(r, &b, false));
        }
    if (!bytes)
        return 0;
    uint8_t *mem = malloc(bytes);
    if (!mem)
        return CAIRN_ENOMEM;
    s->bands = mem;
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t k = 0; k < s->polys[p].nrings; k++) {
            struct geo_ring *r = &s->polys[p].rings[k];
            if (!ring_banded(r))
                continue;
            struct geo_band *b = (struct geo_band *)mem;
            double lo, hi;
            ring_span(r, &lo, &hi);
            b->y0 = lo, b->k = GEO_BANDS / (hi - lo);
            band_fill(r, b, true);
            r->band = b;
            mem += band_size(b->off[GEO_BANDS]);
        }
    return 0;
}

size_t geo_shape_bands_bytes(const struct geo_shape *s)
{
    size_t n = 0;
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t k = 0; k < s->polys[p].nrings; k++)
            if (s->polys[p].rings[k].band)
                n += band_size(s->polys[p].rings[k].band->off[GEO_BANDS]);
    return n;
}

/* One edge (j -> i) of the even-odd test: true when the point is on it
 * (within EDGE_EPS); otherwise flips *in when the point's eastward ray
 * crosses it. */
static inline bool edge_step(const struct geo_ring *r, uint32_t i, uint32_t j, double x, double y,
                             bool *in)
{
    double yi = r->xy[2 * i + 1], yj = r->xy[2 * j + 1];
    /* an edge whose latitudes (with the tolerance) miss y can neither
     * hold the point nor be crossed by its ray: most edges stop here */
    if ((y < yi - EDGE_EPS && y < yj - EDGE_EPS) || (y > yi + EDGE_EPS && y > yj + EDGE_EPS))
        return false;
    double xi = r->xy[2 * i], xj = r->xy[2 * j];
    if (on_segment(x, y, xj, yj, xi, yi))
        return true;
    if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        *in = !*in;
    return false;
}

/* 1 inside, 0 outside, 2 on the boundary. */
static int ring_test(const struct geo_ring *r, double x, double y)
{
    bool in = false;
    if (r->band) { /* the same test over the edges of the point's band only */
        const struct geo_band *b = r->band;
        unsigned k = band_of(b, y);
        /* the band's edges are scattered over the coordinates: ask for
         * all their lines first, so the misses overlap */
        for (uint32_t e = b->off[k]; e < b->off[k + 1]; e++) {
            uint32_t i = b->idx[e];
            __builtin_prefetch(r->xy + 2 * i);
            __builtin_prefetch(r->xy + 2 * (i ? i - 1 : r->n - 1));
        }
        for (uint32_t e = b->off[k]; e < b->off[k + 1]; e++) {
            uint32_t i = b->idx[e];
            if (edge_step(r, i, i ? i - 1 : r->n - 1, x, y, &in))
                return 2;
        }
        return in;
    }
    for (uint32_t i = 0, j = r->n - 1; i < r->n; j = i++)
        if (edge_step(r, i, j, x, y, &in))
            return 2;
    return in;
}

static bool poly_contains(const struct geo_poly *p, double x, double y)
{
    int t = ring_test(&p->rings[0], x, y);
    if (t != 1)
        return t == 2;
    for (uint32_t h = 1; h < p->nrings; h++) {
        t = ring_test(&p->rings[h], x, y);
        if (t == 2)
            return true; /* the hole's edge belongs to the fence */
        if (t == 1)
            return false;
    }
    return true;
}

static bool contains1(const struct geo_shape *s, double x, double y)
{
    if (x < s->minx - EDGE_EPS || x > s->maxx + EDGE_EPS || y < s->miny - EDGE_EPS ||
        y > s->maxy + EDGE_EPS)
        return false;
    for (uint32_t p = 0; p < s->npolys; p++)
        if (poly_contains(&s->polys[p], x, y))
            return true;
    return false;
}

bool geo_contains(const struct geo_shape *s, double lon, double lat)
{
    if (s->kind == GEO_CIRCLE)
        return geo_dist(s->cx, s->cy, lon, lat) <= s->r;
    if (s->kind != GEO_POLYGON)
        return false;
    if (contains1(s, lon, lat))
        return true;
    if (lon == 180 || lon == -180)
        return contains1(s, -lon, lat);
    return false;
}

/* Distance in metres from p to segment ab, in a local equirectangular
 * projection around p. */
static double seg_dist_m(double px, double py, double ax, double ay, double bx, double by)
{
    double k = cos(py * DEG2RAD);
    double ux = (ax - px) * k, uy = ay - py, vx = (bx - px) * k, vy = by - py;
    double dx = vx - ux, dy = vy - uy, l2 = dx * dx + dy * dy;
    double t = l2 > 0 ? -(ux * dx + uy * dy) / l2 : 0;
    if (t < 0)
        t = 0;
    if (t > 1)
        t = 1;
    double qx = ux + t * dx, qy = uy + t * dy;
    return sqrt(qx * qx + qy * qy) * DEG2RAD * GEO_EARTH_R;
}

double geo_boundary_dist(const struct geo_shape *s, double lon, double lat)
{
    if (s->kind == GEO_CIRCLE)
        return fabs(geo_dist(s->cx, s->cy, lon, lat) - s->r);
    double best = INFINITY;
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t r = 0; r < s->polys[p].nrings; r++) {
            const struct geo_ring *g = &s->polys[p].rings[r];
            for (uint32_t i = 0, j = g->n - 1; i < g->n; j = i++) {
                double d = seg_dist_m(lon, lat, g->xy[2 * j], g->xy[2 * j + 1], g->xy[2 * i],
                                      g->xy[2 * i + 1]);
                if (d < best)
                    best = d;
            }
        }
    return best;
}

bool geo_segment_hits(const struct geo_shape *s, double ax, double ay, double bx, double by)
{
    if (s->kind == GEO_CIRCLE) /* the segment's nearest point to the center */
        return seg_dist_m(s->cx, s->cy, ax, ay, bx, by) <= s->r;
    if (s->kind != GEO_POLYGON)
        return false;
    if (fmax(ax, bx) < s->minx || fmin(ax, bx) > s->maxx || fmax(ay, by) < s->miny ||
        fmin(ay, by) > s->maxy)
        return false;
    if (contains1(s, ax, ay) || contains1(s, bx, by))
        return true;
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t r = 0; r < s->polys[p].nrings; r++) {
            const struct geo_ring *g = &s->polys[p].rings[r];
            for (uint32_t i = 0, j = g->n - 1; i < g->n; j = i++)
                if (seg_cross(ax, ay, bx, by, g->xy[2 * j], g->xy[2 * j + 1], g->xy[2 * i],
                              g->xy[2 * i + 1], false))
                    return true;
        }
    return false;
}

/* ====================================================================== rasters */

/*
 * Why a raster cell's answer equals the exact test. A cell is marked only
 * when no edge of any ring meets the cell inflated by RASTER_MARGIN. Every
 * point the query maps to the cell lies within rounding (~1e-14 degrees)
 * of it, so it is farther than RASTER_MARGIN - 1e-14 > EDGE_EPS from every
 * edge: on_segment is false for it, and the ray test's intersection x is
 * off by rounding only, far less than the point's distance to the edge,
 * so the test gives the geometric answer. That answer is the same over the
 * whole inflated cell, and over a run of such cells in a row (their union
 * is connected and no edge meets it), so one exact test (contains1) at the
 * centre of the run's first cell classifies the run.
 */
#define RASTER_MARGIN 1e-7
_Static_assert(sizeof(struct geo_raster) == 128, "a raster is two cache lines");
/* Boxes narrower than this (~1 m) get no raster: their cells would be
 * little wider than the margin, and the exact test on them is cheap. */
#define RASTER_MIN_DEG 1e-5

/* Liang-Barsky: does segment a-b meet rectangle q (x0 y0 x1 y1)? */
static bool seg_meets_rect(double ax, double ay, double bx, double by, const double q[4])
{
    double t0 = 0, t1 = 1, dx = bx - ax, dy = by - ay;
    double p[4] = {-dx, dx, -dy, dy}, d[4] = {ax - q[0], q[2] - ax, ay - q[1], q[3] - ay};
    for (int i = 0; i < 4; i++) {
        if (p[i] == 0) {
            if (d[i] < 0)
                return false;
            continue;
        }
        double t = d[i] / p[i];
        if (p[i] < 0) {
            if (t > t1)
                return false;
            if (t > t0)
                t0 = t;
        } else {
            if (t < t0)
                return false;
            if (t < t1)
                t1 = t;
        }
    }
    return true;
}

static int raster_index(double v, double base, double scale)
{
    double f = floor((v - base) * scale);
    return f < 0 ? 0 : f > GEO_RASTER_N - 1 ? GEO_RASTER_N - 1 : (int)f;
}

/* Marks the cells an edge comes within RASTER_MARGIN of. xs/ys: the cell
 * lines. The cells looked at are those of the edge's box widened by twice
 * the margin, which covers the rounding of the index computation. */
static void raster_edge(const struct geo_raster *r, const double *xs, const double *ys, double ax,
                        double ay, double bx, double by, bool *edge)
{
    double m = RASTER_MARGIN;
    int i0 = raster_index(fmin(ax, bx) - 2 * m, r->x0, r->sx);
    int i1 = raster_index(fmax(ax, bx) + 2 * m, r->x0, r->sx);
    int j0 = raster_index(fmin(ay, by) - 2 * m, r->y0, r->sy);
    int j1 = raster_index(fmax(ay, by) + 2 * m, r->y0, r->sy);
    for (int j = j0; j <= j1; j++)
        for (int i = i0; i <= i1; i++) {
            double q[4] = {xs[i] - m, ys[j] - m, xs[i + 1] + m, ys[j + 1] + m};
            if (!edge[j * GEO_RASTER_N + i] && seg_meets_rect(ax, ay, bx, by, q))
                edge[j * GEO_RASTER_N + i] = true;
        }
}

void geo_raster_build(const struct geo_shape *s, struct geo_raster *r)
{
    uint8_t user = r->user;
    memset(r, 0, sizeof *r);
    r->user = user;
    if (s->kind == GEO_POLYGON && s->pool) {
        r->geom = s->polys;
        r->glines = (uint8_t)(s->headn < 8 * 64 ? (s->headn + 63) / 64 : 8);
    }
    double w = s->maxx - s->minx, h = s->maxy - s->miny;
    if (s->kind != GEO_POLYGON || !(w >= RASTER_MIN_DEG && h >= RASTER_MIN_DEG))
        return;
    /* the corner as a float at or below the box's, the scale over the
     * widened box: only the cell lines move, which the argument above
     * allows (they are computed below from the stored values) */
    r->x0 = f_down(s->minx), r->y0 = f_down(s->miny);
    w = s->maxx - r->x0, h = s->maxy - r->y0;
    r->sx = (float)(GEO_RASTER_N / w), r->sy = (float)(GEO_RASTER_N / h);
    double xs[GEO_RASTER_N + 1], ys[GEO_RASTER_N + 1];
    for (int i = 0; i <= GEO_RASTER_N; i++)
        xs[i] = r->x0 + i / (double)r->sx, ys[i] = r->y0 + i / (double)r->sy;
    bool edge[GEO_RASTER_N * GEO_RASTER_N] = {false};
    for (uint32_t p = 0; p < s->npolys; p++)
        for (uint32_t k = 0; k < s->polys[p].nrings; k++) {
            const struct geo_ring *g = &s->polys[p].rings[k];
            for (uint32_t i = 0, j = g->n - 1; i < g->n; j = i++)
                raster_edge(r, xs, ys, g->xy[2 * j], g->xy[2 * j + 1], g->xy[2 * i],
                            g->xy[2 * i + 1], edge);
        }
    for (int j = 0; j < GEO_RASTER_N; j++) {
        unsigned state = 0; /* of the current run: 0 none, 1 out, 2 in */
        for (int i = 0; i < GEO_RASTER_N; i++) {
            unsigned c = (unsigned)(j * GEO_RASTER_N + i);
            if (edge[c]) {
                state = 0;
                continue;
            }
            if (!state)
                state = contains1(s, (xs[i] + xs[i + 1]) / 2, (ys[j] + ys[j + 1]) / 2) ? 2 : 1;
            r->cell[c >> 2] |= (uint8_t)(state << ((c & 3) * 2));
        }
    }
    r->ok = 1;
}

/* ====================================================================== huge pages */

void *geo_huge_alloc(size_t n)
{
    if (!n)
        n = 1;
#ifdef GEO_ASAN
    return calloc(1, n);
#endif
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (n >= (1u << 21))
        madvise(p, n, MADV_HUGEPAGE); /* advice only: ignored where THP is off */
#endif
    return p;
}

void geo_huge_free(void *p, size_t n)
{
#ifdef GEO_ASAN
    (void)n;
    free(p);
    return;
#endif
    if (p)
        munmap(p, n ? n : 1);
}

void *geo_huge_realloc(void *p, size_t o, size_t n)
{
    void *q = geo_huge_alloc(n);
    if (!q)
        return NULL;
    if (p) {
        memcpy(q, p, o < n ? o : n);
        geo_huge_free(p, o);
    }
    return q;
}

/* ====================================================================== the pool */

#define POOL_CHUNK (8u << 20)
#define POOL_SMALL 1024         /* 16-byte classes up to here */
#define POOL_LARGE (256u << 10) /* eighths of powers of two up to here */
#define POOL_CLASSES (POOL_SMALL / 16 + 8 * 8)

struct pool_chunk {
    struct pool_chunk *next;
    size_t size, used;
};

/* A block from malloc (past POOL_LARGE; every block under GEO_ASAN), listed
 * so that geo_pool_free releases it. 16 bytes: the block stays aligned. */
struct pool_blk {
    struct pool_blk *prev, *next;
};

struct geo_pool {
    void *free[POOL_CLASSES]; /* per class: a list through each block's first word */
    struct pool_chunk *chunks;
    struct pool_blk *big; /* the blocks from malloc */
    size_t bytes;
};

#ifndef GEO_ASAN
/* The class of n bytes (1 <= n <= POOL_LARGE) and its block size. */
static unsigned pool_class(size_t n, size_t *size)
{
    if (n <= POOL_SMALL) {
        unsigned c = (unsigned)((n + 15) / 16);
        *size = (size_t)c * 16;
        return c - 1;
    }
    unsigned k = 10; /* n in (2^k, 2^(k+1)] */
    while (n > (size_t)2 << k)
        k++;
    size_t step = (size_t)1 << (k - 3);
    unsigned sub = (unsigned)((n - ((size_t)1 << k) + step - 1) / step); /* 1..8 */
    *size = ((size_t)1 << k) + sub * step;
    return POOL_SMALL / 16 + (k - 10) * 8 + sub - 1;
}
#endif

struct geo_pool *geo_pool_new(void)
{
    return calloc(1, sizeof(struct geo_pool));
}

void geo_pool_free(struct geo_pool *p)
{
    if (!p)
        return;
    while (p->big) {
        struct pool_blk *b = p->big;
        p->big = b->next;
        free(b);
    }
    while (p->chunks) {
        struct pool_chunk *c = p->chunks;
        p->chunks = c->next;
        geo_huge_free(c, c->size);
    }
    free(p);
}

static void *big_alloc(struct geo_pool *p, size_t n)
{
    struct pool_blk *h = malloc(sizeof *h + n);
    if (!h)
        return NULL;
    h->prev = NULL;
    h->next = p->big;
    if (p->big)
        p->big->prev = h;
    p->big = h;
    p->bytes += n;
    return h + 1;
}

static void big_put(struct geo_pool *p, void *b, size_t n)
{
    struct pool_blk *h = (struct pool_blk *)b - 1;
    if (h->prev)
        h->prev->next = h->next;
    else
        p->big = h->next;
    if (h->next)
        h->next->prev = h->prev;
    p->bytes -= n;
    free(h);
}

void *geo_pool_alloc(struct geo_pool *p, size_t n)
{
    if (!n)
        n = 1;
#ifdef GEO_ASAN
    return big_alloc(p, n);
#else
    if (n > POOL_LARGE)
        return big_alloc(p, n);
    size_t size;
    unsigned c = pool_class(n, &size);
    void *b = p->free[c];
    if (b) {
        memcpy(&p->free[c], b, sizeof b);
        return b;
    }
    struct pool_chunk *ch = p->chunks;
    if (!ch || ch->size - ch->used < size) {
        /* the rest of the old chunk is left unused (under POOL_LARGE) */
        if (!(ch = geo_huge_alloc(POOL_CHUNK)))
            return NULL;
        ch->size = POOL_CHUNK;
        ch->used = 64; /* the header, then 16-byte aligned blocks */
        ch->next = p->chunks;
        p->chunks = ch;
        p->bytes += POOL_CHUNK;
    }
    b = (uint8_t *)ch + ch->used;
    ch->used += size;
    return b;
#endif
}

void geo_pool_put(struct geo_pool *p, void *b, size_t n)
{
    if (!b)
        return;
    if (!n)
        n = 1;
#ifdef GEO_ASAN
    big_put(p, b, n);
#else
    if (n > POOL_LARGE) {
        big_put(p, b, n);
        return;
    }
    size_t size;
    unsigned c = pool_class(n, &size);
    memcpy(b, &p->free[c], sizeof b);
    p->free[c] = b;
#endif
}

size_t geo_pool_bytes(const struct geo_pool *p)
{
    if (!p)
        return 0;
#ifndef GEO_ASAN
    /* the last chunk counts what it handed out */
    if (p->chunks)
        return p->bytes - (p->chunks->size - p->chunks->used);
#endif
    return p->bytes;
}

/* The block: polygons and rings, then every ring's bands, then the
 * coordinates, from a 64-byte boundary. The exact test reads them in that
 * order (ring, band, the band's edges): for a one-ring fence the ring and
 * the band's offsets share the block's first two lines, which
 * geo_raster_test prefetches when it cannot answer. */
#define POOL_ALIGN 64
int geo_shape_pool(struct geo_shape *s, struct geo_pool *p)
{
    if (s->kind != GEO_POLYGON || s->pool || !s->mem)
        return 0;
    size_t nr = 0, nxy = 0, nb = 0;
    for (uint32_t i = 0; i < s->npolys; i++)
        for (uint32_t k = 0; k < s->polys[i].nrings; k++) {
            const struct geo_ring *r = &s->polys[i].rings[k];
            nr++;
            nxy += (size_t)r->n * 16;
            if (r->band)
                nb += band_size(r->band->off[GEO_BANDS]);
        }
    size_t head = s->npolys * sizeof(struct geo_poly) + nr * sizeof(struct geo_ring);
    head = (head + 7) & ~(size_t)7;
    /* pool blocks are 16-byte aligned: up to 48 bytes to reach a line */
    size_t n = POOL_ALIGN - 16 + head + nb + nxy;
    uint8_t *m = geo_pool_alloc(p, n);
    if (!m)
        return CAIRN_ENOMEM;
    uint8_t *m0 = (uint8_t *)(((uintptr_t)m + POOL_ALIGN - 1) & ~(uintptr_t)(POOL_ALIGN - 1));
    struct geo_poly *polys = (struct geo_poly *)m0;
    struct geo_ring *rings = (struct geo_ring *)(polys + s->npolys);
    uint8_t *bat = m0 + head, *xat = m0 + head + nb;
    for (uint32_t i = 0; i < s->npolys; i++) {
        polys[i].nrings = s->polys[i].nrings;
        polys[i].rings = rings;
        for (uint32_t k = 0; k < s->polys[i].nrings; k++) {
            const struct geo_ring *r = &s->polys[i].rings[k];
            rings[k].n = r->n;
            rings[k].xy = (double *)xat;
            memcpy(xat, r->xy, (size_t)r->n * 16);
            xat += (size_t)r->n * 16;
            rings[k].band = NULL;
            if (r->band) {
                size_t bn = band_size(r->band->off[GEO_BANDS]);
                memcpy(bat, r->band, bn);
                rings[k].band = (const struct geo_band *)bat;
                bat += bn;
            }
        }
        rings += s->polys[i].nrings;
    }
    free(s->mem);
    free(s->bands);
    s->mem = m;
    s->polys = polys;
    s->bands = NULL;
    s->pool = p;
    s->memn = n;
    s->headn = head + nb;
    return 0;
}

/* ====================================================================== the index */

/*
 * A hierarchical grid: level L has square cells of 360/2^L degrees, counted
 * from lon -180 and lat -90. Only every third level is used (LEVEL_BASE and
 * the levels 3, 6, … above and below it). A fence's "fit" level is the
 * finest whose cell is at least as large as its bounding box inflated by
 * EDGE_EPS (the on-edge tolerance); it goes to the finest used level no
 * more than one finer than that, so it is in at most 3 x 3 cells there, and
 * it is registered in every cell its inflated box meets. A point query
 * therefore needs only the point's own cell on each non-empty level (a
 * point on a cell line included): that cell lists every fence whose box,
 * with the tolerance, holds the point.
 *
 * Why every third level: each non-empty level costs a query one hash probe
 * and one entry array, both cache misses with 100 000 fences. With every
 * level in use, city-scale fences (100 m - 3 km across) filled 7 levels;
 * with every third, 2 or 3, at the price of a few more entries per cell
 * (fences from 2 cells to 1/4 cell wide share a level) and up to 9 cells
 * per fence instead of 4. Every second level measured no better than every
 * level: it saved probes but the fences still spread over 4 levels.
 *
 * Each cell lists its fences' ids next to their inflated boxes, as floats
 * rounded outwards (never smaller than the double box), so a query rejects
 * most candidates from one contiguous array. Reading each candidate fence
 * instead (its struct, then its ring) were cache misses that made up half
 * of a fix's cost with 100 000 fences.
 *
 *   cell key (u64): space 20 bits | level 5 | cx 19 | cy 19, plus 1 (0 = empty)
 *   bucket: key | n | cap | entries -> n x {x0 y0 x1 y1 (f32) | id (u32)}
 */

#define LEVELS 20 /* level 19: cells of 360/2^19 deg ~ 76 m */
/* The used levels are LEVEL_BASE + 3k: 2, 5, 8, 11, 14 (cells of 0.022
 * degrees, ~2.4 km of latitude) and 17 (~300 m). */
#define LEVEL_BASE 14
#define LEVEL_STEP 3
/* A box query covering more cells than this at one level scans that
 * level's whole table instead (same answer, bounded work). */
#define BOX_CELLS_MAX 4096

struct gent {
    float x0, y0, x1, y1;
    uint32_t id;
};

struct bucket {
    uint64_t key; /* 0: empty */
    uint32_t n, cap;
    struct gent *e;
};

struct geo_index {
    struct bucket *tab;
    struct geo_pool *pool; /* the entry arrays */
    size_t cap, used;
    uint32_t gen; /* changes with every add and delete (struct geo_hint) */
    uint32_t level_count[LEVELS];
    uint8_t levels[LEVELS], nlevels; /* the non-empty levels, coarsest first */
    uint32_t *stamp;                 /* per id, for box dedup */
    size_t nstamp;
    uint32_t epoch;
};

static double cell_deg(int level)
{
    return 360.0 / (double)(1u << level);
}

/* cells per degree at each level: 2^L / 360 (a multiply, not a divide) */
static double cell_scale(int level)
{
    return (double)(1u << level) / 360.0;
}

static uint64_t cell_key(uint32_t space, int level, uint32_t cx, uint32_t cy)
{
    return (((uint64_t)space & 0xFFFFF) << 43 | (uint64_t)level << 38 | (uint64_t)cx << 19 | cy) +
           1;
}

/* Monotonic in v (so a box's cells are the cells of its corners). */
static uint32_t cell_of(double v, double base, int level)
{
    double c = floor((v + base) * cell_scale(level));
    uint32_t max = (1u << level) - 1;
    return c < 0 ? 0 : c > max ? max : (uint32_t)c;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* The shape's box inflated by the edge tolerance. */
static void ibox(const struct geo_shape *s, double b[4])
{
    b[0] = s->minx - EDGE_EPS, b[1] = s->miny - EDGE_EPS;
    b[2] = s->maxx + EDGE_EPS, b[3] = s->maxy + EDGE_EPS;
}

/* The used level of a fence (see above): the fit level, then the finest
 * used level at most one finer. */
static int level_for(const double b[4])
{
    double w = b[2] - b[0], h = b[3] - b[1], m = w > h ? w : h;
    int l = LEVELS - 1;
    while (l >= 1 && cell_deg(l) < m)
        l--;
    int u = l + 1 > LEVELS - 1 ? LEVELS - 1 : l + 1;
    while ((u - LEVEL_BASE + 3 * LEVELS) % LEVEL_STEP)
        u--;
    return u < 0 ? 0 : u;
}

static float f_down(double d)
{
    float f = (float)d;
    return (double)f > d ? nextafterf(f, -INFINITY) : f;
}

static float f_up(double d)
{
    float f = (float)d;
    return (double)f < d ? nextafterf(f, INFINITY) : f;
}

int geo_index_new(struct geo_index **out)
{
    struct geo_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return CAIRN_ENOMEM;
    ix->cap = 1024;
    ix->gen = 1;
    ix->tab = geo_huge_alloc(ix->cap * sizeof *ix->tab);
    ix->pool = geo_pool_new();
    if (!ix->tab || !ix->pool) {
        geo_huge_free(ix->tab, ix->cap * sizeof *ix->tab);
        geo_pool_free(ix->pool);
        free(ix);
        return CAIRN_ENOMEM;
    }
    *out = ix;
    return 0;
}

void geo_index_free(struct geo_index *ix)
{
    if (!ix)
        return;
    geo_pool_free(ix->pool); /* every entry array */
    geo_huge_free(ix->tab, ix->cap * sizeof *ix->tab);
    free(ix->stamp);
    free(ix);
}

static struct bucket *find(struct geo_index *ix, uint64_t key, bool create)
{
    size_t m = ix->cap - 1, i = mix(key) & m;
    for (;;) {
        struct bucket *b = &ix->tab[i];
        if (b->key == key)
            return b;
        if (b->key == 0) {
            if (!create)
                return NULL;
            b->key = key;
            ix->used++;
            return b;
        }
        i = (i + 1) & m;
    }
}

static int grow(struct geo_index *ix)
{
    if (ix->used * 2 < ix->cap)
        return 0;
    struct bucket *old = ix->tab;
    size_t ocap = ix->cap;
    ix->tab = geo_huge_alloc(ocap * 2 * sizeof *ix->tab);
    if (!ix->tab) {
        ix->tab = old;
        return CAIRN_ENOMEM;
    }
    ix->cap = ocap * 2;
    ix->used = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].key) {
            struct bucket *b = find(ix, old[i].key, true);
            *b = old[i];
        }
    geo_huge_free(old, ocap * sizeof *old);
    return 0;
}

static int bucket_add(struct geo_index *ix, uint64_t key, const struct gent *e)
{
    int rc = grow(ix);
    if (rc)
        return rc;
    struct bucket *b = find(ix, key, true);
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 2;
        struct gent *p = geo_pool_alloc(ix->pool, cap * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        if (b->n)
            memcpy(p, b->e, b->n * sizeof *p);
        geo_pool_put(ix->pool, b->e, b->cap * sizeof *p);
        b->e = p;
        b->cap = cap;
    }
    b->e[b->n++] = *e;
    return 0;
}

/* Buckets are never removed from the table (keeps probing simple); an
 * empty one costs 24 bytes. */
static void bucket_del(struct geo_index *ix, uint64_t key, uint32_t id)
{
    struct bucket *b = find(ix, key, false);
    if (!b)
        return;
    for (uint32_t i = 0; i < b->n; i++)
        if (b->e[i].id == id) {
            b->e[i] = b->e[--b->n];
            return;
        }
}

static void index_levels(struct geo_index *ix)
{
    ix->nlevels = 0;
    for (int l = 0; l < LEVELS; l++)
        if (ix->level_count[l])
            ix->levels[ix->nlevels++] = (uint8_t)l;
}

int geo_index_add(struct geo_index *ix, uint32_t space, uint32_t id, const struct geo_shape *s)
{
    double b[4];
    ibox(s, b);
    int l = level_for(b);
    uint32_t x0 = cell_of(b[0], 180, l), x1 = cell_of(b[2], 180, l);
    uint32_t y0 = cell_of(b[1], 90, l), y1 = cell_of(b[3], 90, l);
    if (id >= ix->nstamp) {
        size_t n = ix->nstamp ? ix->nstamp : 1024;
        while (n <= id)
            n *= 2;
        uint32_t *p = realloc(ix->stamp, n * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        memset(p + ix->nstamp, 0, (n - ix->nstamp) * sizeof *p);
        ix->stamp = p;
        ix->nstamp = n;
    }
    struct gent e = {f_down(b[0]), f_down(b[1]), f_up(b[2]), f_up(b[3]), id};
    for (uint32_t y = y0; y <= y1; y++)
        for (uint32_t x = x0; x <= x1; x++) {
            int rc = bucket_add(ix, cell_key(space, l, x, y), &e);
            if (rc)
                return rc;
        }
    if (ix->level_count[l]++ == 0)
        index_levels(ix);
    if (++ix->gen == 0)
        ix->gen = 1;
    return 0;
}

void geo_index_del(struct geo_index *ix, uint32_t space, uint32_t id, const struct geo_shape *s)
{
    double b[4];
    ibox(s, b);
    int l = level_for(b);
    uint32_t x0 = cell_of(b[0], 180, l), x1 = cell_of(b[2], 180, l);
    uint32_t y0 = cell_of(b[1], 90, l), y1 = cell_of(b[3], 90, l);
    for (uint32_t y = y0; y <= y1; y++)
        for (uint32_t x = x0; x <= x1; x++)
            bucket_del(ix, cell_key(space, l, x, y), id);
    if (--ix->level_count[l] == 0)
        index_levels(ix);
    if (++ix->gen == 0)
        ix->gen = 1;
}

static int push(uint32_t **ids, size_t *cap, size_t n, uint32_t id)
{
    if (n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        uint32_t *p = realloc(*ids, c * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        *ids = p;
        *cap = c;
    }
    (*ids)[n] = id;
    return 0;
}

static struct bucket *find_at(struct geo_index *ix, uint64_t key, size_t i)
{
    size_t m = ix->cap - 1;
    for (;; i = (i + 1) & m) {
        struct bucket *b = &ix->tab[i];
        if (b->key == key)
            return b;
        if (b->key == 0)
            return NULL;
    }
}

/* Every line of a cell's entries (the scan reads them all), at most 16. */
CAIRN_PREFETCH_FN void prefetch_entries(const struct gent *e, uint32_t n)
{
    if (!n) /* an empty cell's e is NULL: no arithmetic on it (UBSan) */
        return;
    const char *p = (const char *)e, *end = (const char *)(e + n);
    for (int k = 0; p < end && k < 16; p += 64, k++)
        __builtin_prefetch(p);
}

/* The cells of the point on every non-empty level are independent loads
 * from a table larger than the caches: their slots are prefetched first,
 * then their entry arrays, so the misses overlap instead of queueing.
 *
 * With a hint, a level whose cell is the previous query's is not looked
 * up: its entries (pointer and count) are the hint's, valid because the
 * index has not changed since (gen). Cells nest exactly: the cell of a
 * coordinate at level l is its cell at level LEVELS - 1 shifted right by
 * LEVELS - 1 - l, since cell_scale(LEVELS - 1) is cell_scale(l) times a
 * power of two (so the product with v + base is too, rounding included),
 * and floor(2^k y) >> k = floor(y) for y >= 0 (the clamps agree as well).
 * So comparing the finest cells shifted is comparing the level's cells. */
void geo_index_prefetch_hint(const struct geo_index *ix, const struct geo_hint *hint)
{
    if (hint->gen != ix->gen)
        return;
    for (int i = 0; i < GEO_HINT_LEVELS && i < ix->nlevels; i++)
        prefetch_entries(hint->e[i], hint->n[i]);
}

int geo_index_point_hint(struct geo_index *ix, uint32_t space, double lon, double lat,
                         struct geo_hint *hint, uint32_t **ids, size_t *cap)
{
    uint64_t key[LEVELS];
    size_t at[LEVELS], m = ix->cap - 1;
    const struct gent *e[LEVELS];
    uint32_t ne[LEVELS];
    bool probe[LEVELS];
    int nl = 0;
    uint32_t fx = cell_of(lon, 180, LEVELS - 1), fy = cell_of(lat, 90, LEVELS - 1);
    bool valid = hint && hint->gen == ix->gen;
    for (int li = 0; li < ix->nlevels; li++) {
        int l = ix->levels[li], k = LEVELS - 1 - l;
        if (valid && nl < GEO_HINT_LEVELS && hint->fx >> k == fx >> k && hint->fy >> k == fy >> k) {
            e[nl] = hint->e[nl];
            ne[nl] = hint->n[nl];
            probe[nl] = false;
            prefetch_entries(e[nl], ne[nl]);
        } else {
            key[nl] = cell_key(space, l, fx >> k, fy >> k);
            at[nl] = mix(key[nl]) & m;
            probe[nl] = true;
            __builtin_prefetch(&ix->tab[at[nl]]);
        }
        nl++;
    }
    for (int i = 0; i < nl; i++)
        if (probe[i]) {
            const struct bucket *b = find_at(ix, key[i], at[i]);
            e[i] = b ? b->e : NULL;
            ne[i] = b ? b->n : 0;
            prefetch_entries(e[i], ne[i]);
        }
    if (hint) {
        hint->gen = nl <= GEO_HINT_LEVELS ? ix->gen : 0;
        hint->fx = fx, hint->fy = fy;
        for (int i = 0; i < nl && i < GEO_HINT_LEVELS; i++)
            hint->e[i] = e[i], hint->n[i] = ne[i];
    }
    /* Without branches: room for every entry first, then each id is
     * stored and counted only if its box holds the point. Whether a box
     * does is a coin toss the predictor lost about half the time (~40 %
     * of this function's samples sat on the first comparison). */
    size_t n = 0, all = 0;
    for (int k = 0; k < nl; k++)
        all += ne[k];
    if (all > *cap) {
        uint32_t *p = realloc(*ids, all * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        *ids = p;
        *cap = all;
    }
    uint32_t *out = *ids;
    for (int k = 0; k < nl; k++)
        for (uint32_t i = 0; i < ne[k]; i++) {
            const struct gent *g = &e[k][i];
            out[n] = g->id;
            n += (lon >= g->x0) & (lon <= g->x1) & (lat >= g->y0) & (lat <= g->y1);
        }
    return (int)n;
}

int geo_index_point(struct geo_index *ix, uint32_t space, double lon, double lat, uint32_t **ids,
                    size_t *cap)
{
    return geo_index_point_hint(ix, space, lon, lat, NULL, ids, cap);
}

/* Adds the bucket's entries meeting the box, once per query (stamp). */
static int box_bucket(struct geo_index *ix, const struct bucket *b, const double q[4],
                      uint32_t **ids, size_t *cap, size_t *n)
{
    for (uint32_t i = 0; i < b->n; i++) {
        const struct gent *e = &b->e[i];
        if (e->x1 < q[0] || e->x0 > q[2] || e->y1 < q[1] || e->y0 > q[3] ||
            ix->stamp[e->id] == ix->epoch)
            continue;
        ix->stamp[e->id] = ix->epoch;
        if (push(ids, cap, (*n)++, e->id))
            return CAIRN_ENOMEM;
    }
    return 0;
}

int geo_index_box(struct geo_index *ix, uint32_t space, double minx, double miny, double maxx,
                  double maxy, uint32_t **ids, size_t *cap)
{
    size_t n = 0;
    double q[4] = {minx, miny, maxx, maxy};
    if (++ix->epoch == 0) {
        memset(ix->stamp, 0, ix->nstamp * sizeof *ix->stamp);
        ix->epoch = 1;
    }
    for (int l = 0; l < LEVELS; l++) {
        if (!ix->level_count[l])
            continue;
        uint32_t x0 = cell_of(minx, 180, l), x1 = cell_of(maxx, 180, l);
        uint32_t y0 = cell_of(miny, 90, l), y1 = cell_of(maxy, 90, l);
        uint64_t cells = (uint64_t)(x1 - x0 + 1) * (y1 - y0 + 1);
        uint64_t lk = ((uint64_t)space & 0xFFFFF) << 5 | (uint64_t)l;
        for (size_t t = 0; cells > BOX_CELLS_MAX && t < ix->cap; t++)
            if (ix->tab[t].key && ((ix->tab[t].key - 1) >> 38) == lk &&
                box_bucket(ix, &ix->tab[t], q, ids, cap, &n))
                return CAIRN_ENOMEM;
        for (uint32_t y = y0; cells <= BOX_CELLS_MAX && y <= y1; y++)
            for (uint32_t x = x0; x <= x1; x++) {
                const struct bucket *b = find(ix, cell_key(space, l, x, y), false);
                if (b && box_bucket(ix, b, q, ids, cap, &n))
                    return CAIRN_ENOMEM;
            }
    }
    return (int)n;
}

size_t geo_index_bytes(const struct geo_index *ix)
{
    return ix->cap * sizeof *ix->tab + ix->nstamp * sizeof *ix->stamp + geo_pool_bytes(ix->pool);
}
