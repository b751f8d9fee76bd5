/*
 * log_int.h — shared between the files of log/ only.
 */
#ifndef CAIRN_LOG_INT_H
#define CAIRN_LOG_INT_H

#include "log.h"

#include <assert.h>
#include <openssl/evp.h>

/* The answer to a check (log_ix_check_post), valid once done. */
struct log_ix_answer {
    bool done;
    int rc;
    int64_t max_time; /* the dedup clock after the batch */
};

/* A batch encoded ahead: the indexer, once it has decided a batch posted
 * while the one before it commits (log_append_ahead), also encodes and
 * hashes its envelopes, so that the writer, when the commit returned, only
 * appends them — encoding and SHA-256 (~0.5 us an event) leave the
 * writer's chain of encode, commit, encode, commit... The chain it
 * continues is given with the post; the envelopes are byte for byte what
 * append_cursor would encode for the same decisions, seqs and ingested
 * times (log.c uses them only for that very batch, after the batch before
 * it became durable; otherwise it encodes as before). */
struct log_pre {
    /* given with the post (writer) */
    uint8_t prev[LOG_HASH_LEN]; /* the hash of the head before the batch */
    int64_t last_ingested;      /* the ingested time of that head */
    EVP_MD_CTX *md;             /* the indexer's digest context */
    /* filled by the indexer, read by the writer once the answer is done */
    bool ok;              /* encoded (else the writer encodes) */
    struct cairn_buf buf; /* prev || envelope of each accepted input, in order */
    size_t *at;           /* where each one starts in buf; at[count] = buf.len */
    size_t at_cap, count;
    uint8_t hash[LOG_HASH_LEN]; /* the hash of the batch's last event */
    int64_t ingested;           /* and its ingested time */
};

/* An open log. The events and the head live in `env` (DATA/log), committed
 * durably; the indexes derived from them (keys, dedup) live in `ienv`
 * (DATA/log/index), see index.c. */
struct log {
    struct cairn_env *env;
    int lock_fd;            /* DATA/log/writer.lock, held by the one process that appends */
    MDB_dbi events, meta;   /* in env: the log proper */
    struct cairn_env *ienv; /* DATA/log/index (NULL: a reader found none) */
    MDB_dbi keys, dedup, dedup_at, imeta; /* in ienv: derived, see index.c */
    bool index_stale;                     /* the index lags the log: catch up before use */
    uint64_t ireserved;                   /* bytes of the index file reserved on disk */
    /* The open index transaction, kept across group commits (see
     * CAIRN_INDEX_COMMIT_*), begun, used and ended on the indexer thread
     * only (index.c); NULL ix: a reader, or before the thread starts. */
    struct log_ix *ix;
    MDB_txn *itxn;
    uint64_t itxn_events; /* events it holds that are not committed */
    int64_t itxn_began;   /* CLOCK_MONOTONIC ns */
    struct log_config cfg;
    /* Appender state: touched only by the single appending thread. */
    uint64_t head_seq;
    uint8_t head_hash[LOG_HASH_LEN];
    uint64_t encoded_ahead; /* batches appended from a struct log_pre */
    int64_t max_time;       /* newest event time seen: the dedup clock */
    int64_t last_ingested;  /* ingested times never go backwards */
    struct cairn_buf enc;
    EVP_MD_CTX *md;
    /* A batch whose decisions were posted while the one before it was
     * committing (log_append_ahead): the next append of exactly that batch
     * takes them. Writer thread only. */
    struct {
        bool posted;
        const struct log_input *in;
        struct log_result *res;
        size_t n;
        int64_t wall;
        struct log_ix_answer ans;
        struct log_pre pre; /* its envelopes, when the indexer encoded them */
    } ahead;
};

/* Hands the appender the batch that comes next, if one is ready: its
 * inputs, where its results go, and how many (they must stay until that
 * batch is appended). */
typedef bool (*log_take_fn)(void *arg, const struct log_input **in, struct log_result **res,
                            size_t *n);
/* log_append, and once the batch is encoded, before its commit, asks take
 * for the next one and has the indexer decide it while the log commits
 * (the disk's wait is the longest part of a batch). The next call with
 * that very batch uses those decisions; a failed commit drops them. */
int log_append_ahead(struct log *log, const struct log_input *in, struct log_result *res, size_t n,
                     log_take_fn take, void *arg);

