/*
 * ingest.c (api) — POST /v1/events and the Stripe webhook.
 *
 * Bodies are parsed and validated on the loop (the same ingest code as
 * `cairn append`), queued to the writer without blocking (a full queue is
 * 429 with Retry-After), and answered from the loop once the writer's
 * durable commit returned. The writer thread only links the request into
 * a list and wakes the loop.
 */
#include "api_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum body_kind { BODY_JSON, BODY_NDJSON, BODY_MSGPACK, BODY_UNSUPPORTED };

static enum body_kind body_kind(const char *ct)
{
    if (!ct[0] || !strncmp(ct, "application/json", 16))
        return BODY_JSON;
    if (strstr(ct, "ndjson") || !strncmp(ct, "application/jsonl", 17))
        return BODY_NDJSON;
    if (strstr(ct, "msgpack"))
        return BODY_MSGPACK;
    return BODY_UNSUPPORTED;
}

/* ====================================================================== completion */

static void on_writer_done(struct log_req *lr)
{
    struct req *r = lr->arg;
    struct api *a = r->api;
    pthread_mutex_lock(&a->done_mu);
    r->next_done = a->done;
    a->done = r;
    pthread_mutex_unlock(&a->done_mu);
    uv_async_send(&a->done_async);
}

static void count_accepted(struct req *r)
{
    int64_t lat = (int64_t)uv_hrtime() - r->started_ns;
    for (size_t i = 0; i < r->nev; i++)
        if (!r->res[i].rc && !r->res[i].duplicate)
            metrics_ingested(r->api, &r->ins[i].type, lat);
}

static void answer_single(struct req *r)
{
    const struct log_result *res = &r->res[0];
    struct cairn_buf b;
    if (res->rc) {
        if (res->rc == CAIRN_ECONFLICT) {
            cairn_buf_init(&b, 4096);
            cairn_buf_printf(&b,
                             "{\"error\":{\"code\":\"conflict\",\"field\":\"/expected_seq\","
                             "\"message\":\"the last event of this tenant and key is seq "
                             "%llu\",\"actual_seq\":%llu}}\n",
                             (unsigned long long)res->actual_seq,
                             (unsigned long long)res->actual_seq);
            metrics_rejected(r->api, "conflict");
            http_respond(r, 409, "application/json", b.data, b.len, NULL);
            cairn_buf_deinit(&b);
            return;
        }
        http_error(r, res->rc == CAIRN_ETOOBIG ? 413 : 500,
                   res->rc == CAIRN_ETOOBIG ? "too_large" : "internal", NULL, "%s",
                   cairn_strerror(res->rc));
        return;
    }
    cairn_buf_init(&b, 256);
    cairn_buf_printf(&b, "{\"seq\":%llu%s}\n", (unsigned long long)res->seq,
                     res->duplicate ? ",\"duplicate\":true" : "");
    http_respond(r, res->duplicate ? 200 : 202, "application/json", b.data, b.len, NULL);
    cairn_buf_deinit(&b);
}

static void answer_batch(struct req *r)
{
    struct cairn_buf b;
    size_t accepted = 0, ev = 0;
    cairn_buf_init(&b, 64u << 20);
    cairn_buf_puts(&b, "{\"results\":[");
    for (size_t i = 0; i < r->nlines; i++) {
        if (i)
            cairn_buf_putc(&b, ',');
        const struct cairn_error *e = r->errs[i].code ? &r->errs[i] : NULL;
        const struct log_result *res = e ? NULL : &r->res[ev++];
        accepted += res && !res->rc;
        if (e)
            metrics_rejected(r->api, e->code);
        ingest_result_json(&b, r->lineno ? r->lineno[i] : i + 1, res, e);
    }
    cairn_buf_puts(&b, "]}\n");
    http_respond(r, accepted ? 202 : 400, "application/json", b.data, b.len, NULL);
    cairn_buf_deinit(&b);
}

void api_ingest_done(struct req *r)
{
    r->in_writer = false;
    if (!r->c) { /* the client left while the writer worked */
        req_free(r);
        return;
    }
    struct api *a = r->api;
    if (r->lreq.rc) {
        /* Said once per streak of failed writes, and again when one
         * succeeds: an operator's log shows a full disk, not only the
         * clients. */
        if (!a->write_failing)
            fprintf(stderr,
                    "cairn: the log could not be written: %s; ingest answers 503 until a write "
                    "succeeds\n",
                    cairn_strerror(r->lreq.rc));
        a->write_failing = true;
        a->write_failures++;
        http_error(r, 503, "unavailable", NULL, "the log could not be written: %s",
                   cairn_strerror(r->lreq.rc));
        return;
    }
    if (a->write_failing)
        fprintf(stderr, "cairn: the log is written again\n");
    a->write_failing = false;
    count_accepted(r);
    if (r->batch)
        answer_batch(r);
    else
        answer_single(r);
}

