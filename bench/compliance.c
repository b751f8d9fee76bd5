/*
 * bench/compliance — the violations handler under a discovery stream:
 * 100 000 resources (100 inputs of 1 000, the resource documents of the
 * rule pack's tests, cycled over 4 accounts/regions) against the full rule
 * pack (handlers/compliance/rules). The log is written first (not timed);
 * then the state is brought up to it (engine_catch_up, on this thread: a
 * few state transactions, each ending with a durable commit) and timed:
 *   pass 1: first discovery (every result new: violations opened, posture built)
 *   pass 2: the same inventory rediscovered (steady state: results unchanged)
 * Run twice, each on a fresh data directory: with every handler (alerts
 * opens an alert per high/critical violation), then with the violations
 * handler alone.
 * Prints, per pass, rule evaluations/s (an evaluation = one enabled rule
 * of the resource's type) and resources/s twice: per CPU second of the
 * applying thread, and per second of wall clock, split into the time on a
 * CPU, waiting for one (load) and blocked (the commits' fsync); then a
 * summary against the goal, >= 200 000 evaluations/s on one core, which is
 * judged per CPU second (the rate of one core's work; the wall clock of a
 * shared machine depends on its load and its disk).
 *   build/bench/bench/compliance [RESOURCES [all|alone]]
 * (any other argument, e.g. --help: the usage, exit status 2)
 * (the second argument runs one of the two configurations only: for
 * profiling, e.g. valgrind --tool=callgrind --toggle-collect=engine_catch_up).
 * (CAIRN_BENCH_KEEP=1 keeps the data directory and prints its path;
 * CAIRN_BENCH_TIMES=1 prints each pass's CLOCK_MONOTONIC interval.)
 */
#include "bench.h"
#include "engine.h"

#include <dirent.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define PER_INPUT 1000
#define RULES_DIR CAIRN_SOURCE_DIR "/handlers/compliance/rules"

struct doc {
    const char *type;
    json_t *attrs;
};

static int append_obj(struct engine *eng, json_t *obj)
{
    struct ingest_event ev = {0};
    struct log_result r;
    struct cairn_error e;
    int rc = ingest_parse_value(engine_ingest(eng), obj, "bench", 0, false, &ev, &e);
    if (rc) {
        fprintf(stderr, "ingest: %s %s\n", e.field, e.message);
        return rc;
    }
    rc = log_append(engine_log(eng), &ev.in, &r, 1);
    ingest_event_deinit(&ev);
    return rc ? rc : r.rc;
}

/* Appends every rule; collects the test documents (with their type) and
 * counts the rules per type. */
