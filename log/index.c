/*
 * index.c — the indexes derived from the log: keys (per-entity seqs) and
 * dedup (idempotency ids), in their own environment, DATA/log/index.
 *
 * Why a second environment: these indexes have random keys (tenant + entity,
 * tenant + id), so every event dirties its own B-tree pages — about 4.7 KB
 * written per event against 0.4 KB for the event itself (bench/RESULTS.md).
 * Committing them durably with the events made every group commit fsync
 * ten times the data. They can always be rebuilt from the log, so:
 *
 *  - the log (events, head) commits durably first: that is what is acked;
 *  - the index is written by the indexer thread (below), in one transaction
 *    that spans many group commits: it commits (MDB_NOSYNC: its pages reach
 *    the disk when the OS writes them back) every CAIRN_INDEX_COMMIT_EVENTS
 *    events or CAIRN_INDEX_COMMIT_NS, and when the writer's queue stays
 *    empty (writer.c). Each random-key B-tree page is then copied and written once
 *    per index commit instead of once per group commit (most pages are
 *    touched by many batches). Duplicates and expected_seq are decided by
 *    the indexer in that open transaction, so never against a stale
 *    index; other readers
 *    see the last index commit and scan the log past `meta.indexed`
 *    (log.c: entity reads), so they never miss an event either;
 *  - `meta.indexed` (in the index) says how far it covers the log: every
 *    entry of an event up to it is in the index (some later ones may be
 *    too, see ix_covered). After a process crash the OS still has every
 *    page, so the index is intact as of its last commit: log_index_catch_up
 *    re-indexes the tail past `indexed` (putting an entry that is already
 *    there changes nothing).
 *  - After an OS crash unsynced pages may be lost or torn, so the index is
 *    trusted across a reboot only if it was closed cleanly (synced, with
 *    `meta.clean` set); otherwise it is dropped and rebuilt from the log.
 *    The boot is told by /proc/sys/kernel/random/boot_id.
 *
 * DBIs of DATA/log/index:
 *   keys      tlen u8 | tenant | key   -> seq u64 BE (DUPSORT, DUPFIXED)
 *   dedup     tlen u8 | tenant | id    -> seq u64 BE | event time (biased) u64 BE
 *   dedup_at  event time (biased) | seq -> tlen u8 | tenant | id
 *   meta      "indexed" -> u64 BE; "boot" -> boot id; "clean" -> u8
 */
#include "log_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define INDEX_CHUNK 65536 /* events re-indexed per transaction when catching up */

static void boot_id(char out[64])
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    size_t n = f ? fread(out, 1, 63, f) : 0;
    if (f)
        fclose(f);
    out[n] = '\0';
}

/*
 * The writer's index environment is written through its map (MDB_WRITEMAP):
 * LMDB then puts new pages straight into the mapped file instead of into
 * malloc'ed copies that it writes out at commit — no search of the
 * transaction's dirty list (thousands of pages in a transaction that spans
 * many batches) per page visited, no copy and pwrite of every dirty page
 * per commit. Nothing about durability changes: the index was never
 * synced at commit (MDB_NOSYNC), a process crash leaves its pages with the
 * OS either way, and a clean close syncs it (cairn_env_sync writes the map
 * back). Aborted transactions stay invisible: LMDB still copies on write.
 *
 * The catch: with MDB_WRITEMAP, LMDB extends the file to the whole map at
 * every (re)map as a sparse file, and a store into a page the disk has no
 * block for would be a SIGBUS, not an error. So the map is reserved on disk
 * (posix_fallocate) before a write transaction may use it: ienv_write_begin
 * checks, inside the transaction (the map cannot change under it), that
 * the whole map is reserved, reserves what a grow added, and refuses with
 * CAIRN_ENOSPC — before anything is written — when the disk cannot hold it.
 * That fails the batch's check as a failed index commit did. The data file
 * is then as large as the map (up to twice the pages used) on disk.
 */
static int ienv_write_begin(struct log *log, MDB_txn **txn)
{
    int rc = cairn_env_write_begin(log->ienv, txn);
    if (rc)
        return rc;
    MDB_envinfo info;
    int fd;
    if (mdb_env_info(cairn_env_mdb(log->ienv), &info) ||
        mdb_env_get_fd(cairn_env_mdb(log->ienv), &fd)) {
        cairn_env_write_abort(log->ienv, *txn);
        return CAIRN_EDB;
    }
    if (info.me_mapsize <= log->ireserved)
        return 0;
    int err = posix_fallocate(fd, 0, (off_t)info.me_mapsize);
    if (err) {
        cairn_env_write_abort(log->ienv, *txn);
        fprintf(stderr,
                "cairn: log index %s/index: cannot reserve %llu MiB of disk for its map: %s\n",
                log->cfg.dir, (unsigned long long)(info.me_mapsize >> 20), strerror(err));
        return cairn_errno_err(err);
    }
    log->ireserved = info.me_mapsize;
    return 0;
}

