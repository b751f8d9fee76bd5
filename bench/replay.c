/*
 * replay.c — how fast the engine rebuilds DATA/state from the log, next to
 * how fast the same log can merely be read (issue #3).
 *
 *   bench/replay [-n N] [--runs R] [--seed S] [--dir DIR] [--log DATA]
 *                [--tick-every K] [--per-handler] [--keep] [--schemas DIR]
 *
 * 1. Builds a log of N mixed inputs (bench/workload.c: the six producer
 *    types) plus an engine tick every K inputs (event time of the input
 *    before it), parsed and validated by ingest and appended with
 *    log_append in batches of BUILD_BATCH — once, not timed. --log DATA
 *    reuses the log of an earlier `--keep` run instead.
 * 2. Per run, on the warm page cache, times:
 *      scan      plain LMDB cursor over DATA/log `events`, MDB_NEXT only;
 *      decode    the same plus log_event_decode of every envelope and a
 *                pass over its payload bytes (touching what replay reads);
 *      unpack    the same plus msgpack_unpack_next of the payload, the
 *                decoding the engine does before any handler runs;
 *      replay    engine_replay(cfg, fresh dir, 0): open, every handler,
 *                checkpointed state transactions, close — what
 *                `cairn replay --into` does.
 *    replay/decode is the ratio the goal is about: at least 1 000 000
 *    events/s and at least a third of the decoding scan.
 * 3. --per-handler: one more replay per handler with only that handler
 *    (and one with none: the engine's own cost), to see where time goes.
 *
 * CAIRN_BENCH_PERF_CTL: the replays are the phases a profiler sees
 * (bench_perf_ctl, bench.h).
 *
 * Everything runs in one process, one thread, one after the other: each
 * figure is relative to the others of the same run (the machine's load
 * changes between runs).
 */
#include "bench.h"
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#define DEFAULT_N 1000000
#define BUILD_BATCH 8192
#define RUNS_MAX 16
#define DEFAULT_TICK_EVERY 1000 /* ~1 s of event time at the workload's 1 ms/input */

struct opts {
    size_t n;
    unsigned runs, tick_every, threads;
    uint64_t seed;
    const char *dir, *log, *schemas, *only;
    bool keep, per_handler;
};

static const char usage[] =
    "usage: bench/replay [-n N] [--runs R] [--seed S] [--dir DIR] [--log DATA]\n"
    "                    [--tick-every K] [--per-handler] [--keep] [--schemas DIR]\n"
    "                    [--threads T] [--only HANDLER]\n"
    "  -n N            inputs in the log (default 1000000), plus a tick every K\n"
    "  --runs R        repetitions, median reported (default 3, at most 16)\n"
    "  --dir DIR       parent of the scratch directory (default /tmp)\n"
    "  --log DATA      reuse DATA/log (from a --keep run) instead of building one\n"
    "  --tick-every K  an engine tick every K inputs (default 1000; 0: none)\n"
    "  --per-handler   also replay with each handler alone, and with none\n"
    "  --keep          keep the scratch directory (its log can be reused)\n"
    "  --threads T     apply_threads of the replays: 1 serial, 2 the concurrent\n"
    "                  handlers on a second thread (default: the engine's, 2 with\n"
    "                  two CPUs or more)\n"
    "  --only HANDLER  the replay phase with this handler alone (profiling)\n";

/* ====================================================================== options */

static bool num_opt(int argc, char **argv, int *i, const char *name, uint64_t max, uint64_t *out)
{
    if (strcmp(argv[*i], name))
        return false;
    char *end;
    errno = 0;
    unsigned long long v = *i + 1 < argc ? strtoull(argv[*i + 1], &end, 10) : 0;
    if (*i + 1 >= argc || errno || *end || argv[*i + 1][0] == '-' || v > max) {
        fprintf(stderr, "bench: %s takes a number up to %llu\n%s", name, (unsigned long long)max,
                usage);
        exit(2);
    }
    ++*i;
    *out = v;
    return true;
}

