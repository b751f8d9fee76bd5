/*
 * test_engine.c — the engine's side of the handler contract, with handlers
 * defined here (struct engine_config.handlers) over a scratch data dir:
 *
 *  - isolation: hctx_db refuses names that would reach outside the
 *    handler's own "<handler>.<name>" space, two handlers' DBIs of the same
 *    name are separate, and nothing else appears in DATA/state;
 *  - ordering: engine_order refuses cycles (naming the handlers), self
 *    loops, duplicate names, wrong versions, reserved and bad names; it
 *    puts producers before consumers whatever the table order;
 *  - dispatch: derived events reach their consumers in the same catch-up,
 *    carry the cause's seq and time, get dense dseqs per stream (also
 *    across an aborted batch and a reopen), and nobody sees its own; an
 *    input every consumer of which reads raw (raw_inputs) comes without a
 *    body, serially and in parallel, and with one when another needs it;
 *  - exactly once: closing/reopening, a "crash" between log and state
 *    commit, apply_to, a failing batch and the writer path never apply an
 *    input twice or skip one; replay gives the same digest;
 *  - after an aborted batch every handler is closed and opened again, so
 *    in-memory caches never keep work that did not commit;
 *  - the parallel apply (handler.h, `concurrent`) gives every handler the
 *    events of the serial apply in the same order, and the same state;
 *  - a replay's first map (engine_replay_map): the power of two above half
 *    the log, scaled to --to, within the ceiling; the default when that is
 *    no more, or when the disk has less than twice it free.
 *
 * Inputs go straight into the log with log_append (the engine owns the
 * log; its writer is not started), so their types need no schema.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

#define NS 1000000000LL
#define T0 (1795255200LL * NS) /* 2026-11-21T10:00:00Z */

/* ====================================================================== scratch dirs */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void scratch_new(char *buf, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, cap, "%s/cairn-test-engine-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(buf))
        fail_msg("mkdtemp %s failed", buf);
}

static void scratch_free(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Tests that need a data dir get one as their state; the teardown removes
 * it even when the test fails. */
static int dir_setup(void **state)
{
    char *dir = malloc(256);
    if (!dir)
        return -1;
    scratch_new(dir, 256);
    *state = dir;
    return 0;
}

static int dir_teardown(void **state)
{
    scratch_free(*state);
    free(*state);
    return 0;
}

/* ====================================================================== engine helpers */

static struct engine_config config_for(const char *dir, const struct handler *const *table)
{
    return (struct engine_config){.data = dir, .schema_dir = CAIRN_SCHEMA_DIR, .handlers = table};
}

static struct engine *open_engine(const struct engine_config *cfg)
{
    struct engine *eng = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = engine_open(&eng, cfg, &e);
    if (rc)
        fail_msg("engine_open: %s: %s", cairn_strerror(rc), e.message);
    return eng;
}

/* Appends inputs n = first .. first + count - 1 of type "in": tenant "t1",
 * key "k<n % 5>", event time T0 + n s, payload {"n": n}. */
static void append_inputs(struct log *log, long first, long count)
{
    for (long n = first; n < first + count; n++) {
        uint8_t pl[64];
        char key[16];
        struct cairn_buf b = {.data = pl, .cap = sizeof pl, .max = sizeof pl};
        struct mpw w;
        mpw_init(&w, &b);
        msgpack_pack_map(&w.pk, 1);
        mpw_kv_i64(&w, "n", n);
        assert_int_equal(mpw_finish(&w), 0);
        snprintf(key, sizeof key, "k%ld", n % 5);
        struct log_input in = {.type = {"in", 2},
                               .tenant = {"t1", 2},
                               .key = {key, strlen(key)},
                               .source = {"test", 4},
                               .time = T0 + n * NS,
                               .payload = b.data,
                               .payload_len = b.len,
                               .expected_seq = -1};
        struct log_result r;
        assert_int_equal(log_append(log, &in, &r, 1), 0);
        assert_int_equal(r.rc, 0);
        assert_int_equal(r.seq, (uint64_t)n);
    }
}

static uint64_t log_head_of(struct engine *eng)
{
    uint64_t head;
    assert_int_equal(log_head(engine_log(eng), &head, NULL), 0);
    return head;
}

/* Also for handlers marked derived_raw: a NULL body is decoded here. */
static int64_t payload_int(const struct event *ev, const char *name)
{
    int64_t v = -1;
    msgpack_object body;
    msgpack_zone zone;
    size_t off = 0;
    const msgpack_object *b = ev->body;
    assert_true(msgpack_zone_init(&zone, 256));
    if (!b && msgpack_unpack((const char *)ev->payload, ev->payload_len, &off, &zone, &body) ==
                  MSGPACK_UNPACK_SUCCESS)
        b = &body;
    bool ok = mp_i64(mp_get(b, name), &v);
    msgpack_zone_destroy(&zone);
    if (!ok)
        fail_msg("event %llu has no integer %s", (unsigned long long)ev->seq, name);
    return v;
}

static bool str_is(const struct cairn_str *s, const char *c)
{
    return s->n == strlen(c) && !memcmp(s->p, c, s->n);
}

/* The names of every DBI of the state, one string "a.view,b.view,meta,". */
static void state_dbis(struct engine *eng, char *out, size_t cap)
{
    struct proj_snap *s;
    MDB_dbi main;
    MDB_cursor *c;
    MDB_val k, v;
    size_t at = 0;
    out[0] = '\0';
    assert_int_equal(proj_snap_begin(engine_proj(eng), &s), 0);
    assert_int_equal(mdb_dbi_open(proj_snap_txn(s), NULL, 0, &main), 0);
    assert_int_equal(mdb_cursor_open(proj_snap_txn(s), main, &c), 0);
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        at += (size_t)snprintf(out + at, cap - at, "%.*s,", (int)k.mv_size, (char *)k.mv_data);
    mdb_cursor_close(c);
    proj_snap_end(s);
}

/* Every entry of one state DBI as "key=value;" (printable test data). */
static void dbi_dump(struct engine *eng, const char *name, char *out, size_t cap)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *c;
    MDB_val k, v;
    size_t at = 0;
    out[0] = '\0';
    assert_int_equal(proj_snap_begin(engine_proj(eng), &s), 0);
    assert_int_equal(proj_snap_dbi(s, name, &dbi), 0);
    assert_int_equal(mdb_cursor_open(proj_snap_txn(s), dbi, &c), 0);
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        at += (size_t)snprintf(out + at, cap - at, "%.*s=%.*s;", (int)k.mv_size, (char *)k.mv_data,
                               (int)v.mv_size, (char *)v.mv_data);
    mdb_cursor_close(c);
    proj_snap_end(s);
}

static void state_digest(struct proj *p, uint8_t out[32], uint64_t *checkpoint)
{
    struct proj_snap *s;
    assert_int_equal(proj_snap_begin(p, &s), 0);
    assert_int_equal(proj_snap_digest(s, out), 0);
    *checkpoint = proj_snap_checkpoint(s);
    proj_snap_end(s);
}

/* A handler that does nothing, for ordering tables. */
static int noop_open(struct hctx *ctx)
{
    (void)ctx;
    return 0;
}

static int noop_apply(struct hctx *ctx, const struct event *ev)
{
    (void)ctx, (void)ev;
    return 0;
}

#define LIST(...) ((const char *const[]){__VA_ARGS__, NULL})
#define HANDLER(name_, consumes_, emits_)                                                          \
    {                                                                                              \
        .version = HANDLER_VERSION, .name = name_, .consumes = consumes_, .emits = emits_,         \
        .open = noop_open, .apply = noop_apply                                                     \
    }

/* ====================================================================== (a) isolation */

/* Names that must not give a handler a DBI: other handlers' DBIs, paths,
 * the state's own DBIs, nothing, upper case, and too long. */
static const char *const bad_dbi_names[] = {
    "other.view",
    "b.view",
    "../x",
    "x/y",
    "",
    ".view",
    "view.",
    "View",
    "a b",
    "a-b",
    "a\n",
    "stream.a",
    "01234567890123456789012345678901234567890123456789012345678901234567890123456789"
    "01234567890123456789012345678901234567890123456789",
    NULL};

struct iso {
    unsigned view;
};
static struct iso iso_a, iso_b;
static int iso_bad_rc[32];
static int iso_b_saw_a; /* times b found a's key in its own view */

