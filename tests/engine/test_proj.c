/*
 * test_proj.c — the state layer under the handler API (projections/):
 *
 *  - the map and the disk: the whole map is reserved on disk at open and
 *    before it grows; when the reservation fails (a file-size limit stands
 *    in for a full disk) the grow fails with CAIRN_ENOSPC, nothing is
 *    written and the map in use stays usable; transactions that commit
 *    when proj_txn_full says so never fill the map (it grows ahead); a
 *    transaction that filled it teaches proj_grow, so the redo does not;
 *    a transaction up to twice the biggest so far fits without asking
 *    (writes after the estimate's last look, as cached handlers' flushes);
 *    the estimate follows the workload (falls by halves over transactions
 *    that add little, rises at once with one that adds much);
 *  - a commit that wrote nothing and left the checkpoint as it was
 *    commits nothing (LMDB's transaction id stays); one that moves it
 *    stores it;
 *  - hctx_put_new: stores an absent key, returns the stored value of a
 *    present one without writing;
 *  - hctx_cursor_put: sorted and unsorted puts through a cursor, mixed
 *    with hctx_put/hctx_del on the same DBI, give the state plain puts
 *    give (same digest), and iteration goes on from the put key; keys
 *    put in order past the last one fill whole leaves (MDB_APPEND), and a
 *    key past the cursor's last one but not the database's is put as
 *    usual;
 *  - hctx_clear empties one DBI (the other untouched), unsets a cursor on
 *    it, and the emptied DBI takes puts again: the state equals one whose
 *    entries were deleted one by one (same digest);
 *  - snapshots and a grow of the map: a snapshot that refreshes the DBI
 *    handles while a grow waits for the open snapshots does not keep
 *    proj_snap_dbi of an open snapshot waiting (the lock-order inversion
 *    ThreadSanitizer found: it deadlocked the three);
 *  - hctx_emit appends through a cursor kept per transaction: dense dseqs
 *    across transactions, an aborted one and interleaved writes;
 *  - hctx_emitted_dseq gives each emitted event's dseq, and
 *    hctx_stream_payload reads an event of the handler's stream back in a
 *    later transaction or the same one (not one an aborted one emitted);
 *  - shared mode (two apply threads): emits are kept in the context, not
 *    written (no state write counted), with their dseqs and payloads
 *    readable, until proj_hctx_sync appends them; a state built that way
 *    equals one built by plain emits; what an aborted transaction kept
 *    is dropped;
 *  - payload checks: a non-map payload is refused in every build, a
 *    truncated one where payloads are checked whole (PROJ_CHECK_PAYLOADS);
 *  - hcache_get_or_new / hcache_add: new entries zeroed with their key,
 *    found again after the table grew; a dropped fresh entry is not kept;
 *    hcache_prefetch reads no entry freed since it found it;
 *  - prefaulting the map (proj_prefault on another thread while the
 *    transaction writes) changes no byte, across a remap, and does make
 *    the pages present (the thread takes the faults, once); proj_sync
 *    gives the pages past the last used one back to the file system
 *    without changing the state, and the next transaction reserves the
 *    whole map again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proj.h"

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int dir_setup(void **state)
{
    const char *base = getenv("TMPDIR");
    char *dir = malloc(256);
    if (!dir)
        return -1;
    snprintf(dir, 256, "%s/cairn-test-proj-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        free(dir);
        return -1;
    }
    *state = dir;
    return 0;
}

static int dir_teardown(void **state)
{
    nftw(*state, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(*state);
    return 0;
}

/* A handler with two DBIs and a stream; the tests drive its context. */
static const char *const t_consumes[] = {"in", NULL};
static const char *const t_emits[] = {"t.out", NULL};
static unsigned t_db_a, t_db_b;

static int t_open(struct hctx *ctx)
{
    int rc = hctx_db(ctx, "a", 0, &t_db_a);
    return rc ? rc : hctx_db(ctx, "b", 0, &t_db_b);
}

static int t_apply(struct hctx *ctx, const struct event *ev)
{
    (void)ctx, (void)ev;
    return 0;
}

static const struct handler t_handler = {
    .version = HANDLER_VERSION,
    .name = "t",
    .consumes = t_consumes,
    .emits = t_emits,
    .open = t_open,
    .apply = t_apply,
};

struct fixture {
    char dir[300];
    struct proj *p;
    struct hctx *ctx;
};

static void fx_open(struct fixture *f, const char *parent, const char *name, size_t map_size)
{
    snprintf(f->dir, sizeof f->dir, "%s/%s", parent, name);
    assert_int_equal(proj_open(&f->p, &(struct proj_config){.dir = f->dir, .map_size = map_size}),
                     0);
    assert_int_equal(proj_hctx_new(f->p, &t_handler, NULL, &f->ctx), 0);
    assert_int_equal(proj_begin(f->p), 0);
    assert_int_equal(t_open(f->ctx), 0);
    assert_int_equal(proj_commit(f->p, 0), 0);
}

static void fx_close(struct fixture *f)
{
    proj_hctx_free(f->ctx);
    proj_close(f->p);
}

static void digest_of(struct proj *p, uint8_t out[32])
{
    struct proj_snap *s;
    assert_int_equal(proj_snap_begin(p, &s), 0);
    assert_int_equal(proj_snap_digest(s, out), 0);
    proj_snap_end(s);
}

/* The two fixtures' states have the same digest. */
static void assert_same_state(struct fixture *a, struct fixture *b)
{
    uint8_t da[32], db[32];
    digest_of(a->p, da);
    digest_of(b->p, db);
    assert_memory_equal(da, db, 32);
}

/* Bytes of the data file that have disk blocks. */
static uint64_t file_blocks(const char *dir, uint64_t *size)
{
    char path[400];
    struct stat st;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    assert_int_equal(stat(path, &st), 0);
    *size = (uint64_t)st.st_size;
    return (uint64_t)st.st_blocks * 512;
}

/* The state environment's info: its map size, its last transaction id. */
static MDB_envinfo info_of(struct proj *p)
{
    MDB_envinfo info;
    mdb_env_info(cairn_env_mdb(proj_env(p)), &info);
    return info;
}

/* ====================================================================== the map and the disk */

static void test_map_reserved_and_grown_ahead(void **state)
{
    struct fixture f;
    fx_open(&f, *state, "s", 1u << 20);
    uint64_t size, blocks = file_blocks(f.dir, &size);
    assert_true(size == info_of(f.p).me_mapsize);
    assert_true(blocks >= size); /* every byte of the map has its block */

    /* Random keys, 200-byte values, committed when proj_txn_full says so:
     * the map grows ahead, never fills in a transaction. */
    uint8_t val[200];
    memset(val, 'v', sizeof val);
    uint64_t x = 88172645463325252ull, cp = 0;
    for (int txn = 0; txn < 40; txn++) {
        assert_int_equal(proj_begin(f.p), 0);
        do {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            uint8_t key[8];
            cairn_be64_put(key, x);
            int rc = hctx_put(f.ctx, t_db_a, key, sizeof key, val, sizeof val);
            if (rc)
                fail_msg("put in transaction %d after %llu writes: %s", txn,
                         (unsigned long long)proj_txn_writes(f.p), cairn_strerror(rc));
        } while (!proj_txn_full(f.p, 20000));
        assert_int_equal(proj_commit(f.p, ++cp), 0);
    }
    blocks = file_blocks(f.dir, &size);
    assert_true(size == info_of(f.p).me_mapsize);
    assert_true(size > (1u << 20));
    assert_true(blocks >= size);
    fx_close(&f);
}

