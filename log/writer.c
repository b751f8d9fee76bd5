/*
 * writer.c — the single writer thread: a bounded queue of producer requests
 * drained in batches, one durable commit per batch (group commit).
 *
 * Producers never touch LMDB. The writer takes every queued request (up to
 * batch_max events, whole requests only), optionally waits batch_wait_us for
 * a fuller batch, appends them in one transaction, and only after the commit
 * returned tells each producer its seqs (req->done). While one batch is
 * being fsynced, the next one queues up: under load batches grow by
 * themselves and the fsync cost is shared. What is queued when a batch is
 * encoded is taken as the next batch right then (without batch_wait_us),
 * so that the indexer decides and encodes it during the fsync
 * (log_append_ahead); what comes later waits for the batch after.
 *
 * The queue is bounded in events (queue_max): a producer that finds it full
 * either waits (tools) or is told CAIRN_EBUSY (HTTP answers 429). Besides
 * the queue, at most two batches are out of it: the one committing and the
 * one decided ahead.
 */
#include "log_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct log_writer {
    struct log *log;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t nonempty, nonfull;
    struct log_req *head, *tail; /* FIFO of pending requests */
    size_t queued;               /* events in the FIFO */
    size_t queue_max, batch_max;
    unsigned batch_wait_us;
    bool stopping;
    log_commit_fn on_commit;
    void *arg;
    /* Batches gathered from several requests (writer thread only): the one
     * being appended and the next one, taken while the first commits so
     * that the indexer decides it meanwhile (log_append_ahead). */
    struct log_input *in[2];
    struct log_result *res[2];
    struct log_req *next; /* the next batch's requests (NULL: none taken) */
    size_t next_n;
    unsigned next_buf; /* which of in/res it is in */
    _Atomic uint64_t batches, events, duplicates, conflicts, encoded_ahead, commit_ns;
    _Atomic uint64_t batch_hist[LOG_BATCH_BUCKETS], commit_hist[LOG_COMMIT_BUCKETS + 1];
};

/* Non-cumulative bucket counts; made cumulative when read. */
static void observe(struct log_writer *w, size_t n, int64_t ns)
{
    unsigned b = 0;
    while (b + 1 < LOG_BATCH_BUCKETS && ((size_t)1 << b) < n)
        b++;
    w->batch_hist[b]++;
    unsigned c = 0;
    while (c < LOG_COMMIT_BUCKETS && ns > 100000LL << c)
        c++;
    w->commit_hist[c]++;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Takes whole requests off the FIFO, up to batch_max events (a single
 * larger request goes alone). Called with mu held. */
static struct log_req *take_batch(struct log_writer *w, size_t *events)
{
    struct log_req *first = w->head, *last = NULL;
    size_t n = 0;
    for (struct log_req *r = w->head; r; r = r->next_) {
        if (n && n + r->n > w->batch_max)
            break;
        n += r->n;
        last = r;
    }
    w->head = last->next_;
    if (!w->head)
        w->tail = NULL;
    last->next_ = NULL;
    w->queued -= n;
    *events = n;
    return first;
}

/* Waits up to batch_wait_us for the queue to hold a full batch. */
static void wait_for_fuller(struct log_writer *w)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long ns = until.tv_nsec + (long)w->batch_wait_us * 1000;
    until.tv_sec += ns / 1000000000L;
    until.tv_nsec = ns % 1000000000L;
    while (w->queued < w->batch_max && !w->stopping)
        if (pthread_cond_timedwait(&w->nonempty, &w->mu, &until) == ETIMEDOUT)
            break;
}

/* How long the queue must stay empty before the writer lets the index
 * catch up (log_index_flush: every entry not put yet, and a commit). The
 * queue empties for a moment between bursts all the time when producers
 * parse on the same cores: flushing at each of those moments made the
 * index commit a few hundred times per million events (each commit copies
 * and writes every page it touched, and the flushed entries are put in
 * small runs) instead of every CAIRN_INDEX_COMMIT_* (index.c). */
#define IDLE_FLUSH_NS (20 * 1000000L)

/* Waits up to IDLE_FLUSH_NS for a request (or stop). Called with mu held;
 * whether one came. */
static bool wait_idle(struct log_writer *w)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long ns = until.tv_nsec + IDLE_FLUSH_NS;
    until.tv_sec += ns / 1000000000L;
    until.tv_nsec = ns % 1000000000L;
    while (!w->head && !w->stopping)
        if (pthread_cond_timedwait(&w->nonempty, &w->mu, &until) == ETIMEDOUT)
            break;
    return w->head || w->stopping;
}

