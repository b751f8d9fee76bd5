/*
 * http.c — the HTTP/1.1 server: connections, parsing, limits, timeouts,
 * responses.
 *
 * Pipelining: http_parser is paused in on_message_complete, so at most one
 * request per connection is being handled; bytes of later requests wait in
 * the connection's input buffer and are parsed once the response is
 * written. Responses therefore go out in request order, and a client that
 * pipelines more than the input buffer holds is simply not read from
 * (TCP backpressure) until it catches up.
 *
 * Timeouts (one timer per connection): header (first byte to end of
 * headers) and body (to end of body) answer 408 and close; idle (between
 * keep-alive requests) closes quietly.
 */
#include "api_int.h"

#include <assert.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IN_BUF_MAX (API_BATCH_MAX_DEFAULT + (64u << 10))
#define READ_CHUNK (64u << 10)

static int64_t mono_ns(void)
{
    return (int64_t)uv_hrtime();
}

/* ====================================================================== responses */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
    }
}

struct wreq {
    uv_write_t w;
    struct conn *c;
    bool close_after;
    uv_buf_t buf;
    char data[];
};

/* After a half-close, the connection ends once nothing is left to answer
 * or to write. */
static void close_if_drained(struct conn *c)
{
    if (c->eof && !c->closing && !c->active && c->writes == 0)
        http_close(c);
}

static void linger(struct conn *c);

static void on_written(uv_write_t *w, int status)
{
    struct wreq *wr = (struct wreq *)w;
    struct conn *c = wr->c;
    c->writes--;
    if (status && !c->closing)
        http_close(c);
    else if (wr->close_after && !c->closing)
        linger(c);
    else
        close_if_drained(c);
    free(wr);
}

static int write_buf(struct conn *c, const void *hdr, size_t hn, const void *body, size_t bn,
                     bool close_after)
{
    if (c->closing)
        return CAIRN_ECLOSED;
    struct wreq *wr = malloc(sizeof *wr + hn + bn);
    if (!wr)
        return CAIRN_ENOMEM;
    memcpy(wr->data, hdr, hn);
    if (bn)
        memcpy(wr->data + hn, body, bn);
    wr->c = c;
    wr->close_after = close_after;
    wr->buf = uv_buf_init(wr->data, (unsigned)(hn + bn));
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &wr->buf, 1, on_written)) {
        free(wr);
        http_close(c);
        return CAIRN_EIO;
    }
    c->writes++;
    return 0;
}

int http_write_raw(struct conn *c, const void *p, size_t n)
{
    return write_buf(c, p, n, NULL, 0, false);
}

int http_write_final(struct conn *c, const void *p, size_t n)
{
    return write_buf(c, p, n, NULL, 0, true);
}

static size_t put(char *o, const char *s)
{
    size_t n = strlen(s);
    memcpy(o, s, n);
    return n;
}

/* The response head, assembled with memcpy (snprintf was a visible part of
 * a GET's cost). ctype and extra are the server's own short constants. */
