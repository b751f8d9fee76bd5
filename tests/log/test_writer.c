/*
 * test_writer.c — the single writer thread and its bounded queue.
 *
 *  - many producers, requests of random sizes: seqs dense and unique, each
 *    producer's results name its own events, in its own order;
 *  - a full queue answers CAIRN_EBUSY to a non-blocking submit and makes a
 *    blocking one wait. Made deterministic by holding LMDB's write lock
 *    from the test, so the writer thread is stuck in its next write
 *    transaction and cannot drain the queue;
 *  - the map grows from 1 MiB to hold ~20 MiB;
 *  - one writing process per log: a second is refused, readers are not;
 *  - a process killed after an index commit that held entries past
 *    `indexed`: reopening re-indexes them without doubling any.
 */
#include "log_test.h"

#include <pthread.h>
#include <sys/wait.h>
#include <time.h>

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ====================================================================== many producers */

enum { PRODUCERS = 8, PER_PRODUCER = 5000, REQ_MAX = 300, PAD_MAX = 512 };

static char PADDING[PAD_MAX + 1]; /* PAD_MAX x's, set by run_producers */

struct producer {
    struct log_writer *w;
    unsigned no;
    unsigned seed;
    unsigned pad; /* bytes of padding in each payload */
    uint64_t seqs[PER_PRODUCER];
    int failures;
};

/* Commit ranges reported to on_commit, checked to be contiguous. */
struct commits {
    pthread_mutex_t mu;
    uint64_t last;
    uint64_t calls, gaps;
};

static void on_commit(void *arg, uint64_t first, uint64_t last)
{
    struct commits *c = arg;
    pthread_mutex_lock(&c->mu);
    c->calls++;
    if (first <= last) {
        if (first != c->last + 1)
            c->gaps++;
        c->last = last;
    }
    pthread_mutex_unlock(&c->mu);
}

/* Pipelined submits: a request is answered through done(). */
struct pending {
    struct log_req req;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    bool done;
};

static void pending_done(struct log_req *req)
{
    struct pending *p = (struct pending *)req;
    pthread_mutex_lock(p->mu);
    p->done = true;
    pthread_cond_broadcast(p->cv);
    pthread_mutex_unlock(p->mu);
}

static void producer_inputs(struct producer *p, unsigned at, unsigned n, struct tin *t,
                            struct log_input *in)
{
    char key[32], id[32], payload[96 + PAD_MAX];
    snprintf(key, sizeof key, "p%u", p->no);
    assert_true(p->pad <= PAD_MAX);
    for (unsigned i = 0; i < n; i++) {
        snprintf(id, sizeof id, "p%u-%u", p->no, at + i);
        snprintf(payload, sizeof payload, "{\"p\":%u,\"i\":%u,\"pad\":\"%.*s\"}", p->no, at + i,
                 (int)p->pad, PADDING);
        tin_setj(&t[i], "acme", key, id, T0 + (int64_t)(at + i), payload);
        in[i] = t[i].in;
    }
}

/* Even producers: one request at a time with log_writer_append_wait. */
static void produce_sync(struct producer *p)
{
    struct tin *t = tins_new(REQ_MAX);
    struct log_input in[REQ_MAX];
    struct log_result res[REQ_MAX];
    for (unsigned at = 0; at < PER_PRODUCER;) {
        unsigned n = 1 + (unsigned)rand_r(&p->seed) % REQ_MAX;
        if (n > PER_PRODUCER - at)
            n = PER_PRODUCER - at;
        producer_inputs(p, at, n, t, in);
        if (log_writer_append_wait(p->w, in, res, n)) {
            p->failures++;
            break;
        }
        for (unsigned i = 0; i < n; i++) {
            if (res[i].rc || res[i].duplicate)
                p->failures++;
            p->seqs[at + i] = res[i].seq;
        }
        at += n;
    }
    tins_free(t, REQ_MAX);
}

