/*
 * geo.h — fence geometry for the geofence handler: parsing and validating
 * GeoJSON-style geometries from msgpack, exact point-in-polygon, geodesic
 * distances, segment tests, and a hierarchical grid index over fence
 * bounding boxes.
 *
 * Coordinates are WGS 84 [lon, lat] in degrees. Polygon edges are straight
 * lines in the lon/lat plane (plate carrée), never wrapped: a fence across
 * the antimeridian is given as a MultiPolygon split at ±180, and an edge
 * whose longitudes differ by more than 180° is refused (it would silently
 * go the long way round) unless it runs from -180 to 180 along a parallel,
 * which is how a polar cap is drawn. Longitudes -180 and 180 are the same
 * meridian: a point on it is tested at both.
 *
 * Edge rule: a point on an edge or a vertex of any ring (outer ring or
 * hole) is inside the fence — the boundary belongs to the fence. A point
 * strictly inside a hole is outside.
 *
 * Circles use the haversine (great-circle) distance on a sphere of radius
 * GEO_EARTH_R: inside iff distance <= radius_m.
 */
#ifndef CAIRN_GEO_H
#define CAIRN_GEO_H

#include "common.h"

#include <msgpack.h>

#define GEO_EARTH_R 6371008.8 /* mean Earth radius, metres (IUGG) */

/* Limits (documented in the README). */
#define GEO_VERTICES_MAX 10000   /* per fence, all rings together */
#define GEO_RINGS_MAX 256        /* per polygon (1 outer + holes) */
#define GEO_POLYS_MAX 1000       /* per MultiPolygon */
#define GEO_RADIUS_MAX 1000000.0 /* circle / roam radius, metres (1000 km) */
/* Self-intersection is checked exhaustively (O(n^2)) for rings up to this
 * many vertices; larger rings are accepted unchecked (documented). */
#define GEO_SELFX_CHECK_MAX 2048

enum geo_kind { GEO_POLYGON = 1, GEO_CIRCLE = 2, GEO_ROAM = 3 };

struct geo_band;
struct geo_ring {
    uint32_t n;                  /* vertices, without the closing repeat */
    double *xy;                  /* lon0 lat0 lon1 lat1 … */
    const struct geo_band *band; /* NULL, or set by geo_shape_bands */
};

struct geo_poly {
    uint32_t nrings; /* ring 0 is the outer ring, the rest are holes */
    struct geo_ring *rings;
};

struct geo_pool;
struct geo_shape {
    int kind;
    double minx, miny, maxx, maxy; /* bounding box (lon/lat) */
    uint32_t npolys, nverts;
    struct geo_poly *polys;
    double cx, cy, r;      /* circle / roam: center (roam: unused), radius m */
    void *mem;             /* one block holding polys, rings and coordinates */
    void *bands;           /* geo_shape_bands' block, or NULL */
    struct geo_pool *pool; /* NULL, or (geo_shape_pool) mem is a block of pool */
    size_t memn;           /* with pool: the block's size (bands inside it) */
    size_t headn;          /* with pool: bytes of polys, rings and bands at polys */
};

/* Parses and validates a geometry object (msgpack map). On failure returns
 * CAIRN_EINVAL with e->code "invalid_geometry", e->field the JSON pointer
 * (prefixed by `where`, e.g. "/payload/geometry") and the reason. For
 * GEO_ROAM only the kind and radius are filled (the handler reads
 * target_prefix). Free with geo_shape_free. */
int geo_parse(const msgpack_object *geom, const char *where, struct geo_shape *out,
              struct cairn_error *e);
void geo_shape_free(struct geo_shape *s);
/* Splits every ring of GEO_BAND_MIN vertices or more into GEO_BANDS
 * horizontal bands, each listing the edges that can matter to a point in
 * it, so the point test reads a few edges instead of all: same answers
 * (geo.c argues why), ~GEO_BANDS * 6 + 3 * n bytes per ring. Optional: a
 * failure (CAIRN_ENOMEM) leaves the shape as it was. */
#define GEO_BANDS 16
#define GEO_BAND_MIN 16
int geo_shape_bands(struct geo_shape *s);
size_t geo_shape_bands_bytes(const struct geo_shape *s);

/* A pool of blocks on huge pages (geo_huge_alloc) for the small objects
 * a fix reads at random (a fence's rings and bands, the index's cells):
 * from malloc they were scattered over 4 KB pages, and reading them missed
 * the TLB as often as the caches. Blocks are carved from 8 MB chunks in
 * size classes (16-byte steps up to 1 KB, eighths of a power of two up to
 * 256 KB; larger ones come from malloc) and go back to a free list of
 * their class; the chunks are returned by geo_pool_free. Not thread-safe:
 * one owner. Under GEO_ASAN every block is its own allocation. */
