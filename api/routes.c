/*
 * routes.c — routing, authentication and the read endpoints.
 *
 * Every route names the roles that may call it; a token sees only its own
 * tenant in every list, entity, stream and log read. `admin` may act on
 * another tenant with ?tenant=. Views are generic: any handler with a view
 * gets GET /v1/<handler> and /v1/<handler>/{key} with filters on the
 * documents' top-level fields, so adding a view's routes is adding the
 * handler.
 */
#include "api_int.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Entries a list request may look at before it answers with a cursor:
 * a filter that matches nothing cannot make one request scan forever. */
#define SCAN_MAX 10000
#define SEGS_MAX 8

typedef void (*route_fn)(struct req *r, char **args);

struct route {
    enum http_method method;
    const char *pattern; /* "{}" matches one segment */
    unsigned roles;      /* 0: public; else any of these (admin always) */
    route_fn fn;
    const char *name; /* metrics label */
};

static void get_healthz(struct req *r, char **args);
static void json_reply(struct req *r, int status, struct cairn_buf *b);
static bool wait_min_seq(struct req *r, bool *answered);
static void handler_route(struct req *r, const struct handler *h, const struct handler_route *hr,
                          char **args);
static void get_readyz(struct req *r, char **args);
static void get_metrics(struct req *r, char **args);
static void post_events(struct req *r, char **args);
static void post_stripe(struct req *r, char **args);
static void get_schemas(struct req *r, char **args);
static void get_schema(struct req *r, char **args);
static void get_streams(struct req *r, char **args);
static void get_stream(struct req *r, char **args);
static void get_log(struct req *r, char **args);
static void get_log_head(struct req *r, char **args);
static void get_log_verify(struct req *r, char **args);
static void get_view_list(struct req *r, char **args);
static void get_view_item(struct req *r, char **args);

static const struct route routes[] = {
    {HTTP_GET, "/healthz", 0, get_healthz, "healthz"},
    {HTTP_GET, "/readyz", 0, get_readyz, "readyz"},
    /* Server-wide totals (every tenant's events, rejections, requests):
     * an operator's, never a tenant's to read. */
    {HTTP_GET, "/metrics", API_ROLE_METRICS, get_metrics, "metrics"},
    {HTTP_POST, "/v1/events", API_ROLE_INGEST, post_events, "events"},
    {HTTP_POST, "/v1/webhooks/stripe/{}", 0, post_stripe, "stripe"},
    {HTTP_GET, "/v1/schemas", API_ROLE_READ | API_ROLE_INGEST | API_ROLE_AUDIT, get_schemas,
     "schemas"},
    {HTTP_GET, "/v1/schemas/{}", API_ROLE_READ | API_ROLE_INGEST | API_ROLE_AUDIT, get_schema,
     "schema"},
    {HTTP_GET, "/v1/streams", API_ROLE_READ, get_streams, "streams"},
    {HTTP_GET, "/v1/streams/{}", API_ROLE_READ, get_stream, "stream"},
    {HTTP_GET, "/v1/log", API_ROLE_AUDIT, get_log, "log"},
    {HTTP_GET, "/v1/log/head", API_ROLE_AUDIT, get_log_head, "log_head"},
    {HTTP_GET, "/v1/log/verify", API_ROLE_AUDIT, get_log_verify, "log_verify"},
    /* Then each handler's own routes (handler.h), then the views: "{view}"
     * must name a handler with a view (see match). */
    {HTTP_GET, "*handler", API_ROLE_READ, NULL, "handler_get"},
    {HTTP_POST, "*handler", API_ROLE_INGEST, NULL, "handler_post"},
    {HTTP_GET, "/v1/{view}", API_ROLE_READ, get_view_list, "view_list"},
    {HTTP_GET, "/v1/{view}/{}", API_ROLE_READ, get_view_item, "view_item"},
};

#define NROUTES (sizeof routes / sizeof *routes)

const char *routes_name(int route)
{
    return route >= 0 && (size_t)route < NROUTES ? routes[route].name : "none";
}

size_t routes_count(void)
{
    return NROUTES;
}

/* ====================================================================== URLs */

/* Percent-decodes s[0..n) into out (NUL-terminated); false on bad escapes,
 * NUL bytes or overflow. '+' is a space only in queries. */
static bool pct_decode(const char *s, size_t n, char *out, size_t cap, bool plus)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                goto bad;
            int hi = cairn_hex_digit(s[i + 1]), lo = cairn_hex_digit(s[i + 2]);
            if (hi < 0 || lo < 0)
                goto bad;
            ch = (char)(hi << 4 | lo);
            i += 2;
        } else if (ch == '+' && plus) {
            ch = ' ';
        }
        if (ch == '\0' || o + 1 >= cap)
            goto bad;
        out[o++] = ch;
    }
    out[o] = '\0';
    return true;
bad:
    /* out is a C string either way: callers strlen it even when the
     * parameter was refused (the fuzzer found a 512-byte tenant overflow) */
    if (cap)
        out[0] = '\0';
    return false;
}

/* The first parameter `name` of the query: its raw value in *v, *vn. */
static bool query_find(const struct req *r, const char *name, const char **v, size_t *vn)
{
    size_t nl = strlen(name);
    for (const char *p = r->query; *p;) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        size_t kn = eq ? (size_t)(eq - p) : n;
        if (kn == nl && !memcmp(p, name, nl)) {
            *v = eq ? eq + 1 : p + n;
            *vn = eq ? n - kn - 1 : 0;
            return true;
        }
        p += n + (p[n] == '&');
    }
    return false;
}

