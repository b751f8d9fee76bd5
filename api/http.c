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

#include <stdarg.h>
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

static void on_written(uv_write_t *w, int status)
{
    struct wreq *wr = (struct wreq *)w;
    struct conn *c = wr->c;
    c->writes--;
    if ((status || wr->close_after) && !c->closing)
        http_close(c);
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

void http_respond(struct req *r, int status, const char *ctype, const void *body, size_t n,
                  const char *extra)
{
    struct conn *c = r->c;
    char hdr[1024];
    bool keep = r->keep_alive && status != 408 && status != 413 && status != 431;
    int hn = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: %s\r\n%s\r\n",
                      status, reason(status), ctype, n, keep ? "keep-alive" : "close",
                      extra ? extra : "");
    metrics_http(c->a, r->route, status);
    write_buf(c, hdr, (size_t)hn, body, n, !keep);
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
    const char *extra = status == 429   ? "Retry-After: 1\r\n"
                        : status == 401 ? "WWW-Authenticate: Bearer\r\n"
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

/* ====================================================================== timeouts */

static void on_timeout(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->closing)
        return;
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

static void arm(struct conn *c, unsigned ms)
{
    uv_timer_start(&c->timer, on_timeout, ms, 0);
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
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->c = c;
    r->route = -1;
    r->started_ns = mono_ns();
    cairn_buf_init(&r->body, c->a->cfg.body_max);
    c->cur = r;
    c->header_bytes = 0;
    c->hdr_name_len = 0;
    c->hdr_name_done = false;
    arm(c, c->a->cfg.header_timeout_ms);
    return 0;
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
    if (r->url_len + n >= sizeof r->url) {
        c->parse_error = 431;
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

/* The headers we keep, and where. */
static char *header_slot(struct req *r, const char *name, size_t *cap)
{
    static const struct {
        const char *name;
        size_t off, cap;
    } slots[] = {
        {"authorization", offsetof(struct req, auth), sizeof((struct req *)0)->auth},
        {"content-type", offsetof(struct req, content_type), sizeof((struct req *)0)->content_type},
        {"accept", offsetof(struct req, accept), sizeof((struct req *)0)->accept},
        {"last-event-id", offsetof(struct req, last_event_id),
         sizeof((struct req *)0)->last_event_id},
        {"stripe-signature", offsetof(struct req, stripe_sig), sizeof((struct req *)0)->stripe_sig},
    };
    for (size_t i = 0; i < sizeof slots / sizeof *slots; i++)
        if (!strcmp(name, slots[i].name)) {
            *cap = slots[i].cap;
            return (char *)r + slots[i].off;
        }
    return NULL;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct conn *c = conn_of(p);
    if (limit_headers(c, n))
        return -1;
    c->hdr_name_done = true;
    size_t cap;
    char *slot = header_slot(c->cur, c->hdr_name, &cap);
    if (slot) {
        size_t have = strlen(slot);
        if (have + n >= cap) {
            c->parse_error = 431;
            return -1;
        }
        memcpy(slot + have, at, n);
        slot[have + n] = '\0';
    }
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
    uv_timer_stop(&c->timer);
    http_parser_pause(p, 1); /* one request at a time: see the file comment */
    return 0;
}

/* ====================================================================== parsing loop */

static void parse_failed(struct conn *c)
{
    struct req *r = c->cur;
    int status = c->parse_error ? c->parse_error : 400;
    /* The parser is stuck in its error state; the connection closes once
     * the error response is written. Until then nothing more is parsed
     * or read (re-running the parser would spin on the same bytes). */
    c->failed = true;
    c->in_off = c->in.len; /* the rest of the stream cannot be framed: drop it */
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->cur = NULL;
    if (!r) { /* failed before a request began */
        r = calloc(1, sizeof *r);
        if (!r) {
            http_close(c);
            return;
        }
        r->c = c;
        r->route = -1;
        cairn_buf_init(&r->body, 0);
    }
    r->keep_alive = false;
    c->active = r;
    if (status == 413)
        http_error(r, 413, "too_large", "body", "the body is over the %zu-byte limit", r->body.max);
    else if (status == 431)
        http_error(r, 431, "too_large", "headers",
                   "the request line and headers are over %zu "
                   "bytes",
                   c->a->cfg.header_max);
    else
        http_error(r, 400, "bad_request", NULL, "malformed HTTP request: %s",
                   http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

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
        if (err == HPE_PAUSED) {
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