struct geo_pool *geo_pool_new(void);
void geo_pool_free(struct geo_pool *p);
/* n > 0 bytes, 16-byte aligned, not zeroed; NULL when out of memory. */
void *geo_pool_alloc(struct geo_pool *p, size_t n);
/* Returns block b of n bytes (n as given to geo_pool_alloc); b may be NULL. */
void geo_pool_put(struct geo_pool *p, void *b, size_t n);
/* Bytes taken from the system (chunks, large blocks). */
size_t geo_pool_bytes(const struct geo_pool *p);
/* Moves the shape's geometry and bands into one block of the pool (the
 * rings' bands right after their coordinates); geo_shape_free returns it.
 * On failure (CAIRN_ENOMEM) the shape is as it was. */
int geo_shape_pool(struct geo_shape *s, struct geo_pool *p);

/* Packs a parsed shape into a compact binary form (the handler's geom DBI)
 * and back. geo_unpack allocates like geo_parse. */
int geo_pack(const struct geo_shape *s, struct cairn_buf *out);
int geo_unpack(const uint8_t *p, size_t n, struct geo_shape *out);

/* Exact containment with the edge rule above. */
bool geo_contains(const struct geo_shape *s, double lon, double lat);
/* Distance in metres from the point to the shape's boundary (polygons:
 * local equirectangular projection, exact enough at fence scale;
 * circles: |d - r|). */
double geo_boundary_dist(const struct geo_shape *s, double lon, double lat);
/* Does the segment a->b (straight in lon/lat; circles: in a local
 * projection around the center) touch the shape? */
bool geo_segment_hits(const struct geo_shape *s, double ax, double ay, double bx, double by);
/* Great-circle distance, metres. */
double geo_dist(double lon1, double lat1, double lon2, double lat2);

/* ====================================================================== rasters */

/* A coarse raster over a polygon's bounding box: GEO_RASTER_N^2 cells, each
 * known to lie wholly inside the fence, wholly outside, or unknown (an edge
 * of some ring passes within 1e-7 degrees of it). A point in a known cell
 * is answered without reading the rings, and the answer is exactly
 * geo_contains' (geo.c argues why). Two 64-byte cache lines per fence:
 * 20 x 20 cells leave a point of bench/geofence's stars unanswered about
 * half as often as the 12 x 12 of one line did (the unknown cells are
 * those along the boundary: their share falls as 1/N).
 *
 * The raster also keeps where the shape's geometry lives (geom: the block
 * geo_contains reads first, see geo_shape_pool), and a test that cannot
 * answer prefetches its rings and bands: the exact test that follows then
 * starts with them on their way (only the coordinates of the point's band
 * are left to fetch), without a load of the shape's own struct to learn
 * the address. The corner is kept as floats (rounded down, so the raster
 * still covers the box) to make room for it in the two lines. */
#define GEO_RASTER_N 20
struct geo_raster {
    const void *geom; /* the shape's geometry block (prefetch only), or NULL */
    float x0, y0;     /* the lower left corner: lon is in column floor((lon - x0) * sx) */
    float sx, sy;     /* cells per degree */
    uint8_t ok;       /* 0: no raster (circles, tiny boxes): every test is -1 */
    uint8_t user;     /* the caller's byte: geo_raster_build keeps it */
    uint8_t glines;   /* lines of geom to prefetch (the rings and bands, at most 8) */
    uint8_t cell[(GEO_RASTER_N * GEO_RASTER_N + 3) / 4]; /* 2 bits: 0 unknown, 1 out, 2 in */
};

/* Builds r for s; call it after geo_shape_pool (geom is the block then),
 * and again whenever the shape's memory moves. */
void geo_raster_build(const struct geo_shape *s, struct geo_raster *r);

/* Prefetches the lines of the geometry the exact test reads before it
 * knows which coordinates it needs (rings, bands). */
CAIRN_PREFETCH_FN void geo_raster_prefetch_geom(const struct geo_raster *r)
{
    for (unsigned i = 0; i < r->glines; i++)
        __builtin_prefetch((const char *)r->geom + 64 * i);
}

/* 1: geo_contains(s, lon, lat) is true; 0: it is false; -1: ask it (the
 * shape's geometry is then prefetched). */
