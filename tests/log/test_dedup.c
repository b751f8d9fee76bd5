/*
 * test_dedup.c — idempotency ids and expected_seq in the log.
 *
 * The dedup window runs on event time (the newest event time the log has
 * seen, never ahead of the wall clock), so every case here is exact: a
 * window of 10 s and event times in the past chosen around its edges.
 */
#include "log_test.h"

#include <stdlib.h>

#define WINDOW (10 * NS)

struct fx {
    char dir[512];
    struct log *log;
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    scratch_new(f->dir, sizeof f->dir);
    f->log = open_log(f->dir, WINDOW);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    log_close(f->log);
    scratch_free(f->dir);
    free(f);
    return 0;
}

/* Appends one event; checks its result. */
static void expect_append(struct log *log, const char *tenant, const char *key, const char *id,
                          int64_t time, uint64_t want_seq, bool want_dup)
{
    struct tin t = {{{0}}};
    tin_setj(&t, tenant, key, id, time, "{\"v\":1}");
    uint64_t before = head_seq(log);
    struct log_result r = append1(log, &t);
    if (r.rc != 0 || r.seq != want_seq || r.duplicate != want_dup)
        fail_msg("%s/%s id %s at T0%+lld ms: rc %d seq %llu dup %d; want seq %llu dup %d", tenant,
                 key, id ? id : "-", (long long)((time - T0) / 1000000), r.rc,
                 (unsigned long long)r.seq, r.duplicate, (unsigned long long)want_seq, want_dup);
    /* a duplicate appends nothing; anything else appends exactly one */
    assert_int_equal(head_seq(log), want_dup ? before : before + 1);
    tin_free(&t);
}