bool query_get(const struct req *r, const char *name, char *out, size_t cap)
{
    const char *v;
    size_t vn;
    if (query_find(r, name, &v, &vn))
        return pct_decode(v, vn, out, cap, true);
    if (cap)
        out[0] = '\0';
    return false;
}

/* query_param without the answer: 1 present, 0 absent, -1 refused. */
static int query_param_quiet(struct req *r, const char *name, char *out, size_t cap)
{
    const char *v;
    size_t vn;
    if (!query_find(r, name, &v, &vn)) {
        if (cap)
            out[0] = '\0';
        return 0;
    }
    return pct_decode(v, vn, out, cap, true) ? 1 : -1;
}

int query_param(struct req *r, const char *name, char *out, size_t cap)
{
    int got = query_param_quiet(r, name, out, cap);
    if (got >= 0)
        return got;
    http_error(r, 400, "invalid_parameter", name,
               "%s must be at most %zu bytes, percent-encoded, without NUL", name, cap - 1);
    return -1;
}

static bool query_u64(struct req *r, const char *name, uint64_t *out, uint64_t max)
{
    char v[32], *end;
    const char *raw;
    size_t rn;
    if (!query_find(r, name, &raw, &rn))
        return true;
    bool ok = pct_decode(raw, rn, v, sizeof v, true);
    unsigned long long x = ok ? strtoull(v, &end, 10) : 0;
    if (!ok || !v[0] || *end || v[0] == '-' || x > max) {
        http_error(r, 400, "invalid_parameter", name, "%s must be an integer in 0..%llu", name,
                   (unsigned long long)max);
        return false;
    }
    *out = x;
    return true;
}

/* Splits the raw path into percent-decoded segments (stored in r->path)
 * and their lengths. */
static int split_path(struct req *r, char **segs, size_t *lens)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(r->url, r->url_len, 0, &u) || !(u.field_set & (1 << UF_PATH)))
        return -1;
    const char *path = r->url + u.field_data[UF_PATH].off;
    size_t pn = u.field_data[UF_PATH].len;
    r->query[0] = '\0';
    if (u.field_set & (1 << UF_QUERY)) {
        memcpy(r->query, r->url + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
        r->query[u.field_data[UF_QUERY].len] = '\0';
    }
    int n = 0;
    char *o = r->path;
    size_t left = sizeof r->path;
    for (size_t i = 1; i <= pn && n < SEGS_MAX;) { /* skip the leading '/' */
        size_t len = 0;
        while (i + len < pn && path[i + len] != '/')
            len++;
        if (len == 0 && i + len >= pn)
            break;
        if (!pct_decode(path + i, len, o, left, false))
            return -1;
        lens[n] = strlen(o);
        segs[n++] = o;
        size_t used = lens[n - 1] + 1;
        o += used;
        left -= used;
        i += len + 1;
    }
    return n;
}

/* ====================================================================== routing */

static const struct handler *view_handler(const char *name)
{
    for (const struct handler *const *h = handler_table; *h; h++)
        if ((*h)->view && !strcmp((*h)->name, name))
            return *h;
    return NULL;
}

/*
 * Patterns are split into segments once (routes_init, at api_open): a
 * request is matched by comparing its decoded segments with these, with
 * no copy of a pattern and no snprintf (both were ~13 % of a GET when
 * every pattern was copied and split on every request).
 */
enum seg_kind { SEG_LIT, SEG_ANY, SEG_VIEW };

struct cseg {
    enum seg_kind kind;
    const char *lit; /* SEG_LIT: points into the pattern */
    size_t n;
};

struct cpat {
    int n; /* segments; -1: the pattern does not fit SEGS_MAX (never matches) */
    struct cseg seg[SEGS_MAX];
};

#define HROUTES_MAX 256 /* handler routes over all handlers */

static struct cpat route_pat[NROUTES];
static struct {
    const struct handler *h;
    const struct handler_route *rt;
    struct cpat pat; /* "v1" then the route's path */
} hroute[HROUTES_MAX];
static size_t nhroutes;
static bool compiled;

/* Appends the '/'-separated segments of p to pat. */
static void compile(const char *p, struct cpat *pat)
{
    while (*p == '/')
        p++;
    while (*p && pat->n >= 0) {
        size_t n = strcspn(p, "/");
        if (pat->n == SEGS_MAX) {
            pat->n = -1;
            return;
        }
        struct cseg *sg = &pat->seg[pat->n++];
        sg->kind = n == 2 && !memcmp(p, "{}", 2)       ? SEG_ANY
                   : n == 6 && !memcmp(p, "{view}", 6) ? SEG_VIEW
                                                       : SEG_LIT;
        sg->lit = p;
        sg->n = n;
        p += n + (p[n] == '/');
    }
}

void routes_init(void)
{
    if (compiled) /* the tables are static: every api shares them */
        return;
    for (size_t i = 0; i < NROUTES; i++)
        if (routes[i].pattern[0] != '*')
            compile(routes[i].pattern, &route_pat[i]);
    for (const struct handler *const *h = handler_table; *h; h++)
        for (const struct handler_route *rt = (*h)->routes; rt && rt->path; rt++) {
            assert(nhroutes < HROUTES_MAX);
            hroute[nhroutes].h = *h;
            hroute[nhroutes].rt = rt;
            compile("v1", &hroute[nhroutes].pat);
            compile(rt->path, &hroute[nhroutes].pat);
            nhroutes++;
        }
    compiled = true;
}