static int iso_a_open(struct hctx *ctx)
{
    assert_string_equal(hctx_handler(ctx)->name, "a");
    for (size_t i = 0; bad_dbi_names[i]; i++) {
        unsigned db = 77;
        iso_bad_rc[i] = hctx_db(ctx, bad_dbi_names[i], 0, &db);
    }
    *hctx_user(ctx) = &iso_a;
    return hctx_db(ctx, "view", 0, &iso_a.view);
}

static int iso_a_apply(struct hctx *ctx, const struct event *ev)
{
    (void)ev;
    return hctx_put(ctx, iso_a.view, "k", 1, "from a", 6);
}

static int iso_b_open(struct hctx *ctx)
{
    *hctx_user(ctx) = &iso_b;
    return hctx_db(ctx, "view", 0, &iso_b.view);
}

static int iso_b_apply(struct hctx *ctx, const struct event *ev)
{
    MDB_val v;
    (void)ev;
    int rc = hctx_get(ctx, iso_b.view, "k", 1, &v);
    if (rc == 0)
        iso_b_saw_a++;
    else if (rc != CAIRN_ENOTFOUND)
        return rc;
    return hctx_put(ctx, iso_b.view, "k2", 2, "from b", 6);
}

static const struct handler iso_a_handler = {.version = HANDLER_VERSION,
                                             .name = "a",
                                             .consumes = LIST("in"),
                                             .open = iso_a_open,
                                             .apply = iso_a_apply};
static const struct handler iso_b_handler = {.version = HANDLER_VERSION,
                                             .name = "b",
                                             .consumes = LIST("in"),
                                             .open = iso_b_open,
                                             .apply = iso_b_apply};

static void test_isolation_dbi_names(void **state)
{
    const char *dir = *state;
    char buf[512];
    const struct handler *const table[] = {&iso_a_handler, &iso_b_handler, NULL};
    memset(iso_bad_rc, 0, sizeof iso_bad_rc);
    iso_b_saw_a = 0;
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = open_engine(&cfg);
    for (size_t i = 0; bad_dbi_names[i]; i++)
        if (iso_bad_rc[i] != CAIRN_EINVAL)
            fail_msg("hctx_db(\"%s\") gave %d, want CAIRN_EINVAL", bad_dbi_names[i], iso_bad_rc[i]);
    append_inputs(engine_log(eng), 1, 3);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    /* a and b both named their DBI "view" and got the same index; they
     * are still two DBIs: b never saw what a wrote. */
    assert_int_equal(iso_a.view, iso_b.view);
    assert_int_equal(iso_b_saw_a, 0);
    dbi_dump(eng, "a.view", buf, sizeof buf);
    assert_string_equal(buf, "k=from a;");
    dbi_dump(eng, "b.view", buf, sizeof buf);
    assert_string_equal(buf, "k2=from b;");
    /* Nothing else was created by the refused names. */
    state_dbis(eng, buf, sizeof buf);
    assert_string_equal(buf, "a.view,b.view,meta,");
    engine_close(eng);
}

/* A handler whose open fails (here: it insists on another's DBI) keeps the
 * engine from opening, names itself, and leaves no DBI behind. */
static int greedy_open(struct hctx *ctx)
{
    unsigned db, mine;
    int rc = hctx_db(ctx, "mine", 0, &mine);
    return rc ? rc : hctx_db(ctx, "a.view", 0, &db);
}

static void test_isolation_open_failure(void **state)
{
    const char *dir = *state;
    struct handler greedy = HANDLER("greedy", LIST("in"), NULL);
    greedy.open = greedy_open;
    const struct handler *const table[] = {&iso_a_handler, &greedy, NULL};
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = NULL;
    struct cairn_error e;
    cairn_error_clear(&e);
    assert_int_equal(engine_open(&eng, &cfg, &e), CAIRN_EINVAL);
    assert_null(eng);
    assert_non_null(strstr(e.message, "greedy"));
    /* Reopening without it: the failed open left nothing in the state. */
    const struct handler *const ok[] = {&iso_b_handler, NULL};
    cfg.handlers = ok;
    eng = open_engine(&cfg);
    char buf[256];
    state_dbis(eng, buf, sizeof buf);
    assert_string_equal(buf, "b.view,meta,");
    engine_close(eng);
}

/* ====================================================================== (b) refusals */

/* engine_order must refuse `table` with e.code `code` and a message
 * containing each of the NULL-terminated `parts`. */
static void refused(const struct handler *const *table, const char *code, const char *const *parts)
{
    const struct handler *out[80];
    size_t n = 999;
    struct cairn_error e;
    cairn_error_clear(&e);
    int rc = engine_order(table, out, &n, &e);
    if (rc != CAIRN_EINVAL || !e.code || strcmp(e.code, code))
        fail_msg("engine_order: rc %d code %s (%s), want CAIRN_EINVAL code %s", rc,
                 e.code ? e.code : "(none)", e.message, code);
    for (; parts && *parts; parts++)
        if (!strstr(e.message, *parts))
            fail_msg("engine_order: \"%s\" does not name \"%s\"", e.message, *parts);
}

static void test_order_refuses_cycles(void **state)
{
    const struct handler ca = HANDLER("cyc_alpha", LIST("in", "y"), LIST("x"));
    const struct handler cb = HANDLER("cyc_beta", LIST("x"), LIST("y"));
    const struct handler by = HANDLER("bystander", LIST("in"), LIST("z"));
    const struct handler c1 = HANDLER("ring_one", LIST("r3"), LIST("r1"));
    const struct handler c2 = HANDLER("ring_two", LIST("r1"), LIST("r2"));
    const struct handler c3 = HANDLER("ring_three", LIST("r2"), LIST("r3"));
    const struct handler self = HANDLER("narcissus", LIST("in", "me"), LIST("me"));

    refused((const struct handler *const[]){&ca, &cb, NULL}, "cycle",
            LIST("cyc_alpha", "cyc_beta"));
    refused((const struct handler *const[]){&cb, &by, &ca, NULL}, "cycle",
            LIST("cyc_alpha", "cyc_beta"));
    refused((const struct handler *const[]){&by, &c2, &c3, &c1, NULL}, "cycle",
            LIST("ring_one", "ring_two", "ring_three"));
    refused((const struct handler *const[]){&by, &self, NULL}, "cycle", LIST("narcissus"));

    /* The bystander, which is placed, is not blamed. */
    const struct handler *out[8];
    size_t n;
    struct cairn_error e;
    cairn_error_clear(&e);
    engine_order((const struct handler *const[]){&by, &ca, &cb, NULL}, out, &n, &e);
    assert_null(strstr(e.message, "bystander"));

    /* engine_open refuses it the same way. */
    const char *dir = *state;
    const struct handler *const table[] = {&ca, &cb, NULL};
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = NULL;
    cairn_error_clear(&e);
    assert_int_equal(engine_open(&eng, &cfg, &e), CAIRN_EINVAL);
    assert_non_null(e.code);
    assert_string_equal(e.code, "cycle");
    assert_non_null(strstr(e.message, "cyc_alpha"));
    assert_non_null(strstr(e.message, "cyc_beta"));
}

static void test_order_refuses_bad_handlers(void **state)
{
    (void)state;
    const struct handler ok = HANDLER("fine", LIST("in"), NULL);
    const struct handler dup1 = HANDLER("twin", LIST("in"), NULL);
    const struct handler dup2 = HANDLER("twin", LIST("other"), LIST("q"));
    struct handler v0 = HANDLER("old", LIST("in"), NULL), v2 = v0;
    v0.version = 0;
    v2.version = HANDLER_VERSION + 1;
    refused((const struct handler *const[]){&ok, &dup1, &dup2, NULL}, "handler", LIST("twin"));
    refused((const struct handler *const[]){&ok, &v0, NULL}, "handler", LIST("old", "version"));
    refused((const struct handler *const[]){&v2, &ok, NULL}, "handler", LIST("old", "version"));

    /* Reserved and malformed names: "stream.x" and "meta" are the state's
     * own DBIs; a '.' or '/' would let a name reach into another's. */
    static const char *const names[] = {"stream", "meta", "",    "Devices", "a.b",
                                        "a/b",    "a-b",  "a b", "é"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const struct handler bad = HANDLER(names[i], LIST("in"), NULL);
        refused((const struct handler *const[]){&ok, &bad, NULL}, "handler", NULL);
    }
    const struct handler unnamed = HANDLER(NULL, LIST("in"), NULL);
    refused((const struct handler *const[]){&unnamed, NULL}, "handler", NULL);

    /* Required members. */
    struct handler no_open = HANDLER("no_open", LIST("in"), NULL), no_apply = no_open,
                   no_consumes = no_open;
    no_open.open = NULL;
    no_apply.apply = NULL;
    no_consumes.consumes = NULL;
    refused((const struct handler *const[]){&no_open, NULL}, "handler", LIST("no_open"));
    refused((const struct handler *const[]){&no_apply, NULL}, "handler", LIST("no_open"));
    refused((const struct handler *const[]){&no_consumes, NULL}, "handler", LIST("no_open"));

    /* More handlers than the engine holds. */
    static char many_names[70][8];
    static struct handler many[70];
    static const struct handler *many_table[71];
    for (int i = 0; i < 70; i++) {
        snprintf(many_names[i], sizeof many_names[i], "h%d", i);
        many[i] = (struct handler)HANDLER(many_names[i], LIST("in"), NULL);
        many_table[i] = &many[i];
    }
    refused(many_table, "handler", LIST("handlers"));
}

