/*
 * engine.h — turning producer input into log inputs (ingest).
 *
 * An input is one JSON object (or the same object in msgpack):
 *
 *   {"type": "telemetry", "tenant": "acme", "key": "dev-17", "id": "msg-123",
 *    "time": "2026-11-21T10:00:00.250Z", "expected_seq": 41, "payload": {…}}
 *
 * type, tenant and payload are required; key defaults from the payload (see
 * ingest_default_key); time is RFC 3339 or integer epoch nanoseconds and
 * defaults to the ingest time; id is the idempotency id; expected_seq is the
 * seq of the last event of tenant + key the producer saw (0: none).
 * Unknown top-level fields are refused, so a typo ("tennant") is an error,
 * not a silently defaulted value.
 */
#ifndef CAIRN_ENGINE_H
#define CAIRN_ENGINE_H

#include "common.h"
#include "handler.h"
#include "log.h"
#include "proj.h"
#include "schemas.h"

struct ingest;

struct ingest_config {
    const char *schema_dir;  /* NULL: the built-in default (CAIRN_SCHEMA_DIR) */
    size_t payload_max;      /* 0: CAIRN_PAYLOAD_MAX_DEFAULT */
    bool allow_engine_types; /* accept `tick` in parsed input (tools, tests) */
    /* Handlers whose `validate` refuses bad control inputs at ingest
     * (NULL: handler_table). */
    const struct handler *const *handlers;
};

/* Inputs per state transaction while catching up or replaying: big enough
 * to amortise the commit and let the write-back caches (flush) put each
 * entity once for many events, while the handlers' memory stays bounded
 * by the cache bound below. Each transaction ends with a flush that puts
 * every entity the caches changed (16 000 devices, 16 000 orders, 22 000
 * customers in bench/replay's 1M-event log, whatever the transaction's
 * size), and after a commit every page those puts touch is copied again
 * (copy on write), the old ones left free: fewer transactions are faster.
 * 262 144 replayed a 1M-event log in 12 % less CPU than 65 536; 1 048 576
 * (session 15) made it one transaction, 11 % less wall time than two.
 * Since session 17 it is 4 194 304: bench/replay's 3M-event log is one
 * transaction instead of three, 4 alternated pairs: wall 4.24 -> 3.50 s
 * (medians), the flushes 0.89 -> 0.27 s, the final sync 0.45 -> 0.30, the
 * apply phase even; the state 223 MB instead of 380 (26 000 of its pages
 * free), the peak RSS 1.63 GB instead of 1.77 (fewer pages of the state's
 * map). The digest is the same either way. Bigger logs end their
 * transactions at the write bound or at the cache bound, whichever comes
 * first. Live batches are far smaller. */
#define ENGINE_APPLY_BATCH 4194304
/* ... and at most about this many handler writes (puts, deletes, derived
 * events) per state transaction: inputs that each write a lot (a discovery
 * of 1 000 resources) would otherwise make one transaction of ever more
 * dirty pages; past LMDB's dirty list (131 072 pages) it spills them
 * (with MDB_WRITEMAP only a flag is cleared, and a spilled page touched
 * again is listed again, not copied). It was 131 072 writes, then 262 144
 * (bench/compliance, whose first discovery puts to random keys, made 6
 * commits instead of 7–8 and evaluated as fast or faster), then, with the
 * batch above, 1 048 576: bench/replay's 1M-event log makes 318 886.
 * Checked after each input, so a single input may go over it.
 * proj_txn_full also ends a transaction early when its writes could fill
 * the state's map (a full map aborts the batch). */
#define ENGINE_APPLY_WRITES_MAX 1048576
/* ... and it ends once the handlers' write-back caches hold more than this
 * many entries (hcache_live: every entity a transaction touched stays in
 * memory until its flush; after it, each cache keeps at most its own
 * maximum, 65 536-262 144 entries, 851 968 in all — below this bound, so
 * a transaction always has room to grow). With the batch above that
 * bounds the handlers' memory about where 1 048 576 inputs did before: a
 * transaction of inputs that each name a new device, order or customer
 * ends after 1.2-2.1 million of them (a few hundred bytes to a few KB
 * each), not 4 million. bench/replay's logs keep ~150 000 (3M events).
 * engine_config.cache_entries_max overrides it (tests). */