/* Copies the inputs of the requests reqs into batch buffer b. */
static void gather(struct log_writer *w, struct log_req *reqs, unsigned b)
{
    size_t at = 0;
    for (struct log_req *r = reqs; r; r = r->next_) {
        memcpy(w->in[b] + at, r->inputs, r->n * sizeof *w->in[b]);
        at += r->n;
    }
}

/* log_take_fn: the batch after the one being appended, when requests are
 * queued (without waiting for more: batch_wait_us asks for full batches,
 * so then nothing is taken early). */
static bool take_next(void *arg, const struct log_input **in, struct log_result **res, size_t *n)
{
    struct log_writer *w = arg;
    if (w->batch_wait_us || w->next)
        return false;
    pthread_mutex_lock(&w->mu);
    if (!w->head) {
        pthread_mutex_unlock(&w->mu);
        return false;
    }
    w->next = take_batch(w, &w->next_n);
    pthread_cond_broadcast(&w->nonfull);
    pthread_mutex_unlock(&w->mu);
    gather(w, w->next, w->next_buf);
    *in = w->in[w->next_buf];
    *res = w->res[w->next_buf];
    *n = w->next_n;
    return true;
}

/* Appends the batch in buffer b (its inputs gathered) and answers its
 * requests. */
static void commit_batch(struct log_writer *w, struct log_req *reqs, size_t n, unsigned b)
{
    uint64_t before, after;
    log_head_cached(w->log, &before);
    w->next_buf = !b;
    int64_t t0 = mono_ns();
    int rc = log_append_ahead(w->log, w->in[b], w->res[b], n, take_next, w);
    int64_t took = mono_ns() - t0;
    w->commit_ns += (uint64_t)took;
    observe(w, n, took);
    log_head_cached(w->log, &after);
    w->batches++;
    w->events += after - before;
    w->encoded_ahead = log_encoded_ahead(w->log);

    size_t at = 0;
    for (struct log_req *r = reqs, *next; r; r = next) {
        next = r->next_; /* done may free r */
        memcpy(r->results, w->res[b] + at, r->n * sizeof *w->res[b]);
        for (size_t i = 0; i < r->n && !rc; i++) {
            w->duplicates += r->results[i].duplicate;
            w->conflicts += r->results[i].rc == CAIRN_ECONFLICT;
        }
        at += r->n;
        r->rc = rc;
        r->done(r);
    }
    if (!rc && w->on_commit)
        w->on_commit(w->arg, before + 1, after);
}