/* ====================================================================== (c) ordering */

static size_t position(const struct handler *const *order, size_t n, const struct handler *h)
{
    for (size_t i = 0; i < n; i++)
        if (order[i] == h)
            return i;
    fail_msg("handler %s missing from the order", h->name);
    return n;
}

static bool feeds(const struct handler *a, const struct handler *b)
{
    for (const char *const *t = a->emits; t && *t; t++)
        for (const char *const *c = b->consumes; c && *c; c++)
            if (!strcmp(*t, *c))
                return true;
    return false;
}

/* Checks that out is a permutation of table with every producer first. */
static void check_order(const struct handler *const *table, const struct handler **out, size_t n)
{
    size_t cnt = 0;
    while (table[cnt])
        cnt++;
    assert_int_equal(n, cnt);
    for (size_t i = 0; i < cnt; i++)
        for (size_t j = 0; j < cnt; j++)
            if (i != j && feeds(table[i], table[j]) &&
                position(out, n, table[i]) > position(out, n, table[j]))
                fail_msg("%s feeds %s but runs after it", table[i]->name, table[j]->name);
}

static void test_order_producers_first(void **state)
{
    (void)state;
    const struct handler a = HANDLER("a", LIST("in"), LIST("x"));
    const struct handler b = HANDLER("b", LIST("x"), LIST("y"));
    const struct handler c = HANDLER("c", LIST("y", "in"), NULL);
    const struct handler d = HANDLER("d", LIST("x"), LIST("z"));
    const struct handler e = HANDLER("e", LIST("y", "z"), NULL);
    const struct handler z1 = HANDLER("z1", LIST("in"), NULL);
    const struct handler z2 = HANDLER("z2", LIST("other"), LIST("w"));
    const struct handler *out[16];
    size_t n;
    struct cairn_error err;
    cairn_error_clear(&err);

    /* A chain given backwards. */
    const struct handler *const chain[] = {&c, &b, &a, NULL};
    assert_int_equal(engine_order(chain, out, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_ptr_equal(out[0], &a);
    assert_ptr_equal(out[1], &b);
    assert_ptr_equal(out[2], &c);

    /* Independent handlers keep the table order; a diamond resolves with
     * ties broken by the table (d before b: d comes first in it). */
    const struct handler *const mixed[] = {&z1, &e, &c, &d, &z2, &b, &a, NULL};
    assert_int_equal(engine_order(mixed, out, &n, &err), 0);
    const char *want[] = {"z1", "z2", "a", "d", "b", "e", "c"};
    for (size_t i = 0; i < 7; i++)
        assert_string_equal(out[i]->name, want[i]);
    check_order(mixed, out, n);
}

/* Random DAGs in random table orders: always a valid order. */
static void test_order_random_dags(void **state)
{
    (void)state;
    enum { N = 12 };
    static char names[N][8], types[N][8];
    static const char *cons[N][N + 2], *emit[N][2];
    struct handler hs[N];
    const struct handler *table[N + 1], *out[N];
    uint64_t rng = 42;
    for (int trial = 0; trial < 300; trial++) {
        /* Handler i emits type i and consumes some types of j < i (a DAG
         * by construction), then the table is shuffled. */
        for (int i = 0; i < N; i++) {
            int nc = 0;
            snprintf(names[i], sizeof names[i], "h%d", i);
            snprintf(types[i], sizeof types[i], "t%d", i);
            cons[i][nc++] = "in";
            for (int j = 0; j < i; j++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                if ((rng >> 33) % 4 == 0)
                    cons[i][nc++] = types[j];
            }
            cons[i][nc] = NULL;
            emit[i][0] = types[i];
            emit[i][1] = NULL;
            hs[i] = (struct handler)HANDLER(names[i], cons[i], emit[i]);
            table[i] = &hs[i];
        }
        for (int i = N - 1; i > 0; i--) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            int j = (int)((rng >> 33) % (uint64_t)(i + 1));
            const struct handler *t = table[i];
            table[i] = table[j];
            table[j] = t;
        }
        table[N] = NULL;
        size_t n;
        struct cairn_error e;
        cairn_error_clear(&e);
        if (engine_order(table, out, &n, &e))
            fail_msg("trial %d: refused a DAG: %s", trial, e.message);
        check_order(table, out, n);
    }
}

/* ====================================================================== (d) dispatch */

/* What a dispatch handler saw, in call order. */
struct seen {
    char who; /* 'b' or 'c' */
    bool derived;
    uint64_t seq, dseq;
    char stream[8], type[8], tenant[16], key[16];
    int64_t time, n, k;
};

#define SEEN_MAX 4096
static struct seen seen[SEEN_MAX];
static size_t nseen;
static uint64_t dispatch_fail_at; /* c fails once on the input with this seq */
static unsigned dispatch_d_db, dispatch_b_db;

static void record(char who, const struct event *ev)
{
    assert_true(nseen < SEEN_MAX);
    struct seen *s = &seen[nseen++];
    memset(s, 0, sizeof *s);
    s->who = who;
    s->derived = ev->derived;
    s->seq = ev->seq;
    s->dseq = ev->dseq;
    s->time = ev->time;
    snprintf(s->stream, sizeof s->stream, "%.*s", (int)ev->stream.n,
             ev->stream.p ? ev->stream.p : "");
    snprintf(s->type, sizeof s->type, "%.*s", (int)ev->type.n, ev->type.p);
    snprintf(s->tenant, sizeof s->tenant, "%.*s", (int)ev->tenant.n, ev->tenant.p);
    snprintf(s->key, sizeof s->key, "%.*s", (int)ev->key.n, ev->key.p);
    s->n = ev->derived ? -1 : payload_int(ev, "n");
    s->k = ev->derived ? payload_int(ev, "k") : -1;
}

static int emit_k(struct hctx *ctx, const struct event *cause, const char *type, int64_t k,
                  const struct cairn_str *tenant, const struct cairn_str *key)
{
    uint8_t pl[64];
    struct cairn_buf b = {.data = pl, .cap = sizeof pl, .max = sizeof pl};
    struct mpw w;
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 1);
    mpw_kv_i64(&w, "k", k);
    int rc = mpw_finish(&w);
    return rc ? rc : hctx_emit(ctx, cause, type, tenant, key, b.data, b.len);
}

/* d_a: for input n emits n % 3 events "x" (k = 0, 1, …); the second one
 * goes to another tenant and key. */
static int d_a_open(struct hctx *ctx)
{
    return hctx_db(ctx, "unused", 0, &dispatch_d_db);
}

static int d_a_apply(struct hctx *ctx, const struct event *ev)
{
    assert_false(ev->derived);
    int64_t n = payload_int(ev, "n");
    const struct cairn_str other_t = {"t2", 2}, other_k = {"elsewhere", 9};
    int rc = 0;
    for (int64_t k = 0; k < n % 3 && !rc; k++)
        rc = emit_k(ctx, ev, "x", k, k == 1 ? &other_t : NULL, k == 1 ? &other_k : NULL);
    return rc;
}

/* d_b: sees inputs and x; emits one "y" per x (k = the x's dseq). */
static int d_b_open(struct hctx *ctx)
{
    return hctx_db(ctx, "unused", 0, &dispatch_b_db);
}

static int d_b_apply(struct hctx *ctx, const struct event *ev)
{
    record('b', ev);
    return ev->derived ? emit_k(ctx, ev, "y", (int64_t)ev->dseq, NULL, NULL) : 0;
}

/* d_c: sees x and y, undecoded (derived_raw): y (only d_c consumes it)
 * comes without a body, x (d_b consumes it too) with one. */
