/*
 * cli_rules.c — `cairn rules load DIR [--tenant T]`: appends each rule file
 * of DIR (*.json, one rule.define payload each, in name order) as a
 * `rule.define` input for the tenant, skipping rules whose definition in
 * force (violations.rules) is identical, so reloading a pack appends only
 * what changed. Prints one JSON line per file:
 *   {"file":"x.json","rule":"id","seq":N} | ..."unchanged":true | ..."error":{…}
 * Exit status: 0, 2 when a file was refused, 1 on a failure.
 *
 * The idempotency id is "rule:<id>:<first 16 hex of SHA-256 of the payload
 * msgpack>", so a retried load within the dedup window appends nothing twice.
 */
#include "cli_int.h"

#include <dirent.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#define RULE_FILES_MAX 4096 /* a pack is ~50 files */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.json names of dir, sorted (caller frees each and the array). */
static int list_rules(const char *dir, char ***out, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return CAIRN_EIO;
    char **names = calloc(RULE_FILES_MAX, sizeof *names);
    *n = 0;
    struct dirent *de;
    while (names && (de = readdir(d)) && *n < RULE_FILES_MAX) {
        size_t l = strlen(de->d_name);
        if (de->d_name[0] == '.' || l < 6 || strcmp(de->d_name + l - 5, ".json"))
            continue;
        names[*n] = strdup(de->d_name);
        if (names[*n])
            (*n)++;
    }
    closedir(d);
    if (!names)
        return CAIRN_ENOMEM;
    qsort(names, *n, sizeof *names, cmp_names);
    *out = names;
    return 0;
}

/* True when the tenant's rule in force has exactly this payload. */
static bool rule_unchanged(struct proj *p, const char *tenant, const char *id,
                           const struct cairn_buf *payload)
{
    struct proj_snap *s;
    MDB_dbi dbi;
    bool same = false;
    if (proj_snap_begin(p, &s))
        return false;
    uint8_t k[1 + CAIRN_TENANT_MAX + 256];
    size_t kn = hkey_make(k, sizeof k, &(struct cairn_str){tenant, strlen(tenant)},
                          &(struct cairn_str){id, strlen(id)});
    MDB_val key = {kn, k}, v;
    if (!proj_snap_dbi(s, "violations.rules", &dbi) && !mdb_get(proj_snap_txn(s), dbi, &key, &v)) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *r = mp_get(&u.data, "rule");
            struct cairn_buf b;
            struct mpw w;
            cairn_buf_init(&b, CAIRN_PAYLOAD_MAX_CEILING);
            mpw_init(&w, &b);
            mpw_obj(&w, r);
            same = r && !mpw_finish(&w) && b.len == payload->len &&
                   !memcmp(b.data, payload->data, b.len);
            cairn_buf_deinit(&b);
        }
        msgpack_unpacked_destroy(&u);
    }
    proj_snap_end(s);
    return same;
}

static void print_line(const char *file, const char *id, const char *tail)
{
    struct cairn_buf b;
    cairn_buf_init(&b, 8192);
    cairn_buf_puts(&b, "{\"file\":");
    cairn_buf_json_str(&b, file, strlen(file));
    if (id) {
        cairn_buf_puts(&b, ",\"rule\":");
        cairn_buf_json_str(&b, id, strlen(id));
    }
    cairn_buf_printf(&b, ",%s}\n", tail);
    fwrite(b.data, 1, b.len, stdout);
    cairn_buf_deinit(&b);
}

static void print_error(const char *file, const char *id, const struct cairn_error *e)
{
    struct cairn_buf t;
    cairn_buf_init(&t, 4096);
    cairn_buf_printf(&t, "\"error\":{\"code\":\"%s\",\"field\":", e->code ? e->code : "internal");
    cairn_buf_json_str(&t, e->field, strlen(e->field));
    cairn_buf_puts(&t, ",\"message\":");
    cairn_buf_json_str(&t, e->message, strlen(e->message));
    cairn_buf_putc(&t, '}');
    cairn_buf_putc(&t, '\0');
    print_line(file, id, (const char *)t.data);
    cairn_buf_deinit(&t);
}

