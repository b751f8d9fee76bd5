/*
 * layout.c — bench/layout: what each DBI of the log costs to write.
 *
 *   bench/layout LOGDIR [--batch B] [--dir DIR]
 *
 * Reads every envelope of the log in LOGDIR (e.g. one kept by
 * `bench/ingest --keep`), then writes them again into fresh, plain LMDB
 * environments with the key layouts of log.h, one variant at a time:
 *
 *   events                      MDB_APPEND of the envelopes (the raw loop)
 *   events + keys               + tlen|tenant|key -> seq (DUPSORT, DUPFIXED)
 *   events + dedup + dedup_at   + tlen|tenant|id -> seq|time, time|seq -> …
 *   all four                    what log_append writes per event
 *
 * with a durable commit every B events, and prints events/s and the bytes
 * written per event of each. No hashing, no encoding, no dedup lookups:
 * only the page writes each index layout causes, so a log change can be
 * judged before it is made.
 */
#include "bench.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { DBI_KEYS = 1, DBI_DEDUP = 2 };

struct variant {
    const char *name;
    unsigned dbis;
};

static const struct variant variants[] = {{"events", 0},
                                          {"events+keys", DBI_KEYS},
                                          {"events+dedup+dedup_at", DBI_DEDUP},
                                          {"all four", DBI_KEYS | DBI_DEDUP}};

struct target {
    MDB_env *env;
    MDB_dbi events, keys, dedup, dedup_at;
};

/* ====================================================================== reading the log */

