/*
 * api_int.h — shared between the files of api/ only.
 */
#ifndef CAIRN_API_INT_H
#define CAIRN_API_INT_H

#include "api.h"

#include <http_parser.h>
#include <pthread.h>
#include <stdatomic.h>

/* The request target's limit, in bytes (431 beyond). The Authorization
 * header holds "Bearer " and a token of API_JWT_MAX bytes; each other
 * header Cairn reads is limited by its buffer in struct req (one byte
 * less than its size: 431 beyond, naming the header). */
#define API_URL_MAX 8192
#define API_AUTH_VALUE_MAX (sizeof "Bearer " - 1 + API_JWT_MAX)
#define API_ROUTE_NAMES_MAX 32
#define API_METRIC_TYPES_MAX 64

struct conn;

/* One parsed request and, once handled, its response. The fixed-size text
 * buffers (~40 KB) come last: a new request zeroes only the fields before
 * `url` and the first byte of each buffer (req_new), not the whole struct. */
struct req {
    struct conn *c;
    enum http_method method;
    size_t url_len;
    unsigned seen;   /* bit i: header slot i (http.c) already received */
    bool prechecked; /* routed and authorized before the body (Expect: 100-continue) */
    struct cairn_buf body;
    bool keep_alive;
    int64_t started_ns; /* monotonic, for latency */
    /* After routing. */
    int route;            /* index for metrics, -1: none */
    struct api_token tok; /* the caller (auth) */
    bool any_tenant;      /* --insecure-no-auth without ?tenant=: every tenant */
    uint64_t min_seq;     /* waiting for the state to apply this */
    /* Ingest in flight. */
    struct log_req lreq;
    struct ingest_event *evs;
    struct log_input *ins;
    struct log_result *res;
    struct cairn_error *errs; /* per line, code NULL when parsed */
    size_t nlines, nev;
    size_t *lineno; /* NDJSON: the body line of each result */
    bool batch;
    bool in_writer;        /* queued to the writer: owned by it until done */
    struct api *api;       /* set before the writer sees the request */
    struct req *next_done; /* writer -> loop completion list */
    /* Text buffers, NUL-terminated; not zeroed beyond their first byte. */
    char url[API_URL_MAX + 1];
    char path[API_URL_MAX + 1];  /* percent-decoded path */
    char query[API_URL_MAX + 1]; /* raw query string (without '?') */
    char auth[API_AUTH_VALUE_MAX + 1];
    char content_type[256];
    char accept[256];
    char last_event_id[32];
    char stripe_sig[1024];
    char expect[64];
};

struct sse;

struct conn {
    uv_tcp_t tcp; /* first: handle -> conn */
    uv_timer_t timer;
    uint64_t deadline; /* loop time (ms) the timer acts at; 0: none (see arm in http.c) */
    struct api *a;
    http_parser parser;
    struct cairn_buf in;
    size_t in_off;
    struct req *cur;    /* being parsed */
    struct req *active; /* dispatched, response not yet written */
    char hdr_name[64];  /* current header name (lower case, truncated) */
    size_t hdr_name_len;
    bool hdr_name_done;
    size_t header_bytes;
    bool parsing, closing, waiting_min_seq;
    bool eof;          /* the client half-closed: answer what was received, then close */
    bool read_stopped; /* pipelined too far ahead: reading paused */
    bool failed;       /* a parse error or a "close" was answered: parse and read nothing more */
    bool at_headers;   /* the parser paused at the end of headers (Expect: 100-continue) */
    bool lingering;    /* the last response is written: write side shut, draining input */
    size_t drained;    /* bytes read and dropped while lingering */
    const char *dup_header; /* a single-valued header received twice (400) */
    const char *over;       /* 431: the header or "url" over its own limit (NULL: the total) */
    bool over_header;
    size_t over_max; /* that limit, in bytes */
    uv_shutdown_t shutdown;
    int writes;      /* writes not yet completed */
    int parse_error; /* status to answer on a parser error (400, 413, 431) */
    struct sse *sse;
    int handles_open;
    struct conn *prev, *next;
};

