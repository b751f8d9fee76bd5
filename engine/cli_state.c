/*
 * cli_state.c — the commands that run the engine or read the state:
 * serve, replay, digest, show, stream, tick.
 */
#include "cli_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ====================================================================== opening */

int cli_open_engine(const struct cli *c, bool allow_engine_types, struct engine **out)
{
    struct cairn_error e;
    struct engine_config cfg = {.data = c->data,
                                .schema_dir = c->schemas,
                                .allow_engine_types = allow_engine_types,
                                .config = c->config};
    cairn_error_clear(&e);
    int rc = engine_open(out, &cfg, &e);
    if (rc == CAIRN_EBUSY)
        cli_fail("busy", "another process is writing to %s", c->data);
    else if (rc)
        cli_fail(e.code ? e.code : "open", "%s", e.code ? e.message : cairn_strerror(rc));
    return rc;
}

int cli_open_state(const struct cli *c, struct engine **eng, struct proj **ro)
{
    struct cairn_error e;
    struct engine_config cfg = {.data = c->data, .schema_dir = c->schemas, .config = c->config};
    *eng = NULL;
    *ro = NULL;
    cairn_error_clear(&e);
    int rc = engine_open(eng, &cfg, &e);
    if (rc != CAIRN_EBUSY) {
        if (rc)
            cli_fail(e.code ? e.code : "open", "%s", e.code ? e.message : cairn_strerror(rc));
        return rc;
    }
    /* A server is running: it keeps the state current; read what it has. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/state", c->data);
    rc = proj_open(ro, &(struct proj_config){.dir = dir, .readonly = true});
    if (rc)
        cli_fail("open", "cannot open the state in %s: %s", dir, cairn_strerror(rc));
    return rc;
}

static struct proj *state_of(struct engine *eng, struct proj *ro)
{
    return eng ? engine_proj(eng) : ro;
}

static void close_state(struct engine *eng, struct proj *ro)
{
    engine_close(eng);
    proj_close(ro);
}

/* ====================================================================== replay, digest */

static int print_digest(struct proj *p, const char *extra)
{
    struct proj_snap *s;
    uint8_t d[32];
    char hex[65];
    int rc = proj_snap_begin(p, &s);
    if (!rc) {
        rc = proj_snap_digest(s, d);
        if (!rc) {
            cairn_hex(d, 32, hex);
            printf("{\"checkpoint\":%llu,\"digest\":\"%s\"%s}\n",
                   (unsigned long long)proj_snap_checkpoint(s), hex, extra ? extra : "");
        }
        proj_snap_end(s);
    }
    if (rc)
        cli_fail("read", "computing the digest failed: %s", cairn_strerror(rc));
    return rc ? CLI_FAIL : CLI_OK;
}

/* Refuses a target that exists and is not an empty directory. */
static bool fresh_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT;
    struct dirent *de;
    bool empty = true;
    while (empty && (de = readdir(d)))
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

static void remove_env_dir(const char *dir)
{
    char p[4400];
    if (snprintf(p, sizeof p, "%.4300s/data.mdb", dir) < (int)sizeof p)
        unlink(p);
    if (snprintf(p, sizeof p, "%.4300s/lock.mdb", dir) < (int)sizeof p)
        unlink(p);
    rmdir(dir);
}

/* Builds into DATA/state.replay, then swaps it with DATA/state in one
 * renameat2(RENAME_EXCHANGE), so a reader sees the old or the new state,
 * never a mix. The writer lock is held throughout: no server may run. */
static int replay_in_place(struct cli *c, const struct engine_config *cfg, uint64_t to)
{
    char live[4096], next[4200];
    struct log *lock;
    struct cairn_error e;
    snprintf(live, sizeof live, "%s/state", c->data);
    snprintf(next, sizeof next, "%s/state.replay", c->data);
    if (cli_open_log(c, false, &lock))
        return CLI_FAIL;
    remove_env_dir(next); /* leftovers of an interrupted replay */
    cairn_error_clear(&e);
    int rc = engine_replay(cfg, next, to, &e);
    if (!rc) {
        rc = renameat2(AT_FDCWD, next, AT_FDCWD, live, RENAME_EXCHANGE);
        if (rc && errno == ENOENT)
            rc = rename(next, live);
        if (!rc)
            remove_env_dir(next);
        else
            cli_fail("io", "swapping in the new state failed: %s", strerror(errno));
    } else {
        cli_fail(e.code ? e.code : "replay", "%s", e.code ? e.message : cairn_strerror(rc));
    }
    log_close(lock);
    return rc ? CLI_FAIL : CLI_OK;
}

int cmd_replay(struct cli *c)
{
    uint64_t to = 0;
    const char *into = NULL;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--to", &v))
            cli_u64("--to", v, &to);
        else if (cli_opt(c, &i, "--into", &v))
            into = v;
        else {
            cli_fail("usage", "replay: unknown option %s", c->argv[i]);
            return CLI_FAIL;
        }
    }
    struct engine_config cfg = {
        .data = c->data, .schema_dir = c->schemas, .config = c->config, .log_readonly = true};
    int status;
    if (into) {
        if (!fresh_dir(into)) {
            cli_fail("usage", "replay --into %s: the directory exists and is not empty", into);
            return CLI_FAIL;
        }
        struct cairn_error e;
        cairn_error_clear(&e);
        int rc = engine_replay(&cfg, into, to, &e);
        if (rc)
            cli_fail(e.code ? e.code : "replay", "%s", e.code ? e.message : cairn_strerror(rc));
        status = rc ? CLI_FAIL : CLI_OK;
    } else {
        status = replay_in_place(c, &cfg, to);
    }
    if (status)
        return status;
    struct proj *p;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/state", c->data);
    if (proj_open(&p, &(struct proj_config){.dir = into ? into : dir, .readonly = true}))
        return CLI_FAIL;
    status = print_digest(p, NULL);
    proj_close(p);
    return status;
}

