/*
 * proj.c — the DATA/state environment: the write transaction, checkpoint,
 * handler contexts (the hctx half of handler.h), derived streams, readers
 * and the digest.
 */
#include "proj.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/futex.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HCTX_DBS_MAX 16
/* Named DBIs in DATA/state: handlers x their DBIs + streams + meta. */
#define PROJ_DBIS_MAX 500

struct proj {
    struct cairn_env *env;
    MDB_dbi meta;
    bool readonly;
    char *dir; /* for messages */
    /* The map (see "the map and the disk"). */
    uint64_t reserved;      /* bytes of the data file reserved on disk */
    bool ahead_failed;      /* a grow ahead failed: warned once, retried at MAP_FULL */
    uint64_t room;          /* pages of the map past the last used one, at begin */
    uint64_t last_pgno;     /* the last used page at begin */
    uint64_t pf_ahead;      /* proj_prefault_ahead populated the pages up to here */
    uint64_t grown_max;     /* most pages a committed transaction added to the file */
    double pages_per_write; /* pages per write a transaction may add (learn_growth) */
    bool learned;           /* pages_per_write was measured */
    bool aborted;           /* the last transaction was aborted (proj_grow learns) */
    MDB_txn *txn;           /* the open write transaction, if any */
    unsigned gen;           /* bumped by every proj_begin */
    uint64_t checkpoint;    /* last committed */
    bool checkpoint_stored; /* meta holds it (else it was never put) */
    uint64_t writes;        /* puts and deletes in the open transaction */
    pthread_mutex_t dbi_mu; /* guards the handle cache below */
    /* Every named DBI of the environment with its handle, opened for the
     * whole environment so any later snapshot may use it. */
    char *names[PROJ_DBIS_MAX];
    MDB_dbi dbis[PROJ_DBIS_MAX];
    size_t ndbis;
    bool dbis_current; /* the cache has every DBI: no refresh before a snapshot */
    /* While handlers apply on two threads (proj_set_shared), every use of
     * the write transaction goes through txn_mu, one state call at a time:
     * LMDB asks that a transaction be used by one thread at a time; the
     * mutex gives that (and orders memory between the two), and the
     * transaction is begun, committed and aborted only by the writer
     * thread, which owns LMDB's writer lock; the worker never opens a
     * transaction of its own. Between its calls a context's values stay
     * valid until its own next write, as in a serial apply: the other
     * thread's calls only touch the other handlers' DBIs, and their pages
     * are not this handler's — with MDB_WRITEMAP (proj_open) LMDB never
     * frees or moves a dirty page it spills, it only clears its flag, and
     * the pages a put allocates are free ones, never a page of another
     * DBI's tree. (The context used to keep the lock from its first call
     * in an apply to the end of that apply: most applies of either thread
     * then held it, and the two threads took turns — 1.27 s of waits in
     * a 3.1 s replay.) Emits do not take it at all in this mode: see
     * "derived streams". The lock spins before it sleeps (txn_lock). */
    bool shared;
    _Atomic int txn_mu; /* 0 free, 1 held, 2 held and a thread may sleep on it */
};

struct proj_snap {
    struct proj *p;
    MDB_txn *txn;
};

/* Derived events kept for their consumers: evs[i]'s type | tenant | key
 * | payload bytes are at mem.data + offs[i] (pointers are set by
 * proj_hctx_emitted, once mem stops growing); bodies[i] is decoded by
 * proj_hctx_decode into zone. */
struct emits {
    struct event *evs;
    size_t *offs;
    msgpack_object *bodies;
    size_t nem, cap;
    size_t nem_base; /* nem when the current input began (proj_hctx_mark) */
    struct cairn_buf mem;
    msgpack_zone zone;
    bool zone_used; /* something was decoded into zone since the last clear */
};

struct hctx {
    struct proj *p;
    const struct handler *h;
    json_t *config;
    void *user;
    MDB_dbi dbs[HCTX_DBS_MAX];
    unsigned ndbs;
    MDB_dbi stream;
    uint64_t stream_head;
    /* A write cursor on the stream, left at its end by each append, so the
     * next MDB_APPEND does not descend from the root (mdb_put opens a
     * cursor per call and searches the tree). LMDB frees a write
     * transaction's cursors when it ends, so it is never closed here: it
     * belongs to the transaction of `gen`. */
    MDB_cursor *scur;
    unsigned gen; /* stream_head and scur are valid for this proj gen */
    /* Shared mode: the envelopes emitted but not yet appended to the
     * stream (proj_hctx_sync), dseqs stream_head - npend + 1 ...
     * stream_head; envelope i is pend.data[pend_end[i-1] .. pend_end[i]). */
    struct cairn_buf pend;
    size_t *pend_end;
    size_t npend, pend_cap;
    /* Shared mode: its state calls (each takes txn_mu), how often one
     * found txn_mu taken by the other thread, and how long it waited for
     * it (see txn_lock). */
    _Atomic uint64_t lock_calls;
    _Atomic uint64_t lock_waits, lock_wait_ns; /* read by /metrics meanwhile */
    /* The derived events emitted since the last clear (em: one of sets,
     * proj_hctx_select), the other sets holding those of earlier runs of
     * a pipelined parallel apply (see struct emits). */
    struct emits sets[PROJ_EMIT_SETS], *em;
    uint64_t writes; /* its puts, deletes and appends since it was made */
    /* Closed hcursors, kept with their LMDB cursor for the next
     * hctx_cursor_open on the same DBI in the same transaction (see
     * there); those of an earlier transaction are freed when met. */
    struct hcursor *idle;
    struct cairn_buf enc;
};

struct hcursor {
    struct hctx *ctx;
    MDB_cursor *c; /* a cursor of the transaction of gen, on dbs[db] */
    unsigned db, gen;
    struct hcursor *next; /* in ctx->idle */
    uint8_t prefix[512];
    size_t pn;
    bool started;
    /* hctx_cursor_put: the database's last key when this cursor first put
     * (tail_known; tail_none: it was empty), then the last key appended. */
    bool tail_known, tail_none;
    uint8_t tail[512];
    size_t tn;
};

static int open_meta(struct proj *p)
{
    MDB_txn *txn;
    int rc = p->readonly ? cairn_env_read_begin(p->env, &txn) : cairn_env_write_begin(p->env, &txn);
    if (rc)
        return rc;
    int mrc = mdb_dbi_open(txn, "meta", p->readonly ? 0 : MDB_CREATE, &p->meta);
    if (!mrc && !p->readonly) {
        uint8_t ver[4] = {0, 0, 0, PROJ_FORMAT_VERSION};
        MDB_val k = {7, "version"}, v = {4, ver};
        mrc = mdb_put(txn, p->meta, &k, &v, MDB_NOOVERWRITE);
        if (mrc == MDB_KEYEXIST)
            mrc = 0;
    }
    MDB_val k = {10, "checkpoint"}, v;
    if (!mrc && mdb_get(txn, p->meta, &k, &v) == 0 && v.mv_size == 8) {
        p->checkpoint = cairn_be64_get(v.mv_data);
        p->checkpoint_stored = true;
    }
    if (mrc) {
        (p->readonly ? cairn_env_read_end : cairn_env_write_abort)(p->env, txn);
        return cairn_mdb_err(mrc);
    }
    return p->readonly ? cairn_env_read_commit(p->env, txn) : cairn_env_write_commit(p->env, txn);
}