/* Encodes the envelope of `in` at `seq` into b and computes its hash.
 * On return the stored bytes are b->data + LOG_HASH_LEN, b->len -
 * LOG_HASH_LEN long (the first LOG_HASH_LEN bytes are prev, hashed). */
int log_envelope_encode(struct cairn_buf *b, EVP_MD_CTX *md, const struct log_input *in,
                        uint64_t seq, int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                        uint8_t hash[LOG_HASH_LEN]);

/* The same, appended to b (prev, then the stored bytes, from b->len on). */
int log_envelope_encode_append(struct cairn_buf *b, EVP_MD_CTX *md, const struct log_input *in,
                               uint64_t seq, int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                               uint8_t hash[LOG_HASH_LEN]);

/* log_event_hash with a caller's digest context (no allocation). */
void log_event_hash_md(EVP_MD_CTX *md, const struct log_event *ev, uint8_t out[LOG_HASH_LEN]);

/* The appender's head seq (the writer thread's view; no transaction). */
void log_head_cached(struct log *log, uint64_t *seq);
const struct log_config *log_config(struct log *log);
/* Batches appended from envelopes encoded ahead (writer thread). */
uint64_t log_encoded_ahead(struct log *log);

/* index.c — the derived indexes (keys, dedup, dedup_at). */
int log_index_open(struct log *log);
void log_index_close(struct log *log);
/* Indexes events (indexed, head] from the log; commits as it goes. */
int log_index_catch_up(struct log *log);
/* Adds one event to the indexes inside itxn. */
int log_index_put(struct log *log, MDB_txn *itxn, const struct cairn_str *tenant,
                  const struct cairn_str *key, const struct cairn_str *id, int64_t time,
                  uint64_t seq);
/* Begins the index transaction unless one is open. */
int log_index_begin(struct log *log);
/* Commits the open index transaction in the calling thread. */
int log_index_flush_here(struct log *log);
/* The indexer thread: started by log_open for a writer, stopped (after
 * committing) by log_index_close. */
int log_ix_start(struct log *log);
void log_ix_stop(struct log *log);
/* Decides a batch (duplicates, conflicts, seqs from log->head_seq) into
 * res; *max_time is the dedup clock before, then after the batch. The
 * indexer then writes the batch's entries while the caller commits. */
int log_ix_check(struct log *log, const struct log_input *in, struct log_result *res, size_t n,
                 int64_t wall, int64_t *max_time);
/* The same, posted: the seqs follow head_seq and the clock starts at
 * max_time; in and res must stay until the answer is done (log_ix_wait).
 * Posted while an earlier batch is not confirmed (deciding ahead), the
 * decisions assume that batch becomes durable: the caller must drop them
 * (confirm not durable, decide again) if it does not. Every check must be
 * confirmed once, in order. pre (optional): encode the decided batch too,
 * with `wall` as its ingested clock (struct log_pre). */
void log_ix_check_post(struct log *log, const struct log_input *in, struct log_result *res,
                       size_t n, int64_t wall, int64_t max_time, uint64_t head_seq,
                       struct log_pre *pre, struct log_ix_answer *ans);
/* Waits for a posted command's answer; its rc. */
int log_ix_wait(struct log *log, struct log_ix_answer *ans);
/* After the log commit of the oldest batch checked and not confirmed
 * (durable or not; n inputs, the clock max_time after it, the head
 * log->head_seq after it): the indexer keeps or drops it. Posted, not
 * waited for (commands are taken in order). */
void log_ix_confirm(struct log *log, bool durable, size_t n, int64_t max_time);
/* Whether an index commit waits for a check with no batch unconfirmed
 * before it (then the writer should not decide ahead). */
bool log_ix_commit_due(struct log *log);
/* The seq of the last event of tenant + key in txn (0: none). */
int log_last_of(MDB_txn *txn, MDB_dbi keys, const struct cairn_str *tenant,
                const struct cairn_str *key, uint64_t *seq);
/* Forgets the open index transaction (a failed batch may have added to
 * it): the index is then re-indexed from the log before the next append. */
void log_index_drop(struct log *log);
/* Records that the indexes cover the log up to seq (inside itxn). */
int log_index_mark(struct log *log, MDB_txn *itxn, uint64_t seq);
uint64_t log_bias(int64_t t);
int64_t log_unbias(uint64_t v);
size_t log_tenant_key(uint8_t *out, const struct cairn_str *tenant, const struct cairn_str *rest);

#endif