/* Odd producers: up to 4 requests in flight through log_writer_submit. */
static void produce_pipelined(struct producer *p)
{
    enum { DEPTH = 4 };
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    struct slot {
        struct pending pd;
        struct tin *t;
        struct log_input in[REQ_MAX];
        struct log_result res[REQ_MAX];
        unsigned at;
        bool busy;
    } *slots = calloc(DEPTH, sizeof *slots);
    for (int k = 0; k < DEPTH; k++)
        slots[k].t = tins_new(REQ_MAX);
    unsigned at = 0;
    for (int k = 0;; k = (k + 1) % DEPTH) {
        struct slot *s = &slots[k];
        if (s->busy) { /* wait for it, then take its results */
            pthread_mutex_lock(&mu);
            while (!s->pd.done)
                pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
            s->busy = false;
            if (s->pd.req.rc)
                p->failures++;
            for (size_t i = 0; i < s->pd.req.n; i++) {
                if (s->res[i].rc || s->res[i].duplicate)
                    p->failures++;
                p->seqs[s->at + i] = s->res[i].seq;
            }
        }
        if (at == PER_PRODUCER) {
            bool any = false;
            for (int j = 0; j < DEPTH; j++)
                any |= slots[j].busy;
            if (!any)
                break;
            continue;
        }
        unsigned n = 1 + (unsigned)rand_r(&p->seed) % REQ_MAX;
        if (n > PER_PRODUCER - at)
            n = PER_PRODUCER - at;
        producer_inputs(p, at, n, s->t, s->in);
        s->pd = (struct pending){
            .req = {.inputs = s->in, .results = s->res, .n = n, .done = pending_done},
            .mu = &mu,
            .cv = &cv,
        };
        s->at = at;
        if (log_writer_submit(p->w, &s->pd.req, true)) {
            p->failures++;
            break;
        }
        s->busy = true;
        at += n;
    }
    for (int k = 0; k < DEPTH; k++)
        tins_free(slots[k].t, REQ_MAX);
    free(slots);
}

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    if (p->no % 2)
        produce_pipelined(p);
    else
        produce_sync(p);
    return NULL;
}

/* Many producers on a log whose maps start at map_size, payloads padded
 * with pad bytes. */
