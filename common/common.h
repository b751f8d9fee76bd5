/*
 * common.h — the base every Cairn module stands on: error codes, every limit
 * with the reason for its value, growable buffers with a maximum, time, hex,
 * the JSON <-> msgpack codec and an LMDB environment that grows its own map.
 *
 * This folder is not in DESIGN.md's list; it exists because log/, schemas/,
 * engine/ and api/ all need the same error type and limits, and a module must
 * not include another module's private header. It depends only on LMDB,
 * jansson and msgpack-c.
 *
 * Conventions (STYLE.md): functions return 0 or a negative CAIRN_E* code;
 * results go through out-parameters; a pointer returned without _new is
 * borrowed and its lifetime is stated next to the function.
 */
#ifndef CAIRN_COMMON_H
#define CAIRN_COMMON_H

#include <jansson.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A helper whose body is only prefetches (__builtin_prefetch) must be
 * declared with this. GCC 12 finds such a function pure — a prefetch is
 * no side effect to it — and deletes every call it did not inline first
 * (a call to a pure function returning void does nothing). The index's
 * loads of cell entries (geo.c prefetch_entries) had silently lost every
 * prefetch that way, in a fix's query and in the geofence handler's
 * prefetch pipeline: the binary held none. Always inlined, they stay. */
#define CAIRN_PREFETCH_FN static inline __attribute__((always_inline))

/* ======================================================================
 * Limits. Each is the single source of truth for its value; the README's
 * "Limits" table mirrors this section.
 * ==================================================================== */

/* Tenant names appear in every index key and in URLs; 64 bytes of
 * [A-Za-z0-9._-] is enough for a slug or UUID and keeps keys short. */
#define CAIRN_TENANT_MAX 64
/* Entity keys (device id, order id, "account/region") go into the keys
 * index, whose LMDB key is tenant + key and must stay under LMDB's 511-byte
 * key limit: 1 + 64 + 2 + 256 = 323. */
#define CAIRN_KEY_MAX 256
/* Idempotency ids (Stripe's evt_… are ~30 bytes, UUIDs 36); same LMDB bound
 * as keys since the dedup key is tenant + id. */
#define CAIRN_ID_MAX 256
/* Event type names ("geofence.define"). */
#define CAIRN_TYPE_MAX 64
/* Source labels ("http", "nats:circl.iot.x", "cli"). */
#define CAIRN_SOURCE_MAX 128
/* Default payload limit (msgpack-encoded size). A discovery scan of one
 * region is the largest realistic input; bigger scans are split. */
#define CAIRN_PAYLOAD_MAX_DEFAULT (1u << 20)
/* Hard ceiling for the configurable payload limit. */
#define CAIRN_PAYLOAD_MAX_CEILING (16u << 20)
/* A JSON input line may be larger than its msgpack payload (JSON is more
 * verbose); lines over this are refused before parsing. */
#define CAIRN_LINE_MAX (4u * CAIRN_PAYLOAD_MAX_CEILING)
/* Nesting depth of a payload, in levels (the payload object is level 1):
 * bounds the recursion of the codec and the schema validator. Real
 * documents (AWS describe output) nest < 12 deep. It must stay well under
 * msgpack-c's unpacker limit of 32 levels (MSGPACK_EMBED_STACK_SIZE), so a
 * handler can embed a payload fragment a few levels down in a document and
 * still read the document back. */
#define CAIRN_DEPTH_MAX 24
/* Events per group commit: large enough to amortise one fsync over
 * hundreds of microseconds of work, small enough to keep write txns short. */
#define CAIRN_BATCH_MAX_DEFAULT 1024
#define CAIRN_BATCH_MAX_CEILING 65536
/* Default time the writer waits for more events to fill a batch. 0: take
 * what is queued; the fsync of the previous batch is the natural window. */
#define CAIRN_BATCH_WAIT_US_DEFAULT 0
/* Events waiting for the writer; producers block or get "busy" (HTTP 429)
 * beyond it, so memory stays bounded under overload. */
#define CAIRN_QUEUE_MAX_DEFAULT 65536
/* log.queue_max's ceiling: the writer allocates two arrays of this many
 * inputs and results up front (~300 bytes an event: 300 MiB at most). */