/* ====================================================================== the map and the disk
 *
 * The environment is written through its map (MDB_WRITEMAP): LMDB then
 * puts new pages straight into the mapped file instead of into malloc'ed
 * copies it writes out at commit. Per put that saves the search of the
 * transaction's dirty list for every page visited (mdb_mid2l_search, a
 * binary search over tens of thousands of pages in a replay transaction)
 * and at commit the pwrite of every dirty page (the kernel writes the map
 * back; a durable commit still syncs the data before the meta page, so
 * exactly-once holds as before). MDB_NORDAHEAD goes with it: a fault on a
 * fresh page of the map otherwise reads ahead, and the kernel zeroed up to
 * megabytes of never-used pages per fault (a third of a replay's kernel
 * time).
 *
 * The catch: with MDB_WRITEMAP, LMDB extends the data file to the whole
 * map size at every (re)map (ftruncate: a sparse file), and a page written
 * into a hole the disk has no block for fails as SIGBUS, not as an error
 * code. So every byte of the map is reserved on disk (posix_fallocate)
 * before a write transaction may use it:
 *
 *   proj_open   reserves the map before anything is written (open_meta);
 *   proj_grow   reserves the grown size first, then grows the map;
 *   proj_begin  refuses to begin (after begin: before any write) while the
 *               map is larger than what is reserved (another process grew
 *               it, or a grow's reservation failed).
 *
 * A full disk thus surfaces as CAIRN_ENOSPC from open, grow or begin, with a
 * message naming the directory, before anything is written — like a
 * failed commit: the state stays at its last checkpoint and the engine
 * retries with the next batch.
 *
 * Growing ahead. A map that fills in the middle of a transaction
 * (MDB_MAP_FULL) aborts it, and the engine applies the whole batch again
 * after proj_grow — up to 524 288 inputs in a replay. So proj_begin grows
 * the map when less than a quarter of it, or less than twice the biggest
 * transaction so far added to the file, is left. (It was "less than the
 * biggest": a replay's first big transaction, cut short by the estimate
 * below, added 6 228 pages for 139 264 inputs; the next, of 262 144,
 * needed more than the 10 149 left, filled the map in its flush — cached
 * handlers write there, after the estimate's last look — and was applied
 * again: a quarter of the replay's work.) And
 * proj_txn_full tells the engine to commit early when the writes of the
 * open transaction, at the learned pages per write (1/4 until a big
 * transaction was seen; at least 1/64), could take half the room left at
 * begin. The estimate is the last big transaction's pages per write, or
 * half the estimate before it if that is more: it rises at once and
 * falls by halves. (It was the most ever seen. Defining 100 000 fences,
 * ~1 KB of geometry per write, taught 0.275; the location fixes after it
 * add 0 to 0.03 pages per write, yet every transaction of bench/geofence
 * ended on that estimate for good: 15 transactions for 1M fixes, each
 * rewriting every device's record.) A transaction that filled the map
 * anyway teaches it too (see
 * proj_grow): random-keyed views (violation and alert ids are hashes)
 * dirty about a page per put, and an estimate the aborted attempt did not
 * correct let the redo fill the doubled map again. A failed
 * grow ahead only warns (the map in use is reserved; MAP_FULL still comes
 * back to proj_grow).
 *
 * Disk use: the data file is as large as the map, not as its used pages:
 * PROJ_MAP_SIZE_INITIAL at first (kept modest for that reason), then
 * doubled, so up to ~2.7x the pages the state occupies. A replay into a
 * fresh directory starts bigger (engine_replay_map) and gives the unused
 * tail back at its end (proj_sync: a 1M-event replay leaves 81 MB of
 * blocks in a 1 GiB file); LMDB itself truncates the file to the map size
 * the next writer opens it with, never below the used pages.
 * ==================================================================== */

/* Transactions of at least this many writes teach pages_per_write (small
 * ones are dominated by the pages every commit copies). */
#define LEARN_WRITES 4096
#define PAGES_PER_WRITE_FIRST 0.25
#define PAGES_PER_WRITE_MIN (1.0 / 64)
/* What each learning transaction keeps of the estimate before it (see
 * "growing ahead"). */
#define PAGES_PER_WRITE_DECAY 0.5

static uint64_t map_size(struct proj *p)
{
    MDB_envinfo info;
    mdb_env_info(cairn_env_mdb(p->env), &info);
    return info.me_mapsize;
}

/* The map's pages and the last used one (the file's high-water mark:
 * freed pages below it are reused first). */
static void map_pages(struct proj *p, uint64_t *pages, uint64_t *last)
{
    MDB_envinfo info;
    MDB_stat st;
    MDB_env *env = cairn_env_mdb(p->env);
    mdb_env_info(env, &info);
    mdb_env_stat(env, &st);
    *pages = info.me_mapsize / st.ms_psize;
    *last = info.me_last_pgno;
}

/* Reserves [0, size) of the data file on disk. */
static int reserve(struct proj *p, uint64_t size)
{
    int fd;
    if (p->readonly || size <= p->reserved)
        return 0;
    if (mdb_env_get_fd(cairn_env_mdb(p->env), &fd))
        return CAIRN_EDB;
    int err = posix_fallocate(fd, 0, (off_t)size);
    if (err) {
        /* Give back what a partial reservation added past the map (LMDB
         * never uses it): on a full disk every block counts. */
        struct stat st;
        uint64_t map = map_size(p);
        if (!fstat(fd, &st) && (uint64_t)st.st_size > map && ftruncate(fd, (off_t)map)) {
            /* nothing more to do: the blocks stay until the next grow */
        }
        fprintf(stderr,
                "cairn: state %s: cannot reserve %llu MiB of disk for its map: %s; "
                "the state stays at its last checkpoint until space is freed\n",
                p->dir, (unsigned long long)(size >> 20), strerror(err));
        return cairn_errno_err(err);
    }
    p->reserved = size;
    return 0;
}

static void grow_ahead(struct proj *p)
{
    uint64_t pages, last;
    for (int i = 0; i < 8; i++) { /* a few doublings at most; MAP_FULL does the rest */
        map_pages(p, &pages, &last);
        uint64_t room = pages - last - 1;
        if ((room >= pages / 4 && room >= 2 * p->grown_max) ||
            pages * 2 > CAIRN_MAP_SIZE_CEILING / 4096)
            return;
        int rc = proj_grow(p);
        if (rc && !p->ahead_failed)
            fprintf(stderr, "cairn: state %s: growing the map ahead failed: %s (will retry)\n",
                    p->dir, cairn_strerror(rc));
        p->ahead_failed = rc != 0;
        if (rc)
            return;
    }
}

/* After a commit: what it added to the file teaches grow_ahead and
 * proj_txn_full. */
static void learn_growth(struct proj *p)
{
    uint64_t pages, last;
    map_pages(p, &pages, &last);
    uint64_t grown = last > p->last_pgno ? last - p->last_pgno : 0;
    if (grown > p->grown_max)
        p->grown_max = grown;
    if (p->writes < LEARN_WRITES)
        return;
    double per = (double)grown / (double)p->writes;
    if (p->learned && per < p->pages_per_write * PAGES_PER_WRITE_DECAY)
        per = p->pages_per_write * PAGES_PER_WRITE_DECAY;
    p->pages_per_write = per > PAGES_PER_WRITE_MIN ? per : PAGES_PER_WRITE_MIN;
    p->learned = true;
}

bool proj_txn_full_at(const struct proj *p, uint64_t writes, uint64_t max_writes)
{
    double per = p->learned ? p->pages_per_write : PAGES_PER_WRITE_FIRST;
    return writes >= max_writes || (double)writes * per * 2 >= (double)p->room;
}

bool proj_txn_full(const struct proj *p, uint64_t max_writes)
{
    return proj_txn_full_at(p, p->writes, max_writes);
}

/* ====================================================================== opening */

int proj_open(struct proj **out, const struct proj_config *cfg)
{
    struct proj *p = calloc(1, sizeof *p);
    if (!p)
        return CAIRN_ENOMEM;
    p->readonly = cfg->readonly;
    pthread_mutex_init(&p->dbi_mu, NULL);
    if (!(p->dir = strdup(cfg->dir))) {
        proj_close(p);
        return CAIRN_ENOMEM;
    }
    unsigned flags = cfg->readonly ? MDB_RDONLY : MDB_WRITEMAP | MDB_NORDAHEAD;
    int rc = cairn_env_open(&p->env, cfg->dir, PROJ_DBIS_MAX + 2,
                            cfg->map_size ? cfg->map_size : PROJ_MAP_SIZE_INITIAL,
                            flags | (cfg->nosync ? MDB_NOSYNC : 0));
    if (!rc)
        rc = reserve(p, map_size(p));
    if (!rc)
        rc = open_meta(p);
    if (rc) {
        proj_close(p);
        return rc;
    }
    *out = p;
    return 0;
}