static void test_window(void **state)
{
    struct fx *f = *state;
    struct log *log = f->log;
    expect_append(log, "acme", "k", "evt-1", T0, 1, false);
    /* a retry within the window answers the original seq */
    expect_append(log, "acme", "k", "evt-1", T0 + NS, 1, true);
    /* even with another key or an earlier time */
    expect_append(log, "acme", "other", "evt-1", T0 - NS, 1, true);
    /* the same id under another tenant is another event */
    expect_append(log, "beta", "k", "evt-1", T0, 2, false);
    expect_append(log, "beta", "k", "evt-1", T0, 2, true);
    /* the id is compared whole: a prefix or extension is a different id */
    expect_append(log, "acme", "k", "evt-", T0, 3, false);
    expect_append(log, "acme", "k", "evt-10", T0, 4, false);
    /* no id: never deduplicated */
    expect_append(log, "acme", "k", NULL, T0, 5, false);
    expect_append(log, "acme", "k", NULL, T0, 6, false);
    /* exactly at the edge of the window it is still a duplicate */
    expect_append(log, "acme", "k", "evt-1", T0 + WINDOW, 1, true);
    /* one nanosecond later it is not: a new event with a new seq */
    expect_append(log, "acme", "k", "evt-1", T0 + WINDOW + 1, 7, false);
    /* and from then on the new seq is what retries get */
    expect_append(log, "acme", "k", "evt-1", T0 + WINDOW + 2, 7, true);
    /* beta's evt-1 (time T0) is now outside the window of the log clock
     * (T0 + WINDOW + 1): accepted again. The window is in event time, so
     * an event that is itself older than the window is late: its id is
     * forgotten at once and a retry of it is appended again. */
    expect_append(log, "beta", "k", "evt-1", T0, 8, false);
    expect_append(log, "beta", "k", "evt-1", T0, 9, false);
    /* one inside the window is remembered */
    expect_append(log, "beta", "k", "evt-1", T0 + 5 * NS, 10, false);
    expect_append(log, "beta", "k", "evt-1", T0 + 5 * NS, 10, true);

    /* the window survives a reopen: the log clock is stored */
    log_close(log);
    f->log = log = open_log(f->dir, WINDOW);
    expect_append(log, "acme", "k", "evt-1", T0 + WINDOW, 7, true);
    expect_append(log, "acme", "k", "evt-", T0 + WINDOW, 11, false); /* T0: expired */
    expect_append(log, "acme", "k", "evt-", T0 + WINDOW, 11, true);
    struct log_verify_report r;
    assert_int_equal(log_verify(log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 11);
}

/* One tenant's event dated far in the future must not expire the ids of
 * everyone else: the dedup clock never runs ahead of the wall clock. */
static void test_future_time(void **state)
{
    struct fx *f = *state;
    struct log *log = f->log;
    int64_t now = cairn_now_ns();
    expect_append(log, "acme", "k", "evt-1", now, 1, false);
    expect_append(log, "evil", "k", NULL, CAIRN_TIME_MAX, 2, false);
    expect_append(log, "acme", "k", "evt-1", now, 1, true);
    /* and it survives a reopen (the stored clock is capped too) */
    log_close(log);
    f->log = log = open_log(f->dir, WINDOW);
    expect_append(log, "acme", "k", "evt-1", now, 1, true);
}

/* Writes key = value (raw bytes) into the index environment's meta DBI of
 * a closed log: what a crash or a reboot leaves behind. */
static void index_meta_put(const char *dir, const char *key, const void *val, size_t n)
{
    char path[600];
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    snprintf(path, sizeof path, "%s/index", dir);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, path, 0, 0644), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    MDB_val k = {strlen(key), (void *)key}, v = {n, (void *)val};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Entity reads and dedup answers after the index was rebuilt from the log. */
static void expect_indexed(struct log *log, uint64_t head)
{
    struct log_snap *s;
    uint64_t last;
    struct cairn_str t = {"acme", 4}, k = {"k", 1};
    assert_int_equal(log_snap_begin(log, &s), 0);
    assert_int_equal(log_snap_last_of(s, &t, &k, &last), 0);
    assert_int_equal(last, head);
    log_snap_end(s);
    expect_append(log, "acme", "k", "evt-1", T0, 1, true); /* still a duplicate */
}

/* The indexes are derived (log/index.c): whatever happened to them — gone,
 * lagging the log after a crash between the two commits, or unclean across
 * a reboot — reopening rebuilds them from the log. */
static void test_index_rebuild(void **state)
{
    struct fx *f = *state;
    char cmd[700];
    expect_append(f->log, "acme", "k", "evt-1", T0, 1, false);
    for (int i = 0; i < 9; i++)
        expect_append(f->log, "acme", "k", NULL, T0 + i, 2 + (uint64_t)i, false);
    log_close(f->log);

    /* gone */
    snprintf(cmd, sizeof cmd, "rm -rf '%s/index'", f->dir);
    assert_int_equal(system(cmd), 0);
    f->log = open_log(f->dir, WINDOW);
    expect_indexed(f->log, 10);
    log_close(f->log);

    /* lagging: the index says it covers only seq 3 */
    uint8_t three[8] = {0, 0, 0, 0, 0, 0, 0, 3};
    index_meta_put(f->dir, "indexed", three, 8);
    f->log = open_log(f->dir, WINDOW);
    expect_indexed(f->log, 10);
    log_close(f->log);

    /* unclean, written under another boot: dropped and rebuilt */
    uint8_t zero[8] = {0};
    index_meta_put(f->dir, "clean", zero, 8);
    index_meta_put(f->dir, "boot", "another-boot", 12);
    f->log = open_log(f->dir, WINDOW);
    expect_indexed(f->log, 10);
    assert_int_equal(dbi_entries(f->log, "dedup"), 1);
}

static void test_batch(void **state)
{
    struct fx *f = *state;
    struct tin t[6];
    memset(t, 0, sizeof t);
    tin_setj(&t[0], "acme", "k", "a", T0, "{\"n\":0}");
    tin_setj(&t[1], "acme", "k", "a", T0, "{\"n\":1}"); /* dup of 0 in the same batch */
    tin_setj(&t[2], "acme", "k", "b", T0, "{\"n\":2}");
    tin_setj(&t[3], "beta", "k", "a", T0, "{\"n\":3}"); /* other tenant */
    tin_setj(&t[4], "acme", "k", "b", T0, "{\"n\":4}"); /* dup of 2 */
    tin_setj(&t[5], "acme", "k", "a", T0, "{\"n\":5}"); /* dup of 0 again */
    struct log_result res[6];
    append_tins(f->log, t, 6, res);
    static const uint64_t want_seq[6] = {1, 1, 2, 3, 2, 1};
    static const bool want_dup[6] = {false, true, false, false, true, true};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(res[i].rc, 0);
        assert_int_equal(res[i].seq, want_seq[i]);
        assert_int_equal(res[i].duplicate, want_dup[i]);
    }
    assert_int_equal(head_seq(f->log), 3);
    /* the stored events are the first of each id */
    json_t *p = stored_payload(f->log, 2);
    assert_int_equal(json_integer_value(json_object_get(p, "n")), 2);
    json_decref(p);
    p = stored_payload(f->log, 3);
    assert_int_equal(json_integer_value(json_object_get(p, "n")), 3);
    json_decref(p);
    /* a batch of only duplicates appends nothing and keeps the chain */
    append_tins(f->log, t, 2, res);
    assert_true(res[0].duplicate && res[1].duplicate);
    assert_int_equal(res[0].seq, 1);
    assert_int_equal(head_seq(f->log), 3);
    struct log_verify_report r;
    assert_int_equal(log_verify(f->log, 0, 0, &r), 0);
    assert_true(r.ok);
    assert_int_equal(r.events, 3);
    for (int i = 0; i < 6; i++)
        tin_free(&t[i]);
}