static int meta_get_u64(struct log *log, MDB_txn *txn, const char *name, uint64_t *v)
{
    MDB_val k = {strlen(name), (void *)name}, d;
    int rc = mdb_get(txn, log->imeta, &k, &d);
    *v = rc == 0 && d.mv_size == 8 ? cairn_be64_get(d.mv_data) : 0;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

int log_index_mark(struct log *log, MDB_txn *itxn, uint64_t seq)
{
    uint8_t v8[8];
    cairn_be64_put(v8, seq);
    MDB_val k = {7, "indexed"}, v = {8, v8};
    return cairn_mdb_err(mdb_put(itxn, log->imeta, &k, &v, 0));
}

int log_index_put(struct log *log, MDB_txn *itxn, const struct cairn_str *tenant,
                  const struct cairn_str *key, const struct cairn_str *id, int64_t time,
                  uint64_t seq)
{
    uint8_t sk[8], tk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    cairn_be64_put(sk, seq);
    int rc = 0;
    if (key->n) {
        MDB_val k = {log_tenant_key(tk, tenant, key), tk}, v = {8, sk};
        rc = mdb_put(itxn, log->keys, &k, &v, 0);
    }
    if (!rc && id->n) {
        uint8_t dv[16], ak[16];
        cairn_be64_put(dv, seq);
        cairn_be64_put(dv + 8, log_bias(time));
        MDB_val k = {log_tenant_key(tk, tenant, id), tk}, v = {16, dv};
        rc = mdb_put(itxn, log->dedup, &k, &v, 0);
        cairn_be64_put(ak, log_bias(time));
        cairn_be64_put(ak + 8, seq);
        MDB_val ka = {16, ak};
        if (!rc)
            rc = mdb_put(itxn, log->dedup_at, &ka, &k, 0);
    }
    return cairn_mdb_err(rc);
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int log_index_begin(struct log *log)
{
    if (log->itxn)
        return 0;
    int rc = ienv_write_begin(log, &log->itxn);
    if (rc) {
        log->itxn = NULL;
        return rc;
    }
    log->itxn_events = 0;
    log->itxn_began = mono_ns();
    return 0;
}

/* The write-behind entries of the indexer thread (below): put into the
 * open transaction, or forgotten with it. */
static int wb_flush(struct log *log);
static bool wb_clear(struct log *log);

void log_index_drop(struct log *log)
{
    /* keys entries still in the write-behind may belong to batches settled
     * before the last commit (it does not put them, see ix_covered): they
     * are in the log, not in the index, whatever itxn_events says */
    bool held = wb_clear(log);
    if (held)
        log->index_stale = true;
    if (!log->itxn)
        return;
    cairn_env_write_abort(log->ienv, log->itxn);
    log->itxn = NULL;
    if (log->itxn_events)
        log->index_stale = true; /* those batches are in the log, not the index */
}

/* The seq the indexer last settled durable (index.c, ix_settle): with
 * every write-behind entry put, the index covers the log up to it. */
static uint64_t ix_settled(struct log *log);
/* The transaction was committed: no commit is due any more. */
static void ix_committed(struct log *log);

int log_index_flush_here(struct log *log)
{
    if (!log->itxn)
        return 0;
    int rc = wb_flush(log); /* everything decided goes in before the commit */
    uint64_t settled = ix_settled(log);
    if (!rc && settled)
        rc = log_index_mark(log, log->itxn, settled);
    if (rc) {
        log_index_drop(log);
        log->index_stale = true;
        return rc;
    }
    rc = cairn_env_write_commit(log->ienv, log->itxn);
    log->itxn = NULL;
    ix_committed(log);
    if (rc)
        log->index_stale = true;
    return rc;
}

/* Counts n settled events into the open transaction; whether it is due
 * for a commit (CAIRN_INDEX_COMMIT_*). */
static bool index_added(struct log *log, size_t n)
{
    log->itxn_events += n;
    return log->itxn_events >= CAIRN_INDEX_COMMIT_EVENTS ||
           mono_ns() - log->itxn_began >= CAIRN_INDEX_COMMIT_NS;
}

/* ====================================================================== the indexer thread */

/*
 * The index transaction lives on its own thread, so that writing the index
 * of batch N (B-tree puts with random keys: about half of the writer's CPU)
 * overlaps encoding, hashing and durably committing batch N in the writer.
 * Per batch, the writer makes two calls, queued to the indexer in order
 * (a FIFO of commands, taken one at a time):
 *
 *   check       the indexer decides each input against the index and the
 *               batches before it: duplicate, conflict, or the seq it
 *               gets, and the dedup clock after the batch. The batch's
 *               entries go into the write-behind table (below); when that
 *               holds a run worth sorting, the indexer puts it into the
 *               transaction while the writer goes on. The writer posts
 *               the next batch's check once a batch is encoded, before its
 *               durable commit (log.c, decide_ahead), so the decisions are
 *               made while the disk syncs; it waits for the answer only
 *               when it comes to that batch.
 *   confirm     (posted) after the log commit: the indexer finishes the
 *               puts; if the batch is durable it prunes expired ids, marks
 *               `indexed` and, when CAIRN_INDEX_COMMIT_* says so, has the
 *               transaction committed right after the decisions of a
 *               check with no batch before it unconfirmed (the writer
 *               stops deciding ahead while a commit is due); if not, it
 *               drops its transaction — with whatever was decided after
 *               the batch, which the writer decides again — and the index
 *               is rebuilt from the log before the next check. The writer
 *               does not wait for any of it: the producers of the batch
 *               are told their seqs as soon as the log commit returned.
 *
 * The transaction is begun, used and ended on the indexer thread only, as
 * LMDB requires. Commands are taken in order, so a check sees every batch
 * before it, committed or not, and every confirm before it settled.
 */

/* ---- write-behind: decided entries, put a sorted run at a time ---- */

/*
 * The decisions need every entry decided so far (an entity's last seq for
 * expected_seq, an id seen one batch ago), but not necessarily in the
 * B-tree. keys entries first go into a table that decisions consult before
 * the transaction; when it holds WB_FLUSH_RECS it is sealed (sorted by key)
 * as the run, which is put while a new table fills: each check owes
 * WB_PUT_STEP records of it (at least twice the batch), paid WB_PUT_CHUNK
 * at a time whenever no command waits (ix_main) — so the next check, the
 * one the writer waits for, is never queued behind a step of puts;
 * decisions consult the table, then the run. Sorted puts walk the B-tree in order (the cursor's
 * leaf and the pages above it stay in cache, and LMDB skips the search
 * from the root while a key falls in the cursor's page), where one put per
 * event in event order was a random walk each (most of the indexer's CPU).
 * A commit that CAIRN_INDEX_COMMIT_* makes due does not wait for the table
 * and the run to be put (up to 65 536 puts, which held the writer tens of
 * milliseconds once a second): `indexed` is then marked below the lowest
 * seq they hold (ix_covered), so readers scan the log from there. A flush
 * (the writer idle, log_close) puts everything first and marks the whole
 * log. Both are forgotten with the transaction when it is dropped. dedup entries go through a
 * table of the same kind that is put after every check (sorted within the
 * batch), so that pruning sees every id when it did before.
 */
#define WB_FLUSH_RECS 32768
#define WB_PUT_STEP 2048 /* records of a sealed run owed by each check, at least */
#define WB_PUT_CHUNK 256 /* records put between two looks at the command queue */

enum { WB_KEYS, WB_DEDUP };

struct wb_rec {
    uint64_t pre0, pre1; /* the key's first 16 bytes, big-endian, zero-padded: most sorting */
    uint64_t seq;
    int64_t time;
    uint32_t off; /* the key (tlen | tenant | key or id) in the arena */
    uint16_t len;
    uint8_t dbi; /* WB_KEYS or WB_DEDUP */
};

/* 1 + the index of the newest record of a (dbi, key), 0: empty; tag: more
 * bits of its hash, so that probing past other keys touches no record. */
struct wb_slot {
    uint32_t rec, tag;
};

struct wb {
    struct wb_rec *rec;
    size_t n, cap;
    uint8_t *arena;
    size_t alen, acap;
    struct wb_slot *slot; /* open addressing, by (dbi, key) */
    size_t scap;          /* a power of two, more than twice hashed */
    size_t hashed;        /* rec[0, hashed) are in the slots: lookups bring them up to date */
};

static uint64_t wb_hash(unsigned dbi, const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ dbi; /* FNV-1a, then murmur3's finalizer: */
    for (size_t i = 0; i < n; i++)             /* keys differ in their last bytes only */
        h = (h ^ k[i]) * 1099511628211ull;
    h = (h ^ h >> 33) * 0xff51afd7ed558ccdull;
    return h ^ h >> 33;
}

/* The slot of (dbi, key) whose hash is h: its newest record, or the empty
 * slot for it. */
static struct wb_slot *wb_slot(const struct wb *w, uint64_t h, unsigned dbi, const uint8_t *k,
                               size_t n)
{
    uint32_t tag = (uint32_t)(h >> 32);
    for (size_t i = h & (w->scap - 1);; i = (i + 1) & (w->scap - 1)) {
        struct wb_slot *sl = &w->slot[i];
        if (!sl->rec)
            return sl;
        if (sl->tag != tag)
            continue;
        const struct wb_rec *r = &w->rec[sl->rec - 1];
        if (r->dbi == dbi && r->len == n && !memcmp(w->arena + r->off, k, n))
            return sl;
    }
}

/* Puts the records added since the last lookup into the slots (a larger
 * table takes them all again). Only lookups need the slots, so a run of
 * inputs without expected_seq never hashes its keys entries. */
static int wb_index(struct wb *w)
{
    if (w->hashed == w->n)
        return 0;
    if (2 * w->n >= w->scap) {
        size_t scap = w->scap ? w->scap : 8192;
        while (2 * w->n >= scap)
            scap *= 2;
        struct wb_slot *slot = calloc(scap, sizeof *slot);
        if (!slot)
            return CAIRN_ENOMEM;
        free(w->slot);
        w->slot = slot;
        w->scap = scap;
        w->hashed = 0;
    }
    for (size_t i = w->hashed; i < w->n; i++) { /* in order: the newest of a key wins */
        const struct wb_rec *r = &w->rec[i];
        uint64_t h = wb_hash(r->dbi, w->arena + r->off, r->len);
        *wb_slot(w, h, r->dbi, w->arena + r->off, r->len) =
            (struct wb_slot){(uint32_t)(i + 1), (uint32_t)(h >> 32)};
    }
    w->hashed = w->n;
    return 0;
}

/* The newest record of (dbi, key) in *out, NULL when there is none. */
static int wb_find(struct wb *w, unsigned dbi, const uint8_t *k, size_t n,
                   const struct wb_rec **out)
{
    *out = NULL;
    if (!w->n)
        return 0;
    int rc = wb_index(w);
    if (rc)
        return rc;
    struct wb_slot *sl = wb_slot(w, wb_hash(dbi, k, n), dbi, k, n);
    *out = sl->rec ? &w->rec[sl->rec - 1] : NULL;
    return 0;
}

static int wb_add(struct wb *w, unsigned dbi, const uint8_t *k, size_t n, uint64_t seq,
                  int64_t time)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 4096;
        struct wb_rec *rec = realloc(w->rec, cap * sizeof *rec);
        if (!rec)
            return CAIRN_ENOMEM;
        w->rec = rec;
        w->cap = cap;
    }
    if (w->acap - w->alen < n) {
        size_t cap = w->acap ? 2 * w->acap : 1u << 16;
        while (cap - w->alen < n)
            cap *= 2;
        uint8_t *arena = realloc(w->arena, cap);
        if (!arena)
            return CAIRN_ENOMEM;
        w->arena = arena;
        w->acap = cap;
    }
    uint64_t pre0 = cairn_be_prefix(k, n), pre1 = n > 8 ? cairn_be_prefix(k + 8, n - 8) : 0;
    w->rec[w->n++] =
        (struct wb_rec){pre0, pre1, seq, time, (uint32_t)w->alen, (uint16_t)n, (uint8_t)dbi};
    memcpy(w->arena + w->alen, k, n);
    w->alen += n;
    return 0;
}