static int load(const char *dir, struct workload_corpus *c)
{
    struct log *log;
    struct log_snap *s = NULL;
    struct log_iter *it = NULL;
    struct log_event ev;
    uint64_t head;
    int rc = log_open(&log, &(struct log_config){.dir = dir, .readonly = true});
    if (rc)
        return rc;
    memset(c, 0, sizeof *c);
    cairn_buf_init(&c->data, 16ull << 30);
    if (!(rc = log_snap_begin(log, &s))) {
        log_snap_head(s, &head, NULL);
        c->off = calloc(head + 1, sizeof *c->off);
        rc = c->off ? log_iter_open(s, 1, NULL, NULL, &it) : CAIRN_ENOMEM;
    }
    while (!rc && c->n < head && !(rc = log_iter_next(it, &ev))) {
        c->off[c->n++] = c->data.len;
        rc = cairn_buf_append(&c->data, ev.raw, ev.raw_len);
    }
    if (c->off)
        c->off[c->n] = c->data.len;
    log_iter_close(it);
    log_snap_end(s);
    log_close(log);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* ====================================================================== writing */

static size_t tenant_key(uint8_t *out, const struct cairn_str *t, const struct cairn_str *rest)
{
    out[0] = (uint8_t)t->n;
    memcpy(out + 1, t->p, t->n);
    memcpy(out + 1 + t->n, rest->p, rest->n);
    return 1 + t->n + rest->n;
}

static int put_dedup(struct target *t, MDB_txn *txn, const struct log_event *ev)
{
    uint8_t k[1 + CAIRN_TENANT_MAX + CAIRN_ID_MAX], v[16], ak[16];
    uint64_t time = (uint64_t)ev->time ^ (1ull << 63); /* biased, as log.c */
    cairn_be64_put(v, ev->seq);
    cairn_be64_put(v + 8, time);
    cairn_be64_put(ak, time);
    cairn_be64_put(ak + 8, ev->seq);
    MDB_val key = {tenant_key(k, &ev->tenant, &ev->id), k}, val = {16, v}, akey = {16, ak};
    int rc = mdb_put(txn, t->dedup, &key, &val, 0);
    return rc ? rc : mdb_put(txn, t->dedup_at, &akey, &key, 0);
}

static int put_one(struct target *t, MDB_txn *txn, unsigned dbis, const uint8_t *p, size_t n)
{
    struct log_event ev;
    uint8_t sk[8], k[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    if (log_event_decode(p, n, &ev))
        return MDB_CORRUPTED;
    cairn_be64_put(sk, ev.seq);
    MDB_val key = {8, sk}, val = {n, (void *)p};
    int rc = mdb_put(txn, t->events, &key, &val, MDB_APPEND);
    if (!rc && (dbis & DBI_KEYS) && ev.key.n) {
        MDB_val kk = {tenant_key(k, &ev.tenant, &ev.key), k}, kv = {8, sk};
        rc = mdb_put(txn, t->keys, &kk, &kv, 0);
    }
    if (!rc && (dbis & DBI_DEDUP) && ev.id.p && ev.id.n)
        rc = put_dedup(t, txn, &ev);
    return rc;
}

static int open_target(struct target *t, const char *dir, size_t mapsize)
{
    MDB_txn *txn;
    int rc = mdb_env_create(&t->env);
    if (rc)
        return rc;
    mdb_env_set_maxdbs(t->env, 8);
    mdb_env_set_mapsize(t->env, mapsize);
    if (cairn_mkdirs(dir) || (rc = mdb_env_open(t->env, dir, 0, 0644)) ||
        (rc = mdb_txn_begin(t->env, NULL, 0, &txn)))
        return rc ? rc : EIO;
    rc = mdb_dbi_open(txn, "events", MDB_CREATE, &t->events);
    if (!rc)
        rc = mdb_dbi_open(txn, "keys", MDB_CREATE | MDB_DUPSORT | MDB_DUPFIXED, &t->keys);
    if (!rc)
        rc = mdb_dbi_open(txn, "dedup", MDB_CREATE, &t->dedup);
    if (!rc)
        rc = mdb_dbi_open(txn, "dedup_at", MDB_CREATE, &t->dedup_at);
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

/* Writes the corpus with `dbis`, a durable commit every `batch` events. */
static int run_variant(const struct workload_corpus *c, unsigned dbis, size_t batch,
                       const char *dir, int64_t *wall_ns, uint64_t *written)
{
    struct target t = {0};
    int rc = open_target(&t, dir, (c->data.len * 4 + (256u << 20)) & ~(size_t)0xfffff);
    uint64_t w0 = bench_io_wchar();
    int64_t t0 = bench_mono_ns();
    for (size_t lo = 0; !rc && lo < c->n; lo += batch) {
        MDB_txn *txn;
        if ((rc = mdb_txn_begin(t.env, NULL, 0, &txn)))
            break;
        for (size_t i = lo; !rc && i < lo + batch && i < c->n; i++)
            rc = put_one(&t, txn, dbis, c->data.data + c->off[i], c->off[i + 1] - c->off[i]);
        rc = rc ? (mdb_txn_abort(txn), rc) : mdb_txn_commit(txn);
    }
    *wall_ns = bench_mono_ns() - t0;
    *written = bench_io_wchar() - w0;
    if (rc)
        fprintf(stderr, "layout: %s\n", mdb_strerror(rc));
    if (t.env)
        mdb_env_close(t.env);
    return rc ? CAIRN_EDB : 0;
}

/* ====================================================================== main */

static int parse(int argc, char **argv, const char **log, const char **dir, size_t *batch)
{
    for (int i = 1; i < argc; i++) {
        char *end;
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (*end || v == 0 || v > CAIRN_BATCH_MAX_CEILING)
                return -1;
            *batch = (size_t)v;
        } else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
            *dir = argv[++i];
        } else if (argv[i][0] != '-' && !*log) {
            *log = argv[i];
        } else {
            return -1;
        }
    }
    return *log ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *logdir = NULL, *parent = "/tmp";
    size_t batch = 1000;
    struct workload_corpus c;
    char scratch[4096], dir[4096 + 32];
    if (parse(argc, argv, &logdir, &parent, &batch)) {
        fprintf(stderr, "usage: bench/layout LOGDIR [--batch B] [--dir DIR]\n");
        return 2;
    }
    int rc = load(logdir, &c);
    if (rc || c.n == 0) {
        fprintf(stderr, "layout: cannot read the log in %s: %s\n", logdir, cairn_strerror(rc));
        return 1;
    }
    printf("%zu envelopes (%.0f B each), durable commit every %zu\n%-24s %10s %12s\n", c.n,
           (double)c.data.len / (double)c.n, batch, "DBIs written", "events/s", "written B/ev");
    for (size_t v = 0; !rc && v < sizeof variants / sizeof *variants; v++) {
        int64_t ns;
        uint64_t wr;
        if ((rc = bench_tmpdir(parent, scratch, sizeof scratch)) ||
            (rc = bench_path(dir, sizeof dir, scratch, "env")))
            break;
        rc = run_variant(&c, variants[v].dbis, batch, dir, &ns, &wr);
        if (!rc)
            printf("%-24s %10.0f %12.0f\n", variants[v].name, (double)c.n * 1e9 / (double)ns,
                   (double)wr / (double)c.n);
        fflush(stdout);
        bench_rmtree(scratch);
    }
    workload_corpus_deinit(&c);
    return rc ? 1 : 0;
}