static bool str_opt(int argc, char **argv, int *i, const char *name, const char **out)
{
    if (strcmp(argv[*i], name))
        return false;
    if (*i + 1 >= argc) {
        fprintf(stderr, "bench: %s takes a value\n%s", name, usage);
        exit(2);
    }
    *out = argv[++*i];
    return true;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){
        .n = DEFAULT_N, .runs = 3, .tick_every = DEFAULT_TICK_EVERY, .seed = 1, .dir = "/tmp"};
    for (int i = 1; i < argc; i++) {
        uint64_t v;
        if (num_opt(argc, argv, &i, "-n", 1ull << 32, &v))
            o->n = (size_t)v;
        else if (num_opt(argc, argv, &i, "--runs", RUNS_MAX, &v))
            o->runs = v ? (unsigned)v : 1;
        else if (num_opt(argc, argv, &i, "--tick-every", 1u << 30, &v))
            o->tick_every = (unsigned)v;
        else if (num_opt(argc, argv, &i, "--seed", UINT64_MAX, &v))
            o->seed = v;
        else if (num_opt(argc, argv, &i, "--threads", 2, &v))
            o->threads = (unsigned)v;
        else if (str_opt(argc, argv, &i, "--dir", &o->dir) ||
                 str_opt(argc, argv, &i, "--log", &o->log) ||
                 str_opt(argc, argv, &i, "--schemas", &o->schemas) ||
                 str_opt(argc, argv, &i, "--only", &o->only))
            continue;
        else if (!strcmp(argv[i], "--keep"))
            o->keep = true;
        else if (!strcmp(argv[i], "--per-handler"))
            o->per_handler = true;
        else {
            fprintf(stderr, "%s", usage);
            exit(2);
        }
    }
}

/* ====================================================================== building the log */

struct builder {
    struct ingest *ing;
    struct log *log;
    struct ingest_event evs[BUILD_BATCH];
    struct log_input ins[BUILD_BATCH];
    struct log_result res[BUILD_BATCH];
    size_t nev;
    uint64_t appended;
};

static int flush_batch(struct builder *b)
{
    for (size_t i = 0; i < b->nev; i++)
        b->ins[i] = b->evs[i].in;
    int rc = b->nev ? log_append(b->log, b->ins, b->res, b->nev) : 0;
    for (size_t i = 0; i < b->nev; i++) {
        if (!rc && b->res[i].rc)
            rc = b->res[i].rc;
        else if (!rc && !b->res[i].duplicate)
            b->appended++;
        ingest_event_deinit(&b->evs[i]);
    }
    b->nev = 0;
    return rc;
}

static int add_tick(struct builder *b, int64_t t)
{
    json_t *obj = json_pack("{s:s, s:s, s:I, s:{s:i}}", "type", "tick", "tenant", ENGINE_TENANT,
                            "time", (json_int_t)t, "payload", "interval_ms", 1000);
    struct cairn_error e;
    if (!obj)
        return CAIRN_ENOMEM;
    int rc = ingest_parse_value(b->ing, obj, "bench", t, true, &b->evs[b->nev], &e);
    json_decref(obj);
    if (rc)
        fprintf(stderr, "bench: tick refused: %s\n", e.message);
    else
        b->nev++;
    return rc;
}

/* Appends o->n workload inputs and the ticks to DATA/log. */
static int build_log(const struct opts *o, const char *data, uint64_t *events)
{
    static struct builder b;
    char dir[4200];
    struct workload *w = NULL;
    struct cairn_buf line;
    struct cairn_error e;
    int64_t last_time = 0;
    bench_path(dir, sizeof dir, data, "log");
    int rc = ingest_open(
        &b.ing, &(struct ingest_config){.schema_dir = o->schemas, .allow_engine_types = true}, &e);
    if (rc) {
        fprintf(stderr, "bench: schemas: %s\n", e.message);
        return rc;
    }
    cairn_buf_init(&line, 1u << 20);
    if (!(rc = log_open(&b.log, &(struct log_config){.dir = dir})))
        rc = workload_new(&w, &(struct workload_config){.seed = o->seed});
    for (size_t i = 0; i < o->n && !rc; i++) {
        if (b.nev >= BUILD_BATCH - 1 && (rc = flush_batch(&b))) /* room for an input and a tick */
            break;
        cairn_buf_reset(&line);
        if ((rc = workload_next(w, &line, NULL)))
            break;
        rc = ingest_parse_json(b.ing, (const char *)line.data, line.len, "bench", last_time,
                               &b.evs[b.nev], &e);
        if (rc) {
            fprintf(stderr, "bench: input %zu refused: %s %s\n", i, e.field, e.message);
            break;
        }
        last_time = b.evs[b.nev++].in.time;
        if (o->tick_every && (i + 1) % o->tick_every == 0)
            rc = add_tick(&b, last_time);
    }
    if (!rc)
        rc = flush_batch(&b);
    *events = b.appended;
    workload_free(w);
    cairn_buf_deinit(&line);
    log_close(b.log);
    ingest_close(b.ing);
    return rc;
}