/* Loads one file: 0 appended or unchanged, CLI_REJECTED, CLI_FAIL. */
static int load_one(struct engine *eng, const char *dir, const char *file, const char *tenant)
{
    char path[4096], idbuf[512], tail[64];
    struct cairn_error e;
    json_error_t je;
    cairn_error_clear(&e);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_t *rule = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    const char *id = json_string_value(json_object_get(rule, "id"));
    if (!json_is_object(rule) || !id) {
        cairn_error_set(&e, rule ? "invalid_rule" : "invalid_json", rule ? "/id" : "",
                        rule ? "a rule file is one JSON object with an id" : "line %d: %s", je.line,
                        je.text);
        print_error(file, NULL, &e);
        json_decref(rule);
        return CLI_REJECTED;
    }
    struct cairn_buf mp;
    uint8_t h[32];
    char hex[65];
    cairn_buf_init(&mp, CAIRN_PAYLOAD_MAX_CEILING);
    int status = CLI_OK;
    if (cairn_json_to_msgpack(rule, &mp, &e)) {
        print_error(file, id, &e);
        status = CLI_REJECTED;
    } else if (rule_unchanged(engine_proj(eng), tenant, id, &mp)) {
        print_line(file, id, "\"unchanged\":true");
    } else {
        SHA256(mp.data, mp.len, h);
        cairn_hex(h, 8, hex);
        snprintf(idbuf, sizeof idbuf, "rule:%.200s:%s", id, hex);
        json_t *ev = json_pack("{s:s, s:s, s:s, s:O}", "type", "rule.define", "tenant", tenant,
                               "id", idbuf, "payload", rule);
        struct ingest_event iev = {0};
        struct log_result res = {0};
        int rc =
            ev ? ingest_parse_value(engine_ingest(eng), ev, "cli", cairn_now_ns(), false, &iev, &e)
               : CAIRN_ENOMEM;
        if (rc == CAIRN_EINVAL) {
            print_error(file, id, &e);
            status = CLI_REJECTED;
        } else if (rc) {
            cli_fail("append", "%s: %s", file, cairn_strerror(rc));
            status = CLI_FAIL;
        } else {
            rc = log_writer_append_wait(engine_writer(eng), &iev.in, &res, 1);
            if (!rc)
                rc = res.rc;
            if (rc) {
                cli_fail("append", "%s: %s", file, cairn_strerror(rc));
                status = CLI_FAIL;
            } else {
                snprintf(tail, sizeof tail, "\"seq\":%llu%s", (unsigned long long)res.seq,
                         res.duplicate ? ",\"duplicate\":true" : "");
                print_line(file, id, tail);
            }
            ingest_event_deinit(&iev);
        }
        json_decref(ev);
    }
    cairn_buf_deinit(&mp);
    json_decref(rule);
    return status;
}

int cmd_rules(struct cli *c)
{
    const char *dir = NULL, *tenant = NULL;
    bool load = false;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--tenant", &v))
            tenant = v;
        else if (!load && !strcmp(c->argv[i], "load"))
            load = true;
        else if (load && !dir && c->argv[i][0] != '-')
            dir = c->argv[i];
        else
            load = false, i = c->argc;
    }
    if (!load || !dir || !tenant) {
        cli_fail("usage", "rules load DIR --tenant T");
        return CLI_FAIL;
    }
    char **names = NULL;
    size_t n = 0;
    if (list_rules(dir, &names, &n)) {
        cli_fail("io", "cannot read the directory %s", dir);
        return CLI_FAIL;
    }
    struct engine *eng = NULL;
    int status = CLI_FAIL;
    if (!cli_open_engine(c, false, &eng) && !engine_start(eng)) {
        status = CLI_OK;
        for (size_t i = 0; i < n && status != CLI_FAIL; i++) {
            int s = load_one(eng, dir, names[i], tenant);
            if (s != CLI_OK)
                status = s;
        }
    }
    fflush(stdout);
    engine_close(eng);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return status;
}
