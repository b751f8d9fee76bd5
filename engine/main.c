/*
 * main.c — the `cairn` command: option handling and subcommand dispatch.
 */
#include "cli_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: cairn <command> [--data DIR] [--schemas DIR] [options]\n"
    "\n"
    "commands:\n"
    "  append [FILE|-] [--engine]\n"
    "                           append NDJSON events; one JSON result line per input line\n"
    "                           (--engine also accepts engine inputs such as tick)\n"
    "  tail [--from SEQ] [--limit N] [--follow] [--tenant T --key K]\n"
    "                           print the log (or one entity's events) as NDJSON\n"
    "  verify [--from SEQ] [--to SEQ]\n"
    "                           recompute every hash of the chain\n"
    "  head                     print the head {seq, hash}\n"
    "  serve [--listen HOST:PORT] [--jwt-secret-file F] [--stripe-secret TENANT=F]...\n"
    "        [--insecure-no-auth] [--tick-interval-ms N]\n"
    "                           run the daemon: HTTP API, writer, ticks\n"
    "  token --tenant T --role R[,R] [--ttl S] [--jwt-secret-file F]\n"
    "                           mint a bearer token (roles: ingest, read, audit, metrics, admin)\n"
    "  replay [--to SEQ] [--into DIR]\n"
    "                           rebuild the state from the log\n"
    "  digest [--state DIR]     print {checkpoint, digest} of the state\n"
    "  show <view> [KEY] [--tenant T]\n"
    "                           print a view (NDJSON) or one entity\n"
    "  stream <name> [--from DSEQ] [--follow] [--tenant T]\n"
    "                           print a derived stream as NDJSON\n"
    "  tick [--time T] [--interval-ms N]\n"
    "                           append one engine tick (operators, tests)\n"
    "  backup DEST              a consistent copy of the data directory into DEST, safe\n"
    "                           while a server writes (restore: cairn serve --data DEST)\n"
    "  rules load DIR --tenant T append DIR/*.json as rule.define inputs (unchanged rules "
    "skipped)\n"
    "\n"
    "--data DIR defaults to $CAIRN_DATA or ./data; --schemas DIR to $CAIRN_SCHEMAS or the\n"
    "schemas/ folder of the source tree; --config FILE (JSON) to $CAIRN_CONFIG.\n";

void cli_fail(const char *code, const char *fmt, ...)
{
    char msg[CAIRN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct cairn_buf b;
    cairn_buf_init(&b, 4096);
    cairn_buf_printf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", code);
    cairn_buf_json_str(&b, msg, strlen(msg));
    cairn_buf_puts(&b, "}}\n");
    fwrite(b.data, 1, b.len, stderr);
    cairn_buf_deinit(&b);
}

bool cli_opt(struct cli *c, int *i, const char *name, const char **val)
{
    const char *a = c->argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n))
        return false;
    if (a[n] == '=') {
        *val = a + n + 1;
        return true;
    }
    if (a[n] != '\0')
        return false;
    if (*i + 1 >= c->argc) {
        cli_fail("usage", "%s needs a value", name);
        exit(CLI_FAIL);
    }
    *val = c->argv[++*i];
    return true;
}

bool cli_u64(const char *name, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        cli_fail("usage", "%s must be a non-negative integer, got '%s'", name, s);
        exit(CLI_FAIL);
    }
    *out = v;
    return true;
}

int cli_open_log(const struct cli *c, bool readonly, struct log **out)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/log", c->data) >= (int)sizeof dir)
        return CAIRN_EINVAL;
    struct log_config cfg = {.dir = dir, .readonly = readonly};
    int rc = log_open(out, &cfg);
    if (rc)
        cli_fail("open", "cannot open the log in %s: %s", dir, cairn_strerror(rc));
    return rc;
}

/* ====================================================================== dispatch */

static const struct {
    const char *name;
    int (*run)(struct cli *);
} commands[] = {
    {"append", cmd_append}, {"tail", cmd_tail},     {"verify", cmd_verify}, {"head", cmd_head},
    {"serve", cmd_serve},   {"replay", cmd_replay}, {"digest", cmd_digest}, {"show", cmd_show},
    {"stream", cmd_stream}, {"tick", cmd_tick},     {"token", cmd_token},   {"rules", cmd_rules},
    {"backup", cmd_backup},
};

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_FAIL : CLI_OK;
    }
    struct cli c = {.data = getenv("CAIRN_DATA"), .schemas = getenv("CAIRN_SCHEMAS")};
    if (!c.data || !*c.data)
        c.data = "./data";
    if (c.schemas && !*c.schemas)
        c.schemas = NULL;
    /* Pull the common options out; the rest goes to the command. */
    char **rest = calloc((size_t)argc, sizeof *rest);
    if (!rest)
        return CLI_FAIL;
    struct cli all = {.argc = argc, .argv = argv};
    const char *cfg_file = getenv("CAIRN_CONFIG");
    for (int i = 2; i < argc; i++) {
        const char *v;
        if (cli_opt(&all, &i, "--data", &v))
            c.data = v;
        else if (cli_opt(&all, &i, "--schemas", &v))
            c.schemas = v;
        else if (cli_opt(&all, &i, "--config", &v))
            cfg_file = v;
        else
            rest[c.argc++] = argv[i];
    }
    c.argv = rest;
    json_error_t je;
    c.config = cfg_file && *cfg_file ? json_load_file(cfg_file, JSON_REJECT_DUPLICATES, &je)
                                     : json_object();
    struct cairn_error ce;
    cairn_error_clear(&ce);
    engine_config_normalize(c.config);
    if (!json_is_object(c.config) || engine_config_check(c.config, handler_table, &ce)) {
        /* every command: a bad setting is refused even where it is unused */
        if (json_is_object(c.config))
            cli_fail("config", "%s: %s", cfg_file, ce.message);
        else if (c.config) /* JSON, but not an object */
            cli_fail("config", "%s: the config must be a JSON object", cfg_file);
        else if (je.line > 0)
            cli_fail("config", "%s: line %d: %s", cfg_file, je.line, je.text);
        else /* not read at all: the text says why (no such file…) */
            cli_fail("config", "%s", je.text);
        json_decref(c.config);
        free(rest);
        return CLI_FAIL;
    }
    int status = -1;
    for (size_t k = 0; k < sizeof commands / sizeof *commands; k++)
        if (!strcmp(argv[1], commands[k].name))
            status = commands[k].run(&c);
    if (status < 0) {
        cli_fail("usage", "unknown command '%s' (try cairn help)", argv[1]);
        status = CLI_FAIL;
    }
    json_decref(c.config);
    free(rest);
    return status;
}
