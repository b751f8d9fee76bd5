/*
 * ingest.c — bench/ingest: how fast inputs become durable log entries.
 *
 *   bench/ingest [-n N] [--dir DIR] [--batch B] [--req R] [--inflight K]
 *                [--producers P] [--runs R] [--seed S] [--schemas DIR] [--only PATH]
 *                [--keep] [--emit]
 *
 * Three timed phases over the same N generated inputs (workload.h):
 *
 *   ndjson   each line through ingest_parse_json (what `cairn append` does)
 *   msgpack  each pre-encoded object through ingest_parse_msgpack
 *            both:  producer thread(s): parse + validate R inputs into a
 *                   request, log_writer_submit, up to K requests in flight
 *                   writer thread:     group commit (one fsync per batch)
 *   raw      plain LMDB, MDB_APPEND of the very bytes the msgpack run
 *            stored, one durable commit per B' values, B' = the mean batch
 *            the writer achieved: the machine's limit for this work
 *
 * Each ingest phase writes a fresh log in its own directory. Wall time runs
 * from the first parse to the last done callback; commit latency is per
 * request, from submit to done. Input generation and msgpack encoding
 * happen before any timing. Besides rates and latencies it reports the
 * bytes each phase wrote to its LMDB files per event (/proc/self/io: write
 * calls; the log's index is written through its map, by the kernel's
 * writeback, and is not counted), which
 * is what separates the log from the raw loop on a slow disk, and CPU time
 * per event in all and per thread: the parsing threads, the log's writer
 * and its indexer (found by the names log/ gives them), which is what can
 * be compared while other work shares the machine. The program
 * stops by itself after the three phases and prints a table and one JSON
 * line (for bench/RESULTS.md).
 */
#include "bench.h"
#include "engine.h"
#include "workload.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_N 1000000
/* Events per request: what `cairn append` submits (cli_log.c CHUNK_LINES,
 * 1024 lines a chunk). It was 256: with 8 in flight the writer then held
 * at most 2 048 events, its batches averaged 620-740 events of a possible
 * 1 024, and the producer spent much of each commit waiting for a slot —
 * a stingier client than the CLI (NDJSON 237-286 k events/s here against
 * 282-348 k at 1024; bench/RESULTS.md, session 12). */
#define DEFAULT_REQ 1024
#define DEFAULT_INFLIGHT 8
#define PRODUCERS_MAX 16
#define INFLIGHT_MAX 256
#define RUNS_MAX 9

struct opts {
    size_t n;
    const char *dir;     /* parent of the scratch directory */
    const char *schemas; /* NULL: the built-in schema directory */
    unsigned batch;      /* writer batch_max; 0: CAIRN_BATCH_MAX_DEFAULT */
    unsigned req;        /* events per request */
    unsigned inflight;   /* requests in flight per producer */
    unsigned producers;
    unsigned runs; /* repetitions; the report gives the median */
    uint64_t seed;
    bool keep;
    bool emit;        /* print the NDJSON input and stop */
    const char *only; /* NULL, "ndjson" or "msgpack": run that ingest phase only */
};

/* What one timed phase measured. */
struct figures {
    const char *name;
    uint64_t events, input_bytes, stored_bytes, batches;
    uint64_t encoded_ahead; /* batches the indexer encoded during the commit before */
    uint64_t written;       /* bytes written to files while timed (LMDB's pages) */
    int64_t wall_ns, cpu_ns, sys_ns, producer_cpu_ns, commit_ns;
    int64_t writer_cpu_ns, index_cpu_ns; /* the log's two threads (by name) */
    int64_t p50_ns, p99_ns, max_ns;
};

/* ====================================================================== one timed run */

struct run;

/* A request slot: R inputs parsed, submitted, answered, then reused. */
struct slot {
    struct log_req req; /* first: the done callback gets it back */
    struct producer *p;
    struct ingest_event *evs;
    struct log_input *ins;
    struct log_result *res;
    size_t nev;
    int64_t t_submit;
    bool busy;
};

struct producer {
    struct run *run;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct slot *slots;
    unsigned nslots, turn;
    int64_t cpu_ns;
};

struct run {
    const struct opts *o;
    const struct workload_corpus *corpus;
    bool msgpack;
    struct ingest *ing;
    struct log_writer *w;
    _Atomic size_t next; /* first input not yet taken by a producer */
    int64_t *lat;        /* per request, submit .. done */
    size_t lat_cap;
    _Atomic size_t nlat;
    _Atomic int failed;
    pthread_mutex_t err_mu;
    char err[CAIRN_ERR_MSG_MAX + CAIRN_ERR_FIELD_MAX + 64];
};

