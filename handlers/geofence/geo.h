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

struct geo_ring {
    uint32_t n; /* vertices, without the closing repeat */
    double *xy; /* lon0 lat0 lon1 lat1 … */
};

struct geo_poly {
    uint32_t nrings; /* ring 0 is the outer ring, the rest are holes */
    struct geo_ring *rings;
};

struct geo_shape {
    int kind;
    double minx, miny, maxx, maxy; /* bounding box (lon/lat) */
    uint32_t npolys, nverts;
    struct geo_poly *polys;
    double cx, cy, r; /* circle / roam: center (roam: unused), radius m */
    void *mem;        /* one block holding polys, rings and coordinates */
};

/* Parses and validates a geometry object (msgpack map). On failure returns
 * CAIRN_EINVAL with e->code "invalid_geometry", e->field the JSON pointer
 * (prefixed by `where`, e.g. "/payload/geometry") and the reason. For
 * GEO_ROAM only the kind and radius are filled (the handler reads
 * target_prefix). Free with geo_shape_free. */
int geo_parse(const msgpack_object *geom, const char *where, struct geo_shape *out,
              struct cairn_error *e);
void geo_shape_free(struct geo_shape *s);

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

/* ====================================================================== the index */

/* A hierarchical grid: level L has square cells of 360/2^L degrees; a
 * fence goes to the finest level whose cell is at least as large as its
 * bounding box, so it is in at most 4 cells, and a point query looks at
 * one cell per non-empty level. Values are caller ids (u32); duplicates
 * in a bbox query are removed. Keys carry a space number (the tenant). */
struct geo_index;

int geo_index_new(struct geo_index **out);
void geo_index_free(struct geo_index *ix);
int geo_index_add(struct geo_index *ix, uint32_t space, uint32_t id, const struct geo_shape *s);
void geo_index_del(struct geo_index *ix, uint32_t space, uint32_t id, const struct geo_shape *s);
/* Ids whose bbox contains the point, appended to *ids (growing *cap).
 * Returns the count or CAIRN_ENOMEM. Order is unspecified. */
int geo_index_point(struct geo_index *ix, uint32_t space, double lon, double lat, uint32_t **ids,
                    size_t *cap);
/* Ids whose bbox meets the box. all_ids/nall: the space's every id, used
 * when the box covers too many cells (a linear scan is faster then). */
int geo_index_box(struct geo_index *ix, uint32_t space, double minx, double miny, double maxx,
                  double maxy, uint32_t **ids, size_t *cap);
/* Approximate heap bytes used by the index. */
size_t geo_index_bytes(const struct geo_index *ix);

#endif