/* Puts vn-byte values at random keys drawn from `seed` (keys below
 * 2^keybits: with few bits, the same keys again and again) until max puts,
 * a failure (*rc), or — when asked — proj_txn_full. */
static uint64_t put_keys(struct fixture *f, uint64_t max, bool ask, uint64_t seed, size_t vn,
                         unsigned keybits, int *rc)
{
    static uint8_t val[1500];
    memset(val, 'v', sizeof val);
    assert_true(vn <= sizeof val && keybits >= 1 && keybits <= 64);
    uint64_t n = 0;
    *rc = 0;
    while (n < max && !(ask && proj_txn_full(f->p, UINT64_MAX))) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        uint8_t key[8];
        cairn_be64_put(key, seed >> (64 - keybits));
        if ((*rc = hctx_put(f->ctx, t_db_a, key, sizeof key, val, vn)))
            break;
        n++;
    }
    return n;
}

static uint64_t put_until(struct fixture *f, uint64_t max, bool ask, int *rc)
{
    return put_keys(f, max, ask, 88172645463325252ull, 1500, 64, rc);
}

/* A transaction that fills the map despite the estimate (here: nothing
 * asked proj_txn_full) is aborted; proj_grow learns from it, so the redo
 * in the doubled map commits before filling it again. The values are big
 * (two per page: far more pages per write than the first estimate), so
 * without the lesson the redo would run into MAP_FULL once more. */
static void test_map_full_teaches(void **state)
{
    struct fixture f;
    int rc;
    fx_open(&f, *state, "full", 16u << 20);
    assert_int_equal(proj_begin(f.p), 0);
    uint64_t n = put_until(&f, UINT64_MAX, false, &rc);
    assert_int_equal(rc, CAIRN_EMAPFULL);
    assert_true(n >= 4096); /* big enough to learn from */
    proj_abort(f.p);
    assert_int_equal(proj_grow(f.p), 0);

    /* The redo: the same writes (and more), until proj_txn_full says. */
    assert_int_equal(proj_begin(f.p), 0);
    uint64_t m = put_until(&f, 4 * n, true, &rc);
    if (rc)
        fail_msg("the redo failed after %llu of %llu writes: %s", (unsigned long long)m,
                 (unsigned long long)n, cairn_strerror(rc));
    assert_true(m > n / 2 && m < 4 * n);
    assert_int_equal(proj_commit(f.p, 1), 0);
    fx_close(&f);
}

/* Writes proj_txn_full never sees — a cached handler's flush comes after
 * the engine's last look — fit when the transaction adds up to about
 * twice what the biggest one before did: proj_begin grew ahead. (Room for
 * only the biggest one, a replay's second transaction — twice the inputs
 * of a first one cut short — filled the map in its flush and was applied
 * again.) */
static void test_map_room_twice_biggest(void **state)
{
    struct fixture f;
    int rc;
    fx_open(&f, *state, "twice", 16u << 20);
    assert_int_equal(proj_begin(f.p), 0);
    uint64_t n = put_until(&f, 2500, false, &rc); /* ~40 % of the map */
    assert_int_equal(rc, 0);
    assert_int_equal(proj_commit(f.p, 1), 0);
    assert_true(info_of(f.p).me_mapsize == 16u << 20);
    /* Twice as many, never asking: the map must not fill. (put_until
     * starts its keys over: these are updates first, then new keys.) */
    assert_int_equal(proj_begin(f.p), 0);
    uint64_t m = put_until(&f, 2 * n, false, &rc);
    if (rc)
        fail_msg("the second transaction failed after %llu of %llu writes: %s",
                 (unsigned long long)m, (unsigned long long)(2 * n), cairn_strerror(rc));
    assert_int_equal(proj_commit(f.p, 2), 0);

    fx_close(&f);
}

/* n puts (put_keys), every one of which must succeed. */
static void put_n(struct fixture *f, uint64_t n, uint64_t seed, size_t vn, unsigned keybits)
{
    int rc;
    uint64_t done = put_keys(f, n, false, seed, vn, keybits, &rc);
    if (rc)
        fail_msg("put %llu of %llu: %s", (unsigned long long)done, (unsigned long long)n,
                 cairn_strerror(rc));
}

/* The estimate follows the workload: after a transaction of big values
 * (half a page per write) it refuses what such writes could not fit;
 * transactions that add nothing to the file (updates of a few small
 * values) bring it down by halves, so the same number of small writes is
 * let through; one big transaction raises it again at once. (It was the
 * most ever seen: after defining 100 000 fences, every transaction of
 * location fixes ended at a fifth of its writes bound.) */
static void test_map_estimate_follows_the_workload(void **state)
{
    struct fixture f;
    const uint64_t w = 24000; /* at 1/2 page per write, more than the room */
    fx_open(&f, *state, "est", 64u << 20);
    assert_int_equal(proj_begin(f.p), 0);
    put_n(&f, 6000, 1, 1500, 64);
    assert_int_equal(proj_commit(f.p, 1), 0);
    assert_int_equal(proj_begin(f.p), 0);
    assert_true(proj_txn_full_at(f.p, w, UINT64_MAX));
    proj_abort(f.p);

    uint64_t cp = 1;
    for (int i = 0; i < 8; i++) { /* 1/2 halved 8 times: below the 1/64 floor */
        assert_int_equal(proj_begin(f.p), 0);
        put_n(&f, 5000, 7 + (uint64_t)i, 8, 6); /* 64 keys */
        assert_int_equal(proj_commit(f.p, ++cp), 0);
    }
    assert_int_equal(proj_begin(f.p), 0);
    assert_false(proj_txn_full_at(f.p, w, UINT64_MAX));
    assert_true(proj_txn_full_at(f.p, w, w)); /* the writes bound still holds */
    proj_abort(f.p);

    assert_int_equal(proj_begin(f.p), 0);
    put_n(&f, 6000, 99, 1500, 64);
    assert_int_equal(proj_commit(f.p, ++cp), 0);
    assert_int_equal(proj_begin(f.p), 0);
    assert_true(proj_txn_full_at(f.p, w, UINT64_MAX));
    proj_abort(f.p);
    fx_close(&f);
}

/* A file-size limit makes posix_fallocate fail (EFBIG) the way a full
 * disk does (ENOSPC): the grow fails before anything is written, and the
 * map in use stays usable. (proj_open reserves through the same function,
 * but there LMDB's own ftruncate meets the limit first, which a full disk
 * would not refuse: a sparse extension needs no block.) */
static void test_map_reserve_failure(void **state)
{
    struct fixture f;
    struct rlimit old, lim;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);

    /* Grow: a 1 MiB map, the limit at 1.5 MiB. */
    fx_open(&f, *state, "grow", 1u << 20);
    lim = (struct rlimit){.rlim_cur = 3u << 19, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = proj_grow(f.p);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    assert_int_equal(rc, CAIRN_ENOSPC);               /* EFBIG, as a full disk's ENOSPC */
    assert_true(info_of(f.p).me_mapsize == 1u << 20); /* not grown */
    uint64_t size;
    file_blocks(f.dir, &size);
    assert_true(size == 1u << 20); /* what the failed reservation added is given back */
    /* The map in use is reserved: writing to it still works. */
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hctx_put(f.ctx, t_db_a, "k", 1, "v", 1), 0);
    assert_int_equal(proj_commit(f.p, 1), 0);
    assert_int_equal(proj_grow(f.p), 0);
    assert_true(info_of(f.p).me_mapsize == 2u << 20);
    uint64_t blocks = file_blocks(f.dir, &size);
    assert_true(size == 2u << 20 && blocks >= size);
    fx_close(&f);
}

