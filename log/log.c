/*
 * log.c — opening, appending to, reading and verifying DATA/log.
 *
 * Invariants:
 *  - seqs are dense from 1; events[seq].prev == events[seq-1].hash;
 *  - meta "head" is written in the same transaction as the events it covers;
 *  - `events` is only ever written with MDB_APPEND: no update, no delete;
 *  - only one thread appends (the writer); readers use snapshots.
 */
#include "log_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

/* A batch encoded ahead (struct log_pre) takes at most this much memory;
 * a larger one is encoded by the writer as it appends. */
#define PRE_MAX (64u << 20)

struct log_snap {
    struct log *log;
    MDB_txn *txn;
    MDB_txn *itxn; /* the index, begun on first use (entity reads) */
};

struct log_iter {
    struct log_snap *s;
    MDB_cursor *cur;
    bool entity, started;
    bool tail;        /* entity: past the index, scanning the log itself */
    uint64_t indexed; /* entity: the index covers the log up to here */
    uint64_t from;
    uint8_t tk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    size_t tk_len;
    uintptr_t page; /* the map page of the last value read (readahead_page) */
    size_t psize;   /* LMDB's page size (a power of two) */
};

/* Time keys are biased so negative times sort before positive ones. */
uint64_t log_bias(int64_t t)
{
    return (uint64_t)t ^ (1ull << 63);
}

int64_t log_unbias(uint64_t v)
{
    return (int64_t)(v ^ (1ull << 63));
}

/* tlen u8 | tenant | rest — the key layout of `keys`, `dedup`. */
size_t log_tenant_key(uint8_t *out, const struct cairn_str *tenant, const struct cairn_str *rest)
{
    /* out holds 1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX; ingest bounds both */
    assert(rest->n <= CAIRN_KEY_MAX);
    size_t n = cairn_tkey(out, 1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX, tenant, rest);
    assert(n);
    return n;
}

/* ====================================================================== opening */

static int read_meta(struct log *log, MDB_txn *txn)
{
    MDB_val k = {7, "version"}, v;
    int rc = mdb_get(txn, log->meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0; /* a new log */
    if (rc)
        return cairn_mdb_err(rc);
    const uint8_t *vp = v.mv_data;
    if (v.mv_size != 4 ||
        ((uint32_t)vp[0] << 24 | vp[1] << 16 | vp[2] << 8 | vp[3]) != LOG_FORMAT_VERSION) {
        fprintf(stderr, "cairn: log format version is not %d\n", LOG_FORMAT_VERSION);
        return CAIRN_ECORRUPT;
    }
    k = (MDB_val){4, "head"};
    if (mdb_get(txn, log->meta, &k, &v) == 0) {
        if (v.mv_size != 8 + LOG_HASH_LEN)
            return CAIRN_ECORRUPT;
        log->head_seq = cairn_be64_get(v.mv_data);
        memcpy(log->head_hash, (uint8_t *)v.mv_data + 8, LOG_HASH_LEN);
    }
    k = (MDB_val){7, "maxtime"};
    if (mdb_get(txn, log->meta, &k, &v) == 0 && v.mv_size == 8)
        log->max_time = log_unbias(cairn_be64_get(v.mv_data));
    /* The head's ingested time keeps ingested monotonic across restarts; only
     * an appender needs it, and a reader must open a damaged log so verify
     * can report the damage. */
    if (log->head_seq && !log->cfg.readonly) {
        uint8_t sk[8];
        struct log_event ev;
        cairn_be64_put(sk, log->head_seq);
        k = (MDB_val){8, sk};
        if (mdb_get(txn, log->events, &k, &v) || log_event_decode(v.mv_data, v.mv_size, &ev))
            return CAIRN_ECORRUPT;
        log->last_ingested = ev.ingested;
    }
    return 0;
}

static int open_dbis(struct log *log, MDB_txn *txn)
{
    unsigned c = log->cfg.readonly ? 0 : MDB_CREATE;
    int rc = mdb_dbi_open(txn, "events", c, &log->events);
    if (!rc)
        rc = mdb_dbi_open(txn, "meta", c, &log->meta);
    if (rc == MDB_NOTFOUND) {
        fprintf(stderr, "cairn: %s holds no log\n", log->cfg.dir);
        return CAIRN_ENOTFOUND;
    }
    if (rc)
        return cairn_mdb_err(rc);
    if (!log->cfg.readonly) {
        uint8_t ver[4] = {0, 0, 0, LOG_FORMAT_VERSION};
        MDB_val k = {7, "version"}, v = {4, ver};
        rc = mdb_put(txn, log->meta, &k, &v, MDB_NOOVERWRITE);
        if (rc && rc != MDB_KEYEXIST)
            return cairn_mdb_err(rc);
    }
    return read_meta(log, txn);
}

/* The in-memory head is only right while one process appends, so a second
 * writer is refused up front instead of failing on its first append. */
static int lock_writer(struct log *log)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/writer.lock", log->cfg.dir) >= (int)sizeof path)
        return CAIRN_EINVAL;
    log->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (log->lock_fd < 0)
        return CAIRN_EIO;
    if (flock(log->lock_fd, LOCK_EX | LOCK_NB))
        return errno == EWOULDBLOCK ? CAIRN_EBUSY : CAIRN_EIO;
    return 0;
}

