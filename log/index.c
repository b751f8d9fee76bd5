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
 *  - the index is written in the same writer thread, in one transaction
 *    that spans many group commits: it commits (MDB_NOSYNC: its pages reach
 *    the disk when the OS writes them back) every CAIRN_INDEX_COMMIT_EVENTS
 *    events or CAIRN_INDEX_COMMIT_NS, and whenever the writer's queue
 *    empties. Each random-key B-tree page is then copied and written once
 *    per index commit instead of once per group commit (most pages are
 *    touched by many batches). The writer reads its own open transaction
 *    (dedup, expected_seq), so it never sees a stale index; other readers
 *    see the last index commit and scan the log past `meta.indexed`
 *    (log.c: entity reads), so they never miss an event either;
 *  - `meta.indexed` (in the index) says how far it covers the log. After a
 *    process crash the OS still has every page, so the index is intact and
 *    at most one batch behind: log_index_catch_up re-indexes the tail.
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

#include <stdio.h>
#include <string.h>
#include <time.h>

#define INDEX_CHUNK 65536 /* events re-indexed per transaction when catching up */

static void boot_id(char out[64])
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    size_t n = f ? fread(out, 1, 63, f) : 0;
    if (f)
        fclose(f);
    out[n] = '\0';
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
    int rc = cairn_env_write_begin(log->ienv, &log->itxn);
    if (rc) {
        log->itxn = NULL;
        return rc;
    }
    log->itxn_events = 0;
    log->itxn_began = mono_ns();
    return 0;
}

void log_index_drop(struct log *log)
{
    if (!log->itxn)
        return;
    cairn_env_write_abort(log->ienv, log->itxn);
    log->itxn = NULL;
    if (log->itxn_events)
        log->index_stale = true; /* those batches are in the log, not the index */
}

int log_index_flush(struct log *log)
{
    if (!log->itxn)
        return 0;
    int rc = cairn_env_write_commit(log->ienv, log->itxn);
    log->itxn = NULL;
    if (rc)
        log->index_stale = true;
    return rc;
}

int log_index_added(struct log *log, size_t n)
{
    log->itxn_events += n;
    if (log->itxn_events >= CAIRN_INDEX_COMMIT_EVENTS ||
        mono_ns() - log->itxn_began >= CAIRN_INDEX_COMMIT_NS)
        return log_index_flush(log);
    return 0;
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
    if ((rc = cairn_env_write_begin(log->ienv, &itxn))) {
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
    if (!rc)
        log->index_stale = false;
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
    int rc = cairn_env_write_begin(log->ienv, &txn);
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
    return rc ? rc : cairn_mdb_err(mdb_env_sync(cairn_env_mdb(log->ienv), 1));
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
    int rc = cairn_env_open(&log->ienv, dir, 8, log->cfg.map_size,
                            ro ? MDB_RDONLY : MDB_NOSYNC | MDB_NOMETASYNC);
    if (rc) {
        log->ienv = NULL;
        return ro ? 0 : rc; /* a reader of a log never indexed: entity reads fail */
    }
    rc = ro ? cairn_env_read_begin(log->ienv, &txn) : cairn_env_write_begin(log->ienv, &txn);
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
    if (!log->cfg.readonly)
        log_index_flush(log);
    /* A clean close: everything synced, so the index survives a reboot. */
    if (!log->cfg.readonly && !log->index_stale && !mdb_env_sync(cairn_env_mdb(log->ienv), 1) &&
        !cairn_env_write_begin(log->ienv, &txn)) {
        uint8_t one[8] = {0, 0, 0, 0, 0, 0, 0, 1};
        MDB_val k = {5, "clean"}, v = {8, one};
        if (mdb_put(txn, log->imeta, &k, &v, 0)) {
            cairn_env_write_abort(log->ienv, txn);
            fprintf(stderr, "cairn: could not mark the log index clean\n");
        } else if (!cairn_env_write_commit(log->ienv, txn)) {
            mdb_env_sync(cairn_env_mdb(log->ienv), 1);
        }
    }
    cairn_env_close(log->ienv);
    log->ienv = NULL;
}