static int d_c_apply(struct hctx *ctx, const struct event *ev)
{
    (void)ctx;
    if (ev->derived && (ev->type.n != 1 || (ev->type.p[0] == 'y') != !ev->body))
        fail_msg("d_c: %.*s %llu with%s body", (int)ev->type.n, ev->type.p,
                 (unsigned long long)ev->dseq, ev->body ? "" : "out");
    if (ev->seq == dispatch_fail_at) {
        dispatch_fail_at = 0;
        return CAIRN_EIO;
    }
    record('c', ev);
    return 0;
}

static const struct handler d_a = {.version = HANDLER_VERSION,
                                   .name = "d_a",
                                   .consumes = LIST("in"),
                                   .emits = LIST("x"),
                                   .open = d_a_open,
                                   .apply = d_a_apply};
static const struct handler d_b = {.version = HANDLER_VERSION,
                                   .name = "d_b",
                                   .consumes = LIST("in", "x"),
                                   .emits = LIST("y"),
                                   .open = d_b_open,
                                   .apply = d_b_apply};
static const struct handler d_c = {.version = HANDLER_VERSION,
                                   .name = "d_c",
                                   .consumes = LIST("x", "y", "z"),
                                   .open = noop_open,
                                   .apply = d_c_apply,
                                   .derived_raw = true};

static void expect_seen(size_t *at, char who, bool derived, uint64_t seq, const char *stream,
                        const char *type, uint64_t dseq, const char *tenant, const char *key,
                        int64_t n, int64_t k)
{
    if (*at >= nseen)
        fail_msg("seq %llu: %c should see %s %llu, saw nothing", (unsigned long long)seq, who, type,
                 (unsigned long long)dseq);
    const struct seen *s = &seen[(*at)++];
    if (s->who != who || s->derived != derived || s->seq != seq || strcmp(s->stream, stream) ||
        strcmp(s->type, type) || s->dseq != dseq || strcmp(s->tenant, tenant) ||
        strcmp(s->key, key) || s->time != T0 + (int64_t)seq * NS || s->n != n || s->k != k)
        fail_msg("record %zu: %c saw %s seq %llu stream '%s' type %s dseq %llu %s/%s time %lld "
                 "n %lld k %lld;\n want %c %s seq %llu stream '%s' type %s dseq %llu %s/%s n %lld "
                 "k %lld",
                 *at - 1, s->who, s->derived ? "derived" : "input", (unsigned long long)s->seq,
                 s->stream, s->type, (unsigned long long)s->dseq, s->tenant, s->key,
                 (long long)s->time, (long long)s->n, (long long)s->k, who,
                 derived ? "derived" : "input", (unsigned long long)seq, stream, type,
                 (unsigned long long)dseq, tenant, key, (long long)n, (long long)k);
}

/* Replays the expected calls of inputs 1..last against what was seen. */
static void check_dispatch(uint64_t last)
{
    size_t at = 0;
    uint64_t xd = 0, yd = 0;
    for (uint64_t s = 1; s <= last; s++) {
        int64_t n = (int64_t)s, nx = n % 3;
        char key[16];
        snprintf(key, sizeof key, "k%lld", (long long)(n % 5));
        expect_seen(&at, 'b', false, s, "", "in", 0, "t1", key, n, -1);
        for (int64_t k = 0; k < nx; k++) /* b gets a's x, never its own y */
            expect_seen(&at, 'b', true, s, "d_a", "x", xd + 1 + (uint64_t)k, k == 1 ? "t2" : "t1",
                        k == 1 ? "elsewhere" : key, -1, k);
        for (int64_t k = 0; k < nx; k++) /* c: every x, then every y */
            expect_seen(&at, 'c', true, s, "d_a", "x", xd + 1 + (uint64_t)k, k == 1 ? "t2" : "t1",
                        k == 1 ? "elsewhere" : key, -1, k);
        for (int64_t k = 0; k < nx; k++) /* y takes tenant and key from its cause, the x */
            expect_seen(&at, 'c', true, s, "d_b", "y", yd + 1 + (uint64_t)k, k == 1 ? "t2" : "t1",
                        k == 1 ? "elsewhere" : key, -1, (int64_t)(xd + 1 + (uint64_t)k));
        xd += (uint64_t)nx;
        yd += (uint64_t)nx;
    }
    if (at != nseen)
        fail_msg("%zu calls more than expected (first: %c %s seq %llu)", nseen - at, seen[at].who,
                 seen[at].type, (unsigned long long)seen[at].seq);
}

/* The stream DBI holds dseq 1..total densely, each with its cause: input
 * s caused s % 3 events on each stream. */
static void check_stream(struct engine *eng, const char *name, uint64_t last)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *c;
    MDB_val k, v;
    char full[64];
    uint64_t causes[SEEN_MAX], total = 0, at = 0;
    for (uint64_t i = 1; i <= last; i++)
        for (uint64_t j = 0; j < i % 3; j++)
            causes[total++] = i;
    snprintf(full, sizeof full, PROJ_STREAM_PREFIX "%s", name);
    assert_int_equal(proj_snap_begin(engine_proj(eng), &s), 0);
    assert_int_equal(proj_snap_dbi(s, full, &dbi), 0);
    assert_int_equal(mdb_cursor_open(proj_snap_txn(s), dbi, &c), 0);
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        struct proj_derived d;
        assert_true(at < total);
        assert_int_equal(proj_derived_decode(v.mv_data, v.mv_size, &d), 0);
        assert_int_equal(cairn_be64_get(k.mv_data), at + 1);
        assert_int_equal(d.dseq, at + 1);
        assert_int_equal(d.cause, causes[at]);
        assert_true(str_is(&d.stream, name));
        assert_int_equal(d.time, T0 + (int64_t)d.cause * NS);
        at++;
    }
    mdb_cursor_close(c);
    proj_snap_end(s);
    assert_int_equal(at, total);
}

static void test_dispatch(void **state)
{
    const char *dir = *state;
    const struct handler *const table[] = {&d_c, &d_b, &d_a, NULL}; /* consumers first */
    nseen = 0;
    dispatch_fail_at = 0;
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = open_engine(&cfg);
    const struct handler *const *order;
    assert_int_equal(engine_handlers(eng, &order), 3);
    assert_ptr_equal(order[0], &d_a);
    assert_ptr_equal(order[1], &d_b);
    assert_ptr_equal(order[2], &d_c);

    append_inputs(engine_log(eng), 1, 10); /* one catch-up, one batch */
    assert_int_equal(engine_catch_up(eng, 0), 0);
    check_dispatch(10);

    append_inputs(engine_log(eng), 11, 9); /* in two steps */
    assert_int_equal(engine_catch_up(eng, 14), 0);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 14);
    check_dispatch(14);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    check_dispatch(19);

    /* A batch that fails half way is undone as a whole: its emits too, so
     * the retry continues the streams without a gap. */
    append_inputs(engine_log(eng), 20, 6);
    size_t before = nseen;
    dispatch_fail_at = 23;
    assert_int_equal(engine_catch_up(eng, 0), CAIRN_EIO);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 19);
    nseen = before; /* what c saw in the undone batch does not count */
    assert_int_equal(engine_catch_up(eng, 0), 0);
    check_dispatch(25);

    /* Reopened, the streams go on from their last dseq. */
    engine_close(eng);
    eng = open_engine(&cfg);
    check_dispatch(25);
    append_inputs(engine_log(eng), 26, 7);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    check_dispatch(32);
    check_stream(eng, "d_a", 32);
    check_stream(eng, "d_b", 32);
    char buf[256];
    state_dbis(eng, buf, sizeof buf);
    assert_string_equal(buf, "d_a.unused,d_b.unused,meta,stream.d_a,stream.d_b,");
    engine_close(eng);
}

/* ====================================================================== (e) exactly once */

static unsigned long cnt_calls;  /* apply calls, including undone ones */
static unsigned long cnt_double; /* inputs found already applied in the state */
static uint64_t cnt_fail_at;
static unsigned cnt_applied_db, cnt_total_db;

static int cnt_open(struct hctx *ctx)
{
    int rc = hctx_db(ctx, "applied", 0, &cnt_applied_db);
    return rc ? rc : hctx_db(ctx, "total", 0, &cnt_total_db);
}