int log_open(struct log **out, const struct log_config *cfg)
{
    struct log *log = calloc(1, sizeof *log);
    if (!log)
        return CAIRN_ENOMEM;
    log->cfg = *cfg;
    log->lock_fd = -1;
    if (!log->cfg.dedup_window_ns)
        log->cfg.dedup_window_ns = CAIRN_DEDUP_WINDOW_NS_DEFAULT;
    log->max_time = CAIRN_TIME_MIN; /* times are bounded below by it */
    cairn_buf_init(&log->enc, CAIRN_PAYLOAD_MAX_CEILING + 4096);
    cairn_buf_init(&log->ahead.pre.buf, PRE_MAX);
    int rc = CAIRN_ENOMEM;
    if (!(log->md = EVP_MD_CTX_new()) || !(log->ahead.pre.md = EVP_MD_CTX_new()))
        goto fail;
    rc = cairn_env_open(&log->env, cfg->dir, 8, cfg->map_size, cfg->readonly ? MDB_RDONLY : 0);
    if (rc)
        goto fail;
    if (!cfg->readonly && (rc = lock_writer(log)))
        goto fail;
    MDB_txn *txn;
    rc = cfg->readonly ? cairn_env_read_begin(log->env, &txn)
                       : cairn_env_write_begin(log->env, &txn);
    if (rc)
        goto fail;
    rc = open_dbis(log, txn);
    if (rc) {
        (cfg->readonly ? cairn_env_read_end : cairn_env_write_abort)(log->env, txn);
        goto fail;
    }
    rc = cfg->readonly ? cairn_env_read_commit(log->env, txn)
                       : cairn_env_write_commit(log->env, txn);
    if (rc || (rc = log_index_open(log)))
        goto fail;
    if (!cfg->readonly && (rc = log_ix_start(log)))
        goto fail;
    *out = log;
    return 0;
fail:
    log_close(log);
    return rc;
}

void log_close(struct log *log)
{
    if (!log)
        return;
    if (log->env)
        log_index_close(log); /* commits the open index transaction first */
    cairn_env_close(log->env);
    if (log->lock_fd >= 0)
        close(log->lock_fd); /* releases the flock */
    EVP_MD_CTX_free(log->md);
    cairn_buf_deinit(&log->enc);
    EVP_MD_CTX_free(log->ahead.pre.md);
    cairn_buf_deinit(&log->ahead.pre.buf);
    free(log->ahead.pre.at);
    free(log);
}

struct cairn_env *log_env(struct log *log)
{
    return log->env;
}

struct cairn_env *log_index_env(struct log *log)
{
    return log->ienv;
}

void log_head_cached(struct log *log, uint64_t *seq)
{
    *seq = log->head_seq;
}

