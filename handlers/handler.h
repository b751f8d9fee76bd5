/*
 * handler.h — the plug-in contract between the engine and its handlers.
 *
 * A handler derives state and derived events from the log. It is a table of
 * function pointers (struct handler) listed once in handlers/registry.c.
 * Adding a handler is one folder under handlers/ and one line in that
 * table; nothing in the engine changes.
 *
 * The engine orders handlers so every producer of a derived type runs
 * before its consumers (a cycle is refused at start-up), and for each input
 * calls, in that order, every handler that consumes the input's type or
 * the type of a derived event emitted earlier for the same input. All of it
 * happens in one state transaction per log batch, together with the
 * checkpoint, so every input is applied exactly once.
 *
 * Rules every handler keeps (DESIGN.md):
 *  1. Deterministic: reads only the event, its own state and its config.
 *     Event time, never the wall clock; no locale; no unseeded randomness.
 *  2. Touches only its own DBIs (hctx_db names them "<handler>.<name>"; it
 *     cannot name another's); talks to others only through derived events.
 *  3. Bounded: a bad or huge input is refused or skipped with a reason,
 *     never crashes, never allocates without limit.
 *  4. No side effects in apply: outbox consumers read derived streams.
 */
#ifndef CAIRN_HANDLER_H
#define CAIRN_HANDLER_H

#include "common.h"

#include <msgpack.h>
#include <string.h>

#define HANDLER_VERSION 1

/* An event as a handler sees it: an input from the log or a derived event.
 * All pointers are borrowed for the duration of the call. */
struct event {
    bool derived;
    uint64_t seq;            /* input: its log seq; derived: the cause's log seq */
    uint64_t dseq;           /* derived only: its seq in its stream */
    struct cairn_str stream; /* derived only: the stream (the emitting handler) */
    struct cairn_str type, tenant, key;
    int64_t time;           /* event time, ns (a derived event has its cause's) */
    const uint8_t *payload; /* msgpack map */
    size_t payload_len;
    /* The payload, decoded; NULL for a derived event given to a handler
     * marked derived_raw (struct handler) when no other consumer needed it. */
    const msgpack_object *body;
};

struct hctx;  /* a handler's view of the state: its DBIs, config, emit */
struct hread; /* a read request against a snapshot of the state (routes) */

/* An extra HTTP route a handler serves, under /v1/. `path` is matched
 * segment by segment, "{}" matching one segment (e.g. "compliance/{}",
 * "fences/{}/inside", "nearby"). Routes are matched before the generic
 * view routes, in registry order.
 *
 * get: answers a GET (role read) from a snapshot: writes a JSON body to
 *      out and returns the HTTP status; on an error status, fill e (the
 *      API renders it). args are the "{}" segments, percent-decoded.
 * post: turns a POST (role ingest) into one input event for the log:
 *      sets *event to a new JSON object {"type", "key"?, "id"?, "payload"}
 *      (the tenant is the caller's) and returns 0, or returns an HTTP
 *      status >= 400 with e. The API appends it like POST /v1/events. */
struct handler_route {
    const char *path;
    int (*get)(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e);
    int (*post)(struct hread *rd, char **args, const json_t *body, json_t **event,
                struct cairn_error *e);
};

/* How far ahead of the input being applied the engine calls a handler's
 * prefetch (struct handler): far enough for a few cache misses to land
 * (each ~0.1 us; an apply takes 0.2-2 us), near enough that what was
 * loaded is still in the cache. */
#define HANDLER_PREFETCH_AHEAD 4