static bool match_pat(const struct cpat *pat, char **segs, const size_t *lens, int n, char **args)
{
    if (pat->n != n)
        return false;
    int na = 0;
    for (int k = 0; k < n; k++) {
        const struct cseg *sg = &pat->seg[k];
        if (sg->kind == SEG_LIT) {
            if (sg->n != lens[k] || memcmp(sg->lit, segs[k], lens[k]))
                return false;
        } else {
            if (sg->kind == SEG_VIEW && !view_handler(segs[k]))
                return false;
            args[na++] = segs[k];
        }
    }
    return true;
}

/* The handler route whose path matches "/v1/" + segs[1..], or -1. */
static int match_handler(char **segs, const size_t *lens, int n, char **args)
{
    for (size_t i = 0; i < nhroutes; i++)
        if (match_pat(&hroute[i].pat, segs, lens, n, args))
            return (int)i;
    return -1;
}

static int64_t now_s(const struct api *a)
{
    return (a->cfg.now_ns ? a->cfg.now_ns() : cairn_now_ns()) / 1000000000LL;
}

/* Authenticates and scopes the request; answers the error itself. */
static bool authorize(struct req *r, const struct route *rt)
{
    struct api *a = r->c->a;
    char tenant[CAIRN_TENANT_MAX + 1]; /* not "= {0}": query_get terminates it */
    const char *tv;
    size_t tvn;
    bool has_tenant = query_find(r, "tenant", &tv, &tvn);
    /* A tenant that does not decode (too long, a bad escape, a NUL) is
     * refused, never taken as absent: that would widen the request to the
     * token's tenant, or to every tenant for an admin. */
    bool tenant_ok = query_get(r, "tenant", tenant, sizeof tenant);
    if (has_tenant && (!tenant_ok || !tenant[0])) {
        http_error(r, 400, "invalid_parameter", "tenant",
                   "tenant must be 1..%d bytes, percent-encoded", CAIRN_TENANT_MAX);
        return false;
    }
    size_t tn = strlen(tenant);
    if (a->cfg.insecure_no_auth) {
        r->tok.roles = API_ROLE_ADMIN | API_ROLE_READ | API_ROLE_INGEST | API_ROLE_AUDIT;
        memcpy(r->tok.tenant, tenant, tn + 1);
        r->any_tenant = !has_tenant;
        return true;
    }
    struct cairn_error e;
    if (strncasecmp(r->auth, "Bearer ", 7)) {
        http_error(r, 401, "unauthorized", "Authorization", "a bearer token is required");
        return false;
    }
    if (api_jwt_check(a->jwt, r->auth + 7, strlen(r->auth + 7), now_s(a), &r->tok, &e)) {
        http_error_from(r, 401, &e);
        return false;
    }
    bool admin = r->tok.roles & API_ROLE_ADMIN;
    if (!admin && !(r->tok.roles & rt->roles)) {
        http_error(r, 403, "forbidden", "Authorization", "this token's roles do not allow %s",
                   rt->name);
        return false;
    }
    if (has_tenant && strcmp(tenant, r->tok.tenant)) {
        if (!admin) {
            http_error(r, 403, "forbidden", "tenant", "this token may only act on tenant %s",
                       r->tok.tenant);
            return false;
        }
        memcpy(r->tok.tenant, tenant, tn + 1);
    }
    return true;
}

/* The route of a request: routes[i], and for "*handler" the handler route
 * hroute[hi]; args are the "{}" segments (pointing into r->path). */
struct routed {
    size_t i;
    int hi;
    char *args[4];
};

/* Finds r's route; false when there is none (404, 405, 400 answered). */
static bool route_find(struct req *r, struct routed *out)
{
    char *segs[SEGS_MAX], *args[4] = {0};
    size_t lens[SEGS_MAX];
    int n = split_path(r, segs, lens);
    if (n < 0) {
        http_error(r, 400, "bad_request", "path", "the request path cannot be decoded");
        return false;
    }
    bool path_known = false;
    int hi = -2; /* the handler route matched: -2 not looked up yet, -1 none */
    for (size_t i = 0; i < NROUTES; i++) {
        if (routes[i].pattern[0] == '*') {
            if (hi == -2)
                hi = match_handler(segs, lens, n, out->args);
            if (hi < 0)
                continue;
            const struct handler_route *hr = hroute[hi].rt;
            path_known = true;
            if (routes[i].method != r->method ||
                !(r->method == HTTP_GET ? (void *)hr->get : (void *)hr->post))
                continue;
            out->i = i;
            out->hi = hi;
            return true;
        }
        if (!match_pat(&route_pat[i], segs, lens, n, args))
            continue;
        path_known = true;
        if (routes[i].method != r->method)
            continue;
        out->i = i;
        out->hi = -1;
        memcpy(out->args, args, sizeof args);
        return true;
    }
    if (path_known)
        http_error(r, 405, "method_not_allowed", NULL, "%s is not allowed on this path",
                   http_method_str(r->method));
    else
        http_error(r, 404, "not_found", NULL, "no route for this path");
    return false;
}

/* Authorizes r for its route unless that was done (retry, precheck). */
static bool route_auth(struct req *r, const struct routed *rt, bool retry)
{
    r->route = (int)rt->i;
    if (retry || r->prechecked)
        return true;
    return (rt->hi < 0 && !routes[rt->i].roles) || authorize(r, &routes[rt->i]);
}

static void dispatch(struct req *r, bool retry)
{
    struct routed rt;
    if (!route_find(r, &rt) || !route_auth(r, &rt, retry))
        return;
    if (rt.hi >= 0)
        handler_route(r, hroute[rt.hi].h, hroute[rt.hi].rt, rt.args);
    else
        routes[rt.i].fn(r, rt.args);
}

bool routes_precheck(struct req *r)
{
    struct routed rt;
    if (!route_find(r, &rt) || !route_auth(r, &rt, false))
        return false;
    r->prechecked = true;
    return true;
}