uint64_t log_encoded_ahead(struct log *log)
{
    return log->encoded_ahead;
}

const struct log_config *log_config(struct log *log)
{
    return &log->cfg;
}

/* ====================================================================== appending */

/* Appends the envelopes the indexer encoded for exactly these decisions
 * (struct log_pre): the same bytes append_cursor would encode. */
static int append_pre(struct log *log, MDB_cursor *cur, const struct log_result *res, size_t n,
                      const struct log_pre *p)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (res[i].rc || res[i].duplicate)
            continue;
        uint64_t seq = res[i].seq;
        assert(seq == log->head_seq + 1 && k < p->count);
        uint8_t sk[8];
        cairn_be64_put(sk, seq);
        size_t at = p->at[k] + LOG_HASH_LEN; /* past the prev it was hashed with */
        MDB_val k8 = {8, sk}, v = {p->at[k + 1] - at, p->buf.data + at};
        int rc = mdb_cursor_put(cur, &k8, &v, MDB_APPEND);
        if (rc)
            return cairn_mdb_err(rc);
        log->head_seq = seq;
        k++;
    }
    assert(k == p->count);
    log->encoded_ahead++;
    if (k) {
        memcpy(log->head_hash, p->hash, LOG_HASH_LEN);
        log->last_ingested = p->ingested;
    }
    return 0;
}

static int append_cursor(struct log *log, MDB_cursor *cur, const struct log_input *in,
                         struct log_result *res, size_t n, int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        if (res[i].rc || res[i].duplicate)
            continue;
        uint64_t seq = res[i].seq;
        assert(seq == log->head_seq + 1);
        int64_t ingested = now > log->last_ingested ? now : log->last_ingested;
        uint8_t hash[LOG_HASH_LEN], sk[8];
        int rc =
            log_envelope_encode(&log->enc, log->md, &in[i], seq, ingested, log->head_hash, hash);
        if (rc)
            return rc; /* ETOOBIG was decided before: any failure here aborts */
        cairn_be64_put(sk, seq);
        MDB_val k = {8, sk}, v = {log->enc.len - LOG_HASH_LEN, log->enc.data + LOG_HASH_LEN};
        if ((rc = mdb_cursor_put(cur, &k, &v, MDB_APPEND)))
            return cairn_mdb_err(rc);
        log->head_seq = seq;
        memcpy(log->head_hash, hash, LOG_HASH_LEN);
        log->last_ingested = ingested;
    }
    return 0;
}

/* Encodes and appends the decided inputs (log_ix_check) inside txn. One
 * cursor for the batch: after an MDB_APPEND it stays on the last page, so
 * the next append does not search the tree from the root again (mdb_put
 * would, with a fresh cursor each time). */
static int append_decided(struct log *log, MDB_txn *txn, const struct log_input *in,
                          struct log_result *res, size_t n, int64_t now, const struct log_pre *pre)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, log->events, &cur);
    if (rc)
        return cairn_mdb_err(rc);
    rc = pre ? append_pre(log, cur, res, n, pre) : append_cursor(log, cur, in, res, n, now);
    mdb_cursor_close(cur);
    return rc;
}

static int write_meta(struct log *log, MDB_txn *txn)
{
    uint8_t head[8 + LOG_HASH_LEN], mt[8];
    cairn_be64_put(head, log->head_seq);
    memcpy(head + 8, log->head_hash, LOG_HASH_LEN);
    cairn_be64_put(mt, log_bias(log->max_time));
    MDB_val k = {4, "head"}, v = {sizeof head, head};
    int rc = mdb_put(txn, log->meta, &k, &v, 0);
    k = (MDB_val){7, "maxtime"};
    v = (MDB_val){8, mt};
    if (!rc)
        rc = mdb_put(txn, log->meta, &k, &v, 0);
    return cairn_mdb_err(rc);
}

/* The batch's decisions: those made ahead, while the batch before it
 * committed, when they are for this very batch and were made (with *pre
 * its envelopes, when the indexer encoded them too); else the indexer's,
 * now. *now: the wall clock they used. */