static int cnt_apply(struct hctx *ctx, const struct event *ev)
{
    uint8_t k8[8], v8[8];
    MDB_val v;
    cnt_calls++;
    if (ev->seq == cnt_fail_at) {
        cnt_fail_at = 0;
        return CAIRN_EIO;
    }
    cairn_be64_put(k8, ev->seq);
    int rc = hctx_get(ctx, cnt_applied_db, k8, 8, &v);
    if (rc == 0)
        cnt_double++;
    else if (rc != CAIRN_ENOTFOUND)
        return rc;
    if ((rc = hctx_put(ctx, cnt_applied_db, k8, 8, "", 0)))
        return rc;
    uint64_t total = 0;
    if ((rc = hctx_get(ctx, cnt_total_db, "n", 1, &v)) == 0)
        total = cairn_be64_get(v.mv_data);
    else if (rc != CAIRN_ENOTFOUND)
        return rc;
    cairn_be64_put(v8, total + 1);
    return hctx_put(ctx, cnt_total_db, "n", 1, v8, 8);
}

static const struct handler cnt_handler = {.version = HANDLER_VERSION,
                                           .name = "cnt",
                                           .consumes = LIST("in"),
                                           .open = cnt_open,
                                           .apply = cnt_apply};

/* The total the state holds, and checks it against the checkpoint. */
static uint64_t cnt_total(struct engine *eng)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_val k = {1, "n"}, v;
    assert_int_equal(proj_snap_begin(engine_proj(eng), &s), 0);
    assert_int_equal(proj_snap_dbi(s, "cnt.total", &dbi), 0);
    assert_int_equal(mdb_get(proj_snap_txn(s), dbi, &k, &v), 0);
    assert_int_equal(v.mv_size, 8);
    uint64_t total = cairn_be64_get(v.mv_data);
    proj_snap_end(s);
    assert_int_equal(total, proj_checkpoint(engine_proj(eng)));
    assert_int_equal(cnt_double, 0);
    return total;
}

/* A handler writing a lot per input: 100 000 puts each, so a catch-up of 8
 * inputs must end transactions early (APPLY_WRITES_MAX), each with its
 * flush and checkpoint, and still apply every input exactly once. */
#define WIDE_PUTS 100000 /* 8 of them: three times APPLY_WRITES_MAX (262 144) */
static unsigned wide_db;
static unsigned wide_flushes;

static int wide_open(struct hctx *ctx)
{
    return hctx_db(ctx, "rows", 0, &wide_db);
}

static int wide_apply(struct hctx *ctx, const struct event *ev)
{
    uint8_t k[16];
    cairn_be64_put(k, ev->seq);
    for (uint64_t i = 0; i < WIDE_PUTS; i++) {
        cairn_be64_put(k + 8, i);
        int rc = hctx_put(ctx, wide_db, k, sizeof k, "", 0);
        if (rc)
            return rc;
    }
    return 0;
}

static int wide_flush(struct hctx *ctx)
{
    (void)ctx;
    wide_flushes++;
    return 0;
}

static const struct handler wide_handler = {.version = HANDLER_VERSION,
                                            .name = "wide",
                                            .consumes = LIST("in"),
                                            .open = wide_open,
                                            .apply = wide_apply,
                                            .flush = wide_flush};

/* The entries of the state's DBI `name` (committed). */
static uint64_t dbi_entries(struct engine *eng, const char *name)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_stat st;
    assert_int_equal(proj_snap_begin(engine_proj(eng), &s), 0);
    assert_int_equal(proj_snap_dbi(s, name, &dbi), 0);
    assert_int_equal(mdb_stat(proj_snap_txn(s), dbi, &st), 0);
    proj_snap_end(s);
    return st.ms_entries;
}

static void test_write_bounded_transactions(void **state)
{
    const char *dir = *state;
    const struct handler *const table[] = {&wide_handler, NULL};
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = open_engine(&cfg);
    append_inputs(engine_log(eng), 1, 8);
    wide_flushes = 0;
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 8);
    /* 800 000 writes: three transactions or more, at most one per input */
    assert_true(wide_flushes >= 3 && wide_flushes <= 8);
    assert_int_equal(dbi_entries(eng, "wide.rows"), 8 * WIDE_PUTS);
    engine_close(eng);
}

/* A handler keeping one cache entry per input (key: the seq), written
 * back and dropped by its flush: a catch-up whose caches pass the cache
 * bound (engine_config.cache_entries_max) must end transactions there,
 * each with its flush and checkpoint, and store every input once. */
static unsigned kept_db, kept_flushes;

static int kept_open(struct hctx *ctx)
{
    struct hcache *c = calloc(1, sizeof *c);
    if (!c)
        return CAIRN_ENOMEM;
    *hctx_user(ctx) = c;
    return hctx_db(ctx, "rows", 0, &kept_db);
}

static int kept_apply(struct hctx *ctx, const struct event *ev)
{
    struct hcache *c = *hctx_user(ctx);
    uint8_t k[8];
    struct hentry *e;
    bool fresh;
    cairn_be64_put(k, ev->seq);
    int rc = hcache_get_or_new(c, k, sizeof k, sizeof *e, 64, &e, &fresh);
    if (rc)
        return rc;
    if (fresh)
        hcache_add(c, e);
    return hcache_mark(c, e);
}

static int kept_flush(struct hctx *ctx)
{
    struct hcache *c = *hctx_user(ctx);
    kept_flushes++;
    return hcache_flush(ctx, c, kept_db, NULL, 0);
}

static void kept_close(struct hctx *ctx)
{
    struct hcache *c = *hctx_user(ctx);
    if (c)
        hcache_free(c);
    free(c);
    *hctx_user(ctx) = NULL;
}

static const struct handler kept_handler = {.version = HANDLER_VERSION,
                                            .name = "kept",
                                            .consumes = LIST("in"),
                                            .open = kept_open,
                                            .apply = kept_apply,
                                            .flush = kept_flush,
                                            .close = kept_close};

/* Catches eng up (the log's 1 000 inputs), checks that it took `flushes`
 * transactions and stored every input once, and closes it: every cache
 * entry is freed. */
static void kept_done(struct engine *eng, unsigned flushes)
{
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 1000);
    assert_int_equal(kept_flushes, flushes);
    assert_int_equal(dbi_entries(eng, "kept.rows"), 1000);
    engine_close(eng);
    assert_int_equal(hcache_live(), 0);
}

static void test_cache_bounded_transactions(void **state)
{
    const char *dir = *state;
    char other[300];
    const struct handler *const table[] = {&kept_handler, NULL};
    /* every engine the tests before opened freed its caches */
    assert_int_equal(hcache_live(), 0);
    struct engine_config cfg = config_for(dir, table);
    cfg.cache_entries_max = 100;
    struct engine *eng = open_engine(&cfg);
    append_inputs(engine_log(eng), 1, 1000);
    kept_flushes = 0;
    /* a transaction ends at the input that makes 101 entries: 9 of 101
     * inputs, then the last 91 */
    kept_done(eng, 10);

    /* The default bound: the same 1 000 inputs in one transaction. */
    snprintf(other, sizeof other, "%s/state.default", dir);
    cfg.cache_entries_max = 0;
    cfg.state_dir = other;
    kept_flushes = 0;
    kept_done(open_engine(&cfg), 1); /* open catches up */
}