static void run_producers(size_t map_size, unsigned pad)
{
    enum { N = PRODUCERS * PER_PRODUCER };
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = NULL;
    struct log_config cfg = {.dir = dir, .map_size = map_size};
    memset(PADDING, 'x', PAD_MAX);
    assert_int_equal(log_open(&log, &cfg), 0);
    int64_t t_start = cairn_now_ns();
    struct log_writer *w;
    struct commits c = {.mu = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(log_writer_start(&w, log, on_commit, &c), 0);
    struct producer *p = calloc(PRODUCERS, sizeof *p);
    pthread_t th[PRODUCERS];
    for (unsigned i = 0; i < PRODUCERS; i++) {
        p[i] = (struct producer){.w = w, .no = i, .seed = 1234 + i, .pad = pad};
        assert_int_equal(pthread_create(&th[i], NULL, producer_main, &p[i]), 0);
    }
    for (unsigned i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    struct log_writer_stats st;
    log_writer_stats(w, &st);
    log_writer_stop(w);
    int64_t t_end = cairn_now_ns();
    /* the path under test: batches decided and encoded ahead (eight
     * producers keep the queue full) */
    assert_true(st.encoded_ahead > 0);

    /* dense 1..N, each seq given to exactly one input */
    uint8_t *seen = calloc(N + 1, 1);
    for (unsigned i = 0; i < PRODUCERS; i++) {
        assert_int_equal(p[i].failures, 0);
        for (unsigned k = 0; k < PER_PRODUCER; k++) {
            uint64_t s = p[i].seqs[k];
            assert_true(s >= 1 && s <= N);
            assert_int_equal(seen[s], 0);
            seen[s] = 1;
            /* a producer's events keep its order (FIFO queue) */
            if (k)
                assert_true(s > p[i].seqs[k - 1]);
        }
    }
    free(seen);
    assert_int_equal(head_seq(log), N);
    assert_int_equal(st.events, N);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(st.conflicts, 0);
    assert_true(st.batches >= 1 && st.batches <= N);
    assert_int_equal(c.gaps, 0);
    assert_int_equal(c.last, N);
    assert_int_equal(c.calls, st.batches);

    /* each seq holds what its producer sent */
    struct log_snap *s;
    struct log_event ev;
    assert_int_equal(log_snap_begin(log, &s), 0);
    /* ingested times never go backwards, whichever thread encoded the
     * envelope (the indexer encodes batches decided ahead) */
    int64_t last_ingested = INT64_MIN;
    for (uint64_t q = 1; q <= N; q++) {
        assert_int_equal(log_snap_get(s, q, &ev), 0);
        if (ev.ingested < last_ingested || ev.ingested < t_start || ev.ingested > t_end)
            fail_msg("seq %llu ingested %lld after %lld (run %lld..%lld)", (unsigned long long)q,
                     (long long)ev.ingested, (long long)last_ingested, (long long)t_start,
                     (long long)t_end);
        last_ingested = ev.ingested;
    }
    for (unsigned i = 0; i < PRODUCERS; i++) {
        char key[32];
        snprintf(key, sizeof key, "p%u", i);
        for (unsigned k = 0; k < PER_PRODUCER; k++) {
            assert_int_equal(log_snap_get(s, p[i].seqs[k], &ev), 0);
            json_t *pl = NULL;
            assert_int_equal(cairn_msgpack_to_jansson(ev.payload, ev.payload_len, &pl, NULL, NULL),
                             0);
            if (json_integer_value(json_object_get(pl, "p")) != i ||
                json_integer_value(json_object_get(pl, "i")) != k)
                fail_msg("seq %llu holds p %lld i %lld, want p %u i %u",
                         (unsigned long long)p[i].seqs[k],
                         (long long)json_integer_value(json_object_get(pl, "p")),
                         (long long)json_integer_value(json_object_get(pl, "i")), i, k);
            json_decref(pl);
            assert_int_equal(ev.key.n, strlen(key));
            assert_memory_equal(ev.key.p, key, ev.key.n);
        }
        /* and the entity index lists exactly that producer's seqs */
        struct cairn_str tn = {"acme", 4}, kn = {key, strlen(key)};
        struct log_iter *it;
        assert_int_equal(log_iter_open(s, 0, &tn, &kn, &it), 0);
        unsigned k = 0;
        while (log_iter_next(it, &ev) == 0) {
            assert_true(k < PER_PRODUCER);
            assert_int_equal(ev.seq, p[i].seqs[k]);
            k++;
        }
        assert_int_equal(k, PER_PRODUCER);
        log_iter_close(it);
    }
    log_snap_end(s);

    struct log_verify_report r;
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, N);
    free(p);
    log_close(log);
    scratch_free(dir);
}

static void test_producers(void **state)
{
    (void)state;
    run_producers(0, 0);
}

/* The same with maps that fill again and again (256 KiB, doubled each
 * time): batch commits fail with a full map while the next batch was
 * already decided (the writer decides ahead), index transactions fail and
 * the index is rebuilt from the log — and the outcome is the same. */
static void test_producers_maps_fill(void **state)
{
    (void)state;
    run_producers(256u << 10, 400);
}

/* ====================================================================== a full queue */

struct blocked_submit {
    struct log_writer *w;
    struct log_req *req;
    int rc;
    _Atomic bool returned;
};

static void *blocking_submit_main(void *arg)
{
    struct blocked_submit *b = arg;
    b->rc = log_writer_submit(b->w, b->req, true);
    b->returned = true;
    return NULL;
}

static void test_queue_full(void **state)
{
    (void)state;
    enum { Q = 8, MAXREQ = 4 };
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = NULL;
    struct log_config cfg = {.dir = dir, .batch_max = Q, .queue_max = Q};
    assert_int_equal(log_open(&log, &cfg), 0);
    struct log_writer *w;
    assert_int_equal(log_writer_start(&w, log, NULL, NULL), 0);

    struct tin *t = tins_new(Q);
    struct log_input in[Q];
    for (unsigned i = 0; i < Q; i++) {
        tin_setj(&t[i], "acme", "k", NULL, T0 + i, "{\"x\":1}");
        in[i] = t[i].in;
    }
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    struct pending reqs[MAXREQ];
    struct log_result res[MAXREQ][Q];
    for (int k = 0; k < MAXREQ; k++)
        reqs[k] = (struct pending){
            .req = {.inputs = in, .results = res[k], .n = Q, .done = pending_done},
            .mu = &mu,
            .cv = &cv,
        };

    /* too big for the queue at all, or empty */
    struct log_req huge = {.inputs = in, .results = res[0], .n = Q + 1, .done = pending_done};
    assert_int_equal(log_writer_submit(w, &huge, false), CAIRN_ETOOBIG);
    assert_int_equal(log_writer_submit(w, &huge, true), CAIRN_ETOOBIG);
    struct log_req empty = {.inputs = in, .results = res[0], .n = 0, .done = pending_done};
    assert_int_equal(log_writer_submit(w, &empty, false), CAIRN_ETOOBIG);

    /* Hold LMDB's write lock: once the writer has taken a request off the
     * queue it blocks in that request's write transaction and can take no
     * other. */
    MDB_txn *hold;
    assert_int_equal(cairn_env_write_begin(log_env(log), &hold), 0);
    assert_int_equal(log_writer_submit(w, &reqs[0].req, false), 0);
    /* The queue holds Q events: a second full request is refused until the
     * writer has taken the first; then it fills the queue. */
    int rc, tries = 0;
    while ((rc = log_writer_submit(w, &reqs[1].req, false)) == CAIRN_EBUSY && tries++ < 500)
        sleep_ms(10);
    assert_int_equal(rc, 0);
    int accepted = 2;
    /* now full, and stays full while the writer is stuck: EBUSY every time,
     * for a full request and for a single event */
    for (int k = 0; k < 3; k++)
        assert_int_equal(log_writer_submit(w, &reqs[2].req, false), CAIRN_EBUSY);
    struct log_req one = {.inputs = in, .results = res[2], .n = 1, .done = pending_done};
    assert_int_equal(log_writer_submit(w, &one, false), CAIRN_EBUSY);
    int busy_at = 2;

    /* a blocking submit waits... */
    struct blocked_submit bs = {.w = w, .req = &reqs[busy_at].req};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, blocking_submit_main, &bs), 0);
    sleep_ms(200);
    assert_false(bs.returned); /* the writer cannot have made room */
    pthread_mutex_lock(&mu);
    for (int k = 0; k < accepted; k++)
        assert_false(reqs[k].done);
    pthread_mutex_unlock(&mu);
    assert_int_equal(head_seq(log), 0);

    /* ...until the writer can go on */
    cairn_env_write_abort(log_env(log), hold);
    pthread_join(th, NULL);
    assert_int_equal(bs.rc, 0);
    int total = accepted + 1;
    pthread_mutex_lock(&mu);
    for (int k = 0; k < total; k++)
        while (!reqs[k].done)
            pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    /* all accepted requests were appended in submission order; the refused
     * ones never were (done was never called for them) */
    for (int k = 0; k < total; k++) {
        assert_int_equal(reqs[k].req.rc, 0);
        for (int i = 0; i < Q; i++)
            assert_int_equal(res[k][i].seq, (uint64_t)(k * Q + i + 1));
    }
    log_writer_stop(w);
    for (int k = total; k < MAXREQ; k++)
        assert_false(reqs[k].done);
    assert_int_equal(head_seq(log), (uint64_t)total * Q);
    tins_free(t, Q);
    log_close(log);
    scratch_free(dir);
}