/* ====================================================================== the raw scans */

enum scan_mode { SCAN_NEXT, SCAN_DECODE, SCAN_UNPACK, SCAN_MODES };
static const char *const scan_names[SCAN_MODES] = {"scan", "decode", "unpack"};

struct figures {
    uint64_t events;
    int64_t wall_ns, cpu_ns, sys_ns;
    int64_t thread_ns; /* CPU of the calling thread (the rest: the engine's apply worker) */
    uint64_t check;    /* a sum over what was read, so nothing is optimised away */
    struct engine_replay_stats st; /* replays: the engine's counters */
};

static void fig_begin(struct figures *f)
{
    f->wall_ns = -bench_mono_ns();
    f->cpu_ns = -bench_cpu_ns();
    f->sys_ns = -bench_sys_ns();
    f->thread_ns = -bench_thread_cpu_ns();
}

static void fig_end(struct figures *f)
{
    f->wall_ns += bench_mono_ns();
    f->cpu_ns += bench_cpu_ns();
    f->sys_ns += bench_sys_ns();
    f->thread_ns += bench_thread_cpu_ns();
}

/* One event of a scan; returns 0 or CAIRN_ECORRUPT. */
static int scan_one(enum scan_mode mode, const MDB_val *v, msgpack_unpacked *mp, struct figures *f)
{
    struct log_event ev;
    if (mode == SCAN_NEXT) {
        f->check += v->mv_size + ((const uint8_t *)v->mv_data)[v->mv_size - 1];
        return 0;
    }
    if (log_event_decode(v->mv_data, v->mv_size, &ev))
        return CAIRN_ECORRUPT;
    uint64_t sum = ev.seq + ev.type.n + ev.tenant.n + ev.key.n;
    for (size_t i = 0; i < ev.payload_len; i++)
        sum += ev.payload[i];
    f->check += sum;
    if (mode == SCAN_UNPACK && msgpack_unpack_next(mp, (const char *)ev.payload, ev.payload_len,
                                                   NULL) != MSGPACK_UNPACK_SUCCESS)
        return CAIRN_ECORRUPT;
    return 0;
}

/* Reads DATA/log `events` from the first key to the last with a plain
 * read-only LMDB environment. */
static int scan_log(const char *data, enum scan_mode mode, struct figures *f)
{
    char dir[4200];
    MDB_env *env;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    MDB_cursor *c = NULL;
    MDB_val k, v;
    msgpack_unpacked mp;
    bench_path(dir, sizeof dir, data, "log");
    memset(f, 0, sizeof *f);
    int mrc = mdb_env_create(&env);
    if (mrc)
        return CAIRN_EDB;
    msgpack_unpacked_init(&mp);
    fig_begin(f);
    if (!(mrc = mdb_env_set_maxdbs(env, 16)) && !(mrc = mdb_env_open(env, dir, MDB_RDONLY, 0)) &&
        !(mrc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) &&
        !(mrc = mdb_dbi_open(txn, "events", 0, &dbi)))
        mrc = mdb_cursor_open(txn, dbi, &c);
    int rc = mrc ? CAIRN_EDB : 0;
    for (mrc = rc ? 0 : mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc && mrc == 0;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        rc = scan_one(mode, &v, &mp, f);
        f->events++;
    }
    if (!rc && mrc != MDB_NOTFOUND)
        rc = CAIRN_EDB;
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    fig_end(f);
    msgpack_unpacked_destroy(&mp);
    mdb_env_close(env);
    return rc;
}

/* ====================================================================== replay */

/* Replays the whole log into DIR/<name> with `table` (NULL: every
 * handler), then removes it. *state_bytes: the disk space of its data.mdb. */