static inline int geo_raster_test(const struct geo_raster *r, double lon, double lat)
{
    if (!r->ok || lon == 180 || lon == -180) { /* ±180 also tests the other side */
        geo_raster_prefetch_geom(r);
        return -1;
    }
    double fx = (lon - r->x0) * r->sx, fy = (lat - r->y0) * r->sy;
    if (!(fx >= 0 && fx < GEO_RASTER_N && fy >= 0 && fy < GEO_RASTER_N)) {
        geo_raster_prefetch_geom(r);
        return -1;
    }
    unsigned c = (unsigned)fy * GEO_RASTER_N + (unsigned)fx;
    unsigned v = (unsigned)(r->cell[c >> 2] >> ((c & 3) * 2)) & 3;
    if (!v)
        geo_raster_prefetch_geom(r);
    return v ? (int)v - 1 : -1;
}

/* ====================================================================== the index */

/* A hierarchical grid: level L has square cells of 360/2^L degrees, every
 * third level in use; a fence goes to the finest used level whose cell is
 * at least half as large as its bounding box (inflated by the on-edge
 * tolerance), so it is in at most 3 x 3 cells, and a point query looks at
 * one cell per non-empty level (geo.c says why every third). Cells
 * keep each fence's box next to its id, so queries return only ids whose
 * box meets the point or box. Values are caller ids (u32); duplicates in a
 * box query are removed. Keys carry a space number (the tenant). */
struct geo_index;

int geo_index_new(struct geo_index **out);
void geo_index_free(struct geo_index *ix);
int geo_index_add(struct geo_index *ix, uint32_t space, uint32_t id, const struct geo_shape *s);
void geo_index_del(struct geo_index *ix, uint32_t space, uint32_t id, const struct geo_shape *s);
/* Ids whose bbox (with the tolerance) contains the point — a superset of
 * the fences geo_contains accepts — appended to *ids (growing *cap).
 * Returns the count or CAIRN_ENOMEM. Order is unspecified. */
int geo_index_point(struct geo_index *ix, uint32_t space, double lon, double lat, uint32_t **ids,
                    size_t *cap);
/* A caller's memory of its previous point query (kept per device by the
 * handler): while the index is unchanged, the cells of levels where the
 * new point lies in the same cell as the previous one are not looked up
 * again; their entries are read straight away. Zero-initialise; 64 bytes. */
#define GEO_HINT_LEVELS 4
struct geo_hint {
    uint32_t gen;    /* the index's generation when filled (0: never) */
    uint32_t fx, fy; /* the previous point's cell at the finest level */
    uint32_t n[GEO_HINT_LEVELS];
    const void *e[GEO_HINT_LEVELS]; /* per non-empty level, coarsest first */
};
/* Starts loading the index entries *hint names, if it is still valid (the
 * handler's prefetch, geofence.c). No effect on anything. */
void geo_index_prefetch_hint(const struct geo_index *ix, const struct geo_hint *hint);
/* geo_index_point, using and refreshing *hint (NULL: none). */
int geo_index_point_hint(struct geo_index *ix, uint32_t space, double lon, double lat,
                         struct geo_hint *hint, uint32_t **ids, size_t *cap);
/* Ids whose bbox (with the tolerance) meets the box, each once. A box
 * covering too many cells of a level scans that level's cells instead. */
int geo_index_box(struct geo_index *ix, uint32_t space, double minx, double miny, double maxx,
                  double maxy, uint32_t **ids, size_t *cap);
/* Built with AddressSanitizer: the huge-page tables come from calloc, so
 * that the sanitizer checks their bounds and its leak checker scans them
 * (it does not scan mmap'd memory: the fences' names and geometry that
 * only those tables point to would be reported as leaked while live). */
#if defined(__SANITIZE_ADDRESS__)
#define GEO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GEO_ASAN 1
#endif
#endif

/* Zeroed memory for large tables, on transparent huge pages where the
 * system allows it (MADV_HUGEPAGE): the handler's tables are read at random
 * on every fix, and with 4 KB pages nearly every read also missed the TLB.
 * Free with geo_huge_free(p, n), n as given. NULL when out of memory.
 * (Plain calloc under GEO_ASAN.) */
void *geo_huge_alloc(size_t n);
void geo_huge_free(void *p, size_t n);
/* geo_huge_alloc(n) holding the first min(o, n) bytes of p (o bytes from
 * geo_huge_alloc, or p NULL), p freed; NULL (p kept) when out of memory. */
void *geo_huge_realloc(void *p, size_t o, size_t n);

/* Approximate heap bytes used by the index. */
size_t geo_index_bytes(const struct geo_index *ix);

#endif