static void run_fail(struct run *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void run_fail(struct run *r, int rc, const char *fmt, ...)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&r->failed, &expected, rc ? rc : CAIRN_EINVAL))
        return; /* keep the first reason */
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&r->err_mu);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    pthread_mutex_unlock(&r->err_mu);
    va_end(ap);
}

/* Runs on the writer thread: record, mark free, wake the producer. */
static void slot_done(struct log_req *req)
{
    struct slot *s = (struct slot *)req;
    struct run *r = s->p->run;
    size_t i = atomic_fetch_add(&r->nlat, 1);
    if (i < r->lat_cap)
        r->lat[i] = bench_mono_ns() - s->t_submit;
    pthread_mutex_lock(&s->p->mu);
    s->busy = false;
    pthread_cond_signal(&s->p->cv);
    pthread_mutex_unlock(&s->p->mu);
}

/* Checks what the log said about a finished request. Its events keep
 * their memory for the next request's inputs (engine.h), as cairn
 * append's chunks do. */
static void slot_recycle(struct run *r, struct slot *s)
{
    if (s->req.rc)
        run_fail(r, s->req.rc, "a batch failed: %s", cairn_strerror(s->req.rc));
    for (size_t i = 0; i < s->nev; i++) {
        if (s->res[i].rc || s->res[i].duplicate)
            run_fail(r, s->res[i].rc, "the log refused an input (%s%s)",
                     cairn_strerror(s->res[i].rc), s->res[i].duplicate ? ", duplicate" : "");
    }
    s->nev = 0;
}

/* Waits for the next slot in turn to be free (requests finish in order). */
static struct slot *slot_acquire(struct producer *p)
{
    struct slot *s = &p->slots[p->turn++ % p->nslots];
    pthread_mutex_lock(&p->mu);
    while (s->busy)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    slot_recycle(p->run, s);
    return s;
}

static int parse_one(struct run *r, size_t i, int64_t now, struct ingest_event *ev,
                     struct cairn_error *e)
{
    const struct workload_corpus *c = r->corpus;
    const uint8_t *p = c->data.data + c->off[i];
    size_t n = c->off[i + 1] - c->off[i], used;
    if (!r->msgpack) /* the item ends with its '\n' */
        return ingest_parse_json(r->ing, (const char *)p, n - 1, "bench", now, ev, e);
    int rc = ingest_parse_msgpack(r->ing, p, n, &used, "bench", now, ev, e);
    if (!rc && used != n)
        rc = cairn_error_set(e, "trailing_bytes", "", "%zu bytes after the object", n - used);
    return rc;
}

/* Parses inputs [lo, hi) into s and submits it. */
static int slot_fill_submit(struct run *r, struct slot *s, size_t lo, size_t hi)
{
    struct cairn_error e;
    int64_t now = cairn_now_ns();
    for (size_t i = lo; i < hi; i++) {
        cairn_error_clear(&e);
        int rc = parse_one(r, i, now, &s->evs[s->nev], &e);
        if (rc) {
            run_fail(r, rc, "input %zu refused: %s %s %s", i, e.code ? e.code : cairn_strerror(rc),
                     e.field, e.message);
            return rc;
        }
        s->ins[s->nev] = s->evs[s->nev].in;
        s->nev++;
    }
    s->req = (struct log_req){.inputs = s->ins, .results = s->res, .n = s->nev, .done = slot_done};
    s->busy = true;
    s->t_submit = bench_mono_ns();
    int rc = log_writer_submit(r->w, &s->req, true);
    if (rc) {
        s->busy = false;
        run_fail(r, rc, "log_writer_submit: %s", cairn_strerror(rc));
    }
    return rc;
}

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    struct run *r = p->run;
    size_t n = r->corpus->n, step = r->o->req;
    pthread_setname_np(pthread_self(), "bench-parse"); /* tells it apart in perf */
    while (!atomic_load(&r->failed)) {
        size_t lo = atomic_fetch_add(&r->next, step);
        if (lo >= n)
            break;
        struct slot *s = slot_acquire(p);
        if (slot_fill_submit(r, s, lo, lo + step < n ? lo + step : n))
            break;
    }
    for (unsigned i = 0; i < p->nslots; i++) /* wait for every request in flight */
        slot_acquire(p);
    p->cpu_ns = bench_thread_cpu_ns();
    return NULL;
}

/* ====================================================================== producers */

/* CPU time (ns, from schedstat) of this process's threads named `comm`
 * (log/ names its writer "cairn-writer" and its indexer "cairn-index"). */