/* A handler route's query parameters. A value that does not decode into
 * the handler's buffer (too long, a bad escape, a NUL) is remembered, and
 * the route answers 400 naming it whatever the handler made of the
 * request: taking it as absent would widen the query (a dropped `fence`
 * filter returns every fence's hits). */
struct route_params {
    struct req *r;
    char refused[64];
};

static bool param_cb(void *arg, const char *name, char *out, size_t cap)
{
    struct route_params *rp = arg;
    int got = query_param_quiet(rp->r, name, out, cap);
    if (got < 0 && !rp->refused[0])
        snprintf(rp->refused, sizeof rp->refused, "%s", name);
    return got > 0;
}

/* Answers 400 for the first refused parameter; true when it did. */
static bool params_refused(struct req *r, const struct route_params *rp)
{
    if (!rp->refused[0])
        return false;
    /* No byte count: a handler sizes its buffer one or two past its own
     * limit (to tell "too long" apart), which the README gives per route. */
    http_error(r, 400, "invalid_parameter", rp->refused,
               "%s is too long for this route, or has a bad %%-escape or a NUL", rp->refused);
    return true;
}

/* GET: the handler answers from a snapshot. POST: the handler turns the
 * body into one input event, appended like POST /v1/events. */
static void handler_route(struct req *r, const struct handler *h, const struct handler_route *hr,
                          char **args)
{
    struct route_params rp = {.r = r};
    struct hread rd = {
        .h = h, .tenant = r->any_tenant ? NULL : r->tok.tenant, .param = param_cb, .arg = &rp};
    struct cairn_error e;
    bool answered;
    if (r->method == HTTP_GET && (wait_min_seq(r, &answered) || answered))
        return;
    if (proj_snap_begin(engine_proj(r->c->a->eng), &rd.snap)) {
        http_error(r, 503, "unavailable", NULL, "cannot read the state");
        return;
    }
    cairn_error_clear(&e);
    if (r->method == HTTP_GET) {
        struct cairn_buf b;
        cairn_buf_init(&b, 64u << 20);
        int status = hr->get(&rd, args, &b, &e);
        proj_snap_end(rd.snap);
        if (params_refused(r, &rp))
            ;
        else if (status >= 400)
            http_error_from(r, status, &e);
        else
            json_reply(r, status, &b);
        cairn_buf_deinit(&b);
        return;
    }
    json_error_t je;
    json_t *body = r->body.len ? json_loadb((const char *)r->body.data, r->body.len,
                                            JSON_REJECT_DUPLICATES, &je)
                               : json_object();
    json_t *event = NULL;
    int status = 400;
    if (body)
        status = hr->post(&rd, args, body, &event, &e);
    else
        cairn_error_set(&e, "invalid_json", "", "the body is not JSON: %s", je.text);
    proj_snap_end(rd.snap);
    json_decref(body);
    if (params_refused(r, &rp))
        ;
    else if (status)
        http_error_from(r, status >= 400 ? status : 400, &e);
    else
        api_post_object(r, event);
    json_decref(event);
}

void routes_dispatch(struct req *r)
{
    dispatch(r, false);
}

void routes_retry(struct req *r)
{
    dispatch(r, true);
}

/* Parks the request until the state applied ?min_seq; false when it has
 * (go on) or the parameter is bad (answered). */
static bool wait_min_seq(struct req *r, bool *answered)
{
    struct api *a = r->c->a;
    uint64_t min = 0;
    *answered = false;
    if (!query_u64(r, "min_seq", &min, UINT64_MAX)) {
        *answered = true;
        return false;
    }
    if (min <= (uint64_t)a->applied)
        return false;
    uint64_t ms = a->cfg.min_seq_wait_ms;
    if (!query_u64(r, "wait_ms", &ms, API_MIN_SEQ_WAIT_MS_MAX)) {
        *answered = true; /* answered 400: r is gone */
        return false;
    }
    r->min_seq = min;
    r->c->waiting_min_seq = true;
    http_arm(r->c, (unsigned)ms);
    return true;
}

/* ====================================================================== health, metrics, schemas
 */

static void json_reply(struct req *r, int status, struct cairn_buf *b)
{
    cairn_buf_putc(b, '\n');
    http_respond_json(r, status, b);
    cairn_buf_deinit(b);
}

static void get_healthz(struct req *r, char **args)
{
    static const char ok[] = "{\"status\":\"ok\"}\n";
    (void)args;
    http_respond(r, 200, "application/json", ok, sizeof ok - 1, NULL);
}

/* The roles of the caller of a public route: its token's when it has a
 * valid one (nothing is answered when it has not), every role without
 * auth. */
static unsigned caller_roles(struct req *r)
{
    struct api *a = r->c->a;
    struct api_token tok;
    struct cairn_error e;
    if (a->cfg.insecure_no_auth)
        return API_ROLE_ADMIN | API_ROLE_METRICS;
    if (strncasecmp(r->auth, "Bearer ", 7) ||
        api_jwt_check(a->jwt, r->auth + 7, strlen(r->auth + 7), now_s(a), &tok, &e))
        return 0;
    return tok.roles;
}

/* Public (probes send no token): whether the state caught up. The log head
 * and checkpoint are the whole server's event count, so only a caller
 * with the metrics or admin role gets them. */