#define ENGINE_CACHE_ENTRIES_MAX 2097152

/* The tenant the engine appends its ticks under. Tenants starting with
 * '_' are reserved for the engine and refused from producers. */
#define ENGINE_TENANT "_engine"

/* Loads the schemas. CAIRN_EINVAL with e when a schema file is bad. */
int ingest_open(struct ingest **out, const struct ingest_config *cfg, struct cairn_error *e);
void ingest_close(struct ingest *ing);
const struct schema_set *ingest_schemas(const struct ingest *ing);
/* The schema directory in use (borrowed). */
const char *ingest_schema_dir(const struct ingest *ing);

/* One accepted input: `in` points into `mem` (cap bytes), which the event
 * owns. An event is zeroed before its first parse (`= {0}`, calloc); a
 * parse into an event that holds an earlier input reuses its memory, so
 * a caller that parses request after request into the same events (cairn
 * append's chunks, bench/ingest) allocates once per event, not once per
 * input: 1 024 frees then 1 024 mallocs of ~250 bytes per request went
 * past glibc's per-thread cache into its bins, ~12 % of a parsing
 * thread's CPU. A refused input leaves the event without memory. */
struct ingest_event {
    struct log_input in;
    uint8_t *mem;
    size_t cap;
};

/* Parses one JSON text into ev (zeroed, or holding an earlier input). On
 * success fills ev (release with ingest_event_deinit, or parse the next
 * input into it). On bad input returns CAIRN_EINVAL with e naming the
 * field (a JSON pointer) and the reason. `source` labels where it came from
 * ("cli", "http"); `now` is the default event time. */
int ingest_parse_json(struct ingest *ing, const char *text, size_t n, const char *source,
                      int64_t now, struct ingest_event *ev, struct cairn_error *e);
/* The same for a caller bound to `tenant` (an HTTP token; NULL or "": no
 * binding): an input without a tenant gets it, one naming another tenant
 * is refused with "forbidden" at /tenant unless any_tenant. */
int ingest_parse_json_for(struct ingest *ing, const char *text, size_t n, const char *source,
                          int64_t now, const char *tenant, bool any_tenant, struct ingest_event *ev,
                          struct cairn_error *e);
/* The same for one msgpack-encoded input object at p (n bytes available).
 * *used (if not NULL) gets the bytes the object took — also when the object
 * decodes but is not a valid input, so a batch can go on after it; it is
 * left alone when the bytes at p do not decode (not one complete msgpack
 * value, or one no JSON can hold). */
int ingest_parse_msgpack(struct ingest *ing, const uint8_t *p, size_t n, size_t *used,
                         const char *source, int64_t now, struct ingest_event *ev,
                         struct cairn_error *e);
/* ingest_parse_msgpack bound to `tenant`, as ingest_parse_json_for. */
int ingest_parse_msgpack_for(struct ingest *ing, const uint8_t *p, size_t n, size_t *used,
                             const char *source, int64_t now, const char *tenant, bool any_tenant,
                             struct ingest_event *ev, struct cairn_error *e);
/* The same for an already parsed object (borrowed). `engine_only` allows
 * types only the engine may append (tick). */
int ingest_parse_value(struct ingest *ing, const json_t *obj, const char *source, int64_t now,
                       bool engine_only, struct ingest_event *ev, struct cairn_error *e);
/* ingest_parse_value bound to `tenant`, as ingest_parse_json_for. */
int ingest_parse_value_for(struct ingest *ing, const json_t *obj, const char *source, int64_t now,
                           bool engine_only, const char *tenant, bool any_tenant,
                           struct ingest_event *ev, struct cairn_error *e);
void ingest_event_deinit(struct ingest_event *ev);

/* Writes the entity key a payload of `type` implies into out (cap bytes):
 *   telemetry, location  payload.device_id
 *   order                payload.order_id
 *   payment              data.object.customer, or data.object.id when the
 *                        object is a customer
 *   metric               the series: name{a="x",b="y"} (labels sorted)
 *   discovery            account_id/region
 * Returns the length, 0 when the type implies none, or CAIRN_ETOOBIG. */
int ingest_default_key(const char *type, const json_t *payload, char *out, size_t cap);
/* The same on the decoded msgpack payload (what ingest itself uses). */
int ingest_default_key_mp(const char *type, const msgpack_object *payload, char *out, size_t cap);