static int load_pack(struct engine *eng, struct doc **docs, size_t *nd, json_t *per_type)
{
    DIR *d = opendir(RULES_DIR);
    struct dirent *de;
    int rc = d ? 0 : CAIRN_EIO;
    size_t cap = 0;
    while (!rc && (de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json"))
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", RULES_DIR, de->d_name);
        json_t *rule = json_load_file(path, 0, NULL);
        snprintf(path, sizeof path, "%s/tests/%s", RULES_DIR, de->d_name);
        json_t *t = json_load_file(path, 0, NULL);
        const char *type = json_string_value(json_object_get(rule, "resource_type"));
        json_object_set_new(per_type, type,
                            json_integer(json_integer_value(json_object_get(per_type, type)) + 1));
        json_t *ev = json_pack("{s:s,s:s,s:s,s:O}", "type", "rule.define", "tenant", "acme", "time",
                               "2026-06-01T00:00:00Z", "payload", rule);
        rc = append_obj(eng, ev);
        json_decref(ev);
        const char *lists[] = {"compliant", "non_compliant"};
        for (int k = 0; k < 2; k++) {
            size_t i;
            json_t *a;
            json_array_foreach(json_object_get(t, lists[k]), i, a)
            {
                if (*nd == cap)
                    *docs = realloc(*docs, (cap = cap ? 2 * cap : 256) * sizeof **docs);
                (*docs)[(*nd)++] = (struct doc){strdup(type), json_incref(a)};
            }
        }
        json_decref(t);
        json_decref(rule);
    }
    if (d)
        closedir(d);
    return rc;
}

static int append_inventory(struct engine *eng, const struct doc *docs, size_t nd, size_t total,
                            int pass, json_t *per_type, uint64_t *evals)
{
    static const char *const acct[] = {"111122223333", "444455556666"};
    static const char *const reg[] = {"us-east-1", "eu-west-1"};
    size_t inputs = (total + PER_INPUT - 1) / PER_INPUT;
    for (size_t in = 0; in < inputs; in++) {
        json_t *res = json_array();
        for (size_t i = 0; i < PER_INPUT && in * PER_INPUT + i < total; i++) {
            size_t g = in * PER_INPUT + i;
            const struct doc *d = &docs[g % nd];
            char id[64];
            snprintf(id, sizeof id, "r-%zu", g);
            json_array_append_new(res, json_pack("{s:s,s:s,s:O}", "resource_id", id,
                                                 "resource_type", d->type, "attributes", d->attrs));
            *evals += (uint64_t)json_integer_value(json_object_get(per_type, d->type));
        }
        char scan[32], t[40];
        snprintf(scan, sizeof scan, "scan-%d", pass);
        snprintf(t, sizeof t, "2026-06-0%dT00:00:00Z", pass + 1);
        json_t *ev = json_pack("{s:s,s:s,s:s,s:{s:s,s:s,s:s,s:o}}", "type", "discovery", "tenant",
                               "acme", "time", t, "payload", "account_id", acct[in % 2], "region",
                               reg[(in / 2) % 2], "scan_id", scan, "resources", res);
        int rc = append_obj(eng, ev);
        json_decref(ev);
        if (rc)
            return rc;
    }
    return 0;
}

/* The apply time of each handler so far, by name (ns), and how many events
 * the violations handler was given. */
struct hstats {
    uint64_t v_ns, a_ns, v_applied;
};

static void handler_stats(struct engine *eng, struct hstats *h)
{
    struct engine_handler_stats st[64];
    size_t n = engine_handler_stats(eng, st, 64);
    memset(h, 0, sizeof *h);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(st[i].name, "violations"))
            h->v_ns = st[i].apply_ns, h->v_applied = st[i].applied;
        if (!strcmp(st[i].name, "alerts"))
            h->a_ns = st[i].apply_ns;
    }
}

/* What the applying thread did over a pass. engine_catch_up applies this
 * bench's 100 inputs serially, on the calling thread (parallel apply
 * starts at 4 096 inputs), so this thread's CPU time is the whole cost of
 * applying: the handlers, the engine, LMDB and the commits' writes (in
 * system time). The wall time splits, from the scheduler's own accounting
 * (/proc/thread-self/schedstat: ns on a CPU, ns runnable but waiting for
 * one), into on CPU, waiting for a CPU (other processes: the load), and
 * blocked (neither: the commits' fsync, reading pages in). */
struct sample {
    int64_t mono, cpu, sys, oncpu, runq;
    long vcsw;
    uint64_t dirtied, txnid, bytes; /* bytes: the state's pages (high-water mark) */
};

static void sample_take(struct engine *eng, struct sample *s)
{
    struct rusage ru;
    MDB_envinfo info;
    memset(s, 0, sizeof *s);
    if (!getrusage(RUSAGE_THREAD, &ru)) {
        s->sys = (int64_t)ru.ru_stime.tv_sec * 1000000000LL + (int64_t)ru.ru_stime.tv_usec * 1000;
        s->cpu = s->sys + (int64_t)ru.ru_utime.tv_sec * 1000000000LL +
                 (int64_t)ru.ru_utime.tv_usec * 1000;
        s->vcsw = ru.ru_nvcsw;
    }
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    long long on = -1, wait = -1;
    if (f && fscanf(f, "%lld %lld", &on, &wait) == 2)
        s->oncpu = on, s->runq = wait;
    else
        s->oncpu = s->runq = -1; /* no schedstats: the split is not printed */
    if (f)
        fclose(f);
    /* write_bytes: counted when a page becomes dirty, through write(2) or a
     * writable map alike — what the disk must write. */
    s->dirtied = bench_io_field("write_bytes");
    MDB_env *env = cairn_env_mdb(proj_env(engine_proj(eng)));
    MDB_stat st;
    if (!mdb_env_info(env, &info) && !mdb_env_stat(env, &st))
        s->txnid = info.me_last_txnid, s->bytes = (info.me_last_pgno + 1) * st.ms_psize;
    s->mono = bench_mono_ns(); /* last: the interval ends after the others were read */
}