/* ====================================================================== parsing */

static int alloc_lines(struct req *r, size_t n)
{
    r->evs = calloc(n, sizeof *r->evs);
    r->ins = calloc(n, sizeof *r->ins);
    r->res = calloc(n, sizeof *r->res);
    r->errs = calloc(n, sizeof *r->errs);
    return r->evs && r->ins && r->res && r->errs ? 0 : CAIRN_ENOMEM;
}

/* Validates one decoded input object (a route's event) into line i,
 * bound to the token's tenant by the ingest, as every body is. */
static void take_object(struct req *r, const json_t *obj, struct cairn_error *e)
{
    struct ingest *ing = engine_ingest(r->api->eng);
    if (!ingest_parse_value_for(ing, obj, "http", cairn_now_ns(), false, r->tok.tenant,
                                r->tok.roles & API_ROLE_ADMIN, &r->evs[r->nev], e))
        r->nev++;
}

/* One JSON text (a single event, an NDJSON line): the ingest's fast path
 * (transcoded to msgpack in one pass, no jansson tree), bound to the
 * token's tenant. */
static void parse_json_text(struct req *r, const char *p, size_t n, struct cairn_error *e)
{
    struct ingest *ing = engine_ingest(r->api->eng);
    bool admin = r->tok.roles & API_ROLE_ADMIN;
    if (!p) /* an empty body has no buffer; the transcoder wants a pointer (UB on NULL + 0) */
        p = "";
    if (!ingest_parse_json_for(ing, p, n, "http", cairn_now_ns(), r->tok.tenant, admin,
                               &r->evs[r->nev], e))
        r->nev++;
}

static int parse_ndjson(struct req *r)
{
    const char *p = (const char *)r->body.data, *end = p + r->body.len;
    size_t lines = 0;
    for (const char *q = p; q < end; q++)
        lines += *q == '\n';
    lines += r->body.len && end[-1] != '\n'; /* a last line without its newline */
    if (lines > API_BATCH_EVENTS_MAX)
        return CAIRN_ETOOBIG;
    if (alloc_lines(r, lines) || !(r->lineno = calloc(lines ? lines : 1, sizeof *r->lineno)))
        return CAIRN_ENOMEM;
    /* Results name the physical line, as `cairn append` does. */
    for (size_t line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (!cairn_blank(p, n)) {
            size_t before = r->nev;
            r->lineno[r->nlines] = line;
            parse_json_text(r, p, n, &r->errs[r->nlines]);
            r->errs[r->nlines].code = r->nev > before ? NULL : r->errs[r->nlines].code;
            r->nlines++;
        }
        p += n + 1;
    }
    return 0;
}

/* Values are framed with cairn_mp_len (the walk that bounds untrusted
 * msgpack, common.h) and counted before anything is allocated, as NDJSON
 * lines are; each then takes the ingest's in-place msgpack path, bound to
 * the token's tenant as NDJSON lines are. A value that frames but is no
 * valid input (a bin, a non-string key, too deep…) is one refused line and
 * the batch goes on; bytes that do not frame are the last line, refused. */
static int parse_msgpack(struct req *r)
{
    struct ingest *ing = engine_ingest(r->api->eng);
    bool admin = r->tok.roles & API_ROLE_ADMIN;
    const uint8_t *p = r->body.data, *end = p + r->body.len;
    size_t lines = 0;
    for (const uint8_t *q = p; q < end && lines <= API_BATCH_EVENTS_MAX; lines++) {
        size_t n = cairn_mp_len(q, (size_t)(end - q));
        q = n ? q + n : end;
    }
    if (lines > API_BATCH_EVENTS_MAX)
        return CAIRN_ETOOBIG;
    if (alloc_lines(r, lines))
        return CAIRN_ENOMEM;
    while (p < end) {
        struct cairn_error *e = &r->errs[r->nlines++];
        size_t n = cairn_mp_len(p, (size_t)(end - p));
        if (!n) {
            cairn_error_set(e, "invalid_msgpack", "", "not a complete msgpack value");
            break;
        }
        if (!ingest_parse_msgpack_for(ing, p, n, NULL, "http", cairn_now_ns(), r->tok.tenant, admin,
                                      &r->evs[r->nev], e)) {
            r->nev++;
            e->code = NULL;
        } else if (!e->code) { /* every refusal names its reason */
            cairn_error_set(e, "invalid_msgpack", "", "this msgpack value cannot be decoded");
        }
        p += n;
    }
    return 0;
}