static size_t response_head(char *o, int status, const char *ctype, size_t n, bool keep,
                            const char *extra)
{
    size_t k = put(o, "HTTP/1.1 ");
    k += cairn_u64_dec(o + k, (uint64_t)status);
    o[k++] = ' ';
    k += put(o + k, reason(status));
    k += put(o + k, "\r\nContent-Type: ");
    k += put(o + k, ctype);
    k += put(o + k, "\r\nContent-Length: ");
    k += cairn_u64_dec(o + k, n);
    k += put(o + k, keep ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n");
    if (extra)
        k += put(o + k, extra);
    k += put(o + k, "\r\n");
    return k;
}

void http_respond(struct req *r, int status, const char *ctype, const void *body, size_t n,
                  const char *extra)
{
    struct conn *c = r->c;
    char hdr[1024];
    bool keep = r->keep_alive && status != 408 && status != 413 && status != 431;
    assert(strlen(ctype) + (extra ? strlen(extra) : 0) < sizeof hdr - 128);
    size_t hn = response_head(hdr, status, ctype, n, keep, extra);
    metrics_http(c->a, r->route, status);
    write_buf(c, hdr, hn, body, n, !keep);
    if (!keep && !c->failed) {
        /* "Connection: close" ends the connection after this response: a
         * request pipelined behind it must not be executed (RFC 9112 9.6). */
        c->failed = true;
        c->in_off = c->in.len;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    if (c->active == r) {
        c->active = NULL;
        req_free(r);
        if (keep && !c->closing)
            http_resume(c);
    }
}

void http_respond_json(struct req *r, int status, const struct cairn_buf *body)
{
    http_respond(r, status, "application/json", body->data, body->len, NULL);
}

void http_error_from(struct req *r, int status, const struct cairn_error *e)
{
    struct cairn_buf b;
    cairn_buf_init(&b, 4096);
    cairn_buf_printf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", e->code ? e->code : "error");
    cairn_buf_json_str(&b, e->message, strlen(e->message));
    if (e->field[0]) {
        cairn_buf_puts(&b, ",\"field\":");
        cairn_buf_json_str(&b, e->field, strlen(e->field));
    }
    cairn_buf_puts(&b, "}}\n");
    const char *extra = status == 429 || status == 503 ? "Retry-After: 1\r\n"
                        : status == 401                ? "WWW-Authenticate: Bearer\r\n"
                                                       : NULL;
    metrics_rejected(r->c->a, e->code ? e->code : "error");
    http_respond(r, status, "application/json", b.data, b.len, extra);
    cairn_buf_deinit(&b);
}

void http_error(struct req *r, int status, const char *code, const char *field, const char *fmt,
                ...)
{
    struct cairn_error e;
    va_list ap;
    e.code = code;
    snprintf(e.field, sizeof e.field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    http_error_from(r, status, &e);
}

struct req *req_new(struct conn *c)
{
    struct req *r = malloc(sizeof *r);
    if (!r)
        return NULL;
    memset(r, 0, offsetof(struct req, url));
    r->url[0] = r->path[0] = r->query[0] = r->auth[0] = r->content_type[0] = r->accept[0] =
        r->last_event_id[0] = r->stripe_sig[0] = r->expect[0] = '\0';
    r->c = c;
    r->route = -1;
    return r;
}

void req_free(struct req *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nev; i++)
        ingest_event_deinit(&r->evs[i]);
    free(r->evs);
    free(r->ins);
    free(r->res);
    free(r->errs);
    free(r->lineno);
    cairn_buf_deinit(&r->body);
    free(r);
}

/* ====================================================================== closing */

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles_open)
        return;
    struct api *a = c->a;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    req_free(c->cur);
    /* An ingest request still in the writer keeps its memory until the
     * writer answers (api_ingest_done frees it when c is gone). */
    if (c->active && c->active->in_writer)
        c->active->c = NULL;
    else
        req_free(c->active);
    cairn_buf_deinit(&c->in);
    free(c);
    api_maybe_free(a);
}

void http_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    sse_drop(c);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/*
 * Lingering close (as Apache and nginx do): after a response that ends the
 * connection — an error answered before the request was read to its end
 * (413, 431, 400, 408, 417, an early 100-continue refusal) — closing at once
 * while the client still sends would make the kernel answer its data with
 * a reset, which can destroy the response before the client reads it. So
 * the write side is shut (the client sees the end of the response), input
 * is read and dropped until the client closes, for at most
 * API_LINGER_MS and API_LINGER_BYTES, and then the connection is closed.
 */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void arm(struct conn *c, unsigned ms);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (status && !c->closing)
        http_close(c);
}

static void linger(struct conn *c)
{
    if (c->lingering || c->closing)
        return;
    if (c->eof) { /* the client already finished sending */
        http_close(c);
        return;
    }
    c->lingering = true;
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown)) {
        http_close(c);
        return;
    }
    c->in.len = c->in_off = 0;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read); /* may be reading already */
    arm(c, API_LINGER_MS);
}

