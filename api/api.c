/*
 * api.c — the API's life cycle, configuration and cross-thread wake-ups.
 */
#include "api_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void http_settings_init(http_parser_settings *s);
int http_listen(struct api *a, struct cairn_error *e);

/* ====================================================================== configuration */

void api_config_init(struct api_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->port = 8080;
    cfg->header_max = API_HEADER_MAX_DEFAULT;
    cfg->body_max = API_BODY_MAX_DEFAULT;
    cfg->batch_max = API_BATCH_MAX_DEFAULT;
    cfg->header_timeout_ms = API_HEADER_TIMEOUT_MS_DEFAULT;
    cfg->body_timeout_ms = API_BODY_TIMEOUT_MS_DEFAULT;
    cfg->idle_timeout_ms = API_IDLE_TIMEOUT_MS_DEFAULT;
    cfg->max_conns = API_MAX_CONNS_DEFAULT;
    cfg->max_sse = API_MAX_SSE_DEFAULT;
    cfg->min_seq_wait_ms = API_MIN_SEQ_WAIT_MS_DEFAULT;
    cfg->stripe_tolerance_s = API_STRIPE_TOLERANCE_S;
}

void api_config_deinit(struct api_config *cfg)
{
    if (cfg->jwt_secret)
        memset(cfg->jwt_secret, 0, cfg->jwt_secret_len);
    free(cfg->jwt_secret);
    for (size_t i = 0; i < cfg->nstripe; i++)
        for (size_t k = 0; k < cfg->stripe[i].n; k++) {
            memset(cfg->stripe[i].secrets[k], 0, strlen(cfg->stripe[i].secrets[k]));
            free(cfg->stripe[i].secrets[k]);
        }
    free(cfg->stripe);
    cfg->jwt_secret = NULL;
    cfg->stripe = NULL;
    cfg->nstripe = 0;
}

int api_read_secret(const char *path, char **out, size_t *n, struct cairn_error *e)
{
    /* The file's name may be reported; its content never is. */
    FILE *f = fopen(path, "rb");
    if (!f)
        return cairn_error_set(e, "config", "", "cannot read secret file %s: %s", path,
                               strerror(errno));
    char *buf = calloc(1, 4097);
    size_t len = buf ? fread(buf, 1, 4096, f) : 0;
    bool more = buf && fgetc(f) != EOF;
    fclose(f);
    if (!buf)
        return CAIRN_ENOMEM;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        buf[--len] = '\0';
    if (!len || more) {
        free(buf);
        return cairn_error_set(e, "config", "", "secret file %s must hold 1..4096 bytes", path);
    }
    *out = buf;
    *n = len;
    return 0;
}

int api_config_add_stripe(struct api_config *cfg, const char *spec, struct cairn_error *e)
{
    const char *eq = strchr(spec, '=');
    size_t tn = eq ? (size_t)(eq - spec) : 0;
    if (!eq || tn == 0 || tn > CAIRN_TENANT_MAX)
        return cairn_error_set(e, "config", "stripe-secret",
                               "--stripe-secret wants TENANT=FILE, got '%s'", spec);
    struct api_stripe_secret *s = NULL;
    for (size_t i = 0; i < cfg->nstripe && !s; i++)
        if (strlen(cfg->stripe[i].tenant) == tn && !memcmp(cfg->stripe[i].tenant, spec, tn))
            s = &cfg->stripe[i];
    if (!s) {
        struct api_stripe_secret *arr = realloc(cfg->stripe, (cfg->nstripe + 1) * sizeof *arr);
        if (!arr)
            return CAIRN_ENOMEM;
        cfg->stripe = arr;
        s = &arr[cfg->nstripe++];
        memset(s, 0, sizeof *s);
        memcpy(s->tenant, spec, tn);
    }
    if (s->n == API_STRIPE_SECRETS_MAX)
        return cairn_error_set(e, "config", "stripe-secret", "at most %d secrets per tenant",
                               API_STRIPE_SECRETS_MAX);
    size_t n;
    return api_read_secret(eq + 1, &s->secrets[s->n++], &n, e) ? (s->n--, CAIRN_EINVAL) : 0;
}

/* ====================================================================== wake-ups */