void proj_close(struct proj *p)
{
    if (!p)
        return;
    if (p->txn)
        proj_abort(p);
    cairn_env_close(p->env);
    for (size_t i = 0; i < p->ndbis; i++)
        free(p->names[i]);
    pthread_mutex_destroy(&p->dbi_mu);
    free(p->dir);
    free(p);
}

/* Before the sync, the pages past the last used one are given back to
 * the file system (FALLOC_FL_PUNCH_HOLE; the file keeps its size). The
 * prefaulted ones (proj_prefault asks for an estimate — twice the growth,
 * and pessimistic before a first big transaction taught it — and the last
 * transaction of a replay leaves the rest unused) are dirty zeroes the
 * sync would otherwise write out (until session 15 FALLOC_FL_ZERO_RANGE
 * dropped just those, keeping the blocks), and a replay's first
 * map (engine_replay_map) is sized for the transactions it may make, not
 * for the state it leaves — 1 GiB reserved for bench/replay's 1M events,
 * 81 MB used. A later transaction reserves the map again first
 * (proj_begin), so nothing is ever written into a hole. */
static void punch_tail(struct proj *p)
{
    MDB_stat st;
    uint64_t pages, last;
    int fd;
    map_pages(p, &pages, &last);
    if (!p->readonly && !p->txn && last + 1 < pages && !mdb_env_stat(cairn_env_mdb(p->env), &st) &&
        !mdb_env_get_fd(cairn_env_mdb(p->env), &fd) && (last + 1) * st.ms_psize < p->reserved) {
        uint64_t used = (last + 1) * st.ms_psize;
        if (!fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)used,
                       (off_t)((pages - last - 1) * st.ms_psize)))
            p->reserved = used < p->reserved ? used : p->reserved;
        /* else (EOPNOTSUPP and the like) they stay reserved, and the sync
         * writes the prefaulted ones */
    }
}

void proj_sync_start(struct proj *p)
{
    punch_tail(p);
    if (!p->readonly)
        cairn_env_sync_start(p->env);
}

int proj_sync(struct proj *p)
{
    punch_tail(p); /* (none left after proj_sync_start: reserved is down) */
    return cairn_env_sync(p->env);
}

struct cairn_env *proj_env(struct proj *p)
{
    return p->env;
}

uint64_t proj_txn_writes(const struct proj *p)
{
    return p->writes;
}

uint64_t proj_checkpoint(struct proj *p)
{
    return p->checkpoint;
}

/* ====================================================================== the write transaction */

int proj_begin(struct proj *p)
{
    assert(!p->txn && !p->readonly);
    p->gen++;
    p->writes = 0;
    p->aborted = false;
    grow_ahead(p);
    int rc = cairn_env_write_begin(p->env, &p->txn);
    /* The map may have grown past the reservation (see "the map and the
     * disk"): nothing is written until it is reserved. */
    if (!rc && (rc = reserve(p, map_size(p))))
        proj_abort(p);
    if (!rc) {
        uint64_t pages;
        map_pages(p, &pages, &p->last_pgno);
        p->room = pages - p->last_pgno - 1;
        p->pf_ahead = p->last_pgno + 1;
    }
    return rc;
}

/* The checkpoint is put only when it moves (or was never stored). A
 * transaction that wrote nothing else then leaves every page clean, and
 * LMDB commits it without its two syncs: the handlers' open at every start
 * and the catch-up of a read command (show, stream, digest) with nothing
 * to apply no longer cost a durable commit. */
int proj_commit(struct proj *p, uint64_t checkpoint)
{
    int rc = 0;
    if (checkpoint != p->checkpoint || !p->checkpoint_stored) {
        uint8_t cp[8];
        cairn_be64_put(cp, checkpoint);
        MDB_val k = {10, "checkpoint"}, v = {8, cp};
        rc = cairn_mdb_err(mdb_put(p->txn, p->meta, &k, &v, 0));
    }
    if (rc) {
        proj_abort(p);
        return rc;
    }
    rc = cairn_env_write_commit(p->env, p->txn);
    p->txn = NULL;
    if (!rc) {
        p->checkpoint = checkpoint;
        p->checkpoint_stored = true;
        learn_growth(p);
    }
    return rc;
}

void proj_abort(struct proj *p)
{
    if (!p->txn)
        return;
    cairn_env_write_abort(p->env, p->txn);
    p->txn = NULL;
    p->aborted = true;
}

int proj_grow(struct proj *p)
{
    /* After a transaction that filled the map and was aborted (it took
     * all its room in p->writes writes; proj_begin resets both): the redo
     * must commit well before that, whatever the estimate was. */
    if (p->aborted && p->writes >= LEARN_WRITES && p->room) {
        double per = (double)p->room / (double)p->writes;
        if (!p->learned || per > p->pages_per_write)
            p->pages_per_write = per;
        p->learned = true;
    }
    /* Reserve what cairn_env_grow is about to map (it doubles): when the
     * disk is full the map stays as it is, reserved and usable. */
    uint64_t cur = map_size(p);
    int rc = cur < CAIRN_MAP_SIZE_CEILING
                 ? reserve(p, cur * 2 > CAIRN_MAP_SIZE_CEILING ? CAIRN_MAP_SIZE_CEILING : cur * 2)
                 : 0;
    if (!rc)
        rc = cairn_env_grow(p->env);
    /* Grown to another size than expected: reserved here, or proj_begin
     * refuses to write. */
    return rc ? rc : reserve(p, map_size(p));
}

/* Prefaulting (proj_prefault). The pages past the committed ones that the
 * open transaction may take: twice its writes so far at the learned pages
 * per write (proj_txn_full's estimate) or the most a transaction has
 * added, if more, plus a lead; within the map. Twice: at the flushes the
 * writes so far miss what the flushes add, and the next transaction of a
 * catch-up takes about as much again — bench/replay's flush phase went
 * from 0.26 to 0.21 s (median of 10) against once the estimate. The
 * pages asked for and not used are dirty zeroes: proj_sync gives them
 * back before a replay's sync; a durable commit writes them out once. */
#define PREFAULT_LEAD 1024 /* pages (4 MiB) */
/* pages per madvise, POPULATE_SEQ_MIN (env.c); the stop flag is read between */
#define PREFAULT_CHUNK 1024
/* proj_prefault_ahead keeps up to this many pages past the transaction's
 * last one populated (8 MiB), topping them up when half are used. */
#define PREFAULT_AHEAD 2048

void proj_prefault_range(const struct proj *p, uint64_t *from, uint64_t *to)
{
    double per = p->learned ? p->pages_per_write : PAGES_PER_WRITE_FIRST;
    uint64_t est = (uint64_t)((double)p->writes * per);
    est = 2 * (est > p->grown_max ? est : p->grown_max) + PREFAULT_LEAD;
    *from = p->last_pgno + 1;
    *to = *from + (est < p->room ? est : p->room);
}

void proj_prefault(struct proj *p, uint64_t from, uint64_t to, const _Atomic bool *stop)
{
    for (uint64_t at = from; at < to && !atomic_load_explicit(stop, memory_order_relaxed);
         at += PREFAULT_CHUNK)
        if (cairn_env_populate(p->env, at, to - at < PREFAULT_CHUNK ? to - at : PREFAULT_CHUNK))
            break;
}

void proj_set_shared(struct proj *p, bool on)
{
    p->shared = on;
}

