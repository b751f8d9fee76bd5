/*
 * proj.h — DATA/state: everything derived from the log.
 *
 * DBIs of DATA/state:
 *
 *   meta              "checkpoint" -> last applied log seq (u64 BE)
 *                     "version"    -> u32 BE (PROJ_FORMAT_VERSION)
 *   <handler>.<name>  owned by one handler (hctx_db); layout its own
 *   stream.<handler>  dseq (u64 BE) -> derived envelope (msgpack map):
 *                     stream str · dseq u64 · cause u64 · type str ·
 *                     tenant str · key str · time i64 · payload map
 *
 * The checkpoint is written in the same transaction as the state it
 * covers: after a crash the state is exactly "the log up to checkpoint",
 * and the engine continues from checkpoint + 1 — each input applied once.
 *
 * One thread writes (the engine, on the log writer thread); readers use
 * read-only snapshots (MVCC) and never block it.
 */
#ifndef CAIRN_PROJ_H
#define CAIRN_PROJ_H

#include "common.h"
#include "handler.h"

#define PROJ_FORMAT_VERSION 1
/* The state's first map (it grows ahead, see proj_begin). The whole map
 * is reserved on disk (proj.c, "the map and the disk"), so it starts
 * small: a fresh state takes 64 MiB of disk, not its pages. */
#define PROJ_MAP_SIZE_INITIAL (64ull << 20)
#define PROJ_STREAM_PREFIX "stream."

struct proj;

struct proj_config {
    const char *dir; /* the DATA/state directory (created unless readonly) */
    bool readonly;
    /* 0: PROJ_MAP_SIZE_INITIAL; grows by itself. Unless readonly, the
     * whole map is reserved on disk: do not ask for more than needed. */
    size_t map_size;
    /* Commits without fsync (MDB_NOSYNC): for a replay into a fresh
     * directory, which is thrown away unless it completes; proj_sync
     * makes it durable at the end. A system crash may corrupt such an
     * environment, so nothing else may use it. */
    bool nosync;
};

int proj_open(struct proj **out, const struct proj_config *cfg);
void proj_close(struct proj *p);
/* Flushes every commit to disk (for an environment opened nosync), and
 * gives the map's pages past the last used one back to the file system (a
 * later transaction reserves them again before it writes). */
int proj_sync(struct proj *p);
/* proj_sync's first half: gives the unused pages back and starts the
 * write-back (cairn_env_sync_start); proj_sync then waits for it. The
 * caller frees what it no longer needs in between (engine_replay). */
void proj_sync_start(struct proj *p);
struct cairn_env *proj_env(struct proj *p);

/* ====================================================================== writing (the engine) */

/* Begins the state write transaction all hctx calls go to. Grows the map
 * first when it is 3/4 used. CAIRN_EIO when the map cannot be reserved
 * on disk (full disk; proj.c says why): nothing was written. */
int proj_begin(struct proj *p);
/* Writes the checkpoint and commits. CAIRN_EMAPFULL: already aborted;
 * call proj_grow and redo the batch. */
int proj_commit(struct proj *p, uint64_t checkpoint);
void proj_abort(struct proj *p);
/* Doubles the map, reserving it on disk first: CAIRN_EIO (the map stays
 * as it was) when the disk has no room. No transaction may be open. After
 * an aborted transaction that filled the map it also learns that
 * transaction's pages per write, so proj_txn_full ends the redo in time. */
int proj_grow(struct proj *p);
/* The last committed checkpoint (0: nothing applied). */
uint64_t proj_checkpoint(struct proj *p);
/* Puts and deletes handlers made in the open transaction (hctx_put, hctx_del,
 * derived events): how big it is getting. */
uint64_t proj_txn_writes(const struct proj *p);
/* The open transaction should commit now: it made max_writes writes, or
 * what its writes may have added to the file could soon fill the map (a
 * map that fills aborts the transaction; the next proj_begin grows it). */
bool proj_txn_full(const struct proj *p, uint64_t max_writes);
/* proj_txn_full as if the transaction had made `writes` writes (the
 * parallel apply counts the writes of the runs that are complete, so its
 * commit points do not depend on the threads' timing). */
bool proj_txn_full_at(const struct proj *p, uint64_t writes, uint64_t max_writes);

/* A handler's context. Created once; its DBIs are opened by the
 * handler's open() inside a proj_begin/proj_commit pair. */
int proj_hctx_new(struct proj *p, const struct handler *h, const json_t *config, struct hctx **out);
void proj_hctx_free(struct hctx *ctx);
/* Forgets the DBIs and scratch of ctx (after the handler's close), so its
 * open can run again. */
void proj_hctx_reset(struct hctx *ctx);

/* Derived events emitted through ctx since the last proj_hctx_clear, in
 * emission order; borrowed until then, and until the next emit. Their
 * body is NULL until proj_hctx_decode. */
size_t proj_hctx_emitted(struct hctx *ctx, const struct event **evs);
/* Decodes the body of the i-th event proj_hctx_emitted returned (only
 * the ones some handler consumes need it). CAIRN_EINVAL: not msgpack. */
int proj_hctx_decode(struct hctx *ctx, size_t i);
void proj_hctx_clear(struct hctx *ctx);
/* How many events ctx emitted since the last proj_hctx_clear (without
 * fixing their pointers, as proj_hctx_emitted does). */
size_t proj_hctx_nemitted(const struct hctx *ctx);
/* A new input begins for ctx: the per-input emit limit
 * (CAIRN_EMIT_PER_EVENT_MAX) counts from here. Only needed when emitted
 * events of several inputs are kept (the engine's parallel apply);
 * proj_hctx_clear also starts a new input. */
