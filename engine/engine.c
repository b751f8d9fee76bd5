/*
 * engine.c — applying the log to the state through the handlers.
 *
 * For every input, in log order, handlers run in dependency order; each
 * gets the input (if it consumes its type) and every derived event emitted
 * earlier for the same input (if it consumes that type). A batch of inputs
 * is one state transaction that also writes the checkpoint, so a crash
 * between the log commit and the state commit only means the engine
 * re-applies (checkpoint, head] at the next start: exactly once.
 *
 * Catching up or replaying a large range, the handlers that consume no
 * derived type apply a run of inputs first — those marked `concurrent` on
 * a second thread — and the others follow input by input (see "parallel
 * apply" below): every handler gets the same events in the same order as
 * above, so the state is the same.
 */
#include "engine.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define HANDLERS_MAX 64
/* Distinct event types whose consumers are remembered (inputs and derived
 * types: a few dozen today). Types beyond it are looked up each time. */
#define TYPES_MAX 256
/* The first chunk of the zone input bodies are decoded into, kept between
 * events: most payloads decode into less. */
#define ZONE_CHUNK 8192
/* The first chunk of a run's zones (struct run_zone) and how large they may
 * grow. */
#define RUN_ZONE_CHUNK (1u << 20)
#define RUN_ZONE_MAX (64u << 20)
/* Parallel apply (handler.h, `concurrent`): a range of at least
 * PAR_MIN_INPUTS inputs is applied in runs of at most PAR_BATCH inputs
 * (and about PAR_BATCH_BYTES of payload), each run first through the
 * handlers that consume no derived type — the concurrent ones on a second
 * thread —, then through the others, input by input; the runs are
 * pipelined (apply_range_par). Live batches are smaller and stay serial.
 * Each run costs a hand-over between the threads (a wake-up and a wait),
 * which can take milliseconds on a loaded machine: fewer, bigger
 * runs (4 MiB rather than 1 MiB, ~3 500 inputs of the bench workload) were
 * as fast or up to 1.25x faster on a 1M replay at load 6. A run is the
 * unit of the ENGINE_APPLY_WRITES_MAX check in that mode (a run's writes
 * may go past it, and the check lags PAR_SLOTS - 1 runs: apply_range_par),
 * so keep it small next to it. */
#define PAR_MIN_INPUTS 4096
#define PAR_BATCH 8192
_Static_assert(PAR_BATCH <= 65536, "pick lists hold 16-bit positions");
#define PAR_BATCH_BYTES (4u << 20)
/* Runs in flight in a parallel apply (apply_range_par): one emit set per
 * run in each context (proj.h). */
#define PAR_SLOTS PROJ_EMIT_SETS

/* An event of the current input and the handlers consuming its type. */
struct pending {
    const struct event *ev;
    uint64_t mask;
};

/* The handlers consuming one event type (bit i: order[i]). */
struct consumers {
    char type[CAIRN_TYPE_MAX];
    size_t n;
    uint64_t mask;
    uint64_t decode; /* those of mask that need an input's body decoded (raw_inputs) */
};

/* A zone a parallel run's input bodies are decoded into (struct engine's
 * rzone and wzone). msgpack_zone_clear keeps a zone's first chunk and frees
 * the others, so a run that outgrew the first chunk took fresh memory for
 * the rest again every run: with 8 KiB chunks, the ~2 MB a worker's run of
 * 8 192 inputs decodes into was ~250 mallocs and frees a run, spread over
 * the heap, and part of the heap's growth faults. The first chunk is made as
 * large as a run needs instead: RUN_ZONE_CHUNK to start with, twice as
 * large after a run outgrew it (up to RUN_ZONE_MAX), so a replay's runs
 * decode into the same few warm megabytes. Pairs on a 1M replay against
 * 8 KiB chunks: wall 0.925 and 0.934 (8 and 9 of 10 better), 1.013 in a
 * fast phase of the machine (4 of 10); 3M 0.959 and 0.976. */
struct run_zone {
    msgpack_zone z;
    void *first;  /* z's first chunk (its head while a run fits); NULL: no z */
    size_t chunk; /* its size */
};

/* Makes r a zone whose first chunk holds `chunk` bytes, in place of the one
 * it had (kept when out of memory: returns false). */
static bool run_zone_init(struct run_zone *r, size_t chunk)
{
    msgpack_zone z;
    if (!msgpack_zone_init(&z, chunk))
        return false;
    if (r->first)
        msgpack_zone_destroy(&r->z);
    r->z = z; /* a zone holds no pointer into itself (msgpack_zone_swap copies them too) */
    r->first = z.chunk_list.head;
    r->chunk = chunk;
    return true;
}

static void run_zone_destroy(struct run_zone *r)
{
    if (r->first)
        msgpack_zone_destroy(&r->z);
    r->first = NULL;
}

/* Empties r for the next run, larger if the last one outgrew it. */
static void run_zone_reset(struct run_zone *r)
{
    bool outgrown = r->z.chunk_list.head != r->first;
    msgpack_zone_clear(&r->z);
    if (outgrown && r->chunk < RUN_ZONE_MAX)
        run_zone_init(r, r->chunk * 2); /* out of memory: r stays as it is */
}

struct engine {
    struct engine_config cfg;
    struct log *log;
    struct log_writer *writer;
    struct ingest *ing;
    struct proj *proj;
    const struct handler *order[HANDLERS_MAX];
    struct hctx *ctx[HANDLERS_MAX];
    size_t n;
    struct pending *pending; /* the input and its derived events */
    size_t npending, cap;
    struct consumers types[TYPES_MAX];
    size_t ntypes;
    msgpack_zone zone; /* the current input's body; cleared after each input */
    int apply_rc;      /* last apply failure (the writer thread retries) */
    bool closed;       /* handlers are closed (a reopen failed): reopen before applying */
    bool nosync;       /* a replay into a fresh directory: state commits without fsync */
    size_t cache_max;  /* ENGINE_CACHE_ENTRIES_MAX, or the config's (caches_full) */
    _Atomic uint64_t applied[HANDLERS_MAX], apply_ns[HANDLERS_MAX];
    /* CPU time of each early handler's runs in parallel applies (the
     * thread's CPU clock, read around each handler's run: a system call,
     * too slow per apply): what the parallel apply balances. Wall-clock
     * times also count the time a thread was not running — on a loaded
     * machine that made a handler look several times as costly as it is
     * — and the waits for the other thread's state lock. */
    _Atomic uint64_t apply_cpu[HANDLERS_MAX];
    /* Test hook (CAIRN_TEST_CRASH_BEFORE_APPLY=N): SIGKILL ourselves after
     * the Nth log commit, before its state transaction — the window the
     * exactly-once test needs to hit. 0: off. */
    long crash_countdown;
    /* Parallel apply. early[i]: order[i] consumes no derived type (it
     * needs nothing another handler emits for the same input); the others
     * (late_mask) run after them. side[i]: 0 this thread, 1 the worker. */
    int threads;
    bool early[HANDLERS_MAX];
    uint64_t late_mask;
    uint64_t raw_mask; /* handlers taking derived events undecoded (derived_raw) */
    bool any_concurrent;
    /* A pipelined parallel apply keeps up to PAR_SLOTS runs in flight
     * (run r in slot r % PAR_SLOTS): the worker applies its early
     * handlers to the runs in order while this thread reads runs, applies
     * its own early handlers to them and, once the worker is done with a
     * run, the late handlers (apply_range_par). Per slot, each PAR_BATCH
     * (or n * PAR_BATCH) long: */
    unsigned char side[PAR_SLOTS][HANDLERS_MAX]; /* the run's assignment */
    bool sides_set;                              /* side[] holds a previous run's */
    uint64_t worker_mask[PAR_SLOTS];             /* the handlers on side 1 */
    uint64_t run_writes[PAR_SLOTS]; /* every handler's writes up to the end of the run */
    uint64_t cum_writes[PAR_SLOTS][HANDLERS_MAX]; /* order[i]'s, at the end of its run */
    struct event *batch;                          /* the run's inputs */
    msgpack_object *bodies;                       /* their bodies, decoded into rzone or wzone */
    uint64_t *masks;                              /* their consumers */
    uint32_t *ends; /* [i * PAR_BATCH + j]: order[i]'s emits after input j */
    /* [(slot * n + i) * PAR_BATCH + p]: the p-th input of the run order[i]
     * consumes (npick[slot][i] of them), for the early handlers: read_run
     * lists them, so apply_early_one visits only those (a pass over the
     * whole run per handler, its masks and its prefetches, was ~4 % of a
     * replay's CPU samples). */
    uint16_t *pick;
    uint32_t npick[PAR_SLOTS][HANDLERS_MAX];
    uint64_t early_mask; /* the handlers early[] marks */
    bool *deferred;      /* inputs only worker-side handlers consume: decoded there */
    bool *late_need;     /* late_run's: inputs a late handler has anything of */
    uint16_t *late_pick; /* ... their positions */
    size_t nbatch[PAR_SLOTS];
    struct run_zone rzone[PAR_SLOTS], wzone[PAR_SLOTS]; /* bodies decoded here, by the worker */
    bool zones_ok;
    /* Under wmu: runs 0 .. wposted-1 of the current apply_range_par are
     * posted to the worker, 0 .. wdone-1 done by it (in order). */
    unsigned wposted, wdone;
    /* Who applies what (apply_range_par): job[slot][i] is JOB_FREE until
     * a thread takes order[i]'s early apply of the run in `slot` (the
     * worker its own handlers, in order; this thread its own, and the
     * worker's it steals while it would otherwise wait: steal_job), then
     * JOB_TAKEN; hdone[i]: the runs of this apply_range_par order[i] has
     * applied (run r may begin once hdone[i] == r: a handler's runs stay
     * in log order, whichever thread applies each). decoded[slot]: the
     * run's deferred inputs are DEC_NONE, DEC_BUSY (a thread decodes
     * them) or DEC_DONE (dec_rc: how that went). Changes are signalled
     * on wcv (under wmu) for the thread that waits for one. */
    _Atomic unsigned char job[PAR_SLOTS][HANDLERS_MAX];
    _Atomic unsigned hdone[HANDLERS_MAX];
    _Atomic unsigned char decoded[PAR_SLOTS];
    int dec_rc[PAR_SLOTS];
    uint64_t flush_cpu[HANDLERS_MAX]; /* CPU time of each handler's flushes */
    /* CPU time this thread spends in a parallel apply outside the early
     * handlers' applies (reading and decoding the log, the late
     * handlers): its fixed load when sides are assigned. */
    uint64_t main_ns;
    struct engine_phase_stats ph; /* engine_phase_stats */
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    bool wquit; /* under wmu: stop */
    /* Under wmu: the worker prefaults the state's map, pages [pf_from,
     * pf_to), while this thread flushes (flush_prefaulted); pf_stop ends it. */
    bool wpf;
    uint64_t pf_from, pf_to;
    _Atomic bool pf_stop;
    int wrc; /* the worker's first failure since the parallel apply began */
};