static int decide(struct log *log, const struct log_input *in, struct log_result *res, size_t n,
                  int64_t *now, int64_t *max_time, const struct log_pre **pre)
{
    *pre = NULL;
    if (log->ahead.posted) {
        log->ahead.posted = false;
        int rc = log_ix_wait(log, &log->ahead.ans);
        if (!rc && log->ahead.in == in && log->ahead.res == res && log->ahead.n == n) {
            *now = log->ahead.wall;
            *max_time = log->ahead.ans.max_time;
            /* encoded after the head it was given: the head now (the
             * batch before became durable, else this one was dropped) */
            if (log->ahead.pre.ok && !memcmp(log->ahead.pre.prev, log->head_hash, LOG_HASH_LEN) &&
                log->ahead.pre.last_ingested == log->last_ingested)
                *pre = &log->ahead.pre;
            return 0;
        }
        /* Not made (a stale index cannot be caught up ahead) or not for
         * this batch: the indexer forgets them, and decides again. */
        log_ix_confirm(log, false, log->ahead.n, 0);
    }
    *now = cairn_now_ns();
    return log_ix_check(log, in, res, n, *now, max_time);
}

/* Posts the next batch's decisions (take), to be made while this one
 * commits: they assume it becomes durable. Not when an index commit is
 * due: that waits for a check with nothing unconfirmed before it. */
static void decide_ahead(struct log *log, log_take_fn take, void *arg)
{
    if (log_ix_commit_due(log) || !take(arg, &log->ahead.in, &log->ahead.res, &log->ahead.n))
        return;
    log->ahead.posted = true;
    log->ahead.wall = cairn_now_ns();
    struct log_pre *pre = &log->ahead.pre;
    pre->ok = false;
    memcpy(pre->prev, log->head_hash, LOG_HASH_LEN);
    pre->last_ingested = log->last_ingested;
    log_ix_check_post(log, log->ahead.in, log->ahead.res, log->ahead.n, log->ahead.wall,
                      log->max_time, log->head_seq, pre, &log->ahead.ans);
}

/* The batch decided ahead of one that failed: its decisions do not hold. */
static void drop_ahead(struct log *log)
{
    if (!log->ahead.posted)
        return;
    log->ahead.posted = false;
    log_ix_wait(log, &log->ahead.ans); /* the indexer no longer writes its results */
    log_ix_confirm(log, false, log->ahead.n, 0);
}

/* One batch: the indexer decides it (duplicates, conflicts, seqs), then
 * the events and head go into the log transaction (durable: it is what
 * producers are told) while the indexer writes the batch's index entries
 * (index.c explains why the index may lag the log) and, with take,
 * decides the next batch. */
static int append_try(struct log *log, const struct log_input *in, struct log_result *res, size_t n,
                      log_take_fn take, void *arg)
{
    MDB_txn *txn;
    uint64_t head_seq = log->head_seq;
    uint8_t head_hash[LOG_HASH_LEN];
    int64_t max_time = log->max_time, last_ingested = log->last_ingested;
    memcpy(head_hash, log->head_hash, LOG_HASH_LEN);

    int64_t now, new_max = max_time;
    const struct log_pre *pre;
    int rc = decide(log, in, res, n, &now, &new_max, &pre);
    if (!rc && !(rc = cairn_env_write_begin(log->env, &txn))) {
        rc = append_decided(log, txn, in, res, n, now, pre);
        log->max_time = new_max;
        if (!rc && log->head_seq != head_seq)
            rc = write_meta(log, txn);
        if (!rc && take)
            decide_ahead(log, take, arg);
        if (rc)
            cairn_env_write_abort(log->env, txn);
        else
            rc = cairn_env_write_commit(log->env, txn);
    }
    /* The index follows the log: it keeps a durable batch (a failure there
     * only means it lags, and it is rebuilt from the log) and drops one
     * that is not. */
    log_ix_confirm(log, rc == 0, n, new_max);
    if (!rc)
        return 0;
    /* Nothing of this batch is durable: forget it, and what was decided
     * after it. */
    drop_ahead(log);
    log->head_seq = head_seq;
    memcpy(log->head_hash, head_hash, LOG_HASH_LEN);
    log->max_time = max_time;
    log->last_ingested = last_ingested;
    return rc;
}