static void wb_reset(struct wb *w)
{
    if (w->hashed)
        memset(w->slot, 0, w->scap * sizeof *w->slot);
    w->hashed = 0;
    w->n = 0;
    w->alen = 0;
}

static void wb_free(struct wb *w)
{
    free(w->rec);
    free(w->arena);
    free(w->slot);
    memset(w, 0, sizeof *w);
}

/* LMDB's key order (memcmp, then the shorter first), then seq: the puts of
 * one key stay in event order (the later dedup entry wins, as before). */
static int wb_cmp(const void *pa, const void *pb, void *arena)
{
    const struct wb_rec *a = pa, *b = pb;
    if (a->dbi != b->dbi)
        return a->dbi < b->dbi ? -1 : 1;
    if (a->pre0 != b->pre0)
        return a->pre0 < b->pre0 ? -1 : 1;
    if (a->pre1 != b->pre1)
        return a->pre1 < b->pre1 ? -1 : 1;
    /* two keys of 16 bytes or more with equal pre0, pre1 share their first
     * 16 bytes (a shorter one is zero-padded there: compared in full) */
    const uint8_t *ar = arena;
    size_t skip = a->len >= 16 && b->len >= 16 ? 16 : 0;
    int c =
        memcmp(ar + a->off + skip, ar + b->off + skip, (a->len < b->len ? a->len : b->len) - skip);
    if (c)
        return c;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

/* cairn_ksort's key and cmp of records of one DBI: wb_cmp. */
static const uint8_t *wb_ksort_key(const void *p, size_t *n, void *arena)
{
    const struct wb_rec *r = p;
    *n = r->len;
    return (const uint8_t *)arena + r->off;
}

static int wb_ksort_cmp(const void *a, const void *b, void *arena)
{
    const struct cairn_ksort *x = a, *y = b;
    return wb_cmp(x->p, y->p, arena);
}

/* Sorts w's records by wb_cmp. A table holds one DBI's records (keys or
 * dedup): they are sorted through cairn_ksort (common.h), by their keys,
 * then seq (the table is in seq order: record order), and moved into
 * place. The sort is the one the handlers' write-backs use; against
 * qsort_r over the 40-byte records (14 % of the indexer's samples in
 * bench/ingest) it measured the same there, where most keys tie on long
 * tenant names (bench/RESULTS.md). A mixed table, or no memory, is sorted
 * with qsort_r. */
static void wb_sort(struct wb *w)
{
    bool one_dbi = true;
    for (size_t i = 1; i < w->n && one_dbi; i++)
        one_dbi = w->rec[i].dbi == w->rec[0].dbi;
    struct cairn_ksort *o = one_dbi && w->n > 1 ? malloc(w->n * sizeof *o) : NULL;
    struct wb_rec *sorted = o ? malloc(w->cap * sizeof *sorted) : NULL;
    if (!sorted) {
        free(o);
        qsort_r(w->rec, w->n, sizeof *w->rec, wb_cmp, w->arena);
        return;
    }
    for (size_t i = 0; i < w->n; i++)
        o[i].p = &w->rec[i];
    cairn_ksort(o, w->n, wb_ksort_key, wb_ksort_cmp, w->arena);
    for (size_t i = 0; i < w->n; i++)
        sorted[i] = *(const struct wb_rec *)o[i].p;
    free(o);
    free(w->rec);
    w->rec = sorted;
}

/* Seals a table for putting: its dedup_at entries go into txn in event
 * order (their keys are event times: nearly an append), then the records
 * are sorted. The slots are cleared: a lookup hashes the sorted records
 * again, a key's newest (highest seq) last. */
static int wb_seal(struct log *log, struct wb *w, MDB_txn *txn)
{
    MDB_cursor *ac = NULL;
    int rc = mdb_cursor_open(txn, log->dedup_at, &ac);
    for (size_t i = 0; i < w->n && !rc; i++) {
        const struct wb_rec *r = &w->rec[i];
        if (r->dbi != WB_DEDUP)
            continue;
        uint8_t ak[16];
        cairn_be64_put(ak, log_bias(r->time));
        cairn_be64_put(ak + 8, r->seq);
        MDB_val k = {16, ak}, v = {r->len, w->arena + r->off};
        rc = mdb_cursor_put(ac, &k, &v, 0);
    }
    if (ac)
        mdb_cursor_close(ac);
    if (rc)
        return cairn_mdb_err(rc);
    wb_sort(w); /* wb_put_range checks the order as it puts */
    if (w->hashed)
        memset(w->slot, 0, w->scap * sizeof *w->slot);
    w->hashed = 0;
    return 0;
}

/* a's DBI and key prefix are not after b's (wb_cmp's first three steps). */
static bool wb_pre_le(const struct wb_rec *a, const struct wb_rec *b)
{
    if (a->dbi != b->dbi)
        return a->dbi < b->dbi;
    return a->pre0 != b->pre0 ? a->pre0 < b->pre0 : a->pre1 <= b->pre1;
}

/* Records of one key put in one MDB_MULTIPLE call, at most. */
#define WB_MULTI_MAX 64

/* a and b (sorted, b after a) have the same DBI and key. */
static bool wb_same_key(const struct wb *w, const struct wb_rec *a, const struct wb_rec *b)
{
    return a->dbi == b->dbi && a->pre0 == b->pre0 && a->pre1 == b->pre1 && a->len == b->len &&
           (a->len <= 16 || !memcmp(w->arena + a->off + 16, w->arena + b->off + 16, a->len - 16));
}

/* Puts the sealed records [*at, end) into keys and dedup; *at follows. */
static int wb_put_range(struct log *log, struct wb *w, MDB_txn *txn, size_t *at, size_t end)
{
    MDB_cursor *kc = NULL, *dc = NULL;
    int rc = mdb_cursor_open(txn, log->keys, &kc);
    if (!rc)
        rc = mdb_cursor_open(txn, log->dedup, &dc);
    for (; *at < end && !rc; ++*at) {
        const struct wb_rec *r = &w->rec[*at];
        /* wb_sort's order, checked on what the records hold: the DBI and
         * the keys' first 16 bytes. (wb_cmp in full, in a pass after the
         * sort, read the arena at random on every tie — most keys, with
         * long tenant names: 4-5 % of the indexer's samples. The sort
         * itself is tested against qsort in test_common.) */
        assert(*at == 0 || wb_pre_le(&w->rec[*at - 1], r));
        MDB_val k = {r->len, w->arena + r->off};
        if (r->dbi == WB_KEYS) {
            /* A keys entry is its entity's newest: puts come in seq order
             * per key (a run is sorted by key, then seq, and put whole
             * before the next table is sealed; catching up puts with
             * log_index_put, before any of these). MDB_APPENDDUP then
             * skips the search among the key's seqs; should LMDB find one
             * not below it anyway, the plain puts decide as before
             * (MDB_KEYEXIST leaves the key's entries unchanged). The
             * records of one key, adjacent once sorted, go in one
             * MDB_MULTIPLE put: one search of the key for all of them. */
            uint8_t seqs[WB_MULTI_MAX * 8];
            size_t n = 0;
            do
                cairn_be64_put(seqs + 8 * n, w->rec[*at + n].seq);
            while (++n < WB_MULTI_MAX && *at + n < end && wb_same_key(w, r, &w->rec[*at + n]));
            MDB_val mv[2] = {{8, seqs}, {n, NULL}};
            rc = mdb_cursor_put(kc, &k, mv, MDB_MULTIPLE | MDB_APPENDDUP);
            size_t done = rc ? mv[1].mv_size : n;
            for (size_t i = done; i < n && (!rc || rc == MDB_KEYEXIST); i++) {
                MDB_val v = {8, seqs + 8 * i};
                rc = mdb_cursor_put(kc, &k, &v, 0);
            }
            *at += n - 1;
        } else {
            uint8_t val[16];
            cairn_be64_put(val, r->seq);
            cairn_be64_put(val + 8, log_bias(r->time));
            MDB_val v = {16, val};
            rc = mdb_cursor_put(dc, &k, &v, 0);
        }
    }
    if (kc)
        mdb_cursor_close(kc);
    if (dc)
        mdb_cursor_close(dc);
    return cairn_mdb_err(rc);
}

/* Puts every record of w into txn, then empties it (on failure too: the
 * caller drops the transaction). */
static int wb_put(struct log *log, struct wb *w, MDB_txn *txn)
{
    size_t at = 0;
    int rc = wb_seal(log, w, txn);
    if (!rc)
        rc = wb_put_range(log, w, txn, &at, w->n);
    wb_reset(w);
    return rc;
}

enum ix_cmd { IX_CHECK, IX_CONFIRM, IX_FLUSH, IX_STOP };

/* A command for the indexer, queued in order (struct log_ix). */
struct ix_msg {
    enum ix_cmd cmd;
    struct log_ix_answer *ans; /* filled in when done; NULL: posted, nobody waits */
    /* check: decide in[0, n) into res, after head_seq, with the dedup
     * clock max_time before the batch and the writer's wall clock */
    const struct log_input *in;
    struct log_result *res;
    size_t n;
    int64_t wall, max_time; /* confirm: the clock after the batch */
    uint64_t head_seq;      /* check: the seq before the batch; confirm: after it */
    bool durable;           /* confirm: the log committed the batch */
    struct log_pre *pre;    /* check: encode the batch too (NULL: the writer does) */
};

/* Commands queued at most: a check ahead, the confirm before it, and one
 * more (a flush or stop) — the writer waits for room beyond that. */
#define IX_QUEUE 4

struct log_ix {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct ix_msg q[IX_QUEUE]; /* FIFO, posted by the writer's thread */
    unsigned q_head, q_len;
    /* the indexer thread's own state */
    unsigned unconfirmed;    /* checks not confirmed yet: no commit may happen */
    int put_rc;              /* a put failed: the transaction is broken until dropped */
    struct wb wb;            /* keys entries decided, not yet put (indexer thread only) */
    struct wb run;           /* a sealed (sorted) table of keys entries being put */
    size_t run_at;           /* its records before this one are in the transaction */
    size_t run_owed;         /* records of it to put before waiting for a command */
    uint64_t run_min;        /* the lowest seq in the run (its first before sorting) */
    struct wb ids;           /* the batch's dedup entries, put after every check */
    uint64_t settled;        /* the head after the last batch settled durable (0: none) */
    _Atomic bool commit_due; /* a settle found CAIRN_INDEX_COMMIT_* reached (the writer reads it) */
};

/* ---- deciding a batch (the writer waits for this) ---- */

/* The dedup clock: the newest event time seen, but never ahead of the
 * writer's wall clock. Without the cap, one event dated in the future —
 * from any tenant — would expire every tenant's ids at once. Event times
 * are bounded (CAIRN_TIME_MIN/MAX), so the subtractions cannot overflow. */
static int64_t dedup_clock(int64_t max_time, int64_t t, int64_t wall)
{
    int64_t c = t > max_time ? t : max_time;
    return c < wall ? c : wall;
}

/* The seq of the last event of tenant + key in txn, 0 if none. */
int log_last_of(MDB_txn *txn, MDB_dbi keys, const struct cairn_str *tenant,
                const struct cairn_str *key, uint64_t *seq)
{
    uint8_t tk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    MDB_val k = {log_tenant_key(tk, tenant, key), tk}, v;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, keys, &c);
    if (rc)
        return cairn_mdb_err(rc);
    rc = mdb_cursor_get(c, &k, &v, MDB_SET);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST_DUP);
    *seq = rc == 0 ? cairn_be64_get(v.mv_data) : 0;
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