/* ====================================================================== ordering */

static bool name_ok(const char *s)
{
    if (!s || !*s || !strcmp(s, "stream") || !strcmp(s, "meta"))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

static bool in_list(const char *const *list, const char *s, size_t n)
{
    for (; list && *list; list++)
        if (strlen(*list) == n && !memcmp(*list, s, n))
            return true;
    return false;
}

/* Does b consume something a emits? */
static bool feeds(const struct handler *a, const struct handler *b)
{
    for (const char *const *t = a->emits; t && *t; t++)
        if (in_list(b->consumes, *t, strlen(*t)))
            return true;
    return false;
}

static int check_handler(const struct handler *h, struct cairn_error *e)
{
    if (h->version != HANDLER_VERSION)
        return cairn_error_set(e, "handler", "", "handler %s has version %u, the engine speaks %u",
                               h->name ? h->name : "?", h->version, HANDLER_VERSION);
    if (!name_ok(h->name))
        return cairn_error_set(e, "handler", "",
                               "handler name '%s' must be [a-z0-9_]+ and not "
                               "'stream' or 'meta'",
                               h->name ? h->name : "");
    if (!h->open || !h->apply || !h->consumes)
        return cairn_error_set(e, "handler", "", "handler %s lacks open, apply or consumes",
                               h->name);
    if (feeds(h, h))
        return cairn_error_set(e, "cycle", "", "handler %s consumes what it emits", h->name);
    return 0;
}

int engine_order(const struct handler *const *table, const struct handler **out, size_t *n,
                 struct cairn_error *e)
{
    size_t cnt = 0, done = 0;
    bool placed[HANDLERS_MAX] = {false};
    while (table[cnt]) {
        if (cnt == HANDLERS_MAX)
            return cairn_error_set(e, "handler", "", "more than %d handlers", HANDLERS_MAX);
        int rc = check_handler(table[cnt], e);
        if (rc)
            return rc;
        for (size_t j = 0; j < cnt; j++)
            if (!strcmp(table[j]->name, table[cnt]->name))
                return cairn_error_set(e, "handler", "", "two handlers named %s", table[j]->name);
        cnt++;
    }
    /* Kahn's algorithm, taking the first ready handler in table order. */
    while (done < cnt) {
        size_t pick = cnt;
        for (size_t i = 0; i < cnt && pick == cnt; i++) {
            if (placed[i])
                continue;
            bool ready = true;
            for (size_t j = 0; j < cnt && ready; j++)
                ready = placed[j] || j == i || !feeds(table[j], table[i]);
            if (ready)
                pick = i;
        }
        if (pick == cnt) {
            char names[256] = "";
            for (size_t i = 0, at = 0; i < cnt; i++)
                if (!placed[i] && at < sizeof names)
                    at += (size_t)snprintf(names + at, sizeof names - at, "%s%s", at ? ", " : "",
                                           table[i]->name);
            return cairn_error_set(e, "cycle", "",
                                   "handlers %s consume each other's events in a cycle", names);
        }
        placed[pick] = true;
        out[done++] = table[pick];
    }
    *n = cnt;
    return 0;
}

/* ====================================================================== dispatch */

static int push_pending(struct engine *eng, const struct event *ev, uint64_t mask)
{
    if (eng->npending == eng->cap) {
        size_t cap = eng->cap ? eng->cap * 2 : 64;
        struct pending *p = realloc(eng->pending, cap * sizeof *p);
        if (!p)
            return CAIRN_ENOMEM;
        eng->pending = p;
        eng->cap = cap;
    }
    eng->pending[eng->npending++] = (struct pending){ev, mask};
    return 0;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The handlers consuming `type`, as a bit mask over eng->order. Computed
 * once per type (the consumes lists are static): a string compare per
 * handler and type per event was 2 % of replay. */
static uint64_t consumers_decode(struct engine *eng, const struct cairn_str *type, uint64_t *decode)
{
    for (size_t i = 0; i < eng->ntypes; i++)
        if (eng->types[i].n == type->n && !memcmp(eng->types[i].type, type->p, type->n)) {
            *decode = eng->types[i].decode;
            return eng->types[i].mask;
        }
    uint64_t mask = 0;
    *decode = 0;
    for (size_t i = 0; i < eng->n; i++)
        if (in_list(eng->order[i]->consumes, type->p, type->n)) {
            mask |= 1ull << i;
            if (!eng->order[i]->raw_inputs || !in_list(eng->order[i]->raw_inputs, type->p, type->n))
                *decode |= 1ull << i;
        }
    if (eng->ntypes < TYPES_MAX && type->n <= CAIRN_TYPE_MAX) {
        struct consumers *c = &eng->types[eng->ntypes++];
        memcpy(c->type, type->p, type->n);
        c->n = type->n;
        c->mask = mask;
        c->decode = *decode;
    }
    return mask;
}

static uint64_t consumers_of(struct engine *eng, const struct cairn_str *type)
{
    uint64_t decode;
    return consumers_decode(eng, type, &decode);
}

static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void add_relaxed(_Atomic uint64_t *a, uint64_t v)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* One apply, counted for /metrics. Only one call in APPLY_TIMED_EVERY is
 * timed (the sum is scaled): two clock reads per call were 1-2 % of
 * replay. One writer per handler: relaxed loads and stores, no locked
 * add. */
#define APPLY_TIMED_EVERY 8
static int timed_apply(struct engine *eng, size_t i, const struct event *ev)
{
    uint64_t n = atomic_load_explicit(&eng->applied[i], memory_order_relaxed);
    atomic_store_explicit(&eng->applied[i], n + 1, memory_order_relaxed);
    if (n % APPLY_TIMED_EVERY)
        return eng->order[i]->apply(eng->ctx[i], ev);
    int64_t t0 = mono_ns();
    int rc = eng->order[i]->apply(eng->ctx[i], ev);
    add_relaxed(&eng->apply_ns[i], (uint64_t)(mono_ns() - t0) * APPLY_TIMED_EVERY);
    return rc;
}

/* Runs one input through every handler in order. A derived event's body
 * is decoded only when some handler not marked derived_raw consumes its
 * type. */
static int apply_input(struct engine *eng, const struct event *in, uint64_t in_mask)
{
    eng->npending = 0;
    int rc = push_pending(eng, in, in_mask);
    for (size_t i = 0; i < eng->n && !rc; i++) {
        size_t upto = eng->npending; /* a handler never sees its own emits */
        for (size_t k = 0; k < upto && !rc; k++) {
            if (!(eng->pending[k].mask >> i & 1))
                continue;
            rc = timed_apply(eng, i, eng->pending[k].ev);
        }
        const struct event *em;
        size_t nem = proj_hctx_emitted(eng->ctx[i], &em);
        for (size_t k = 0; k < nem && !rc; k++) {
            /* Only later handlers consume it (the order guarantees it). */
            uint64_t mask = consumers_of(eng, &em[k].type) & ~((2ull << i) - 1);
            if (mask & ~eng->raw_mask) /* some consumer wants the body */
                rc = proj_hctx_decode(eng->ctx[i], k);
            if (!rc && mask)
                rc = push_pending(eng, &em[k], mask);
        }
    }
    for (size_t i = 0; i < eng->n; i++)
        proj_hctx_clear(eng->ctx[i]);
    return rc;
}

static int apply_log_event(struct engine *eng, const struct log_event *le)
{
    struct cairn_str type = le->type;
    uint64_t decode, mask = consumers_decode(eng, &type, &decode);
    if (!mask)
        return 0; /* no handler consumes it: nothing to decode */
    msgpack_object body;
    if (decode && mp_unpack(le->payload, le->payload_len, &eng->zone, &body, NULL)) {
        msgpack_zone_clear(&eng->zone);
        return CAIRN_ECORRUPT;
    }
    struct event in = {.seq = le->seq,
                       .type = le->type,
                       .tenant = le->tenant,
                       .key = le->key,
                       .time = le->time,
                       .payload = le->payload,
                       .payload_len = le->payload_len,
                       .body = decode ? &body : NULL};
    int rc = apply_input(eng, &in, mask);
    msgpack_zone_clear(&eng->zone);
    return rc;
}

/* ====================================================================== parallel apply */

enum { JOB_FREE, JOB_TAKEN };
enum { DEC_NONE, DEC_BUSY, DEC_DONE };

/* Wakes the thread waiting on wcv for a job, a decode or a run. */
static void par_signal(struct engine *eng)
{
    pthread_mutex_lock(&eng->wmu);
    pthread_cond_broadcast(&eng->wcv);
    pthread_mutex_unlock(&eng->wmu);
}

/* The inputs of the run in `slot` only worker-side handlers consume are
 * decoded by the first thread that applies one of those handlers to the
 * run (usually the worker); the other waits for it. */
static int run_decoded(struct engine *eng, unsigned slot)
{
    unsigned char none = DEC_NONE;
    if (atomic_compare_exchange_strong(&eng->decoded[slot], &none, DEC_BUSY)) {
        int rc = 0;
        size_t base = (size_t)slot * PAR_BATCH, nb = eng->nbatch[slot];
        struct event *batch = eng->batch + base;
        for (size_t j = 0; j < nb && !rc; j++) {
            if (!eng->deferred[base + j])
                continue;
            if (mp_unpack(batch[j].payload, batch[j].payload_len, &eng->wzone[slot].z,
                          &eng->bodies[base + j], NULL))
                rc = CAIRN_ECORRUPT;
            batch[j].body = &eng->bodies[base + j];
        }
        eng->dec_rc[slot] = rc;
        atomic_store(&eng->decoded[slot], DEC_DONE);
        par_signal(eng);
        return rc;
    }
    if (atomic_load(&eng->decoded[slot]) != DEC_DONE) {
        pthread_mutex_lock(&eng->wmu);
        while (atomic_load(&eng->decoded[slot]) != DEC_DONE)
            pthread_cond_wait(&eng->wcv, &eng->wmu);
        pthread_mutex_unlock(&eng->wmu);
    }
    return eng->dec_rc[slot];
}

/* What an early handler reads of an input first, loaded ahead of it (and
 * of the handler's own prefetch, struct handler, which reads them to find
 * the entity), in two steps INPUT_PREFETCH_AHEAD inputs apart: first the
 * input's event and its decoded body's object, whose addresses are known
 * (prefetch_event), then — their pointers loaded by now — the payload
 * bytes the body's strings point into and the body's first key/value
 * pairs (prefetch_input): for an early handler at the input its own
 * prefetch reads (apply_early_one says why), for the late stage
 * INPUT_PREFETCH_AHEAD inputs ahead. A run's inputs were read and decoded a whole run
 * before they are applied — 4 MiB of payload, more than a core's L2,
 * partly on the other thread — so each first read of them waited for
 * memory: 60 % of devices_prefetch's samples. bench/replay 1M, 12
 * alternated runs, with both steps at once: median 1.326 -> 1.203 s of
 * wall time, 2.30 -> 2.06 s of CPU; devices' apply 0.475 -> 0.367 s,
 * geofence's 0.400 -> 0.382. Then in two steps (the pointers' loads had
 * waited for the event's lines), two sets of 10: wall 1.181 -> 1.148 and
 * 1.329 -> 1.294 s, CPU 2.02 -> 1.96 and 2.28 -> 2.18 s. late_run does
 * the same for the late handlers' inputs (the metric samples of alerts):
 * late CPU 0.244 -> 0.187 and 0.246 -> 0.205 s, wall 1.43 -> 1.27 s. */
#define INPUT_PREFETCH_AHEAD 4
#define BODY_PREFETCH_BYTES 512
CAIRN_PREFETCH_FN void prefetch_event(const struct engine *eng, size_t k)
{
    __builtin_prefetch(&eng->batch[k]);
    __builtin_prefetch((const char *)&eng->batch[k] + 64);
    __builtin_prefetch(&eng->bodies[k]);
}

CAIRN_PREFETCH_FN void prefetch_input(const struct engine *eng, size_t k)
{
    const struct event *e = &eng->batch[k];
    __builtin_prefetch(e->payload);
    __builtin_prefetch(e->payload + 64);
    const msgpack_object *b = e->body;
    if (b && b->type == MSGPACK_OBJECT_MAP && b->via.map.size) {
        /* Every line of the body's key/value pairs, up to 16 of them:
         * the handlers read them all (a location's seven pairs are four
         * lines; two were loaded). bench/replay, pairs of runs against
         * the first two lines only, medians of the ratios: with a switch
         * in one binary, 1M wall 0.913 and 0.978, CPU 0.922 and 0.962,
         * devices' apply 0.855 and 0.915 (10 and 12 pairs), 3M 0.967,
         * 0.936 and 0.942 (6 pairs); the final code against the commit
         * before, 1M, wall 1.007 and 0.957, CPU 0.994 and 0.947 (12 and 16
         * pairs). Also the lines past a smaller map's pairs (a nested
         * map's pairs often follow in the zone), or the payload's lines
         * past the first two, were slower or even. */
        const char *kv = (const char *)b->via.map.ptr;
        size_t len = b->via.map.size * sizeof *b->via.map.ptr;
        __builtin_prefetch(kv);
        for (size_t o = 64; o < len && o < BODY_PREFETCH_BYTES; o += 64)
            __builtin_prefetch(kv + o);
    }
}

/* Both steps for the inputs at positions p + INPUT_PREFETCH_AHEAD and p of
 * a list of a run's positions (pk, np long; the run at base). The lists:
 * an early handler's inputs (pick), the late stage's (late_run). */
CAIRN_PREFETCH_FN void prefetch_list(const struct engine *eng, size_t base, const uint16_t *pk,
                                     size_t np, size_t p)
{
    if (p + INPUT_PREFETCH_AHEAD < np)
        prefetch_event(eng, base + pk[p + INPUT_PREFETCH_AHEAD]);
    if (p < np)
        prefetch_input(eng, base + pk[p]);
}

/* Applies run r (in `slot`) to the early handler order[i], whose runs
 * before r are done (hdone[i] == r), keeping its emits for the late
 * handlers; its emits of the run are appended to its stream at the end
 * (proj_hctx_sync), on this thread. Then hdone[i] is r + 1, even after a
 * failure (the transaction is aborted then; nobody waits forever). */
static int apply_early_one(struct engine *eng, size_t i, unsigned r)
{
    int rc = 0;
    unsigned slot = r % PAR_SLOTS;
    size_t base = (size_t)slot * PAR_BATCH, nb = eng->nbatch[slot];
    struct event *batch = eng->batch + base;
    uint32_t *ends = eng->ends + ((size_t)slot * eng->n + i) * PAR_BATCH;
    const uint16_t *pk = eng->pick + ((size_t)slot * eng->n + i) * PAR_BATCH;
    size_t np = eng->npick[slot][i], filled = 0;
    int64_t c0 = cpu_ns();
    proj_hctx_select(eng->ctx[i], slot);
    uint32_t emitted = (uint32_t)proj_hctx_nemitted(eng->ctx[i]);
    void (*prefetch)(struct hctx *, const struct event *) = eng->order[i]->prefetch;
    for (size_t p = 0; prefetch && p < HANDLER_PREFETCH_AHEAD && p < np; p++)
        prefetch(eng->ctx[i], &batch[pk[p]]);
    for (size_t p = 0; p < np && !rc; p++) {
        size_t j = pk[p], a = p + HANDLER_PREFETCH_AHEAD;
        /* The input the handler's prefetch reads next and the event
         * INPUT_PREFETCH_AHEAD beyond it: one step later than late_run
         * (whose list has no prefetch of its own), which measured faster
         * here than INPUT_PREFETCH_AHEAD further (wall 1.030 and 1.037 s
         * against 1.090 and 1.147, two sets of 10) or 2 further (even). */
        prefetch_list(eng, base, pk, np, a);
        if (prefetch && a < np)
            prefetch(eng->ctx[i], &batch[pk[a]]);
        while (filled < j) /* the inputs it skips emit nothing */
            ends[filled++] = emitted;
        proj_hctx_mark(eng->ctx[i]);
        rc = timed_apply(eng, i, &batch[j]);
        ends[filled++] = emitted = (uint32_t)proj_hctx_nemitted(eng->ctx[i]);
    }
    while (filled < nb)
        ends[filled++] = emitted;
    if (!rc)
        rc = proj_hctx_sync(eng->ctx[i]);
    eng->cum_writes[slot][i] = proj_hctx_writes(eng->ctx[i]);
    add_relaxed(&eng->apply_cpu[i], (uint64_t)(cpu_ns() - c0));
    atomic_store(&eng->hdone[i], r + 1);
    par_signal(eng);
    return rc;
}

/* A failure of either thread in a parallel apply: kept (the first) in
 * wrc, which also ends every wait of the other thread and makes the
 * worker skip the runs left (the transaction is aborted). */
static void par_fail(struct engine *eng, int rc)
{
    pthread_mutex_lock(&eng->wmu);
    if (!eng->wrc)
        eng->wrc = rc;
    pthread_cond_broadcast(&eng->wcv);
    pthread_mutex_unlock(&eng->wmu);
}

/* Waits until order[i] has applied the runs before r; a failure of
 * either thread ends the wait (returned). */
static int wait_hdone(struct engine *eng, size_t i, unsigned r)
{
    int rc = 0;
    if (atomic_load(&eng->hdone[i]) == r)
        return 0;
    pthread_mutex_lock(&eng->wmu);
    while (atomic_load(&eng->hdone[i]) != r && !(rc = eng->wrc))
        pthread_cond_wait(&eng->wcv, &eng->wmu);
    pthread_mutex_unlock(&eng->wmu);
    return rc;
}

/* Takes the job of order[i] in `slot` for this thread: false when the
 * other thread has it. */
static bool take_job(struct engine *eng, unsigned slot, size_t i)
{
    unsigned char free_ = JOB_FREE;
    return atomic_compare_exchange_strong(&eng->job[slot][i], &free_, JOB_TAKEN);
}

/* Applies run r to the early handlers on `side` (side[slot]), handler by
 * handler (each handler's events stay in log order; handlers are
 * independent of each other here), except those the other thread took. */
static int apply_early(struct engine *eng, unsigned char side, unsigned r)
{
    int rc = 0;
    unsigned slot = r % PAR_SLOTS;
    for (size_t i = 0; i < eng->n && !rc; i++) {
        if (!eng->early[i] || eng->side[slot][i] != side || !take_job(eng, slot, i))
            continue;
        if (side)
            rc = run_decoded(eng, slot);
        if (!rc && atomic_load(&eng->hdone[i]) != r) {
            /* The other thread has the run before (the assignment moved
             * the handler). */
            int64_t w0 = mono_ns();
            rc = wait_hdone(eng, i, r);
            if (!side)
                eng->ph.wait_ns += (uint64_t)(mono_ns() - w0);
        }
        if (!rc)
            rc = apply_early_one(eng, i, r);
        if (rc)
            par_fail(eng, rc);
    }
    return rc;
}

/* A worker's job this thread can take now: an early handler of a run in
 * [from, to) on the worker's side that nobody took and whose runs before
 * are done — the earliest run first, and in it the last handler (the
 * worker takes them in order). Sets *r and *i; false when there is none. */
static bool find_job(struct engine *eng, unsigned from, unsigned to, unsigned *r, size_t *i)
{
    for (unsigned k = from; k < to; k++) {
        unsigned slot = k % PAR_SLOTS;
        for (size_t h = eng->n; h-- > 0;)
            if (eng->early[h] && eng->side[slot][h] && atomic_load(&eng->hdone[h]) == k &&
                atomic_load(&eng->job[slot][h]) == JOB_FREE) {
                *r = k;
                *i = h;
                return true;
            }
    }
    return false;
}

/* Instead of waiting for the worker: applies one job of a run in
 * [from, to) the worker has not begun (find_job), if there is one. The
 * state is the same whichever thread applies a handler's run: each
 * handler's runs are applied in order, one at a time. */
static bool steal_job(struct engine *eng, unsigned from, unsigned to, int *rc)
{
    unsigned r;
    size_t i;
    while (find_job(eng, from, to, &r, &i)) {
        if (!take_job(eng, r % PAR_SLOTS, i))
            continue; /* the worker took it meanwhile */
        *rc = run_decoded(eng, r % PAR_SLOTS);
        if (!*rc)
            *rc = apply_early_one(eng, i, r);
        if (*rc)
            par_fail(eng, *rc);
        eng->ph.stolen++;
        return true;
    }
    return false;
}

/* The worker: the posted runs in order (its early handlers, side 1, but
 * those this thread stole), or prefaulting during the flushes. After a
 * failure it skips the runs left (they are marked done: the transaction
 * is aborted). */
static void *worker_main(void *arg)
{
    struct engine *eng = arg;
    pthread_mutex_lock(&eng->wmu);
    for (;;) {
        while (!eng->wpf && eng->wdone == eng->wposted && !eng->wquit)
            pthread_cond_wait(&eng->wcv, &eng->wmu);
        if (eng->wquit)
            break;
        if (eng->wpf) {
            uint64_t from = eng->pf_from, to = eng->pf_to;
            pthread_mutex_unlock(&eng->wmu);
            proj_prefault(eng->proj, from, to, &eng->pf_stop);
            pthread_mutex_lock(&eng->wmu);
            eng->wpf = false;
            pthread_cond_broadcast(&eng->wcv);
            continue;
        }
        unsigned r = eng->wdone;
        int rc = eng->wrc;
        pthread_mutex_unlock(&eng->wmu);
        if (!rc)
            rc = apply_early(eng, 1, r);
        pthread_mutex_lock(&eng->wmu);
        if (!eng->wrc)
            eng->wrc = rc;
        eng->wdone = r + 1;
        pthread_cond_broadcast(&eng->wcv);
    }
    pthread_mutex_unlock(&eng->wmu);
    return NULL;
}

/* Posts run r (the next one) to the worker. */
static void worker_post(struct engine *eng, unsigned r)
{
    pthread_mutex_lock(&eng->wmu);
    assert(r == eng->wposted);
    eng->wposted = r + 1;
    pthread_cond_broadcast(&eng->wcv);
    pthread_mutex_unlock(&eng->wmu);
}

/* Waits until the worker is done with run r (or idle, r == UINT_MAX:
 * every posted run done); its failure, if any. */
static int worker_wait(struct engine *eng, unsigned r)
{
    pthread_mutex_lock(&eng->wmu);
    while (r == UINT_MAX ? eng->wdone < eng->wposted : eng->wdone <= r)
        pthread_cond_wait(&eng->wcv, &eng->wmu);
    int rc = eng->wrc;
    pthread_mutex_unlock(&eng->wmu);
    return rc;
}

/* Whether the worker is done with run r (without waiting); *rc: its
 * failure, if any (the runs after it are skipped, not applied). Jobs of
 * run r this thread took (steal_job) are done when it asks. */
static bool worker_done(struct engine *eng, unsigned r, int *rc)
{
    pthread_mutex_lock(&eng->wmu);
    bool done = eng->wdone > r;
    *rc = eng->wrc;
    pthread_mutex_unlock(&eng->wmu);
    return done;
}

/* Waits until the worker is done with run r, a failure (returned), or
 * a job of a run in [r, to) this thread can take (find_job). */
static int worker_block(struct engine *eng, unsigned r, unsigned to)
{
    unsigned jr;
    size_t ji;
    pthread_mutex_lock(&eng->wmu);
    while (eng->wdone <= r && !eng->wrc && !find_job(eng, r, to, &jr, &ji))
        pthread_cond_wait(&eng->wcv, &eng->wmu);
    int rc = eng->wrc;
    pthread_mutex_unlock(&eng->wmu);
    return rc;
}

/* The run zones, given back when the engine applies inputs one at a time
 * again (serving after a catch-up: they hold a few MiB each once grown);
 * par_start makes them again. */
static void par_release_zones(struct engine *eng)
{
    for (int i = 0; i < PAR_SLOTS; i++) {
        run_zone_destroy(&eng->rzone[i]);
        run_zone_destroy(&eng->wzone[i]);
    }
    eng->zones_ok = false;
}

static int par_start(struct engine *eng)
{
    if (!eng->batch) {
        eng->batch = calloc(PAR_SLOTS * PAR_BATCH, sizeof *eng->batch);
        eng->bodies = calloc(PAR_SLOTS * PAR_BATCH, sizeof *eng->bodies);
        eng->masks = calloc(PAR_SLOTS * PAR_BATCH, sizeof *eng->masks);
        eng->ends = calloc(PAR_SLOTS * eng->n * PAR_BATCH, sizeof *eng->ends);
        eng->deferred = calloc(PAR_SLOTS * PAR_BATCH, sizeof *eng->deferred);
        eng->late_need = calloc(PAR_BATCH, sizeof *eng->late_need);
        eng->pick = calloc(PAR_SLOTS * eng->n * PAR_BATCH, sizeof *eng->pick);
        eng->late_pick = calloc(PAR_BATCH, sizeof *eng->late_pick);
        if (!eng->batch || !eng->bodies || !eng->masks || !eng->ends || !eng->deferred ||
            !eng->late_need || !eng->pick || !eng->late_pick)
            return CAIRN_ENOMEM;
    }
    if (!eng->zones_ok) {
        bool ok = true;
        for (int i = 0; i < PAR_SLOTS; i++) {
            ok = run_zone_init(&eng->rzone[i], RUN_ZONE_CHUNK) && ok;
            ok = run_zone_init(&eng->wzone[i], RUN_ZONE_CHUNK) && ok;
        }
        if (!ok) {
            par_release_zones(eng);
            return CAIRN_ENOMEM;
        }
        eng->zones_ok = true;
    }
    if (eng->worker_started)
        return 0;
    if (pthread_create(&eng->worker, NULL, worker_main, eng))
        return CAIRN_ENOMEM;
    eng->worker_started = true;
    return 0;
}

static void par_stop(struct engine *eng)
{
    if (eng->worker_started) {
        pthread_mutex_lock(&eng->wmu);
        eng->wquit = true;
        pthread_cond_broadcast(&eng->wcv);
        pthread_mutex_unlock(&eng->wmu);
        pthread_join(eng->worker, NULL);
        eng->worker_started = false;
    }
    free(eng->batch);
    free(eng->bodies);
    free(eng->masks);
    free(eng->ends);
    free(eng->deferred);
    free(eng->late_need);
    free(eng->late_pick);
    free(eng->pick);
    par_release_zones(eng);
}

/* Which thread applies each early handler in the run of `slot`: the
 * concurrent ones, costliest first (apply CPU time so far), each to the
 * less loaded side; everything else is this thread's, which also reads
 * the log and runs the late handlers (main_ns). The runs are pipelined
 * (the worker's applies overlap this thread's reading and late
 * handlers), so the two loads are what each thread does per run. The
 * flushes and the commit are not counted: the worker is
 * idle then whatever the assignment. Only speed depends on it, never the
 * state. */
static void assign_sides(struct engine *eng, unsigned slot)
{
    uint64_t load[2] = {eng->main_ns, 0}, cost[HANDLERS_MAX];
    bool todo[HANDLERS_MAX];
    unsigned char *side = eng->side[slot];
    for (size_t i = 0; i < eng->n; i++) {
        uint64_t ns = cost[i] = atomic_load_explicit(&eng->apply_cpu[i], memory_order_relaxed);
        side[i] = 0;
        todo[i] = eng->early[i] && eng->order[i]->concurrent;
        if (eng->early[i] && !todo[i])
            load[0] += ns;
    }
    for (;;) {
        size_t pick = eng->n;
        uint64_t most = 0;
        for (size_t i = 0; i < eng->n; i++)
            if (todo[i] && (pick == eng->n || cost[i] > most))
                pick = i, most = cost[i];
        if (pick == eng->n)
            break;
        todo[pick] = false;
        side[pick] = load[1] <= load[0];
        load[side[pick]] += most;
    }
    /* Keep the last run's assignment unless this one is clearly better
     * balanced (by 5 % of the work): two handlers of about the same cost
     * (devices and geofence) otherwise swap sides run after run, and a
     * handler's cache then moves between the CPUs' caches each time. */
    const unsigned char *last = eng->side[(slot + PAR_SLOTS - 1) % PAR_SLOTS];
    uint64_t was[2] = {eng->main_ns, 0};
    for (size_t i = 0; eng->sides_set && i < eng->n; i++)
        if (eng->early[i])
            was[last[i]] += cost[i];
    uint64_t total = load[0] + load[1];
    uint64_t now_gap = load[0] > load[1] ? load[0] - load[1] : load[1] - load[0];
    uint64_t was_gap = was[0] > was[1] ? was[0] - was[1] : was[1] - was[0];
    if (eng->sides_set && was_gap <= now_gap + total / 20)
        memcpy(side, last, eng->n);
    eng->sides_set = true;
    eng->worker_mask[slot] = 0;
    for (size_t i = 0; i < eng->n; i++)
        eng->worker_mask[slot] |= (uint64_t)side[i] << i;
}

/* Input j of the run in `slot` through the late handlers, in order, with
 * the early handlers' emits for it: the pending list is built exactly as
 * apply_input builds it (the input, then each handler's emits in handler
 * order), so each late handler sees the events of the serial apply in the
 * same order. em[i]: order[i]'s emits over the run (early handlers: their
 * set of the run, see proj_hctx_select). The worker applies later runs
 * meanwhile. */
static int apply_late(struct engine *eng, unsigned slot, size_t j, const struct event *const *em)
{
    size_t base = (size_t)slot * PAR_BATCH;
    const uint32_t *ends = eng->ends + (size_t)slot * eng->n * PAR_BATCH;
    eng->npending = 0;
    int rc = push_pending(eng, &eng->batch[base + j], eng->masks[base + j] & eng->late_mask);
    for (size_t i = 0; i < eng->n && !rc; i++) {
        const struct event *ev = em[i];
        size_t from = 0, to = 0;
        if (eng->early[i]) {
            from = j ? ends[i * PAR_BATCH + j - 1] : 0;
            to = ends[i * PAR_BATCH + j];
        } else {
            size_t upto = eng->npending;
            for (size_t k = 0; k < upto && !rc; k++)
                if (eng->pending[k].mask >> i & 1)
                    rc = timed_apply(eng, i, eng->pending[k].ev);
            to = proj_hctx_emitted(eng->ctx[i], &ev);
        }
        for (size_t k = from; k < to && !rc; k++) {
            uint64_t mask = consumers_of(eng, &ev[k].type) & ~((2ull << i) - 1);
            if (mask & ~eng->raw_mask)
                rc = eng->early[i] ? proj_hctx_set_decode(eng->ctx[i], slot, k)
                                   : proj_hctx_decode(eng->ctx[i], k);
            if (!rc && mask)
                rc = push_pending(eng, &ev[k], mask);
        }
    }
    for (size_t i = 0; i < eng->n; i++)
        if (!eng->early[i])
            proj_hctx_clear(eng->ctx[i]);
    return rc;
}

/* Finishes the run in `slot`, whose early applies are done on both
 * threads: the late handlers over it, then its emit sets are emptied for
 * a later run, and run_writes[slot] is every handler's writes up to its
 * end (what the next proj_txn_full check of apply_range_par uses). */
static int late_run(struct engine *eng, unsigned slot)
{
    const struct event *em[HANDLERS_MAX] = {NULL};
    int rc = 0;
    for (size_t i = 0; i < eng->n; i++)
        if (eng->early[i])
            proj_hctx_set_events(eng->ctx[i], slot, &em[i]);
    size_t base = (size_t)slot * PAR_BATCH, nb = eng->nbatch[slot];
    /* The inputs a late handler consumes or an early one emitted for: the
     * others would go through apply_late for nothing (most of a replay's:
     * ~50 ns each, 1 M times). */
    bool *need = eng->late_need;
    const uint32_t *ends = eng->ends + (size_t)slot * eng->n * PAR_BATCH;
    for (size_t j = 0; eng->late_mask && j < nb; j++)
        need[j] = eng->masks[base + j] & eng->late_mask;
    for (size_t i = 0; eng->late_mask && i < eng->n; i++)
        for (size_t j = 0, was = 0; eng->early[i] && j < nb; was = ends[i * PAR_BATCH + j++])
            need[j] |= ends[i * PAR_BATCH + j] != was;
    uint16_t *lp = eng->late_pick;
    size_t nl = 0;
    for (size_t j = 0; eng->late_mask && j < nb; j++)
        if (need[j])
            lp[nl++] = (uint16_t)j;
    for (size_t p = 0; p < nl && !rc; p++) {
        prefetch_list(eng, base, lp, nl, p + INPUT_PREFETCH_AHEAD);
        rc = apply_late(eng, slot, lp[p], em);
    }
    uint64_t writes = 0;
    for (size_t i = 0; i < eng->n && !rc; i++) {
        if (eng->early[i]) {
            proj_hctx_set_clear(eng->ctx[i], slot);
            writes += eng->cum_writes[slot][i];
        } else {
            rc = proj_hctx_sync(eng->ctx[i]);
            writes += proj_hctx_writes(eng->ctx[i]);
        }
    }
    eng->run_writes[slot] = writes;
    return rc;
}

/* Reads a run of inputs from `it` into `slot` (at most PAR_BATCH inputs
 * and about PAR_BATCH_BYTES of payload, up to *to), decoding those a
 * handler of this thread consumes (the others are decoded by the
 * worker). */
static int read_run(struct engine *eng, struct log_iter *it, unsigned slot, uint64_t *want,
                    uint64_t to)
{
    struct log_event le;
    size_t base = (size_t)slot * PAR_BATCH, bytes = 0, nb = 0;
    int rc = 0;
    run_zone_reset(&eng->rzone[slot]); /* its run is done */
    run_zone_reset(&eng->wzone[slot]);
    memset(eng->npick[slot], 0, sizeof eng->npick[slot]);
    while (*want <= to && nb < PAR_BATCH && bytes < PAR_BATCH_BYTES &&
           !(rc = log_iter_next(it, &le))) {
        if (le.seq != (*want)++) {
            rc = CAIRN_ECORRUPT;
            break;
        }
        uint64_t decode, mask = consumers_decode(eng, &le.type, &decode);
        if (!mask)
            continue;
        size_t k = base + nb;
        /* An input only worker-side handlers consume is decoded there; one
         * they all read raw (raw_inputs), nowhere. */
        eng->deferred[k] = decode && !(mask & ~eng->worker_mask[slot]);
        if (decode && !eng->deferred[k] &&
            mp_unpack(le.payload, le.payload_len, &eng->rzone[slot].z, &eng->bodies[k], NULL)) {
            rc = CAIRN_ECORRUPT;
            break;
        }
        eng->batch[k] =
            (struct event){.seq = le.seq,
                           .type = le.type,
                           .tenant = le.tenant,
                           .key = le.key,
                           .time = le.time,
                           .payload = le.payload,
                           .payload_len = le.payload_len,
                           .body = decode && !eng->deferred[k] ? &eng->bodies[k] : NULL};
        eng->masks[k] = mask;
        for (uint64_t m = mask & eng->early_mask; m; m &= m - 1) {
            size_t h = (size_t)__builtin_ctzll(m);
            eng->pick[((size_t)slot * eng->n + h) * PAR_BATCH + eng->npick[slot][h]++] =
                (uint16_t)nb;
        }
        nb++;
        bytes += le.payload_len;
    }
    eng->nbatch[slot] = nb;
    return rc;
}

/* Whether the handlers' caches hold more entries than a transaction may
 * leave them (hcache_live, process-wide): a replay or catch-up
 * transaction ends there, like at its write bound (engine.h,
 * ENGINE_CACHE_ENTRIES_MAX). Checked where the write bound is: after each
 * input of a serial apply, before each run of a parallel one (lagging the
 * runs in flight). */
static bool caches_full(const struct engine *eng)
{
    return hcache_live() > eng->cache_max;
}

/* The parallel counterpart of apply_chunk's loop: applies [from, *to]
 * from it in runs, pipelined. This thread reads run r, posts it to the
 * worker (which applies its early handlers to the posted runs in order),
 * applies its own early handlers to it, then the late handlers to every
 * earlier run the worker is done with, and goes on reading while fewer
 * than PAR_SLOTS runs are in flight; it waits for the worker only when
 * PAR_SLOTS are. So a run that costs the worker much more than the others
 * (geofence writes its deferred puts every few runs: 20-30 ms instead of
 * ~10) no longer stops this thread: with two runs in flight it waited for
 * each (0.3-0.5 s of a 1M replay). Every handler still gets its events in
 * log order, and each late handler the events of the serial apply in the
 * same order. May lower *to: the transaction ends after run r when, at
 * the read of run r + PAR_SLOTS, the writes of every handler up to the
 * end of run r (all done then, whatever the timing) make proj_txn_full
 * true, so commit points do not depend on the threads' timing. */
static int apply_range_par(struct engine *eng, struct log_iter *it, uint64_t from, uint64_t *to)
{
    uint64_t want = from;
    unsigned nread = 0, nlate = 0; /* runs read; runs finished (late handlers) */
    int rc = par_start(eng);
    if (rc)
        return rc;
    pthread_mutex_lock(&eng->wmu); /* the worker is idle */
    eng->wposted = eng->wdone = 0;
    eng->wrc = 0;
    for (size_t i = 0; i < eng->n; i++)
        atomic_store(&eng->hdone[i], 0);
    pthread_mutex_unlock(&eng->wmu);
    uint64_t writes0 = 0; /* the handlers' writes before this transaction */
    for (size_t i = 0; i < eng->n; i++)
        writes0 += proj_hctx_writes(eng->ctx[i]);
    proj_set_shared(eng->proj, true);
    bool more = want <= *to;
    while (!rc && (more || nlate < nread)) {
        unsigned s = nread % PAR_SLOTS;
        if (more && nread - nlate < PAR_SLOTS) {
            if (nread >= PAR_SLOTS && (proj_txn_full_at(eng->proj, eng->run_writes[s] - writes0,
                                                        ENGINE_APPLY_WRITES_MAX) ||
                                       caches_full(eng))) {
                *to = want - 1; /* commit here; the caller goes on from the checkpoint */
                more = false;
                continue;
            }
            int64_t t0 = cpu_ns();
            /* Before each run: the state's next pages are present, so the
             * run's first writes to them do not each fault (proj.h). */
            proj_prefault_ahead(eng->proj);
            assign_sides(eng, s);
            rc = read_run(eng, it, s, &want, *to);
            uint64_t dt = (uint64_t)(cpu_ns() - t0);
            eng->main_ns += dt;
            eng->ph.read_cpu_ns += dt;
            more = want <= *to;
            if (rc)
                break;
            atomic_store(&eng->decoded[s], DEC_NONE);
            for (size_t i = 0; i < eng->n; i++)
                atomic_store(&eng->job[s][i], JOB_FREE);
            worker_post(eng, nread++);
            rc = apply_early(eng, 0, nread - 1);
            /* The runs the worker is done with, without waiting. */
            while (!rc && nlate < nread && worker_done(eng, nlate, &rc) && !rc) {
                t0 = cpu_ns();
                rc = late_run(eng, nlate++ % PAR_SLOTS);
                dt = (uint64_t)(cpu_ns() - t0);
                eng->main_ns += dt;
                eng->ph.late_cpu_ns += dt;
            }
        } else {
            int64_t w0 = mono_ns(), busy = 0;
            while (!worker_done(eng, nlate, &rc) && !rc) {
                int64_t b0 = mono_ns();
                if (steal_job(eng, nlate, nread, &rc)) {
                    busy += mono_ns() - b0;
                    continue;
                }
                rc = worker_block(eng, nlate, nread);
            }
            eng->ph.wait_ns += (uint64_t)(mono_ns() - w0 - busy);
            eng->ph.steal_ns += (uint64_t)busy;
            int64_t t0 = cpu_ns();
            if (!rc)
                rc = late_run(eng, nlate++ % PAR_SLOTS);
            uint64_t dt = (uint64_t)(cpu_ns() - t0);
            eng->main_ns += dt;
            eng->ph.late_cpu_ns += dt;
        }
    }
    int wrc = worker_wait(eng, UINT_MAX); /* nothing may run past here */
    rc = rc ? rc : wrc;
    proj_set_shared(eng->proj, false);
    for (size_t i = 0; i < eng->n; i++) {
        for (unsigned k = 0; k < PAR_SLOTS; k++)
            proj_hctx_set_clear(eng->ctx[i], k);
        proj_hctx_select(eng->ctx[i], 0);
    }
    return rc;
}

/* Every handler's flush, in handler order on this thread, each timed.
 *
 * Serial on purpose. Until session 14 the flushes of `devices`, `orders`
 * and `subscriptions` ran on both threads at once (each state call under
 * the state lock), so that one handler's sorting and packing would
 * overlap another's puts. But a flush is mostly puts, and LMDB's puts are
 * serial whatever the threads: the two flushes took turns on the lock,
 * one thread spinning while the other put. bench/replay: on 1M events the
 * flush phase took as long either way (0.33-0.40 s) and the concurrent
 * one 0.24 s more CPU; on 3M events (7 transactions, larger views) the
 * serial flush phase was 0.18-0.34 s shorter and the replay used 1.7-2.3 s
 * (15-20 %) less CPU — the devices flush alone went from 1.7-1.8 s of
 * CPU, 1.3-1.5 s of it waiting for the lock, to 0.34 s. */
static int flush_all(struct engine *eng)
{
    int rc = 0;
    for (size_t i = 0; i < eng->n && !rc; i++) {
        if (!eng->order[i]->flush)
            continue;
        int64_t c0 = cpu_ns();
        rc = eng->order[i]->flush(eng->ctx[i]);
        eng->flush_cpu[i] += (uint64_t)(cpu_ns() - c0);
    }
    return rc;
}

/* flush_all after a parallel apply, while the worker — idle until the
 * next transaction — prefaults the pages the flushes are about to write
 * (proj_prefault). A flush rewrites the dirty entities of the big views,
 * each put copying a leaf to a page past the file's last (copy on
 * write), and the first write to such a page was a page fault of ~5 us
 * on the flushing thread. With the worker making the pages present ahead
 * of the puts, bench/replay's flush phase went from 0.36 to 0.24 s on 1M
 * events (median of 8; the replay from 1.94 to 1.76 s) and from 1.47 to
 * 1.15 s on 3M, the process's major faults from 108 000 to 36 000. */
static int flush_prefaulted(struct engine *eng)
{
    uint64_t from, to;
    proj_prefault_range(eng->proj, &from, &to);
    pthread_mutex_lock(&eng->wmu); /* the worker is idle (apply_range_par waited) */
    atomic_store(&eng->pf_stop, false);
    eng->pf_from = from;
    eng->pf_to = to;
    eng->wpf = true;
    pthread_cond_broadcast(&eng->wcv);
    pthread_mutex_unlock(&eng->wmu);
    int rc = flush_all(eng);
    atomic_store(&eng->pf_stop, true);
    pthread_mutex_lock(&eng->wmu);
    while (eng->wpf)
        pthread_cond_wait(&eng->wcv, &eng->wmu);
    pthread_mutex_unlock(&eng->wmu);
    return rc;
}

static int open_all(struct engine *eng, struct cairn_error *e);

/* After an aborted state transaction, handlers may hold in-memory caches
 * (a spatial index, compiled rules) that saw the aborted work: close and
 * open every handler again so they rebuild from the committed state. */
static int reopen_handlers(struct engine *eng)
{
    struct cairn_error e;
    for (size_t i = 0; i < eng->n && !eng->closed; i++) {
        if (eng->order[i]->close)
            eng->order[i]->close(eng->ctx[i]);
        proj_hctx_reset(eng->ctx[i]);
    }
    eng->closed = true; /* until every open below succeeded */
    int rc = open_all(eng, &e);
    if (rc) {
        fprintf(stderr, "cairn: reopening handlers failed: %s\n", e.message);
        for (size_t i = 0; i < eng->n; i++) /* undo the opens that did succeed */
            if (eng->order[i]->close && *hctx_user(eng->ctx[i]))
                eng->order[i]->close(eng->ctx[i]);
        for (size_t i = 0; i < eng->n; i++)
            proj_hctx_reset(eng->ctx[i]);
        return rc;
    }
    eng->closed = false;
    return 0;
}

/* Applies (from-1, to] in one state transaction. */
static int apply_chunk(struct engine *eng, uint64_t from, uint64_t to)
{
    for (;;) {
        struct log_snap *s;
        struct log_iter *it = NULL;
        struct log_event le;
        bool par = false; /* applied in parallel: the worker is free to prefault */
        int64_t t0 = mono_ns(), t1;
        int rc = proj_begin(eng->proj);
        if (rc)
            return rc;
        if (!(rc = log_snap_begin(eng->log, &s))) {
            rc = log_iter_open(s, from, NULL, NULL, &it);
            uint64_t want = from;
            if (!rc && eng->threads > 1 && eng->any_concurrent && to - from + 1 >= PAR_MIN_INPUTS) {
                rc = apply_range_par(eng, it, from, &to);
                par = eng->worker_started;
                want = to + 1; /* done: skip the serial loop */
            } else if (eng->zones_ok) {
                par_release_zones(eng); /* the worker is idle */
            }
            while (!rc && want <= to && !(rc = log_iter_next(it, &le))) {
                rc = le.seq == want ? apply_log_event(eng, &le) : CAIRN_ECORRUPT;
                if (!rc && want < to &&
                    (proj_txn_full(eng->proj, ENGINE_APPLY_WRITES_MAX) || caches_full(eng)))
                    to = want; /* commit here; the caller goes on from the checkpoint */
                want++;
            }
            log_iter_close(it);
            log_snap_end(s);
        }
        eng->ph.apply_ns += (uint64_t)((t1 = mono_ns()) - t0);
        if (!rc)
            rc = par ? flush_prefaulted(eng) : flush_all(eng);
        eng->ph.flush_ns += (uint64_t)((t0 = mono_ns()) - t1);
        if (rc)
            proj_abort(eng->proj);
        else
            rc = proj_commit(eng->proj, to);
        eng->ph.commit_ns += (uint64_t)(mono_ns() - t0);
        eng->ph.transactions++;
        if (!rc)
            return 0;
        int rrc = reopen_handlers(eng); /* the transaction is gone either way */
        if (rrc)
            return rrc; /* handlers stay closed; engine_catch_up reopens first */
        if (rc != CAIRN_EMAPFULL)
            return rc;
        eng->ph.redone++;
        if ((rc = proj_grow(eng->proj)))
            return rc;
    }
}

int engine_catch_up(struct engine *eng, uint64_t to)
{
    uint64_t head;
    if (eng->closed) { /* a reopen failed earlier: never apply to closed handlers */
        int rrc = reopen_handlers(eng);
        if (rrc)
            return rrc;
    }
    int rc = log_head(eng->log, &head, NULL);
    if (rc)
        return rc;
    if (!to || to > head)
        to = head;
    uint64_t cp = proj_checkpoint(eng->proj);
    while (!rc && cp < to) {
        uint64_t end = to - cp > ENGINE_APPLY_BATCH ? cp + ENGINE_APPLY_BATCH : to;
        rc = apply_chunk(eng, cp + 1, end);
        cp = proj_checkpoint(eng->proj);
    }
    return rc;
}

/* Runs on the writer thread after each durable log commit. A failure is
 * kept (readiness reports it) and retried with the next commit: the state
 * simply lags, it never skips. */
static void on_commit(void *arg, uint64_t first, uint64_t last)
{
    struct engine *eng = arg;
    (void)first;
    if (eng->crash_countdown && --eng->crash_countdown == 0)
        raise(SIGKILL);
    int rc = engine_catch_up(eng, last);
    if (rc && rc != eng->apply_rc)
        fprintf(stderr, "cairn: applying the log to the state failed: %s (will retry)\n",
                cairn_strerror(rc));
    eng->apply_rc = rc;
    if (eng->cfg.on_applied)
        eng->cfg.on_applied(eng->cfg.on_applied_arg, proj_checkpoint(eng->proj));
}

/* ====================================================================== life cycle */

static int open_handlers(struct engine *eng, struct cairn_error *e)
{
    const struct handler *const *table = eng->cfg.handlers ? eng->cfg.handlers : handler_table;
    int rc = engine_order(table, eng->order, &eng->n, e);
    if (rc)
        return rc;
    for (size_t i = 0; i < eng->n; i++) {
        eng->early[i] = true;
        for (size_t j = 0; j < eng->n; j++)
            if (feeds(eng->order[j], eng->order[i]))
                eng->early[i] = false;
        if (!eng->early[i])
            eng->late_mask |= 1ull << i;
        else
            eng->early_mask |= 1ull << i;
        if (eng->order[i]->derived_raw)
            eng->raw_mask |= 1ull << i;
        eng->any_concurrent |= eng->early[i] && eng->order[i]->concurrent;
    }
    const json_t *hcfg = json_object_get(eng->cfg.config, "handlers");
    for (size_t i = 0; i < eng->n && !rc; i++)
        rc = proj_hctx_new(eng->proj, eng->order[i], json_object_get(hcfg, eng->order[i]->name),
                           &eng->ctx[i]);
    if (rc)
        return rc;
    return open_all(eng, e);
}

/* Runs every handler's open in one transaction that commits, so the DBI
 * handles they create stay valid for every later transaction. */
static int open_all(struct engine *eng, struct cairn_error *e)
{
    int rc = proj_begin(eng->proj);
    if (rc)
        return rc;
    for (size_t i = 0; i < eng->n && !rc; i++) {
        rc = eng->order[i]->open(eng->ctx[i]);
        if (rc)
            cairn_error_set(e, "handler", "", "handler %s failed to open: %s", eng->order[i]->name,
                            cairn_strerror(rc));
    }
    if (rc) {
        proj_abort(eng->proj);
        return rc;
    }
    return proj_commit(eng->proj, proj_checkpoint(eng->proj));
}

/* engine_replay_map (engine.h) for this log and the file system of the
 * state's directory. */
size_t engine_replay_map(uint64_t log_bytes, uint64_t to, uint64_t head, uint64_t disk_free)
{
    double bytes = (double)log_bytes;
    if (to && head && to < head) {
        bytes *= (double)to / (double)head;
        head = to;
    }
    /* the state (half the log), and room for a first transaction of
     * ENGINE_APPLY_BATCH inputs (twice their log bytes) */
    double txn = head > ENGINE_APPLY_BATCH ? bytes * ENGINE_APPLY_BATCH / (double)head : bytes;
    double want = bytes / 2 + 2 * txn;
    uint64_t map = PROJ_MAP_SIZE_INITIAL;
    while ((double)map < want && map * 2 <= CAIRN_MAP_SIZE_CEILING)
        map *= 2;
    while (map > PROJ_MAP_SIZE_INITIAL && (double)disk_free < 2.0 * (double)map)
        map /= 2;
    return map == PROJ_MAP_SIZE_INITIAL ? 0 : (size_t)map;
}

static size_t replay_map(struct engine *eng, const char *sdir)
{
    MDB_envinfo info;
    MDB_stat st;
    MDB_env *le = cairn_env_mdb(log_env(eng->log));
    uint64_t head = 0;
    if (mdb_env_info(le, &info) || mdb_env_stat(le, &st) || log_head(eng->log, &head, NULL))
        return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", sdir);
    struct statvfs vfs;
    int vrc = statvfs(dir, &vfs);
    if (vrc) { /* not made yet: its parent's file system */
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, "%s", slash ? "/" : ".");
        vrc = statvfs(dir, &vfs);
    }
    return vrc ? 0
               : engine_replay_map((uint64_t)(info.me_last_pgno + 1) * st.ms_psize,
                                   eng->cfg.apply_to, head, (uint64_t)vfs.f_bavail * vfs.f_frsize);
}

static int open_parts(struct engine *eng, struct cairn_error *e)
{
    char dir[4096];
    struct log_config lc = eng->cfg.log;
    snprintf(dir, sizeof dir, "%s/log", eng->cfg.data);
    lc.dir = dir;
    lc.readonly = eng->cfg.log_readonly;
    int rc = log_open(&eng->log, &lc);
    if (rc)
        return cairn_error_set(e, "open", "", "cannot open the log in %s: %s", dir,
                               cairn_strerror(rc)),
               rc;
    struct ingest_config ic = {.schema_dir = eng->cfg.schema_dir,
                               .allow_engine_types = eng->cfg.allow_engine_types,
                               .handlers = eng->cfg.handlers};
    /* limits.payload_max: in range (engine_config_check), or absent (0) */
    const json_t *pm = json_object_get(json_object_get(eng->cfg.config, "limits"), "payload_max");
    ic.payload_max = json_is_integer(pm) ? (size_t)json_integer_value(pm) : 0;
    if ((rc = ingest_open(&eng->ing, &ic, e)))
        return rc;
    char sdir[4096];
    if (eng->cfg.state_dir)
        snprintf(sdir, sizeof sdir, "%s", eng->cfg.state_dir);
    else
        snprintf(sdir, sizeof sdir, "%s/state", eng->cfg.data);
    struct proj_config pc = {.dir = sdir, .nosync = eng->nosync};
    if (eng->nosync) /* a replay into a fresh directory */
        pc.map_size = replay_map(eng, sdir);
    if ((rc = proj_open(&eng->proj, &pc)))
        return cairn_error_set(e, "open", "", "cannot open the state in %s: %s", sdir,
                               cairn_strerror(rc)),
               rc;
    return 0;
}

static int open_engine(struct engine **out, const struct engine_config *cfg, bool nosync,
                       struct cairn_error *e)
{
    int rc = engine_config_check(cfg->config, cfg->handlers ? cfg->handlers : handler_table, e);
    if (rc)
        return rc;
    struct engine *eng = calloc(1, sizeof *eng);
    if (!eng)
        return CAIRN_ENOMEM;
    if (!msgpack_zone_init(&eng->zone, ZONE_CHUNK)) {
        free(eng);
        return CAIRN_ENOMEM;
    }
    eng->cfg = *cfg;
    eng->nosync = nosync;
    eng->cache_max = cfg->cache_entries_max ? cfg->cache_entries_max : ENGINE_CACHE_ENTRIES_MAX;
    pthread_mutex_init(&eng->wmu, NULL);
    pthread_cond_init(&eng->wcv, NULL);
    const json_t *at = json_object_get(cfg->config, "apply_threads");
    eng->threads = cfg->apply_threads > 0               ? cfg->apply_threads
                   : json_is_integer(at)                ? (int)json_integer_value(at)
                   : sysconf(_SC_NPROCESSORS_ONLN) >= 2 ? 2
                                                        : 1;
    const char *crash = getenv("CAIRN_TEST_CRASH_BEFORE_APPLY");
    if (crash)
        eng->crash_countdown = strtol(crash, NULL, 10);
    rc = open_parts(eng, e);
    if (!rc)
        rc = open_handlers(eng, e);
    uint64_t head = 0;
    if (!rc && !(rc = log_head(eng->log, &head, NULL)) && proj_checkpoint(eng->proj) > head) {
        rc = cairn_error_set(e, "state_ahead", "",
                             "the state is at seq %llu but the log ends at %llu: it was built "
                             "from another log; remove it and run cairn replay",
                             (unsigned long long)proj_checkpoint(eng->proj),
                             (unsigned long long)head);
    }
    if (!rc && (rc = engine_catch_up(eng, cfg->apply_to)))
        cairn_error_set(e, "apply", "", "catching up the state failed: %s", cairn_strerror(rc));
    if (rc) {
        engine_close(eng);
        return rc;
    }
    *out = eng;
    return 0;
}

int engine_open(struct engine **out, const struct engine_config *cfg, struct cairn_error *e)
{
    return open_engine(out, cfg, false, e);
}

/* Every handler's close (their memory; the state stays open). The
 * engine is then closed: only engine_close may follow. On this thread
 * alone: closing the worker's handlers on the worker meanwhile (their
 * memory in its cache and malloc arena) took as long or longer (1M
 * replay, 6 alternated runs: 0.027-0.054 s against 0.026-0.040). */
static void close_handlers(struct engine *eng)
{
    for (size_t i = 0; i < eng->n && !eng->closed; i++)
        if (eng->ctx[i] && eng->order[i]->close)
            eng->order[i]->close(eng->ctx[i]);
    eng->closed = true;
}

void engine_close(struct engine *eng)
{
    if (!eng)
        return;
    log_writer_stop(eng->writer);
    close_handlers(eng);
    for (size_t i = 0; i < eng->n; i++)
        proj_hctx_free(eng->ctx[i]);
    proj_close(eng->proj);
    ingest_close(eng->ing);
    log_close(eng->log);
    msgpack_zone_destroy(&eng->zone);
    par_stop(eng);
    pthread_mutex_destroy(&eng->wmu);
    pthread_cond_destroy(&eng->wcv);
    free(eng->pending);
    free(eng);
}

void engine_stop(struct engine *eng)
{
    log_writer_stop(eng->writer);
    eng->writer = NULL;
}

int engine_start(struct engine *eng)
{
    return log_writer_start(&eng->writer, eng->log, on_commit, eng);
}

struct log *engine_log(struct engine *eng)
{
    return eng->log;
}

struct log_writer *engine_writer(struct engine *eng)
{
    return eng->writer;
}

struct ingest *engine_ingest(struct engine *eng)
{
    return eng->ing;
}

struct proj *engine_proj(struct engine *eng)
{
    return eng->proj;
}

size_t engine_handler_stats(struct engine *eng, struct engine_handler_stats *out, size_t cap)
{
    size_t n = eng->n < cap ? eng->n : cap;
    for (size_t i = 0; i < n; i++) {
        out[i] = (struct engine_handler_stats){
            .name = eng->order[i]->name,
            .applied = eng->applied[i],
            .apply_ns = eng->apply_ns[i],
            .apply_cpu_ns = atomic_load_explicit(&eng->apply_cpu[i], memory_order_relaxed),
            .flush_cpu_ns = eng->flush_cpu[i],
        };
        for (unsigned k = 0; eng->sides_set && k < PAR_SLOTS; k++)
            out[i].worker |= eng->side[k][i];
        proj_hctx_lock_stats(eng->ctx[i], &out[i].lock_calls, &out[i].lock_waits,
                             &out[i].lock_wait_ns);
    }
    return n;
}

void engine_phase_stats(struct engine *eng, struct engine_phase_stats *out)
{
    *out = eng->ph;
}

int engine_apply_error(struct engine *eng)
{
    return eng->apply_rc;
}

size_t engine_handlers(struct engine *eng, const struct handler *const **order)
{
    *order = eng->order;
    return eng->n;
}

int engine_tick(struct engine *eng, int64_t now, int64_t interval_ns)
{
    json_t *obj =
        json_pack("{s:s, s:s, s:I, s:{s:I}}", "type", "tick", "tenant", ENGINE_TENANT, "time",
                  (json_int_t)now, "payload", "interval_ms", (json_int_t)(interval_ns / 1000000));
    struct ingest_event ev = {0};
    struct log_result res;
    struct cairn_error e;
    if (!obj)
        return CAIRN_ENOMEM;
    int rc = ingest_parse_value(eng->ing, obj, "engine", now, true, &ev, &e);
    json_decref(obj);
    if (rc)
        return rc;
    if (eng->writer) {
        rc = log_writer_append_wait(eng->writer, &ev.in, &res, 1);
    } else {
        rc = log_append(eng->log, &ev.in, &res, 1);
        if (!rc)
            rc = engine_catch_up(eng, 0);
    }
    ingest_event_deinit(&ev);
    return rc ? rc : res.rc;
}

struct tick_req {
    struct log_req req;
    struct ingest_event ev;
    struct log_result res;
};

static void tick_done(struct log_req *req)
{
    struct tick_req *t = (struct tick_req *)req;
    if (req->rc)
        fprintf(stderr, "cairn: appending a tick failed: %s\n", cairn_strerror(req->rc));
    ingest_event_deinit(&t->ev);
    free(t);
}

int engine_tick_submit(struct engine *eng, int64_t now, int64_t interval_ns)
{
    struct tick_req *t = calloc(1, sizeof *t);
    struct cairn_error e;
    if (!t)
        return CAIRN_ENOMEM;
    json_t *obj =
        json_pack("{s:s, s:s, s:I, s:{s:I}}", "type", "tick", "tenant", ENGINE_TENANT, "time",
                  (json_int_t)now, "payload", "interval_ms", (json_int_t)(interval_ns / 1000000));
    int rc =
        obj ? ingest_parse_value(eng->ing, obj, "engine", now, true, &t->ev, &e) : CAIRN_ENOMEM;
    json_decref(obj);
    if (rc) {
        free(t);
        return rc;
    }
    t->req = (struct log_req){.inputs = &t->ev.in, .results = &t->res, .n = 1, .done = tick_done};
    if ((rc = log_writer_submit(eng->writer, &t->req, false))) {
        ingest_event_deinit(&t->ev);
        free(t);
    }
    return rc;
}

static void *sync_start_main(void *arg)
{
    proj_sync_start(arg);
    return NULL;
}

int engine_replay(const struct engine_config *cfg, const char *into, uint64_t to,
                  struct cairn_error *e)
{
    struct engine_config rc_cfg = *cfg;
    struct engine *eng;
    rc_cfg.state_dir = into;
    rc_cfg.apply_to = to;
    /* `into` is fresh and used only once this returns 0 (the CLI refuses
     * a non-empty --into and removes an interrupted in-place replay), so
     * its commits skip fsync — 16 of them took 0.2-0.4 s of a 1M-event
     * replay — and one sync at the end makes the result durable. */
    int rc = open_engine(&eng, &rc_cfg, true, e);
    if (rc)
        return rc;
    if (proj_checkpoint(eng->proj) != 0 && to && proj_checkpoint(eng->proj) > to)
        rc = cairn_error_set(e, "replay", "", "%s is not empty", into);
    /* The state is written back while the handlers free their memory
     * (~0.03-0.04 s of frees on a 1M replay, most of the close; the
     * write-back 0.06-0.08 s, most of it waiting for the disk's queue):
     * proj_sync_start on a helper thread, the close here, then the wait.
     * The write-back unmaps the state's pages first (cairn_env_sync_start):
     * while they were mapped, cleaning each one was a TLB shootdown that
     * interrupted the frees on the other CPU, and the helper thread made
     * the sync slower (0.15-0.22 s) than doing both in turn on this one
     * (0.10-0.13 s). Unmapped, pairs against in turn: 0.145 -> 0.103 s
     * (median of 12, lower in 10). Without the thread: in turn. */
    int64_t t0 = mono_ns();
    pthread_t syncer;
    bool side = false;
    if (!rc)
        side = !pthread_create(&syncer, NULL, sync_start_main, eng->proj);
    if (!rc && !side)
        proj_sync_start(eng->proj);
    int64_t c0 = mono_ns();
    close_handlers(eng);
    eng->ph.close_ns += (uint64_t)(mono_ns() - c0);
    if (side)
        pthread_join(syncer, NULL);
    if (!rc && (rc = proj_sync(eng->proj)))
        cairn_error_set(e, "replay", "", "syncing %s failed: %s", into, cairn_strerror(rc));
    eng->ph.sync_ns += (uint64_t)(mono_ns() - t0); /* the close included */
    struct engine_replay_stats *st = cfg->replay_stats;
    if (st) {
        st->n = engine_handler_stats(eng, st->handlers, sizeof st->handlers / sizeof *st->handlers);
        engine_phase_stats(eng, &st->phases);
    }
    engine_close(eng);
    return rc;
}