static void submit(struct req *r)
{
    for (size_t i = 0; i < r->nev; i++)
        r->ins[i] = r->evs[i].in;
    r->api = r->c->a;
    r->lreq = (struct log_req){
        .inputs = r->ins, .results = r->res, .n = r->nev, .done = on_writer_done, .arg = r};
    r->in_writer = true;
    int rc = log_writer_submit(engine_writer(r->api->eng), &r->lreq, false);
    if (rc) {
        r->in_writer = false;
        if (rc == CAIRN_EBUSY)
            http_error(r, 429, "overloaded", NULL, "the ingest queue is full; retry");
        else if (rc == CAIRN_ETOOBIG)
            http_error(r, 413, "too_large", "body", "the batch is larger than the ingest queue");
        else
            http_error(r, 503, "unavailable", NULL, "the writer is not accepting: %s",
                       cairn_strerror(rc));
    }
}

void api_post_events(struct req *r)
{
    enum body_kind kind = body_kind(r->content_type);
    int rc = 0;
    r->api = r->c->a;
    if (kind == BODY_UNSUPPORTED) {
        http_error(r, 415, "unsupported_media_type", "Content-Type",
                   "send application/json, application/x-ndjson or application/msgpack");
        return;
    }
    if (kind == BODY_JSON) {
        if ((rc = alloc_lines(r, 1)))
            goto fail;
        r->nlines = 1;
        parse_json_text(r, (const char *)r->body.data, r->body.len, &r->errs[0]);
        if (!r->nev) {
            int st = !strcmp(r->errs[0].code, "forbidden") ? 403 : 400;
            http_error_from(r, st, &r->errs[0]);
            return;
        }
    } else {
        r->batch = true;
        if (r->body.len == 0) { /* (and body.data may be NULL: no arithmetic on it) */
            http_error(r, 400, "missing_field", "body", "the batch is empty");
            return;
        }
        rc = kind == BODY_NDJSON ? parse_ndjson(r) : parse_msgpack(r);
        if (rc)
            goto fail;
        if (!r->nev) {
            answer_batch(r);
            return;
        }
    }
    submit(r);
    return;
fail:
    if (rc == CAIRN_ETOOBIG)
        http_error(r, 413, "too_large", "body", "a batch holds at most %d events",
                   API_BATCH_EVENTS_MAX);
    else
        http_error(r, 500, "internal", NULL, "%s", cairn_strerror(rc));
}

void api_post_object(struct req *r, json_t *obj)
{
    r->api = r->c->a;
    if (alloc_lines(r, 1)) {
        http_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    r->nlines = 1;
    take_object(r, obj, &r->errs[0]);
    if (!r->nev) {
        http_error_from(r, !strcmp(r->errs[0].code, "forbidden") ? 403 : 400, &r->errs[0]);
        return;
    }
    submit(r);
}

/* ====================================================================== Stripe */

void api_post_stripe(struct req *r, const char *tenant)
{
    struct api *a = r->c->a;
    const struct api_stripe_secret *sec = NULL;
    struct cairn_error e;
    r->api = a;
    for (size_t i = 0; i < a->cfg.nstripe && !sec; i++)
        if (!strcmp(a->cfg.stripe[i].tenant, tenant))
            sec = &a->cfg.stripe[i];
    if (!sec) {
        http_error(r, 404, "not_found", "tenant", "no Stripe endpoint secret for this tenant");
        return;
    }
    int64_t now = (a->cfg.now_ns ? a->cfg.now_ns() : cairn_now_ns()) / 1000000000LL;
    if (api_stripe_verify(sec->secrets, sec->n, r->stripe_sig[0] ? r->stripe_sig : NULL,
                          r->body.data, r->body.len, now, a->cfg.stripe_tolerance_s, &e)) {
        http_error_from(r, 400, &e);
        return;
    }
    json_error_t je;
    json_t *body = json_loadb((const char *)r->body.data, r->body.len, JSON_REJECT_DUPLICATES, &je);
    const json_t *id = json_object_get(body, "id"), *created = json_object_get(body, "created");
    if (!json_is_object(body) || !json_is_string(id)) {
        json_decref(body);
        http_error(r, 400, "invalid_json", "", "the webhook body is not a Stripe event object");
        return;
    }
    /* The Stripe event id is the idempotency id: Stripe's retries of one
     * event are appended once. Event time is Stripe's `created`. */
    json_t *ev = json_pack("{s:s, s:s, s:O, s:O}", "type", "payment", "tenant", tenant, "id", id,
                           "payload", body);
    if (ev && json_is_integer(created))
        json_object_set_new(ev, "time", json_integer(json_integer_value(created) * 1000000000LL));
    json_decref(body);
    if (!ev || alloc_lines(r, 1)) {
        json_decref(ev);
        http_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    r->nlines = 1;
    int rc = ingest_parse_value(engine_ingest(a->eng), ev, "stripe", cairn_now_ns(), false,
                                &r->evs[0], &r->errs[0]);
    json_decref(ev);
    if (rc) {
        http_error_from(r, 400, &r->errs[0]);
        return;
    }
    r->nev = 1;
    submit(r);
}