struct handler {
    unsigned version;            /* HANDLER_VERSION; members are only ever appended */
    const char *name;            /* [a-z0-9_]+: DBI prefix, stream and view name */
    const char *const *consumes; /* NULL-terminated input and/or derived types */
    const char *const *emits;    /* NULL-terminated derived types (may be NULL) */
    /* Required. Opens its DBIs (hctx_db) and reads its config; may build
     * in-memory caches from its DBIs. Runs at start-up, and again (after
     * close) whenever a state transaction was aborted, so caches never
     * keep work that did not commit. */
    int (*open)(struct hctx *ctx);
    /* Optional (may be NULL): refuses a bad control input it owns at ingest
     * (before it enters the log), naming the field and reason in e. */
    int (*validate)(const struct event *ev, struct cairn_error *e);
    /* Required. Applies one event: updates its DBIs, emits derived events.
     * A negative return aborts the whole batch (use it for I/O failures
     * only: bad data is skipped or recorded, never fatal). */
    int (*apply)(struct hctx *ctx, const struct event *ev);
    /* Optional: a hint, with no effect on state. When the engine applies a
     * run of inputs (replay, catch-up: engine.c, apply_early_one), it calls
     * prefetch, once for each input the handler consumes and in their
     * order, for its input HANDLER_PREFETCH_AHEAD places ahead of the one
     * it is about to apply (counting only its own inputs). The handler may
     * start loading the memory that input's apply will touch (its entry in
     * a cache, an index cell) so those cache misses overlap the applies in
     * between instead of stalling them. It must not write state, emit, or
     * rely on being called: an input may be applied without a prefetch, or
     * prefetched and then not applied (a failed run). It runs on the thread
     * that applies, with the same context. */
    void (*prefetch)(struct hctx *ctx, const struct event *ev);
    /* Optional: releases what open allocated. */
    void (*close)(struct hctx *ctx);
    /* Optional: the DBI (a name given to hctx_db) holding the handler's
     * view — tenant-prefixed keys (hkey_*) to msgpack documents — that
     * `cairn show <name>` and the HTTP API serve. NULL: no view. */
    const char *view;
    /* Optional: extra routes, terminated by an entry with path NULL. */
    const struct handler_route *routes;
    /* Optional: called once per state transaction, after the last apply
     * and before the commit, in handler order. A handler that keeps a
     * per-transaction write-back cache (documents decoded once, updated in
     * memory across the batch) puts them here, so the commit holds them
     * together with the checkpoint. It may write its own DBIs only; it
     * must not emit (consumers have already run). A negative return
     * aborts the transaction, and the engine then reopens every handler,
     * so a cache never keeps work that did not commit. */
    int (*flush)(struct hctx *ctx);
    /* Optional (false: no). The handler's apply may run on another thread
     * than its open, flush and close, at the same time as other handlers'
     * applies: it keeps no state outside its context (hctx_user, its DBIs)
     * and calls no non-reentrant library function. Only used for handlers
     * that consume no derived type: when catching up or replaying large
     * ranges, the engine then applies a run of inputs to them on a second
     * thread while the other handlers apply the same inputs (or, those
     * consuming derived types, earlier runs); each handler
     * still sees its events in log order, its own state and its own
     * derived stream, so the state is byte for byte that of the serial
     * run. The state calls (hctx_*) take a lock in that mode, each for its
     * own duration (hctx_emit takes none: its event is appended to the
     * stream after the run); a value a state call returned stays valid as
     * in a serial apply — until the handler's own next write — since the
     * other thread only touches other handlers' DBIs. An apply that spends
     * most of its time in state calls still gains little: those go one
     * at a time. */
    bool concurrent;
    /* Optional (false: no). Derived events reach apply undecoded: ev->body
     * is NULL unless another consumer of the same event needed it decoded
     * (so do not rely on either), and the handler reads ev->payload /
     * payload_len — one msgpack map, the bytes its producer emitted —
     * itself (mp_raw_len, a msgpack_unpack of its own, or a scan for the
     * few fields it needs). It saves the engine decoding every derived
     * payload into msgpack objects (~4 400 instructions per compliance
     * violation) for a handler that reads a few fields or skips most of
     * them. Inputs are decoded as before. */
    bool derived_raw;
    /* No effect; kept because members are only ever appended. It let a
     * handler's flush run on the apply worker beside the others'; the
     * engine now flushes every handler on one thread, which was as fast
     * and used less CPU (engine.c, flush_all). */
    bool flush_concurrent;
    /* Optional (NULL: a view value is its document). Appends to out, as
     * msgpack, the document of the view's entry k -> v, read from the
     * snapshot rd (the handler's own DBIs and stream; rd has no tenant nor
     * parameters). For a handler whose view keeps small records and the
     * rest of each document elsewhere (violations: in the event that
     * opened it; alerts: in the last event that carried the alert —
     * random-keyed 1-2 KB documents cost a dirtied page per insert).
     * `cairn show` and the generic view routes serve what it writes (an
     * entry it fails on is skipped: show reports it, a GET of that entity
     * answers 500). */
    int (*view_doc)(struct hread *rd, const MDB_val *k, const MDB_val *v, struct cairn_buf *out);
    /* Optional (NULL: none). Input types (of those it consumes) the
     * handler reads from ev->payload itself, as derived_raw does for
     * derived events: ev->body is NULL unless another consumer of the
     * input needed it decoded (so do not rely on either; mp_raw_get reads
     * a field). alerts reads a metric sample's name and value so: the
     * engine decoding each sample, labels and all, was 12-28 ms of the
     * log's reading in a 1M-event replay, most samples feeding no alarm. */
    const char *const *raw_inputs;
    /* Optional (NULL: the handler has no settings). A JSON Schema (text)
     * of its config section, handlers.<name>, which hctx_config returns:
     * the engine checks the config file against it before anything opens
     * (engine_config_check), so open can read its settings without
     * second-guessing them, and a misspelt key or a wrong type is refused
     * at start, named, rather than quietly meaning the default. */
    const char *config_schema;
};