/* The stored (seq, time) of the dedup key dk: 1 when found, 0 when not. */
static int dedup_get(struct log *log, const uint8_t *dk, size_t dkn, uint64_t *seq, int64_t *t)
{
    MDB_val k = {dkn, (void *)dk}, v;
    int rc = mdb_get(log->itxn, log->dedup, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return cairn_mdb_err(rc);
    if (v.mv_size != 16)
        return CAIRN_ECORRUPT;
    *seq = cairn_be64_get(v.mv_data);
    *t = log_unbias(cairn_be64_get((uint8_t *)v.mv_data + 8));
    return 1;
}

/* Whether an envelope of `in` can exceed the encoder's buffer (the
 * strings are bounded by ingest; the payload by CAIRN_PAYLOAD_MAX_CEILING). */
static bool too_big(const struct log_input *in)
{
    size_t n = in->payload_len + in->type.n + in->tenant.n + in->key.n + in->id.n + in->source.n;
    return n + 512 > CAIRN_PAYLOAD_MAX_CEILING + 4096;
}

/* Decides each input against the entries before it: the batch's own and
 * earlier batches' (the write-behind table, then the transaction). The
 * entries of the accepted inputs go into the table. */
static int ix_decide(struct log *log, struct log_ix *x, struct ix_msg *m)
{
    int rc = 0;
    uint64_t seq = m->head_seq;
    int64_t max_time = m->max_time;
    struct wb *w = &x->wb;
    for (size_t i = 0; i < m->n && !rc; i++) {
        const struct log_input *in = &m->in[i];
        struct log_result *res = &m->res[i];
        uint8_t ik[1 + CAIRN_TENANT_MAX + CAIRN_ID_MAX], kk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
        size_t ikn = 0, kkn = 0;
        memset(res, 0, sizeof *res);
        if (in->time < CAIRN_TIME_MIN || in->time > CAIRN_TIME_MAX) {
            res->rc = CAIRN_EINVAL; /* ingest refuses these; never trust it blindly */
            continue;
        }
        if (too_big(in)) {
            res->rc = CAIRN_ETOOBIG;
            continue;
        }
        if (in->id.n) {
            uint64_t s = 0;
            int64_t t = 0;
            ikn = log_tenant_key(ik, &in->tenant, &in->id);
            const struct wb_rec *r;
            if ((rc = wb_find(&x->ids, WB_DEDUP, ik, ikn, &r)))
                break;
            int found = r ? (s = r->seq, t = r->time, 1) : dedup_get(log, ik, ikn, &s, &t);
            if (found < 0) {
                rc = found;
                break;
            }
            if (found && t >= dedup_clock(max_time, in->time, m->wall) - log->cfg.dedup_window_ns) {
                res->seq = s;
                res->duplicate = true;
                continue;
            }
        }
        if (in->key.n)
            kkn = log_tenant_key(kk, &in->tenant, &in->key);
        if (in->expected_seq >= 0) {
            uint64_t last = 0;
            const struct wb_rec *r = NULL; /* the newest: the table, then the run */
            if (kkn && (rc = wb_find(w, WB_KEYS, kk, kkn, &r)))
                break;
            if (kkn && !r && (rc = wb_find(&x->run, WB_KEYS, kk, kkn, &r)))
                break;
            if (r)
                last = r->seq;
            else if ((rc = log_last_of(log->itxn, log->keys, &in->tenant, &in->key, &last)))
                break;
            if (last != (uint64_t)in->expected_seq) {
                res->rc = CAIRN_ECONFLICT;
                res->actual_seq = last;
                continue;
            }
        }
        res->seq = ++seq;
        max_time = dedup_clock(max_time, in->time, m->wall);
        if (kkn)
            rc = wb_add(w, WB_KEYS, kk, kkn, seq, in->time);
        if (ikn && !rc)
            rc = wb_add(&x->ids, WB_DEDUP, ik, ikn, seq, in->time);
    }
    m->max_time = max_time;
    return rc;
}

/* Encodes a batch decided ahead (struct log_pre) as append_cursor (log.c)
 * would: each accepted input at its seq, ingested at the batch's wall
 * clock but never before the previous event, chained from pre->prev. Best
 * effort: on any failure pre->ok stays false and the writer encodes. */
static void ix_encode(const struct ix_msg *m)
{
    struct log_pre *p = m->pre;
    p->ok = false;
    cairn_buf_reset(&p->buf);
    if (p->at_cap < m->n + 1) {
        size_t *at = realloc(p->at, (m->n + 1) * sizeof *at);
        if (!at)
            return;
        p->at = at;
        p->at_cap = m->n + 1;
    }
    uint8_t prev[LOG_HASH_LEN], hash[LOG_HASH_LEN];
    memcpy(prev, p->prev, LOG_HASH_LEN);
    int64_t last = p->last_ingested;
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++) {
        const struct log_result *r = &m->res[i];
        if (r->rc || r->duplicate)
            continue;
        int64_t ingested = m->wall > last ? m->wall : last;
        p->at[k++] = p->buf.len;
        if (log_envelope_encode_append(&p->buf, p->md, &m->in[i], r->seq, ingested, prev, hash))
            return;
        memcpy(prev, hash, LOG_HASH_LEN);
        last = ingested;
    }
    p->at[k] = p->buf.len;
    p->count = k;
    memcpy(p->hash, prev, LOG_HASH_LEN);
    p->ingested = last;
    p->ok = true;
}