int cmd_digest(struct cli *c)
{
    const char *state = NULL;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--state", &v))
            state = v;
        else {
            cli_fail("usage", "digest: unknown option %s", c->argv[i]);
            return CLI_FAIL;
        }
    }
    struct engine *eng = NULL;
    struct proj *ro = NULL;
    int rc = state ? proj_open(&ro, &(struct proj_config){.dir = state, .readonly = true})
                   : cli_open_state(c, &eng, &ro);
    if (rc) {
        if (state)
            cli_fail("open", "cannot open the state in %s: %s", state, cairn_strerror(rc));
        return CLI_FAIL;
    }
    int status = print_digest(state_of(eng, ro), NULL);
    close_state(eng, ro);
    return status;
}

/* ====================================================================== show */

static const struct handler *find_handler(const char *name, bool view)
{
    for (const struct handler *const *h = handler_table; *h; h++)
        if (!strcmp((*h)->name, name) && (!view || (*h)->view))
            return *h;
    return NULL;
}

/* Prints every document of the view (of one tenant, or one entity). */
static int show_view(struct proj *p, const struct handler *h, const char *tenant, const char *key,
                     unsigned long *found)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    char name[160];
    struct cairn_buf out, doc;
    snprintf(name, sizeof name, "%s.%s", h->name, h->view);
    int rc = proj_snap_begin(p, &s);
    if (rc)
        return rc;
    if ((rc = proj_snap_dbi(s, name, &dbi)) ||
        (rc = cairn_mdb_err(mdb_cursor_open(proj_snap_txn(s), dbi, &cur)))) {
        proj_snap_end(s);
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    }
    cairn_buf_init(&out, CAIRN_PAYLOAD_MAX_CEILING * 8);
    cairn_buf_init(&doc, CAIRN_PAYLOAD_MAX_CEILING * 2);
    for (int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0 && !rc;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct cairn_str t, rest;
        if (!hkey_split(k.mv_data, k.mv_size, &t, &rest))
            continue;
        if (tenant && (t.n != strlen(tenant) || memcmp(t.p, tenant, t.n)))
            continue;
        if (key && (rest.n != strlen(key) || memcmp(rest.p, key, rest.n)))
            continue;
        cairn_buf_reset(&out);
        if (h->view_doc) { /* the value is a record: the handler makes the document */
            struct hread rd = {.snap = s, .h = h};
            cairn_buf_reset(&doc);
            int drc = h->view_doc(&rd, &k, &v, &doc);
            if (drc) {
                fprintf(stderr, "cairn: show: an entry of %s: %s (skipped)\n", name,
                        cairn_strerror(drc));
                continue;
            }
            v = (MDB_val){doc.len, doc.data};
        }
        rc = cairn_msgpack_to_json(v.mv_data, v.mv_size, &out, NULL);
        if (!rc)
            rc = cairn_buf_putc(&out, '\n');
        if (!rc)
            fwrite(out.data, 1, out.len, stdout);
        (*found)++;
    }
    cairn_buf_deinit(&out);
    cairn_buf_deinit(&doc);
    mdb_cursor_close(cur);
    proj_snap_end(s);
    return rc;
}