static void get_readyz(struct req *r, char **args)
{
    struct engine *eng = r->c->a->eng;
    uint64_t head = 0, cp = (uint64_t)r->c->a->applied;
    struct cairn_buf b;
    (void)args;
    log_head(engine_log(eng), &head, NULL);
    cairn_buf_init(&b, 1024);
    bool ready = cp >= head && !engine_apply_error(eng);
    cairn_buf_printf(&b, "{\"ready\":%s", ready ? "true" : "false");
    if (caller_roles(r) & (API_ROLE_ADMIN | API_ROLE_METRICS))
        cairn_buf_printf(&b, ",\"log_head\":%llu,\"checkpoint\":%llu", (unsigned long long)head,
                         (unsigned long long)cp);
    cairn_buf_putc(&b, '}');
    json_reply(r, ready ? 200 : 503, &b);
}

static void get_metrics(struct req *r, char **args)
{
    struct cairn_buf b;
    (void)args;
    cairn_buf_init(&b, 4u << 20);
    metrics_render(r->c->a, &b);
    http_respond(r, 200, "text/plain; version=0.0.4", b.data, b.len, NULL);
    cairn_buf_deinit(&b);
}

static void get_schemas(struct req *r, char **args)
{
    const struct schema_set *set = ingest_schemas(engine_ingest(r->c->a->eng));
    struct cairn_buf b;
    (void)args;
    cairn_buf_init(&b, 1u << 20);
    cairn_buf_puts(&b, "{\"types\":[");
    for (size_t i = 0; i < schema_set_count(set); i++) {
        const char *t = schema_set_type(set, i);
        if (i)
            cairn_buf_putc(&b, ',');
        cairn_buf_json_str(&b, t, strlen(t));
    }
    cairn_buf_puts(&b, "]}");
    json_reply(r, 200, &b);
}

static void get_schema(struct req *r, char **args)
{
    const struct schema *s = schema_set_get(ingest_schemas(engine_ingest(r->c->a->eng)), args[0]);
    if (!s) {
        http_error(r, 404, "not_found", "type", "no schema for type %.64s", args[0]);
        return;
    }
    char *text = json_dumps(schema_doc(s), JSON_COMPACT);
    if (!text) {
        http_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    http_respond(r, 200, "application/schema+json", text, strlen(text), NULL);
    free(text);
}

/* ====================================================================== views */

static bool tenant_is(const struct req *r, const struct cairn_str *t)
{
    return r->any_tenant || (t->n == strlen(r->tok.tenant) && !memcmp(t->p, r->tok.tenant, t->n));
}

/* True when the document's top-level fields equal every filter given in
 * the query (parameters other than the reserved ones). */
static bool doc_matches(const struct req *r, const msgpack_object *doc)
{
    static const char *const reserved[] = {"cursor", "limit", "min_seq", "wait_ms", "tenant", NULL};
    for (const char *p = r->query; *p;) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        char name[64], want[256];
        size_t kn = eq ? (size_t)(eq - p) : n;
        const char *next = p + n + (p[n] == '&');
        if (!eq || kn >= sizeof name || !pct_decode(p, kn, name, sizeof name, true) ||
            !pct_decode(eq + 1, n - kn - 1, want, sizeof want, true)) {
            p = next;
            continue;
        }
        bool skip = false;
        for (const char *const *rs = reserved; *rs && !skip; rs++)
            skip = !strcmp(name, *rs);
        p = next;
        if (skip)
            continue;
        const msgpack_object *v = mp_get(doc, name);
        struct cairn_str s;
        double d;
        bool b;
        char *end;
        if (mp_str(v, &s)    ? (s.n != strlen(want) || memcmp(s.p, want, s.n))
            : mp_bool(v, &b) ? strcmp(want, b ? "true" : "false")
            : mp_num(v, &d)  ? (strtod(want, &end) != d || *end)
                             : true)
            return false;
    }
    return true;
}

struct page {
    struct cairn_buf b;
    size_t items, scanned;
    struct cairn_buf doc; /* a document view_doc made */
};

static int view_cursor_start(struct req *r, MDB_cursor *cur, MDB_val *k, MDB_val *v,
                             uint8_t *prefix, size_t *pn, uint8_t *start, size_t *sn)
{
    struct cairn_str t = {r->tok.tenant, strlen(r->tok.tenant)}, none = {"", 0};
    char hex[2 * 512 + 2];
    *pn = r->any_tenant ? 0 : hkey_make(prefix, 512, &t, &none);
    *sn = 0;
    const char *raw;
    size_t rn;
    if (query_find(r, "cursor", &raw, &rn)) {
        if (!pct_decode(raw, rn, hex, sizeof hex, true))
            return CAIRN_EINVAL;
        size_t hn = strlen(hex);
        if (hn % 2 || hn / 2 > 511 || cairn_unhex(hex, hn, start))
            return CAIRN_EINVAL;
        *sn = hn / 2;
    }
    *k = *sn ? (MDB_val){*sn, start} : (MDB_val){*pn, prefix};
    int rc = k->mv_size ? mdb_cursor_get(cur, k, v, MDB_SET_RANGE)
                        : mdb_cursor_get(cur, k, v, MDB_FIRST);
    /* A cursor names the last key returned: skip it. */
    if (!rc && *sn && k->mv_size == *sn && !memcmp(k->mv_data, start, *sn))
        rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
    return rc;
}

/* The document of view entry k -> v: v itself, or what the handler's
 * view_doc makes of it (into doc; false: it failed, skip the entry). */
static bool view_doc(const struct handler *h, struct proj_snap *s, const MDB_val *k, MDB_val *v,
                     struct cairn_buf *doc)
{
    if (!h->view_doc)
        return true;
    struct hread rd = {.snap = s, .h = h};
    cairn_buf_reset(doc);
    if (h->view_doc(&rd, k, v, doc))
        return false;
    *v = (MDB_val){doc->len, doc->data};
    return true;
}