static int64_t threads_cpu_ns(const char *comm)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    int64_t sum = 0;
    while (d && (de = readdir(d))) {
        char path[300], name[64] = "";
        unsigned long long ns = 0;
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        bool match = fgets(name, sizeof name, f) && !strncmp(name, comm, strlen(comm)) &&
                     (name[strlen(comm)] == '\n' || !name[strlen(comm)]);
        fclose(f);
        snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", de->d_name);
        if (match && (f = fopen(path, "r"))) {
            if (fscanf(f, "%llu", &ns) == 1)
                sum += (int64_t)ns;
            fclose(f);
        }
    }
    if (d)
        closedir(d);
    return sum;
}

static void producer_deinit(struct producer *p)
{
    for (unsigned i = 0; p->slots && i < p->nslots; i++) {
        for (size_t j = 0; p->slots[i].evs && j < p->run->o->req; j++)
            ingest_event_deinit(&p->slots[i].evs[j]);
        free(p->slots[i].evs);
        free(p->slots[i].ins);
        free(p->slots[i].res);
    }
    free(p->slots);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

static int producer_init(struct producer *p, struct run *r)
{
    size_t req = r->o->req;
    memset(p, 0, sizeof *p);
    p->run = r;
    p->nslots = r->o->inflight;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->slots = calloc(p->nslots, sizeof *p->slots);
    if (!p->slots)
        return CAIRN_ENOMEM;
    for (unsigned i = 0; i < p->nslots; i++) {
        struct slot *s = &p->slots[i];
        s->p = p;
        s->evs = calloc(req, sizeof *s->evs);
        s->ins = calloc(req, sizeof *s->ins);
        s->res = calloc(req, sizeof *s->res);
        if (!s->evs || !s->ins || !s->res)
            return CAIRN_ENOMEM;
    }
    return 0;
}

/* Starts the producers, waits for them; fills the timing figures. */
static int run_producers(struct run *r, struct figures *f)
{
    struct producer ps[PRODUCERS_MAX];
    unsigned np = r->o->producers, started = 0;
    int rc = 0;
    for (unsigned i = 0; i < np && !rc; i++) {
        if ((rc = producer_init(&ps[i], r))) {
            producer_deinit(&ps[i]);
            np = i;
        }
    }
    uint64_t w0 = bench_io_wchar();
    int64_t wr0 = threads_cpu_ns("cairn-writer"), ix0 = threads_cpu_ns("cairn-index");
    int64_t c0 = bench_cpu_ns(), s0 = bench_sys_ns(), t0 = bench_mono_ns();
    for (; !rc && started < np; started++)
        if (pthread_create(&ps[started].thread, NULL, producer_main, &ps[started]))
            rc = CAIRN_ENOMEM;
    if (rc)
        run_fail(r, rc, "cannot start the producers");
    for (unsigned i = 0; i < started; i++)
        pthread_join(ps[i].thread, NULL);
    f->wall_ns = bench_mono_ns() - t0;
    f->cpu_ns = bench_cpu_ns() - c0;
    f->sys_ns = bench_sys_ns() - s0;
    f->written = bench_io_wchar() - w0;
    f->writer_cpu_ns = threads_cpu_ns("cairn-writer") - wr0;
    f->index_cpu_ns = threads_cpu_ns("cairn-index") - ix0;
    for (unsigned i = 0; i < np; i++) {
        f->producer_cpu_ns += ps[i].cpu_ns;
        producer_deinit(&ps[i]);
    }
    return rc ? rc : atomic_load(&r->failed);
}

/* ====================================================================== one phase */

static void latency_figures(struct run *r, struct figures *f)
{
    size_t n = atomic_load(&r->nlat);
    if (n > r->lat_cap)
        n = r->lat_cap;
    bench_sort(r->lat, n);
    f->p50_ns = bench_quantile(r->lat, n, 0.50);
    f->p99_ns = bench_quantile(r->lat, n, 0.99);
    f->max_ns = n ? r->lat[n - 1] : 0;
}

/* Copies every stored envelope of the log, in seq order, into vals. */
static int read_back(struct log *log, struct workload_corpus *vals, size_t n)
{
    struct log_snap *s;
    struct log_iter *it = NULL;
    struct log_event ev;
    memset(vals, 0, sizeof *vals);
    cairn_buf_init(&vals->data, 16ull << 30);
    if (!(vals->off = calloc(n + 1, sizeof *vals->off)))
        return CAIRN_ENOMEM;
    int rc = log_snap_begin(log, &s);
    if (rc)
        return rc;
    rc = log_iter_open(s, 1, NULL, NULL, &it);
    while (!rc && vals->n < n && !(rc = log_iter_next(it, &ev))) {
        vals->off[vals->n++] = vals->data.len;
        rc = cairn_buf_append(&vals->data, ev.raw, ev.raw_len);
    }
    vals->off[vals->n] = vals->data.len;
    log_iter_close(it);
    log_snap_end(s);
    return rc == CAIRN_ENOTFOUND || (!rc && vals->n == n) ? 0 : rc ? rc : CAIRN_ECORRUPT;
}

static int open_log(const struct opts *o, const char *dir, struct log **log)
{
    struct log_config cfg = {.dir = dir, .batch_max = o->batch};
    int rc = log_open(log, &cfg);
    if (rc)
        fprintf(stderr, "bench: cannot open the log in %s: %s\n", dir, cairn_strerror(rc));
    return rc;
}

/* After the run: stats, sanity checks, and (for msgpack) the stored bytes. */
static int finish_phase(struct run *r, struct log *log, const struct log_writer_stats *stp,
                        struct figures *f, struct workload_corpus *stored)
{
    struct log_writer_stats st = *stp;
    uint64_t head;
    f->events = st.events;
    f->batches = st.batches;
    f->encoded_ahead = st.encoded_ahead;
    f->commit_ns = (int64_t)st.commit_ns_total;
    f->input_bytes = r->corpus->data.len;
    latency_figures(r, f);
    int rc = log_head(log, &head, NULL);
    if (!rc && (head != r->corpus->n || st.events != head)) {
        fprintf(stderr, "bench: %s: the log holds %llu events, expected %zu\n", f->name,
                (unsigned long long)head, r->corpus->n);
        rc = CAIRN_ECORRUPT;
    }
    struct workload_corpus own;
    struct workload_corpus *vals = stored ? stored : &own;
    if (!rc)
        rc = read_back(log, vals, r->corpus->n);
    if (!rc)
        f->stored_bytes = vals->data.len;
    if (vals == &own || rc)
        workload_corpus_deinit(vals);
    return rc;
}

/* Appends the corpus to a fresh log in dir; fills f (and stored, when
 * given, with the envelopes the log holds afterwards). */
static int run_phase(const struct opts *o, struct ingest *ing, const struct workload_corpus *c,
                     bool msgpack, const char *dir, struct figures *f,
                     struct workload_corpus *stored)
{
    struct run r = {.o = o, .corpus = c, .msgpack = msgpack, .ing = ing};
    struct log *log = NULL;
    f->name = msgpack ? "msgpack" : "ndjson";
    pthread_mutex_init(&r.err_mu, NULL);
    r.lat_cap = (c->n + o->req - 1) / o->req + 1;
    int rc = (r.lat = calloc(r.lat_cap, sizeof *r.lat)) ? 0 : CAIRN_ENOMEM;
    if (!rc)
        rc = open_log(o, dir, &log);
    if (!rc)
        rc = log_writer_start(&r.w, log, NULL, NULL);
    if (!rc) {
        struct log_writer_stats st;
        rc = run_producers(&r, f);
        log_writer_stats(r.w, &st); /* every request was answered already */
        log_writer_stop(r.w);
        if (rc)
            fprintf(stderr, "bench: %s: %s\n", f->name, r.err);
        else
            rc = finish_phase(&r, log, &st, f, stored);
    }
    log_close(log);
    free(r.lat);
    pthread_mutex_destroy(&r.err_mu);
    return rc;
}

/* ====================================================================== options */

static const char usage[] =
    "usage: bench/ingest [-n N] [--dir DIR] [--batch B] [--req R] [--inflight K]\n"
    "                    [--producers P] [--runs R] [--seed S] [--schemas DIR] [--only PATH]\n"
    "                    [--keep] [--emit]\n"
    "  -n N           inputs per phase (default 1000000)\n"
    "  --dir DIR      where the scratch directory is made (default /tmp)\n"
    "  --batch B      writer: events per commit at most (default 1024)\n"
    "  --req R        events per request (default 1024)\n"
    "  --inflight K   requests in flight per producer (default 8)\n"
    "  --producers P  parsing threads (default 1)\n"
    "  --runs R       repeat the three phases R times, report the median (default 1)\n"
    "  --seed S       workload seed (default 1)\n"
    "  --schemas DIR  input schemas (default: the source tree's schemas/)\n"
    "  --only PATH    run one ingest path, ndjson or msgpack (then raw), e.g. to profile\n"
    "  --keep         keep the scratch directory (the three LMDB environments)\n"
    "  --emit         write the N generated NDJSON inputs to stdout and stop\n";

static bool opt_u64(const char *name, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = s ? strtoull(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "bench: %s needs an integer in [%llu, %llu]\n%s", name,
                (unsigned long long)lo, (unsigned long long)hi, usage);
        return false;
    }
    *out = v;
    return true;
}