/* ====================================================================== map growth */

static void test_map_growth(void **state)
{
    (void)state;
    enum { EVENTS = 2000, PAYLOAD = 10000, REQ = 50 };
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = NULL;
    struct log_config cfg = {.dir = dir, .map_size = 1u << 20};
    assert_int_equal(log_open(&log, &cfg), 0);
    MDB_envinfo info;
    mdb_env_info(cairn_env_mdb(log_env(log)), &info);
    assert_int_equal(info.me_mapsize, 1u << 20);
    struct log_writer *w;
    assert_int_equal(log_writer_start(&w, log, NULL, NULL), 0);

    char *big = malloc(PAYLOAD + 64);
    struct tin *t = tins_new(REQ);
    struct log_input in[REQ];
    struct log_result res[REQ];
    for (unsigned at = 0; at < EVENTS; at += REQ) {
        for (unsigned i = 0; i < REQ; i++) {
            int n = snprintf(big, PAYLOAD + 64, "{\"n\":%u,\"s\":\"", at + i);
            memset(big + n, 'a' + (at + i) % 26, PAYLOAD);
            memcpy(big + n + PAYLOAD, "\"}", 3);
            tin_setj(&t[i], "acme", "big", NULL, T0 + at + i, big);
            in[i] = t[i].in;
        }
        assert_int_equal(log_writer_append_wait(w, in, res, REQ), 0);
        for (unsigned i = 0; i < REQ; i++) {
            assert_int_equal(res[i].rc, 0);
            assert_int_equal(res[i].seq, at + i + 1);
        }
    }
    log_writer_stop(w);
    mdb_env_info(cairn_env_mdb(log_env(log)), &info);
    assert_true(info.me_mapsize >= (size_t)EVENTS * PAYLOAD); /* grew past 20 MB */
    struct log_verify_report r;
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, EVENTS);
    json_t *p = stored_payload(log, 1234);
    assert_int_equal(json_integer_value(json_object_get(p, "n")), 1233);
    const char *sv = json_string_value(json_object_get(p, "s"));
    assert_int_equal(strlen(sv), PAYLOAD);
    assert_int_equal(sv[PAYLOAD - 1], 'a' + 1233 % 26);
    json_decref(p);
    log_close(log);

    /* reopened with the small configured size: the file's size wins */
    assert_int_equal(log_open(&log, &cfg), 0);
    assert_int_equal(head_seq(log), EVENTS);
    struct tin one = {{{0}}};
    tin_setj(&one, "acme", "big", NULL, T0 + EVENTS, big);
    struct log_result rr = append1(log, &one);
    assert_int_equal(rr.rc, 0);
    assert_int_equal(rr.seq, EVENTS + 1);
    log_close(log);
    tin_free(&one);
    tins_free(t, REQ);
    free(big);
    scratch_free(dir);
}

