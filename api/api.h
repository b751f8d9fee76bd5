/*
 * api.h — the HTTP/1.1 API on the libuv loop (main thread).
 *
 * Threads: every connection lives on the loop. Reads use read-only LMDB
 * snapshots (never blocking the writer). Writes are queued to the writer
 * thread and answered from the loop once their durable commit returned
 * (the writer signals the loop with uv_async_send). After each state
 * commit the engine calls api_notify_applied (any thread), which wakes SSE
 * subscribers and requests waiting for ?min_seq.
 *
 * Requests are parsed with http_parser (libhttp-parser-dev): keep-alive,
 * pipelining (answered in order: the parser pauses after each request until
 * its response is written), chunked bodies.
 */
#ifndef CAIRN_API_H
#define CAIRN_API_H

#include "engine.h"

#include <uv.h>

/* Defaults of the limits (README "Limits"); each is configurable. */
#define API_HEADER_MAX_DEFAULT (16u << 10)  /* request line + headers */
#define API_BODY_MAX_DEFAULT (1u << 20)     /* one JSON event, webhooks */
#define API_BATCH_MAX_DEFAULT (16u << 20)   /* NDJSON / msgpack batches */
#define API_BATCH_EVENTS_MAX 65536          /* events in one batch request */
#define API_HEADER_TIMEOUT_MS_DEFAULT 10000 /* first byte to end of headers */
#define API_BODY_TIMEOUT_MS_DEFAULT 30000   /* end of headers to end of body */
#define API_IDLE_TIMEOUT_MS_DEFAULT 60000   /* keep-alive between requests */
#define API_MAX_CONNS_DEFAULT 1024
#define API_MAX_SSE_DEFAULT 256
#define API_SSE_BUFFER_MAX (4u << 20) /* unsent bytes before "overflow" */
#define API_SSE_HEARTBEAT_MS 15000
#define API_MIN_SEQ_WAIT_MS_DEFAULT 5000
#define API_MIN_SEQ_WAIT_MS_MAX 60000
#define API_LINGER_MS 2000           /* draining input after a closing error response */
#define API_LINGER_BYTES (64u << 20) /* ... and at most this much of it */
#define API_PAGE_DEFAULT 100
#define API_PAGE_MAX 1000
#define API_PIPELINE_MAX 64 /* parsed requests queued per connection */
#define API_STRIPE_TOLERANCE_S 300
#define API_STRIPE_SECRETS_MAX 8 /* per tenant, for rotation */
#define API_JWT_SECRET_MIN 32    /* bytes: HS256 wants >= 256 bits */

struct api_stripe_secret {
    char tenant[CAIRN_TENANT_MAX + 1];
    char *secrets[API_STRIPE_SECRETS_MAX]; /* owned */
    size_t n;
};

struct api_config {
    char host[64];
    int port;
    uint8_t *jwt_secret; /* owned; NULL only with insecure_no_auth */
    size_t jwt_secret_len;
    bool insecure_no_auth;
    struct api_stripe_secret *stripe; /* owned array */
    size_t nstripe;
    size_t header_max, body_max, batch_max;
    unsigned header_timeout_ms, body_timeout_ms, idle_timeout_ms;
    unsigned max_conns, max_sse;
    unsigned min_seq_wait_ms;
    int64_t stripe_tolerance_s;
    int64_t (*now_ns)(void); /* clock for JWT/Stripe checks; NULL: wall clock */
};

/* Fills the defaults. */
void api_config_init(struct api_config *cfg);
void api_config_deinit(struct api_config *cfg);
/* Reads a secret file (trailing newline stripped) into *out (owned). */
int api_read_secret(const char *path, char **out, size_t *n, struct cairn_error *e);
/* Adds a Stripe endpoint secret for a tenant ("TENANT=FILE"). */
int api_config_add_stripe(struct api_config *cfg, const char *spec, struct cairn_error *e);

struct api;

/* Binds and listens on the loop. The engine must be started; the API
 * borrows it until api_close. */
int api_open(struct api **out, uv_loop_t *loop, struct engine *eng, const struct api_config *cfg,
             struct cairn_error *e);
/* Stops listening and closes every connection; the loop must then run
 * until the handles are closed. Frees a when the last one is. */
void api_close(struct api *a);
/* Any thread: the state applied up to checkpoint. */
void api_notify_applied(void *a, uint64_t checkpoint);

/* ====================================================================== tokens */

enum api_role {
    API_ROLE_INGEST = 1,
    API_ROLE_READ = 2,
    API_ROLE_AUDIT = 4,
    API_ROLE_ADMIN = 8,
    API_ROLE_METRICS = 16, /* GET /metrics and /readyz's figures: the whole server's totals */
};

struct api_token {
    char tenant[CAIRN_TENANT_MAX + 1];
    unsigned roles; /* API_ROLE_* bits */
    int64_t exp;    /* seconds */
};

/* Verifies a compact JWS (HS256 only: the algorithm is pinned, "none" and
 * everything else refused), its signature (constant time), exp and nbf
 * (now in seconds), and reads tenant and roles. 0 or CAIRN_EINVAL with e. */
int api_jwt_verify(const uint8_t *secret, size_t slen, const char *jwt, size_t n, int64_t now,
                   struct api_token *tok, struct cairn_error *e);
/* The longest token accepted, in bytes (the Authorization header holds
 * "Bearer " and one such token). */
#define API_JWT_MAX 8192
/* A verifier: one keyed HMAC context and a bounded cache of verified
 * tokens (loop thread only; see auth.c). The cache holds at most
 * API_JWT_CACHE_SETS x API_JWT_CACHE_WAYS tokens of at most
 * API_JWT_CACHE_TOKEN_MAX bytes (longer ones are verified every time); a
 * full set evicts its least recently used token. 1 024 tokens: more
 * distinct live tokens than that in constant use only means more full
 * verifications, never a wrong answer. */
#define API_JWT_CACHE_SETS 256
#define API_JWT_CACHE_WAYS 4
#define API_JWT_CACHE_TOKEN_MAX 512
struct api_jwt;
int api_jwt_new(const uint8_t *secret, size_t slen, struct api_jwt **out);
void api_jwt_free(struct api_jwt *j);
/* As api_jwt_verify, with the secret given to api_jwt_new; a token verified
 * before answers from the cache (exp and nbf checked again against now). */
int api_jwt_check(struct api_jwt *j, const char *jwt, size_t n, int64_t now, struct api_token *tok,
                  struct cairn_error *e);
/* Cache hits and misses so far (metrics). */
void api_jwt_stats(const struct api_jwt *j, uint64_t *hits, uint64_t *misses);
/* Mints a token into out. roles: comma-separated names. */
int api_jwt_mint(const uint8_t *secret, size_t slen, const char *tenant, const char *roles,
                 int64_t now, int64_t ttl_s, struct cairn_buf *out, struct cairn_error *e);

/* Verifies a Stripe-Signature header ("t=…,v1=…,v1=…") over the raw body
 * against each secret: HMAC-SHA256 of "{t}.{body}", constant-time, and
 * |now - t| <= tolerance. 0 or CAIRN_EINVAL with e. */
int api_stripe_verify(char *const *secrets, size_t nsecrets, const char *header,
                      const uint8_t *body, size_t n, int64_t now_s, int64_t tolerance_s,
                      struct cairn_error *e);

#endif
