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
    size_t key_n, tenant_n;
    bool by_type, by_key, any_tenant;
    char tenant[CAIRN_TENANT_MAX + 1];
    uint64_t round;  /* the last wake-up round that pumped it */
    bool overflowed; /* sent its final "overflow": nothing more is written */
    uint64_t unsent; /* during a pump: `next` before this round's output */
    struct sse *prev, *nxt;
};

bool list_has(const char *list, const struct cairn_str *s);

static bool wanted(const struct sse *s, const struct proj_derived *d)
{
    if (!s->any_tenant &&
        (d->tenant.n != s->tenant_n || memcmp(d->tenant.p, s->tenant, d->tenant.n)))
        return false;
    if (s->by_type && !list_has(s->types, &d->type))
        return false;
    return !s->by_key || (d->key.n == s->key_n && !memcmp(d->key.p, s->key, d->key.n));
}

static void overflow(struct sse *s)
{
    char msg[128];
    int n = snprintf(msg, sizeof msg, "event: overflow\ndata: {\"resume_from\":%llu}\n\n",
                     (unsigned long long)s->next);
    s->overflowed = true; /* the connection ends (lingering) after this */
    http_write_final(s->c, msg, (size_t)n);
}

/* "id: <dseq>\nevent: <type>\ndata: <json>\n\n" into f (reset first). */
static int render(const struct proj_derived *d, struct cairn_buf *f)
{
    char num[24];
    int k = snprintf(num, sizeof num, "%llu", (unsigned long long)d->dseq);
    cairn_buf_reset(f);
    if (cairn_buf_puts(f, "id: ") || cairn_buf_append(f, num, (size_t)k) ||
        cairn_buf_puts(f, "\nevent: ") || cairn_buf_append(f, d->type.p, d->type.n) ||
        cairn_buf_puts(f, "\ndata: ") || proj_derived_json(d, f) || cairn_buf_puts(f, "\n\n"))
        return CAIRN_ENOMEM;
    return 0;
}

/*
 * Writes what is new for the n subscribers of one stream (sub[i]->dbi all
 * equal). One snapshot and one cursor serve them all, from the lowest
 * position among them; each event's frame is rendered once, when the first
 * subscriber that wants it is found, and copied into the output of every
 * subscriber whose position and filters it passes. (Rendering once per
 * subscriber made a fan-out to 100 cost 100 JSON renderings per event.)
 * Returns true when the stream has more than SSE_PUMP_MAX events past the
 * lowest position (the caller comes back on the next loop iteration).
 */
static bool pump_stream(struct api *a, struct sse **sub, struct cairn_buf *out, size_t n)
{
    struct proj_snap *snap;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t k8[8];
    uint64_t from = UINT64_MAX;
    bool *full = calloc(n, sizeof *full);
    int seen = 0;
    if (!full || proj_snap_begin(engine_proj(a->eng), &snap)) {
        free(full);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        from = sub[i]->next < from ? sub[i]->next : from;
        sub[i]->unsent = sub[i]->next; /* where out[i] starts: see flush */
    }
    struct cairn_buf frame;
    cairn_buf_init(&frame, API_SSE_BUFFER_MAX);
    if (!proj_snap_dbi(snap, sub[0]->dbi, &dbi) &&
        !mdb_cursor_open(proj_snap_txn(snap), dbi, &cur)) {
        cairn_be64_put(k8, from);
        k = (MDB_val){8, k8};
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc && seen < SSE_PUMP_MAX;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), seen++) {
            struct proj_derived d;
            if (proj_derived_decode(v.mv_data, v.mv_size, &d))
                break;
            bool rendered = false, ok = true;
            for (size_t i = 0; i < n; i++) {
                struct sse *s = sub[i];
                if (full[i] || d.dseq < s->next)
                    continue;
                if (wanted(s, &d)) {
                    if (!rendered)
                        ok = !render(&d, &frame);
                    rendered = true;
                    if (!ok || cairn_buf_append(&out[i], frame.data, frame.len)) {
                        full[i] = true; /* the output is full: resume here later */
                        continue;
                    }
                }
                s->next = d.dseq + 1;
            }
        }
        mdb_cursor_close(cur);
    }
    proj_snap_end(snap);
    cairn_buf_deinit(&frame);
    free(full);
    return seen == SSE_PUMP_MAX;
}