/* ====================================================================== handler contexts */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The state lock of shared mode (struct proj): held for one state call
 * at a time — an LMDB get or put, a few microseconds — so a thread that
 * finds it taken spins a while (TXN_SPIN polls) before it sleeps on a
 * futex. With a mutex that sleeps at once, each collision cost a futex
 * wait and wake (tens of microseconds on this VM, longer than the call
 * it waited for): 30 000-70 000 collisions per 1M-event replay. Some
 * holds are longer (a page fault on a fresh page of the map, an append
 * of 16 envelopes by proj_hctx_sync): 4 000 polls (~0.1-0.2 ms) rather
 * than 1 000 cut the waits and the futex calls further (1M replay, six
 * alternated runs: median 556 k vs 495 k events/s, waits 0.25-0.33 s vs
 * 0.30-0.38 s). A waiter whose holder was preempted (a loaded machine)
 * stops spinning after that and sleeps. The classic three-state futex
 * lock (0 free, 1 held, 2 held with possible sleepers; Drepper, "Futexes
 * are tricky"). */
#define TXN_SPIN 4000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void txn_mu_wait(_Atomic int *mu)
{
    for (int i = 0; i < TXN_SPIN; i++) {
        cpu_relax();
        int free = 0;
        if (atomic_load_explicit(mu, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(mu, &free, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
    }
    while (atomic_exchange_explicit(mu, 2, memory_order_acquire) != 0)
        syscall(SYS_futex, mu, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

static inline bool txn_mu_try(_Atomic int *mu)
{
    int free = 0;
    return atomic_compare_exchange_strong_explicit(mu, &free, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

static inline void txn_mu_unlock(_Atomic int *mu)
{
    if (atomic_exchange_explicit(mu, 0, memory_order_release) == 2)
        syscall(SYS_futex, mu, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Before a use of the write transaction by ctx (see struct proj); txn_end
 * after it. A lock the other thread holds is counted and its wait timed
 * (the clock is read only then): proj_hctx_lock_stats. */
static inline void txn_lock(struct hctx *ctx)
{
    if (!ctx->p->shared)
        return;
    atomic_store_explicit(&ctx->lock_calls,
                          atomic_load_explicit(&ctx->lock_calls, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (txn_mu_try(&ctx->p->txn_mu))
        return;
    int64_t t0 = mono_ns();
    txn_mu_wait(&ctx->p->txn_mu);
    atomic_fetch_add_explicit(&ctx->lock_waits, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ctx->lock_wait_ns, (uint64_t)(mono_ns() - t0), memory_order_relaxed);
}

static inline void txn_end(struct hctx *ctx)
{
    if (ctx->p->shared)
        txn_mu_unlock(&ctx->p->txn_mu);
}

/* The pages the open transaction uses: the metas and every DBI's (the
 * free and main DBs included) — its next page, but for pages it freed
 * and took again. LMDB does not say where its next page is. */
static uint64_t txn_pages(struct proj *p)
{
    MDB_stat st;
    uint64_t n = 2;
    if (p->shared && !txn_mu_try(&p->txn_mu))
        txn_mu_wait(&p->txn_mu);
    for (MDB_dbi d = 0; d < PROJ_DBIS_MAX + 2; d++)
        if (!mdb_stat(p->txn, d, &st))
            n += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
    if (p->shared)
        txn_mu_unlock(&p->txn_mu);
    return n;
}

void proj_prefault_ahead(struct proj *p)
{
    uint64_t used = txn_pages(p), end = p->last_pgno + 1 + p->room;
    if (used + PREFAULT_AHEAD / 2 <= p->pf_ahead)
        return;
    uint64_t from = used > p->pf_ahead ? used : p->pf_ahead;
    uint64_t to = used + PREFAULT_AHEAD < end ? used + PREFAULT_AHEAD : end;
    if (from < to && !cairn_env_populate(p->env, from, to - from))
        p->pf_ahead = to;
}

void proj_hctx_lock_stats(const struct hctx *ctx, uint64_t *calls, uint64_t *waits,
                          uint64_t *wait_ns)
{
    *calls = atomic_load_explicit(&ctx->lock_calls, memory_order_relaxed);
    *waits = atomic_load_explicit(&ctx->lock_waits, memory_order_relaxed);
    *wait_ns = atomic_load_explicit(&ctx->lock_wait_ns, memory_order_relaxed);
}

/* Frees the idle hcursors (their LMDB cursors belong to the transaction:
 * LMDB frees them when it ends). */
static void idle_free(struct hctx *ctx)
{
    while (ctx->idle) {
        struct hcursor *c = ctx->idle;
        ctx->idle = c->next;
        free(c);
    }
}

int proj_hctx_new(struct proj *p, const struct handler *h, const json_t *config, struct hctx **out)
{
    struct hctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return CAIRN_ENOMEM;
    ctx->p = p;
    ctx->h = h;
    ctx->config = config ? json_incref((json_t *)config) : json_object();
    cairn_buf_init(&ctx->enc, CAIRN_PAYLOAD_MAX_CEILING + 4096);
    cairn_buf_init(&ctx->pend, (size_t)1 << 32); /* bounded by the runs (engine.c) */
    /* Every emit's bytes for one input: CAIRN_EMIT_PER_EVENT_MAX events
     * of at most a payload each would be far more than memory; the enc
     * maximum per event is the real bound, this one only caps the sum. */
    ctx->em = &ctx->sets[0];
    bool ok = ctx->config != NULL;
    for (int i = 0; i < PROJ_EMIT_SETS; i++) {
        cairn_buf_init(&ctx->sets[i].mem, (size_t)1 << 32);
        ok = msgpack_zone_init(&ctx->sets[i].zone, 8192) && ok;
    }
    if (!ok) {
        json_decref(ctx->config);
        for (int i = 0; i < PROJ_EMIT_SETS; i++)
            msgpack_zone_destroy(&ctx->sets[i].zone);
        free(ctx);
        return CAIRN_ENOMEM;
    }
    ctx->gen = (unsigned)-1;
    *out = ctx;
    return 0;
}

void proj_hctx_free(struct hctx *ctx)
{
    if (!ctx)
        return;
    for (int i = 0; i < PROJ_EMIT_SETS; i++) {
        struct emits *e = &ctx->sets[i];
        free(e->evs);
        free(e->offs);
        free(e->bodies);
        cairn_buf_deinit(&e->mem);
        msgpack_zone_destroy(&e->zone);
    }
    json_decref(ctx->config);
    cairn_buf_deinit(&ctx->enc);
    cairn_buf_deinit(&ctx->pend);
    free(ctx->pend_end);
    idle_free(ctx);
    free(ctx);
}

void proj_hctx_reset(struct hctx *ctx)
{
    idle_free(ctx);
    ctx->npend = 0; /* emitted in a transaction that is gone */
    cairn_buf_reset(&ctx->pend);
    for (unsigned i = 0; i < PROJ_EMIT_SETS; i++)
        proj_hctx_set_clear(ctx, i);
    ctx->em = &ctx->sets[0];
    ctx->ndbs = 0;
    ctx->user = NULL;
    ctx->gen = (unsigned)-1;
}

const json_t *hctx_config(struct hctx *ctx)
{
    return ctx->config;
}

void **hctx_user(struct hctx *ctx)
{
    return &ctx->user;
}

const struct handler *hctx_handler(struct hctx *ctx)
{
    return ctx->h;
}

static bool name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

int hctx_db(struct hctx *ctx, const char *name, unsigned flags, unsigned *db)
{
    char full[128];
    if (!name_ok(name) || ctx->ndbs == HCTX_DBS_MAX || !ctx->p->txn)
        return CAIRN_EINVAL;
    if (snprintf(full, sizeof full, "%s.%s", ctx->h->name, name) >= (int)sizeof full)
        return CAIRN_EINVAL;
    int rc = mdb_dbi_open(ctx->p->txn, full, flags | MDB_CREATE, &ctx->dbs[ctx->ndbs]);
    if (rc)
        return cairn_mdb_err(rc);
    if (ctx->h->emits && ctx->h->emits[0] && ctx->ndbs == 0) {
        snprintf(full, sizeof full, PROJ_STREAM_PREFIX "%s", ctx->h->name);
        if ((rc = mdb_dbi_open(ctx->p->txn, full, MDB_CREATE, &ctx->stream)))
            return cairn_mdb_err(rc);
    }
    *db = ctx->ndbs++;
    return 0;
}

int hctx_get(struct hctx *ctx, unsigned db, const void *k, size_t kn, MDB_val *v)
{
    assert(db < ctx->ndbs);
    MDB_val key = {kn, (void *)k};
    txn_lock(ctx);
    int rc = cairn_mdb_err(mdb_get(ctx->p->txn, ctx->dbs[db], &key, v));
    txn_end(ctx);
    return rc;
}

int hctx_put(struct hctx *ctx, unsigned db, const void *k, size_t kn, const void *v, size_t vn)
{
    assert(db < ctx->ndbs);
    MDB_val key = {kn, (void *)k}, val = {vn, (void *)v};
    txn_lock(ctx);
    ctx->p->writes++, ctx->writes++;
    int rc = cairn_mdb_err(mdb_put(ctx->p->txn, ctx->dbs[db], &key, &val, 0));
    txn_end(ctx);
    return rc;
}

int hctx_put_new(struct hctx *ctx, unsigned db, const void *k, size_t kn, const void *v, size_t vn,
                 MDB_val *existing)
{
    assert(db < ctx->ndbs);
    MDB_val key = {kn, (void *)k}, val = {vn, (void *)v};
    txn_lock(ctx);
    int rc = mdb_put(ctx->p->txn, ctx->dbs[db], &key, &val, MDB_NOOVERWRITE);
    txn_end(ctx);
    if (rc == MDB_KEYEXIST) {
        *existing = val; /* LMDB points data at the stored value */
        return CAIRN_ECONFLICT;
    }
    if (!rc)
        ctx->p->writes++, ctx->writes++;
    return cairn_mdb_err(rc);
}

int hctx_del(struct hctx *ctx, unsigned db, const void *k, size_t kn)
{
    assert(db < ctx->ndbs);
    MDB_val key = {kn, (void *)k};
    txn_lock(ctx);
    ctx->p->writes++, ctx->writes++;
    int rc = mdb_del(ctx->p->txn, ctx->dbs[db], &key, NULL);
    txn_end(ctx);
    return rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

int hctx_clear(struct hctx *ctx, unsigned db)
{
    assert(db < ctx->ndbs);
    txn_lock(ctx);
    ctx->p->writes++, ctx->writes++;
    /* del 0: the DBI stays, its pages go to the free list (LMDB walks
     * the branch pages only); its open cursors are unset by LMDB */
    int rc = mdb_drop(ctx->p->txn, ctx->dbs[db], 0);
    txn_end(ctx);
    return cairn_mdb_err(rc);
}

/* Frees the idle hcursors of earlier transactions (LMDB freed their
 * cursors when the transaction ended) and unlinks one on dbs[db] of this
 * transaction, if any. */
static struct hcursor *idle_take(struct hctx *ctx, unsigned db)
{
    struct hcursor *found = NULL;
    for (struct hcursor **pp = &ctx->idle; *pp;) {
        struct hcursor *c = *pp;
        if (c->gen != ctx->p->gen) {
            *pp = c->next;
            free(c);
        } else if (!found && c->db == db) {
            *pp = c->next;
            found = c;
        } else {
            pp = &c->next;
        }
    }
    return found;
}

/* A cursor closed earlier in the transaction is reused: no allocation, no
 * mdb_cursor_open/close, and in shared mode no state lock for either
 * (geofence opens and closes one per grid cell it scans: 40 % of its 1.6 M
 * state calls per 1M-event replay were these two). An LMDB cursor of a
 * write transaction stays valid until it ends, whatever is written. */
int hctx_cursor_open(struct hctx *ctx, unsigned db, const void *prefix, size_t pn,
                     struct hcursor **out)
{
    assert(db < ctx->ndbs);
    if (pn > sizeof((struct hcursor *)NULL)->prefix)
        return CAIRN_EINVAL;
    struct hcursor *c = idle_take(ctx, db);
    if (!c) {
        if (!(c = calloc(1, sizeof *c)))
            return CAIRN_ENOMEM;
        txn_lock(ctx);
        int rc = mdb_cursor_open(ctx->p->txn, ctx->dbs[db], &c->c);
        txn_end(ctx);
        if (rc) {
            free(c);
            return cairn_mdb_err(rc);
        }
        c->ctx = ctx;
        c->db = db;
        c->gen = ctx->p->gen;
    }
    if (pn)
        memcpy(c->prefix, prefix, pn);
    c->pn = pn;
    c->started = false;
    c->tail_known = false;
    c->next = NULL;
    *out = c;
    return 0;
}

int hctx_cursor_next(struct hcursor *c, MDB_val *k, MDB_val *v)
{
    int rc;
    txn_lock(c->ctx);
    if (!c->started) {
        *k = (MDB_val){c->pn, c->prefix};
        rc = c->pn ? mdb_cursor_get(c->c, k, v, MDB_SET_RANGE)
                   : mdb_cursor_get(c->c, k, v, MDB_FIRST);
        c->started = true;
    } else {
        rc = mdb_cursor_get(c->c, k, v, MDB_NEXT);
    }
    txn_end(c->ctx);
    if (rc)
        return cairn_mdb_err(rc);
    if (k->mv_size < c->pn || memcmp(k->mv_data, c->prefix, c->pn))
        return CAIRN_ENOTFOUND;
    return 0;
}

/* Keys put in order past the database's last key — every put of a flush
 * into an empty database, as in a replay's first transaction — go in with
 * MDB_APPEND. A plain put that finds the leaf full splits it in the middle,
 * so keys put in order left every leaf about half full, and with values of
 * a third of a page less than that: orders.view, ~1.3 KB per order, took
 * 13 850 pages for 21.8 MB of orders after a replay of bench/replay's 1M
 * events (38 % full), half the state's pages. With MDB_APPEND LMDB fills a
 * leaf before it starts the next. The last key is read once per cursor
 * open (then it is the last key appended); LMDB checks it again and
 * refuses a key that is not past its last with MDB_KEYEXIST, changing
 * nothing, and that key is put as usual: a stale tail costs a retry, never
 * a wrong put. */
static bool past_tail(struct hcursor *c, const MDB_val *key)
{
    if (!c->tail_known) {
        MDB_val lk, lv;
        int rc = mdb_cursor_get(c->c, &lk, &lv, MDB_LAST);
        c->tail_known = true;
        c->tail_none = rc == MDB_NOTFOUND;
        if (rc == 0 && lk.mv_size <= sizeof c->tail) {
            memcpy(c->tail, lk.mv_data, lk.mv_size);
            c->tn = lk.mv_size;
        } else if (!c->tail_none) {
            c->tail_known = false; /* unknown: put as usual */
            return false;
        }
    }
    MDB_val t = {c->tn, c->tail};
    return c->tail_none || mdb_cmp(c->ctx->p->txn, c->ctx->dbs[c->db], key, &t) > 0;
}

int hctx_cursor_put(struct hcursor *c, const void *k, size_t kn, const void *v, size_t vn)
{
    MDB_val key = {kn, (void *)k}, val = {vn, (void *)v};
    txn_lock(c->ctx);
    c->ctx->p->writes++, c->ctx->writes++;
    /* mdb_cursor_put positions with MDB_SET, which stays on the cursor's
     * leaf when the key falls between its first and last keys. Iterating
     * after a put continues from the put key. */
    c->started = true;
    int mrc = MDB_KEYEXIST;
    if (kn <= sizeof c->tail && past_tail(c, &key) &&
        (mrc = mdb_cursor_put(c->c, &key, &val, MDB_APPEND)) == 0) {
        memcpy(c->tail, k, kn);
        c->tn = kn;
        c->tail_none = false;
    }
    if (mrc == MDB_KEYEXIST)
        mrc = mdb_cursor_put(c->c, &key, &val, 0);
    txn_end(c->ctx);
    return cairn_mdb_err(mrc);
}

int hctx_cursor_del(struct hcursor *c)
{
    txn_lock(c->ctx);
    int rc = cairn_mdb_err(mdb_cursor_del(c->c, 0));
    txn_end(c->ctx);
    return rc;
}

void hctx_cursor_close(struct hcursor *c)
{
    if (!c)
        return;
    c->next = c->ctx->idle; /* kept for the next open (see hctx_cursor_open) */
    c->ctx->idle = c;
}

/* ====================================================================== derived streams */

uint64_t hctx_emitted_dseq(const struct hctx *ctx)
{
    return ctx->stream_head;
}

int hctx_stream_payload(struct hctx *ctx, uint64_t dseq, const uint8_t **p, size_t *n)
{
    uint8_t k8[8];
    MDB_val k = {8, k8}, v;
    struct proj_derived d;
    int rc;
    if (!ctx->h->emits || !ctx->h->emits[0] || !ctx->ndbs) /* no stream (opened by hctx_db) */
        return CAIRN_ENOTFOUND;
    if (ctx->npend && ctx->gen == ctx->p->gen && dseq <= ctx->stream_head &&
        dseq > ctx->stream_head - ctx->npend) { /* emitted, not appended yet */
        size_t i = ctx->npend - (size_t)(ctx->stream_head - dseq) - 1;
        size_t from = i ? ctx->pend_end[i - 1] : 0;
        rc = proj_derived_decode(ctx->pend.data + from, ctx->pend_end[i] - from, &d);
    } else {
        cairn_be64_put(k8, dseq);
        txn_lock(ctx);
        rc = cairn_mdb_err(mdb_get(ctx->p->txn, ctx->stream, &k, &v));
        txn_end(ctx);
        if (!rc)
            rc = proj_derived_decode(v.mv_data, v.mv_size, &d);
    }
    if (!rc)
        *p = d.payload, *n = d.payload_len;
    return rc;
}

static int load_stream_head(struct hctx *ctx)
{
    MDB_val k, v;
    int rc = mdb_cursor_open(ctx->p->txn, ctx->stream, &ctx->scur);
    if (rc)
        return cairn_mdb_err(rc);
    rc = mdb_cursor_get(ctx->scur, &k, &v, MDB_LAST);
    ctx->stream_head = rc == 0 && k.mv_size == 8 ? cairn_be64_get(k.mv_data) : 0;
    ctx->gen = ctx->p->gen;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

static bool emits_type(const struct handler *h, const char *type)
{
    for (const char *const *t = h->emits; t && *t; t++)
        if (!strcmp(*t, type))
            return true;
    return false;
}

/* Appends d's envelope to b. */
static int encode_derived(struct cairn_buf *b, const struct proj_derived *d)
{
    /* The payload must be one msgpack map and nothing else: consumers
     * decode it. Walking it whole (mp_raw_len) was ~2 200 instructions per
     * compliance violation, so release builds trust the handlers and check
     * the map header only; debug and sanitizer builds (PROJ_CHECK_PAYLOADS,
     * projections/CMakeLists.txt) — the ones every test runs — check all. */
    const uint8_t *pl = d->payload;
    if (!d->payload_len || !((pl[0] & 0xf0) == 0x80 || pl[0] == 0xde || pl[0] == 0xdf))
        return CAIRN_EINVAL;
#ifdef PROJ_CHECK_PAYLOADS
    if (mp_raw_len(pl, d->payload_len) != d->payload_len)
        return CAIRN_EINVAL;
#endif
    size_t at = b->len;
    int rc = cairn_buf_reserve(b, d->stream.n + d->type.n + d->tenant.n + d->key.n +
                                      d->payload_len + 12 * MPD_HDR_MAX + 64);
    if (rc)
        return CAIRN_ETOOBIG;
    uint8_t *o = mpd_map(b->data + at, 8);
    o = mpd_strn(mpd_key(o, "stream"), d->stream.p, d->stream.n);
    o = mpd_u64(mpd_key(o, "dseq"), d->dseq);
    o = mpd_u64(mpd_key(o, "cause"), d->cause);
    o = mpd_strn(mpd_key(o, "type"), d->type.p, d->type.n);
    o = mpd_strn(mpd_key(o, "tenant"), d->tenant.p, d->tenant.n);
    o = mpd_strn(mpd_key(o, "key"), d->key.p, d->key.n);
    o = mpd_i64(mpd_key(o, "time"), d->time);
    o = mpd_raw(mpd_key(o, "payload"), d->payload, d->payload_len);
    assert((size_t)(o - b->data) <= b->cap);
    /* Checked before it is written (STYLE.md 6). */
    struct proj_derived check;
    if (proj_derived_decode(b->data + at, (size_t)(o - b->data) - at, &check) ||
        check.dseq != d->dseq)
        return CAIRN_ETOOBIG;
    b->len = (size_t)(o - b->data);
    return 0;
}

/* Keeps a copy of the event for the consumers of the same input. */
static int keep_emitted(struct hctx *ctx, const struct proj_derived *d)
{
    if (ctx->em->nem - ctx->em->nem_base == CAIRN_EMIT_PER_EVENT_MAX)
        return CAIRN_ETOOBIG;
    if (ctx->em->nem == ctx->em->cap) {
        size_t cap = ctx->em->cap ? ctx->em->cap * 2 : 16;
        struct event *evs = realloc(ctx->em->evs, cap * sizeof *evs);
        if (evs)
            ctx->em->evs = evs;
        size_t *offs = realloc(ctx->em->offs, cap * sizeof *offs);
        if (offs)
            ctx->em->offs = offs;
        msgpack_object *bodies = realloc(ctx->em->bodies, cap * sizeof *bodies);
        if (bodies)
            ctx->em->bodies = bodies;
        if (!evs || !offs || !bodies)
            return CAIRN_ENOMEM;
        ctx->em->cap = cap;
    }
    size_t at = ctx->em->mem.len;
    const struct cairn_str *src[] = {&d->type, &d->tenant, &d->key};
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++)
        rc = cairn_buf_append(&ctx->em->mem, src[i]->p, src[i]->n);
    if (!rc)
        rc = cairn_buf_append(&ctx->em->mem, d->payload, d->payload_len);
    if (rc) {
        ctx->em->mem.len = at;
        return rc;
    }
    struct event *ev = &ctx->em->evs[ctx->em->nem];
    *ev = (struct event){
        .derived = true,
        .seq = d->cause,
        .dseq = d->dseq,
        .stream = d->stream,
        .type = {NULL, d->type.n},
        .tenant = {NULL, d->tenant.n},
        .key = {NULL, d->key.n},
        .time = d->time,
        .payload_len = d->payload_len,
    };
    ctx->em->offs[ctx->em->nem++] = at;
    return 0;
}

int hctx_emit(struct hctx *ctx, const struct event *cause, const char *type,
              const struct cairn_str *tenant, const struct cairn_str *key, const uint8_t *payload,
              size_t n)
{
    /* Emitting an undeclared type is a programming error in the handler:
     * the engine's ordering of consumers relies on the declaration. */
    assert(emits_type(ctx->h, type));
    int rc = 0;
    if (ctx->gen != ctx->p->gen) { /* the first emit of the transaction */
        txn_lock(ctx);
        rc = load_stream_head(ctx);
        txn_end(ctx);
        ctx->npend = 0;
        cairn_buf_reset(&ctx->pend);
        if (rc)
            return rc;
    }
    struct proj_derived d = {
        .stream = {ctx->h->name, strlen(ctx->h->name)},
        .type = {type, strlen(type)},
        .tenant = tenant ? *tenant : cause->tenant,
        .key = key ? *key : cause->key,
        .dseq = ctx->stream_head + 1,
        .cause = cause->seq,
        .time = cause->time,
        .payload = payload,
        .payload_len = n,
    };
    if (ctx->p->shared) {
        /* Kept for proj_hctx_sync: an apply that only emits takes no lock. */
        if (ctx->npend == ctx->pend_cap) {
            size_t cap = ctx->pend_cap ? ctx->pend_cap * 2 : 64;
            size_t *ends = realloc(ctx->pend_end, cap * sizeof *ends);
            if (!ends)
                return CAIRN_ENOMEM;
            ctx->pend_end = ends;
            ctx->pend_cap = cap;
        }
        if ((rc = encode_derived(&ctx->pend, &d)))
            return rc;
        ctx->pend_end[ctx->npend++] = ctx->pend.len;
    } else {
        cairn_buf_reset(&ctx->enc);
        if ((rc = encode_derived(&ctx->enc, &d)))
            return rc;
        uint8_t k8[8];
        cairn_be64_put(k8, d.dseq);
        MDB_val k = {8, k8}, v = {ctx->enc.len, ctx->enc.data};
        ctx->p->writes++, ctx->writes++;
        if ((rc = cairn_mdb_err(mdb_cursor_put(ctx->scur, &k, &v, MDB_APPEND))))
            return rc;
    }
    ctx->stream_head = d.dseq;
    return keep_emitted(ctx, &d);
}

/* Envelopes appended per hold of the state lock by proj_hctx_sync: the
 * other thread's calls get in between. */
#define SYNC_PER_LOCK 16

int proj_hctx_sync(struct hctx *ctx)
{
    int rc = 0;
    size_t i = 0, from = 0;
    uint8_t k8[8];
    uint64_t dseq = ctx->stream_head - ctx->npend;
    if (!ctx->npend)
        return 0;
    assert(ctx->gen == ctx->p->gen);
    while (!rc && i < ctx->npend) {
        txn_lock(ctx);
        for (size_t end = i + SYNC_PER_LOCK; !rc && i < ctx->npend && i < end; i++) {
            cairn_be64_put(k8, ++dseq);
            MDB_val k = {8, k8}, v = {ctx->pend_end[i] - from, ctx->pend.data + from};
            from = ctx->pend_end[i];
            ctx->p->writes++, ctx->writes++;
            rc = cairn_mdb_err(mdb_cursor_put(ctx->scur, &k, &v, MDB_APPEND));
        }
        txn_end(ctx);
    }
    ctx->npend = 0;
    cairn_buf_reset(&ctx->pend);
    return rc;
}

/* Sets the pointers of e's events (mem no longer grows). */
static size_t emits_fix(struct emits *e, const struct event **evs)
{
    for (size_t i = 0; i < e->nem; i++) {
        struct event *ev = &e->evs[i];
        const char *at = (const char *)e->mem.data + e->offs[i];
        ev->type.p = at;
        ev->tenant.p = at += ev->type.n;
        ev->key.p = at += ev->tenant.n;
        ev->payload = (const uint8_t *)(at += ev->key.n);
    }
    *evs = e->evs;
    return e->nem;
}

static int emits_decode(struct emits *e, size_t i)
{
    struct event *ev = &e->evs[i];
    assert(i < e->nem && ev->payload);
    e->zone_used = true;
    if (mp_unpack(ev->payload, ev->payload_len, &e->zone, &e->bodies[i], NULL))
        return CAIRN_EINVAL;
    ev->body = &e->bodies[i];
    return 0;
}

static void emits_clear(struct emits *e)
{
    e->nem = e->nem_base = 0;
    cairn_buf_reset(&e->mem);
    if (e->zone_used) /* runs for every handler and input: skip when idle */
        msgpack_zone_clear(&e->zone);
    e->zone_used = false;
}

size_t proj_hctx_emitted(struct hctx *ctx, const struct event **evs)
{
    return emits_fix(ctx->em, evs);
}

int proj_hctx_decode(struct hctx *ctx, size_t i)
{
    return emits_decode(ctx->em, i);
}

size_t proj_hctx_nemitted(const struct hctx *ctx)
{
    return ctx->em->nem;
}

void proj_hctx_mark(struct hctx *ctx)
{
    ctx->em->nem_base = ctx->em->nem;
}

void proj_hctx_clear(struct hctx *ctx)
{
    emits_clear(ctx->em);
}

void proj_hctx_select(struct hctx *ctx, unsigned set)
{
    assert(set < PROJ_EMIT_SETS);
    ctx->em = &ctx->sets[set];
}

size_t proj_hctx_set_events(struct hctx *ctx, unsigned set, const struct event **evs)
{
    return emits_fix(&ctx->sets[set], evs);
}

int proj_hctx_set_decode(struct hctx *ctx, unsigned set, size_t i)
{
    return emits_decode(&ctx->sets[set], i);
}

void proj_hctx_set_clear(struct hctx *ctx, unsigned set)
{
    emits_clear(&ctx->sets[set]);
}

uint64_t proj_hctx_writes(const struct hctx *ctx)
{
    return ctx->writes;
}

/* ====================================================================== reading */

/* Opens, for the whole environment, every named DBI not in the cache yet,
 * unless the cache is current. A handle is only usable in transactions
 * that begin after it was opened, so this runs before a snapshot begins. A
 * DBI opened in a read transaction survives only if that transaction
 * commits, and no other transaction may open one meanwhile: the cache lock
 * is held from the opens to the commit. Called with no lock and no
 * transaction of this thread. Lock order: the environment's resize lock
 * (any transaction), then the cache lock — as in proj_snap_dbi, called
 * with a snapshot open. (Taking the cache lock first, as this did, could
 * deadlock with a snapshot's proj_snap_dbi while a grow of the map waited
 * for the write lock: the resize lock prefers writers.) */
static int refresh_dbis(struct proj *p)
{
    MDB_txn *txn;
    MDB_dbi main;
    MDB_cursor *c;
    MDB_val k, v;
    char name[256];
    int rc = cairn_env_read_begin(p->env, &txn);
    if (rc)
        return rc;
    pthread_mutex_lock(&p->dbi_mu);
    if (p->dbis_current) { /* another thread refreshed it meanwhile */
        pthread_mutex_unlock(&p->dbi_mu);
        cairn_env_read_end(p->env, txn);
        return 0;
    }
    rc = mdb_dbi_open(txn, NULL, 0, &main);
    if (!rc)
        rc = mdb_cursor_open(txn, main, &c);
    for (int mrc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0 && !rc;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size >= sizeof name || p->ndbis == PROJ_DBIS_MAX)
            continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        bool known = false;
        for (size_t i = 0; i < p->ndbis && !known; i++)
            known = !strcmp(p->names[i], name);
        if (known || !(p->names[p->ndbis] = strdup(name)))
            continue;
        if ((rc = mdb_dbi_open(txn, name, 0, &p->dbis[p->ndbis])))
            free(p->names[p->ndbis]);
        else
            p->ndbis++;
    }
    if (!rc)
        mdb_cursor_close(c);
    if (rc) {
        cairn_env_read_end(p->env, txn);
        pthread_mutex_unlock(&p->dbi_mu);
        return cairn_mdb_err(rc);
    }
    rc = cairn_env_read_commit(p->env, txn);
    if (!rc)
        p->dbis_current = true;
    pthread_mutex_unlock(&p->dbi_mu);
    return rc;
}

int proj_snap_begin(struct proj *p, struct proj_snap **out)
{
    struct proj_snap *s = malloc(sizeof *s);
    if (!s)
        return CAIRN_ENOMEM;
    s->p = p;
    /* DBIs are created rarely (when handlers open), so the cache is
     * refreshed on first use and after a lookup missed, not per snapshot
     * (that walk was 9 % of a GET). */
    pthread_mutex_lock(&p->dbi_mu);
    bool current = p->dbis_current;
    pthread_mutex_unlock(&p->dbi_mu);
    int rc = current ? 0 : refresh_dbis(p);
    if (!rc)
        rc = cairn_env_read_begin(p->env, &s->txn);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void proj_snap_end(struct proj_snap *s)
{
    if (!s)
        return;
    cairn_env_read_end(s->p->env, s->txn);
    free(s);
}

MDB_txn *proj_snap_txn(struct proj_snap *s)
{
    return s->txn;
}

uint64_t proj_snap_checkpoint(struct proj_snap *s)
{
    MDB_val k = {10, "checkpoint"}, v;
    if (mdb_get(s->txn, s->p->meta, &k, &v) == 0 && v.mv_size == 8)
        return cairn_be64_get(v.mv_data);
    return 0;
}

int proj_snap_dbi(struct proj_snap *s, const char *name, MDB_dbi *dbi)
{
    int rc = CAIRN_ENOTFOUND;
    pthread_mutex_lock(&s->p->dbi_mu);
    for (size_t i = 0; i < s->p->ndbis && rc; i++)
        if (!strcmp(s->p->names[i], name)) {
            *dbi = s->p->dbis[i];
            rc = 0;
        }
    if (rc)
        s->p->dbis_current = false; /* maybe created since: look again next time */
    pthread_mutex_unlock(&s->p->dbi_mu);
    /* Created after this snapshot began: not part of it. */
    unsigned flags;
    if (!rc && mdb_dbi_flags(s->txn, *dbi, &flags))
        rc = CAIRN_ENOTFOUND;
    return rc;
}

int proj_snap_streams(struct proj_snap *s, char ***names, size_t *n)
{
    MDB_dbi main;
    MDB_cursor *c;
    MDB_val k, v;
    size_t cap = 0, cnt = 0, bytes = 0;
    int rc = cairn_mdb_err(mdb_dbi_open(s->txn, NULL, 0, &main));
    if (rc || (rc = cairn_mdb_err(mdb_cursor_open(s->txn, main, &c))))
        return rc;
    const size_t pl = strlen(PROJ_STREAM_PREFIX);
    /* Two passes: count, then fill one block (array + strings). */
    for (int pass = 0; pass < 2; pass++) {
        char **arr = pass ? *names : NULL;
        char *str = pass ? (char *)(arr + cap) : NULL;
        cnt = 0;
        k = (MDB_val){pl, PROJ_STREAM_PREFIX};
        for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            if (k.mv_size <= pl || memcmp(k.mv_data, PROJ_STREAM_PREFIX, pl))
                break;
            size_t ln = k.mv_size - pl;
            if (pass) {
                memcpy(str, (char *)k.mv_data + pl, ln);
                str[ln] = '\0';
                arr[cnt] = str;
                str += ln + 1;
            } else {
                bytes += ln + 1;
            }
            cnt++;
        }
        if (!pass) {
            cap = cnt;
            if (!(*names = malloc(cap * sizeof(char *) + bytes + 1))) {
                mdb_cursor_close(c);
                return CAIRN_ENOMEM;
            }
        }
    }
    mdb_cursor_close(c);
    *n = cnt;
    return 0;
}

/* ====================================================================== derived envelopes */

int proj_derived_decode(const uint8_t *p, size_t n, struct proj_derived *d)
{
    /* Canonical shape (encode_derived): the payload is last, so its bytes
     * run to the end of the value and no payload parsing is needed. */
    struct cairn_rd r = {p + 1, p + n};
    int64_t dseq, cause;
    if (n < 2 || p[0] != 0x88 || cairn_rd_key(&r, "stream") ||
        cairn_rd_str(&r, &d->stream, false) || cairn_rd_key(&r, "dseq") ||
        cairn_rd_int(&r, &dseq) || cairn_rd_key(&r, "cause") || cairn_rd_int(&r, &cause) ||
        cairn_rd_key(&r, "type") || cairn_rd_str(&r, &d->type, false) ||
        cairn_rd_key(&r, "tenant") || cairn_rd_str(&r, &d->tenant, false) ||
        cairn_rd_key(&r, "key") || cairn_rd_str(&r, &d->key, false) || cairn_rd_key(&r, "time") ||
        cairn_rd_int(&r, &d->time) || cairn_rd_key(&r, "payload") || r.p >= r.end)
        return CAIRN_ECORRUPT;
    d->dseq = (uint64_t)dseq;
    d->cause = (uint64_t)cause;
    d->payload = r.p;
    d->payload_len = (size_t)(r.end - r.p);
    return 0;
}

int proj_derived_json(const struct proj_derived *d, struct cairn_buf *b)
{
    char t[40];
    cairn_time_format(d->time, t, sizeof t);
    int rc = cairn_buf_puts(b, "{\"stream\":");
    if (!rc)
        rc = cairn_buf_json_str(b, d->stream.p, d->stream.n);
    if (!rc)
        rc = cairn_buf_printf(b, ",\"dseq\":%llu,\"cause\":%llu,\"type\":",
                              (unsigned long long)d->dseq, (unsigned long long)d->cause);
    if (!rc)
        rc = cairn_buf_json_str(b, d->type.p, d->type.n);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"tenant\":");
    if (!rc)
        rc = cairn_buf_json_str(b, d->tenant.p, d->tenant.n);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"key\":");
    if (!rc)
        rc = cairn_buf_json_str(b, d->key.p, d->key.n);
    if (!rc)
        rc = cairn_buf_printf(b, ",\"time\":\"%s\",\"payload\":", t);
    if (!rc)
        rc = cairn_msgpack_to_json(d->payload, d->payload_len, b, NULL);
    return rc ? rc : cairn_buf_putc(b, '}');
}

/* ====================================================================== digest */

static void digest_item(EVP_MD_CTX *md, const void *p, size_t n)
{
    uint8_t len[8];
    cairn_be64_put(len, n);
    EVP_DigestUpdate(md, len, 8);
    EVP_DigestUpdate(md, p, n);
}

static int digest_dbi(EVP_MD_CTX *md, MDB_txn *txn, MDB_dbi dbi)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc)
        return cairn_mdb_err(rc);
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        digest_item(md, k.mv_data, k.mv_size);
        digest_item(md, v.mv_data, v.mv_size);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

int proj_snap_digest(struct proj_snap *s, uint8_t out[32])
{
    MDB_dbi main;
    MDB_cursor *c;
    MDB_val k, v;
    char name[512];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return CAIRN_ENOMEM;
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    int rc = cairn_mdb_err(mdb_dbi_open(s->txn, NULL, 0, &main));
    if (!rc)
        rc = cairn_mdb_err(mdb_cursor_open(s->txn, main, &c));
    if (rc)
        goto out;
    int mrc;
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0 && !rc;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size >= sizeof name)
            continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        MDB_dbi dbi;
        if ((rc = proj_snap_dbi(s, name, &dbi)))
            break;
        digest_item(md, name, k.mv_size);
        rc = digest_dbi(md, s->txn, dbi);
    }
    mdb_cursor_close(c);
    unsigned int hl;
    if (!rc)
        EVP_DigestFinal_ex(md, out, &hl);
out:
    EVP_MD_CTX_free(md);
    return rc;
}

/* ====================================================================== handler routes */

MDB_txn *hread_txn(struct hread *rd)
{
    return rd->snap->txn;
}

int hread_db(struct hread *rd, const char *name, MDB_dbi *dbi)
{
    char full[160];
    if (!name_ok(name) ||
        snprintf(full, sizeof full, "%s.%s", rd->h->name, name) >= (int)sizeof full)
        return CAIRN_EINVAL;
    return proj_snap_dbi(rd->snap, full, dbi);
}

int hread_stream_payload(struct hread *rd, uint64_t dseq, const uint8_t **p, size_t *n)
{
    char name[160];
    int rc;
    if (!rd->stream_open) {
        if (snprintf(name, sizeof name, PROJ_STREAM_PREFIX "%s", rd->h->name) >= (int)sizeof name)
            return CAIRN_EINVAL;
        if ((rc = proj_snap_dbi(rd->snap, name, &rd->stream)))
            return rc;
        rd->stream_open = true;
    }
    uint8_t k8[8];
    MDB_val k = {8, k8}, v;
    struct proj_derived d;
    cairn_be64_put(k8, dseq);
    rc = cairn_mdb_err(mdb_get(rd->snap->txn, rd->stream, &k, &v));
    if (!rc)
        rc = proj_derived_decode(v.mv_data, v.mv_size, &d);
    if (!rc)
        *p = d.payload, *n = d.payload_len;
    return rc;
}

const char *hread_tenant(struct hread *rd)
{
    return rd->tenant;
}

bool hread_param(struct hread *rd, const char *name, char *out, size_t cap)
{
    return rd->param && rd->param(rd->arg, name, out, cap);
}

uint64_t hread_seq(struct hread *rd)
{
    return proj_snap_checkpoint(rd->snap);
}