/* ====================================================================== prefaulting */

struct pf_run {
    struct proj *p;
    uint64_t from, to;
    _Atomic bool stop;
    long faults; /* page faults the prefaulting thread took */
};

/* This thread's page faults (minor and major) so far. */
static long thread_faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_minflt + u.ru_majflt;
}

static void *pf_main(void *arg)
{
    struct pf_run *r = arg;
    long f0 = thread_faults();
    proj_prefault(r->p, r->from, r->to, &r->stop);
    r->faults = thread_faults() - f0;
    return NULL;
}

/* One transaction of puts while another thread prefaults the pages it is
 * about to take (as the engine's worker during the flushes). */
static void pf_txn(struct fixture *f, uint64_t seed, uint64_t cp, bool prefault, long *faults)
{
    struct pf_run r = {.p = f->p};
    pthread_t t;
    assert_int_equal(proj_begin(f->p), 0);
    put_n(f, 3000, seed, 1000, 64);
    proj_prefault_range(f->p, &r.from, &r.to);
    assert_true(r.to > r.from);
    if (prefault)
        assert_int_equal(pthread_create(&t, NULL, pf_main, &r), 0);
    put_n(f, 3000, seed ^ 0x5deece66dull, 1000, 64);
    if (prefault) {
        atomic_store(&r.stop, true);
        assert_int_equal(pthread_join(t, NULL), 0);
    }
    assert_int_equal(proj_commit(f->p, cp), 0);
    *faults = r.faults;
}

/* Prefaulting the map ahead of a transaction's writes (proj_prefault, on
 * another thread, while the transaction writes) changes no byte: the
 * state equals one built without it, transaction after transaction, and
 * after the map was grown (remapped, so the prefaulter finds it again).
 * And it does prefault: alone, over the range a committed transaction
 * says the next will take, the thread takes a page fault for most of its
 * pages, and a second pass over the same range takes almost none. */
static void test_prefault(void **state)
{
    struct fixture a, b;
    fx_open(&a, *state, "a", 0);
    fx_open(&b, *state, "b", 0);
    long faults;
    for (uint64_t i = 1; i <= 6; i++) {
        pf_txn(&a, 1000 + i, i, true, &faults);
        pf_txn(&b, 1000 + i, i, false, &faults);
        if (i == 3) { /* a remap in the middle */
            assert_int_equal(proj_grow(a.p), 0);
            assert_int_equal(proj_grow(b.p), 0);
        }
    }
    uint8_t da[32], db[32];
    digest_of(a.p, da);
    digest_of(b.p, db);
    assert_memory_equal(da, db, 32);

    /* proj_sync gives the pages past the last used one back to the file
     * system (FALLOC_FL_PUNCH_HOLE), the prefaulted ones with them: the
     * file keeps its size, the used pages their blocks, the state is as
     * it was; the next transaction reserves the whole map again before it
     * writes there. */
    uint64_t size, blocks;
    MDB_envinfo ai = info_of(a.p);
    uint64_t used = (ai.me_last_pgno + 1) * 4096;
    assert_true(used + (1u << 20) < ai.me_mapsize); /* a tail to give back */
    assert_int_equal(proj_sync(a.p), 0);
    blocks = file_blocks(a.dir, &size);
    assert_true(size == ai.me_mapsize);
    assert_true(blocks >= used && blocks < used + (1u << 20));
    digest_of(a.p, da);
    assert_memory_equal(da, db, 32);
    pf_txn(&a, 77, 7, true, &faults);
    pf_txn(&b, 77, 7, false, &faults);
    blocks = file_blocks(a.dir, &size);
    assert_true(size == info_of(a.p).me_mapsize && blocks >= size);
    digest_of(a.p, da);
    digest_of(b.p, db);
    assert_memory_equal(da, db, 32);

    /* Behaviour, on a state no prefaulting has touched: the range after a
     * transaction of the same writes, none of its pages written yet. */
    struct fixture c;
    fx_open(&c, *state, "c", 0);
    pf_txn(&c, 7, 1, false, &faults);
    struct pf_run r = {.p = c.p};
    assert_int_equal(proj_begin(c.p), 0);
    proj_prefault_range(c.p, &r.from, &r.to);
    assert_true(r.to - r.from >= 1024);
    if (cairn_env_populate(proj_env(c.p), r.to - 1, 1) == 0) { /* Linux >= 5.14 */
        pf_main(&r);
        long first = r.faults;
        pf_main(&r);
        assert_true(first >= (long)(r.to - r.from) / 2);
        assert_true(r.faults < first / 10);
    }
    proj_abort(c.p);
    fx_close(&c);
    fx_close(&a);
    fx_close(&b);
}

/* proj_prefault_ahead, called by the transaction's own thread between its
 * writes (as the engine's reading thread before each run; in shared mode,
 * where it takes the state lock to see where the transaction is): the
 * state is byte for byte the one built without it, transaction after
 * transaction. And the writes after it find their pages present: 1 500
 * puts of 1 000 bytes take ~900 fresh pages, and fault on far fewer. */
static void test_prefault_ahead(void **state)
{
    struct fixture a, b;
    fx_open(&a, *state, "a", 0);
    fx_open(&b, *state, "b", 0);
    long fa = 0, fb = 0, grown = 0;
    for (uint64_t i = 1; i <= 4; i++) {
        for (int k = 0; k < 2; k++) {
            struct fixture *f = k ? &b : &a;
            assert_int_equal(proj_begin(f->p), 0);
            proj_set_shared(f->p, i % 2 == 0); /* the lock, taken and given back */
            put_n(f, 500, 3000 + i, 1000, 64);
            if (!k)
                proj_prefault_ahead(f->p);
            long f0 = thread_faults();
            size_t p0 = info_of(f->p).me_last_pgno;
            put_n(f, 1500, 5000 + i, 1000, 64);
            *(k ? &fb : &fa) += thread_faults() - f0;
            proj_set_shared(f->p, false);
            assert_int_equal(proj_commit(f->p, i), 0);
            if (k)
                grown += (long)(info_of(f->p).me_last_pgno - p0);
        }
    }
    uint8_t da[32], db[32];
    digest_of(a.p, da);
    digest_of(b.p, db);
    assert_memory_equal(da, db, 32);
    if (cairn_env_populate(proj_env(a.p), 2, 1) == 0) { /* Linux >= 5.14 */
        /* the faults the prefault saved: over a quarter of the pages the
         * file grew by (~half on the test VM; the rest are the other
         * faults of the same puts, ASan's among them, alike in both) */
        assert_true(fb >= grown / 2);
        assert_true(fb - fa >= grown / 4);
    }
    fx_close(&a);
    fx_close(&b);
}

/* ====================================================================== hctx_put_new */