int cmd_show(struct cli *c)
{
    const char *view = NULL, *key = NULL, *tenant = NULL;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--tenant", &v))
            tenant = v;
        else if (!view)
            view = c->argv[i];
        else if (!key)
            key = c->argv[i];
        else {
            cli_fail("usage", "show <view> [KEY] [--tenant T]");
            return CLI_FAIL;
        }
    }
    const struct handler *h = view ? find_handler(view, true) : NULL;
    if (!h) {
        cli_fail("usage", "show: unknown view '%s'", view ? view : "");
        return CLI_FAIL;
    }
    struct engine *eng;
    struct proj *ro;
    if (cli_open_state(c, &eng, &ro))
        return CLI_FAIL;
    unsigned long found = 0;
    int rc = show_view(state_of(eng, ro), h, tenant, key, &found);
    close_state(eng, ro);
    fflush(stdout);
    if (rc) {
        cli_fail("read", "reading the view failed: %s", cairn_strerror(rc));
        return CLI_FAIL;
    }
    if (key && !found) {
        cli_fail("not_found", "no %s entity '%s'%s%s", view, key, tenant ? " for tenant " : "",
                 tenant ? tenant : "");
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* ====================================================================== stream */

struct stream_opts {
    char dbi[160];
    uint64_t from;
    const char *tenant;
};

static int stream_once(struct proj *p, struct stream_opts *o, struct cairn_buf *out)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t k8[8];
    int rc = proj_snap_begin(p, &s);
    if (rc)
        return rc;
    if ((rc = proj_snap_dbi(s, o->dbi, &dbi)) ||
        (rc = cairn_mdb_err(mdb_cursor_open(proj_snap_txn(s), dbi, &cur)))) {
        proj_snap_end(s);
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    }
    cairn_be64_put(k8, o->from);
    k = (MDB_val){8, k8};
    for (int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); mrc == 0 && !rc;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct proj_derived d;
        if ((rc = proj_derived_decode(v.mv_data, v.mv_size, &d)))
            break;
        o->from = d.dseq + 1;
        if (o->tenant &&
            (d.tenant.n != strlen(o->tenant) || memcmp(d.tenant.p, o->tenant, d.tenant.n)))
            continue;
        cairn_buf_reset(out);
        if (!(rc = proj_derived_json(&d, out)) && !(rc = cairn_buf_putc(out, '\n')))
            fwrite(out->data, 1, out->len, stdout);
    }
    fflush(stdout);
    mdb_cursor_close(cur);
    proj_snap_end(s);
    return rc;
}