static void test_exactly_once(void **state)
{
    const char *dir = *state;
    char fresh[300], part[300];
    const struct handler *const table[] = {&cnt_handler, NULL};
    cnt_calls = cnt_double = 0;
    cnt_fail_at = 0;
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = open_engine(&cfg);
    append_inputs(engine_log(eng), 1, 50);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(cnt_total(eng), 50);
    assert_int_equal(cnt_calls, 50);

    /* Reopening applies nothing again. */
    engine_close(eng);
    eng = open_engine(&cfg);
    assert_int_equal(cnt_calls, 50);
    assert_int_equal(cnt_total(eng), 50);

    /* The log committed, the state did not ("crash" between the two):
     * the next open applies exactly the missing inputs. */
    append_inputs(engine_log(eng), 51, 30);
    engine_close(eng);
    eng = open_engine(&cfg);
    assert_int_equal(cnt_calls, 80);
    assert_int_equal(cnt_total(eng), 80);

    /* apply_to stops short; catch_up finishes. */
    append_inputs(engine_log(eng), 81, 20);
    engine_close(eng);
    cfg.apply_to = 90;
    eng = open_engine(&cfg);
    cfg.apply_to = 0;
    assert_int_equal(cnt_total(eng), 90);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(cnt_total(eng), 100);

    /* A failing apply undoes its whole batch; the retry applies it once. */
    append_inputs(engine_log(eng), 101, 30);
    cnt_fail_at = 120;
    assert_int_equal(engine_catch_up(eng, 0), CAIRN_EIO);
    assert_int_equal(cnt_total(eng), 100);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(cnt_total(eng), 130);

    /* Through the writer thread: each commit is applied after it. */
    assert_int_equal(engine_start(eng), 0);
    for (int i = 0; i < 5; i++) {
        struct log_input in = {.type = {"in", 2},
                               .tenant = {"t1", 2},
                               .key = {"w", 1},
                               .source = {"test", 4},
                               .time = T0,
                               .payload = (const uint8_t *)"\x81\xa1n\x00",
                               .payload_len = 4,
                               .expected_seq = -1};
        struct log_result r;
        assert_int_equal(log_writer_append_wait(engine_writer(eng), &in, &r, 1), 0);
        assert_int_equal(r.rc, 0);
    }
    engine_close(eng);
    eng = open_engine(&cfg);
    assert_int_equal(cnt_total(eng), 135);
    assert_int_equal(log_head_of(eng), 135);
    uint8_t live[32], got[32];
    uint64_t cp;
    state_digest(engine_proj(eng), live, &cp);
    assert_int_equal(cp, 135);
    engine_close(eng);

    /* Replay: the same digest; a prefix, the prefix's count. */
    snprintf(fresh, sizeof fresh, "%s/fresh", dir);
    snprintf(part, sizeof part, "%s/part", dir);
    struct cairn_error e;
    cairn_error_clear(&e);
    cfg.log_readonly = true;
    assert_int_equal(engine_replay(&cfg, fresh, 0, &e), 0);
    assert_int_equal(engine_replay(&cfg, part, 60, &e), 0);
    cfg.log_readonly = false;
    struct proj *p;
    assert_int_equal(proj_open(&p, &(struct proj_config){.dir = fresh, .readonly = true}), 0);
    state_digest(p, got, &cp);
    proj_close(p);
    assert_int_equal(cp, 135);
    assert_memory_equal(got, live, 32);
    cfg.state_dir = part;
    cfg.apply_to = 60;
    eng = open_engine(&cfg);
    assert_int_equal(cnt_total(eng), 60);
    engine_close(eng);

    /* A state built from a longer log is refused, not silently mixed. */
    char other[300];
    snprintf(other, sizeof other, "%s/other", dir);
    struct engine_config ocfg = config_for(other, table);
    ocfg.state_dir = fresh;
    struct engine *oeng = NULL;
    cairn_error_clear(&e);
    assert_int_not_equal(engine_open(&oeng, &ocfg, &e), 0);
    assert_non_null(e.code);
    assert_string_equal(e.code, "state_ahead");
}

/* ====================================================================== (f) caches after an abort
 */

/* A handler with an in-memory copy of its state (built in open): after an
 * aborted batch the engine closes and reopens it, so the copy never keeps
 * work that did not commit. */
struct cache {
    uint64_t total;
};
static unsigned long cache_opens, cache_closes, cache_stale;
static uint64_t cache_fail_at;
static unsigned cache_db;

static int cache_open(struct hctx *ctx)
{
    MDB_val v;
    struct cache *c = calloc(1, sizeof *c);
    if (!c)
        return CAIRN_ENOMEM;
    assert_int_equal(cache_opens, cache_closes); /* closed before it opens again */
    cache_opens++;
    *hctx_user(ctx) = c;
    int rc = hctx_db(ctx, "total", 0, &cache_db);
    if (!rc && !(rc = hctx_get(ctx, cache_db, "n", 1, &v)))
        c->total = cairn_be64_get(v.mv_data);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static void cache_close(struct hctx *ctx)
{
    cache_closes++;
    free(*hctx_user(ctx));
    *hctx_user(ctx) = NULL;
}

static int cache_apply(struct hctx *ctx, const struct event *ev)
{
    struct cache *c = *hctx_user(ctx);
    uint8_t v8[8];
    MDB_val v;
    int rc = hctx_get(ctx, cache_db, "n", 1, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    if ((rc ? 0 : cairn_be64_get(v.mv_data)) != c->total)
        cache_stale++;
    c->total++; /* the cache moves first: an abort leaves it ahead */
    if (ev->seq == cache_fail_at) {
        cache_fail_at = 0;
        return CAIRN_EIO;
    }
    cairn_be64_put(v8, c->total);
    return hctx_put(ctx, cache_db, "n", 1, v8, 8);
}

static const struct handler cache_handler = {.version = HANDLER_VERSION,
                                             .name = "cache",
                                             .consumes = LIST("in"),
                                             .open = cache_open,
                                             .apply = cache_apply,
                                             .close = cache_close};

static void test_abort_reopens_handlers(void **state)
{
    const char *dir = *state;
    const struct handler *const table[] = {&cache_handler, NULL};
    cache_opens = cache_closes = cache_stale = 0;
    cache_fail_at = 0;
    struct engine_config cfg = config_for(dir, table);
    struct engine *eng = open_engine(&cfg);
    append_inputs(engine_log(eng), 1, 20);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(cache_opens, 1);

    append_inputs(engine_log(eng), 21, 20);
    cache_fail_at = 30;
    assert_int_equal(engine_catch_up(eng, 0), CAIRN_EIO);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 20);
    assert_int_equal(cache_opens, 2); /* closed and opened again, from the committed 20 */
    assert_int_equal(cache_closes, 1);
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 40);
    assert_int_equal(cache_stale, 0);
    engine_close(eng);
    assert_int_equal(cache_closes, cache_opens);
}

/* ====================================================================== (g) parallel apply */

/* p_a (concurrent) and p_b (not) consume only inputs; p_l1 consumes p_a's
 * x and p_l2 consumes inputs, x, p_l1's z and p_b's y. In registry order
 * {p_a, p_l1, p_b, p_l2, p_c} the engine orders them p_a, p_l1, p_b, p_l2,
 * p_c: an early handler (p_b) between two late ones, so p_l2's events of
 * one input (the input, x, z, y — handler order) test that the parallel
 * apply builds them as the serial one does. p_a and p_c (concurrent, the
 * last in order) keep a counter in their state, read back with hctx_get
 * on every input, while the others write too. */
#define PAR_INPUTS 9000
static char par_trace[PAR_INPUTS * 6][24];
static size_t par_ntrace;
static bool par_off_main; /* a concurrent apply ran on another thread */
static pthread_t par_main;
static unsigned par_db[5];
static uint64_t par_fail_at; /* p_a fails once on the input with this seq */
/* p_c's prefetch calls (handler.h): how many, and which inputs while
 * par_check_prefetch is set (p_c_apply then fails an input not prefetched) */
static bool par_prefetched[PAR_INPUTS + 1];
static size_t par_nprefetch;
static bool par_check_prefetch;

static void par_record(char who, const struct event *ev)
{
    assert_true(par_ntrace < sizeof par_trace / sizeof par_trace[0]);
    snprintf(par_trace[par_ntrace++], sizeof par_trace[0], "%c%c%.*s%llu/%llu", who,
             ev->derived ? 'd' : 'i', (int)ev->type.n, ev->type.p, (unsigned long long)ev->seq,
             (unsigned long long)ev->dseq);
}

