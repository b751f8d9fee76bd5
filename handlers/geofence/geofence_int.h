/*
 * geofence_int.h — shared by the geofence handler's files: limits, key
 * layouts of its DBIs, the device record.
 *
 * DBIs (all keys but geofence.meta's start with tlen u8 | tenant):
 *
 *   geofence.fences  T | fence_id                      -> the fence document (msgpack; the view)
 *   geofence.geom    T | fence_id                      -> packed geometry (geo_pack)
 *   geofence.dev     T | device_id                     -> device record (below)
 *   geofence.inside  T | flen u8 | fence_id | device   -> since (i64 BE): devices inside (WITHIN)
 *   geofence.hits    T | flen u8 | fence_id | time | kind u8 | device -> dseq u64 BE (by fence)
 *   geofence.dhits   T | dlen u16 BE | device | time | kind u8 | fence_id -> dseq (by device)
 *   geofence.hitq    dseq u64 BE -> the hit's hits key (hits not yet in hits/dhits)
 *   geofence.pos     T | cy u32 BE | cx u32 BE | device -> "" (device grid, POS_CELL_DEG cells)
 *   geofence.insq    n u64 BE -> op u8 | kn u16 BE | inside key | value (queued for inside)
 *   geofence.posq    n u64 BE -> op u8 | kn u16 BE | pos key (queued for pos)
 *   geofence.near    T | flen u8 | fence_id | alen u16 BE | a | b -> "" (roam pairs, both ways)
 *   geofence.orders  T | order_id                      -> order record (msgpack)
 *   geofence.oby     T | dlen u16 BE | device | order_id -> "" (open orders awaiting arrival)
 *   geofence.meta    "layout"                      -> u32 BE (GF_LAYOUT)
 *
 * A hit (fence, device, time, kind) is one event of stream.geofence (its
 * payload the hit's document) and one entry in each of hits and dhits,
 * whose keys hold the same four fields and whose value is the event's
 * dseq (a query by fence or device reads its index, then the payloads from
 * the stream). The newest hits, until GF_HITQ_MAX of them have come, are
 * instead in hitq, keyed by their dseq (so appended) with the hits key as
 * value; then the queue is merged into both indexes in key order and
 * emptied (geofence.c, emit_hit), and a query reads the queue too
 * (routes.c). As before, the last hit of one (fence, device, time, kind)
 * is the one kept (its dseq).
 *
 * Likewise the puts and deletes of inside and pos are queued, in insq and
 * posq (n: the operation's number in its queue, from 0; op 1 put, 0
 * delete), and applied to the set in key order once GF_OPQ_MAX of them
 * have come (geofence.c, "queued sets"); a reader of inside or pos reads
 * the queue too, the last operation on a key winning.
 *
 * Layouts. 1 kept the payload in hits and dhits themselves: ~180-byte
 * entries landing on random pages of two trees that grow with the history,
 * so every state transaction rewrote most of both (14 000 hits per 65 536
 * fixes in bench/geofence; leaving those writes out saved ~1.6 of the
 * 4.7 us of CPU per fix, much of it the kernel's page faults and
 * write-back of the dirtied pages). 2 kept the payload once more in
 * geofence.hitlog (time-ordered key, appended; its leaves ended half full,
 * as LMDB splits a full leaf in the middle unless a put says MDB_APPEND)
 * and empty values in hits and dhits. 3 dropped hitlog: the stream,
 * append-only and never trimmed, already holds the payload (one put fewer
 * per hit). Its random inserts, to trees of ~48-byte entries, still
 * rewrote nearly every leaf of both in each large transaction (a page
 * copy, a page fault and a page written back each: 0.7 of 3.7 us per fix).
 * 4 adds hitq: a transaction appends to it, and each leaf of hits and
 * dhits is rewritten once per merge of 65 536 hits. 5 queues the
 * operations of inside and pos the same way (insq, posq): their random
 * puts and deletes, ~20 000 per transaction of 65 536 fixes, rewrote
 * nearly every leaf of both trees in each (0.4 of ~3.2 us per fix). A
 * state of layout 1, 2, 3 or 4 is refused at open (rebuild it from the
 * log: cairn replay).
 *
 * Device record (geofence.dev), fixed byte order:
 *
 *   +-----+---------+---------+---------+------+---------------------------------------+
 *   | ver | lat f64 | lon f64 | time i64| nmem | nmem x (state u8 | since i64 | idlen u8 | id) |
 *   | u8  | bits BE | bits BE | BE      | u16  | sorted by id                          |
 *   +-----+---------+---------+---------+------+---------------------------------------+
 */