/* One pass's figures, kept for the summary. */
struct result {
    const char *config, *pass;
    double evals, wall, cpu;
};
static struct result results[4];
static size_t nresults;

#define GOAL 200000.0

static int run_pass(struct engine *eng, const struct doc *docs, size_t nd, size_t total, int pass,
                    json_t *per_type, const char *config)
{
    uint64_t evals = 0;
    struct hstats h0, h1;
    int rc = append_inventory(eng, docs, nd, total, pass, per_type, &evals);
    struct sample b, e;
    handler_stats(eng, &h0);
    double load = bench_loadavg();
    sample_take(eng, &b);
    int64_t t0 = b.mono;
    if (!rc)
        rc = engine_catch_up(eng, 0);
    sample_take(eng, &e);
    handler_stats(eng, &h1);
    double s = (double)(e.mono - b.mono) / 1e9, cpu = (double)(e.cpu - b.cpu) / 1e9,
           sys = (double)(e.sys - b.sys) / 1e9;
    if (getenv("CAIRN_BENCH_TIMES")) /* CLOCK_MONOTONIC: perf record -k CLOCK_MONOTONIC, then
                                        perf report --time FROM,TO */
        fprintf(stderr, "pass %d: monotonic %.6f,%.6f\n", pass, (double)t0 / 1e9,
                (double)t0 / 1e9 + s);
    if (rc)
        return rc;
    const char *what = pass == 1 ? "first discovery" : "rediscovery, unchanged";
    printf("pass %d (%s): %zu resources, %llu rule evaluations (a pass applies %zu inputs in "
           "%llu state commits that dirtied %.0f MiB of file pages; the state is %.0f MiB of "
           "pages)\n",
           pass, what, total, (unsigned long long)evals, (total + PER_INPUT - 1) / PER_INPUT,
           (unsigned long long)(e.txnid - b.txnid), (double)(e.dirtied - b.dirtied) / 1048576.0,
           (double)e.bytes / 1048576.0);
    printf("  per CPU second: %8.0f evaluations/s, %7.0f resources/s (CPU %.3f s of the applying "
           "thread, of which system %.3f s)\n",
           (double)evals / cpu, (double)total / cpu, cpu, sys);
    printf("  wall clock:     %8.0f evaluations/s, %7.0f resources/s (%.3f s", (double)evals / s,
           (double)total / s, s);
    if (b.oncpu >= 0 && e.oncpu >= 0) {
        double on = (double)(e.oncpu - b.oncpu) / 1e9, rq = (double)(e.runq - b.runq) / 1e9;
        double blocked = s - on - rq;
        printf(" = on a CPU %.3f + waiting for a CPU %.3f + blocked %.3f (the commits' fsync, "
               "page-ins; %ld waits)",
               on, rq, blocked > 0 ? blocked : 0, e.vcsw - b.vcsw);
    }
    printf("; load average %.2f)\n", load);
    printf("  apply (wall, sampled): violations %.3f s, alerts %.3f s\n",
           (double)(h1.v_ns - h0.v_ns) / 1e9, (double)(h1.a_ns - h0.a_ns) / 1e9);
    /* An aborted state transaction (e.g. a full map, grown and redone) is
     * applied again: its inputs count twice, and the figures above include
     * that work. */
    size_t inputs = (total + PER_INPUT - 1) / PER_INPUT;
    if (h1.v_applied - h0.v_applied > inputs)
        printf("  note: the violations handler applied %llu inputs for %zu: %llu re-applied after "
               "an aborted state transaction\n",
               (unsigned long long)(h1.v_applied - h0.v_applied), inputs,
               (unsigned long long)(h1.v_applied - h0.v_applied - inputs));
    if (nresults < sizeof results / sizeof *results)
        results[nresults++] = (struct result){config, what, (double)evals, s, cpu};
    return 0;
}