static void *writer_main(void *arg)
{
    struct log_writer *w = arg;
    pthread_setname_np(pthread_self(), "cairn-writer"); /* per-thread profiles (perf, top -H) */
    pthread_mutex_lock(&w->mu);
    for (;;) {
        size_t n;
        struct log_req *reqs;
        unsigned b;
        if (w->next) { /* taken while the last batch committed */
            reqs = w->next;
            n = w->next_n;
            b = w->next_buf;
            w->next = NULL;
            pthread_mutex_unlock(&w->mu);
        } else {
            while (!w->head && !w->stopping)
                pthread_cond_wait(&w->nonempty, &w->mu);
            if (!w->head)
                break; /* stopping and drained */
            if (w->batch_wait_us && w->queued < w->batch_max)
                wait_for_fuller(w);
            reqs = take_batch(w, &n);
            pthread_cond_broadcast(&w->nonfull);
            pthread_mutex_unlock(&w->mu);
            b = 0;
            gather(w, reqs, b);
        }
        commit_batch(w, reqs, n, b);
        pthread_mutex_lock(&w->mu);
        if (!w->next && !w->head && !w->stopping && !wait_idle(w)) {
            /* idle: let the index catch up with the log now */
            pthread_mutex_unlock(&w->mu);
            log_index_flush(w->log);
            pthread_mutex_lock(&w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    log_index_flush(w->log); /* leave the index caught up with the log */
    return NULL;
}

int log_writer_start(struct log_writer **out, struct log *log, log_commit_fn on_commit, void *arg)
{
    const struct log_config *cfg = log_config(log);
    struct log_writer *w = calloc(1, sizeof *w);
    if (!w)
        return CAIRN_ENOMEM;
    w->log = log;
    w->on_commit = on_commit;
    w->arg = arg;
    w->batch_max = cfg->batch_max ? cfg->batch_max : CAIRN_BATCH_MAX_DEFAULT;
    if (w->batch_max > CAIRN_BATCH_MAX_CEILING)
        w->batch_max = CAIRN_BATCH_MAX_CEILING;
    w->queue_max = cfg->queue_max ? cfg->queue_max : CAIRN_QUEUE_MAX_DEFAULT;
    if (w->queue_max > CAIRN_QUEUE_MAX_CEILING)
        w->queue_max = CAIRN_QUEUE_MAX_CEILING;
    if (w->queue_max < w->batch_max)
        w->queue_max = w->batch_max;
    w->batch_wait_us = cfg->batch_wait_us;
    /* A batch holds at most max(batch_max, one request <= queue_max). */
    for (unsigned b = 0; b < 2; b++) {
        w->in[b] = calloc(w->queue_max, sizeof *w->in[b]);
        w->res[b] = calloc(w->queue_max, sizeof *w->res[b]);
        if (!w->in[b] || !w->res[b])
            goto fail;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->nonempty, NULL);
    pthread_cond_init(&w->nonfull, NULL);
    if (pthread_create(&w->thread, NULL, writer_main, w)) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->nonempty);
        pthread_cond_destroy(&w->nonfull);
        goto fail;
    }
    *out = w;
    return 0;
fail:
    for (unsigned b = 0; b < 2; b++) {
        free(w->in[b]);
        free(w->res[b]);
    }
    free(w);
    return CAIRN_ENOMEM;
}

int log_writer_submit(struct log_writer *w, struct log_req *req, bool block)
{
    if (req->n == 0 || req->n > w->queue_max)
        return CAIRN_ETOOBIG;
    req->next_ = NULL;
    req->rc = 0;
    pthread_mutex_lock(&w->mu);
    while (!w->stopping && w->queued + req->n > w->queue_max) {
        if (!block) {
            pthread_mutex_unlock(&w->mu);
            return CAIRN_EBUSY;
        }
        pthread_cond_wait(&w->nonfull, &w->mu);
    }
    if (w->stopping) {
        pthread_mutex_unlock(&w->mu);
        return CAIRN_ECLOSED;
    }
    if (w->tail)
        w->tail->next_ = req;
    else
        w->head = req;
    w->tail = req;
    w->queued += req->n;
    pthread_cond_signal(&w->nonempty);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

/* ====================================================================== synchronous append */

struct waiter {
    struct log_req req;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void waiter_done(struct log_req *req)
{
    struct waiter *wt = (struct waiter *)req;
    pthread_mutex_lock(&wt->mu);
    wt->done = true;
    pthread_cond_signal(&wt->cv);
    pthread_mutex_unlock(&wt->mu);
}

int log_writer_append_wait(struct log_writer *w, const struct log_input *inputs,
                           struct log_result *results, size_t n)
{
    struct waiter wt = {.req = {.inputs = inputs, .results = results, .n = n, .done = waiter_done}};
    pthread_mutex_init(&wt.mu, NULL);
    pthread_cond_init(&wt.cv, NULL);
    int rc = log_writer_submit(w, &wt.req, true);
    if (!rc) {
        pthread_mutex_lock(&wt.mu);
        while (!wt.done)
            pthread_cond_wait(&wt.cv, &wt.mu);
        pthread_mutex_unlock(&wt.mu);
        rc = wt.req.rc;
    }
    pthread_mutex_destroy(&wt.mu);
    pthread_cond_destroy(&wt.cv);
    return rc;
}

void log_writer_stop(struct log_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    pthread_cond_broadcast(&w->nonempty);
    pthread_cond_broadcast(&w->nonfull);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->nonempty);
    pthread_cond_destroy(&w->nonfull);
    for (unsigned b = 0; b < 2; b++) {
        free(w->in[b]);
        free(w->res[b]);
    }
    free(w);
}

void log_writer_stats(struct log_writer *w, struct log_writer_stats *out)
{
    out->batches = w->batches;
    out->events = w->events;
    out->duplicates = w->duplicates;
    out->conflicts = w->conflicts;
    out->encoded_ahead = w->encoded_ahead;
    out->commit_ns_total = w->commit_ns;
    uint64_t acc = 0;
    for (unsigned i = 0; i < LOG_BATCH_BUCKETS; i++)
        out->batch_hist[i] = acc += w->batch_hist[i];
    acc = 0;
    for (unsigned i = 0; i <= LOG_COMMIT_BUCKETS; i++)
        out->commit_hist[i] = acc += w->commit_hist[i];
}
