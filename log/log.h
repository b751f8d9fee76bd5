/*
 * log.h — the immutable, hash-chained event log (DATA/log, LMDB).
 *
 * The log is the only source of truth: it is appended, never updated or
 * deleted through this interface. Everything else is derived from it.
 *
 * DBIs of DATA/log:
 *
 *   events   key: seq (u64, big-endian)        value: envelope (msgpack, below)
 *   meta     "version" -> u32 BE (LOG_FORMAT_VERSION)
 *            "head"    -> seq u64 BE | hash [32]
 *            "maxtime" -> the dedup clock, i64 BE (biased)
 *
 * and, derived from the events and kept in their own environment
 * DATA/log/index (committed after the log, without fsync; rebuilt from the
 * log when needed — log/index.c):
 *
 *   keys     key: tlen u8 | tenant | key       value (DUPSORT, DUPFIXED): seq u64 BE
 *   dedup    key: tlen u8 | tenant | id        value: seq u64 BE | time i64 BE
 *   dedup_at key: time u64 BE (biased) | seq   value: tlen u8 | tenant | id
 *
 * The envelope, a msgpack map of 11 entries in this canonical order:
 *
 *   +------+-----+------+----------+------+--------+-----+----+--------+---------+------+------+
 *   | 0x8b | seq | time | ingested | type | tenant | key | id | source | payload | prev | hash |
 *   +------+-----+------+----------+------+--------+-----+----+--------+---------+------+------+
 *     map    u64   i64     i64       str    str      str   str  str      map       bin32  bin32
 *                                                          or nil
 *   each entry is a fixstr key ("seq", "time", …) followed by its value.
 *
 *   hash = SHA-256(prev || 0x8a || entries seq..prev)
 *
 * i.e. the hash covers prev and the canonical msgpack of the envelope
 * without `hash` (a map of 10 entries, header 0x8a). The first entry's prev
 * is 32 zero bytes. Because prev and hash are fixed-size and last, the
 * payload span and both hashes are found without parsing the payload, so
 * `verify` never decodes a payload.
 */
#ifndef CAIRN_LOG_H
#define CAIRN_LOG_H

#include "common.h"

#define LOG_FORMAT_VERSION 1
#define LOG_HASH_LEN 32

struct log;        /* an open DATA/log environment */
struct log_writer; /* the single writer thread and its bounded queue */

struct log_config {
    const char *dir;         /* the DATA/log directory (created) */
    bool readonly;           /* open for reading only */
    int64_t dedup_window_ns; /* 0: CAIRN_DEDUP_WINDOW_NS_DEFAULT */
    size_t map_size;         /* 0: CAIRN_MAP_SIZE_DEFAULT; grows by itself */
    unsigned batch_max;      /* writer: events per commit (0: default) */
    unsigned batch_wait_us;  /* writer: wait for a fuller batch */
    unsigned queue_max;      /* writer: events queued (0: default) */
};

/* ====================================================================== opening */

/* Opens the log. Checks the format version and reads the head. */
int log_open(struct log **out, const struct log_config *cfg);
/* Commits the index entries of the appends so far (the writer does this
 * when its queue stays empty for 20 ms and when it stops; the indexer thread when
 * CAIRN_INDEX_COMMIT_* is reached; log_close always). A failure only leaves
 * the index behind the log: it is rebuilt from the log before the next
 * append. Waits for the indexer. Between a batch's decision and its
 * log commit (another thread calling this) it commits nothing. */
int log_index_flush(struct log *log);
/* Closes the log. Any writer must be stopped first. */
void log_close(struct log *log);
struct cairn_env *log_env(struct log *log);
/* The environment of the derived indexes (keys, dedup, dedup_at: see
 * log/index.c), NULL for a reader of a log that was never indexed. */
struct cairn_env *log_index_env(struct log *log);

/* ====================================================================== appending */

/* One input ready for the log: validated by the caller (engine/ingest).
 * All pointers are borrowed until the append that takes it has finished. */
struct log_input {
    struct cairn_str type, tenant, key, id, source; /* id.n == 0: no idempotency id */
    int64_t time;                                   /* event time, ns */
    const uint8_t *payload;                         /* msgpack map */
    size_t payload_len;
    int64_t expected_seq; /* -1: unchecked; 0: the entity has no event yet */
};

/* What became of one input. */
struct log_result {
    int rc;              /* 0, CAIRN_ECONFLICT, CAIRN_ETOOBIG or a failure */
    uint64_t seq;        /* the seq assigned (or the original one when duplicate) */
    bool duplicate;      /* the id was seen within the dedup window */
    uint64_t actual_seq; /* on CAIRN_ECONFLICT: the entity's last seq */
};

/* Appends n inputs in one durable transaction, from the calling thread.
 * Only one thread may append at a time (the writer thread, or a tool that
 * owns the log). results[i] tells what became of inputs[i]; the function
 * itself fails only when nothing was appended (I/O, database). */
int log_append(struct log *log, const struct log_input *inputs, struct log_result *results,
               size_t n);

/* ====================================================================== the writer thread */

/* A producer's request: n inputs, answered in results. `done` runs on the
 * writer thread once the commit holding them returned (or the request
 * failed as a whole with `rc`); it must be quick — signal a waiter and
 * return. The request and its inputs stay owned by the producer. */