/* The violations handler alone (registry.c lists it among the others). */
extern const struct handler violations_handler;
static const struct handler *const violations_only[] = {&violations_handler, NULL};

/* A fresh data directory: the pack, then both passes; with every handler,
 * or (alone) with the violations handler only. */
static int run(size_t total, bool alone)
{
    char dir[512];
    struct engine *eng = NULL;
    struct cairn_error e;
    json_t *per_type = json_object(), *cfg = json_object();
    struct doc *docs = NULL;
    size_t nd = 0;
    if (bench_tmpdir("/tmp", dir, sizeof dir))
        return CAIRN_EIO;
    struct engine_config ec = {.data = dir,
                               .schema_dir = CAIRN_SCHEMA_DIR,
                               .config = cfg,
                               .handlers = alone ? violations_only : NULL};
    int rc = engine_open(&eng, &ec, &e);
    if (!rc)
        rc = load_pack(eng, &docs, &nd, per_type);
    if (!rc)
        rc = engine_catch_up(eng, 0);
    size_t nrules = 0;
    const char *k;
    json_t *v;
    json_object_foreach(per_type, k, v) nrules += (size_t)json_integer_value(v);
    if (!rc)
        printf("%s\n",
               alone ? "-- the violations handler alone"
                     : "-- every handler (alerts opens an alert per high/critical violation)");
    if (!rc && !alone)
        printf("rule pack: %zu rules over %zu resource types; %zu distinct resource documents\n",
               nrules, json_object_size(per_type), nd);
    for (int pass = 1; !rc && pass <= 2; pass++)
        rc = run_pass(eng, docs, nd, total, pass, per_type,
                      alone ? "violations handler alone" : "every handler");
    engine_close(eng);
    if (getenv("CAIRN_BENCH_KEEP")) /* to look at the state: mdb_stat -a DIR/state */
        fprintf(stderr, "kept %s\n", dir);
    else
        bench_rmtree(dir);
    for (size_t i = 0; i < nd; i++) {
        free((char *)docs[i].type);
        json_decref(docs[i].attrs);
    }
    free(docs);
    json_decref(per_type);
    json_decref(cfg);
    return rc;
}

/* The figures of every pass run, against the goal. */
static void summary(void)
{
    printf("\nsummary: goal >= %.0f rule evaluations/s on one core. Judged per CPU second of the "
           "applying thread\n(the rate one core sustains: the bench applies on one thread); the "
           "wall clock adds the commits'\nfsync and, on a shared machine, the wait for a CPU "
           "(see the split above).\n",
           GOAL);
    printf("  %-26s %-24s %13s %13s  %s\n", "configuration", "pass", "per CPU s", "wall clock",
           "goal (per CPU s)");
    for (size_t i = 0; i < nresults; i++) {
        const struct result *r = &results[i];
        double pc = r->evals / r->cpu;
        printf("  %-26s %-24s %13.0f %13.0f  %s (%.2f x)\n", r->config, r->pass, pc,
               r->evals / r->wall, pc >= GOAL ? "met" : "not met", pc / GOAL);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: compliance [RESOURCES [all|alone]]\n"
                    "  RESOURCES  resources discovered per pass (1 .. 100000000; default 100000)\n"
                    "  all|alone  only every handler, or only the violations handler alone\n"
                    "             (default: both, one after the other)\n");
    return 2;
}

int main(int argc, char **argv)
{
    size_t total = 100000;
    const char *only = argc > 2 ? argv[2] : "";
    if (argc > 1) { /* a count, nothing else: "--help" used to run 0 resources */
        char *end;
        unsigned long long n = strtoull(argv[1], &end, 10);
        if (end == argv[1] || *end || argv[1][0] == '-' || n == 0 || n > 100000000)
            return usage();
        total = (size_t)n;
    }
    if (argc > 3 || (*only && strcmp(only, "all") && strcmp(only, "alone")))
        return usage();
    int rc = strcmp(only, "alone") ? run(total, false) : 0;
    if (!rc && strcmp(only, "all"))
        rc = run(total, true);
    if (rc)
        fprintf(stderr, "failed: %s\n", cairn_strerror(rc));
    else
        summary();
    return rc ? 1 : 0;
}