static void view_page(struct req *r, const struct handler *h, struct proj_snap *s, MDB_cursor *cur,
                      uint64_t limit, struct page *pg)
{
    uint8_t prefix[512], start[512];
    size_t pn, sn;
    MDB_val k, v;
    int rc = view_cursor_start(r, cur, &k, &v, prefix, &pn, start, &sn);
    if (rc == CAIRN_EINVAL) {
        http_error(r, 400, "invalid_parameter", "cursor", "the cursor is not one this API gave");
        pg->items = SIZE_MAX;
        return;
    }
    char last[2 * 512 + 1] = "";
    bool more = false;
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pn || memcmp(k.mv_data, prefix, pn))
            break;
        if (pg->items == limit || pg->scanned == SCAN_MAX) {
            more = true;
            break;
        }
        pg->scanned++;
        cairn_hex(k.mv_data, k.mv_size < 512 ? k.mv_size : 511, last);
        if (!view_doc(h, s, &k, &v, &pg->doc))
            continue;
        msgpack_unpacked doc;
        msgpack_unpacked_init(&doc);
        if (msgpack_unpack_next(&doc, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS &&
            doc_matches(r, &doc.data)) {
            if (pg->items++)
                cairn_buf_putc(&pg->b, ',');
            cairn_msgpack_to_json(v.mv_data, v.mv_size, &pg->b, NULL);
        }
        msgpack_unpacked_destroy(&doc);
    }
    cairn_buf_puts(&pg->b, "],\"next_cursor\":");
    if (more && last[0])
        cairn_buf_printf(&pg->b, "\"%s\"}", last);
    else
        cairn_buf_puts(&pg->b, "null}");
}

/* Opens a snapshot and the view's DBI. -1: answered (an error; r is gone);
 * 0 with *s NULL: the view has no DBI yet (nothing derived: empty). */
static int open_view(struct req *r, const char *view, struct proj_snap **s, MDB_dbi *dbi)
{
    const struct handler *h = view_handler(view);
    char name[160];
    size_t hn = strlen(h->name), vn = strlen(h->view);
    if (hn + 1 + vn >= sizeof name) { /* handler names are short: never (no snprintf per GET) */
        http_error(r, 500, "internal", NULL, "view name too long");
        return -1;
    }
    memcpy(name, h->name, hn);
    name[hn] = '.';
    memcpy(name + hn + 1, h->view, vn + 1);
    if (proj_snap_begin(engine_proj(r->c->a->eng), s)) {
        http_error(r, 503, "unavailable", NULL, "cannot read the state");
        return -1;
    }
    if (proj_snap_dbi(*s, name, dbi)) {
        proj_snap_end(*s);
        *s = NULL;
    }
    return 0;
}

static void get_view_list(struct req *r, char **args)
{
    bool answered;
    uint64_t limit = API_PAGE_DEFAULT;
    if (wait_min_seq(r, &answered) || answered || !query_u64(r, "limit", &limit, API_PAGE_MAX))
        return;
    if (limit == 0)
        limit = API_PAGE_DEFAULT;
    MDB_dbi dbi;
    MDB_cursor *cur;
    struct page pg = {.items = 0};
    struct proj_snap *s;
    if (open_view(r, args[0], &s, &dbi))
        return;
    uint64_t cp = s ? proj_snap_checkpoint(s) : (uint64_t)r->c->a->applied;
    cairn_buf_init(&pg.b, 64u << 20);
    cairn_buf_init(&pg.doc, 64u << 20);
    cairn_buf_printf(&pg.b, "{\"seq\":%llu,\"items\":[", (unsigned long long)cp);
    if (s && !mdb_cursor_open(proj_snap_txn(s), dbi, &cur)) {
        view_page(r, view_handler(args[0]), s, cur, limit, &pg);
        mdb_cursor_close(cur);
    } else {
        cairn_buf_puts(&pg.b, "],\"next_cursor\":null}");
    }
    proj_snap_end(s);
    cairn_buf_deinit(&pg.doc);
    if (pg.items == SIZE_MAX) {
        cairn_buf_deinit(&pg.b);
        return;
    }
    json_reply(r, 200, &pg.b);
}