/* ====================================================================== one writer per log */

/* How a forked child of these tests ends: through exec of a shell that
 * exits with `code`. The child holds the parent's objects (its open log,
 * the test inputs) and must not free them — LMDB forbids using an
 * environment after fork() — so a memory checker running the suite
 * (tests/memcheck) would report them as the child's leaks at _exit; an
 * exec discards the process image without that check. */
static _Noreturn void child_exit(int code)
{
    char arg[16];
    snprintf(arg, sizeof arg, "%d", code);
    fflush(NULL);
    execl("/bin/sh", "sh", "-c", "exit \"$0\"", arg, (char *)NULL);
    _exit(code); /* no shell: the status is the same */
}

static void test_second_writer(void **state)
{
    (void)state;
    char dir[512];
    scratch_new(dir, sizeof dir);
    struct log *log = open_log(dir, 0);
    struct tin t = {{{0}}};
    tin_setj(&t, "acme", "k", NULL, T0, "{}");
    assert_int_equal(append1(log, &t).seq, 1);
    assert_int_equal(append1(log, &t).seq, 2);
    uint8_t head[LOG_HASH_LEN];
    uint64_t seq;
    assert_int_equal(log_head(log, &seq, head), 0);

    /* Another process (LMDB forbids opening one environment twice in a
     * process, so the second opener is a child). Its exit status says
     * which check failed. */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct log *l2 = NULL;
        struct log_config cfg = {.dir = dir};
        int rc = log_open(&l2, &cfg);
        if (rc != CAIRN_EBUSY)
            child_exit(10);
        cfg.readonly = true;
        if (log_open(&l2, &cfg))
            child_exit(11);
        uint64_t s2;
        uint8_t h2[LOG_HASH_LEN];
        if (log_head(l2, &s2, h2) || s2 != 2 || memcmp(h2, head, LOG_HASH_LEN))
            child_exit(12);
        struct log_verify_report r;
        if (log_verify(l2, 0, 0, &r) || !r.ok || r.events != 2)
            child_exit(13);
        log_close(l2);
        child_exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* the writer is unaffected; once it closes, another may write */
    assert_int_equal(append1(log, &t).seq, 3);
    log_close(log);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct log *l2 = NULL;
        struct log_config cfg = {.dir = dir};
        if (log_open(&l2, &cfg))
            child_exit(20);
        struct log_result r;
        if (log_append(l2, &t.in, &r, 1) || r.seq != 4)
            child_exit(21);
        log_close(l2);
        child_exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    log = open_log(dir, 0);
    assert_int_equal(head_seq(log), 4);
    log_close(log);
    tin_free(&t);
    scratch_free(dir);
}