/* ====================================================================== timeouts */

static void on_timeout(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->closing || !c->deadline)
        return;
    uint64_t now = uv_now(c->a->loop);
    if (now < c->deadline) { /* re-armed later than the timer: sleep again */
        uv_timer_start(&c->timer, on_timeout, c->deadline - now, 0);
        return;
    }
    c->deadline = 0;
    if (c->lingering) { /* the client did not close in time */
        http_close(c);
        return;
    }
    if (c->waiting_min_seq && c->active) { /* a ?min_seq wait ran out */
        struct req *r = c->active;
        c->waiting_min_seq = false;
        http_error(r, 504, "min_seq_timeout", "min_seq", "the state did not reach seq %llu in time",
                   (unsigned long long)r->min_seq);
        return;
    }
    if (c->cur && !c->active) { /* mid-request: headers or body too slow */
        struct req *r = c->cur;
        c->cur = NULL;
        c->active = r;
        r->keep_alive = false;
        http_error(r, 408, "timeout", NULL, "the request was not received in time");
        return;
    }
    if (!c->active)
        http_close(c); /* idle keep-alive connection */
}

/* Timers are lazy: arm only records the deadline, and the libuv timer is
 * (re)started only when it would fire too late; on_timeout re-arms for the
 * rest when it fires early. A keep-alive request used to start or stop the
 * timer four times (heap operations in libuv); now usually none. */
static void arm(struct conn *c, unsigned ms)
{
    c->deadline = uv_now(c->a->loop) + ms;
    if (!uv_is_active((uv_handle_t *)&c->timer) || uv_timer_get_due_in(&c->timer) > ms)
        uv_timer_start(&c->timer, on_timeout, ms, 0);
}

void http_disarm(struct conn *c)
{
    c->deadline = 0;
}

void http_arm(struct conn *c, unsigned ms)
{
    arm(c, ms);
}

/* ====================================================================== parser callbacks */

static struct conn *conn_of(http_parser *p)
{
    return p->data;
}

static int on_message_begin(http_parser *p)
{
    struct conn *c = conn_of(p);
    struct req *r = req_new(c);
    if (!r)
        return -1;
    r->started_ns = mono_ns();
    cairn_buf_init(&r->body, c->a->cfg.body_max);
    c->cur = r;
    c->header_bytes = 0;
    c->hdr_name_len = 0;
    c->hdr_name_done = false;
    arm(c, c->a->cfg.header_timeout_ms);
    return 0;
}

/* 431 for one part over its own limit: a header (its name) or, with
 * NULL, the request target. */
static void too_long(struct conn *c, const char *header, size_t max)
{
    c->parse_error = 431;
    c->over = header ? header : "url";
    c->over_header = header != NULL;
    c->over_max = max;
}

