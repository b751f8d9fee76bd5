/*
 * sse.c — live derived streams as Server-Sent Events.
 *
 * A subscriber is a connection turned into an event stream: after the
 * headers, every derived event of its stream that passes its filters (the
 * token's tenant always; ?type=, ?key= optionally) is written as
 *
 *   id: <dseq>\nevent: <type>\ndata: <derived envelope JSON>\n\n
 *
 * dseq values survive restarts and rebuilds (replay is deterministic), so
 * a client resumes with Last-Event-ID and sees no gap and no duplicate.
 * A subscriber whose unsent bytes pass API_SSE_BUFFER_MAX is sent a final
 * `event: overflow` (with the id to resume from) and disconnected: a slow
 * reader never makes the server buffer without bound.
 */
#include "api_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Events written per subscriber per wake-up; the rest follow on the next
 * loop iteration, so one subscriber far behind cannot stall the loop. */
#define SSE_PUMP_MAX 4096

struct sse {
    struct conn *c;
    struct api *a;
    char dbi[160];
    uint64_t next;
    char types[1024];
    char key[CAIRN_KEY_MAX + 1];
    bool by_type, by_key, any_tenant;
    char tenant[CAIRN_TENANT_MAX + 1];
    struct sse *prev, *nxt;
};

bool list_has(const char *list, const struct cairn_str *s);

static bool wanted(const struct sse *s, const struct proj_derived *d)
{
    if (!s->any_tenant &&
        (d->tenant.n != strlen(s->tenant) || memcmp(d->tenant.p, s->tenant, d->tenant.n)))
        return false;
    if (s->by_type && !list_has(s->types, &d->type))
        return false;
    return !s->by_key || (d->key.n == strlen(s->key) && !memcmp(d->key.p, s->key, d->key.n));
}

static void overflow(struct sse *s)
{
    char msg[128];
    int n = snprintf(msg, sizeof msg, "event: overflow\ndata: {\"resume_from\":%llu}\n\n",
                     (unsigned long long)s->next);
    http_write_final(s->c, msg, (size_t)n);
}

/* Writes what is new for one subscriber. */
static void pump(struct sse *s)
{
    struct proj_snap *snap;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t k8[8];
    if (s->c->closing || proj_snap_begin(engine_proj(s->a->eng), &snap))
        return;
    struct cairn_buf b;
    cairn_buf_init(&b, API_SSE_BUFFER_MAX);
    int n = 0;
    if (!proj_snap_dbi(snap, s->dbi, &dbi) && !mdb_cursor_open(proj_snap_txn(snap), dbi, &cur)) {
        cairn_be64_put(k8, s->next);
        k = (MDB_val){8, k8};
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc && n < SSE_PUMP_MAX;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), n++) {
            struct proj_derived d;
            if (proj_derived_decode(v.mv_data, v.mv_size, &d))
                break;
            size_t mark = b.len;
            if (wanted(s, &d) &&
                (cairn_buf_printf(&b, "id: %llu\nevent: %.*s\ndata: ", (unsigned long long)d.dseq,
                                  (int)d.type.n, d.type.p) ||
                 proj_derived_json(&d, &b) || cairn_buf_puts(&b, "\n\n"))) {
                b.len = mark; /* the buffer is full: stop here, resume later */
                break;
            }
            s->next = d.dseq + 1;
        }
        mdb_cursor_close(cur);
    }
    proj_snap_end(snap);
    if (b.len) {
        size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&s->c->tcp);
        if (queued + b.len > API_SSE_BUFFER_MAX)
            overflow(s);
        else
            http_write_raw(s->c, b.data, b.len);
    }
    cairn_buf_deinit(&b);
    if (n == SSE_PUMP_MAX && !s->c->closing)
        uv_async_send(&s->a->applied_async); /* more to send: come back next iteration */
}

void sse_start(struct req *r, const char *stream, uint64_t from)
{
    struct api *a = r->c->a;
    if (a->nsubs >= a->cfg.max_sse) {
        http_error(r, 503, "too_many_subscribers", NULL, "the subscriber limit (%u) is reached",
                   a->cfg.max_sse);
        return;
    }
    struct sse *s = calloc(1, sizeof *s);
    if (!s) {
        http_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    s->c = r->c;
    s->a = a;
    s->next = from;
    snprintf(s->dbi, sizeof s->dbi, PROJ_STREAM_PREFIX "%s", stream);
    s->by_type = query_get(r, "type", s->types, sizeof s->types);
    s->by_key = query_get(r, "key", s->key, sizeof s->key);
    s->any_tenant = r->any_tenant;
    snprintf(s->tenant, sizeof s->tenant, "%s", r->tok.tenant);
    static const char hdr[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n"
                              "retry: 1000\n\n";
    uv_timer_stop(&r->c->timer); /* subscribers are not idle connections */
    r->c->sse = s;
    s->nxt = a->subs;
    if (a->subs)
        a->subs->prev = s;
    a->subs = s;
    a->nsubs++;
    metrics_http(a, r->route, 200);
    http_write_raw(r->c, hdr, sizeof hdr - 1);
    pump(s); /* the request stays the connection's active one: no more parsing */
}

void sse_wake_all(struct api *a)
{
    for (struct sse *s = a->subs, *next; s; s = next) {
        next = s->nxt;
        pump(s);
    }
}

void sse_heartbeat(struct api *a)
{
    static const char beat[] = ": heartbeat\n\n";
    for (struct sse *s = a->subs, *next; s; s = next) {
        next = s->nxt;
        http_write_raw(s->c, beat, sizeof beat - 1);
    }
}

void sse_drop(struct conn *c)
{
    struct sse *s = c->sse;
    if (!s)
        return;
    if (s->prev)
        s->prev->nxt = s->nxt;
    else
        s->a->subs = s->nxt;
    if (s->nxt)
        s->nxt->prev = s->prev;
    s->a->nsubs--;
    c->sse = NULL;
    free(s);
}