/* Matches one option taking a value; *i moves past what it used. */
static bool opt_val(int argc, char **argv, int *i, const char *name, const char **val)
{
    if (strcmp(argv[*i], name))
        return false;
    *val = *i + 1 < argc ? argv[++*i] : NULL;
    return true;
}

static bool opt_dir(int argc, char **argv, int *i, const char *name, const char **dst, bool *ok)
{
    const char *v;
    if (!opt_val(argc, argv, i, name, &v))
        return false;
    *ok = v && v[0];
    if (*ok)
        *dst = v;
    else
        fprintf(stderr, "bench: %s needs a directory\n%s", name, usage);
    return true;
}

static bool parse_num(int argc, char **argv, int *i, struct opts *o, bool *ok)
{
    const char *v;
    uint64_t x = 0;
    if (opt_val(argc, argv, i, "-n", &v))
        *ok = opt_u64("-n", v, 1, 1ull << 32, &x) && (o->n = x, true);
    else if (opt_val(argc, argv, i, "--batch", &v))
        *ok =
            opt_u64("--batch", v, 1, CAIRN_BATCH_MAX_CEILING, &x) && (o->batch = (unsigned)x, true);
    else if (opt_val(argc, argv, i, "--req", &v))
        *ok = opt_u64("--req", v, 1, CAIRN_QUEUE_MAX_DEFAULT, &x) && (o->req = (unsigned)x, true);
    else if (opt_val(argc, argv, i, "--inflight", &v))
        *ok = opt_u64("--inflight", v, 1, INFLIGHT_MAX, &x) && (o->inflight = (unsigned)x, true);
    else if (opt_val(argc, argv, i, "--producers", &v))
        *ok = opt_u64("--producers", v, 1, PRODUCERS_MAX, &x) && (o->producers = (unsigned)x, true);
    else if (opt_val(argc, argv, i, "--runs", &v))
        *ok = opt_u64("--runs", v, 1, RUNS_MAX, &x) && (o->runs = (unsigned)x, true);
    else if (opt_val(argc, argv, i, "--seed", &v))
        *ok = opt_u64("--seed", v, 1, UINT64_MAX, &x) && (o->seed = x, true);
    else
        return false;
    return true;
}