int cmd_stream(struct cli *c)
{
    struct stream_opts o = {.from = 1};
    const char *name = NULL;
    bool follow = false;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--from", &v))
            cli_u64("--from", v, &o.from);
        else if (cli_opt(c, &i, "--tenant", &v))
            o.tenant = v;
        else if (!strcmp(c->argv[i], "--follow") || !strcmp(c->argv[i], "-f"))
            follow = true;
        else if (!name)
            name = c->argv[i];
        else {
            cli_fail("usage", "stream <name> [--from DSEQ] [--follow] [--tenant T]");
            return CLI_FAIL;
        }
    }
    const struct handler *h = name ? find_handler(name, false) : NULL;
    if (!h || !h->emits || !h->emits[0]) {
        cli_fail("usage", "stream: unknown stream '%s'", name ? name : "");
        return CLI_FAIL;
    }
    snprintf(o.dbi, sizeof o.dbi, PROJ_STREAM_PREFIX "%s", name);
    struct engine *eng;
    struct proj *ro;
    if (cli_open_state(c, &eng, &ro))
        return CLI_FAIL;
    struct cairn_buf out;
    cairn_buf_init(&out, CAIRN_PAYLOAD_MAX_CEILING * 8);
    int rc;
    while (!(rc = stream_once(state_of(eng, ro), &o, &out)) && follow) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
        if (eng && (rc = engine_catch_up(eng, 0)))
            break;
    }
    cairn_buf_deinit(&out);
    close_state(eng, ro);
    if (rc)
        cli_fail("read", "reading the stream failed: %s", cairn_strerror(rc));
    return rc ? CLI_FAIL : CLI_OK;
}

/* ====================================================================== tick */

int cmd_tick(struct cli *c)
{
    int64_t t = cairn_now_ns();
    uint64_t interval = 1000;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--time", &v)) {
            if (cairn_time_parse(v, strlen(v), &t)) {
                cli_fail("usage", "--time must be RFC 3339, got '%s'", v);
                return CLI_FAIL;
            }
        } else if (cli_opt(c, &i, "--interval-ms", &v)) {
            cli_u64("--interval-ms", v, &interval);
        } else {
            cli_fail("usage", "tick: unknown option %s", c->argv[i]);
            return CLI_FAIL;
        }
    }
    struct engine *eng;
    if (cli_open_engine(c, false, &eng))
        return CLI_FAIL;
    int rc = engine_tick(eng, t, (int64_t)interval * 1000000LL);
    uint64_t head = 0;
    log_head(engine_log(eng), &head, NULL);
    engine_close(eng);
    if (rc) {
        cli_fail("append", "appending the tick failed: %s", cairn_strerror(rc));
        return CLI_FAIL;
    }
    printf("{\"seq\":%llu}\n", (unsigned long long)head);
    return CLI_OK;
}

/* ====================================================================== backup */

/* Copies one environment (state or log) of c->data into stage/<name>. */
static int copy_env(struct cairn_env *env, const char *stage, const char *name)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%.4000s/%s", stage, name);
    int rc = cairn_env_copy(env, dir);
    if (rc)
        cli_fail("backup", "copying the %s into %s failed: %s", name, dir, cairn_strerror(rc));
    return rc;
}

/* Copies the state (when there is one) and then the log of c->data into
 * stage. *state: whether there was a state. */
static int copy_data(const struct cli *c, const char *stage, bool *state)
{
    char dir[4200];
    struct proj *p = NULL;
    struct log *log;
    snprintf(dir, sizeof dir, "%.4000s/state/data.mdb", c->data);
    *state = access(dir, F_OK) == 0; /* a log no engine ran on yet has none */
    snprintf(dir, sizeof dir, "%.4000s/state", c->data);
    if (*state && proj_open(&p, &(struct proj_config){.dir = dir, .readonly = true})) {
        cli_fail("open", "cannot open the state in %s", dir);
        return CAIRN_EIO;
    }
    int rc = *state ? copy_env(proj_env(p), stage, "state") : 0;
    proj_close(p);
    if (rc || (rc = cli_open_log(c, true, &log)))
        return rc;
    rc = copy_env(log_env(log), stage, "log");
    log_close(log);
    return rc;
}