#ifndef CAIRN_GEOFENCE_INT_H
#define CAIRN_GEOFENCE_INT_H

#include "geo.h"
#include "handler.h"

/* Per tenant: 1 M fences is the scale the issue asks for (~600 MB of RAM
 * at 36 vertices each); raise with care. */
#define GF_FENCES_PER_TENANT_MAX 1000000
/* Fences detecting `outside` are checked on every fix of the devices they
 * watch, so they are few by construction. */
#define GF_OUTSIDE_PER_TENANT_MAX 1000
/* Roam fences: each costs a grid query per fix of a matching device. */
#define GF_ROAM_PER_TENANT_MAX 100
/* Fences one device can be inside (or pending) at once. */
#define GF_MEMBERSHIPS_MAX 1024
/* Exits emitted by one geofence.delete (the rest exit at their next fix). */
#define GF_DELETE_EXITS_MAX 10000
/* Roam pairs per (fence, device). */
#define GF_NEAR_MAX 1000
#define GF_FENCE_ID_MAX 128
#define GF_FILTERS_MAX 100
/* Device grid: 1/64 degree cells (~1.7 km of latitude). */
#define GF_POS_CELL_DEG (1.0 / 64)
#define GF_NEARBY_RADIUS_MAX 100000.0
/* The in-memory device table (write-back cache of geofence.dev, see
 * geofence.c): when it holds more records or bytes than this, the dirty
 * ones are written and the table is emptied. 1 M devices of a few
 * memberships each is ~150 MB; a device inside 1 000 fences costs ~20 KB. */
#define GF_DEV_CACHE_MAX (1u << 20)
#define GF_DEV_CACHE_BYTES (256u << 20)
/* Writes of device records, hits, dhits, inside and pos kept in memory
 * for the flush (geofence.c, "deferred writes"): past this many they are
 * made in apply. Config defer_max lowers it. As many as the engine let a
 * replay transaction make until session 15 (ENGINE_APPLY_WRITES_MAX, now
 * four times that; not measured higher). It was 32 768: with
 * 100 000 devices, each drain wrote back some 20 000 device records
 * every ~25 000 fixes, most records several times per transaction
 * (bench/geofence: 2.8-3.1 us of CPU per fix; 2.5-2.7 at 262 144). */
#define GF_DEFER_MAX 262144u
/* Order records (geofence.orders) kept in memory between flushes
 * (geofence.c, "order records"): past this many the cache is emptied
 * after the next flush. A record is ~100 bytes. Config order_cache_max
 * lowers it. */
#define GF_ORDER_CACHE_MAX (1u << 18)
/* Hits queued in geofence.hitq before they are merged into hits and dhits
 * (config hitq_max lowers it; live and replay must use the same). A query
 * of hits reads the whole queue: ~3 MB at most. */
#define GF_HITQ_MAX 65536u
/* Operations queued in geofence.insq or posq before they are applied to
 * inside or pos (config opq_max lowers it; live and replay must use the
 * same). A WITHIN or NEARBY query reads the whole queue: ~3 MB at most. */
#define GF_OPQ_MAX 65536u
#define GF_ARRIVAL_RADIUS_DEFAULT 100.0

#define GF_KEY_MAX 511
/* The layout of the DBIs above (geofence.meta "layout"). */
#define GF_LAYOUT 5