static int limit_headers(struct conn *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->a->cfg.header_max) {
        c->parse_error = 431;
        return -1;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);
    struct req *r = c->cur;
    if (limit_headers(c, n))
        return -1;
    if (r->url_len + n > API_URL_MAX) {
        too_long(c, NULL, API_URL_MAX);
        return -1;
    }
    memcpy(r->url + r->url_len, at, n);
    r->url_len += n;
    r->url[r->url_len] = '\0';
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);
    if (limit_headers(c, n))
        return -1;
    if (c->hdr_name_done) { /* a new header begins */
        c->hdr_name_len = 0;
        c->hdr_name_done = false;
    }
    for (size_t i = 0; i < n && c->hdr_name_len + 1 < sizeof c->hdr_name; i++) {
        char ch = at[i];
        c->hdr_name[c->hdr_name_len++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    c->hdr_name[c->hdr_name_len] = '\0';
    return 0;
}

/* The headers we keep, and where. Each may appear once: a repeated one is
 * refused (400) rather than concatenated — two Authorization or
 * Content-Type values glued together are neither, and two Content-Length
 * values are a request-smuggling classic — except Accept, a list, whose
 * values are joined with ", " (RFC 9110 5.3). */
enum { DUP_REFUSE, DUP_JOIN };
static const struct {
    const char *name;    /* lower case, as on_header_field folds it */
    const char *display; /* for error messages */
    size_t off, cap;     /* cap 0: not stored, only counted */
    int dup;
} slots[] = {
    {"authorization", "Authorization", offsetof(struct req, auth), sizeof((struct req *)0)->auth,
     DUP_REFUSE},
    {"content-type", "Content-Type", offsetof(struct req, content_type),
     sizeof((struct req *)0)->content_type, DUP_REFUSE},
    {"content-length", "Content-Length", 0, 0, DUP_REFUSE},
    {"accept", "Accept", offsetof(struct req, accept), sizeof((struct req *)0)->accept, DUP_JOIN},
    {"last-event-id", "Last-Event-ID", offsetof(struct req, last_event_id),
     sizeof((struct req *)0)->last_event_id, DUP_REFUSE},
    {"stripe-signature", "Stripe-Signature", offsetof(struct req, stripe_sig),
     sizeof((struct req *)0)->stripe_sig, DUP_REFUSE},
    {"expect", "Expect", offsetof(struct req, expect), sizeof((struct req *)0)->expect, DUP_REFUSE},
};

static int header_slot(const char *name)
{
    for (size_t i = 0; i < sizeof slots / sizeof *slots; i++)
        if (!strcmp(name, slots[i].name))
            return (int)i;
    return -1;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);
    struct req *r = c->cur;
    if (limit_headers(c, n))
        return -1;
    bool first = !c->hdr_name_done; /* the value's first chunk (values may come in pieces) */
    c->hdr_name_done = true;
    int i = header_slot(c->hdr_name);
    if (i < 0)
        return 0;
    char *slot = (char *)r + slots[i].off;
    size_t have = slots[i].cap ? strlen(slot) : 0;
    if (first && (r->seen & 1u << i)) {
        if (slots[i].dup == DUP_REFUSE) {
            c->parse_error = 400;
            c->dup_header = slots[i].display;
            return -1;
        }
        if (have + 2 >= slots[i].cap) {
            too_long(c, slots[i].display, slots[i].cap - 1);
            return -1;
        }
        memcpy(slot + have, ", ", 2);
        have += 2;
        slot[have] = '\0';
    }
    r->seen |= 1u << i;
    if (!slots[i].cap)
        return 0;
    if (have + n >= slots[i].cap) {
        too_long(c, slots[i].display, slots[i].cap - 1);
        return -1;
    }
    memcpy(slot + have, at, n);
    slot[have + n] = '\0';
    return 0;
}

/* Batches (NDJSON, msgpack) to /v1/events get the larger body limit. */
static size_t body_limit(const struct api *a, const struct req *r)
{
    bool batch = !strncmp(r->url, "/v1/events", 10) &&
                 (strstr(r->content_type, "ndjson") || strstr(r->content_type, "msgpack"));
    return batch ? a->cfg.batch_max : a->cfg.body_max;
}

static int on_headers_complete(http_parser *p)
{
    struct conn *c = conn_of(p);
    struct req *r = c->cur;
    r->method = p->method;
    r->body.max = body_limit(c->a, r);
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > r->body.max) {
        c->parse_error = 413;
        return -1;
    }
    arm(c, c->a->cfg.body_timeout_ms);
    if (r->expect[0]) { /* answered before the body: see expect() */
        c->at_headers = true;
        http_parser_pause(p, 1);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);
    if (cairn_buf_append(&c->cur->body, at, n)) {
        c->parse_error = 413;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct conn *c = conn_of(p);
    c->cur->keep_alive = http_should_keep_alive(p);
    http_disarm(c);
    http_parser_pause(p, 1); /* one request at a time: see the file comment */
    return 0;
}

/* ====================================================================== parsing loop */