/* ====================================================================== a crash, the index lagging
 */

enum { LAG_BATCH = 1000, LAG_BATCHES = 36, LAG_KEYS = 997 };

/* Index DBI entries and `indexed` of a log no process has open. */
static void index_raw(const char *dir, size_t *keys, size_t *dedup, uint64_t *indexed)
{
    char path[600];
    snprintf(path, sizeof path, "%s/index", dir);
    MDB_env *env = raw_open(path, MDB_RDONLY);
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat st;
    MDB_val k = {7, "indexed"}, v;
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "keys", 0, &dbi), 0);
    assert_int_equal(mdb_stat(txn, dbi, &st), 0);
    *keys = st.ms_entries;
    assert_int_equal(mdb_dbi_open(txn, "dedup", 0, &dbi), 0);
    assert_int_equal(mdb_stat(txn, dbi, &st), 0);
    *dedup = st.ms_entries;
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    *indexed = cairn_be64_get(v.mv_data);
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

/* Entity k's key: short, or sharing its first 16 bytes (with the tenant)
 * with others of several lengths (the sealed run's sort, log/index.c). */
static void lag_key(char *out, size_t cap, unsigned k)
{
    snprintf(out, cap, k % 3 ? "k%u" : "entity/long-name/%u", k);
}

static void lag_input(struct tin *t, unsigned i)
{
    char key[32], id[16];
    lag_key(key, sizeof key, i % LAG_KEYS);
    snprintf(id, sizeof id, "id-%u", i);
    tin_setj(t, "acme", key, id, T0 + (int64_t)i * 1000, "{}");
}

/* The index commits while entries of earlier batches are still in its
 * write-behind (log/index.c: `indexed` then stops below the lowest of
 * them, though the commit holds some later entries), and the process dies
 * without closing the log. Reopening re-indexes past `indexed`: the entries
 * already there are put again without being doubled, and every entity read,
 * expected_seq and id retry answers as if nothing had happened. */