/* Writer thread -> loop: ingest requests whose commit returned. */
static void on_done_async(uv_async_t *h)
{
    struct api *a = h->data;
    pthread_mutex_lock(&a->done_mu);
    struct req *list = a->done;
    a->done = NULL;
    pthread_mutex_unlock(&a->done_mu);
    /* The list is LIFO; answer in completion order. */
    struct req *rev = NULL;
    while (list) {
        struct req *next = list->next_done;
        list->next_done = rev;
        rev = list;
        list = next;
    }
    while (rev) {
        struct req *next = rev->next_done;
        api_ingest_done(rev);
        rev = next;
    }
}

/* Any thread -> loop: the state moved. */
static void on_applied_async(uv_async_t *h)
{
    struct api *a = h->data;
    uint64_t cp = a->applied;
    for (struct conn *c = a->conns, *next; c; c = next) {
        next = c->next;
        if (c->waiting_min_seq && c->active && c->active->min_seq <= cp) {
            c->waiting_min_seq = false;
            http_disarm(c);
            routes_retry(c->active);
        }
    }
    sse_wake_all(a);
}

void api_notify_applied(void *arg, uint64_t checkpoint)
{
    struct api *a = arg;
    a->applied = checkpoint;
    uv_async_send(&a->applied_async);
}

static void on_heartbeat(uv_timer_t *t)
{
    sse_heartbeat(t->data);
}

/* ====================================================================== life cycle */

int api_open(struct api **out, uv_loop_t *loop, struct engine *eng, const struct api_config *cfg,
             struct cairn_error *e)
{
    if (!cfg->insecure_no_auth && (!cfg->jwt_secret || cfg->jwt_secret_len < API_JWT_SECRET_MIN))
        return cairn_error_set(e, "config", "jwt-secret-file",
                               "a JWT secret of at least %d bytes is required "
                               "(--jwt-secret-file), or --insecure-no-auth",
                               API_JWT_SECRET_MIN);
    struct api *a = calloc(1, sizeof *a);
    if (!a)
        return CAIRN_ENOMEM;
    a->loop = loop;
    a->eng = eng;
    a->cfg = *cfg;
    a->applied = proj_checkpoint(engine_proj(eng));
    if (!cfg->insecure_no_auth && api_jwt_new(cfg->jwt_secret, cfg->jwt_secret_len, &a->jwt)) {
        free(a);
        return cairn_error_set(e, "config", "jwt-secret-file", "cannot set up HMAC-SHA256");
    }
    http_settings_init(&a->settings);
    routes_init();
    pthread_mutex_init(&a->done_mu, NULL);
    uv_async_init(loop, &a->done_async, on_done_async);
    uv_async_init(loop, &a->applied_async, on_applied_async);
    uv_timer_init(loop, &a->heartbeat);
    a->done_async.data = a->applied_async.data = a->heartbeat.data = a;
    a->handles_open = 3;
    uv_timer_start(&a->heartbeat, on_heartbeat, API_SSE_HEARTBEAT_MS, API_SSE_HEARTBEAT_MS);
    int rc = http_listen(a, e);
    *out = a; /* even on failure: api_close releases the handles */
    return rc;
}

/* The api is freed once its own handles and every connection are closed
 * (libuv runs close callbacks in no promised order). */
void api_maybe_free(struct api *a)
{
    if (a->closing && a->handles_open == 0 && a->nconns == 0) {
        pthread_mutex_destroy(&a->done_mu);
        api_jwt_free(a->jwt);
        free(a);
    }
}

static void on_api_handle_closed(uv_handle_t *h)
{
    struct api *a = h->data;
    a->handles_open--;
    api_maybe_free(a);
}

void api_close(struct api *a)
{
    if (!a || a->closing)
        return;
    /* The writer must be stopped first (engine_stop): answer what it
     * finished, then close. */
    on_done_async(&a->done_async);
    a->closing = true;
    for (struct conn *c = a->conns; c; c = c->next)
        http_close(c);
    uv_close((uv_handle_t *)&a->done_async, on_api_handle_closed);
    uv_close((uv_handle_t *)&a->applied_async, on_api_handle_closed);
    uv_close((uv_handle_t *)&a->heartbeat, on_api_handle_closed);
    if (a->handles_open > 3)
        uv_close((uv_handle_t *)&a->listener, on_api_handle_closed);
}