/* Formats a result line of `cairn append` / POST /v1/events:
 * {"line":N,"seq":S} / ,"duplicate":true / {"line":N,"error":{…}}.
 * line 0 omits "line". */
int ingest_result_json(struct cairn_buf *b, unsigned long line, const struct log_result *r,
                       const struct cairn_error *e);

/* ======================================================================
 * The engine: log + state + handlers, applied in log order.
 * ==================================================================== */

struct engine;

struct engine_config {
    const char *data;       /* DATA directory (log/ and state/ inside) */
    const char *state_dir;  /* NULL: DATA/state */
    const char *schema_dir; /* NULL: built-in */
    bool log_readonly;      /* replay --into: read the log only */
    bool allow_engine_types;
    const json_t *config;                  /* the config document, borrowed ({"handlers": {...}}) */
    const struct handler *const *handlers; /* NULL: handler_table */
    uint64_t apply_to;                     /* catch up only to this seq (0: the head) */
    /* Threads applying handlers while catching up or replaying a large
     * range (handler.h, `concurrent`): 1 or 2. 0: the config's
     * "apply_threads", else 2 when the machine has two CPUs or more. The
     * state is the same either way. */
    int apply_threads;
    /* 0: ENGINE_CACHE_ENTRIES_MAX (a transaction's bound on the entries
     * of the handlers' caches) */
    size_t cache_entries_max;
    struct log_config log; /* batch/queue settings (dir is filled in) */
    /* Called on the writer thread after the state applied up to
     * `checkpoint` (the API wakes subscribers and min_seq waiters). Must
     * be quick; may be NULL. */
    void (*on_applied)(void *arg, uint64_t checkpoint);
    void *on_applied_arg;
    /* engine_replay only (may be NULL): the counters of the replay's
     * engine, read just before it closes (bench/replay prints them). */
    struct engine_replay_stats *replay_stats;
};

/* Turns every real of the document with no fraction into an integer
 * (600.0 -> 600): JSON Schema counts it as an integer, as
 * engine_config_check does, while the readers take integers as jansson
 * integers. Call it on a loaded file before checking it (main.c). */
void engine_config_normalize(json_t *doc);
/* Checks a config document (NULL: none) against what its readers accept
 * (config.c): 0, or CAIRN_EINVAL with e->code "config", e->field the JSON
 * pointer of the first bad value and e->message "<pointer>: <reason>".
 * `table`: the registered handlers, whose sections it checks against
 * their config_schema. */
int engine_config_check(const json_t *config, const struct handler *const *table,
                        struct cairn_error *e);

/* Opens the log (and, unless log_readonly, takes the writer lock), the
 * schemas, the state and every handler in dependency order, then brings
 * the state up to the log head (or apply_to). The config is checked first
 * (engine_config_check). A handler cycle is refused with e naming the
 * handlers. */
int engine_open(struct engine **out, const struct engine_config *cfg, struct cairn_error *e);
/* Stops the writer thread, draining its queue (every request answered). */
void engine_stop(struct engine *eng);
/* Stops the writer (if started) and closes everything. */
void engine_close(struct engine *eng);
/* Starts the writer thread; each commit is applied to the state right
 * after it (on the writer thread). */
int engine_start(struct engine *eng);
struct log *engine_log(struct engine *eng);
struct log_writer *engine_writer(struct engine *eng);
struct ingest *engine_ingest(struct engine *eng);
struct proj *engine_proj(struct engine *eng);
/* Applies the log up to `to` (0: the head) to the state. */
int engine_catch_up(struct engine *eng, uint64_t to);
/* Appends one tick with event time `now` through the writer (or directly
 * when the writer is not running). */
int engine_tick(struct engine *eng, int64_t now, int64_t interval_ns);
/* Per-handler counters for /metrics (approximate while running). */
struct engine_handler_stats {
    const char *name;
    uint64_t applied;  /* events given to apply */
    uint64_t apply_ns; /* time spent in apply (one call in 8 timed, scaled) */
    /* Parallel applies (catch-up and replay with apply_threads 2): */
    uint64_t apply_cpu_ns; /* CPU time of its early applies (thread CPU clock) */
    uint64_t flush_cpu_ns; /* CPU time of its flushes after parallel applies */
    uint64_t lock_calls;   /* state calls (each takes the state lock) ... */
    uint64_t lock_waits;   /* ... those that found it taken by the other thread ... */
    uint64_t lock_wait_ns; /* ... and the time they waited for it */
    bool worker;           /* one of the last runs applied it on the second thread */
};
size_t engine_handler_stats(struct engine *eng, struct engine_handler_stats *out, size_t cap);
/* Where a catch-up's or replay's time went, summed over its state
 * transactions (wall clock unless said otherwise). */