static bool parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.n = DEFAULT_N,
                       .dir = "/tmp",
                       .req = DEFAULT_REQ,
                       .inflight = DEFAULT_INFLIGHT,
                       .producers = 1,
                       .runs = 1,
                       .seed = 1};
    for (int i = 1; i < argc; i++) {
        bool ok = true;
        if (parse_num(argc, argv, &i, o, &ok)) {
            if (!ok)
                return false;
        } else if (opt_dir(argc, argv, &i, "--dir", &o->dir, &ok) ||
                   opt_dir(argc, argv, &i, "--schemas", &o->schemas, &ok)) {
            if (!ok)
                return false;
        } else if (!strcmp(argv[i], "--keep")) {
            o->keep = true;
        } else if (!strcmp(argv[i], "--emit")) {
            o->emit = true;
        } else if (opt_val(argc, argv, &i, "--only", &o->only)) {
            if (!o->only || (strcmp(o->only, "ndjson") && strcmp(o->only, "msgpack"))) {
                fprintf(stderr, "bench: --only takes ndjson or msgpack\n%s", usage);
                return false;
            }
        } else {
            fprintf(stderr, "%s", usage);
            return false;
        }
    }
    /* A request must fit the writer's queue together with the others. */
    if ((size_t)o->req * o->inflight * o->producers > CAIRN_QUEUE_MAX_DEFAULT) {
        fprintf(stderr, "bench: req x inflight x producers must be <= %u\n",
                CAIRN_QUEUE_MAX_DEFAULT);
        return false;
    }
    return true;
}

/* ====================================================================== report */

static double per_s(uint64_t count, int64_t ns)
{
    return ns > 0 ? (double)count * 1e9 / (double)ns : 0.0;
}

static double mb_s(uint64_t bytes, int64_t ns)
{
    return per_s(bytes, ns) / 1e6;
}

static double ms(int64_t ns)
{
    return (double)ns / 1e6;
}

static double per_event(uint64_t v, uint64_t events)
{
    return events ? (double)v / (double)events : 0.0;
}

static double mean_batch(const struct figures *f)
{
    return f->batches ? (double)f->events / (double)f->batches : 0.0;
}

struct bench {
    struct opts o;
    char dir[4096];
    struct ingest *ing;
    struct workload_corpus json, mp, stored;
    unsigned runs; /* completed */
    struct figures nd[RUNS_MAX], mpf[RUNS_MAX], raw[RUNS_MAX];
    size_t raw_batch[RUNS_MAX];
};