static void get_view_item(struct req *r, char **args)
{
    bool answered;
    if (wait_min_seq(r, &answered) || answered)
        return;
    MDB_dbi dbi;
    MDB_val v;
    uint8_t key[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    struct cairn_str t = {r->tok.tenant, strlen(r->tok.tenant)}, id = {args[1], strlen(args[1])};
    struct proj_snap *s;
    if (open_view(r, args[0], &s, &dbi))
        return;
    size_t kn = id.n <= CAIRN_KEY_MAX ? hkey_make(key, sizeof key, &t, &id) : 0;
    MDB_val k = {kn, key};
    if (!s || !kn || r->any_tenant || mdb_get(proj_snap_txn(s), dbi, &k, &v)) {
        proj_snap_end(s);
        if (r->any_tenant)
            http_error(r, 400, "missing_parameter", "tenant", "give ?tenant= to read one entity");
        else
            http_error(r, 404, "not_found", NULL, "no %s entity %.256s", args[0], args[1]);
        return;
    }
    struct cairn_buf b, doc;
    cairn_buf_init(&doc, 64u << 20);
    if (!view_doc(view_handler(args[0]), s, &k, &v, &doc)) {
        proj_snap_end(s);
        cairn_buf_deinit(&doc);
        http_error(r, 500, "internal", NULL, "cannot read %s entity %.256s", args[0], args[1]);
        return;
    }
    cairn_buf_init(&b, 64u << 20);
    char num[24];
    cairn_buf_puts(&b, "{\"seq\":"); /* no printf on the hottest route */
    cairn_buf_append(&b, num, cairn_u64_dec(num, proj_snap_checkpoint(s)));
    cairn_buf_puts(&b, ",\"item\":");
    cairn_msgpack_to_json(v.mv_data, v.mv_size, &b, NULL);
    cairn_buf_putc(&b, '}');
    proj_snap_end(s);
    cairn_buf_deinit(&doc);
    json_reply(r, 200, &b);
}

/* ====================================================================== ingest */

static void post_events(struct req *r, char **args)
{
    (void)args;
    api_post_events(r);
}

static void post_stripe(struct req *r, char **args)
{
    api_post_stripe(r, args[0]);
}

/* ====================================================================== streams */

static void get_streams(struct req *r, char **args)
{
    struct proj_snap *s;
    struct cairn_buf b;
    (void)args;
    if (proj_snap_begin(engine_proj(r->c->a->eng), &s)) {
        http_error(r, 503, "unavailable", NULL, "cannot read the state");
        return;
    }
    cairn_buf_init(&b, 1u << 20);
    cairn_buf_printf(&b, "{\"seq\":%llu,\"streams\":[",
                     (unsigned long long)proj_snap_checkpoint(s));
    size_t k = 0;
    for (const struct handler *const *h = handler_table; *h; h++) {
        if (!(*h)->emits || !(*h)->emits[0])
            continue;
        char name[160];
        MDB_dbi dbi;
        MDB_cursor *cur;
        MDB_val key, val;
        uint64_t head = 0;
        snprintf(name, sizeof name, PROJ_STREAM_PREFIX "%s", (*h)->name);
        if (!proj_snap_dbi(s, name, &dbi) && !mdb_cursor_open(proj_snap_txn(s), dbi, &cur)) {
            if (!mdb_cursor_get(cur, &key, &val, MDB_LAST) && key.mv_size == 8)
                head = cairn_be64_get(key.mv_data);
            mdb_cursor_close(cur);
        }
        cairn_buf_printf(&b, "%s{\"name\":\"%s\",\"head\":%llu,\"types\":[", k++ ? "," : "",
                         (*h)->name, (unsigned long long)head);
        for (const char *const *t = (*h)->emits; *t; t++)
            cairn_buf_printf(&b, "%s\"%s\"", t == (*h)->emits ? "" : ",", *t);
        cairn_buf_puts(&b, "]}");
    }
    cairn_buf_puts(&b, "]}");
    proj_snap_end(s);
    json_reply(r, 200, &b);
}

static const struct handler *stream_handler(const char *name)
{
    for (const struct handler *const *h = handler_table; *h; h++)
        if ((*h)->emits && (*h)->emits[0] && !strcmp((*h)->name, name))
            return *h;
    return NULL;
}

/* Comma-separated list membership (?type=a,b). */
bool list_has(const char *list, const struct cairn_str *s);
bool list_has(const char *list, const struct cairn_str *s)
{
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n == s->n && !memcmp(p, s->p, n))
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

static void get_stream(struct req *r, char **args)
{
    if (!stream_handler(args[0])) {
        http_error(r, 404, "not_found", "stream", "no stream %.64s", args[0]);
        return;
    }
    bool answered;
    uint64_t from = 1, limit = API_PAGE_DEFAULT;
    if (!query_u64(r, "from", &from, UINT64_MAX) || !query_u64(r, "limit", &limit, API_PAGE_MAX))
        return;
    if (limit == 0) /* as for views: 0 is the default, never an empty page to loop on */
        limit = API_PAGE_DEFAULT;
    if (r->last_event_id[0]) { /* SSE resume: continue after the last id seen */
        char *end;
        errno = 0;
        unsigned long long id = strtoull(r->last_event_id, &end, 10);
        if (*end || !r->last_event_id[0] || errno == ERANGE || id == UINT64_MAX ||
            r->last_event_id[0] == '-') {
            http_error(r, 400, "invalid_parameter", "Last-Event-ID", "must be a dseq");
            return;
        }
        from = id + 1;
    }
    if (strstr(r->accept, "text/event-stream")) {
        sse_start(r, args[0], from ? from : 1);
        return;
    }
    if (wait_min_seq(r, &answered) || answered)
        return;
    struct cairn_buf b;
    char dbiname[160], types[1024] = "", key[CAIRN_KEY_MAX + 1] = "";
    int by_type = query_param(r, "type", types, sizeof types);
    int by_key = by_type < 0 ? -1 : query_param(r, "key", key, sizeof key);
    if (by_key < 0)
        return; /* answered */
    struct proj_snap *s;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t k8[8];
    uint64_t next = from ? from : 1;
    size_t n = 0, scanned = 0;
    snprintf(dbiname, sizeof dbiname, PROJ_STREAM_PREFIX "%s", args[0]);
    if (proj_snap_begin(engine_proj(r->c->a->eng), &s)) {
        http_error(r, 503, "unavailable", NULL, "cannot read the state");
        return;
    }
    cairn_buf_init(&b, 64u << 20);
    cairn_buf_printf(&b, "{\"seq\":%llu,\"events\":[", (unsigned long long)proj_snap_checkpoint(s));
    if (!proj_snap_dbi(s, dbiname, &dbi) && !mdb_cursor_open(proj_snap_txn(s), dbi, &cur)) {
        cairn_be64_put(k8, next);
        k = (MDB_val){8, k8};
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             !rc && n < limit && scanned < SCAN_MAX; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            struct proj_derived d;
            scanned++;
            if (proj_derived_decode(v.mv_data, v.mv_size, &d))
                break;
            next = d.dseq + 1;
            struct cairn_str ks = {key, strlen(key)};
            if (!tenant_is(r, &d.tenant) || (by_type && !list_has(types, &d.type)) ||
                (by_key && (d.key.n != ks.n || memcmp(d.key.p, ks.p, ks.n))))
                continue;
            if (n++)
                cairn_buf_putc(&b, ',');
            proj_derived_json(&d, &b);
        }
        mdb_cursor_close(cur);
    }
    proj_snap_end(s);
    cairn_buf_printf(&b, "],\"next\":%llu}", (unsigned long long)next);
    json_reply(r, 200, &b);
}

