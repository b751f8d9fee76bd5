/*
 * cli_serve.c — `cairn serve` (the daemon) and `cairn token`.
 *
 * Configuration precedence: flags, then CAIRN_* environment variables,
 * then the config file (--config / CAIRN_CONFIG, JSON), then defaults.
 * Secrets are read from files and never printed.
 */
#include "cli_int.h"

#include "api.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct serve {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    uv_timer_t tick;
    struct engine *eng;
    struct api *api;
    uint64_t tick_ms;
    /* set by the loop's thread (on_signal), read by the writer's
     * (applied_trampoline): atomic (ThreadSanitizer found the plain bool) */
    _Atomic bool stopping;
};

/* ====================================================================== configuration */

static bool set_listen(struct api_config *ac, const char *v)
{
    const char *colon = strrchr(v, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    size_t hn = colon ? (size_t)(colon - v) : 0;
    if (!colon || *end || port < 0 || port > 65535 || hn == 0 || hn >= sizeof ac->host) {
        cli_fail("usage", "--listen wants HOST:PORT, got '%s'", v);
        return false;
    }
    memcpy(ac->host, v, hn);
    ac->host[hn] = '\0';
    ac->port = (int)port;
    return true;
}

static bool set_jwt(struct api_config *ac, const char *file)
{
    struct cairn_error e;
    char *s;
    size_t n;
    if (api_read_secret(file, &s, &n, &e)) {
        cli_fail("config", "%s", e.message);
        return false;
    }
    free(ac->jwt_secret);
    ac->jwt_secret = (uint8_t *)s;
    ac->jwt_secret_len = n;
    return true;
}

static void cfg_uint(const json_t *obj, const char *name, unsigned *out)
{
    const json_t *v = json_object_get(obj, name);
    if (json_is_integer(v) && json_integer_value(v) > 0)
        *out = (unsigned)json_integer_value(v);
}

static void cfg_size(const json_t *obj, const char *name, size_t *out)
{
    const json_t *v = json_object_get(obj, name);
    if (json_is_integer(v) && json_integer_value(v) > 0)
        *out = (size_t)json_integer_value(v);
}

/* The config file's "limits" and "log" sections. */
static void apply_file_limits(const json_t *cfg, struct api_config *ac, struct log_config *lc)
{
    const json_t *l = json_object_get(cfg, "limits");
    cfg_size(l, "header_max", &ac->header_max);
    cfg_size(l, "body_max", &ac->body_max);
    cfg_size(l, "batch_max", &ac->batch_max);
    cfg_uint(l, "header_timeout_ms", &ac->header_timeout_ms);
    cfg_uint(l, "body_timeout_ms", &ac->body_timeout_ms);
    cfg_uint(l, "idle_timeout_ms", &ac->idle_timeout_ms);
    cfg_uint(l, "max_connections", &ac->max_conns);
    cfg_uint(l, "max_sse_subscribers", &ac->max_sse);
    cfg_uint(l, "min_seq_wait_ms", &ac->min_seq_wait_ms);
    const json_t *g = json_object_get(cfg, "log");
    cfg_uint(g, "batch_max", &lc->batch_max);
    cfg_uint(g, "batch_wait_us", &lc->batch_wait_us);
    cfg_uint(g, "queue_max", &lc->queue_max);
}

/* The JWT secret file is only named by each source (*jwt_file: the one
 * that wins so far) and read once the precedence is settled (cmd_serve):
 * a secret file the config names but a flag overrides is never opened, so
 * a missing one does not stop the server. */
static bool apply_file(const json_t *cfg, struct api_config *ac, struct log_config *lc,
                       uint64_t *tick_ms, const char **jwt_file)
{
    const json_t *v;
    struct cairn_error e;
    if ((v = json_object_get(cfg, "listen")) && json_is_string(v) &&
        !set_listen(ac, json_string_value(v)))
        return false;
    if ((v = json_object_get(cfg, "jwt_secret_file")) && json_is_string(v))
        *jwt_file = json_string_value(v);
    if (json_is_true(json_object_get(cfg, "insecure_no_auth")))
        ac->insecure_no_auth = true;
    if ((v = json_object_get(cfg, "tick_interval_ms")) && json_is_integer(v))
        *tick_ms = (uint64_t)json_integer_value(v);
    const char *tenant;
    json_t *files;
    json_object_foreach((json_t *)json_object_get(cfg, "stripe_secrets"), tenant, files)
    {
        size_t i;
        json_t *f;
        json_array_foreach(files, i, f)
        {
            char spec[4200];
            snprintf(spec, sizeof spec, "%s=%s", tenant, json_string_value(f));
            if (!json_is_string(f) || api_config_add_stripe(ac, spec, &e)) {
                cli_fail("config", "stripe_secrets.%s: %s", tenant,
                         json_is_string(f) ? e.message : "file names must be strings");
                return false;
            }
        }
    }
    apply_file_limits(cfg, ac, lc);
    return true;
}

static bool apply_env(struct api_config *ac, const char **jwt_file)
{
    const char *v = getenv("CAIRN_LISTEN");
    if (v && *v && !set_listen(ac, v))
        return false;
    v = getenv("CAIRN_JWT_SECRET_FILE");
    if (v && *v)
        *jwt_file = v;
    return true;
}

static bool apply_flags(struct cli *c, struct api_config *ac, uint64_t *tick_ms,
                        const char **jwt_file)
{
    struct cairn_error e;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--listen", &v)) {
            if (!set_listen(ac, v))
                return false;
        } else if (cli_opt(c, &i, "--jwt-secret-file", &v)) {
            *jwt_file = v;
        } else if (cli_opt(c, &i, "--stripe-secret", &v)) {
            if (api_config_add_stripe(ac, v, &e)) {
                cli_fail("config", "%s", e.message);
                return false;
            }
        } else if (cli_opt(c, &i, "--tick-interval-ms", &v)) {
            cli_u64("--tick-interval-ms", v, tick_ms);
        } else if (!strcmp(c->argv[i], "--insecure-no-auth")) {
            ac->insecure_no_auth = true;
        } else {
            cli_fail("usage", "serve: unknown option %s", c->argv[i]);
            return false;
        }
    }
    if (*tick_ms == 0 || *tick_ms > 3600000) {
        cli_fail("usage", "the tick interval must be 1..3600000 ms");
        return false;
    }
    return true;
}