static void test_put_new(void **state)
{
    struct fixture f;
    MDB_val v, old;
    fx_open(&f, *state, "s", 0);
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hctx_put_new(f.ctx, t_db_a, "k1", 2, "first", 5, &old), 0);
    assert_int_equal(proj_txn_writes(f.p), 1);
    assert_int_equal(hctx_put_new(f.ctx, t_db_a, "k1", 2, "second", 6, &old), CAIRN_ECONFLICT);
    assert_int_equal(proj_txn_writes(f.p), 1); /* nothing written */
    assert_int_equal(old.mv_size, 5);
    assert_memory_equal(old.mv_data, "first", 5);
    assert_int_equal(hctx_get(f.ctx, t_db_a, "k1", 2, &v), 0);
    assert_int_equal(v.mv_size, 5);
    assert_memory_equal(v.mv_data, "first", 5);
    /* Another DBI, same key: absent there. */
    assert_int_equal(hctx_put_new(f.ctx, t_db_b, "k1", 2, "b", 1, &old), 0);
    assert_int_equal(proj_commit(f.p, 1), 0);
    /* Across transactions. */
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hctx_put_new(f.ctx, t_db_b, "k1", 2, "x", 1, &old), CAIRN_ECONFLICT);
    assert_memory_equal(old.mv_data, "b", 1);
    assert_int_equal(hctx_put_new(f.ctx, t_db_b, "k2", 2, "", 0, &old), 0);
    assert_int_equal(hctx_put_new(f.ctx, t_db_b, "k2", 2, "y", 1, &old), CAIRN_ECONFLICT);
    assert_int_equal(old.mv_size, 0);
    assert_int_equal(proj_commit(f.p, 2), 0);
    fx_close(&f);
}

/* ====================================================================== commits */

/* A transaction that writes nothing and leaves the checkpoint where it was
 * commits nothing (LMDB's last transaction id does not move, so nothing was
 * written or synced): every start's handler open, and the catch-up of a
 * read command with nothing to apply. One that moves the checkpoint, or
 * the first of a fresh state, stores it. */
static void test_commit_unchanged_writes_nothing(void **state)
{
    struct fixture f;
    fx_open(&f, *state, "s", 0);
    size_t t0 = info_of(f.p).me_last_txnid; /* fx_open's commit stored checkpoint 0 */
    assert_true(t0 > 0);
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(proj_commit(f.p, 0), 0);
    assert_int_equal(info_of(f.p).me_last_txnid, t0);
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hctx_put(f.ctx, t_db_a, "k", 1, "v", 1), 0);
    assert_int_equal(proj_commit(f.p, 0), 0); /* a write: committed */
    assert_int_equal(info_of(f.p).me_last_txnid, t0 + 1);
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(proj_commit(f.p, 7), 0); /* the checkpoint moves */
    assert_int_equal(info_of(f.p).me_last_txnid, t0 + 2);
    assert_int_equal(proj_checkpoint(f.p), 7);
    fx_close(&f);
    /* stored: a reopened state has it, and committing it again (as the
     * engine's open does) writes nothing */
    struct proj *p;
    assert_int_equal(proj_open(&p, &(struct proj_config){.dir = f.dir}), 0);
    assert_int_equal(proj_checkpoint(p), 7);
    assert_int_equal(info_of(p).me_last_txnid, t0 + 2);
    assert_int_equal(proj_begin(p), 0);
    assert_int_equal(proj_commit(p, proj_checkpoint(p)), 0);
    assert_int_equal(info_of(p).me_last_txnid, t0 + 2);
    proj_close(p);
}

/* ====================================================================== hlayout */

/* An empty state takes the layout (marked once, at the first flush); a
 * state with another mark, or with data and no mark (the layout before
 * marks existed), is refused. DBI a holds the mark, b is the probe. */
static void test_layout_mark(void **state)
{
    struct fixture f;
    MDB_val v;
    fx_open(&f, *state, "s", 0);
    struct hlayout l = {.meta = t_db_a, .probe = t_db_b, .layout = 7, .what = "t"};
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hlayout_check(f.ctx, &l), 0);
    assert_false(l.written);
    assert_int_equal(hlayout_mark(f.ctx, &l), 0);
    assert_true(l.written);
    assert_int_equal(proj_txn_writes(f.p), 1);
    assert_int_equal(hlayout_mark(f.ctx, &l), 0); /* once */
    assert_int_equal(proj_txn_writes(f.p), 1);
    assert_int_equal(hctx_get(f.ctx, t_db_a, "layout", 6, &v), 0);
    assert_int_equal(v.mv_size, 4);
    assert_memory_equal(v.mv_data, "\0\0\0\7", 4);
    assert_int_equal(hctx_put(f.ctx, t_db_b, "k", 1, "v", 1), 0);
    assert_int_equal(proj_commit(f.p, 1), 0);

    assert_int_equal(proj_begin(f.p), 0);
    struct hlayout same = {.meta = t_db_a, .probe = t_db_b, .layout = 7, .what = "t"};
    assert_int_equal(hlayout_check(f.ctx, &same), 0);
    assert_true(same.written);
    struct hlayout newer = {.meta = t_db_a, .probe = t_db_b, .layout = 8, .what = "t"};
    assert_int_equal(hlayout_check(f.ctx, &newer), CAIRN_EINVAL);
    /* No mark but data in the probe: written before marks existed. */
    assert_int_equal(hctx_del(f.ctx, t_db_a, "layout", 6), 0);
    assert_int_equal(hlayout_check(f.ctx, &newer), CAIRN_EINVAL);
    /* No mark and an empty probe: a state this layout may start. */
    assert_int_equal(hctx_del(f.ctx, t_db_b, "k", 1), 0);
    assert_int_equal(hlayout_check(f.ctx, &newer), 0);
    assert_false(newer.written);
    proj_abort(f.p);
    fx_close(&f);
}

/* ====================================================================== hctx_cursor_put */

#define CP_KEYS 3000

/* Writes keys perm[0..n) (values from their index and round) to db a of
 * f, through a cursor (cursor) or hctx_put, with a del and a plain put
 * of db a between cursor puts now and then. */
static void write_keys(struct fixture *f, const uint32_t *perm, size_t n, int round, bool cursor)
{
    struct hcursor *c = NULL;
    if (cursor)
        assert_int_equal(hctx_cursor_open(f->ctx, t_db_a, NULL, 0, &c), 0);
    for (size_t i = 0; i < n; i++) {
        uint8_t key[4], val[40];
        cairn_be64_put(val, perm[i]);
        memset(val + 8, 'a' + round, sizeof val - 8);
        key[0] = (uint8_t)(perm[i] >> 24), key[1] = (uint8_t)(perm[i] >> 16);
        key[2] = (uint8_t)(perm[i] >> 8), key[3] = (uint8_t)perm[i];
        size_t vn = 9 + (perm[i] + (uint32_t)round) % 31;
        if (cursor)
            assert_int_equal(hctx_cursor_put(c, key, sizeof key, val, vn), 0);
        else
            assert_int_equal(hctx_put(f->ctx, t_db_a, key, sizeof key, val, vn), 0);
        if (i % 97 == 0) { /* the same DBI written beside the cursor */
            uint8_t k2[5] = {key[0], key[1], key[2], key[3], 'x'};
            assert_int_equal(hctx_put(f->ctx, t_db_a, k2, sizeof k2, val, 3), 0);
            if (i % 2)
                assert_int_equal(hctx_del(f->ctx, t_db_a, k2, sizeof k2), 0);
        }
    }
    hctx_cursor_close(c);
}