/* Appends `n` events with ids "<prefix>-<i>" at time `time`, one batch. */
static void append_ids(struct log *log, const char *prefix, unsigned n, int64_t time)
{
    struct tin *t = tins_new(n);
    struct log_result *res = calloc(n, sizeof *res);
    char id[64];
    for (unsigned i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%u", prefix, i);
        tin_setj(&t[i], "acme", "k", id, time, "{}");
    }
    append_tins(log, t, n, res);
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(res[i].rc, 0);
        assert_false(res[i].duplicate);
    }
    free(res);
    tins_free(t, n);
}

static void test_prune(void **state)
{
    struct fx *f = *state;
    struct log *log = f->log;
    /* 5 000 ids at T0 */
    append_ids(log, "old", 5000, T0);
    assert_int_equal(dbi_entries(log, "dedup"), 5000);
    assert_int_equal(dbi_entries(log, "dedup_at"), 5000);
    /* an event 100 s later moves the clock; at most CAIRN_DEDUP_PRUNE_PER_BATCH
     * expired ids go per batch (pruning never stalls ingest) */
    expect_append(log, "acme", "k", NULL, T0 + 100 * NS, 5001, false);
    assert_int_equal(dbi_entries(log, "dedup"), 5000 - CAIRN_DEDUP_PRUNE_PER_BATCH);
    assert_int_equal(dbi_entries(log, "dedup_at"), 5000 - CAIRN_DEDUP_PRUNE_PER_BATCH);
    /* the next batch removes the rest */
    expect_append(log, "acme", "k", NULL, T0 + 100 * NS, 5002, false);
    assert_int_equal(dbi_entries(log, "dedup"), 0);
    assert_int_equal(dbi_entries(log, "dedup_at"), 0);
    /* and the ids are free again */
    expect_append(log, "acme", "k", "old-17", T0 + 100 * NS, 5003, false);
    expect_append(log, "acme", "k", "old-17", T0 + 100 * NS, 5003, true);
    assert_int_equal(dbi_entries(log, "dedup"), 1);

    /* steady state: 30 batches of 1 000 ids, one second apart; the window
     * (10 s, inclusive) holds the ids of the last 11 batches */
    int64_t base = T0 + 200 * NS;
    char prefix[16];
    for (int b = 0; b < 30; b++) {
        snprintf(prefix, sizeof prefix, "s%d", b);
        append_ids(log, prefix, 1000, base + b * NS);
    }
    assert_int_equal(dbi_entries(log, "dedup"), 11 * 1000);
    assert_int_equal(dbi_entries(log, "dedup_at"), 11 * 1000);
    uint64_t head = head_seq(log);
    /* batch 19 (10 s before the clock) is still remembered; batch 18 is not */
    struct tin t = {{{0}}};
    tin_setj(&t, "acme", "k", "s19-999", base + 29 * NS, "{}");
    struct log_result r = append1(log, &t);
    assert_true(r.duplicate);
    assert_int_equal(r.seq, head - 10 * 1000);
    tin_setj(&t, "acme", "k", "s18-0", base + 29 * NS, "{}");
    r = append1(log, &t);
    assert_false(r.duplicate);
    assert_int_equal(r.seq, head + 1);
    tin_free(&t);
    struct log_verify_report vr;
    assert_int_equal(log_verify(log, 0, 0, &vr), 0);
    assert_true(vr.ok);
    assert_int_equal(vr.events, head + 1);
}