/* The registered handlers, NULL-terminated (handlers/registry.c). */
extern const struct handler *const handler_table[];

/* ====================================================================== state access */

/* Opens (creating) the handler's DBI "<handler>.<name>" and returns its
 * index in *db. `name` is [a-z0-9_]+ — a handler cannot name another's
 * DBI. flags: MDB_DUPSORT etc. Only from open(). */
int hctx_db(struct hctx *ctx, const char *name, unsigned flags, unsigned *db);

/* Reads a value: 0 with v set, CAIRN_ENOTFOUND, or a failure. v points into
 * the database and is valid only until the handler's next write (to ANY
 * of its DBIs, an emit included) in the transaction — LMDB may move pages
 * — so copy or decode it first. */
int hctx_get(struct hctx *ctx, unsigned db, const void *k, size_t kn, MDB_val *v);
int hctx_put(struct hctx *ctx, unsigned db, const void *k, size_t kn, const void *v, size_t vn);
/* Puts only when the key is absent (MDB_NOOVERWRITE): one descent of the
 * tree instead of hctx_get + hctx_put. 0 when stored; CAIRN_ECONFLICT
 * when the key exists — nothing written, *existing is the stored value
 * (valid as hctx_get's); another negative code on failure. */
int hctx_put_new(struct hctx *ctx, unsigned db, const void *k, size_t kn, const void *v, size_t vn,
                 MDB_val *existing);
/* Deletes; deleting a missing key is not an error. */
int hctx_del(struct hctx *ctx, unsigned db, const void *k, size_t kn);
/* Deletes every entry of one of the handler's DBIs at once (emptying a
 * queue after reading it whole: no delete per entry). A cursor on it is
 * unset: open it again before reading. */
int hctx_clear(struct hctx *ctx, unsigned db);

/* Iterates keys starting with prefix, in key order. */
struct hcursor;
int hctx_cursor_open(struct hctx *ctx, unsigned db, const void *prefix, size_t pn,
                     struct hcursor **out);
/* 0 with k/v set, CAIRN_ENOTFOUND past the prefix, or a failure. */
int hctx_cursor_next(struct hcursor *c, MDB_val *k, MDB_val *v);
/* Deletes the entry the cursor is on. */
int hctx_cursor_del(struct hcursor *c);
/* Puts through the cursor (any key; the prefix is not checked) and leaves
 * it on that key. Puts in key order (a sorted write-back in flush) then
 * stay on the current leaf while the keys fall on it, instead of
 * descending from the root for each (mdb_put does). The cursor is a write
 * cursor of the transaction: close it before apply/flush returns, like
 * every hcursor. hctx_cursor_next after a put goes on from the put key. */