void proj_hctx_mark(struct hctx *ctx);
/* Pipelined parallel apply: a context keeps PROJ_EMIT_SETS sets of
 * emitted events, so one thread can read the events of a run while
 * another goes on emitting those of later runs. proj_hctx_select makes
 * set `set` the current one (the one emits go to and proj_hctx_emitted,
 * _decode, _clear, _nemitted and _mark work on; set 0 until then and
 * after proj_hctx_reset); proj_hctx_set_events and proj_hctx_set_decode
 * are proj_hctx_emitted and proj_hctx_decode for any set (borrowed until
 * it is cleared), and touch no other set; proj_hctx_set_clear empties one.
 * Only the thread applying the context selects and emits; a set is read
 * by another only once the run that filled it is done. */
#define PROJ_EMIT_SETS 3
void proj_hctx_select(struct hctx *ctx, unsigned set);
size_t proj_hctx_set_events(struct hctx *ctx, unsigned set, const struct event **evs);
int proj_hctx_set_decode(struct hctx *ctx, unsigned set, size_t i);
void proj_hctx_set_clear(struct hctx *ctx, unsigned set);
/* The writes (puts, deletes, stream appends) ctx made since it was made:
 * a count that depends only on the events it applied. */
uint64_t proj_hctx_writes(const struct hctx *ctx);

/* Prefaulting the map ahead of a transaction's writes (see "populating
 * the map" in env.c). proj_prefault_range, on the transaction's thread:
 * the pages it and the next may take — past the last committed one, twice
 * as many as its writes so far at the learned pages per write, or as the
 * most a transaction has added, plus a lead. proj_prefault, on another thread
 * while the transaction writes (the engine's apply worker during the
 * flushes): makes pages [from, to) present and writable, lowest first,
 * until *stop. Changes no byte of the state. */
void proj_prefault_range(const struct proj *p, uint64_t *from, uint64_t *to);
void proj_prefault(struct proj *p, uint64_t from, uint64_t to, const _Atomic bool *stop);
/* While a transaction writes, on any thread (it takes the state lock in
 * shared mode to read where the transaction is): keeps the pages just past
 * its last one populated, in batches, so that the writes do not fault on
 * them one by one. A replay's apply phase takes ~7 400 fresh pages on 1M
 * events (the streams, violations, geofence): each first write was a
 * fault reading the reserved block (zeroes) and preparing it for writing,
 * 6-7 us; populated 1 024 at a time from the reading thread, ~5 us, and
 * the apply threads no longer stop for them: pairs against without, wall
 * 0.949 and 0.965, CPU 0.943 and 0.966 (10 pairs each). */
void proj_prefault_ahead(struct proj *p);

/* Shared mode: handlers apply on two threads in the same
 * write transaction; each state call (hctx_*) then takes a lock for its
 * duration, and hctx_emit keeps the envelope in the context instead of
 * appending it to the stream (its dseq is known: the stream's head plus
 * what is kept), so an apply that only emits never takes the lock;
 * hctx_stream_payload finds kept events too. proj_hctx_sync appends the
 * kept envelopes (taking the lock a few puts at a time): the engine
 * calls it at the end of each handler's run, on the thread that applied
 * it, and every context must be synced before shared mode ends (an emit
 * outside it appends at once, after the head). Set and cleared by the
 * thread owning the transaction while no other thread applies.
 * proj_hctx_reset (and the first emit of a later transaction) drops what
 * an aborted transaction kept. */
void proj_set_shared(struct proj *p, bool on);
int proj_hctx_sync(struct hctx *ctx);
/* Since ctx was made: its state calls in shared mode (each takes the state
 * lock), how many of them found the lock held by the other thread, and
 * the time they waited for it in all (monotonic clock) — the contention
 * between the two apply threads. */
void proj_hctx_lock_stats(const struct hctx *ctx, uint64_t *calls, uint64_t *waits,
                          uint64_t *wait_ns);

/* ====================================================================== reading */

/* A read-only snapshot of the state. */
struct proj_snap;
int proj_snap_begin(struct proj *p, struct proj_snap **out);
void proj_snap_end(struct proj_snap *s);
MDB_txn *proj_snap_txn(struct proj_snap *s);
uint64_t proj_snap_checkpoint(struct proj_snap *s);
/* Opens a DBI by full name ("devices.view", "stream.orders") for reading.
 * CAIRN_ENOTFOUND when it does not exist (yet). */
int proj_snap_dbi(struct proj_snap *s, const char *name, MDB_dbi *dbi);

/* Names of the derived streams (without the prefix), sorted; the caller
 * frees the array with free() (strings live in it). */
int proj_snap_streams(struct proj_snap *s, char ***names, size_t *n);

/* A decoded derived envelope; pointers into the stored value. */
struct proj_derived {
    struct cairn_str stream, type, tenant, key;
    uint64_t dseq, cause;
    int64_t time;
    const uint8_t *payload;
    size_t payload_len;
};
int proj_derived_decode(const uint8_t *p, size_t n, struct proj_derived *d);
/* {"stream":…,"dseq":…,"cause":…,"type":…,"tenant":…,"key":…,"time":…,"payload":{…}} */
int proj_derived_json(const struct proj_derived *d, struct cairn_buf *out);

/* The context of a handler route (handler.h): filled by the API. */
struct hread {
    struct proj_snap *snap;
    const struct handler *h;
    const char *tenant; /* NULL: every tenant */
    bool (*param)(void *arg, const char *name, char *out, size_t cap);
    void *arg;
    MDB_dbi stream; /* the handler's stream, once hread_stream_payload opened it */
    bool stream_open;
};

/* SHA-256 over every DBI of the snapshot in name order, and every entry in
 * key order (length-prefixed), so equal states give equal digests. */
int proj_snap_digest(struct proj_snap *s, uint8_t out[32]);

#endif
