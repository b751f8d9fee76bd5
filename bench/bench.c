/*
 * bench.c — shared benchmark helpers (bench.h).
 *
 * The raw loop is deliberately plain LMDB: no cairn_env lock, no index, no
 * hashing, no encoding. It is what "appending these bytes durably with this
 * batch size" costs on this machine, so a log benchmark can say how much of
 * that limit it reaches.
 */
#include "bench.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define CAIRN_HAVE_CALLGRIND 1
#endif
#endif

int64_t bench_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t rusage_ns(int who)
{
    struct rusage ru;
    if (getrusage(who, &ru))
        return 0;
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

int64_t bench_sys_ns(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru))
        return 0;
    return (int64_t)ru.ru_stime.tv_sec * 1000000000LL + (int64_t)ru.ru_stime.tv_usec * 1000LL;
}

int64_t bench_cpu_ns(void)
{
    return rusage_ns(RUSAGE_SELF);
}

int64_t bench_thread_cpu_ns(void)
{
    return rusage_ns(RUSAGE_THREAD);
}

uint64_t bench_io_field(const char *name)
{
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    size_t n = strlen(name);
    unsigned long long v = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, name, n) && line[n] == ':') {
            v = strtoull(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

uint64_t bench_io_wchar(void)
{
    return bench_io_field("wchar");
}

double bench_loadavg(void)
{
    double v = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f)
        return -1;
    if (fscanf(f, "%lf", &v) != 1)
        v = -1;
    fclose(f);
    return v;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void bench_sort(int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
}

int64_t bench_quantile(const int64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(q * (double)n + 0.999999); /* nearest rank, 1-based */
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* ====================================================================== directories */

int bench_path(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? CAIRN_ETOOBIG : 0;
}

int bench_tmpdir(const char *parent, char *out, size_t cap)
{
    int rc = bench_path(out, cap, parent, "cairn-bench-XXXXXX");
    if (rc)
        return rc;
    if (cairn_mkdirs(parent) || !mkdtemp(out)) {
        fprintf(stderr, "bench: cannot create a directory under %s: %s\n", parent, strerror(errno));
        return CAIRN_EIO;
    }
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int bench_rmtree(const char *path)
{
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) ? CAIRN_EIO : 0;
}

/* ====================================================================== raw LMDB loop */

/* Every value once plus room for branch pages and LMDB's free pages. */
static size_t raw_map_size(const struct workload_corpus *vals)
{
    size_t need = vals->data.len + vals->n * 64;
    return (need * 2 + (64u << 20)) & ~(size_t)0xfffff;
}

static int raw_env(const char *dir, size_t mapsize, MDB_env **env)
{
    int rc = mdb_env_create(env);
    if (rc)
        return cairn_mdb_err(rc);
    rc = mdb_env_set_mapsize(*env, mapsize);
    if (!rc && cairn_mkdirs(dir))
        rc = EIO;
    if (!rc)
        rc = mdb_env_open(*env, dir, 0, 0644); /* default flags: durable commits */
    if (rc) {
        fprintf(stderr, "bench: raw LMDB env %s: %s\n", dir, mdb_strerror(rc));
        mdb_env_close(*env);
        return CAIRN_EDB;
    }
    return 0;
}

/* Appends values [lo, hi) in one transaction and commits it. */
static int raw_batch(MDB_env *env, MDB_dbi dbi, const struct workload_corpus *v, size_t lo,
                     size_t hi)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc)
        return rc;
    for (size_t i = lo; i < hi && !rc; i++) {
        uint8_t k[8];
        cairn_be64_put(k, i + 1);
        MDB_val key = {8, k}, val = {v->off[i + 1] - v->off[i], v->data.data + v->off[i]};
        rc = mdb_put(txn, dbi, &key, &val, MDB_APPEND);
    }
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

static int raw_open_dbi(MDB_env *env, MDB_dbi *dbi)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc)
        return rc;
    if ((rc = mdb_dbi_open(txn, NULL, 0, dbi))) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

int bench_raw_append(const char *dir, const struct workload_corpus *vals, size_t batch,
                     struct bench_raw_result *out)
{
    MDB_env *env;
    MDB_dbi dbi;
    size_t ncommits = batch ? (vals->n + batch - 1) / batch : 0;
    int64_t *lat = calloc(ncommits ? ncommits : 1, sizeof *lat);
    memset(out, 0, sizeof *out);
    if (!lat)
        return CAIRN_ENOMEM;
    int rc = batch ? raw_env(dir, raw_map_size(vals), &env) : CAIRN_EINVAL;
    if (rc) {
        free(lat);
        return rc;
    }
    int mrc = raw_open_dbi(env, &dbi);
    uint64_t w0 = bench_io_wchar();
    int64_t t0 = bench_mono_ns();
    for (size_t lo = 0; lo < vals->n && !mrc; lo += batch) {
        size_t hi = lo + batch < vals->n ? lo + batch : vals->n;
        int64_t c0 = bench_mono_ns();
        mrc = raw_batch(env, dbi, vals, lo, hi);
        lat[out->commits++] = bench_mono_ns() - c0;
    }
    out->wall_ns = bench_mono_ns() - t0;
    out->written = bench_io_wchar() - w0;
    if (mrc) {
        fprintf(stderr, "bench: raw append: %s\n", mdb_strerror(mrc));
        rc = cairn_mdb_err(mrc);
    }
    out->values = mrc ? 0 : vals->n;
    out->bytes = mrc ? 0 : vals->data.len;
    bench_sort(lat, out->commits);
    out->p50_ns = bench_quantile(lat, out->commits, 0.50);
    out->p99_ns = bench_quantile(lat, out->commits, 0.99);
    out->max_ns = out->commits ? lat[out->commits - 1] : 0;
    free(lat);
    mdb_env_close(env);
    return rc;
}

void bench_perf_ctl(const char *cmd)
{
#if CAIRN_HAVE_CALLGRIND
    if (!strcmp(cmd, "enable"))
        CALLGRIND_START_INSTRUMENTATION;
    else
        CALLGRIND_STOP_INSTRUMENTATION;
#endif
    const char *path = getenv("CAIRN_BENCH_PERF_CTL");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) {
        fprintf(f, "%s\n", cmd);
        fclose(f);
    }
}