static int replay_into(const struct opts *o, const char *data, const char *scratch,
                       const char *name, const struct handler *const *table, struct figures *f,
                       uint64_t *state_bytes)
{
    char into[4200], file[4300];
    struct cairn_error e;
    struct engine_config cfg = {.data = data,
                                .schema_dir = o->schemas,
                                .log_readonly = true,
                                .handlers = table,
                                .apply_threads = (int)o->threads,
                                .replay_stats = &f->st};
    bench_path(into, sizeof into, scratch, name);
    bench_rmtree(into);
    memset(f, 0, sizeof *f);
    cairn_error_clear(&e);
    bench_perf_ctl("enable");
    fig_begin(f);
    int rc = engine_replay(&cfg, into, 0, &e);
    fig_end(f);
    bench_perf_ctl("disable");
    if (rc) {
        fprintf(stderr, "bench: replay failed: %s\n", e.code ? e.message : cairn_strerror(rc));
        return rc;
    }
    struct proj *p;
    if (!(rc = proj_open(&p, &(struct proj_config){.dir = into, .readonly = true}))) {
        f->events = proj_checkpoint(p);
        proj_close(p);
    }
    /* its blocks on disk: a replay's file is as large as its first map
     * (engine_replay_map), the unused tail given back at the end */
    struct stat st;
    if (state_bytes && !bench_path(file, sizeof file, into, "data.mdb") && !stat(file, &st))
        *state_bytes = (uint64_t)st.st_blocks * 512;
    bench_rmtree(into);
    return rc;
}

/* ====================================================================== report */