static void test_cursor_put(void **state)
{
    struct fixture plain, cur;
    uint32_t sorted[CP_KEYS], shuffled[CP_KEYS];
    for (uint32_t i = 0; i < CP_KEYS; i++)
        sorted[i] = shuffled[i] = i * 7919u;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = CP_KEYS - 1; i > 0; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t j = x % (i + 1);
        uint32_t t = shuffled[i];
        shuffled[i] = shuffled[j], shuffled[j] = t;
    }
    fx_open(&plain, *state, "plain", 0);
    fx_open(&cur, *state, "cursor", 0);
    for (int round = 0; round < 3; round++) {
        /* Round 0 inserts in random order, 1 overwrites sorted, 2 random. */
        const uint32_t *perm = round == 1 ? sorted : shuffled;
        struct fixture *fs[2] = {&plain, &cur};
        for (int k = 0; k < 2; k++) {
            assert_int_equal(proj_begin(fs[k]->p), 0);
            write_keys(fs[k], perm, CP_KEYS, round, k == 1);
            assert_int_equal(proj_commit(fs[k]->p, (uint64_t)round + 1), 0);
        }
        assert_same_state(&plain, &cur);
    }
    /* A put, then iteration goes on from the put key. */
    assert_int_equal(proj_begin(cur.p), 0);
    struct hcursor *c;
    MDB_val k, v;
    uint8_t key[4] = {0, 0, 0x1e, 0xef}; /* 7919 */
    assert_int_equal(hctx_cursor_open(cur.ctx, t_db_a, NULL, 0, &c), 0);
    assert_int_equal(hctx_cursor_put(c, key, 4, "new", 3), 0);
    assert_int_equal(hctx_cursor_next(c, &k, &v), 0);
    /* The successor of 7919: its "x" twin if kept, else 2 * 7919. */
    const uint8_t twin[5] = {0, 0, 0x1e, 0xef, 'x'}, next[4] = {0, 0, 0x3d, 0xde};
    assert_true((k.mv_size == 5 && !memcmp(k.mv_data, twin, 5)) ||
                (k.mv_size == 4 && !memcmp(k.mv_data, next, 4)));
    hctx_cursor_close(c);
    assert_int_equal(hctx_get(cur.ctx, t_db_a, key, 4, &v), 0);
    assert_int_equal(v.mv_size, 3);
    assert_memory_equal(v.mv_data, "new", 3);
    proj_abort(cur.p);
    fx_close(&plain);
    fx_close(&cur);
}

/* Leaf pages of t.a in the open transaction of f. */
static size_t leaf_pages(struct fixture *f)
{
    struct hcursor *c;
    MDB_val k, v;
    size_t pages = 0;
    const void *page = NULL;
    assert_int_equal(hctx_cursor_open(f->ctx, t_db_a, NULL, 0, &c), 0);
    while (hctx_cursor_next(c, &k, &v) == 0) { /* values of one leaf share its page */
        const void *pg = (const void *)((uintptr_t)v.mv_data & ~(uintptr_t)4095);
        pages += pg != page;
        page = pg;
    }
    hctx_cursor_close(c);
    return pages;
}

static void put_u32(struct hcursor *c, struct fixture *f, uint32_t k, char fill, size_t vn)
{
    uint8_t key[4] = {(uint8_t)(k >> 24), (uint8_t)(k >> 16), (uint8_t)(k >> 8), (uint8_t)k};
    uint8_t val[1300];
    memset(val, fill, sizeof val);
    if (c)
        assert_int_equal(hctx_cursor_put(c, key, 4, val, vn), 0);
    else
        assert_int_equal(hctx_put(f->ctx, t_db_a, key, 4, val, vn), 0);
}

/* Keys put in order past the last one go in with MDB_APPEND (full leaves)
 * and give the state plain puts give; a key the cursor's notion of the
 * last key wrongly takes as past it (another put made a bigger one) is
 * put as usual. */
static void test_cursor_append(void **state)
{
    struct fixture plain, cur;
    fx_open(&plain, *state, "plain", 0);
    fx_open(&cur, *state, "cursor", 0);
    /* 300 values of 1 300 bytes in key order into an empty database:
     * three fit a leaf. */
    struct fixture *fs[2] = {&plain, &cur};
    size_t leaves[2];
    for (int k = 0; k < 2; k++) {
        struct hcursor *c = NULL;
        assert_int_equal(proj_begin(fs[k]->p), 0);
        if (k)
            assert_int_equal(hctx_cursor_open(fs[k]->ctx, t_db_a, NULL, 0, &c), 0);
        for (uint32_t i = 0; i < 300; i++)
            put_u32(c, fs[k], 1000 + i, 'a', 1300);
        hctx_cursor_close(c);
        leaves[k] = leaf_pages(fs[k]);
        assert_int_equal(proj_commit(fs[k]->p, 1), 0);
    }
    assert_same_state(&plain, &cur);
    assert_int_equal(leaves[1], 100);
    assert_true(leaves[0] > 140); /* plain puts split in the middle */

    /* Past the end again, before it, on it, and past a stale tail. */
    for (int k = 0; k < 2; k++) {
        struct hcursor *c = NULL;
        assert_int_equal(proj_begin(fs[k]->p), 0);
        if (k)
            assert_int_equal(hctx_cursor_open(fs[k]->ctx, t_db_a, NULL, 0, &c), 0);
        put_u32(c, fs[k], 2000, 'b', 100);   /* appended */
        put_u32(c, fs[k], 1500, 'c', 100);   /* between keys */
        put_u32(c, fs[k], 2000, 'd', 200);   /* the last key again */
        put_u32(NULL, fs[k], 3000, 'e', 10); /* beside the cursor */
        put_u32(c, fs[k], 2500, 'f', 10);    /* past the cursor's tail, not the last */
        put_u32(c, fs[k], 2600, 'g', 10);
        put_u32(c, fs[k], 3001, 'h', 10); /* past the last */
        put_u32(c, fs[k], 3002, 'i', 10);
        put_u32(c, fs[k], 999, 'j', 10); /* first */
        hctx_cursor_close(c);
        assert_int_equal(proj_commit(fs[k]->p, 2), 0);
    }
    assert_same_state(&plain, &cur);
    /* and in key order, each once */
    assert_int_equal(proj_begin(cur.p), 0);
    struct hcursor *c;
    MDB_val k, v;
    uint32_t prev = 0, n = 0;
    assert_int_equal(hctx_cursor_open(cur.ctx, t_db_a, NULL, 0, &c), 0);
    while (hctx_cursor_next(c, &k, &v) == 0) {
        const uint8_t *b = k.mv_data;
        uint32_t x = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
        assert_true(n == 0 || x > prev);
        if (x == 2000)
            assert_true(v.mv_size == 200 && ((const uint8_t *)v.mv_data)[0] == 'd');
        prev = x, n++;
    }
    hctx_cursor_close(c);
    assert_int_equal(n, 300 + 8);
    proj_abort(cur.p);
    fx_close(&plain);
    fx_close(&cur);
}

/* hctx_clear against deleting every entry by cursor: the same digest,
 * within one transaction (cleared after puts, and a cursor open on the
 * DBI when it is cleared) and across transactions. */