struct api {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_async_t done_async, applied_async;
    uv_timer_t heartbeat;
    struct engine *eng;
    struct api_config cfg;
    struct api_jwt *jwt; /* NULL with insecure_no_auth */
    http_parser_settings settings;
    struct conn *conns;
    unsigned nconns;
    struct sse *subs;
    unsigned nsubs;
    uint64_t sse_round; /* sse_wake_all's pass counter */
    pthread_mutex_t done_mu;
    struct req *done; /* requests whose commit returned (LIFO) */
    _Atomic uint64_t applied;
    bool closing;
    bool write_failing;      /* the last ingest write failed (said once on stderr) */
    uint64_t write_failures; /* ingest requests whose write failed */
    int handles_open;
    /* Metrics (loop thread only). */
    uint64_t http_counts[API_ROUTE_NAMES_MAX][6]; /* by route, by status class 1xx..5xx */
    uint64_t ingested[API_METRIC_TYPES_MAX];
    char ingested_type[API_METRIC_TYPES_MAX][CAIRN_TYPE_MAX + 1];
    uint64_t ingest_latency[API_METRIC_TYPES_MAX][12]; /* histogram buckets */
    double ingest_latency_sum[API_METRIC_TYPES_MAX];
    uint64_t rejected[32];
    char rejected_code[32][32];
};

/* api.c */
void api_maybe_free(struct api *a);

/* http.c */
void http_respond(struct req *r, int status, const char *ctype, const void *body, size_t n,
                  const char *extra_headers);
void http_respond_json(struct req *r, int status, const struct cairn_buf *body);
/* {"error":{"code","message","field"?}} with the status. */
void http_error(struct req *r, int status, const char *code, const char *field, const char *fmt,
                ...) __attribute__((format(printf, 5, 6)));
void http_error_from(struct req *r, int status, const struct cairn_error *e);
/* The request's response is complete (used by async paths). */
void http_resume(struct conn *c);
/* Starts the connection's timer (used for ?min_seq waits). */
void http_arm(struct conn *c, unsigned ms);
/* Cancels the connection's deadline. */
void http_disarm(struct conn *c);
/* Writes raw bytes on the connection (SSE); _final closes it after. */
int http_write_raw(struct conn *c, const void *p, size_t n);
int http_write_final(struct conn *c, const void *p, size_t n);
void http_close(struct conn *c);
/* A new request for c (fields zeroed, buffers empty); NULL without memory. */
struct req *req_new(struct conn *c);
void req_free(struct req *r);

/* routes.c */
/* Splits the route patterns (once per process; api_open calls it). */
void routes_init(void);
void routes_dispatch(struct req *r);
/* Expect: 100-continue: routes and authorizes r (headers only) before its
 * body is read. true: it would be accepted so far (r->prechecked, the
 * dispatch will not authorize again); false: the error is answered (r is
 * gone). */
bool routes_precheck(struct req *r);
/* Re-runs a request parked on ?min_seq once the state caught up. */
void routes_retry(struct req *r);
/* Query parameter (percent-decoded) into out; false if absent or refused
 * (too long, a bad escape, a NUL): out is then "". */
bool query_get(const struct req *r, const char *name, char *out, size_t cap);
/* The same, but a refused value is answered 400 invalid_parameter naming
 * the parameter: 1 present, 0 absent (out ""), -1 refused (answered). */
int query_param(struct req *r, const char *name, char *out, size_t cap);
const char *routes_name(int route);
size_t routes_count(void);

/* ingest.c (api) */
void api_post_events(struct req *r);
void api_post_stripe(struct req *r, const char *tenant);
/* Appends one input object (borrowed) as POST /v1/events would. */
void api_post_object(struct req *r, json_t *obj);
void api_ingest_done(struct req *r);

/* sse.c */
void sse_start(struct req *r, const char *stream, uint64_t from);
void sse_wake_all(struct api *a);
void sse_heartbeat(struct api *a);
void sse_drop(struct conn *c);

/* metrics.c */
void metrics_render(struct api *a, struct cairn_buf *out);
void metrics_http(struct api *a, int route, int status);
void metrics_ingested(struct api *a, const struct cairn_str *type, int64_t latency_ns);
void metrics_rejected(struct api *a, const char *code);

#endif