static void print_header(const struct opts *o, const struct workload_corpus *json,
                         const struct workload_corpus *mp)
{
    printf("cairn bench/ingest: n=%zu req=%u inflight=%u producers=%u batch_max=%u seed=%llu "
           "runs=%u\n",
           o->n, o->req, o->inflight, o->producers, o->batch ? o->batch : CAIRN_BATCH_MAX_DEFAULT,
           (unsigned long long)o->seed, o->runs);
    printf("input: NDJSON %.1f MB (%.0f B/line), msgpack %.1f MB (%.0f B/object)\ntypes:",
           (double)json->data.len / 1e6, (double)json->data.len / (double)json->n,
           (double)mp->data.len / 1e6, (double)mp->data.len / (double)mp->n);
    for (int t = 0; t < WL_NTYPES; t++)
        printf(" %s %.1f%%", workload_type_names[t],
               100.0 * (double)json->per_type[t] / (double)json->n);
    printf("\nload average at start: %.2f (other work on the machine skews every figure)\n",
           bench_loadavg());
    printf("\n%-4s %-8s %9s %7s %7s %6s %6s %6s %6s %6s %6s %6s %7s %6s %7s %7s %7s %7s\n", "run",
           "path", "events/s", "in MB/s", "st MB/s", "wall s", "cpu s", "us/ev", "sys s", "prod s",
           "wrt s", "idx s", "batches", "ev/bat", "wr B/ev", "p50 ms", "p99 ms", "max ms");
}

static void print_row(const char *run, const struct figures *f)
{
    if (!f->name)
        return; /* the phase did not run (--only) */
    printf("%-4s %-8s %9.0f %7.1f %7.1f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f %7llu %6.1f "
           "%7.0f %7.2f %7.2f %7.2f\n",
           run, f->name, per_s(f->events, f->wall_ns), mb_s(f->input_bytes, f->wall_ns),
           mb_s(f->stored_bytes, f->wall_ns), (double)f->wall_ns / 1e9, (double)f->cpu_ns / 1e9,
           per_event((uint64_t)f->cpu_ns, f->events) / 1e3, (double)f->sys_ns / 1e9,
           (double)f->producer_cpu_ns / 1e9, (double)f->writer_cpu_ns / 1e9,
           (double)f->index_cpu_ns / 1e9, (unsigned long long)f->batches, mean_batch(f),
           per_event(f->written, f->events), ms(f->p50_ns), ms(f->p99_ns), ms(f->max_ns));
}

static void print_run(unsigned k, const struct figures *nd, const struct figures *mp,
                      const struct figures *raw)
{
    char run[16];
    snprintf(run, sizeof run, "%u", k);
    print_row(run, nd);
    print_row(run, mp);
    print_row(run, raw);
    fflush(stdout);
}

static void print_json_figures(const struct figures *f)
{
    if (!f->name)
        return;
    printf(",\"%s\":{\"events\":%llu,\"events_per_s\":%.0f,\"input_mb_per_s\":%.2f,"
           "\"stored_mb_per_s\":%.2f,\"wall_s\":%.3f,\"cpu_s\":%.3f,\"sys_s\":%.3f,"
           "\"cpu_us_per_event\":%.3f,\"producer_cpu_s\":%.3f,\"writer_cpu_s\":%.3f,"
           "\"index_cpu_s\":%.3f,\"writer_busy_s\":%.3f,\"batches\":%llu,\"mean_batch\":%.1f,"
           "\"encoded_ahead\":%llu,"
           "\"written_bytes_per_event\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}",
           f->name, (unsigned long long)f->events, per_s(f->events, f->wall_ns),
           mb_s(f->input_bytes, f->wall_ns), mb_s(f->stored_bytes, f->wall_ns),
           (double)f->wall_ns / 1e9, (double)f->cpu_ns / 1e9, (double)f->sys_ns / 1e9,
           per_event((uint64_t)f->cpu_ns, f->events) / 1e3, (double)f->producer_cpu_ns / 1e9,
           (double)f->writer_cpu_ns / 1e9, (double)f->index_cpu_ns / 1e9,
           (double)f->commit_ns / 1e9, (unsigned long long)f->batches, mean_batch(f),
           (unsigned long long)f->encoded_ahead, per_event(f->written, f->events), ms(f->p50_ns),
           ms(f->p99_ns), ms(f->max_ns));
}

/* The raw loop as a row of the same table. */
static struct figures raw_figures(const struct bench_raw_result *raw, int64_t cpu_ns)
{
    return (struct figures){.name = "raw",
                            .events = raw->values,
                            .input_bytes = raw->bytes,
                            .stored_bytes = raw->bytes,
                            .batches = raw->commits,
                            .written = raw->written,
                            .wall_ns = raw->wall_ns,
                            .cpu_ns = cpu_ns,
                            .commit_ns = raw->wall_ns,
                            .p50_ns = raw->p50_ns,
                            .p99_ns = raw->p99_ns,
                            .max_ns = raw->max_ns};
}