/* ====================================================================== the loop */

static void on_tick(uv_timer_t *t)
{
    struct serve *s = t->data;
    int rc = engine_tick_submit(s->eng, cairn_now_ns(), (int64_t)s->tick_ms * 1000000LL);
    if (rc && rc != CAIRN_EBUSY)
        fprintf(stderr, "cairn: appending a tick failed: %s\n", cairn_strerror(rc));
}

static void on_signal(uv_signal_t *h, int sig)
{
    struct serve *s = h->data;
    if (atomic_exchange(&s->stopping, true))
        return;
    fprintf(stderr, "cairn: stopping (signal %d): draining the writer\n", sig);
    uv_timer_stop(&s->tick);
    engine_stop(s->eng); /* every queued write is committed and answered */
    api_close(s->api);
    uv_close((uv_handle_t *)&s->tick, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
}

/* The engine calls this on the writer thread; the api may not exist yet. */
static void applied_trampoline(void *arg, uint64_t checkpoint)
{
    struct serve *s = arg;
    struct api *a = __atomic_load_n(&s->api, __ATOMIC_ACQUIRE);
    if (a && !atomic_load(&s->stopping))
        api_notify_applied(a, checkpoint);
}

static int run(struct serve *s, struct cli *c, struct api_config *ac, struct log_config *lc)
{
    struct cairn_error e;
    struct engine_config cfg = {.data = c->data,
                                .schema_dir = c->schemas,
                                .config = c->config,
                                .log = *lc,
                                .on_applied = applied_trampoline,
                                .on_applied_arg = s};
    cairn_error_clear(&e);
    int rc = engine_open(&s->eng, &cfg, &e);
    if (rc) {
        cli_fail(rc == CAIRN_EBUSY ? "busy"
                 : e.code          ? e.code
                                   : "open",
                 "%s",
                 rc == CAIRN_EBUSY ? "another process is writing to the data directory"
                 : e.code          ? e.message
                                   : cairn_strerror(rc));
        return CLI_FAIL;
    }
    if ((rc = engine_start(s->eng)) || (rc = api_open(&s->api, &s->loop, s->eng, ac, &e))) {
        cli_fail(e.code ? e.code : "start", "%s", e.code ? e.message : cairn_strerror(rc));
        engine_stop(s->eng);
        if (s->api) {
            api_close(s->api);
            uv_run(&s->loop, UV_RUN_DEFAULT);
        }
        engine_close(s->eng);
        return CLI_FAIL;
    }
    if (ac->insecure_no_auth)
        fprintf(stderr,
                "cairn: WARNING: authentication is OFF (--insecure-no-auth): anyone who "
                "can reach %s:%d can read and write every tenant\n",
                ac->host, ac->port);
    uint64_t head;
    log_head(engine_log(s->eng), &head, NULL);
    fprintf(stderr, "cairn: serving %s on http://%s:%d (log head %llu, ticks every %llu ms)\n",
            c->data, ac->host, ac->port, (unsigned long long)head, (unsigned long long)s->tick_ms);
    uv_timer_init(&s->loop, &s->tick);
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    s->tick.data = s->sigint.data = s->sigterm.data = s;
    uv_timer_start(&s->tick, on_tick, s->tick_ms, s->tick_ms);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    engine_close(s->eng);
    return CLI_OK;
}

int cmd_serve(struct cli *c)
{
    struct serve s = {.tick_ms = 1000};
    struct api_config ac;
    struct log_config lc = {0};
    api_config_init(&ac);
    int status = CLI_FAIL;
    signal(SIGPIPE, SIG_IGN); /* a client that disconnects must not kill us */
    const char *jwt_file = NULL;
    if (apply_file(c->config, &ac, &lc, &s.tick_ms, &jwt_file) && apply_env(&ac, &jwt_file) &&
        apply_flags(c, &ac, &s.tick_ms, &jwt_file) && (!jwt_file || set_jwt(&ac, jwt_file))) {
        uv_loop_init(&s.loop);
        status = run(&s, c, &ac, &lc);
        uv_loop_close(&s.loop);
    }
    api_config_deinit(&ac);
    return status;
}

/* ====================================================================== token */

int cmd_token(struct cli *c)
{
    const char *tenant = NULL, *roles = "read", *file = getenv("CAIRN_JWT_SECRET_FILE");
    uint64_t ttl = 3600;
    const json_t *f = json_object_get(c->config, "jwt_secret_file");
    if ((!file || !*file) && json_is_string(f))
        file = json_string_value(f);
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--tenant", &v))
            tenant = v;
        else if (cli_opt(c, &i, "--role", &v))
            roles = v;
        else if (cli_opt(c, &i, "--ttl", &v))
            cli_u64("--ttl", v, &ttl);
        else if (cli_opt(c, &i, "--jwt-secret-file", &v))
            file = v;
        else {
            cli_fail("usage", "token --tenant T --role R[,R…] [--ttl S] [--jwt-secret-file F]");
            return CLI_FAIL;
        }
    }
    if (!tenant || !file || !*file) {
        cli_fail("usage", "token needs --tenant and a secret (--jwt-secret-file or "
                          "CAIRN_JWT_SECRET_FILE)");
        return CLI_FAIL;
    }
    struct cairn_error e;
    struct cairn_buf out;
    char *secret;
    size_t sn;
    if (api_read_secret(file, &secret, &sn, &e)) {
        cli_fail("config", "%s", e.message);
        return CLI_FAIL;
    }
    cairn_buf_init(&out, 16384);
    int rc = api_jwt_mint((const uint8_t *)secret, sn, tenant, roles, cairn_now_ns() / 1000000000LL,
                          (int64_t)ttl, &out, &e);
    memset(secret, 0, sn);
    free(secret);
    if (!rc)
        printf("%.*s\n", (int)out.len, (const char *)out.data);
    else
        cli_fail(e.code ? e.code : "token", "%s", e.code ? e.message : cairn_strerror(rc));
    cairn_buf_deinit(&out);
    return rc ? CLI_FAIL : CLI_OK;
}