static void test_crash_lagging_index(void **state)
{
    (void)state;
    char dir[512];
    scratch_new(dir, sizeof dir);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct log *log = NULL;
        struct log_config cfg = {.dir = dir};
        if (log_open(&log, &cfg))
            child_exit(10);
        struct tin *t = calloc(LAG_BATCH, sizeof *t);
        struct log_input *in = calloc(LAG_BATCH, sizeof *in);
        struct log_result *res = calloc(LAG_BATCH, sizeof *res);
        if (!t || !in || !res)
            child_exit(11);
        for (unsigned b = 0; b < LAG_BATCHES; b++) {
            /* past a sealed run of keys entries (32 768), the index
             * transaction is made due for a commit by its clock (1 s) */
            if (b == LAG_BATCHES - 3)
                sleep_ms(1100);
            for (unsigned i = 0; i < LAG_BATCH; i++) {
                lag_input(&t[i], b * LAG_BATCH + i);
                in[i] = t[i].in;
            }
            if (log_append(log, in, res, LAG_BATCH))
                child_exit(12);
            for (unsigned i = 0; i < LAG_BATCH; i++) {
                if (res[i].rc || res[i].seq != (uint64_t)b * LAG_BATCH + i + 1)
                    child_exit(13);
                tin_free(&t[i]);
            }
        }
        child_exit(0); /* no log_close: a crash of the process */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    const uint64_t n = (uint64_t)LAG_BATCH * LAG_BATCHES;
    size_t keys, dedup;
    uint64_t indexed;
    index_raw(dir, &keys, &dedup, &indexed);
    /* the last commit holds entries past what it says it covers */
    if (!(keys > indexed && keys < n))
        fail_msg("before reopening: %zu keys entries, indexed %llu", keys,
                 (unsigned long long)indexed);

    struct log *log = open_log(dir, 0);
    assert_int_equal(head_seq(log), n);
    assert_int_equal(dbi_entries(log, "keys"), n);
    assert_int_equal(dbi_entries(log, "dedup"), n);
    struct log_snap *s;
    assert_int_equal(log_snap_begin(log, &s), 0);
    for (unsigned k = 0; k < LAG_KEYS; k += 7) {
        char key[32];
        lag_key(key, sizeof key, k);
        struct cairn_str tn = {"acme", 4}, kn = {key, strlen(key)};
        uint64_t last = 0, want = 0, count = 0, prev = 0;
        for (uint64_t i = k; i < n; i += LAG_KEYS)
            want = i + 1;
        assert_int_equal(log_snap_last_of(s, &tn, &kn, &last), 0);
        assert_int_equal(last, want);
        struct log_iter *it;
        struct log_event ev;
        assert_int_equal(log_iter_open(s, 1, &tn, &kn, &it), 0);
        while (log_iter_next(it, &ev) == 0) {
            assert_int_equal(ev.seq, prev ? prev + LAG_KEYS : k + 1);
            prev = ev.seq;
            count++;
        }
        log_iter_close(it);
        assert_int_equal(count, (n - k + LAG_KEYS - 1) / LAG_KEYS);
    }
    log_snap_end(s);
    /* retries of ids from the start, the middle and the end; expected_seq */
    struct tin t = {{{0}}};
    for (unsigned i = 0; i < n; i += 4999) {
        lag_input(&t, i);
        struct log_result r = append1(log, &t);
        assert_true(r.duplicate);
        assert_int_equal(r.seq, i + 1);
        tin_free(&t);
    }
    tin_setj(&t, "acme", "k5", "new", T0 + (int64_t)n * 1000, "{}");
    for (uint64_t i = 5; i < n; i += LAG_KEYS)
        t.in.expected_seq = (int64_t)i + 1; /* k5's last */
    struct log_result r = append1(log, &t);
    if (r.rc)
        fail_msg("expected_seq %lld: rc %d, actual %llu", (long long)t.in.expected_seq, r.rc,
                 (unsigned long long)r.actual_seq);
    assert_int_equal(r.seq, n + 1);
    tin_free(&t);
    log_close(log);
    scratch_free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_producers),     cmocka_unit_test(test_producers_maps_fill),
        cmocka_unit_test(test_queue_full),    cmocka_unit_test(test_map_growth),
        cmocka_unit_test(test_second_writer), cmocka_unit_test(test_crash_lagging_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