/* A re-used id: pruning the old entry must not remove the new one. */
static void test_prune_reused(void **state)
{
    struct fx *f = *state;
    struct log *log = f->log;
    expect_append(log, "acme", "k", "x", T0, 1, false);
    expect_append(log, "acme", "k", "x", T0 + WINDOW + 1, 2, false); /* re-used */
    /* a time that expires the first entry (T0) but not the second */
    expect_append(log, "acme", "k", NULL, T0 + WINDOW + 5, 3, false);
    expect_append(log, "acme", "k", "x", T0 + WINDOW + 6, 2, true);
    assert_int_equal(dbi_entries(log, "dedup"), 1);
    assert_int_equal(dbi_entries(log, "dedup_at"), 1);
}

static struct log_result append_expect(struct log *log, const char *tenant, const char *key,
                                       const char *id, int64_t expected)
{
    struct tin t = {{{0}}};
    tin_setj(&t, tenant, key, id, T0, "{}");
    t.in.expected_seq = expected;
    struct log_result r = append1(log, &t);
    tin_free(&t);
    return r;
}

static void test_expected_seq(void **state)
{
    struct fx *f = *state;
    struct log *log = f->log;
    /* 0 on a new entity: accepted */
    struct log_result r = append_expect(log, "acme", "dev-1", NULL, 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.seq, 1);
    /* 0 again: the entity has seq 1 now */
    r = append_expect(log, "acme", "dev-1", NULL, 0);
    assert_int_equal(r.rc, CAIRN_ECONFLICT);
    assert_int_equal(r.actual_seq, 1);
    assert_false(r.duplicate);
    assert_int_equal(head_seq(log), 1);
    /* another entity's events do not count */
    r = append_expect(log, "acme", "dev-2", NULL, 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.seq, 2);
    r = append_expect(log, "beta", "dev-1", NULL, 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.seq, 3);
    /* the right value is accepted */
    r = append_expect(log, "acme", "dev-1", NULL, 1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.seq, 4);
    /* a stale value, a future value */
    r = append_expect(log, "acme", "dev-1", NULL, 1);
    assert_int_equal(r.rc, CAIRN_ECONFLICT);
    assert_int_equal(r.actual_seq, 4);
    r = append_expect(log, "acme", "dev-1", NULL, 99);
    assert_int_equal(r.rc, CAIRN_ECONFLICT);
    assert_int_equal(r.actual_seq, 4);
    /* -1: unchecked */
    r = append_expect(log, "acme", "dev-1", NULL, -1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.seq, 5);
    assert_int_equal(head_seq(log), 5);

    /* within one batch: the second sees the first */
    struct tin t[3];
    memset(t, 0, sizeof t);
    tin_setj(&t[0], "acme", "dev-3", NULL, T0, "{}");
    tin_setj(&t[1], "acme", "dev-3", NULL, T0, "{}");
    tin_setj(&t[2], "acme", "dev-3", NULL, T0, "{}");
    t[0].in.expected_seq = 0;
    t[1].in.expected_seq = 0; /* stale by then */
    t[2].in.expected_seq = 6; /* t[0]'s seq */
    struct log_result res[3];
    append_tins(log, t, 3, res);
    assert_int_equal(res[0].rc, 0);
    assert_int_equal(res[0].seq, 6);
    assert_int_equal(res[1].rc, CAIRN_ECONFLICT);
    assert_int_equal(res[1].actual_seq, 6);
    assert_int_equal(res[2].rc, 0);
    assert_int_equal(res[2].seq, 7);
    for (int i = 0; i < 3; i++)
        tin_free(&t[i]);

    /* a retry of an accepted conditional append is answered by its id, not
     * refused as a conflict: the producer gets its original seq back */
    r = append_expect(log, "acme", "dev-4", "op-1", 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.seq, 8);
    r = append_expect(log, "acme", "dev-4", "op-1", 0);
    assert_int_equal(r.rc, 0);
    assert_true(r.duplicate);
    assert_int_equal(r.seq, 8);
    /* a refused conditional append does not burn its id */
    r = append_expect(log, "acme", "dev-4", "op-2", 0);
    assert_int_equal(r.rc, CAIRN_ECONFLICT);
    assert_int_equal(r.actual_seq, 8);
    r = append_expect(log, "acme", "dev-4", "op-2", 8);
    assert_int_equal(r.rc, 0);
    assert_false(r.duplicate);
    assert_int_equal(r.seq, 9);
    assert_int_equal(head_seq(log), 9);
}