/* Moves stage/<name> to dest/<name>; a failure leaves it in place. */
static int promote(const char *stage, const char *dest, const char *name)
{
    char from[4200], to[4200];
    snprintf(from, sizeof from, "%.4000s/%s", stage, name);
    snprintf(to, sizeof to, "%.4000s/%s", dest, name);
    if (access(from, F_OK) || !rename(from, to))
        return 0;
    cli_fail("backup", "cannot move %s to %s: %s", from, to, strerror(errno));
    return CAIRN_EIO;
}

/*
 * cairn backup DEST: a consistent copy of a data directory, safe while a
 * server (or `cairn append`) writes to it — each environment is copied
 * from one LMDB read snapshot, compacted, without blocking the writer.
 * The state goes first, then the log, so the copy's state is never ahead
 * of its log; the log index is not copied (it is derived: the first
 * process that opens the copy for writing rebuilds it from the log), and
 * that process brings the state up to the log head as after any stop.
 * Both are written under DEST/.partial and moved into DEST only once both
 * are complete and synced: a failed backup (a full disk) leaves no half
 * copy that a later command would open — it removes what it wrote. DEST
 * is a data directory: `cairn serve --data DEST` restores.
 */
int cmd_backup(struct cli *c)
{
    if (c->argc != 1 || c->argv[0][0] == '-') {
        cli_fail("usage", "backup takes one argument: the directory to write the copy to");
        return CLI_FAIL;
    }
    const char *dest = c->argv[0];
    if (!fresh_dir(dest)) {
        cli_fail("usage", "backup %s: the directory exists and is not empty", dest);
        return CLI_FAIL;
    }
    char stage[4200], dir[4200];
    snprintf(stage, sizeof stage, "%.4000s/.partial", dest);
    bool state;
    int rc = cairn_mkdirs(stage);
    if (rc)
        cli_fail("backup", "cannot create %s: %s", stage, cairn_strerror(rc));
    if (!rc && !(rc = copy_data(c, stage, &state)) && !(rc = promote(stage, dest, "state")))
        rc = promote(stage, dest, "log");
    for (int i = 0; i < 2; i++) { /* what a failure left in the stage */
        snprintf(dir, sizeof dir, "%.4000s/%s", stage, i ? "log" : "state");
        remove_env_dir(dir);
    }
    rmdir(stage);
    if (rc)
        return CLI_FAIL;
    /* What the copy holds, read back from it. */
    struct cli copy = *c;
    struct log *log;
    struct proj *p;
    uint64_t head = 0, checkpoint = 0;
    uint8_t hash[LOG_HASH_LEN];
    char hex[2 * LOG_HASH_LEN + 1];
    copy.data = dest;
    if (cli_open_log(&copy, true, &log))
        return CLI_FAIL;
    rc = log_head(log, &head, hash);
    log_close(log);
    snprintf(dir, sizeof dir, "%.4000s/state", dest);
    if (!rc && state &&
        !(rc = proj_open(&p, &(struct proj_config){.dir = dir, .readonly = true}))) {
        checkpoint = proj_checkpoint(p);
        proj_close(p);
    }
    if (rc) {
        cli_fail("read", "reading the copy in %s failed: %s", dest, cairn_strerror(rc));
        return CLI_FAIL;
    }
    cairn_hex(hash, LOG_HASH_LEN, hex);
    printf("{\"log_head\":%llu,\"hash\":\"%s\",\"state_checkpoint\":%llu}\n",
           (unsigned long long)head, hex, (unsigned long long)checkpoint);
    return CLI_OK;
}