#define CAIRN_QUEUE_MAX_CEILING 1048576
/* Derived events one handler may emit for one input: a complete discovery
 * scan that drops many resources resolves one violation per resource and
 * rule, so this is generous; past it the batch fails loudly. */
#define CAIRN_EMIT_PER_EVENT_MAX 65536
/* Dedup window in event time: Stripe retries for up to 3 days. */
#define CAIRN_DEDUP_WINDOW_NS_DEFAULT (72LL * 3600 * 1000000000LL)
/* Event times Cairn accepts: 1970-01-01 .. 2200-01-01 (ns). Bounded so
 * time arithmetic (windows, offsets) can never overflow int64. */
#define CAIRN_TIME_MIN 0LL
#define CAIRN_TIME_MAX 7258118400000000000LL
/* Expired dedup ids removed per batch: pruning never stalls ingest. */
#define CAIRN_DEDUP_PRUNE_PER_BATCH 4096
/* The log's derived indexes (log/index.c) are committed at most every this
 * many events or nanoseconds, and whenever the writer goes idle: one index
 * transaction spans many group commits, so a B-tree page touched by several
 * batches is copied and written once. Entity reads scan the log past what
 * the index covers, so they never miss an event. */
#define CAIRN_INDEX_COMMIT_EVENTS 262144
#define CAIRN_INDEX_COMMIT_NS (1000 * 1000000LL)
/* Initial LMDB map; it doubles when full (see cairn_env_grow). */
#define CAIRN_MAP_SIZE_DEFAULT (256ull << 20)
/* Largest map we grow to: 1 TiB of address space. */
#define CAIRN_MAP_SIZE_CEILING (1ull << 40)
/* Longest field path (JSON pointer) kept in an error. */
#define CAIRN_ERR_FIELD_MAX 256
#define CAIRN_ERR_MSG_MAX 512

/* A string that need not be NUL-terminated. */
struct cairn_str {
    const char *p;
    size_t n;
};

/* ======================================================================
 * Errors
 * ==================================================================== */

enum cairn_err {
    CAIRN_OK = 0,
    CAIRN_EINVAL = -1,    /* bad input; struct cairn_error says which field */
    CAIRN_ENOMEM = -2,    /* allocation failed */
    CAIRN_EIO = -3,       /* file or OS failure */
    CAIRN_EDB = -4,       /* LMDB failure other than a full map */
    CAIRN_ECONFLICT = -5, /* expected_seq did not match */
    CAIRN_ECORRUPT = -6,  /* stored data failed a check */
    CAIRN_ENOTFOUND = -7, /* no such entry */
    CAIRN_EBUSY = -8,     /* queue full: retry later */
    CAIRN_ETOOBIG = -9,   /* a buffer or input passed its limit */
    CAIRN_ECLOSED = -10,  /* the component is shutting down */
    CAIRN_EMAPFULL = -11, /* internal: map full, grow and retry */
    CAIRN_ENOSPC = -12,   /* the disk is full (or a quota or file size limit is reached) */
};

/* A static, human-readable description of a CAIRN_E* code. */
const char *cairn_strerror(int err);

/* The reason an input was refused. `code` is a static snake_case string
 * ("missing_field", "out_of_range", …) that clients may switch on; `field`
 * is a JSON pointer into the input ("/payload/lat"), "" when the input as a
 * whole is at fault. */
struct cairn_error {
    const char *code;
    char field[CAIRN_ERR_FIELD_MAX];
    char message[CAIRN_ERR_MSG_MAX];
};

void cairn_error_clear(struct cairn_error *e);
/* Fills e (if not NULL) and returns CAIRN_EINVAL, so callers can write
 * `return cairn_error_set(e, "too_long", "/key", "…");`. */
