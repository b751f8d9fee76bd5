/*
 * log_test.h — helpers shared by the log/ tests: scratch directories, inputs
 * built from JSON payloads, raw LMDB access to DATA/log (to corrupt it the
 * way a disk or an attacker would, and to count DBI entries).
 *
 * Header-only (static functions) so each test stays one binary.
 */
#ifndef CAIRN_LOG_TEST_H
#define CAIRN_LOG_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define NS 1000000000LL
/* 2026-11-21T10:00:00Z */
#define T0 (1795255200LL * NS)

/* ====================================================================== scratch dirs */

static inline int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Makes a fresh directory; returns its path in buf. */
static inline void scratch_new(char *buf, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, cap, "%s/cairn-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(buf))
        fail_msg("mkdtemp %s failed", buf);
}

static inline void scratch_free(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ====================================================================== inputs */

/* A log_input with its own storage. */
struct tin {
    struct log_input in;
    struct cairn_buf pl;
    char type[CAIRN_TYPE_MAX + 1], tenant[CAIRN_TENANT_MAX + 1], key[CAIRN_KEY_MAX + 1],
        id[CAIRN_ID_MAX + 1];
};

static inline void tin_set(struct tin *t, const char *type, const char *tenant, const char *key,
                           const char *id, int64_t time, const json_t *payload)
{
    snprintf(t->type, sizeof t->type, "%s", type);
    snprintf(t->tenant, sizeof t->tenant, "%s", tenant);
    snprintf(t->key, sizeof t->key, "%s", key ? key : "");
    snprintf(t->id, sizeof t->id, "%s", id ? id : "");
    cairn_buf_deinit(&t->pl);
    cairn_buf_init(&t->pl, CAIRN_PAYLOAD_MAX_CEILING);
    assert_int_equal(cairn_json_to_msgpack(payload, &t->pl, NULL), 0);
    t->in = (struct log_input){
        .type = {t->type, strlen(t->type)},
        .tenant = {t->tenant, strlen(t->tenant)},
        .key = {t->key, strlen(t->key)},
        .id = {t->id, strlen(t->id)},
        .source = {"test", 4},
        .time = time,
        .payload = t->pl.data,
        .payload_len = t->pl.len,
        .expected_seq = -1,
    };
}

/* The same with the payload given as JSON text. */
static inline void tin_setj(struct tin *t, const char *tenant, const char *key, const char *id,
                            int64_t time, const char *payload_json)
{
    json_error_t je;
    json_t *p = json_loads(payload_json, 0, &je);
    if (!p)
        fail_msg("bad payload in test: %s", je.text);
    tin_set(t, "telemetry", tenant, key, id, time, p);
    json_decref(p);
}

static inline void tin_free(struct tin *t)
{
    cairn_buf_deinit(&t->pl);
}

static inline struct tin *tins_new(size_t n)
{
    struct tin *t = calloc(n, sizeof *t);
    assert_non_null(t);
    return t;
}

static inline void tins_free(struct tin *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tin_free(&t[i]);
    free(t);
}

/* Appends t[0..n) in one batch through log_append; results into res. */
static inline void append_tins(struct log *log, struct tin *t, size_t n, struct log_result *res)
{
    struct log_input *in = calloc(n, sizeof *in);
    assert_non_null(in);
    for (size_t i = 0; i < n; i++)
        in[i] = t[i].in;
    assert_int_equal(log_append(log, in, res, n), 0);
    free(in);
}

/* Appends one input and returns its result. */
static inline struct log_result append1(struct log *log, const struct tin *t)
{
    struct log_result r;
    memset(&r, 0xa5, sizeof r);
    assert_int_equal(log_append(log, &t->in, &r, 1), 0);
    return r;
}

static inline struct log *open_log(const char *dir, int64_t window_ns)
{
    struct log *log = NULL;
    struct log_config cfg = {.dir = dir, .dedup_window_ns = window_ns};
    assert_int_equal(log_open(&log, &cfg), 0);
    return log;
}

static inline uint64_t head_seq(struct log *log)
{
    uint64_t seq = 0;
    assert_int_equal(log_head(log, &seq, NULL), 0);
    return seq;
}

/* Reads the payload of the stored event `seq` as a jansson value. */
static inline json_t *stored_payload(struct log *log, uint64_t seq)
{
    struct log_snap *s;
    struct log_event ev;
    json_t *v = NULL;
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_snap_get(s, seq, &ev), 0);
    assert_int_equal(ev.seq, seq);
    assert_int_equal(cairn_msgpack_to_jansson(ev.payload, ev.payload_len, &v, NULL, NULL), 0);
    log_snap_end(s);
    return v;
}

/* ====================================================================== raw LMDB */

/* Opens DATA/log with plain LMDB calls (the log itself must be closed:
 * LMDB forbids opening one environment twice in a process). */
static inline MDB_env *raw_open(const char *dir, unsigned flags)
{
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_set_mapsize(env, 1ull << 30), 0);
    int rc = mdb_env_open(env, dir, flags, 0644);
    if (rc)
        fail_msg("mdb_env_open %s: %s", dir, mdb_strerror(rc));
    return env;
}

/* Copies the stored envelope of seq into a new buffer (*n bytes). */
static inline uint8_t *raw_get(const char *dir, uint64_t seq, size_t *n)
{
    MDB_env *env = raw_open(dir, MDB_RDONLY);
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t k8[8];
    cairn_be64_put(k8, seq);
    MDB_val k = {8, k8}, v;
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "events", 0, &dbi), 0);
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    uint8_t *copy = malloc(v.mv_size);
    assert_non_null(copy);
    memcpy(copy, v.mv_data, v.mv_size);
    *n = v.mv_size;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return copy;
}

/* Overwrites the stored envelope of seq (what no API may do). */
static inline void raw_put(const char *dir, uint64_t seq, const uint8_t *p, size_t n)
{
    MDB_env *env = raw_open(dir, 0);
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t k8[8];
    cairn_be64_put(k8, seq);
    MDB_val k = {8, k8}, v = {n, (void *)p};
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "events", 0, &dbi), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Entries of a DBI of an open log, read through a snapshot of its env
 * (the derived indexes live in the index environment, and are committed
 * lazily: flush them first, from the appending thread). */
static inline size_t dbi_entries(struct log *log, const char *name)
{
    bool derived = !strcmp(name, "keys") || !strcmp(name, "dedup") || !strcmp(name, "dedup_at");
    if (derived)
        assert_int_equal(log_index_flush(log), 0);
    struct cairn_env *env = derived ? log_index_env(log) : log_env(log);
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat st;
    assert_int_equal(cairn_env_read_begin(env, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    assert_int_equal(mdb_stat(txn, dbi, &st), 0);
    assert_int_equal(cairn_env_read_commit(env, txn), 0);
    return st.ms_entries;
}

#endif