struct engine_phase_stats {
    uint64_t transactions;
    uint64_t redone;      /* of them: filled the map, aborted, applied again (proj_grow) */
    uint64_t apply_ns;    /* applying the inputs (both threads) */
    uint64_t flush_ns;    /* the handlers' flushes */
    uint64_t commit_ns;   /* the commits */
    uint64_t wait_ns;     /* parallel: this thread waiting for the worker's run */
    uint64_t read_cpu_ns; /* parallel: this thread reading and decoding the log, CPU */
    uint64_t late_cpu_ns; /* parallel: the late handlers (on this thread), CPU */
    uint64_t stolen;      /* parallel: worker's handler runs this thread applied */
    uint64_t steal_ns;    /* ... and the wall time they took (not in wait_ns) */
    uint64_t sync_ns;     /* engine_replay: the final sync of the new state */
    uint64_t close_ns;    /* engine_replay: the handlers' close, in sync_ns (sync_start first) */
};
void engine_phase_stats(struct engine *eng, struct engine_phase_stats *out);
/* What engine_replay fills in before it returns (engine_config.replay_stats). */
struct engine_replay_stats {
    struct engine_handler_stats handlers[64];
    size_t n;
    struct engine_phase_stats phases;
};
/* The first map of a replay's fresh state, in bytes (0: the default,
 * PROJ_MAP_SIZE_INITIAL), for a log of log_bytes used, a replay up to seq
 * `to` (0: the head) of a log whose head is `head`, and disk_free bytes
 * free where the state goes.
 *
 * A map that doubles is mapped anew each time, and every page touched
 * after that faults again (a replay of 1M events doubled it twice, 64 to
 * 256 MiB); and a transaction whose writes could fill the room left ends
 * early (proj_txn_full: at first it counts a quarter page per write, twice
 * over), so a small first map also cut the first transaction short,
 * adding a flush of every dirty entity. A replay knows roughly how big its
 * state gets: about 0.4 of the log's pages in the mixed workload of
 * bench/replay (40 000 of 95 000 at 1M events, 108 000 of 286 000 at 3M),
 * and how many inputs its first transaction takes (ENGINE_APPLY_BATCH at
 * most). So the map starts at the power of two (times the initial size)
 * above half the log's used bytes plus twice those of the first
 * transaction's inputs — all scaled to `to` — or, when the file system has
 * less than twice that free (the whole map is reserved on disk, proj.c),
 * at the largest such size it has twice free; at the initial size, 0.
 * proj_sync gives back what the replay did not use. bench/replay, 1M
 * events: 1 GiB, one transaction (a 256 MiB first map: two; 64 MiB:
 * three, and two remaps). */
size_t engine_replay_map(uint64_t log_bytes, uint64_t to, uint64_t head, uint64_t disk_free);
/* 0, or the last failure applying the log to the state (retried). */
int engine_apply_error(struct engine *eng);

/* Queues one tick to the running writer without waiting (the serve loop's
 * clock). CAIRN_EBUSY when the queue is full: the next tick comes soon. */
int engine_tick_submit(struct engine *eng, int64_t now, int64_t interval_ns);

/* The handler order the engine uses (borrowed). */
size_t engine_handlers(struct engine *eng, const struct handler *const **order);

/* Orders `table` so every producer precedes its consumers (registry order
 * breaks ties). Refuses unknown versions, bad names and cycles, with e. */
int engine_order(const struct handler *const *table, const struct handler **out, size_t *n,
                 struct cairn_error *e);

/* Rebuilds the state from the log into `into` (a fresh directory), up to
 * seq `to` (0: the head). Its transactions commit without fsync and the
 * result is synced once before this returns 0: a directory left by an
 * interrupted replay (a system crash may have corrupted it) must be
 * removed, never resumed. */
int engine_replay(const struct engine_config *cfg, const char *into, uint64_t to,
                  struct cairn_error *e);

#endif