/* Grows the log's map ahead of a batch that might not fit in it. A batch
 * that fills the map is failed and retried after growing, and the indexer
 * then drops its open transaction (a batch's entries cannot be taken out of
 * it) and re-indexes everything since its last commit — up to
 * CAIRN_INDEX_COMMIT_EVENTS events, once per doubling of the log. Best
 * effort: on any failure the batch takes the usual path. */
static void grow_ahead(struct log *log, const struct log_input *in, size_t n)
{
    MDB_env *env = cairn_env_mdb(log->env);
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(env, &info) || mdb_env_stat(env, &st) || !st.ms_psize)
        return;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += in[i].payload_len + in[i].type.n + in[i].tenant.n + in[i].key.n + in[i].id.n +
                 in[i].source.n + 256;
    size_t pages = 2 * (bytes / st.ms_psize) + 64; /* leaves, overflow pages, branches, meta */
    if (((size_t)info.me_last_pgno + pages) * st.ms_psize > info.me_mapsize / 8 * 7)
        cairn_env_grow(log->env);
}

int log_append(struct log *log, const struct log_input *in, struct log_result *res, size_t n)
{
    return log_append_ahead(log, in, res, n, NULL, NULL);
}

int log_append_ahead(struct log *log, const struct log_input *in, struct log_result *res, size_t n,
                     log_take_fn take, void *arg)
{
    if (log->cfg.readonly)
        return CAIRN_EINVAL;
    grow_ahead(log, in, n);
    for (;;) {
        int rc = append_try(log, in, res, n, take, arg);
        if (rc != CAIRN_EMAPFULL)
            return rc;
        /* Either environment may be the full one: grow both. */
        if ((rc = cairn_env_grow(log->env)) || (rc = cairn_env_grow(log->ienv)))
            return rc;
    }
}

/* ====================================================================== reading */