static double per_s(uint64_t n, int64_t ns)
{
    return ns > 0 ? (double)n * 1e9 / (double)ns : 0.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void print_machine(void)
{
    char model[256] = "?", line[512];
    long mem_kb = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    if (f)
        fclose(f);
    if ((f = fopen("/proc/meminfo", "r"))) {
        if (!fgets(line, sizeof line, f) || sscanf(line, "MemTotal: %ld", &mem_kb) != 1)
            mem_kb = 0;
        fclose(f);
    }
    struct utsname u;
    if (uname(&u))
        snprintf(u.release, sizeof u.release, "?");
    printf("machine: %s, %ld cores, %.1f GiB, Linux %s; load average %.2f at start\n", model,
           sysconf(_SC_NPROCESSORS_ONLN), (double)mem_kb / (1 << 20), u.release, bench_loadavg());
}

static void print_row(unsigned run, const char *phase, const struct figures *f,
                      const struct figures *base)
{
    printf("%-4u %-8s %10.0f %8.3f %7.3f %7.3f", run, phase, per_s(f->events, f->wall_ns),
           (double)f->wall_ns / 1e9, (double)f->cpu_ns / 1e9, (double)f->sys_ns / 1e9);
    if (base)
        printf(" %7.3f", per_s(f->events, f->wall_ns) / per_s(base->events, base->wall_ns));
    printf("\n");
}

/* Where the replay's time went: the engine's phases and, per handler, its
 * CPU in parallel applies and flushes and its waits for the state lock
 * (the other apply thread holding it). */
static void print_engine_stats(const struct engine_replay_stats *st)
{
    const struct engine_phase_stats *ph = &st->phases;
    printf("     phases (wall s): apply %.3f, flush %.3f, commit %.3f over %llu transactions "
           "(%llu redone: the map filled), final sync %.3f (handlers' close during it %.3f); "
           "waiting for the worker %.3f; its runs "
           "taken %llu (%.3f s); cpu s: reading %.3f, late handlers %.3f\n",
           (double)ph->apply_ns / 1e9, (double)ph->flush_ns / 1e9, (double)ph->commit_ns / 1e9,
           (unsigned long long)ph->transactions, (unsigned long long)ph->redone,
           (double)ph->sync_ns / 1e9, (double)ph->close_ns / 1e9, (double)ph->wait_ns / 1e9,
           (unsigned long long)ph->stolen, (double)ph->steal_ns / 1e9,
           (double)ph->read_cpu_ns / 1e9, (double)ph->late_cpu_ns / 1e9);
    printf("     %-14s %6s %10s %9s %9s %10s %10s %9s\n", "handler", "thread", "applied",
           "apply cpu", "flush cpu", "lock calls", "lock waits", "wait s");
    uint64_t calls = 0, waits = 0, wait_ns = 0;
    for (size_t i = 0; i < st->n; i++) {
        const struct engine_handler_stats *h = &st->handlers[i];
        printf("     %-14s %6s %10llu %9.3f %9.3f %10llu %10llu %9.3f\n", h->name,
               h->worker ? "worker" : "writer", (unsigned long long)h->applied,
               (double)h->apply_cpu_ns / 1e9, (double)h->flush_cpu_ns / 1e9,
               (unsigned long long)h->lock_calls, (unsigned long long)h->lock_waits,
               (double)h->lock_wait_ns / 1e9);
        calls += h->lock_calls;
        waits += h->lock_waits;
        wait_ns += h->lock_wait_ns;
    }
    printf("     %-14s %6s %10s %9s %9s %10llu %10llu %9.3f\n", "(all)", "", "", "", "",
           (unsigned long long)calls, (unsigned long long)waits, (double)wait_ns / 1e9);
}

/* ====================================================================== runs */

struct results {
    double scan[SCAN_MODES][RUNS_MAX], replay[RUNS_MAX], ratio[RUNS_MAX], ratio_next[RUNS_MAX];
    double replay_cpu[RUNS_MAX], decode_cpu[RUNS_MAX]; /* events per CPU second */
    uint64_t state_bytes;
};

static int one_run(const struct opts *o, const char *data, const char *scratch, unsigned k,
                   uint64_t events, struct results *r)
{
    struct figures sc[SCAN_MODES], rp;
    int rc = 0;
    for (int m = 0; m < SCAN_MODES && !rc; m++)
        if (!(rc = scan_log(data, (enum scan_mode)m, &sc[m])) && sc[m].events != events)
            rc = CAIRN_ECORRUPT;
    const struct handler *only[2] = {NULL, NULL};
    for (const struct handler *const *h = handler_table; o->only && *h; h++)
        if (!strcmp((*h)->name, o->only))
            only[0] = *h;
    if (o->only && !only[0]) {
        fprintf(stderr, "bench: no handler named %s\n", o->only);
        rc = CAIRN_EINVAL;
    }
    if (!rc)
        rc = replay_into(o, data, scratch, "state", o->only ? only : NULL, &rp, &r->state_bytes);
    if (!rc && rp.events != events)
        rc = CAIRN_ECORRUPT;
    if (rc)
        return rc;
    for (int m = 0; m < SCAN_MODES; m++) {
        print_row(k + 1, scan_names[m], &sc[m], m ? &sc[SCAN_NEXT] : NULL);
        r->scan[m][k] = per_s(sc[m].events, sc[m].wall_ns);
    }
    print_row(k + 1, "replay", &rp, &sc[SCAN_DECODE]);
    /* With a second apply thread the process CPU is the sum of both: the
     * calling thread's share bounds the wall time on an idle machine. */
    printf("     (replay cpu: this thread %.3f s, the apply worker %.3f s)\n",
           (double)rp.thread_ns / 1e9, (double)(rp.cpu_ns - rp.thread_ns) / 1e9);
    print_engine_stats(&rp.st);
    r->replay[k] = per_s(rp.events, rp.wall_ns);
    r->ratio[k] = r->replay[k] / r->scan[SCAN_DECODE][k];
    r->ratio_next[k] = r->replay[k] / r->scan[SCAN_NEXT][k];
    r->replay_cpu[k] = per_s(rp.events, rp.cpu_ns);
    r->decode_cpu[k] = per_s(sc[SCAN_DECODE].events, sc[SCAN_DECODE].cpu_ns);
    fflush(stdout);
    return 0;
}

/* Replays with no handler, then with each handler alone. */
static int per_handler(const struct opts *o, const char *data, const char *scratch)
{
    const struct handler *const none[] = {NULL};
    struct figures f, base;
    int rc = replay_into(o, data, scratch, "state", none, &base, NULL);
    if (rc)
        return rc;
    printf("\nper handler (one replay each; the delta is the handler's own cost):\n");
    printf("%-16s %10s %8s %8s %14s\n", "handlers", "events/s", "wall s", "cpu s", "+cpu us/event");
    printf("%-16s %10.0f %8.3f %8.3f %14s\n", "(none)", per_s(base.events, base.wall_ns),
           (double)base.wall_ns / 1e9, (double)base.cpu_ns / 1e9, "-");
    for (const struct handler *const *h = handler_table; *h && !rc; h++) {
        const struct handler *const only[] = {*h, NULL};
        if ((rc = replay_into(o, data, scratch, "state", only, &f, NULL)))
            break;
        printf("%-16s %10.0f %8.3f %8.3f %14.3f\n", (*h)->name, per_s(f.events, f.wall_ns),
               (double)f.wall_ns / 1e9, (double)f.cpu_ns / 1e9,
               (double)(f.cpu_ns - base.cpu_ns) / 1e3 / (double)(f.events ? f.events : 1));
    }
    return rc;
}

static void summary(const struct opts *o, struct results *r)
{
    double rp = median(r->replay, o->runs), ratio = median(r->ratio, o->runs);
    double next = median(r->scan[SCAN_NEXT], o->runs), dec = median(r->scan[SCAN_DECODE], o->runs);
    printf("\nmedian of %u run(s): replay %.0f events/s; scan %.0f, decode %.0f, unpack %.0f "
           "events/s\n",
           o->runs, rp, next, dec, median(r->scan[SCAN_UNPACK], o->runs));
    printf("replay / decode scan = %.3f, replay / MDB_NEXT scan = %.3f; state %.1f MB on disk\n",
           ratio, median(r->ratio_next, o->runs), (double)r->state_bytes / 1e6);
    printf("per CPU second (what the load of other processes does not change): replay %.0f, "
           "decode %.0f events/s\n",
           median(r->replay_cpu, o->runs), median(r->decode_cpu, o->runs));
    printf("goal: >= 1000000 events/s: %s; >= 1/3 of the decode scan: %s\n",
           rp >= 1e6 ? "met" : "NOT met", ratio >= 1.0 / 3 ? "met" : "NOT met");
}

static int run_all(const struct opts *o, const char *data, const char *scratch)
{
    static struct results r;
    uint64_t events = 0;
    int64_t t = bench_mono_ns();
    int rc = 0;
    if (!o->log) {
        printf("building the log: %zu inputs, a tick every %u ...\n", o->n, o->tick_every);
        fflush(stdout);
        rc = build_log(o, data, &events);
        if (rc)
            return rc;
    }
    struct figures warm;
    if ((rc = scan_log(data, SCAN_DECODE, &warm))) /* also warms the page cache */
        return rc;
    if (o->log)
        events = warm.events;
    printf("log: %llu events (%.1f s to build)\n", (unsigned long long)events,
           o->log ? 0.0 : (double)(bench_mono_ns() - t) / 1e9);
    printf("handlers:");
    for (const struct handler *const *h = handler_table; *h; h++)
        printf(" %s", (*h)->name);
    printf("\n\n%-4s %-8s %10s %8s %7s %7s %7s\n", "run", "phase", "events/s", "wall s", "cpu s",
           "sys s", "ratio");
    for (unsigned k = 0; k < o->runs && !rc; k++)
        rc = one_run(o, data, scratch, k, events, &r);
    if (!rc)
        summary(o, &r);
    if (!rc && o->per_handler)
        rc = per_handler(o, data, scratch);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    char scratch[4096] = "";
    parse_opts(argc, argv, &o);
    printf("cairn bench/replay: n=%zu seed=%llu runs=%u tick_every=%u threads=%u%s%s%s%s\n", o.n,
           (unsigned long long)o.seed, o.runs, o.tick_every, o.threads, o.log ? " log=" : "",
           o.log ? o.log : "", o.only ? " only=" : "", o.only ? o.only : "");
    print_machine();
    printf("ratio column: scan phases over the MDB_NEXT scan; replay over the decode scan\n");
    int rc = bench_tmpdir(o.dir, scratch, sizeof scratch);
    if (!rc)
        rc = run_all(&o, o.log ? o.log : scratch, scratch);
    if (rc)
        fprintf(stderr, "bench: failed: %s\n", cairn_strerror(rc));
    if (scratch[0] && o.keep)
        fprintf(stderr, "bench: kept %s (reuse its log with --log %s)\n", scratch, scratch);
    else if (scratch[0] && bench_rmtree(scratch))
        fprintf(stderr, "bench: could not remove %s\n", scratch);
    return rc ? 1 : 0;
}