struct log_req {
    const struct log_input *inputs;
    struct log_result *results;
    size_t n;
    int rc; /* set before done: 0, or the failure of the whole request */
    void (*done)(struct log_req *req);
    void *arg;
    struct log_req *next_; /* private to the writer */
};

/* Called on the writer thread after each durable log commit, with the
 * range of seqs it made durable (first > last when only duplicates). The
 * engine applies handlers here. */
typedef void (*log_commit_fn)(void *arg, uint64_t first_seq, uint64_t last_seq);

int log_writer_start(struct log_writer **out, struct log *log, log_commit_fn on_commit, void *arg);
/* Queues a request. With block, waits while the queue is full; without,
 * answers CAIRN_EBUSY. CAIRN_ETOOBIG if n exceeds the queue itself,
 * CAIRN_ECLOSED once stopping. When it returns an error, done is never
 * called. */
int log_writer_submit(struct log_writer *w, struct log_req *req, bool block);
/* Appends and waits: submit + wait for done. For tools and tests. */
int log_writer_append_wait(struct log_writer *w, const struct log_input *inputs,
                           struct log_result *results, size_t n);
/* Drains the queue, stops and joins the thread, frees w. */
void log_writer_stop(struct log_writer *w);

/* Counters for /metrics and benchmarks (approximate while running). */
#define LOG_BATCH_BUCKETS 17  /* batch sizes <= 1, 2, 4, ... 65536 */
#define LOG_COMMIT_BUCKETS 12 /* commit latency <= 0.1 ms * 2^i, i < 12 (~205 ms), +Inf */
struct log_writer_stats {
    uint64_t batches, events, duplicates, conflicts;
    uint64_t encoded_ahead; /* batches the indexer encoded while the one before committed */
    uint64_t commit_ns_total;
    uint64_t batch_hist[LOG_BATCH_BUCKETS];       /* cumulative counts per bucket */
    uint64_t commit_hist[LOG_COMMIT_BUCKETS + 1]; /* last: +Inf */
};
void log_writer_stats(struct log_writer *w, struct log_writer_stats *out);

/* ====================================================================== reading */

/* A decoded envelope. Every pointer points into the stored value and is
 * valid until the read transaction it came from ends. */
struct log_event {
    uint64_t seq;
    int64_t time, ingested;
    struct cairn_str type, tenant, key, id, source; /* id.p == NULL: no id */
    const uint8_t *payload;
    size_t payload_len;
    const uint8_t *prev, *hash; /* LOG_HASH_LEN bytes each */
    const uint8_t *raw;         /* the whole stored envelope */
    size_t raw_len;
};

/* Decodes a stored envelope; checks its shape (not its hash). */
int log_event_decode(const uint8_t *p, size_t n, struct log_event *ev);
/* Recomputes the hash of a stored envelope into out[32]. */
void log_event_hash(const struct log_event *ev, uint8_t out[LOG_HASH_LEN]);
/* Appends the envelope as one JSON object (no newline) to out. */
int log_event_json(const struct log_event *ev, struct cairn_buf *out);

/* A read-only snapshot of the log (MVCC: never blocks the writer). */
struct log_snap;
int log_snap_begin(struct log *log, struct log_snap **out);
void log_snap_end(struct log_snap *s);
/* Head of the snapshot: seq 0 and a zero hash when empty. */
void log_snap_head(const struct log_snap *s, uint64_t *seq, uint8_t hash[LOG_HASH_LEN]);
/* The event with this seq; CAIRN_ENOTFOUND past the head. */
int log_snap_get(struct log_snap *s, uint64_t seq, struct log_event *ev);

/* Iterates the log in seq order from `from` (inclusive), or — when
 * tenant/key are given — one entity's events through the keys index. */
struct log_iter;
int log_iter_open(struct log_snap *s, uint64_t from, const struct cairn_str *tenant,
                  const struct cairn_str *key, struct log_iter **out);
/* 0 with *ev filled, CAIRN_ENOTFOUND at the end, or a failure. */
int log_iter_next(struct log_iter *it, struct log_event *ev);
void log_iter_close(struct log_iter *it);

/* The seq of the last event of tenant + key in the snapshot, 0 if none. */
int log_snap_last_of(struct log_snap *s, const struct cairn_str *tenant,
                     const struct cairn_str *key, uint64_t *seq);

/* Head without a snapshot. */
int log_head(struct log *log, uint64_t *seq, uint8_t hash[LOG_HASH_LEN]);

/* ====================================================================== verifying */

struct log_verify_report {
    bool ok;
    uint64_t events;            /* events checked */
    uint64_t bad_seq;           /* first failing seq when !ok */
    const char *reason;         /* static: "hash mismatch", "broken link", … */
    uint8_t head[LOG_HASH_LEN]; /* hash of the last event checked */
};

/* Walks seqs [from, to] (to == 0: the head), recomputing every hash and
 * checking every link. A failing entry is reported in r (the call returns
 * 0); the call fails only on I/O. */
int log_verify(struct log *log, uint64_t from, uint64_t to, struct log_verify_report *r);

#endif