int log_snap_begin(struct log *log, struct log_snap **out)
{
    struct log_snap *s = malloc(sizeof *s);
    if (!s)
        return CAIRN_ENOMEM;
    s->log = log;
    s->itxn = NULL;
    int rc = cairn_env_read_begin(log->env, &s->txn);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void log_snap_end(struct log_snap *s)
{
    if (!s)
        return;
    if (s->itxn)
        cairn_env_read_end(s->log->ienv, s->itxn);
    cairn_env_read_end(s->log->env, s->txn);
    free(s);
}

void log_snap_head(const struct log_snap *s, uint64_t *seq, uint8_t hash[LOG_HASH_LEN])
{
    MDB_val k = {4, "head"}, v;
    if (mdb_get(s->txn, s->log->meta, &k, &v) == 0 && v.mv_size == 8 + LOG_HASH_LEN) {
        *seq = cairn_be64_get(v.mv_data);
        if (hash)
            memcpy(hash, (uint8_t *)v.mv_data + 8, LOG_HASH_LEN);
    } else {
        *seq = 0;
        if (hash)
            memset(hash, 0, LOG_HASH_LEN);
    }
}

int log_head(struct log *log, uint64_t *seq, uint8_t hash[LOG_HASH_LEN])
{
    struct log_snap *s;
    int rc = log_snap_begin(log, &s);
    if (rc)
        return rc;
    log_snap_head(s, seq, hash);
    log_snap_end(s);
    return 0;
}

int log_snap_get(struct log_snap *s, uint64_t seq, struct log_event *ev)
{
    uint8_t sk[8];
    cairn_be64_put(sk, seq);
    MDB_val k = {8, sk}, v;
    int rc = mdb_get(s->txn, s->log->events, &k, &v);
    if (rc)
        return cairn_mdb_err(rc);
    rc = log_event_decode(v.mv_data, v.mv_size, ev);
    /* Check right after reading (STYLE.md): the key is the seq it holds. */
    if (!rc && ev->seq != seq)
        rc = CAIRN_ECORRUPT;
    return rc;
}

/* The index transaction of the snapshot, and how far it covers the log.
 * The index trails the log by up to CAIRN_INDEX_COMMIT_* (index.c), so
 * entity reads look it up, then scan the log past `indexed`. */
static int snap_index(struct log_snap *s, MDB_txn **itxn, uint64_t *indexed)
{
    if (!s->log->ienv) /* a log never indexed (a reader; no writer opened it yet: a
                           backup's copy): entity reads scan the whole log */
        return CAIRN_ENOTFOUND;
    if (!s->itxn) {
        int rc = cairn_env_read_begin(s->log->ienv, &s->itxn);
        if (rc)
            return rc;
    }
    *itxn = s->itxn;
    MDB_val k = {7, "indexed"}, v;
    int rc = mdb_get(s->itxn, s->log->imeta, &k, &v);
    *indexed = rc == 0 && v.mv_size == 8 ? cairn_be64_get(v.mv_data) : 0;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : cairn_mdb_err(rc);
}

static bool is_entity(const struct log_event *ev, const uint8_t *tk, size_t tk_len)
{
    size_t tn = tk[0]; /* an event without a key is in no entity's stream */
    return ev->key.n && ev->tenant.n == tn && ev->key.n == tk_len - 1 - tn &&
           !memcmp(ev->tenant.p, tk + 1, tn) && !memcmp(ev->key.p, tk + 1 + tn, ev->key.n);
}

/* The next event of the entity tk at or after *from in the log itself
 * (the part the index does not cover yet). */
static int scan_entity(MDB_cursor *c, bool *started, uint64_t from, const uint8_t *tk,
                       size_t tk_len, struct log_event *ev)
{
    uint8_t sk[8];
    MDB_val k = {8, sk}, v;
    cairn_be64_put(sk, from);
    for (;;) {
        int rc = mdb_cursor_get(c, &k, &v, *started ? MDB_NEXT : MDB_SET_RANGE);
        *started = true;
        if (rc)
            return cairn_mdb_err(rc);
        if ((rc = log_event_decode(v.mv_data, v.mv_size, ev)))
            return rc;
        if (k.mv_size != 8 || cairn_be64_get(k.mv_data) != ev->seq)
            return CAIRN_ECORRUPT;
        if (is_entity(ev, tk, tk_len))
            return 0;
    }
}

int log_snap_last_of(struct log_snap *s, const struct cairn_str *tenant,
                     const struct cairn_str *key, uint64_t *seq)
{
    MDB_txn *itxn;
    uint64_t indexed;
    int rc = snap_index(s, &itxn, &indexed);
    *seq = 0;
    if (rc == CAIRN_ENOTFOUND) { /* never indexed: the whole log is scanned */
        rc = 0;
        indexed = 0;
    } else if (rc || (rc = log_last_of(itxn, s->log->keys, tenant, key, seq))) {
        return rc;
    }
    /* Then the events the index does not cover yet. */
    uint8_t tk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    size_t tk_len = log_tenant_key(tk, tenant, key);
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(s->txn, s->log->events, &c)))
        return cairn_mdb_err(rc);
    bool started = false;
    struct log_event ev;
    while (!(rc = scan_entity(c, &started, indexed + 1, tk, tk_len, &ev)))
        *seq = ev.seq;
    mdb_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