/* Counts its inputs in its own DBI: a get and a put per input. */
static int par_count(struct hctx *ctx, unsigned db)
{
    MDB_val v;
    uint8_t v8[8];
    uint64_t n = 0;
    int rc = hctx_get(ctx, db, "n", 1, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    if (!rc) {
        assert_int_equal(v.mv_size, 8);
        n = cairn_be64_get(v.mv_data);
    }
    cairn_be64_put(v8, n + 1);
    return hctx_put(ctx, db, "n", 1, v8, 8);
}

#define PAR_OPEN(fn, i)                                                                            \
    static int fn(struct hctx *ctx)                                                                \
    {                                                                                              \
        return hctx_db(ctx, "n", 0, &par_db[i]);                                                   \
    }
PAR_OPEN(p_a_open, 0)
PAR_OPEN(p_b_open, 1)
PAR_OPEN(p_c_open, 2)
PAR_OPEN(p_l1_open, 3)
PAR_OPEN(p_l2_open, 4)

static int p_a_apply(struct hctx *ctx, const struct event *ev)
{
    int64_t n = payload_int(ev, "n");
    if (!pthread_equal(pthread_self(), par_main))
        par_off_main = true;
    if (ev->seq == par_fail_at) {
        par_fail_at = 0;
        return CAIRN_EIO;
    }
    int rc = par_count(ctx, par_db[0]);
    for (int64_t k = 0; k < n % 3 && !rc; k++)
        rc = emit_k(ctx, ev, "x", k, NULL, NULL);
    return rc;
}

static int p_b_apply(struct hctx *ctx, const struct event *ev)
{
    int64_t n = payload_int(ev, "n");
    int rc = n % 4 ? 0 : par_count(ctx, par_db[1]);
    for (int64_t k = 0; k < n % 2 && !rc; k++)
        rc = emit_k(ctx, ev, "y", k, NULL, NULL);
    return rc;
}

static int p_c_apply(struct hctx *ctx, const struct event *ev)
{
    if (!pthread_equal(pthread_self(), par_main))
        par_off_main = true;
    if (par_check_prefetch && !par_prefetched[ev->seq])
        fail_msg("p_c: input %llu applied before its prefetch", (unsigned long long)ev->seq);
    int rc = par_count(ctx, par_db[2]);
    return rc ? rc : payload_int(ev, "n") % 7 ? 0 : emit_k(ctx, ev, "w", 0, NULL, NULL);
}

/* p_c's prefetch (handler.h): in a parallel apply, called once for every
 * input it consumes (decoded), before that input's apply. */

static void p_c_prefetch(struct hctx *ctx, const struct event *ev)
{
    (void)ctx;
    if (!ev->body || ev->derived || ev->type.n != 2 || memcmp(ev->type.p, "in", 2) || !ev->seq ||
        ev->seq > PAR_INPUTS)
        fail_msg("p_c prefetch: %.*s %llu", (int)ev->type.n, ev->type.p,
                 (unsigned long long)ev->seq);
    par_nprefetch++;
    if (!par_check_prefetch) /* a retried run prefetches again */
        return;
    if (par_prefetched[ev->seq])
        fail_msg("p_c prefetch: input %llu twice", (unsigned long long)ev->seq);
    par_prefetched[ev->seq] = true;
}

static int p_l1_apply(struct hctx *ctx, const struct event *ev)
{
    par_record('1', ev);
    int rc = par_count(ctx, par_db[3]);
    return rc || payload_int(ev, "k") != 1 ? rc
                                           : emit_k(ctx, ev, "z", (int64_t)ev->dseq, NULL, NULL);
}

/* derived_raw: y and z (only p_l2 consumes them) come without a body, x
 * (p_l1 consumes it too) with one, in the serial and the parallel apply. */
static int p_l2_apply(struct hctx *ctx, const struct event *ev)
{
    if (ev->derived && (ev->type.n != 1 || (ev->type.p[0] == 'x') != !!ev->body))
        fail_msg("p_l2: %.*s %llu with%s body", (int)ev->type.n, ev->type.p,
                 (unsigned long long)ev->dseq, ev->body ? "" : "out");
    par_record('2', ev);
    return ev->derived ? 0 : par_count(ctx, par_db[4]);
}

static const struct handler p_a = {.version = HANDLER_VERSION,
                                   .name = "p_a",
                                   .consumes = LIST("in"),
                                   .emits = LIST("x"),
                                   .open = p_a_open,
                                   .apply = p_a_apply,
                                   .concurrent = true};
static const struct handler p_b = {.version = HANDLER_VERSION,
                                   .name = "p_b",
                                   .consumes = LIST("in"),
                                   .emits = LIST("y"),
                                   .open = p_b_open,
                                   .apply = p_b_apply};
static const struct handler p_c = {.version = HANDLER_VERSION,
                                   .name = "p_c",
                                   .consumes = LIST("in"),
                                   .emits = LIST("w"),
                                   .open = p_c_open,
                                   .apply = p_c_apply,
                                   .prefetch = p_c_prefetch,
                                   .concurrent = true};
static const struct handler p_l1 = {.version = HANDLER_VERSION,
                                    .name = "p_l1",
                                    .consumes = LIST("x"),
                                    .emits = LIST("z"),
                                    .open = p_l1_open,
                                    .apply = p_l1_apply};
static const struct handler p_l2 = {.version = HANDLER_VERSION,
                                    .name = "p_l2",
                                    .consumes = LIST("in", "x", "z", "y"),
                                    .open = p_l2_open,
                                    .apply = p_l2_apply,
                                    .derived_raw = true};

/* The same log through the serial and the parallel apply: every late
 * handler sees the same events in the same order, and the states have
 * the same digest. */
static void test_parallel_apply(void **state)
{
    const char *dir = *state;
    const struct handler *const table[] = {&p_a, &p_l1, &p_b, &p_l2, &p_c, NULL};
    static char serial[sizeof par_trace / sizeof par_trace[0]][24];
    char into[4200], into2[4200];
    uint8_t d1[32], d2[32], d3[32];
    uint64_t cp1, cp2, cp3;
    struct cairn_error e;
    par_main = pthread_self();

    struct engine_config cfg = config_for(dir, table);
    cfg.apply_threads = 1;
    struct engine *eng = open_engine(&cfg);
    const struct handler *const *order;
    assert_int_equal(engine_handlers(eng, &order), 5);
    assert_ptr_equal(order[1], &p_l1);
    assert_ptr_equal(order[2], &p_b);
    assert_ptr_equal(order[3], &p_l2);
    append_inputs(engine_log(eng), 1, PAR_INPUTS);
    par_ntrace = 0;
    par_off_main = false;
    par_nprefetch = 0;
    assert_int_equal(engine_catch_up(eng, 0), 0);
    assert_false(par_off_main);
    assert_int_equal(par_nprefetch, 0); /* serial: no prefetch (handler.h) */
    size_t nserial = par_ntrace;
    memcpy(serial, par_trace, sizeof serial);
    state_digest(engine_proj(eng), d1, &cp1);
    assert_int_equal(cp1, PAR_INPUTS);
    engine_close(eng);
    /* p_l2's first input: the input, then x (p_a), z (p_l1), y (p_b). */
    assert_string_equal(serial[0], "1dx1/1"); /* n = 1: one x, no z, one y */
    assert_string_equal(serial[1], "2iin1/0");
    assert_string_equal(serial[2], "2dx1/1");
    assert_string_equal(serial[3], "2dy1/1");

    snprintf(into, sizeof into, "%s/par", dir);
    cfg.apply_threads = 2;
    par_ntrace = 0;
    cairn_error_clear(&e);
    static struct engine_replay_stats rs;
    cfg.replay_stats = &rs;
    memset(par_prefetched, 0, sizeof par_prefetched);
    par_check_prefetch = true;
    assert_int_equal(engine_replay(&cfg, into, 0, &e), 0);
    par_check_prefetch = false;
    assert_int_equal(par_nprefetch, PAR_INPUTS); /* each input once, before its apply */
    cfg.replay_stats = NULL;
    /* The parallel apply really ran: the worker applied runs, or the
     * writer's thread took every one of them (work stealing; under
     * valgrind the worker may never get there first). */
    assert_true(par_off_main || rs.phases.stolen > 0);
    assert_int_equal(par_ntrace, nserial);
    for (size_t i = 0; i < nserial; i++)
        if (strcmp(par_trace[i], serial[i]))
            fail_msg("event %zu: serial %s, parallel %s", i, serial[i], par_trace[i]);
    struct proj *p;
    assert_int_equal(proj_open(&p, &(struct proj_config){.dir = into, .readonly = true}), 0);
    state_digest(p, d2, &cp2);
    proj_close(p);
    assert_int_equal(cp2, PAR_INPUTS);
    assert_memory_equal(d1, d2, 32);

    /* In two parts (the second one parallel too): the same state. */
    snprintf(into2, sizeof into2, "%s/par2", dir);
    par_ntrace = 0;
    assert_int_equal(engine_replay(&cfg, into2, 4500, &e), 0);
    cfg.state_dir = into2;
    eng = open_engine(&cfg);
    state_digest(engine_proj(eng), d3, &cp3);
    engine_close(eng);
    assert_int_equal(cp3, PAR_INPUTS);
    assert_memory_equal(d1, d3, 32);

    /* A concurrent handler failing in a parallel apply (on whichever
     * thread the sides gave it) aborts the transaction: nothing of it
     * stays, every handler is reopened, and the retry gives the same
     * state. */
    snprintf(into2, sizeof into2, "%s/par3", dir);
    cfg.state_dir = into2;
    cfg.apply_to = 1;
    eng = open_engine(&cfg);
    par_fail_at = 5000;
    par_off_main = false;
    assert_int_equal(engine_catch_up(eng, 0), CAIRN_EIO);
    struct engine_phase_stats ph;
    engine_phase_stats(eng, &ph);
    assert_true(par_off_main || ph.stolen > 0); /* in a parallel apply, as above */
    assert_int_equal(par_fail_at, 0);
    assert_int_equal(proj_checkpoint(engine_proj(eng)), 1);
    par_ntrace = 0;
    assert_int_equal(engine_catch_up(eng, 0), 0);
    state_digest(engine_proj(eng), d3, &cp3);
    engine_close(eng);
    assert_int_equal(cp3, PAR_INPUTS);
    assert_memory_equal(d1, d3, 32);
}

/* Catching up in three steps on one engine — parallel (4 500 inputs),
 * serial (100: the parallel apply's run zones are given back), parallel
 * again (4 400: they are made again) — gives the state one serial catch-up
 * gives. Under ASan, a zone used after it was given back fails here. */
static void test_parallel_after_serial(void **state)
{
    const char *dir = *state;
    const struct handler *const table[] = {&p_a, &p_l1, &p_b, &p_l2, &p_c, NULL};
    static const uint64_t steps[] = {4500, 4600, PAR_INPUTS};
    char steps_dir[4200];
    uint8_t d1[32], d2[32];
    uint64_t cp1, cp2;
    par_main = pthread_self();

    /* The stepped engine opens on the empty log (an open catches up). */
    struct engine_config cfg = config_for(dir, table);
    snprintf(steps_dir, sizeof steps_dir, "%s/steps", dir);
    cfg.state_dir = steps_dir;
    cfg.apply_threads = 2;
    struct engine *eng = open_engine(&cfg);
    append_inputs(engine_log(eng), 1, PAR_INPUTS);
    uint64_t stolen = 0;
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        par_ntrace = 0;
        par_off_main = false;
        assert_int_equal(engine_catch_up(eng, steps[k]), 0);
        assert_int_equal(proj_checkpoint(engine_proj(eng)), steps[k]);
        struct engine_phase_stats ph;
        engine_phase_stats(eng, &ph);
        /* Steps 0 and 2 ran in parallel (on the worker, or all stolen by
         * this thread); step 1 did not. */
        bool par = par_off_main || ph.stolen > stolen;
        assert_int_equal(par, k != 1);
        stolen = ph.stolen;
    }
    state_digest(engine_proj(eng), d2, &cp2);
    engine_close(eng);
    assert_int_equal(cp2, PAR_INPUTS);

    cfg.state_dir = NULL;
    cfg.apply_threads = 1;
    par_ntrace = 0;
    eng = open_engine(&cfg); /* one serial catch-up */
    state_digest(engine_proj(eng), d1, &cp1);
    engine_close(eng);
    assert_int_equal(cp1, PAR_INPUTS);
    assert_memory_equal(d1, d2, 32);
}