int hctx_cursor_put(struct hcursor *c, const void *k, size_t kn, const void *v, size_t vn);
void hctx_cursor_close(struct hcursor *c);

/* Emits a derived event on the handler's stream: type must be one of its
 * `emits`; tenant and key default (NULL) to the cause's; payload is a
 * msgpack map (copied). It is stored in stream.<handler> with the next
 * dseq, with the cause's seq and time, and fed to consumers in the same
 * transaction. */
int hctx_emit(struct hctx *ctx, const struct event *cause, const char *type,
              const struct cairn_str *tenant, const struct cairn_str *key, const uint8_t *payload,
              size_t n);
/* The dseq the last successful hctx_emit of ctx stored its event at (read
 * it right after that emit). A handler that keeps a document once, in the
 * event that carried it, refers to it by this (view_doc). */
uint64_t hctx_emitted_dseq(const struct hctx *ctx);
/* The payload of the event at dseq of the handler's own stream, in the open
 * transaction (events emitted earlier in it included): 0 with *p, *n set
 * (valid as hctx_get's value: until the next write), CAIRN_ENOTFOUND, or a
 * failure. */
int hctx_stream_payload(struct hctx *ctx, uint64_t dseq, const uint8_t **p, size_t *n);

/* The handler's configuration object (the "handlers.<name>" section of
 * the engine config; an empty object when absent). Borrowed. */
const json_t *hctx_config(struct hctx *ctx);
/* Per-handler scratch the handler may set in open (freed by its close). */
void **hctx_user(struct hctx *ctx);
/* The handler this context belongs to. */
const struct handler *hctx_handler(struct hctx *ctx);

/* ====================================================================== reading (routes) */

/* The snapshot transaction (valid during the route call). */
MDB_txn *hread_txn(struct hread *rd);
/* Opens the handler's own DBI "<handler>.<name>" in the snapshot;
 * CAIRN_ENOTFOUND when it does not exist yet (nothing derived). */
int hread_db(struct hread *rd, const char *name, MDB_dbi *dbi);
/* The payload of the event at dseq of the handler's own stream, in the
 * snapshot (hctx_stream_payload's twin for routes and view_doc): 0 with
 * *p, *n set (valid while the snapshot is), CAIRN_ENOTFOUND, or a failure. */
int hread_stream_payload(struct hread *rd, uint64_t dseq, const uint8_t **p, size_t *n);
/* The caller's tenant, or NULL when the caller may see every tenant (an
 * admin without ?tenant=, or --insecure-no-auth). */
const char *hread_tenant(struct hread *rd);
/* A query parameter, percent-decoded into out; false when absent. */
bool hread_param(struct hread *rd, const char *name, char *out, size_t cap);
/* The log seq the snapshot reflects (put it in answers as "seq"). */
uint64_t hread_seq(struct hread *rd);

/* ====================================================================== helpers */

/* Key layout shared by views: tlen u8 | tenant | rest. Returns length. */
size_t hkey_make(uint8_t *out, size_t cap, const struct cairn_str *tenant,
                 const struct cairn_str *rest);
/* Splits such a key; false when malformed. */
bool hkey_split(const uint8_t *k, size_t n, struct cairn_str *tenant, struct cairn_str *rest);

/* msgpack map lookups (NULL / false when absent or of another type). */
const msgpack_object *mp_get(const msgpack_object *map, const char *key);
/* mp_get of nk keys in one pass over the map: out[i] = mp_get(map,
 * keys[i]). For a handler reading several fields of one document (a
 * pass each was ~100 instructions). */
void mp_get_many(const msgpack_object *map, const char *const *keys, size_t nk,
                 const msgpack_object **out);
bool mp_str(const msgpack_object *o, struct cairn_str *out);
bool mp_num(const msgpack_object *o, double *out);
bool mp_i64(const msgpack_object *o, int64_t *out);
bool mp_bool(const msgpack_object *o, bool *out);
/* Path lookup: mp_path(body, "data", "object", "customer", NULL). */
const msgpack_object *mp_path(const msgpack_object *map, ...);
/* str equality with a C string. */
bool mp_str_eq(const msgpack_object *o, const char *s);