/* After a check (the writer is encoding meanwhile): the batch's dedup
 * entries go into the transaction now, so that pruning (ix_settle) sees
 * every id exactly as before; the keys entries once the table holds a run
 * worth sorting. */
static int ix_put(struct log *log, struct log_ix *x, size_t n)
{
    int rc = x->ids.n ? wb_put(log, &x->ids, log->itxn) : 0;
    if (!rc && !x->run.n && x->wb.n >= WB_FLUSH_RECS) { /* seal: the table becomes the run */
        struct wb t = x->run;
        x->run = x->wb;
        x->wb = t;
        x->run_at = 0;
        x->run_min = x->run.rec[0].seq; /* the table is in seq order until sealed */
        rc = wb_seal(log, &x->run, log->itxn);
    }
    if (!rc && x->run.n) {
        /* a step of the run per check, put when no command waits (ix_pay);
         * at least twice the batch, so the run drains before the table
         * refills whatever the batch size */
        x->run_owed += 2 * n > WB_PUT_STEP ? 2 * n : WB_PUT_STEP;
    }
    return rc;
}

/* A put failed (x->put_rc) with no batch unconfirmed: every batch in
 * the transaction is durable in the log, so the transaction goes and the
 * index is rebuilt from the log before it is used again (ix_pay can fail
 * after the settle that would have dropped it, see ix_settle). */