int log_iter_open(struct log_snap *s, uint64_t from, const struct cairn_str *tenant,
                  const struct cairn_str *key, struct log_iter **out)
{
    struct log_iter *it = calloc(1, sizeof *it);
    if (!it)
        return CAIRN_ENOMEM;
    it->s = s;
    it->from = from ? from : 1;
    it->entity = tenant && key;
    if (it->entity) {
        if (tenant->n > CAIRN_TENANT_MAX || key->n > CAIRN_KEY_MAX) {
            free(it);
            return CAIRN_EINVAL;
        }
        it->tk_len = log_tenant_key(it->tk, tenant, key);
    }
    MDB_txn *txn = s->txn;
    int rc = it->entity ? snap_index(s, &txn, &it->indexed) : 0;
    if (rc == CAIRN_ENOTFOUND) { /* never indexed: the whole log is the tail */
        rc = 0;
        txn = s->txn;
        it->indexed = 0;
        it->tail = true;
    }
    if (rc) {
        free(it);
        return rc;
    }
    rc = mdb_cursor_open(txn, it->entity && !it->tail ? s->log->keys : s->log->events, &it->cur);
    if (rc) {
        free(it);
        return cairn_mdb_err(rc);
    }
    MDB_stat st;
    if (!mdb_env_stat(mdb_txn_env(txn), &st))
        it->psize = st.ms_psize;
    *out = it;
    return 0;
}

/* A sequential read of `events` misses the cache on every page: LMDB's
 * pages are the system's (4 KiB here), and the hardware prefetchers stop
 * at page boundaries. `events` is appended (MDB_APPEND), so its leaves mostly
 * follow each other in the file — and in the map: when the read enters a
 * page, the page two ahead is prefetched, every line of it (the values
 * fill it). A guess only: a prefetch of another page, or past the file,
 * loads nothing useful and faults nothing. bench/replay, the alerts
 * handler alone (mostly reading): 2.5 M events/s without it, 3.3–4.9 M
 * with it (three lines of that page at every value instead: 2.4–3.3 M). */
#define READAHEAD_PAGES 2
static void readahead_page(struct log_iter *it, const void *value)
{
    uintptr_t pg = (uintptr_t)value & ~(uintptr_t)(it->psize - 1);
    if (!it->psize || pg == it->page)
        return;
    it->page = pg;
    const char *p = (const char *)(pg + READAHEAD_PAGES * it->psize);
    for (size_t off = 0; off < it->psize; off += 64)
        __builtin_prefetch(p + off);
}

int log_iter_next(struct log_iter *it, struct log_event *ev)
{
    uint8_t sk[8];
    MDB_val k, v;
    int rc;
    if (!it->entity) {
        cairn_be64_put(sk, it->from);
        k = (MDB_val){8, sk};
        rc = mdb_cursor_get(it->cur, &k, &v, it->started ? MDB_NEXT : MDB_SET_RANGE);
        it->started = true;
        if (rc)
            return cairn_mdb_err(rc);
        readahead_page(it, v.mv_data);
        rc = log_event_decode(v.mv_data, v.mv_size, ev);
        if (!rc && (k.mv_size != 8 || cairn_be64_get(k.mv_data) != ev->seq))
            rc = CAIRN_ECORRUPT;
        return rc;
    }
    if (!it->tail) {
        k = (MDB_val){it->tk_len, it->tk};
        cairn_be64_put(sk, it->from);
        v = (MDB_val){8, sk};
        rc = mdb_cursor_get(it->cur, &k, &v, it->started ? MDB_NEXT_DUP : MDB_GET_BOTH_RANGE);
        it->started = true;
        uint64_t seq = rc == 0 ? cairn_be64_get(v.mv_data) : 0;
        if (rc == 0 && seq <= it->indexed) {
            it->from = seq + 1;
            return log_snap_get(it->s, seq, ev);
        }
        if (rc && rc != MDB_NOTFOUND)
            return cairn_mdb_err(rc);
        /* Past what the index covers: the rest comes from the log. */
        mdb_cursor_close(it->cur);
        it->cur = NULL;
        if ((rc = mdb_cursor_open(it->s->txn, it->s->log->events, &it->cur)))
            return cairn_mdb_err(rc);
        it->tail = true;
        it->started = false;
        if (it->from <= it->indexed)
            it->from = it->indexed + 1;
    }
    return scan_entity(it->cur, &it->started, it->from, it->tk, it->tk_len, ev);
}

void log_iter_close(struct log_iter *it)
{
    if (!it)
        return;
    if (it->cur)
        mdb_cursor_close(it->cur);
    free(it);
}

/* ====================================================================== verifying */