/* ====================================================================== a replay's first map */

/* raw_inputs: r_raw reads "in" from the payload (mp_raw_get); its body is
 * NULL unless another consumer (r_dec) needs it decoded — serial and in a
 * parallel apply, where both run on the worker or on either thread. */
static _Atomic long raw_sum, raw_bodies, raw_calls, dec_calls;

static int r_raw_apply(struct hctx *ctx, const struct event *ev)
{
    (void)ctx;
    msgpack_object o;
    if (!mp_raw_get(ev->payload, ev->payload_len, "n", &o) ||
        o.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        fail_msg("r_raw: no n in input %llu", (unsigned long long)ev->seq);
    raw_sum += (long)o.via.u64;
    raw_bodies += ev->body != NULL;
    raw_calls++;
    return 0;
}

static int r_dec_apply(struct hctx *ctx, const struct event *ev)
{
    (void)ctx;
    int64_t n;
    if (!ev->body || !mp_i64(mp_get(ev->body, "n"), &n) || n != (int64_t)ev->seq)
        fail_msg("r_dec: input %llu not decoded", (unsigned long long)ev->seq);
    dec_calls++;
    return 0;
}

static const struct handler r_raw = {.version = HANDLER_VERSION,
                                     .name = "r_raw",
                                     .consumes = LIST("in"),
                                     .raw_inputs = LIST("in"),
                                     .open = noop_open,
                                     .apply = r_raw_apply,
                                     .concurrent = true};
static const struct handler r_dec = {.version = HANDLER_VERSION,
                                     .name = "r_dec",
                                     .consumes = LIST("in"),
                                     .open = noop_open,
                                     .apply = r_dec_apply,
                                     .concurrent = true};

static void test_raw_inputs(void **state)
{
    const char *dir = *state;
    const struct handler *const alone[] = {&r_raw, NULL}, *const both[] = {&r_raw, &r_dec, NULL};
    const long n = PAR_INPUTS;
    for (int threads = 1; threads <= 2; threads++)
        for (int with_dec = 0; with_dec <= 1; with_dec++) {
            char sdir[4200];
            snprintf(sdir, sizeof sdir, "%s/raw%d%d", dir, threads, with_dec);
            struct engine_config cfg = config_for(dir, with_dec ? both : alone);
            cfg.apply_threads = threads;
            cfg.state_dir = sdir;
            raw_sum = raw_bodies = raw_calls = dec_calls = 0;
            struct engine *eng = open_engine(&cfg); /* catches up: every input */
            if (threads == 1 && !with_dec) {        /* the first: the log is empty */
                append_inputs(engine_log(eng), 1, n);
                assert_int_equal(engine_catch_up(eng, 0), 0);
            }
            assert_int_equal(raw_calls, n);
            assert_int_equal(raw_sum, n * (n + 1) / 2);
            assert_int_equal(raw_bodies, with_dec ? n : 0);
            assert_int_equal(dec_calls, with_dec ? n : 0);
            engine_close(eng);
        }
}

static void test_replay_map(void **state)
{
    (void)state;
    const uint64_t MB = 1ull << 20, big = 1ull << 50;
    /* bench/replay's 1M-event log: 390 MB used -> 1 GiB (195 MB for the
     * state, 780 for the one transaction of its 1 001 000 inputs) */
    assert_int_equal(engine_replay_map(390180864, 0, 1001000, big), 1024 * MB);
    /* its 3M log: 1.17 GB -> 4 GiB (585 MB, and 2 341 for the one
     * transaction of its 3 003 000 inputs: ENGINE_APPLY_BATCH is more) */
    assert_int_equal(engine_replay_map(1170612224, 0, 3003000, big), 4096 * MB);
    /* a 10M log of the same inputs: 3.9 GB -> 8 GiB (1 861 MB, and 3 119
     * for a first transaction of ENGINE_APPLY_BATCH inputs) */
    assert_int_equal(engine_replay_map(3902040746, 0, 10010000, big), 8192 * MB);
    /* --to a quarter of it: 293 MB of inputs, one transaction -> 1 GiB */
    assert_int_equal(engine_replay_map(1170612224, 750750, 3003000, big), 1024 * MB);
    /* --to past the head counts as the head */
    assert_int_equal(engine_replay_map(1170612224, 9000000, 3003000, big), 4096 * MB);
    /* a log small enough for the initial map: the default (0) */
    assert_int_equal(engine_replay_map(0, 0, 0, big), 0);
    assert_int_equal(engine_replay_map(25 * MB, 0, 1000, big), 0);
    assert_int_equal(engine_replay_map(26 * MB, 0, 1000, big), 128 * MB);
    /* the disk must have twice the map free: else the largest map that
     * has, down to the default */
    assert_int_equal(engine_replay_map(390180864, 0, 1001000, 2048 * MB), 1024 * MB);
    assert_int_equal(engine_replay_map(390180864, 0, 1001000, 2048 * MB - 1), 512 * MB);
    assert_int_equal(engine_replay_map(390180864, 0, 1001000, 256 * MB), 128 * MB);
    assert_int_equal(engine_replay_map(390180864, 0, 1001000, 256 * MB - 1), 0);
    /* never past the ceiling */
    assert_int_equal(engine_replay_map(UINT64_MAX, 0, 1, UINT64_MAX), CAIRN_MAP_SIZE_CEILING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_isolation_dbi_names, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_isolation_open_failure, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_order_refuses_cycles, dir_setup, dir_teardown),
        cmocka_unit_test(test_order_refuses_bad_handlers),
        cmocka_unit_test(test_order_producers_first),
        cmocka_unit_test(test_replay_map),
        cmocka_unit_test_setup_teardown(test_raw_inputs, dir_setup, dir_teardown),
        cmocka_unit_test(test_order_random_dags),
        cmocka_unit_test_setup_teardown(test_dispatch, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_exactly_once, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_write_bounded_transactions, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_cache_bounded_transactions, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_abort_reopens_handlers, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_parallel_apply, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_parallel_after_serial, dir_setup, dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