/* The indexer keeps keys entries in memory and puts them a sorted run at a
 * time (log/index.c, WB_FLUSH_RECS = 32 768). Across many runs, in batches
 * of uneven sizes: every expected_seq, duplicate and entity read must see
 * every entry before it, whether still in memory or in the index. */
#define WB_EVENTS 80000
#define WB_KEYS 97

static void test_write_behind(void **state)
{
    struct fx *f = *state;
    struct log *log = f->log;
    uint64_t last[WB_KEYS] = {0}, count[WB_KEYS] = {0}, seq = 0;
    char key[16], id[32];
    struct tin *t = tins_new(1500);
    struct log_result *res = calloc(1500, sizeof *res);
    uint64_t *seq_of = calloc(WB_EVENTS, sizeof *seq_of); /* input -> the seq it is answered */
    assert_non_null(seq_of);
    for (unsigned at = 0, size = 1; at < WB_EVENTS; at += size, size = size % 1400 + 101) {
        unsigned n = size < WB_EVENTS - at ? size : WB_EVENTS - at;
        for (unsigned i = 0; i < n; i++) {
            unsigned k = (at + i) * 31 % WB_KEYS;
            snprintf(key, sizeof key, "k%u", k);
            /* every 7th input retries an id of 40 inputs before */
            unsigned idn = (at + i) % 7 == 6 && at + i >= 40 ? at + i - 40 : at + i;
            snprintf(id, sizeof id, "id-%u", idn);
            tin_setj(&t[i], "acme", key, id, T0 + (int64_t)(at + i) * 1000, "{}");
            t[i].in.expected_seq = -1;
            if (idn == at + i) { /* not a retry: it will get seq + 1 */
                t[i].in.expected_seq = (int64_t)last[k];
                last[k] = ++seq;
                count[k]++;
            }
            seq_of[at + i] = seq_of[idn] ? seq_of[idn] : seq; /* a retry: the original's */
        }
        append_tins(log, t, n, res);
        for (unsigned i = 0; i < n; i++) {
            bool retry = (at + i) % 7 == 6 && at + i >= 40;
            if (res[i].rc != 0 || res[i].duplicate != retry || res[i].seq != seq_of[at + i])
                fail_msg("input %u: rc %d dup %d seq %llu (actual_seq %llu, expected %lld)", at + i,
                         res[i].rc, res[i].duplicate, (unsigned long long)res[i].seq,
                         (unsigned long long)res[i].actual_seq, (long long)t[i].in.expected_seq);
        }
    }
    /* what readers see: the last seq and the events of every entity */
    struct log_snap *s;
    assert_int_equal(log_snap_begin(log, &s), 0);
    for (unsigned k = 0; k < WB_KEYS; k++) {
        snprintf(key, sizeof key, "k%u", k);
        struct cairn_str tn = {"acme", 4}, kn = {key, strlen(key)};
        uint64_t got = 0, n = 0, prev = 0;
        assert_int_equal(log_snap_last_of(s, &tn, &kn, &got), 0);
        assert_int_equal(got, last[k]);
        struct log_iter *it;
        struct log_event ev;
        assert_int_equal(log_iter_open(s, 1, &tn, &kn, &it), 0);
        while (log_iter_next(it, &ev) == 0) {
            assert_true(ev.seq > prev);
            assert_int_equal(ev.key.n, kn.n);
            assert_memory_equal(ev.key.p, key, kn.n);
            prev = ev.seq;
            n++;
        }
        log_iter_close(it);
        assert_int_equal(n, count[k]);
        assert_int_equal(prev, last[k]);
    }
    log_snap_end(s);
    assert_int_equal(dbi_entries(log, "keys"), seq);
    assert_int_equal(dbi_entries(log, "dedup"), seq);
    free(res);
    free(seq_of);
    tins_free(t, 1500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_window, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_future_time, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_index_rebuild, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_batch, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_prune, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_prune_reused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_expected_seq, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_write_behind, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