/* Events checked per read transaction: a long verify must not hold one
 * snapshot for minutes (that would delay map growth and pin old pages). */
#define VERIFY_CHUNK 65536

static const char *verify_one(const struct log_event *ev, uint64_t want_seq,
                              const uint8_t prev[LOG_HASH_LEN], EVP_MD_CTX *md)
{
    uint8_t h[LOG_HASH_LEN];
    if (ev->seq != want_seq)
        return "missing or misplaced seq";
    if (memcmp(ev->prev, prev, LOG_HASH_LEN))
        return "prev does not match the hash of the previous event";
    log_event_hash_md(md, ev, h);
    if (memcmp(h, ev->hash, LOG_HASH_LEN))
        return "hash does not match the envelope";
    return NULL;
}

/* Verifies up to VERIFY_CHUNK events from r->events + 1 (the next seq). */
static int verify_chunk(struct log *log, uint64_t to, uint8_t prev[LOG_HASH_LEN],
                        struct log_verify_report *r, uint64_t *next, EVP_MD_CTX *md, bool *end)
{
    struct log_snap *s;
    struct log_iter *it;
    struct log_event ev;
    int rc = log_snap_begin(log, &s);
    if (rc)
        return rc;
    if ((rc = log_iter_open(s, *next, NULL, NULL, &it))) {
        log_snap_end(s);
        return rc;
    }
    *end = false;
    for (unsigned i = 0; i < VERIFY_CHUNK && r->ok; i++) {
        if (*next > to) {
            *end = true;
            break;
        }
        rc = log_iter_next(it, &ev);
        if (rc == CAIRN_ENOTFOUND) {
            rc = 0;
            *end = true;
            break;
        }
        const char *why = rc == CAIRN_ECORRUPT ? "malformed envelope"
                          : rc                 ? NULL
                                               : verify_one(&ev, *next, prev, md);
        if (rc && rc != CAIRN_ECORRUPT)
            break;
        rc = 0;
        if (why) {
            r->ok = false;
            r->bad_seq = *next;
            r->reason = why;
            break;
        }
        memcpy(prev, ev.hash, LOG_HASH_LEN);
        memcpy(r->head, ev.hash, LOG_HASH_LEN);
        r->events++;
        (*next)++;
    }
    log_iter_close(it);
    log_snap_end(s);
    return rc;
}

int log_verify(struct log *log, uint64_t from, uint64_t to, struct log_verify_report *r)
{
    memset(r, 0, sizeof *r);
    r->ok = true;
    uint8_t prev[LOG_HASH_LEN] = {0};
    uint64_t next = from ? from : 1;
    uint64_t head_seq;
    uint8_t head[LOG_HASH_LEN];
    /* Pin the range to the head as of now: a live log keeps growing. */
    int rc = log_head(log, &head_seq, head);
    if (rc)
        return rc;
    bool check_head = !to || to >= head_seq;
    if (!to || to > head_seq)
        to = head_seq;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return CAIRN_ENOMEM;
    if (next > 1) { /* start from the stored hash of the event before */
        struct log_snap *s;
        struct log_event ev;
        if (!(rc = log_snap_begin(log, &s))) {
            rc = log_snap_get(s, next - 1, &ev);
            if (!rc)
                memcpy(prev, ev.hash, LOG_HASH_LEN);
            log_snap_end(s);
        }
        if (rc == CAIRN_ECORRUPT) {
            r->ok = false, r->bad_seq = next - 1, r->reason = "malformed envelope", rc = 0;
            goto out;
        }
        if (rc)
            goto out;
    }
    for (bool end = false; !end && r->ok && !rc;)
        rc = verify_chunk(log, to, prev, r, &next, md, &end);
    /* The whole log: the head must be the last event's hash. */
    if (!rc && r->ok && check_head && (next - 1 != head_seq || memcmp(head, prev, LOG_HASH_LEN))) {
        r->ok = false;
        r->bad_seq = head_seq;
        r->reason = "head does not match the last event";
    }
out:
    EVP_MD_CTX_free(md);
    return rc;
}