/* ====================================================================== write-back caches */

/* A handler's cache of view documents between flushes (the `flush` member):
 * entries found by their view key, and the list of those changed since the
 * last flush. A handler's entry type starts with a struct hentry, allocated
 * by the handler (calloc, hash/vn set, mem holding the key first); the
 * cache frees entries with hentry_free (mem and the allocation). */
struct hentry {
    uint64_t hash;        /* hcache_hash of the key */
    uint32_t vn;          /* the key is mem.data[0..vn) */
    bool dirty;           /* listed for the next flush */
    struct cairn_buf mem; /* the key, then whatever the handler keeps */
};

/* A slot keeps its entry's hash next to the pointer, so a probe past
 * another key does not load that entry (a cache miss each, on big
 * caches). The hash of an empty slot means nothing. */
struct hslot {
    uint64_t hash;
    struct hentry *e;
};

struct hcache {
    struct hslot *slots; /* open addressing, linear probing; a power of 2 */
    size_t nslots, count;
    struct hentry **dirty; /* changed since the last flush, in order */
    size_t ndirty, dirty_cap;
    struct hentry **fresh; /* where the entry hcache_get_or_new made goes */
    uint64_t gen;          /* bumped whenever entries are freed (hcache_clear) */
    /* hcache_prefetch's last three keys: the hash, the table's size then
     * (0: none), the entry once found (valid while gen is unchanged) */
    struct hcache_pf {
        uint64_t h;
        size_t nslots;
        const struct hentry *e;
        uint64_t gen;
    } pf[3];
    unsigned npf;
};

uint64_t hcache_hash(const uint8_t *k, size_t n);
/* The slot of key k (*hash set): *slot is its entry, or NULL where a new
 * one goes — store it there with hcache_store, before any other call on
 * the cache. */
int hcache_slot(struct hcache *c, const uint8_t *k, size_t n, uint64_t *hash,
                struct hentry ***slot);
/* Stores new entry e in the empty slot hcache_slot gave, and counts it. */
void hcache_store(struct hcache *c, struct hentry **slot, struct hentry *e);
/* The entry of key k (*fresh false), or a new one (*fresh true): `size`
 * bytes, zeroed (a handler's entry type, starting with its struct hentry),
 * with hash and vn set and mem (maximum `max`) holding the key. A new
 * entry is not in the cache yet: the caller fills it (from its stored
 * document), then stores it with hcache_add — before any other call on the
 * cache — or frees it with hentry_free. */
int hcache_get_or_new(struct hcache *c, const uint8_t *k, size_t n, size_t size, size_t max,
                      struct hentry **out, bool *fresh);
/* Stores the fresh entry hcache_get_or_new just returned. */
void hcache_add(struct hcache *c, struct hentry *e);
/* The entry of key k, or NULL (no insertion). */
struct hentry *hcache_find(struct hcache *c, const uint8_t *k, size_t n);
/* For a handler's prefetch (struct handler): one step for each of the
 * last three keys it was given (k NULL: none for this input) — the slot of
 * this one, the entry of the one before, the first lines of the entry's
 * memory (its key and what follows) of the one before that — so the
 * lookups hcache_get_or_new makes of them a few inputs later find those
 * lines in the cache instead of waiting for each in turn. Reads only; an
 * entry freed since (gen moved) is not touched. */
void hcache_prefetch(struct hcache *c, const uint8_t *k, size_t n);
/* Lists e for the next flush (once). */
int hcache_mark(struct hcache *c, struct hentry *e);
/* Sorts the dirty list by key (LMDB's order): a flush putting them in
 * that order walks the B-tree once instead of from a cold root per put. */
void hcache_sort_dirty(struct hcache *c);
/* For a loop writing the dirty list back, at position i: loads the
 * entry 8 ahead, and the first two lines of the memory of the one 4 ahead
 * (its entry loaded by then). A flush visits thousands of entries, each a
 * cache miss or two once the sort has moved on. */