static void ix_broken(struct log *log)
{
    log_index_drop(log); /* clears put_rc */
    log->index_stale = true;
}

/* Puts up to WB_PUT_CHUNK records of the run that checks owe (ix_put).
 * Called between commands: a check queued meanwhile is decided first, and
 * its decisions see the records not put yet in the run, as before. */
static void ix_pay(struct log *log, struct log_ix *x)
{
    if (!x->run.n || x->put_rc || !log->itxn) {
        x->run_owed = 0; /* nothing to put, or the transaction is broken until dropped */
        return;
    }
    size_t left = x->run.n - x->run_at, k = x->run_owed < WB_PUT_CHUNK ? x->run_owed : WB_PUT_CHUNK;
    if (k > left)
        k = left;
    int rc = wb_put_range(log, &x->run, log->itxn, &x->run_at, x->run_at + k);
    x->run_owed -= k;
    if (rc)
        x->put_rc = rc;
    else if (x->run_at == x->run.n)
        wb_reset(&x->run);
    if (!x->run.n)
        x->run_owed = 0;
}

static int wb_flush(struct log *log)
{
    struct log_ix *x = log->ix;
    int rc = 0;
    if (!x)
        return 0;
    if (x->ids.n)
        rc = wb_put(log, &x->ids, log->itxn);
    if (!rc && x->run.n)
        rc = wb_put_range(log, &x->run, log->itxn, &x->run_at, x->run.n);
    wb_reset(&x->run);
    if (!rc && x->wb.n)
        rc = wb_put(log, &x->wb, log->itxn);
    return rc;
}

/* Forgets the write-behind (with the transaction it was for); whether it
 * held keys entries. */
static bool wb_clear(struct log *log)
{
    struct log_ix *x = log->ix;
    if (!x)
        return false;
    bool held = x->wb.n || x->run.n;
    wb_reset(&x->wb);
    wb_reset(&x->run);
    wb_reset(&x->ids);
    x->commit_due = false;
    x->put_rc = 0;
    return held;
}

static void ix_committed(struct log *log)
{
    if (log->ix)
        log->ix->commit_due = false;
}

static uint64_t ix_settled(struct log *log)
{
    return log->ix ? log->ix->settled : 0;
}

/* How far the transaction covers the log once `head` is settled: up to
 * the lowest seq whose entries are still in the write-behind (the table
 * is in seq order; the run is sorted by key, so its lowest seq is kept
 * from before). An index commit then needs no put of them first: after a
 * crash, log_index_catch_up re-puts (indexed, head], and every put is
 * idempotent (the same dedup value, the same keys duplicate). */
static uint64_t ix_covered(const struct log_ix *x, uint64_t head)
{
    uint64_t low = head + 1;
    if (x->run.n && x->run_min < low)
        low = x->run_min;
    if (x->wb.n && x->wb.rec[0].seq < low)
        low = x->wb.rec[0].seq;
    if (x->ids.n && x->ids.rec[0].seq < low)
        low = x->ids.rec[0].seq;
    return low - 1;
}