enum gf_state { GF_PENDING = 1, GF_INSIDE = 2 };
enum gf_hit {
    HIT_ENTER = 1,
    HIT_EXIT,
    HIT_INSIDE,
    HIT_OUTSIDE,
    HIT_CROSS,
    HIT_NEARBY,
    HIT_FARAWAY
};
enum gf_detect {
    D_ENTER = 1,
    D_EXIT = 2,
    D_INSIDE = 4,
    D_OUTSIDE = 8,
    D_CROSS = 16,
};

struct gf_key {
    uint8_t b[GF_KEY_MAX + 1];
    size_t n;
    bool over;
};

static inline void gk_raw(struct gf_key *k, const void *p, size_t n)
{
    if (k->n + n > GF_KEY_MAX) {
        k->over = true;
        return;
    }
    if (n)
        __builtin_memcpy(k->b + k->n, p, n);
    k->n += n;
}
static inline void gk_u8str(struct gf_key *k, const char *p, size_t n)
{
    uint8_t l = (uint8_t)(n > 255 ? 255 : n);
    gk_raw(k, &l, 1);
    gk_raw(k, p, l);
}
static inline void gk_u16str(struct gf_key *k, const char *p, size_t n)
{
    uint8_t l[2] = {(uint8_t)(n >> 8), (uint8_t)n};
    gk_raw(k, l, 2);
    gk_raw(k, p, n);
}
static inline void gk_be64(struct gf_key *k, uint64_t v)
{
    uint8_t b[8];
    cairn_be64_put(b, v);
    gk_raw(k, b, 8);
}
static inline void gk_be32(struct gf_key *k, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    gk_raw(k, b, 4);
}
static inline void gk_tenant(struct gf_key *k, const char *p, size_t n)
{
    k->n = 0;
    k->over = false;
    gk_u8str(k, p, n);
}
static inline uint64_t gf_time_key(int64_t t)
{
    return (uint64_t)t ^ (1ull << 63);
}

/* LMDB's key order (memcmp, then the shorter first). */
static inline int gf_cmp_keys(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : an < bn ? -1 : an > bn;
}

/* Whether v[0..vn) is a well-formed operation of insq or posq (op u8 | kn
 * u16 BE | the set's key, 1..GF_KEY_MAX bytes | a value of at most 8
 * bytes); the set's key is v[3..3 + kn). */
static inline bool gf_opq_ok(const uint8_t *v, size_t vn)
{
    size_t kn = vn >= 3 ? (size_t)v[1] << 8 | v[2] : 0;
    return vn >= 3 && v[0] <= 1 && kn >= 1 && kn <= GF_KEY_MAX && 3 + kn <= vn && vn - 3 - kn <= 8;
}

/* The dhits key of a hit from its hits key h[0..hn) (a key of hitq's
 * values, well formed: the fence id at h[tl + 1], tl = 1 + the tenant's
 * length; hn >= tl + 1 + flen + 9): T | dlen | device | time | kind |
 * fence_id. k->over when it does not fit. */
static inline void gf_dhits_key(struct gf_key *k, const uint8_t *h, size_t hn)
{
    size_t tl = 1 + (size_t)h[0], fl = h[tl], at = tl + 1 + fl;
    k->n = 0;
    k->over = false;
    gk_raw(k, h, tl);
    gk_u16str(k, (const char *)h + at + 9, hn - at - 9);
    gk_raw(k, h + at, 9);
    gk_raw(k, h + tl + 1, fl);
}
/* Whether h[0..hn) is a well-formed hits key (a hitq value). */
static inline bool gf_hits_key_ok(const uint8_t *h, size_t hn)
{
    return hn >= 1 && (size_t)h[0] + 2 <= hn && (size_t)h[0] + 2 + h[1 + h[0]] + 9 <= hn;
}

extern const char *const gf_hit_names[];
extern const struct handler_route gf_routes[];

#endif