static void parse_failed(struct conn *c)
{
    struct req *r = c->cur;
    int status = c->parse_error ? c->parse_error : 400;
    /* http_parser refuses a second Content-Length itself, before
     * on_header_value sees it: named as any repeated header is. */
    if (r && HTTP_PARSER_ERRNO(&c->parser) == HPE_UNEXPECTED_CONTENT_LENGTH &&
        !strcmp(c->hdr_name, "content-length") && (r->seen & 1u << header_slot("content-length")))
        c->dup_header = "Content-Length";
    /* The parser is stuck in its error state; the connection closes once
     * the error response is written. Until then nothing more is parsed
     * or read (re-running the parser would spin on the same bytes). */
    c->failed = true;
    c->in_off = c->in.len; /* the rest of the stream cannot be framed: drop it */
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->cur = NULL;
    if (!r) { /* failed before a request began */
        r = req_new(c);
        if (!r) {
            http_close(c);
            return;
        }
        cairn_buf_init(&r->body, 0);
    }
    r->keep_alive = false;
    c->active = r;
    if (status == 413)
        http_error(r, 413, "too_large", "body", "the body is over the %zu-byte limit", r->body.max);
    else if (status == 431 && c->over)
        http_error(r, 431, "too_large", c->over, "the %s%s is over its %zu-byte limit",
                   c->over_header ? c->over : "request target", c->over_header ? " header" : "",
                   c->over_max);
    else if (status == 431)
        http_error(r, 431, "too_large", "headers",
                   "the request line and headers are over %zu "
                   "bytes",
                   c->a->cfg.header_max);
    else if (c->dup_header)
        http_error(r, 400, "duplicate_header", c->dup_header, "the %s header may appear only once",
                   c->dup_header);
    else
        http_error(r, 400, "bad_request", NULL, "malformed HTTP request: %s",
                   http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
}

/*
 * Expect (RFC 9110 10.1.1), at the end of the headers of c->cur, the body
 * not read yet. 100-continue: a request that would be refused — no route,
 * wrong method, no or a bad token, a role that does not allow it (the size
 * limit was already checked) — gets its final error at once, and the
 * connection closes (lingering: the client reads the error even if it
 * sends the body anyway); otherwise "100 Continue" is sent (unless the body
 * has started arriving already) and parsing goes on. Any other expectation
 * is 417. Returns true when the parser may go on.
 */
static bool expect(struct conn *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct req *r = c->cur;
    bool is100 = !strcasecmp(r->expect, "100-continue");
    c->cur = NULL;
    c->active = r;         /* an error answer frees it */
    r->keep_alive = false; /* until accepted: the body would follow an error */
    if (!is100) {
        http_error(r, 417, "expectation_failed", "Expect",
                   "only Expect: 100-continue is supported");
        return false;
    }
    if (!routes_precheck(r))
        return false; /* answered with Connection: close: nothing more is parsed */
    c->active = NULL;
    c->cur = r;
    r->keep_alive = true; /* decided again at the end of the message */
    /* Paused in on_headers_complete, the parser stopped on the headers'
     * final LF: more than that buffered means the body is on its way. */
    bool body = (c->parser.flags & F_CHUNKED) ||
                ((c->parser.flags & F_CONTENTLENGTH) && c->parser.content_length > 0);
    if (body && c->in.len - c->in_off <= 1)
        write_buf(c, cont, sizeof cont - 1, NULL, 0, false);
    return true;
}

void http_resume(struct conn *c)
{
    if (c->parsing || c->closing || c->active || c->failed)
        return;
    c->parsing = true;
    if (HTTP_PARSER_ERRNO(&c->parser) == HPE_PAUSED)
        http_parser_pause(&c->parser, 0);
    while (!c->active && !c->closing && !c->failed && c->in_off < c->in.len) {
        size_t n = http_parser_execute(&c->parser, &c->a->settings,
                                       (const char *)c->in.data + c->in_off, c->in.len - c->in_off);
        c->in_off += n;
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (err == HPE_PAUSED && c->at_headers) {
            c->at_headers = false;
            if (expect(c))
                http_parser_pause(&c->parser, 0);
        } else if (err == HPE_PAUSED) {
            struct req *r = c->cur;
            c->cur = NULL;
            c->active = r;
            routes_dispatch(r);
            if (!c->active && !c->closing)
                http_parser_pause(&c->parser, 0);
        } else if (err != HPE_OK) {
            parse_failed(c);
        } else {
            break; /* needs more bytes */
        }
    }
    if (c->in_off == c->in.len) { /* everything consumed: reuse the buffer */
        c->in.len = 0;
        c->in_off = 0;
    }
    if (c->read_stopped && !c->eof && !c->closing && !c->failed &&
        c->in.len - c->in_off <= IN_BUF_MAX / 2) {
        c->read_stopped = false;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    if (!c->active && !c->cur && !c->closing && !c->failed)
        arm(c, c->a->cfg.idle_timeout_ms);
    c->parsing = false;
    close_if_drained(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    if (c->in_off && c->in_off == c->in.len) {
        c->in.len = 0;
        c->in_off = 0;
    }
    if (cairn_buf_reserve(&c->in, READ_CHUNK)) {
        *buf = uv_buf_init(NULL, 0); /* over the limit: on_read sees ENOBUFS */
        return;
    }
    *buf = uv_buf_init((char *)c->in.data + c->in.len, READ_CHUNK);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;
    if (c->lingering) { /* drop what arrives; end at the client's close or a limit */
        c->drained += n > 0 ? (size_t)n : 0;
        if ((n < 0 || c->drained > API_LINGER_BYTES) && !c->closing)
            http_close(c);
        return;
    }
    if (n == UV_EOF && !c->closing && c->sse) {
        http_close(c); /* a subscriber left: free its slot now, not at the next failed write */
        return;
    }
    if (n == UV_EOF && !c->closing) {
        c->eof = true;
        uv_read_stop(s);
        http_resume(c);
        close_if_drained(c);
        return;
    }
    if (n < 0) {
        http_close(c);
        return;
    }
    c->in.len += (size_t)n;
    if (c->in.len - c->in_off > IN_BUF_MAX / 2 && c->active) {
        uv_read_stop(s); /* pipelined far ahead: wait for us to catch up */
        c->read_stopped = true;
    }
    http_resume(c);
}

/* ====================================================================== accepting */

static void on_connection(uv_stream_t *server, int status)
{
    struct api *a = server->data;
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->a = a;
    uv_tcp_init(a->loop, &c->tcp);
    uv_timer_init(a->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    cairn_buf_init(&c->in, IN_BUF_MAX);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
        http_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (a->nconns > a->cfg.max_conns) {
        static const char busy[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Content-Length: 79\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
            "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"connection limit "
            "reached\"}}\n";
        write_buf(c, busy, sizeof busy - 1, NULL, 0, true);
        return;
    }
    arm(c, a->cfg.idle_timeout_ms);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

void http_settings_init(http_parser_settings *s);
void http_settings_init(http_parser_settings *s)
{
    memset(s, 0, sizeof *s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

int http_listen(struct api *a, struct cairn_error *e);
int http_listen(struct api *a, struct cairn_error *e)
{
    struct sockaddr_storage addr;
    int rc = uv_ip4_addr(a->cfg.host, a->cfg.port, (struct sockaddr_in *)&addr);
    if (rc)
        rc = uv_ip6_addr(a->cfg.host, a->cfg.port, (struct sockaddr_in6 *)&addr);
    if (rc)
        return cairn_error_set(e, "config", "listen", "cannot parse listen address %s",
                               a->cfg.host);
    uv_tcp_init(a->loop, &a->listener);
    a->listener.data = a;
    a->handles_open++;
    if ((rc = uv_tcp_bind(&a->listener, (struct sockaddr *)&addr, 0)) ||
        (rc = uv_listen((uv_stream_t *)&a->listener, 511, on_connection)))
        return cairn_error_set(e, "listen", "listen", "cannot listen on %s:%d: %s", a->cfg.host,
                               a->cfg.port, uv_strerror(rc));
    return 0;
}