static void test_clear(void **state)
{
    struct fixture dels, clr;
    uint32_t keys[CP_KEYS];
    for (uint32_t i = 0; i < CP_KEYS; i++)
        keys[i] = i * 7919u;
    fx_open(&dels, *state, "dels", 0);
    fx_open(&clr, *state, "clear", 0);
    struct fixture *fs[2] = {&dels, &clr};
    for (int k = 0; k < 2; k++) {
        struct fixture *f = fs[k];
        struct hcursor *c;
        MDB_val kv, v;
        assert_int_equal(proj_begin(f->p), 0);
        write_keys(f, keys, CP_KEYS, 0, false);
        assert_int_equal(hctx_put(f->ctx, t_db_b, "kept", 4, "b", 1), 0);
        assert_int_equal(proj_commit(f->p, 1), 0);
        assert_int_equal(proj_begin(f->p), 0);
        write_keys(f, keys, CP_KEYS / 2, 1, false); /* some overwritten first */
        assert_int_equal(hctx_cursor_open(f->ctx, t_db_a, NULL, 0, &c), 0);
        assert_int_equal(hctx_cursor_next(c, &kv, &v), 0);
        if (k == 0) {
            int rc;
            do
                assert_int_equal(hctx_cursor_del(c), 0);
            while (!(rc = hctx_cursor_next(c, &kv, &v)));
            assert_int_equal(rc, CAIRN_ENOTFOUND);
        } else {
            uint64_t w = proj_txn_writes(f->p);
            assert_int_equal(hctx_clear(f->ctx, t_db_a), 0);
            assert_int_equal(proj_txn_writes(f->p), w + 1);
        }
        hctx_cursor_close(c);
        /* empty now; the other DBI untouched */
        assert_int_equal(hctx_cursor_open(f->ctx, t_db_a, NULL, 0, &c), 0);
        assert_int_equal(hctx_cursor_next(c, &kv, &v), CAIRN_ENOTFOUND);
        hctx_cursor_close(c);
        assert_int_equal(hctx_get(f->ctx, t_db_b, "kept", 4, &v), 0);
        /* it takes puts again, in this transaction and the next */
        assert_int_equal(hctx_put(f->ctx, t_db_a, "again", 5, "1", 1), 0);
        assert_int_equal(proj_commit(f->p, 2), 0);
        assert_int_equal(proj_begin(f->p), 0);
        assert_int_equal(hctx_put(f->ctx, t_db_a, "later", 5, "2", 1), 0);
        assert_int_equal(hctx_get(f->ctx, t_db_a, "again", 5, &v), 0);
        assert_int_equal(proj_commit(f->p, 3), 0);
    }
    assert_same_state(&dels, &clr);
    fx_close(&dels);
    fx_close(&clr);
}

/* ====================================================================== snapshots and grow */

struct lock_step {
    struct proj *p;
    struct proj_snap *s; /* snap_dbi: the open snapshot to look in */
    int rc;
    atomic_int tid; /* the thread's, once it runs */
    atomic_int done;
};

/* Waits (up to 5 s) until the step's thread sleeps (blocked on a lock):
 * /proc/self/task/TID/stat says S. */
static void wait_blocked(struct lock_step *st)
{
    for (int i = 0; i < 5000; i++) {
        char path[64], buf[256];
        int tid = atomic_load(&st->tid);
        snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
        FILE *fp = tid ? fopen(path, "r") : NULL;
        size_t n = fp ? fread(buf, 1, sizeof buf - 1, fp) : 0;
        if (fp)
            fclose(fp);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')'); /* "tid (comm) S ..." */
        if (rp && rp[1] == ' ' && rp[2] == 'S' && !atomic_load(&st->done))
            return;
        usleep(1000);
    }
    fail_msg("a thread of the test never blocked");
}

static void *grow_main(void *arg)
{
    struct lock_step *st = arg;
    atomic_store(&st->tid, (int)gettid());
    st->rc = proj_grow(st->p);
    atomic_store(&st->done, 1);
    return NULL;
}

static void *snap_main(void *arg)
{
    struct lock_step *st = arg;
    struct proj_snap *s;
    atomic_store(&st->tid, (int)gettid());
    st->rc = proj_snap_begin(st->p, &s);
    if (!st->rc)
        proj_snap_end(s);
    atomic_store(&st->done, 1);
    return NULL;
}

static void *snap_dbi_main(void *arg)
{
    struct lock_step *st = arg;
    MDB_dbi dbi;
    st->rc = proj_snap_dbi(st->s, "t.a", &dbi);
    atomic_store(&st->done, 1);
    return NULL;
}

/* Waits up to ms for step->done. */
static bool step_done(struct lock_step *st, int ms)
{
    for (int i = 0; i < ms && !atomic_load(&st->done); i++)
        usleep(1000);
    return atomic_load(&st->done);
}

/* A snapshot S is open; a grow waits for it (the resize lock prefers
 * writers: new transactions wait behind the grow); another snapshot
 * begins and must refresh the DBI handles (a lookup missed); then S looks
 * a DBI up. Before the fix the new snapshot held the handle cache's lock
 * while it waited behind the grow, and S's lookup waited for that lock:
 * none of the three could go on. Now S's lookup answers, S ends, the grow
 * and the new snapshot follow. (On a regression the threads stay blocked:
 * the process exits at once instead of hanging.) */
static void test_snapshot_grow_no_deadlock(void **state)
{
    struct fixture f;
    fx_open(&f, *state, "dl", 0);
    struct proj_snap *s;
    MDB_dbi dbi;
    assert_int_equal(proj_snap_begin(f.p, &s), 0);
    assert_int_equal(proj_snap_dbi(s, "t.nothing", &dbi), CAIRN_ENOTFOUND); /* a refresh is due */
    size_t before = info_of(f.p).me_mapsize;
    struct lock_step grow = {.p = f.p}, snap = {.p = f.p}, look = {.p = f.p, .s = s};
    pthread_t tg, ts, tl;
    assert_int_equal(pthread_create(&tg, NULL, grow_main, &grow), 0);
    wait_blocked(&grow); /* waiting for S */
    assert_int_equal(pthread_create(&ts, NULL, snap_main, &snap), 0);
    wait_blocked(&snap); /* waiting behind the grow */
    assert_false(atomic_load(&grow.done) || atomic_load(&snap.done));
    assert_int_equal(pthread_create(&tl, NULL, snap_dbi_main, &look), 0);
    if (!step_done(&look, 5000)) {
        fprintf(stderr, "test_snapshot_grow_no_deadlock: proj_snap_dbi of the open snapshot "
                        "waits for the refreshing snapshot, which waits for the grow: deadlock\n");
        _exit(1);
    }
    assert_int_equal(look.rc, 0);
    proj_snap_end(s);
    assert_true(step_done(&grow, 5000) && step_done(&snap, 5000));
    pthread_join(tg, NULL);
    pthread_join(ts, NULL);
    pthread_join(tl, NULL);
    assert_int_equal(grow.rc, 0);
    assert_int_equal(snap.rc, 0);
    assert_int_equal(info_of(f.p).me_mapsize, 2 * before);
    fx_close(&f);
}

/* ====================================================================== derived streams */

static int emit_n(struct fixture *f, uint64_t seq, int n)
{
    static const uint8_t pl[] = {0x81, 0xa1, 'n', 0x01}; /* {"n": 1} */
    struct event cause = {.seq = seq, .type = {"in", 2}, .tenant = {"t1", 2}, .key = {"k", 1}};
    for (int i = 0; i < n; i++) {
        int rc = hctx_emit(f->ctx, &cause, "t.out", NULL, NULL, pl, sizeof pl);
        if (rc)
            return rc;
        /* Other writes between appends: the stream cursor stays valid. */
        uint8_t key[8];
        cairn_be64_put(key, seq * 1000 + (uint64_t)i);
        if ((rc = hctx_put(f->ctx, t_db_a, key, sizeof key, "x", 1)))
            return rc;
        proj_hctx_clear(f->ctx);
    }
    return 0;
}