static inline void hcache_prefetch_dirty(const struct hcache *c, size_t i)
{
    if (i + 8 < c->ndirty)
        __builtin_prefetch(c->dirty[i + 8]);
    if (i + 4 < c->ndirty) {
        const uint8_t *m = c->dirty[i + 4]->mem.data;
        __builtin_prefetch(m);
        __builtin_prefetch(m + 64);
    }
}
/* Writes one changed entry back through cur (a handler's own encoding of
 * its in-memory form). */
typedef int (*hcache_write_fn)(struct hctx *ctx, struct hcursor *cur, struct hentry *e);
/* The flush of a cache: writes every entry changed since the last flush
 * into DBI db in key order through one cursor — with write, or, when it
 * is NULL, the entry's key to the rest of its mem as is (a cache whose
 * entries hold their stored value: subscriptions, geofence's order
 * records) — and lists none as changed after, even when a write fails
 * (the transaction then aborts and the engine reopens the handlers).
 * Then, when the cache holds more than keep_max entries, frees them all:
 * every one is stored, and the next transaction loads what it needs. */
int hcache_flush(struct hctx *ctx, struct hcache *c, unsigned db, hcache_write_fn write,
                 size_t keep_max);
/* Frees every entry; the cache is empty (and usable) after. */
void hcache_clear(struct hcache *c);
/* Entries held by all the caches of the process (added, not yet cleared):
 * the engine ends a replay or catch-up transaction when they pass its
 * bound (engine.h, ENGINE_CACHE_ENTRIES_MAX), so the handlers' memory
 * stays bounded however many inputs a transaction may take. Process-wide:
 * two engines in one process end their transactions on the sum (earlier,
 * never later). */
size_t hcache_live(void);
/* hcache_clear, and the dirty list too (close). */
void hcache_free(struct hcache *c);

/* A set of a DBI's keys, as 64-bit hashes, to skip reads that would find
 * nothing (a resource or an alert never seen before: every one of a first
 * discovery). Built by one scan of the DBI the first time hkset_maybe is
 * asked (not in open: commands that never read do not pay for it) and
 * added to by the handler on every put of a new key. A key not in the set
 * has no value; a key in it may (a hash collision, or a value deleted
 * since: keys are never removed), and is read as before. Past HKSET_MAX
 * keys, or without memory, the set is dropped and every key "may" exist:
 * the state is the same either way. Zero-initialise; hkset_free. */
#define HKSET_MAX ((size_t)1 << 24) /* 16 M keys: a 256 MiB table */
struct hkset {
    uint64_t *t; /* open addressing; 0 marks a free slot */
    size_t n, cap;
    bool loaded; /* built (by one scan of the DBI) */
    bool off;    /* not tracked: every key may exist */
    /* NULL: a set of whole keys. Else a set of key prefixes: the scan
     * adds the first prefix(k, n) bytes of each key, and the handler adds
     * and asks prefixes (alerts: tenant + metric of its bymetric keys). */
    size_t (*prefix)(const uint8_t *k, size_t n);
};
/* Adds key k (never fails: the set is dropped instead). */
void hkset_add(struct hkset *ks, const uint8_t *k, size_t n);
/* Whether key k of DBI db may have a value (*maybe); builds the set first. */
int hkset_maybe(struct hctx *ctx, struct hkset *ks, unsigned db, const uint8_t *k, size_t n,
                bool *maybe);
/* hctx_get, answered CAIRN_ENOTFOUND without a read when the set says the
 * key has no value. */
int hkset_get(struct hctx *ctx, struct hkset *ks, unsigned db, const uint8_t *k, size_t n,
              MDB_val *v);
void hkset_free(struct hkset *ks);
void hentry_free(struct hentry *e);

/* A handler's state layout. A handler whose DBIs changed shape keeps its
 * layout number in a DBI of its own (key "layout" -> u32 BE) and refuses a
 * state written by another layout: applying inputs to DBIs of the old shape
 * as if they had the new one would corrupt them; the state is rebuilt from
 * the log instead. Fill meta, probe, layout and what before hlayout_check. */