/* Forgets ids whose event time left the window, a bounded number a batch. */
static int dedup_prune(struct log *log, int64_t max_time)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(log->itxn, log->dedup_at, &c);
    if (rc)
        return cairn_mdb_err(rc);
    for (int i = 0; i < CAIRN_DEDUP_PRUNE_PER_BATCH; i++) {
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        if (rc || k.mv_size != 16)
            break;
        int64_t t = log_unbias(cairn_be64_get(k.mv_data));
        if (t >= max_time - log->cfg.dedup_window_ns)
            break;
        uint64_t seq = cairn_be64_get((uint8_t *)k.mv_data + 8);
        MDB_val dv;
        if (mdb_get(log->itxn, log->dedup, &v, &dv) == 0 && dv.mv_size == 16 &&
            cairn_be64_get(dv.mv_data) == seq && (rc = mdb_del(log->itxn, log->dedup, &v, NULL)))
            break;
        if ((rc = mdb_cursor_del(c, 0)))
            break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

/* After the log commit: keep the batch (durable) or forget the index
 * transaction (the batch is not in the log, and earlier ones are). m is
 * the batch's confirm: the clock and head after it. */
static int ix_settle(struct log *log, struct log_ix *x, const struct ix_msg *m)
{
    int rc = x->put_rc;
    if (m->durable && !rc && log->itxn && !log->index_stale) {
        rc = dedup_prune(log, m->max_time);
        if (!rc)
            rc = log_index_mark(log, log->itxn, ix_covered(x, m->head_seq));
        if (!rc) {
            x->settled = m->head_seq;
            /* The commit waits for a check's decisions with no batch
             * before it unconfirmed (ix_check): the writer is not held
             * for it. */
            if (index_added(log, m->n))
                x->commit_due = true;
            return 0;
        }
    }
    /* The batch is not in the log (the transaction holds its puts, and
     * those of a batch decided after it), or the index failed to take a
     * durable batch, or lost it before. Either way the transaction goes,
     * and the index is rebuilt from the log before the next check if it
     * held (or missed) durable batches. */
    bool lost = log->itxn_events > 0 || m->durable;
    log_index_drop(log);
    if (lost)
        log->index_stale = true;
    return rc;
}

static void ix_answer(struct log_ix *x, struct log_ix_answer *ans, int rc, int64_t max_time)
{
    if (!ans)
        return;
    pthread_mutex_lock(&x->mu);
    ans->rc = rc;
    ans->max_time = max_time;
    ans->done = true;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

/* A check: decisions (with, for a batch decided ahead, its envelopes:
 * ix_encode; answered at once), then the due commit if no batch
 * before this one waits for its confirm, then the puts while the writer
 * encodes and commits. A check made while an earlier batch is not
 * confirmed (the writer's decide-ahead, log.c) cannot catch a stale index
 * up — the log does not hold that batch yet — nor use a broken
 * transaction: it answers CAIRN_EBUSY and the writer decides the batch
 * again once the one before is confirmed. Every check, whatever its
 * answer, is confirmed once. */
static void ix_check(struct log *log, struct log_ix *x, struct ix_msg *m)
{
    int rc = 0;
    if ((log->index_stale || x->put_rc) && x->unconfirmed)
        rc = CAIRN_EBUSY;
    else if (x->put_rc)
        ix_broken(log); /* a put between commands, after its batches settled */
    if (!rc && log->index_stale)
        rc = log_index_catch_up(log);
    if (!rc)
        rc = log_index_begin(log);
    if (!rc)
        rc = ix_decide(log, x, m);
    if (!rc && m->pre)
        ix_encode(m);
    ix_answer(x, m->ans, rc, m->max_time);
    x->unconfirmed++;
    if (rc)
        return;
    if (x->commit_due && x->unconfirmed == 1) {
        /* The commit an earlier settle found due, now that the writer has
         * its decisions and encodes and commits the batch meanwhile.
         * Nothing of this batch is in the transaction yet (its entries
         * are in the write-behind until ix_put), and every batch before
         * it is settled, so the commit holds settled batches exactly, as
         * `indexed` says. */
        x->commit_due = false;
        rc = cairn_env_write_commit(log->ienv, log->itxn);
        log->itxn = NULL;
        if (rc)
            log->index_stale = true; /* the settle drops the rest */
        else
            rc = log_index_begin(log);
    }
    if (!rc)
        rc = ix_put(log, x, m->n);
    if (rc)
        x->put_rc = rc;
}

static void *ix_main(void *arg)
{
    struct log *log = arg;
    struct log_ix *x = log->ix;
    pthread_setname_np(pthread_self(), "cairn-index"); /* per-thread profiles (perf, top -H) */
    for (;;) {
        pthread_mutex_lock(&x->mu);
        while (!x->q_len) {
            if (x->run_owed) { /* put what checks owe while no command waits */
                pthread_mutex_unlock(&x->mu);
                ix_pay(log, x);
                pthread_mutex_lock(&x->mu);
                continue;
            }
            pthread_cond_wait(&x->cv, &x->mu);
        }
        struct ix_msg m = x->q[x->q_head];
        x->q_head = (x->q_head + 1) % IX_QUEUE;
        x->q_len--;
        pthread_cond_broadcast(&x->cv); /* room in the queue */
        pthread_mutex_unlock(&x->mu);
        int rc = 0;
        if (m.cmd == IX_CHECK) {
            ix_check(log, x, &m);
            continue;
        }
        if (m.cmd == IX_CONFIRM) {
            assert(x->unconfirmed > 0);
            x->unconfirmed--;
            rc = ix_settle(log, x, &m);
        } else if (!x->unconfirmed) {
            if (x->put_rc)
                ix_broken(log);
            rc = log_index_flush_here(log); /* IX_FLUSH, IX_STOP */
        } else if (m.cmd == IX_STOP) {
            /* a batch never confirmed: its entries must not be kept */
            log_index_drop(log);
            log->index_stale = true;
        } /* else (a flush): the transaction holds a batch the log may not
           * commit; the settle of its confirm commits when it is due */
        ix_answer(x, m.ans, rc, 0);
        if (m.cmd == IX_STOP)
            break;
    }
    return NULL;
}

/* Queues m for the indexer (waiting for room). */
static void ix_post(struct log_ix *x, const struct ix_msg *m)
{
    pthread_mutex_lock(&x->mu);
    while (x->q_len == IX_QUEUE)
        pthread_cond_wait(&x->cv, &x->mu);
    if (m->ans)
        m->ans->done = false;
    x->q[(x->q_head + x->q_len) % IX_QUEUE] = *m;
    x->q_len++;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

int log_ix_wait(struct log *log, struct log_ix_answer *ans)
{
    struct log_ix *x = log->ix;
    pthread_mutex_lock(&x->mu);
    while (!ans->done)
        pthread_cond_wait(&x->cv, &x->mu);
    pthread_mutex_unlock(&x->mu);
    return ans->rc;
}

static int ix_call(struct log *log, enum ix_cmd cmd)
{
    struct log_ix_answer ans;
    ix_post(log->ix, &(struct ix_msg){.cmd = cmd, .ans = &ans});
    return log_ix_wait(log, &ans);
}

void log_ix_check_post(struct log *log, const struct log_input *in, struct log_result *res,
                       size_t n, int64_t wall, int64_t max_time, uint64_t head_seq,
                       struct log_pre *pre, struct log_ix_answer *ans)
{
    ix_post(log->ix, &(struct ix_msg){.cmd = IX_CHECK,
                                      .ans = ans,
                                      .pre = pre,
                                      .in = in,
                                      .res = res,
                                      .n = n,
                                      .wall = wall,
                                      .max_time = max_time,
                                      .head_seq = head_seq});
}

int log_ix_check(struct log *log, const struct log_input *in, struct log_result *res, size_t n,
                 int64_t wall, int64_t *max_time)
{
    struct log_ix_answer ans;
    log_ix_check_post(log, in, res, n, wall, *max_time, log->head_seq, NULL, &ans);
    int rc = log_ix_wait(log, &ans);
    *max_time = ans.max_time;
    return rc;
}

/* Posted, not waited for: the producers of a durable batch are told their
 * seqs as soon as the log commit returned, while the indexer finishes the
 * batch's puts and settles it (commands are taken in order: a later one
 * finds it settled). The settle reads only what the message carries and
 * the check left in x, never the caller's inputs or results. Its outcome
 * needs no answer: a failure leaves the index stale, rebuilt from the log
 * before the next check. */
void log_ix_confirm(struct log *log, bool durable, size_t n, int64_t max_time)
{
    ix_post(log->ix, &(struct ix_msg){.cmd = IX_CONFIRM,
                                      .n = n,
                                      .max_time = max_time,
                                      .head_seq = log->head_seq,
                                      .durable = durable});
}

bool log_ix_commit_due(struct log *log)
{
    return log->ix && log->ix->commit_due;
}

int log_index_flush(struct log *log)
{
    return log->ix ? ix_call(log, IX_FLUSH) : log_index_flush_here(log);
}

int log_ix_start(struct log *log)
{
    struct log_ix *x = calloc(1, sizeof *x);
    if (!x)
        return CAIRN_ENOMEM;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    log->ix = x;
    if (pthread_create(&x->thread, NULL, ix_main, log)) {
        pthread_mutex_destroy(&x->mu);
        pthread_cond_destroy(&x->cv);
        free(x);
        log->ix = NULL;
        return CAIRN_ENOMEM;
    }
    return 0;
}

void log_ix_stop(struct log *log)
{
    struct log_ix *x = log->ix;
    if (!x)
        return;
    ix_call(log, IX_STOP);
    pthread_join(x->thread, NULL);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    wb_free(&x->wb);
    wb_free(&x->run);
    wb_free(&x->ids);
    free(x);
    log->ix = NULL;
}

/* Re-indexes (from, to] in one index transaction. */
static int index_chunk(struct log *log, uint64_t from, uint64_t to)
{
    struct log_snap *s;
    struct log_iter *it;
    struct log_event ev;
    MDB_txn *itxn;
    int rc = log_snap_begin(log, &s);
    if (rc)
        return rc;
    if ((rc = ienv_write_begin(log, &itxn))) {
        log_snap_end(s);
        return rc;
    }
    if (!(rc = log_iter_open(s, from, NULL, NULL, &it))) {
        while (!rc && !(rc = log_iter_next(it, &ev)) && ev.seq <= to) {
            struct cairn_str id = {ev.id.p ? ev.id.p : "", ev.id.p ? ev.id.n : 0};
            rc = log_index_put(log, itxn, &ev.tenant, &ev.key, &id, ev.time, ev.seq);
        }
        log_iter_close(it);
        if (rc == CAIRN_ENOTFOUND)
            rc = 0;
    }
    log_snap_end(s);
    if (!rc)
        rc = log_index_mark(log, itxn, to);
    if (rc) {
        cairn_env_write_abort(log->ienv, itxn);
        return rc;
    }
    return cairn_env_write_commit(log->ienv, itxn);
}

int log_index_catch_up(struct log *log)
{
    MDB_txn *txn;
    uint64_t indexed;
    log_index_drop(log); /* one write transaction at a time */
    int rc = cairn_env_read_begin(log->ienv, &txn);
    if (rc)
        return rc;
    rc = meta_get_u64(log, txn, "indexed", &indexed);
    cairn_env_read_end(log->ienv, txn);
    while (!rc && indexed < log->head_seq) {
        uint64_t to = log->head_seq - indexed > INDEX_CHUNK ? indexed + INDEX_CHUNK : log->head_seq;
        rc = index_chunk(log, indexed + 1, to);
        if (rc == CAIRN_EMAPFULL && !(rc = cairn_env_grow(log->ienv)))
            continue;
        indexed = to;
    }
    if (!rc) {
        log->index_stale = false;
        if (log->ix)
            log->ix->settled = log->head_seq;
    }
    return rc;
}

/* Drops the index unless it can be trusted (see the file comment), then
 * marks it in use (not clean) and syncs that mark before any append. */
static int index_trust(struct log *log)
{
    char boot[64], stored[64] = "";
    uint64_t clean;
    MDB_txn *txn;
    MDB_val k = {4, "boot"}, v;
    boot_id(boot);
    int rc = ienv_write_begin(log, &txn);
    if (rc)
        return rc;
    if (mdb_get(txn, log->imeta, &k, &v) == 0 && v.mv_size < sizeof stored) {
        memcpy(stored, v.mv_data, v.mv_size);
        stored[v.mv_size] = '\0';
    }
    rc = meta_get_u64(log, txn, "clean", &clean);
    if (!rc && !clean && (!boot[0] || strcmp(boot, stored))) {
        rc = mdb_drop(txn, log->keys, 0);
        if (!rc)
            rc = mdb_drop(txn, log->dedup, 0);
        if (!rc)
            rc = mdb_drop(txn, log->dedup_at, 0);
        rc = cairn_mdb_err(rc);
        if (!rc)
            rc = log_index_mark(log, txn, 0);
    }
    uint8_t zero[8] = {0};
    MDB_val kc = {5, "clean"}, vc = {8, zero}, vb = {strlen(boot), boot};
    if (!rc)
        rc = cairn_mdb_err(mdb_put(txn, log->imeta, &kc, &vc, 0));
    if (!rc)
        rc = cairn_mdb_err(mdb_put(txn, log->imeta, &k, &vb, 0));
    if (rc) {
        cairn_env_write_abort(log->ienv, txn);
        return rc;
    }
    rc = cairn_env_write_commit(log->ienv, txn);
    return rc ? rc : cairn_env_sync(log->ienv);
}

static int open_index_dbis(struct log *log, MDB_txn *txn)
{
    unsigned c = log->cfg.readonly ? 0 : MDB_CREATE;
    int rc = mdb_dbi_open(txn, "keys", c | MDB_DUPSORT | MDB_DUPFIXED, &log->keys);
    if (!rc)
        rc = mdb_dbi_open(txn, "dedup", c, &log->dedup);
    if (!rc)
        rc = mdb_dbi_open(txn, "dedup_at", c, &log->dedup_at);
    if (!rc)
        rc = mdb_dbi_open(txn, "meta", c, &log->imeta);
    return cairn_mdb_err(rc);
}

int log_index_open(struct log *log)
{
    char dir[4200];
    MDB_txn *txn;
    bool ro = log->cfg.readonly;
    if (snprintf(dir, sizeof dir, "%s/index", log->cfg.dir) >= (int)sizeof dir)
        return CAIRN_EINVAL;
    if (ro && access(dir, F_OK)) { /* never indexed (a backup's copy): nothing to say */
        log->ienv = NULL;
        return 0;
    }
    int rc = cairn_env_open(&log->ienv, dir, 8, log->cfg.map_size,
                            ro ? MDB_RDONLY
                               : MDB_NOSYNC | MDB_NOMETASYNC | MDB_WRITEMAP | MDB_NORDAHEAD);
    if (rc) {
        log->ienv = NULL;
        return ro ? 0 : rc; /* a reader of a log never indexed: entity reads fail */
    }
    rc = ro ? cairn_env_read_begin(log->ienv, &txn) : ienv_write_begin(log, &txn);
    if (rc)
        return rc;
    rc = open_index_dbis(log, txn);
    if (rc) {
        (ro ? cairn_env_read_end : cairn_env_write_abort)(log->ienv, txn);
        if (ro) { /* created but never written: no index yet */
            cairn_env_close(log->ienv);
            log->ienv = NULL;
            return 0;
        }
        return rc;
    }
    rc = ro ? cairn_env_read_commit(log->ienv, txn) : cairn_env_write_commit(log->ienv, txn);
    if (!rc && !ro && !(rc = index_trust(log)))
        rc = log_index_catch_up(log);
    return rc;
}

void log_index_close(struct log *log)
{
    if (!log->ienv)
        return;
    MDB_txn *txn;
    log_ix_stop(log); /* commits the open index transaction */
    /* A clean close: everything synced, so the index survives a reboot. */
    if (!log->cfg.readonly && !log->index_stale && !cairn_env_sync(log->ienv) &&
        !ienv_write_begin(log, &txn)) {
        uint8_t one[8] = {0, 0, 0, 0, 0, 0, 0, 1};
        MDB_val k = {5, "clean"}, v = {8, one};
        if (mdb_put(txn, log->imeta, &k, &v, 0)) {
            cairn_env_write_abort(log->ienv, txn);
            fprintf(stderr, "cairn: could not mark the log index clean\n");
        } else if (!cairn_env_write_commit(log->ienv, txn)) {
            cairn_env_sync(log->ienv);
        }
    }
    cairn_env_close(log->ienv);
    log->ienv = NULL;
}