/* Sends each subscriber its output (or the overflow notice). */
static void flush(struct sse **sub, struct cairn_buf *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct sse *s = sub[i];
        if (out[i].len) {
            size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&s->c->tcp);
            /* s may be freed by a failed write: not touched after */
            if (queued + out[i].len > API_SSE_BUFFER_MAX) {
                s->next = s->unsent; /* out[i] is dropped: resume from its first event */
                overflow(s);
            } else
                http_write_raw(s->c, out[i].data, out[i].len);
        }
        cairn_buf_deinit(&out[i]);
    }
}

/* Pumps the n subscribers of one stream. */
static void pump_group(struct api *a, struct sse **sub, size_t n)
{
    struct cairn_buf *out = calloc(n, sizeof *out);
    if (!out)
        return;
    for (size_t i = 0; i < n; i++)
        cairn_buf_init(&out[i], API_SSE_BUFFER_MAX);
    bool more = pump_stream(a, sub, out, n);
    flush(sub, out, n);
    free(out);
    if (more)
        uv_async_send(&a->applied_async); /* more to send: come back next iteration */
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
    int by_type = query_param(r, "type", s->types, sizeof s->types);
    int by_key = by_type < 0 ? -1 : query_param(r, "key", s->key, sizeof s->key);
    if (by_key < 0) { /* answered */
        free(s);
        return;
    }
    s->by_type = by_type;
    s->by_key = by_key;
    s->key_n = strlen(s->key);
    s->any_tenant = r->any_tenant;
    snprintf(s->tenant, sizeof s->tenant, "%s", r->tok.tenant);
    s->tenant_n = strlen(s->tenant);
    static const char hdr[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n"
                              "retry: 1000\n\n";
    http_disarm(r->c); /* subscribers are not idle connections */
    r->c->sse = s;
    s->nxt = a->subs;
    if (a->subs)
        a->subs->prev = s;
    a->subs = s;
    a->nsubs++;
    metrics_http(a, r->route, 200);
    http_write_raw(r->c, hdr, sizeof hdr - 1);
    if (!r->c->closing) /* the request stays the connection's active one: no more parsing */
        pump_group(a, &s, 1);
}

static int by_next(const void *x, const void *y)
{
    const struct sse *a = *(struct sse *const *)x, *b = *(struct sse *const *)y;
    return a->next < b->next ? -1 : a->next > b->next;
}

/* Pumps every subscriber, one group per stream and position: the
 * subscribers of a stream that are near each other share one cursor and
 * one rendering of each event. */
void sse_wake_all(struct api *a)
{
    if (!a->nsubs)
        return;
    struct sse **group = malloc(a->nsubs * sizeof *group);
    if (!group)
        return;
    uint64_t round = ++a->sse_round;
    for (;;) {
        struct sse *first = NULL;
        size_t n = 0;
        for (struct sse *s = a->subs; s; s = s->nxt) {
            if (s->round == round || s->c->closing || s->overflowed)
                continue;
            if (!first)
                first = s;
            if (strcmp(s->dbi, first->dbi))
                continue;
            s->round = round;
            group[n++] = s;
        }
        if (!n)
            break;
        /* One cursor serves subscribers close to each other only: dseqs
         * of a stream are dense, so subscribers more than SSE_PUMP_MAX
         * apart could not share a wake-up's window anyway, and a reader
         * catching up from far back must not hold the live ones behind
         * its window. */
        qsort(group, n, sizeof *group, by_next);
        for (size_t i = 0, k; i < n; i = k) {
            for (k = i + 1; k < n && group[k]->next - group[i]->next < SSE_PUMP_MAX; k++)
                ;
            pump_group(a, group + i, k - i);
        }
    }
    free(group);
}

void sse_heartbeat(struct api *a)
{
    static const char beat[] = ": heartbeat\n\n";
    for (struct sse *s = a->subs, *next; s; s = next) {
        next = s->nxt;
        if (!s->overflowed)
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