static void test_emit_appends(void **state)
{
    struct fixture f;
    fx_open(&f, *state, "s", 0);
    /* 3 transactions of 700, 1 aborted of 300, then 500. */
    for (uint64_t t = 1; t <= 5; t++) {
        assert_int_equal(proj_begin(f.p), 0);
        assert_int_equal(emit_n(&f, t, t == 4 ? 300 : t == 5 ? 500 : 700), 0);
        if (t == 4)
            proj_abort(f.p);
        else
            assert_int_equal(proj_commit(f.p, t), 0);
    }
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *c;
    MDB_val k, v;
    assert_int_equal(proj_snap_begin(f.p, &s), 0);
    assert_int_equal(proj_snap_dbi(s, "stream.t", &dbi), 0);
    assert_int_equal(mdb_cursor_open(proj_snap_txn(s), dbi, &c), 0);
    uint64_t want = 1;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), want++) {
        struct proj_derived d;
        assert_int_equal(k.mv_size, 8);
        assert_true(cairn_be64_get(k.mv_data) == want);
        assert_int_equal(proj_derived_decode(v.mv_data, v.mv_size, &d), 0);
        assert_true(d.dseq == want);
        assert_true(d.cause == (want <= 2100 ? (want - 1) / 700 + 1 : 5));
    }
    assert_true(want - 1 == 2600);
    mdb_cursor_close(c);
    proj_snap_end(s);
    fx_close(&f);
}

static void test_emit_dseq_read_back(void **state)
{
    struct fixture f;
    struct event cause = {.seq = 1, .type = {"in", 2}, .tenant = {"t1", 2}, .key = {"k", 1}};
    uint8_t pl[] = {0x81, 0xa1, 'n', 0x00}; /* {"n": i} */
    const uint8_t *p;
    size_t n;
    fx_open(&f, *state, "s", 0);
    for (uint64_t t = 1; t <= 3; t++) { /* the second transaction is aborted */
        assert_int_equal(proj_begin(f.p), 0);
        for (uint8_t i = 0; i < 10; i++) {
            pl[3] = (uint8_t)(t * 10 + i);
            assert_int_equal(hctx_emit(f.ctx, &cause, "t.out", NULL, NULL, pl, sizeof pl), 0);
            uint64_t want = (t == 3 ? 10 : (t - 1) * 10) + i + 1;
            assert_true(hctx_emitted_dseq(f.ctx) == want);
            /* the event just emitted, and the first of the transaction */
            assert_int_equal(hctx_stream_payload(f.ctx, want, &p, &n), 0);
            assert_int_equal(n, sizeof pl);
            assert_memory_equal(p, pl, sizeof pl);
            assert_int_equal(hctx_stream_payload(f.ctx, want - i, &p, &n), 0);
            assert_int_equal(p[3], t * 10);
            proj_hctx_clear(f.ctx);
        }
        assert_int_equal(hctx_stream_payload(f.ctx, 99, &p, &n), CAIRN_ENOTFOUND);
        if (t == 2)
            proj_abort(f.p);
        else
            assert_int_equal(proj_commit(f.p, t), 0);
    }
    /* A later transaction reads the committed ones: 1..10 of the first,
     * 11..20 of the third (the second's were undone). */
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hctx_stream_payload(f.ctx, 5, &p, &n), 0);
    assert_int_equal(p[3], 14);
    assert_int_equal(hctx_stream_payload(f.ctx, 15, &p, &n), 0);
    assert_int_equal(p[3], 34);
    assert_int_equal(hctx_stream_payload(f.ctx, 21, &p, &n), CAIRN_ENOTFOUND);
    proj_abort(f.p);
    fx_close(&f);
}

/* The payload {"n": i} (i < 128) of the shared-mode test. */
static void shared_emit(struct fixture *f, uint8_t i)
{
    struct event cause = {
        .seq = 1 + i / 8, .type = {"in", 2}, .tenant = {"t1", 2}, .key = {"k", 1}};
    uint8_t pl[] = {0x81, 0xa1, 'n', i};
    assert_int_equal(hctx_emit(f->ctx, &cause, "t.out", NULL, NULL, pl, sizeof pl), 0);
    proj_hctx_clear(f->ctx);
}