/* ====================================================================== the log (audit) */

static void get_log(struct req *r, char **args)
{
    uint64_t from = 1, limit = API_PAGE_DEFAULT;
    (void)args;
    if (!query_u64(r, "from", &from, UINT64_MAX) || !query_u64(r, "limit", &limit, API_PAGE_MAX))
        return;
    if (limit == 0) /* as for views: 0 is the default, never an empty page to loop on */
        limit = API_PAGE_DEFAULT;
    struct log *log = engine_log(r->c->a->eng);
    struct log_snap *s;
    struct log_iter *it;
    struct log_event ev;
    struct cairn_buf b;
    uint64_t head, next = from ? from : 1;
    size_t n = 0, scanned = 0;
    if (log_snap_begin(log, &s)) {
        http_error(r, 503, "unavailable", NULL, "cannot read the log");
        return;
    }
    log_snap_head(s, &head, NULL);
    cairn_buf_init(&b, 256u << 20);
    cairn_buf_printf(&b, "{\"head\":%llu,\"events\":[", (unsigned long long)head);
    if (!log_iter_open(s, next, NULL, NULL, &it)) {
        while (n < limit && scanned < SCAN_MAX && !log_iter_next(it, &ev)) {
            scanned++;
            next = ev.seq + 1;
            if (!tenant_is(r, &ev.tenant))
                continue;
            if (n++)
                cairn_buf_putc(&b, ',');
            log_event_json(&ev, &b);
        }
        log_iter_close(it);
    }
    log_snap_end(s);
    cairn_buf_printf(&b, "],\"next\":%llu}", (unsigned long long)next);
    json_reply(r, 200, &b);
}

static void get_log_head(struct req *r, char **args)
{
    uint64_t seq;
    uint8_t hash[LOG_HASH_LEN];
    char hex[2 * LOG_HASH_LEN + 1];
    struct cairn_buf b;
    (void)args;
    if (log_head(engine_log(r->c->a->eng), &seq, hash)) {
        http_error(r, 503, "unavailable", NULL, "cannot read the log");
        return;
    }
    cairn_hex(hash, LOG_HASH_LEN, hex);
    cairn_buf_init(&b, 256);
    cairn_buf_printf(&b, "{\"seq\":%llu,\"hash\":\"%s\"}", (unsigned long long)seq, hex);
    json_reply(r, 200, &b);
}

/* Verifying walks the log: it runs on libuv's thread pool so the loop
 * keeps serving. */
struct verify_work {
    uv_work_t w;
    struct req *r;
    struct log *log;
    uint64_t from, to;
    int rc;
    struct log_verify_report rep;
};

static void verify_run(uv_work_t *w)
{
    struct verify_work *vw = w->data;
    vw->rc = log_verify(vw->log, vw->from, vw->to, &vw->rep);
}

static void verify_done(uv_work_t *w, int status)
{
    struct verify_work *vw = w->data;
    struct req *r = vw->r;
    (void)status;
    if (!r->c) { /* the client went away */
        req_free(r);
    } else if (vw->rc == CAIRN_ENOTFOUND) {
        r->in_writer = false;
        http_error(r, 400, "invalid_parameter", "from", "from is past the log head");
    } else if (vw->rc) {
        r->in_writer = false;
        http_error(r, 503, "unavailable", NULL, "verify could not read the log");
    } else {
        struct cairn_buf b;
        char hex[2 * LOG_HASH_LEN + 1];
        r->in_writer = false;
        cairn_hex(vw->rep.head, LOG_HASH_LEN, hex);
        cairn_buf_init(&b, 1024);
        if (vw->rep.ok)
            cairn_buf_printf(&b, "{\"ok\":true,\"events\":%llu,\"head\":\"%s\"}",
                             (unsigned long long)vw->rep.events, hex);
        else
            cairn_buf_printf(
                &b, "{\"ok\":false,\"seq\":%llu,\"reason\":\"%s\",\"events_verified\":%llu}",
                (unsigned long long)vw->rep.bad_seq, vw->rep.reason,
                (unsigned long long)vw->rep.events);
        json_reply(r, 200, &b);
    }
    free(vw);
}

static void get_log_verify(struct req *r, char **args)
{
    (void)args;
    struct verify_work *vw = calloc(1, sizeof *vw);
    if (!vw) {
        http_error(r, 500, "internal", NULL, "out of memory");
        return;
    }
    vw->from = 1;
    if (!query_u64(r, "from", &vw->from, UINT64_MAX) || !query_u64(r, "to", &vw->to, UINT64_MAX)) {
        free(vw);
        return;
    }
    vw->r = r;
    vw->log = engine_log(r->c->a->eng);
    vw->w.data = vw;
    r->in_writer = true; /* owned by the worker until verify_done */
    if (uv_queue_work(r->c->a->loop, &vw->w, verify_run, verify_done)) {
        r->in_writer = false;
        free(vw);
        http_error(r, 503, "unavailable", NULL, "cannot start verify");
    }
}