struct hlayout {
    unsigned meta;    /* the DBI holding the mark */
    unsigned probe;   /* a DBI every layout writes: non-empty without a mark = older */
    uint32_t layout;  /* this code's layout */
    const char *what; /* named in the refusal: "the <what> state has an older layout" */
    bool written;     /* the mark is in the state */
};
/* In open: 0 when the state has this layout or is empty; CAIRN_EINVAL,
 * with "cairn: the <what> state has an older layout: rebuild the state from
 * the log (cairn replay)" on stderr, otherwise. */
int hlayout_check(struct hctx *ctx, struct hlayout *l);
/* In flush: puts the mark, the first time only. */
int hlayout_mark(struct hctx *ctx, struct hlayout *l);

/* A packer writing into a cairn_buf; a failed append marks the buffer and
 * mpw_finish reports it, so callers pack without checking each call. */
struct mpw {
    msgpack_packer pk;
    struct cairn_buf *buf;
    int err;
};
void mpw_init(struct mpw *w, struct cairn_buf *buf);
void mpw_str(struct mpw *w, const char *s);
void mpw_strn(struct mpw *w, const struct cairn_str *s);
/* key then value helpers for maps */
void mpw_kv_str(struct mpw *w, const char *k, const struct cairn_str *v); /* nil if v->p NULL */
void mpw_kv_cstr(struct mpw *w, const char *k, const char *v);            /* nil if NULL */
void mpw_kv_i64(struct mpw *w, const char *k, int64_t v);
void mpw_kv_u64(struct mpw *w, const char *k, uint64_t v);
void mpw_kv_num(struct mpw *w, const char *k, double v);
void mpw_kv_bool(struct mpw *w, const char *k, bool v);
void mpw_kv_time(struct mpw *w, const char *k, int64_t ns);             /* RFC 3339 string */
void mpw_kv_obj(struct mpw *w, const char *k, const msgpack_object *o); /* nil if NULL */
void mpw_obj(struct mpw *w, const msgpack_object *o);
int mpw_finish(struct mpw *w);
/* Appends bytes that already are msgpack (a value packed earlier). */
void mpw_raw(struct mpw *w, const void *p, size_t n);

/* ====================================================================== direct packing */

/* Writers of msgpack straight into memory the caller reserved beforehand
 * (cairn_buf_reserve of an upper bound of the document), for the hot
 * paths that pack a whole document at once: no bounds check and no
 * callback per token. Each returns the position after what it wrote.
 * The encodings are msgpack-c's (smallest header, str8 on), so a
 * document packed either way has the same bytes (the digest relies on
 * it). Upper bounds: MPD_HDR_MAX per header or scalar, MPD_TIME_MAX per
 * time. */
#define MPD_HDR_MAX 9
#define MPD_TIME_MAX 48

static inline uint8_t *mpd_be(uint8_t *o, uint8_t tag, uint64_t v, int bytes)
{
    *o++ = tag;
    for (int i = bytes - 1; i >= 0; i--)
        *o++ = (uint8_t)(v >> (8 * i));
    return o;
}

static inline uint8_t *mpd_map(uint8_t *o, uint32_t n)
{
    if (n < 16) {
        *o++ = (uint8_t)(0x80 | n);
        return o;
    }
    return n < 65536 ? mpd_be(o, 0xde, n, 2) : mpd_be(o, 0xdf, n, 4);
}

static inline uint8_t *mpd_array(uint8_t *o, uint32_t n)
{
    if (n < 16) {
        *o++ = (uint8_t)(0x90 | n);
        return o;
    }
    return n < 65536 ? mpd_be(o, 0xdc, n, 2) : mpd_be(o, 0xdd, n, 4);
}

static inline uint8_t *mpd_str_hdr(uint8_t *o, size_t n)
{
    if (n < 32) {
        *o++ = (uint8_t)(0xa0 | n);
        return o;
    }
    if (n < 256)
        return mpd_be(o, 0xd9, n, 1);
    return n < 65536 ? mpd_be(o, 0xda, n, 2) : mpd_be(o, 0xdb, n, 4);
}