int cairn_error_set(struct cairn_error *e, const char *code, const char *field, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

/* calloc for an array that is read before it is written, such as a hash
 * table's slots: its zeroes are written (memset), so every page is mapped
 * writable at once. calloc skips the memset for fresh memory from the
 * kernel, whose pages a read then maps to the shared zero page, and the
 * first write to each copies it (a copy-on-write fault that flushes the
 * other threads' TLBs, an interprocessor interrupt on a VM): 1.5 % of a
 * replay's CPU samples, the caches' slot arrays as they grew. NULL on
 * overflow or out of memory. */
void *cairn_calloc_written(size_t n, size_t size);

/* ======================================================================
 * Growable buffer with a maximum (curl's dynbuf): every append checks the
 * maximum first and fails with CAIRN_ETOOBIG instead of growing past it.
 * ==================================================================== */

struct cairn_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t max;
};

void cairn_buf_init(struct cairn_buf *b, size_t max);
void cairn_buf_deinit(struct cairn_buf *b);
void cairn_buf_reset(struct cairn_buf *b); /* len = 0, keeps memory */
int cairn_buf_reserve(struct cairn_buf *b, size_t extra);
int cairn_buf_append(struct cairn_buf *b, const void *p, size_t n);
int cairn_buf_putc(struct cairn_buf *b, char c);
int cairn_buf_puts(struct cairn_buf *b, const char *s);
int cairn_buf_printf(struct cairn_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
int cairn_buf_json_str(struct cairn_buf *b, const char *s, size_t n);
/* msgpack-c packer callback writing into the cairn_buf `data` (0 or -1). */
int cairn_buf_msgpack_write(void *data, const char *p, size_t n);
/* True when p[0..n) holds only spaces, tabs and CRs (a blank NDJSON line). */
bool cairn_blank(const char *p, size_t n);

/* ======================================================================
 * Time: int64 nanoseconds since the Unix epoch, UTC.
 * ==================================================================== */

int64_t cairn_now_ns(void);
/* RFC 3339 ("2026-11-21T10:00:00.250Z", "…+02:00"), up to 9 fraction
 * digits. Returns 0 or CAIRN_EINVAL. */
int cairn_time_parse(const char *s, size_t n, int64_t *out);
/* Formats as RFC 3339 in UTC with the shortest of 0/3/6/9 fraction digits
 * that is exact. `out` needs 36 bytes. Returns the length. */
size_t cairn_time_format(int64_t ns, char *out, size_t cap);
/* Formatted dates of recent seconds, for code that formats many times a
 * few seconds apart (a handler's state transaction: devices' last_seen
 * and position times, orders' history): the "YYYY-MM-DDTHH:MM:SS" of a
 * second is formatted once while its slot keeps it. */
#define CAIRN_TIME_CACHE_SLOTS 64
struct cairn_time_cache {
    struct cairn_time_slot {
        int64_t sec;   /* -1: empty */
        char date[19]; /* "YYYY-MM-DDTHH:MM:SS" */
    } slot[CAIRN_TIME_CACHE_SLOTS];
};
void cairn_time_cache_init(struct cairn_time_cache *c);
/* cairn_time_format's bytes, the date taken from c when it holds the
 * second. */
size_t cairn_time_format_cached(struct cairn_time_cache *c, int64_t ns, char *out, size_t cap);
/* v in decimal at o (room for 20 bytes), without printf; returns the
 * length. */
size_t cairn_u64_dec(char *o, uint64_t v);

/* ======================================================================
 * Hex and big-endian integers (index keys sort as numbers).
 * ==================================================================== */

void cairn_hex(const uint8_t *p, size_t n, char *out);  /* out: 2n+1 bytes */
int cairn_unhex(const char *s, size_t n, uint8_t *out); /* n even */
int cairn_hex_digit(char c);                            /* 0..15, or -1 */
/* The key layout of every per-tenant index (log keys and dedup, handler
 * views): tlen u8 | tenant | rest. Returns the length, or 0 when the tenant
 * is over CAIRN_TENANT_MAX or the key does not fit in cap. */
size_t cairn_tkey(uint8_t *out, size_t cap, const struct cairn_str *tenant,
                  const struct cairn_str *rest);
/* Inline: index keys and records are full of them (a byte loop behind a
 * call was measurable in the geofence handler's fixes). */
static inline void cairn_be64_put(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}
static inline uint64_t cairn_be64_get(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* The first 8 bytes of p[0, n), zero-padded, as a big-endian u64: keys
 * compared as integers in memcmp's order (cairn_ksort, the log index). */
static inline uint64_t cairn_be_prefix(const uint8_t *p, size_t n)
{
    uint8_t b[8] = {0};
    if (n)
        memcpy(b, p, n < 8 ? n : 8);
    return cairn_be64_get(b);
}

/* ======================================================================
 * Sorting records into LMDB's key order (memcmp, then the shorter first),
 * as write-backs and index puts want them: puts in key order stay on the
 * cursor's leaf. The caller lists its records (struct cairn_ksort's p);
 * cairn_ksort reads each record's key (key()) and keeps 32 of its bytes
 * (big-endian, zero-padded) next to the pointer, skipping the bytes every
 * key shares (a tenant, an id stem), and sorts by those with the
 * comparison inline; a run that ties on them goes a level deeper (the
 * next 32 bytes past what the run shares) until cmp settles what is left
 * (keys that differ only in zero bytes at their end, and the caller's
 * order of equal keys). Equal prefixes come out in the order of their
 * records' addresses, so where that is the caller's order of equal keys
 * (records kept in event order) a run of one key costs one cmp per entry.
 * Comparing through the pointers instead (qsort) cost two cache misses
 * and a memcmp per comparison once the records outgrow the caches, and
 * with long tenant names the keys' first 16 bytes alone tie on every key.
 * The window is 32 bytes, not 16: keys of several tenants (tlen | tenant
 * | entity) mostly differ within 32, where 16 held little more than the
 * tenant and sent nearly every key a level deeper (another read of it
 * through its pointer, another sort): 33 % less time for 32 768 index
 * keys of bench/ingest's eight tenants (bench/RESULTS.md, session 13).
 * ==================================================================== */

struct cairn_ksort {
    uint64_t k0, k1, k2, k3; /* 32 bytes of the key (set by cairn_ksort) */
    void *p;                 /* the record (set by the caller) */
};

/* The key of record p (*n: its length). */
typedef const uint8_t *(*cairn_ksort_key)(const void *p, size_t *n, void *arg);
/* The order of two entries (struct cairn_ksort) by their records: the
 * full keys, then whatever the caller adds (a seq). */
typedef int (*cairn_ksort_cmp)(const void *a, const void *b, void *arg);

/* Sorts o[0, n) (each p set) into cmp's order, which must be LMDB's key
 * order on key(p) first. */
void cairn_ksort(struct cairn_ksort *o, size_t n, cairn_ksort_key key, cairn_ksort_cmp cmp,
                 void *arg);
/* Sorts v, an array of n pointers to records (of any one object type),
 * in place by cairn_ksort. Returns CAIRN_ENOMEM, v untouched, when there
 * is no memory for the sort's entries (the caller's fallback: qsort, or
 * writes out of order). */
int cairn_ksort_ptrs(void *v, size_t n, cairn_ksort_key key, cairn_ksort_cmp cmp, void *arg);
/* e's 32 bytes of k[0, n) (zero-padded) and its record p. */
void cairn_ksort_set(struct cairn_ksort *e, const uint8_t *k, size_t n, void *p);
/* How many of the first `shared` bytes of a the key b[0, n) shares. */
static inline size_t cairn_shared_prefix(const uint8_t *a, size_t shared, const uint8_t *b,
                                         size_t n)
{
    size_t m = shared < n ? shared : n, j = 0;
    while (j < m && a[j] == b[j])
        j++;
    return j;
}

/* ======================================================================
 * Codec. Payloads are stored as msgpack; inputs and outputs are JSON.
 *
 *   JSON           msgpack
 *   null/bool      nil/bool
 *   integer        int (positive ints as uint, negative as int)
 *   real           float64
 *   string         str
 *   array/object   array/map (object key order kept)
 *
 * Reals are written as the shortest decimal that reads back to the same
 * double, always with a '.' or exponent so they stay reals; never through
 * the locale. NaN and infinities are not valid JSON and are refused.
 * ==================================================================== */

/* Encodes v into out. Fails with CAIRN_EINVAL (and e) for depth over
 * CAIRN_DEPTH_MAX, CAIRN_ETOOBIG when out's maximum is passed. */
int cairn_json_to_msgpack(const json_t *v, struct cairn_buf *out, struct cairn_error *e);
/* The same with another depth limit (levels, the root being 1). */
int cairn_json_to_msgpack_depth(const json_t *v, struct cairn_buf *out, int max_depth,
                                struct cairn_error *e);
/* Writes the msgpack value at p as JSON text into out. On success *used
 * (optional) is the number of bytes of p consumed. CAIRN_ECORRUPT when p is
 * not one well-formed msgpack value. */
int cairn_msgpack_to_json(const uint8_t *p, size_t n, struct cairn_buf *out, size_t *used);
/* Decodes the msgpack value at p into a new jansson value (*out, caller
 * decrefs). Map keys must be strings; bin becomes a hex string. */
int cairn_msgpack_to_jansson(const uint8_t *p, size_t n, json_t **out, size_t *used,
                             struct cairn_error *e);

/* True when the msgpack value at p is exactly what cairn_json_to_msgpack
 * writes for some JSON value at most max_depth levels deep (the root being
 * 1): the smallest width for every int, str, array and map header; float64
 * only and finite; no bin or ext; integers within int64; strings valid
 * UTF-8; map keys strings without NUL, unique, at most 64 per map. Such
 * bytes can be stored as they are: re-encoding them would change nothing.
 * *used is the value's length. False means "take the slow path" (convert
 * through jansson, which canonicalises or reports the error), not
 * necessarily that the value is invalid. */
bool cairn_mp_canonical(const uint8_t *p, size_t n, int max_depth, size_t *used);
/* The end of the msgpack object at p..end, any nesting (no recursion);
 * NULL when it is malformed or truncated, or a container counts more
 * items than there are bytes left (every item takes at least one). */
const uint8_t *cairn_mp_skip(const uint8_t *p, const uint8_t *end);
/* The same as a length: that of the object at p (n bytes available), 0
 * when cairn_mp_skip refuses it. Untrusted bytes are cut to it before
 * msgpack-c's unpacker sees them: that allocates a container's items
 * from its count before reading them (an array32 of 2^32-1 items in five
 * bytes asked for 128 GiB); bounded so, what it allocates stays within a
 * small multiple of the input. */
size_t cairn_mp_len(const uint8_t *p, size_t n);
/* cairn_mp_canonical, and in the same pass the value decoded into *o as
 * msgpack_unpack would decode it (the same object: strings point into p,
 * arrays and maps are allocated in z). False also when z cannot allocate;
 * *o is then partly set and z holds what was allocated. trusted: p is
 * known to be canonical (cairn_json_text_to_msgpack's output), so UTF-8,
 * NUL in keys and duplicate keys are not checked again. */
struct msgpack_zone;
struct msgpack_object;
bool cairn_mp_canonical_unpack(const uint8_t *p, size_t n, int max_depth, bool trusted,
                               struct msgpack_zone *z, struct msgpack_object *o, size_t *used);
/* JSON text of one object straight to the canonical msgpack that
 * cairn_json_to_msgpack writes for jansson's parse of it (the same bytes),
 * appended to out. False — nothing appended — for anything it declines:
 * invalid JSON, \u0000, integers beyond int64, reals that overflow,
 * duplicate keys, nesting deeper than CAIRN_DEPTH_MAX, maps of more than
 * 64 keys; the caller then parses with jansson, which reports the error or
 * handles the rare case. */
bool cairn_json_text_to_msgpack(const char *text, size_t n, struct cairn_buf *out);
/* True when p holds valid UTF-8 (as jansson defines it). */
bool cairn_utf8_valid(const uint8_t *p, size_t n);

/* A reader for msgpack that Cairn wrote itself in a canonical shape (the
 * log envelope, derived envelopes): it checks each key in order and gives
 * strings as spans into the input, with no allocation. Each call returns
 * 0 or CAIRN_ECORRUPT and advances p. */
struct cairn_rd {
    const uint8_t *p, *end;
};
/* A fixstr key equal to name. Inline: with a literal name the length
 * folds and the compare is a few instructions (replay decodes eleven keys
 * per envelope). */
static inline int cairn_rd_key(struct cairn_rd *r, const char *name)
{
    size_t n = strlen(name);
    if (r->end - r->p < (ptrdiff_t)(n + 1) || r->p[0] != (0xa0 | n) || memcmp(r->p + 1, name, n))
        return CAIRN_ECORRUPT;
    r->p += n + 1;
    return 0;
}
/* The w-byte (0, 1, 2, 4 or 8) big-endian number at p, as one load (0
 * for w 0, reading nothing). */
static inline uint64_t cairn_rd_be(const uint8_t *p, unsigned w)
{
    uint64_t v8;
    uint32_t v4;
    uint16_t v2;
    switch (w) {
    case 0: return 0;
    case 1: return p[0];
    case 2: memcpy(&v2, p, 2); return __builtin_bswap16(v2);
    case 4: memcpy(&v4, p, 4); return __builtin_bswap32(v4);
    default: memcpy(&v8, p, 8); return __builtin_bswap64(v8);
    }
}
/* Any int/uint format <= INT64_MAX. Inline, with the number read in one
 * load (replay reads three per envelope: a byte loop and a call each were
 * a tenth of the envelope's decoding). */
static inline int cairn_rd_int(struct cairn_rd *r, int64_t *out)
{
    if (r->p >= r->end)
        return CAIRN_ECORRUPT;
    uint8_t t = *r->p++;
    if (t <= 0x7f)
        return *out = t, 0;
    if (t >= 0xe0)
        return *out = (int8_t)t, 0;
    if (t < 0xcc || t > 0xd3)
        return CAIRN_ECORRUPT;
    unsigned w = 1u << ((t - 0xcc) & 3); /* uint 8..64 (0xcc..), int 8..64 (0xd0..) */
    if (r->end - r->p < (ptrdiff_t)w)
        return CAIRN_ECORRUPT;
    uint64_t v = cairn_rd_be(r->p, w);
    r->p += w;
    if (t <= 0xcf) {
        if (v > INT64_MAX)
            return CAIRN_ECORRUPT;
    } else if (w < 8 && (v >> (8 * w - 1)) & 1) {
        v |= ~(uint64_t)0 << (8 * w); /* sign-extend */
    }
    return *out = (int64_t)v, 0;
}
/* A string (nil too when nil_ok: s->p NULL) as a span of the input. */
static inline int cairn_rd_str(struct cairn_rd *r, struct cairn_str *s, bool nil_ok)
{
    if (r->p >= r->end)
        return CAIRN_ECORRUPT;
    uint8_t t = *r->p++;
    uint64_t n;
    if ((t & 0xe0) == 0xa0) {
        n = t & 0x1f;
    } else if (t >= 0xd9 && t <= 0xdb) {
        unsigned w = 1u << (t - 0xd9);
        if (r->end - r->p < (ptrdiff_t)w)
            return CAIRN_ECORRUPT;
        n = cairn_rd_be(r->p, w);
        r->p += w;
    } else if (t == 0xc0 && nil_ok) {
        s->p = NULL;
        s->n = 0;
        return 0;
    } else {
        return CAIRN_ECORRUPT;
    }
    if ((uint64_t)(r->end - r->p) < n)
        return CAIRN_ECORRUPT;
    s->p = (const char *)r->p;
    s->n = (size_t)n;
    r->p += n;
    return 0;
}
/* A map's header (fixmap, map16, map32): *pairs its key/value pairs. */
static inline int cairn_rd_map(struct cairn_rd *r, uint32_t *pairs)
{
    if (r->p >= r->end)
        return CAIRN_ECORRUPT;
    uint8_t t = *r->p;
    unsigned w = t == 0xde ? 2 : t == 0xdf ? 4 : 0;
    if ((t & 0xf0) == 0x80) {
        *pairs = t & 0x0f;
    } else if (!w || r->end - r->p < (ptrdiff_t)(1 + w)) {
        return CAIRN_ECORRUPT;
    } else {
        *pairs = (uint32_t)cairn_rd_be(r->p + 1, w);
    }
    r->p += 1 + w;
    return 0;
}

/* Shortest round-trip formatting of a finite double into out (>= 32 bytes);
 * returns the length. */
size_t cairn_fmt_double(double d, char *out, size_t cap);

/* ======================================================================
 * LMDB environment with a map that grows (no MDB_MAP_FULL reaches users).
 *
 * mdb_env_set_mapsize() may only run while this process has no open
 * transaction, so every transaction is taken through these functions: read
 * and write transactions hold a shared lock, growing takes it exclusively.
 * Keep read transactions short; a long one delays growth (never data).
 * ==================================================================== */

struct cairn_env;

/* Opens (creating) the directory `path` as an LMDB environment.
 * `flags` are extra mdb_env_open flags (MDB_RDONLY for read-only). */
int cairn_env_open(struct cairn_env **out, const char *path, unsigned maxdbs, size_t mapsize,
                   unsigned flags);
void cairn_env_close(struct cairn_env *env);
MDB_env *cairn_env_mdb(struct cairn_env *env);

/* Begins a read-only transaction; end it with cairn_env_read_end. */
int cairn_env_read_begin(struct cairn_env *env, MDB_txn **txn);
void cairn_env_read_end(struct cairn_env *env, MDB_txn *txn);
/* Ends a read transaction by committing it: DBI handles it opened stay
 * open for the environment (LMDB closes them on abort). */
int cairn_env_read_commit(struct cairn_env *env, MDB_txn *txn);
/* Begins a write transaction. Finish with cairn_env_write_commit or
 * cairn_env_write_abort. A commit that fails with CAIRN_EMAPFULL has
 * already aborted; call cairn_env_grow and redo the work. */
int cairn_env_write_begin(struct cairn_env *env, MDB_txn **txn);
int cairn_env_write_commit(struct cairn_env *env, MDB_txn *txn);
void cairn_env_write_abort(struct cairn_env *env, MDB_txn *txn);
/* Doubles the map (up to CAIRN_MAP_SIZE_CEILING). No transaction of this
 * process may be held by the caller. */
int cairn_env_grow(struct cairn_env *env);
/* Writes a consistent, compacted copy of the environment, as one read
 * snapshot sees it (writers, in this process or another, go on
 * meanwhile), to dir/data.mdb, synced; dir is created and must hold no
 * data.mdb. A failure leaves no data.mdb: CAIRN_ENOSPC (the disk is full),
 * CAIRN_EBUSY (the map grew under every attempt), else as cairn_errno_err. */
int cairn_env_copy(struct cairn_env *env, const char *dir);
/* Makes pages [from, from + n) of the map present and writable, as a
 * write would, without changing a byte (MADV_POPULATE_WRITE; see
 * "populating the map" in env.c). For an MDB_WRITEMAP environment whose
 * file is reserved on disk; any thread. 0, or CAIRN_EIO when it could not
 * (the kernel or /proc does not allow it: later calls do nothing). */
int cairn_env_populate(struct cairn_env *env, size_t from, size_t n);
/* Writes everything committed back to the disk, as mdb_env_sync(env, 1):
 * CAIRN_EIO when that fails. */
int cairn_env_sync(struct cairn_env *env);
/* Starts writing the data file's dirty pages back without waiting for
 * them (sync_file_range, SYNC_FILE_RANGE_WRITE), so that work done before
 * cairn_env_sync overlaps the disk's. Only a head start: nothing is
 * durable until cairn_env_sync returns, and a failure here is left to it.
 * The map's pages are unmapped first (their bytes stay; see env.c): call
 * it with no transaction open, when the map is not about to be read. */
void cairn_env_sync_start(struct cairn_env *env);
/* Translates an LMDB return code: MDB_MAP_FULL -> CAIRN_EMAPFULL,
 * MDB_NOTFOUND -> CAIRN_ENOTFOUND, ENOSPC/EDQUOT/EFBIG (a write LMDB could
 * not make) -> CAIRN_ENOSPC, others -> CAIRN_EDB. */
int cairn_mdb_err(int rc);
/* Translates an errno of a file operation: ENOSPC/EDQUOT/EFBIG ->
 * CAIRN_ENOSPC, ENOMEM -> CAIRN_ENOMEM, others -> CAIRN_EIO. */
int cairn_errno_err(int err);

/* mkdir -p; returns 0 or CAIRN_EIO. */
int cairn_mkdirs(const char *path);

#endif