/* rate(f) / rate(raw); 0 when f did not run. */
static double ratio(const struct figures *f, const struct figures *raw)
{
    double r = per_s(raw->events, raw->wall_ns);
    return f->name && r > 0 ? per_s(f->events, f->wall_ns) / r : 0.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (the lower middle when n is even); sorts a copy. */
static double median(const double *v, unsigned n)
{
    double s[RUNS_MAX];
    memcpy(s, v, n * sizeof *v);
    qsort(s, n, sizeof *s, cmp_double);
    return n ? s[(n - 1) / 2] : 0.0;
}

/* The run whose rate is the median one. */
static const struct figures *median_run(const struct figures *f, unsigned n)
{
    double rates[RUNS_MAX] = {0};
    for (unsigned k = 0; k < n; k++)
        rates[k] = per_s(f[k].events, f[k].wall_ns);
    double m = median(rates, n);
    for (unsigned k = 0; k < n; k++)
        if (rates[k] == m)
            return &f[k];
    return &f[0];
}

/* Per-run ratios to the raw loop of the same run (same disk weather). */
static double median_ratio(const struct figures *f, const struct figures *raw, unsigned n)
{
    double r[RUNS_MAX] = {0};
    for (unsigned k = 0; k < n; k++)
        r[k] = ratio(&f[k], &raw[k]);
    return median(r, n);
}

static void print_json_runs(const char *name, const struct figures *f, const struct figures *raw,
                            unsigned n)
{
    if (!f[0].name)
        return;
    printf(",\"%s_events_per_s_runs\":[", name);
    for (unsigned k = 0; k < n; k++)
        printf("%s%.0f", k ? "," : "", per_s(f[k].events, f[k].wall_ns));
    if (!raw)
        return (void)putchar(']');
    printf("],\"ratio_%s_raw_runs\":[", name);
    for (unsigned k = 0; k < n; k++)
        printf("%s%.3f", k ? "," : "", ratio(&f[k], &raw[k]));
    putchar(']');
}

static void print_json_ratio(const char *name, bool ran, double r)
{
    if (ran)
        printf(",\"ratio_%s_raw\":%.3f", name, r);
    else
        printf(",\"ratio_%s_raw\":null", name);
}

static void print_goals(const struct bench *b, const struct figures *nd, double r_mp, double r_nd)
{
    printf("\n(in MB/s: input bytes; st MB/s: stored envelopes; us/ev: CPU per event; sys s:\n"
           " kernel CPU; prod s, wrt s, idx s: CPU of the parsing threads, the log's writer\n"
           " thread and its indexer thread; wr B/ev: bytes written to the LMDB files per event\n"
           " by write calls (the log index is written through its map, by the kernel: not\n"
           " counted);\n"
           " latency: per request from submit to done, for raw per commit; raw: MDB_APPEND of\n"
           " the stored envelopes, a durable commit every ev/bat values; med: the median run,\n"
           " ratios: the median of the per-run ratios)\n");
    if (b->mpf[0].name)
        printf("ratio msgpack/raw %.3f: goal >= 0.70 %s\n", r_mp, r_mp >= 0.70 ? "met" : "NOT met");
    if (nd->name) {
        double rate = per_s(nd->events, nd->wall_ns);
        printf("ratio ndjson/raw %.3f; ndjson %.0f events/s: goal >= 300000 %s\n", r_nd, rate,
               rate >= 300000 ? "met" : "NOT met");
    }
}

static void report(const struct bench *b)
{
    unsigned n = b->runs;
    const struct figures *nd = median_run(b->nd, n), *mp = median_run(b->mpf, n),
                         *raw = median_run(b->raw, n);
    double r_mp = median_ratio(b->mpf, b->raw, n), r_nd = median_ratio(b->nd, b->raw, n);
    if (n > 1) {
        putchar('\n');
        print_row("med", nd);
        print_row("med", mp);
        print_row("med", raw);
    }
    print_goals(b, nd, r_mp, r_nd);
    const struct opts *o = &b->o;
    printf("{\"bench\":\"ingest\",\"n\":%zu,\"req\":%u,\"inflight\":%u,\"producers\":%u,"
           "\"batch_max\":%u,\"seed\":%llu,\"runs\":%u,\"raw_batch\":%zu",
           o->n, o->req, o->inflight, o->producers, o->batch ? o->batch : CAIRN_BATCH_MAX_DEFAULT,
           (unsigned long long)o->seed, n, b->raw_batch[raw - b->raw]);
    print_json_figures(nd);
    print_json_figures(mp);
    print_json_figures(raw);
    print_json_runs("ndjson", b->nd, b->raw, n);
    print_json_runs("msgpack", b->mpf, b->raw, n);
    print_json_runs("raw", b->raw, NULL, n);
    print_json_ratio("msgpack", b->mpf[0].name != NULL, r_mp);
    print_json_ratio("ndjson", b->nd[0].name != NULL, r_nd);
    printf("}\n");
}

/* ====================================================================== main */

static int prepare(struct bench *b)
{
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = ingest_open(&b->ing, &(struct ingest_config){.schema_dir = b->o.schemas}, &e);
    if (rc) {
        fprintf(stderr, "bench: cannot load schemas: %s %s %s\n", e.code ? e.code : "", e.field,
                e.message);
        return rc;
    }
    if ((rc = bench_tmpdir(b->o.dir, b->dir, sizeof b->dir)))
        return rc;
    struct workload_config wc = {.seed = b->o.seed};
    if ((rc = workload_corpus_json(&b->json, &wc, b->o.n)))
        return rc;
    cairn_error_clear(&e);
    if ((rc = workload_corpus_msgpack(&b->mp, &b->json, &e)))
        fprintf(stderr, "bench: msgpack encoding failed: %s\n", e.message);
    return rc;
}

static bool wanted(const struct opts *o, const char *phase)
{
    return !o->only || !strcmp(o->only, phase);
}

/* Run k: the ingest phases, then the raw loop, each in a subdirectory of
 * dir. The raw loop writes the envelopes (and batch size) of the msgpack
 * phase, or of the ndjson phase when that is the only one. */
static int run_once(struct bench *b, unsigned k, const char *dir)
{
    char path[4096 + 32];
    bool mp = wanted(&b->o, "msgpack");
    int rc = 0;
    workload_corpus_deinit(&b->stored);
    if (wanted(&b->o, "ndjson") && !(rc = bench_path(path, sizeof path, dir, "ndjson")))
        rc = run_phase(&b->o, b->ing, &b->json, false, path, &b->nd[k], mp ? NULL : &b->stored);
    if (!rc && mp && !(rc = bench_path(path, sizeof path, dir, "msgpack")))
        rc = run_phase(&b->o, b->ing, &b->mp, true, path, &b->mpf[k], &b->stored);
    if (!rc)
        rc = bench_path(path, sizeof path, dir, "raw");
    if (rc)
        return rc;
    size_t batch = (size_t)(mean_batch(mp ? &b->mpf[k] : &b->nd[k]) + 0.5);
    struct bench_raw_result raw;
    int64_t c0 = bench_cpu_ns(), s0 = bench_sys_ns();
    b->raw_batch[k] = batch ? batch : 1;
    rc = bench_raw_append(path, &b->stored, b->raw_batch[k], &raw);
    b->raw[k] = raw_figures(&raw, bench_cpu_ns() - c0);
    b->raw[k].sys_ns = bench_sys_ns() - s0;
    return rc;
}

static int run_all(struct bench *b)
{
    char dir[4096 + 32], name[32];
    int rc = 0;
    for (unsigned k = 0; k < b->o.runs && !rc; k++) {
        snprintf(name, sizeof name, "run-%u", k + 1);
        if ((rc = bench_path(dir, sizeof dir, b->dir, name)))
            break;
        rc = run_once(b, k, dir);
        if (!rc)
            print_run(b->runs = k + 1, &b->nd[k], &b->mpf[k], &b->raw[k]);
        if (!b->o.keep && bench_rmtree(dir)) /* a 1M run leaves gigabytes */
            fprintf(stderr, "bench: could not remove %s\n", dir);
    }
    return rc;
}

/* --emit: the workload as NDJSON, e.g. to feed `cairn append`. */
static int emit(const struct opts *o)
{
    struct workload_corpus c;
    int rc = workload_corpus_json(&c, &(struct workload_config){.seed = o->seed}, o->n);
    if (rc)
        return 1;
    bool ok = fwrite(c.data.data, 1, c.data.len, stdout) == c.data.len;
    workload_corpus_deinit(&c);
    return ok && fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    static struct bench b;
    if (!parse_opts(argc, argv, &b.o))
        return 2;
    if (b.o.emit)
        return emit(&b.o);
    int rc = prepare(&b);
    if (!rc) {
        print_header(&b.o, &b.json, &b.mp);
        fflush(stdout);
        rc = run_all(&b);
    }
    if (!rc)
        report(&b);
    else
        fprintf(stderr, "bench: failed: %s\n", cairn_strerror(rc));
    if (b.dir[0] && !b.o.keep && bench_rmtree(b.dir))
        fprintf(stderr, "bench: could not remove %s\n", b.dir);
    else if (b.dir[0] && b.o.keep)
        fprintf(stderr, "bench: kept %s\n", b.dir);
    workload_corpus_deinit(&b.json);
    workload_corpus_deinit(&b.mp);
    workload_corpus_deinit(&b.stored);
    ingest_close(b.ing);
    return rc ? 1 : 0;
}