static inline uint8_t *mpd_raw(uint8_t *o, const void *p, size_t n)
{
    if (n)
        memcpy(o, p, n);
    return o + n;
}

static inline uint8_t *mpd_strn(uint8_t *o, const char *s, size_t n)
{
    return mpd_raw(mpd_str_hdr(o, n), s, n);
}

/* A string key given as a literal: mpd_key(o, "last_seq"). */
#define mpd_key(o, lit) mpd_strn((o), (lit), sizeof(lit) - 1)

static inline uint8_t *mpd_u64(uint8_t *o, uint64_t v)
{
    if (v < 128) {
        *o++ = (uint8_t)v;
        return o;
    }
    if (v < 256)
        return mpd_be(o, 0xcc, v, 1);
    if (v < 65536)
        return mpd_be(o, 0xcd, v, 2);
    return v < (1ull << 32) ? mpd_be(o, 0xce, v, 4) : mpd_be(o, 0xcf, v, 8);
}

static inline uint8_t *mpd_i64(uint8_t *o, int64_t v)
{
    if (v >= -32) /* msgpack-c packs non-negative values unsigned */
        return v < 0 ? (*o = (uint8_t)(int8_t)v, o + 1) : mpd_u64(o, (uint64_t)v);
    if (v >= -128)
        return mpd_be(o, 0xd0, (uint64_t)v, 1);
    if (v >= -32768)
        return mpd_be(o, 0xd1, (uint64_t)v, 2);
    return v >= INT32_MIN ? mpd_be(o, 0xd2, (uint64_t)v, 4) : mpd_be(o, 0xd3, (uint64_t)v, 8);
}

static inline uint8_t *mpd_bool(uint8_t *o, bool v)
{
    *o = v ? 0xc3 : 0xc2;
    return o + 1;
}

static inline uint8_t *mpd_nil(uint8_t *o)
{
    *o = 0xc0;
    return o + 1;
}

/* An RFC 3339 time string (cairn_time_format), as mpw_kv_time writes it. */
static inline uint8_t *mpd_time(uint8_t *o, int64_t ns)
{
    char t[MPD_TIME_MAX];
    size_t n = cairn_time_format(ns, t, sizeof t);
    return mpd_strn(o, t, n);
}

/* The length of the msgpack object at p (n bytes available); 0 when it
 * is truncated or malformed. Any nesting (no recursion). */
size_t mp_raw_len(const uint8_t *p, size_t n);

/* The value of `key` in the msgpack map at p (n bytes), decoded into
 * *out, read from the bytes without decoding the map: for handlers
 * reading a few fields of a payload the engine did not decode
 * (derived_raw, raw_inputs). Scalars only (a string points into p); false
 * when the key is missing (the first such key decides, as mp_get), its
 * value is an array or a map, or the bytes are malformed. */
bool mp_raw_get(const uint8_t *p, size_t n, const char *key, msgpack_object *out);
/* mp_raw_get of nk keys (at most 64) in one pass over the bytes: bit i
 * of the result is mp_raw_get's answer for keys[i] (out[i] its value),
 * and bit i of *present (when not NULL) whether keys[i] is there with any
 * value. */
uint64_t mp_raw_fields(const uint8_t *p, size_t n, const char *const *keys, size_t nk,
                       msgpack_object *out, uint64_t *present);

/* Decodes the msgpack object at p (n bytes available) into *out, its
 * arrays and maps allocated from zone, strings pointing into p (an empty
 * one too: never NULL). The same objects as msgpack_unpack, and it
 * refuses what msgpack_unpack refuses (truncated, 0xc1, containers nested
 * deeper than 32), in ~60 % of its instructions. *used (if not NULL):
 * the object's length; bytes after it are left alone. 0, or CAIRN_EINVAL
 * when malformed (or out of memory): *out is then unspecified. */
int mp_unpack(const uint8_t *p, size_t n, msgpack_zone *zone, msgpack_object *out, size_t *used);

#endif