static void test_emit_shared(void **state)
{
    struct fixture plain, sh;
    const uint8_t *p;
    size_t n;
    uint8_t da[32], db[32];
    fx_open(&plain, *state, "plain", 0);
    fx_open(&sh, *state, "shared", 0);
    /* The reference: 100 plain emits in one transaction. */
    assert_int_equal(proj_begin(plain.p), 0);
    for (uint8_t i = 0; i < 100; i++)
        shared_emit(&plain, i);
    assert_int_equal(proj_commit(plain.p, 1), 0);

    /* An aborted shared transaction first: what it kept goes with it. */
    assert_int_equal(proj_begin(sh.p), 0);
    proj_set_shared(sh.p, true);
    for (uint8_t i = 0; i < 5; i++)
        shared_emit(&sh, 120);
    proj_set_shared(sh.p, false);
    proj_abort(sh.p);
    proj_hctx_reset(sh.ctx);
    assert_int_equal(proj_begin(sh.p), 0);
    assert_int_equal(t_open(sh.ctx), 0);
    assert_int_equal(proj_commit(sh.p, 0), 0);

    assert_int_equal(proj_begin(sh.p), 0);
    proj_set_shared(sh.p, true);
    for (uint8_t i = 0; i < 60; i++) { /* kept: nothing written yet */
        shared_emit(&sh, i);
        assert_true(hctx_emitted_dseq(sh.ctx) == (uint64_t)i + 1);
    }
    assert_true(proj_txn_writes(sh.p) == 0);
    assert_int_equal(hctx_stream_payload(sh.ctx, 1, &p, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(p[3], 0);
    assert_int_equal(hctx_stream_payload(sh.ctx, 60, &p, &n), 0);
    assert_int_equal(p[3], 59);
    assert_int_equal(hctx_stream_payload(sh.ctx, 61, &p, &n), CAIRN_ENOTFOUND);
    assert_int_equal(proj_hctx_sync(sh.ctx), 0);
    assert_true(proj_txn_writes(sh.p) == 60);
    for (uint8_t i = 60; i < 90; i++) /* kept again, after appended ones */
        shared_emit(&sh, i);
    assert_int_equal(hctx_stream_payload(sh.ctx, 30, &p, &n), 0); /* from the stream */
    assert_int_equal(p[3], 29);
    assert_int_equal(hctx_stream_payload(sh.ctx, 75, &p, &n), 0); /* kept */
    assert_int_equal(p[3], 74);
    assert_int_equal(proj_hctx_sync(sh.ctx), 0);
    assert_int_equal(proj_hctx_sync(sh.ctx), 0); /* nothing kept: nothing done */
    assert_true(proj_txn_writes(sh.p) == 90);
    proj_set_shared(sh.p, false);
    for (uint8_t i = 90; i < 100; i++) /* plain again: appended after the head */
        shared_emit(&sh, i);
    assert_true(hctx_emitted_dseq(sh.ctx) == 100);
    assert_int_equal(hctx_stream_payload(sh.ctx, 80, &p, &n), 0);
    assert_int_equal(p[3], 79);
    assert_int_equal(proj_commit(sh.p, 1), 0);
    digest_of(plain.p, da);
    digest_of(sh.p, db);
    assert_memory_equal(da, db, 32);
    fx_close(&plain);
    fx_close(&sh);
}

static void test_emit_payload_checks(void **state)
{
    struct fixture f;
    struct event cause = {.seq = 1, .type = {"in", 2}, .tenant = {"t1", 2}, .key = {"k", 1}};
    static const uint8_t not_map[] = {0x91, 0x01};   /* [1] */
    static const uint8_t truncated[] = {0x82, 0xa1}; /* {"…  */
    fx_open(&f, *state, "s", 0);
    assert_int_equal(proj_begin(f.p), 0);
    assert_int_equal(hctx_emit(f.ctx, &cause, "t.out", NULL, NULL, not_map, sizeof not_map),
                     CAIRN_EINVAL);
    assert_int_equal(hctx_emit(f.ctx, &cause, "t.out", NULL, NULL, not_map, 0), CAIRN_EINVAL);
    int rc = hctx_emit(f.ctx, &cause, "t.out", NULL, NULL, truncated, sizeof truncated);
#ifdef PROJ_CHECK_PAYLOADS
    assert_int_equal(rc, CAIRN_EINVAL);
#else
    assert_int_equal(rc, 0); /* release builds trust the handler */
#endif
    proj_abort(f.p);
    fx_close(&f);
}

/* ====================================================================== hcache_hash */

/* The hash reads exactly the key's bytes, wherever they are: the same
 * bytes at another (unaligned) address with other bytes around them hash
 * the same; and, each word's mix and the finalizer being bijections, two
 * keys of one length that differ in one byte never hash the same — for
 * every length, tails of every size included. */
static void test_hcache_hash(void **state)
{
    (void)state;
    uint8_t a[64], b[80];
    for (size_t i = 0; i < sizeof a; i++)
        a[i] = (uint8_t)(i * 37 + 11);
    for (size_t n = 0; n <= 40; n++) {
        uint64_t h = hcache_hash(a, n);
        for (size_t off = 1; off < 9; off++) {
            memset(b, 0xa5 ^ (int)off, sizeof b);
            memcpy(b + off, a, n);
            assert_true(hcache_hash(b + off, n) == h);
        }
        for (size_t i = 0; i < n; i++) {
            a[i] ^= 0x40;
            assert_true(hcache_hash(a, n) != h);
            a[i] ^= 0x40;
        }
    }
}

/* ====================================================================== hcache_get_or_new */

struct t_entry {
    struct hentry e;
    int value;
};

static void test_hcache_get_or_new(void **state)
{
    (void)state;
    struct hcache c = {0};
    struct hentry *e;
    bool fresh;
    char key[16];
    size_t live0 = hcache_live();
    /* 5 000 keys (the table grows several times), each found again. */
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof key, "key%d", i);
        assert_int_equal(hcache_get_or_new(&c, (uint8_t *)key, (size_t)n, sizeof(struct t_entry),
                                           64, &e, &fresh),
                         0);
        assert_true(fresh);
        assert_int_equal(e->vn, n);
        assert_int_equal(e->mem.len, n);
        assert_memory_equal(e->mem.data, key, (size_t)n);
        assert_int_equal(((struct t_entry *)e)->value, 0); /* zeroed */
        ((struct t_entry *)e)->value = i;
        hcache_add(&c, e);
    }
    assert_int_equal(c.count, 5000);
    assert_int_equal(hcache_live(), live0 + 5000); /* counted as added */
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof key, "key%d", i);
        assert_int_equal(hcache_get_or_new(&c, (uint8_t *)key, (size_t)n, sizeof(struct t_entry),
                                           64, &e, &fresh),
                         0);
        assert_false(fresh);
        assert_int_equal(((struct t_entry *)e)->value, i);
        assert_ptr_equal(hcache_find(&c, (uint8_t *)key, (size_t)n), e);
    }
    /* A fresh entry the caller drops is not in the cache. */
    assert_int_equal(
        hcache_get_or_new(&c, (uint8_t *)"gone", 4, sizeof(struct t_entry), 64, &e, &fresh), 0);
    assert_true(fresh);
    hentry_free(e);
    assert_null(hcache_find(&c, (uint8_t *)"gone", 4));
    assert_int_equal(c.count, 5000);
    assert_int_equal(hcache_live(), live0 + 5000); /* a dropped fresh entry never was */
    /* A key of exactly mem's maximum fits. */
    assert_int_equal(
        hcache_get_or_new(&c, (uint8_t *)"0123456789", 10, sizeof(struct t_entry), 10, &e, &fresh),
        0);
    hentry_free(e);

    /* hcache_prefetch: found keys, absent ones, inputs without a key, a
     * table that grows between its steps, and entries freed between them
     * (hcache_clear): it must not read them (ASan fails the test if it
     * does), and the cache answers as before. */
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof key, "key%d", i % 6000);
        hcache_prefetch(&c, i % 7 ? (uint8_t *)key : NULL, (size_t)n);
        if (i == 2503) { /* key2502 found: its entry goes now */
            hcache_clear(&c);
            assert_int_equal(c.count, 0);
            assert_int_equal(hcache_live(), live0);
        }
        if (i > 2503 && i % 2) { /* refill: the table grows again */
            assert_int_equal(hcache_get_or_new(&c, (uint8_t *)key, (size_t)n,
                                               sizeof(struct t_entry), 64, &e, &fresh),
                             0);
            if (fresh)
                hcache_add(&c, e);
        }
    }
    hcache_prefetch(&c, NULL, 0);
    hcache_prefetch(&c, NULL, 0);
    assert_int_equal(c.count, 1248);
    assert_int_equal(hcache_live(), live0 + 1248);
    /* hcache_store: what a handler finding its slot itself stores counts */
    uint64_t h;
    struct hentry **slot;
    assert_int_equal(hcache_slot(&c, (uint8_t *)"stored", 6, &h, &slot), 0);
    assert_null(*slot);
    struct hentry *se = calloc(1, sizeof *se);
    assert_non_null(se);
    se->hash = h;
    se->vn = 6;
    cairn_buf_init(&se->mem, 64);
    assert_int_equal(cairn_buf_append(&se->mem, "stored", 6), 0);
    hcache_store(&c, slot, se);
    assert_int_equal(c.count, 1249);
    assert_ptr_equal(hcache_find(&c, (uint8_t *)"stored", 6), se);
    assert_int_equal(hcache_live(), live0 + 1249);
    hcache_free(&c);
    assert_int_equal(hcache_live(), live0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_map_reserved_and_grown_ahead, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_prefault, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_prefault_ahead, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_map_reserve_failure, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_map_full_teaches, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_map_room_twice_biggest, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_map_estimate_follows_the_workload, dir_setup,
                                        dir_teardown),
        cmocka_unit_test_setup_teardown(test_put_new, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_commit_unchanged_writes_nothing, dir_setup,
                                        dir_teardown),
        cmocka_unit_test_setup_teardown(test_layout_mark, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_cursor_put, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_cursor_append, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_clear, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_grow_no_deadlock, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_emit_appends, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_emit_dseq_read_back, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_emit_shared, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_emit_payload_checks, dir_setup, dir_teardown),
        cmocka_unit_test(test_hcache_hash),
        cmocka_unit_test(test_hcache_get_or_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
