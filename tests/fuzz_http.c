/*
 * fuzz_http.c — libFuzzer target for the HTTP server (api/): request
 * parsing, limits, keep-alive, pipelining, chunked bodies, routing and
 * every route, through real TCP connections to a real server.
 *
 * The parser and router are reachable only through a connection, so the
 * target runs the whole server in-process: a scratch data directory (in
 * $CAIRN_FUZZ_DIR, else /dev/shm when it exists: the log fsyncs), an
 * engine with its writer thread, and two APIs on one libuv loop that this
 * thread drives:
 *
 *   server 0  JWT auth (TOKEN_SECRET below), Stripe secret for "acme",
 *             a fixed clock (FIXED_NOW_S) so the tokens and Stripe
 *             signatures in the seed corpus stay valid forever
 *   server 1  --insecure-no-auth (the any-tenant paths)
 *
 * Limits are small (header 4 KiB, body 8 KiB, batch 32 KiB, 2 ms header
 * and body timeouts) so 408, 413 and 431 are reachable by short inputs.
 *
 * Input format: the raw bytes a client sends. CONN_SEP splits an input
 * into up to CONNS_MAX connections, opened together, so one input can
 * hold an SSE subscriber and the ingest that wakes it, or a ?min_seq read
 * and the write it waits for. A part that starts with "!\n" goes (without
 * those two bytes) to server 1, any other to server 0; after that, "~\n"
 * makes the client half-close (SHUT_WR) as soon as it sent everything.
 * tests/fuzz/corpus/ holds the seeds and tests/fuzz/make_corpus.sh writes
 * them.
 *
 * Per input: connect, write every part, and run the loop until each
 * client read EOF. A client half-closes once its server-side connection
 * is idle: every byte parsed, no request in flight, nothing queued to
 * write (or at once, with "~\n"). SSE subscribers are half-closed last,
 * after the other connections finished, so they see what those wrote.
 * An input that is not done after BUDGET_MS is cut off (counted, not a
 * failure: a ?min_seq wait may legitimately last 60 s); a server that
 * never answers shows up in -timeout or in the count printed at exit.
 * Then every connection is closed and the loop runs until the server
 * freed them, so one input's memory never leaks into the next one's leak
 * check. A ?min_seq wait still running then is made to time out at once
 * (its timer is re-armed to 0 ms): the time it has left passes.
 *
 * The log grows with every accepted event; past RESET_EVENTS the data
 * directory is deleted and the server reopened, so runs of any length
 * stay fast and bounded on disk.
 *
 * A subscriber whose client left is closed here (counted) rather than
 * reported: api/http.c keeps an SSE connection after reading EOF until a
 * write to it fails (reported to the api/ owner). CAIRN_FUZZ_STRICT=1
 * reports it as a failure instead.
 *
 * CAIRN_FUZZ_VERBOSE=1 prints every response to stderr (to check seeds).
 */
#include "api_int.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONNS_MAX 4
#define CONN_SEP "\n@@conn@@\n"
#define INSECURE_PREFIX "!\n"
#define EAGER_PREFIX "~\n"
#define BUDGET_MS 250
#define DRAIN_MS 2000
#define RESET_EVENTS 20000
#define FIXED_NOW_S 1795255200LL /* 2026-11-21T10:00:00Z, as make_corpus.sh */
#define TOKEN_SECRET "cairn-fuzz-jwt-secret-0123456789abcdef"
#define STRIPE_SECRET "whsec_cairn_fuzz_0123456789"
#define STRIPE_TENANT "acme"

struct client {
    int fd;
    int server;
    const uint8_t *p; /* bytes left to send */
    size_t left;
    int port;       /* the client's local port: finds its server-side conn */
    bool shut, eof; /* half-closed; read EOF (or reset) */
    bool sse;       /* its server-side conn became a subscriber */
    bool eager;     /* half-closes as soon as everything is sent */
};

static struct {
    uv_loop_t loop;
    struct engine *eng;
    struct api *_Atomic api[2];
    struct api_config cfg[2];
    int port[2];
    char dir[512];
    json_t *config;
    bool verbose;
    bool strict;
    unsigned long inputs, cut_off, resets, sse_kept;
} F;

/* ====================================================================== server */

static int64_t fixed_now_ns(void)
{
    return FIXED_NOW_S * 1000000000LL;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_http: %s: %s\n", what, detail);
    abort();
}

/* Writer thread: wake both servers (either may be closed or not yet open). */
static void on_applied(void *arg, uint64_t checkpoint)
{
    (void)arg;
    for (int i = 0; i < 2; i++) {
        struct api *a = atomic_load(&F.api[i]);
        if (a)
            api_notify_applied(a, checkpoint);
    }
}

static void config_init(struct api_config *cfg, bool insecure)
{
    api_config_init(cfg);
    cfg->port = 0; /* the kernel picks; read back from the listener */
    cfg->header_max = 4096;
    cfg->body_max = 8192;
    cfg->batch_max = 32768;
    cfg->header_timeout_ms = 2;
    cfg->body_timeout_ms = 2;
    cfg->idle_timeout_ms = 1000;
    cfg->max_conns = 3; /* CONNS_MAX connections reach the 503 */
    cfg->max_sse = 2;
    cfg->min_seq_wait_ms = 5;
    cfg->now_ns = fixed_now_ns;
    cfg->insecure_no_auth = insecure;
    if (!insecure) {
        cfg->jwt_secret = (uint8_t *)strdup(TOKEN_SECRET);
        cfg->jwt_secret_len = strlen(TOKEN_SECRET);
    }
    cfg->stripe = calloc(1, sizeof *cfg->stripe);
    if (!cfg->stripe || (!insecure && !cfg->jwt_secret))
        die("config", "out of memory");
    snprintf(cfg->stripe[0].tenant, sizeof cfg->stripe[0].tenant, "%s", STRIPE_TENANT);
    cfg->stripe[0].secrets[0] = strdup(STRIPE_SECRET);
    cfg->stripe[0].n = 1;
    cfg->nstripe = 1;
}

static void server_open(void)
{
    struct cairn_error e;
    struct engine_config ec = {
        .data = F.dir, .config = F.config, .on_applied = on_applied, .on_applied_arg = NULL};
    cairn_error_clear(&e);
    if (engine_open(&F.eng, &ec, &e) || engine_start(F.eng))
        die("engine_open", e.code ? e.message : "failed");
    for (int i = 0; i < 2; i++) {
        struct api *a = NULL;
        struct sockaddr_storage ss;
        int n = sizeof ss;
        if (api_open(&a, &F.loop, F.eng, &F.cfg[i], &e))
            die("api_open", e.message);
        if (uv_tcp_getsockname(&a->listener, (struct sockaddr *)&ss, &n))
            die("api_open", "no listening address");
        F.port[i] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        atomic_store(&F.api[i], a);
    }
}

static void server_close(void)
{
    engine_stop(F.eng); /* every queued write answered: then the APIs may go */
    for (int i = 0; i < 2; i++) {
        struct api *a = atomic_exchange(&F.api[i], NULL);
        api_close(a);
    }
    uv_run(&F.loop, UV_RUN_DEFAULT); /* until every handle is closed */
    engine_close(F.eng);
    F.eng = NULL;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void reset_if_big(void)
{
    uint64_t head = 0;
    log_head(engine_log(F.eng), &head, NULL);
    if (head < RESET_EVENTS)
        return;
    server_close();
    nftw(F.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    if (mkdir(F.dir, 0700))
        die("mkdir", strerror(errno));
    F.resets++;
    server_open();
}

static void report(void)
{
    fprintf(stderr,
            "fuzz_http: %lu inputs, %lu cut off after %d ms, %lu subscribers kept after EOF, "
            "%lu resets (data in %s)\n",
            F.inputs, F.cut_off, BUDGET_MS, F.sse_kept, F.resets, F.dir);
    if (F.eng)
        server_close();
    nftw(F.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN); /* a server writing to a client that left */
    const char *v = getenv("CAIRN_FUZZ_VERBOSE");
    F.verbose = v && *v == '1';
    v = getenv("CAIRN_FUZZ_STRICT");
    F.strict = v && *v == '1';
    /* tests/fuzz/run.sh gives a directory it removes afterwards, crash or
     * not (a crash skips report()). */
    const char *base = getenv("CAIRN_FUZZ_DIR");
    if (!base || !*base)
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    base = base && *base ? base : "/tmp";
    snprintf(F.dir, sizeof F.dir, "%s/cairn-fuzz-http-XXXXXX", base);
    if (!mkdtemp(F.dir))
        die("mkdtemp", strerror(errno));
    F.config = json_object();
    uv_loop_init(&F.loop);
    config_init(&F.cfg[0], false);
    config_init(&F.cfg[1], true);
    server_open();
    atexit(report);
    return 0;
}

/* ====================================================================== clients */

/* The server-side connection of a client (NULL: not accepted yet, or gone). */
static struct conn *conn_of_client(const struct client *cl)
{
    struct api *a = atomic_load(&F.api[cl->server]);
    for (struct conn *c = a ? a->conns : NULL; c; c = c->next) {
        struct sockaddr_storage ss;
        int n = sizeof ss;
        if (!c->closing && !uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &n) &&
            ntohs(((struct sockaddr_in *)&ss)->sin_port) == cl->port)
            return c;
    }
    return NULL;
}

/* Everything the client sent was handled and answered. */
static bool server_idle(struct client *cl)
{
    struct conn *c = conn_of_client(cl);
    if (!c)
        return false;
    cl->sse = c->sse != NULL;
    return c->in_off == c->in.len && !c->cur && (!c->active || c->sse) && !c->waiting_min_seq &&
           uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0;
}

static void client_open(struct client *cl, int server, const uint8_t *p, size_t n)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)F.port[server])};
    socklen_t sl = sizeof sa;
    memset(cl, 0, sizeof *cl);
    cl->server = server;
    cl->p = p;
    cl->left = n;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (cl->fd < 0)
        die("socket", strerror(errno));
    if (connect(cl->fd, (struct sockaddr *)&sa, sizeof sa) && errno != EINPROGRESS)
        die("connect", strerror(errno));
    if (getsockname(cl->fd, (struct sockaddr *)&sa, &sl))
        die("getsockname", strerror(errno));
    cl->port = ntohs(sa.sin_port);
}

static void client_send(struct client *cl)
{
    while (cl->left && !cl->eof) {
        ssize_t n = send(cl->fd, cl->p, cl->left, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ENOTCONN)
                return;   /* buffers full, or the connect is still in progress */
            cl->left = 0; /* the server closed on us (EPIPE, ECONNRESET) */
            return;
        }
        cl->p += n;
        cl->left -= (size_t)n;
    }
}

static void client_recv(struct client *cl)
{
    char buf[65536];
    while (!cl->eof) {
        ssize_t n = recv(cl->fd, buf, sizeof buf, 0);
        if (n > 0) {
            if (F.verbose)
                fwrite(buf, 1, (size_t)n, stderr);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR || errno == ENOTCONN))
            return;
        cl->eof = true; /* 0: EOF; else ECONNRESET and friends */
    }
}

/* Splits the input at CONN_SEP into clients. */
static size_t clients_open(struct client *cls, const uint8_t *data, size_t size)
{
    size_t n = 0, sep = strlen(CONN_SEP);
    const uint8_t *p = data, *end = data + size;
    while (n < CONNS_MAX) {
        const uint8_t *s = n + 1 < CONNS_MAX ? memmem(p, (size_t)(end - p), CONN_SEP, sep) : NULL;
        const uint8_t *stop = s ? s : end;
        size_t len = (size_t)(stop - p);
        int server = 0;
        bool eager = false;
        if (len >= 2 && !memcmp(p, INSECURE_PREFIX, 2)) {
            server = 1;
            p += 2;
            len -= 2;
        }
        if (len >= 2 && !memcmp(p, EAGER_PREFIX, 2)) {
            eager = true;
            p += 2;
            len -= 2;
        }
        client_open(&cls[n], server, p, len);
        cls[n++].eager = eager;
        if (!s)
            break;
        p = s + sep;
    }
    return n;
}

/* ====================================================================== the loop */

/* The known issue in the file comment: closes subscribers whose client
 * left, which the server would keep until a write to them fails. */
static void close_departed_subscribers(void)
{
    for (int i = 0; i < 2 && !F.strict; i++) {
        struct api *a = atomic_load(&F.api[i]);
        for (struct conn *c = a ? a->conns : NULL, *next; c; c = next) {
            next = c->next;
            if (c->sse && c->eof && !c->closing) {
                F.sse_kept++;
                http_close(c);
            }
        }
    }
}

/* Waits up to 1 ms for a client socket or the loop, then runs the loop. */
static void step(struct client *cls, size_t n)
{
    struct pollfd pf[CONNS_MAX + 1];
    for (size_t i = 0; i < n; i++)
        pf[i] = (struct pollfd){.fd = cls[i].fd, .events = POLLIN | (cls[i].left ? POLLOUT : 0)};
    pf[n] = (struct pollfd){.fd = uv_backend_fd(&F.loop), .events = POLLIN};
    poll(pf, n + 1, 1);
    uv_run(&F.loop, UV_RUN_NOWAIT);
    close_departed_subscribers();
}

static bool all_eof(const struct client *cls, size_t n, bool sse_too)
{
    for (size_t i = 0; i < n; i++)
        if (!cls[i].eof && (sse_too || !cls[i].sse))
            return false;
    return true;
}

static void exchange(struct client *cls, size_t n)
{
    uint64_t start = uv_hrtime();
    while (!all_eof(cls, n, true)) {
        bool others_done = all_eof(cls, n, false);
        for (size_t i = 0; i < n; i++) {
            struct client *cl = &cls[i];
            client_send(cl);
            client_recv(cl);
            if (!cl->shut && !cl->left &&
                (cl->eager || (server_idle(cl) && (!cl->sse || others_done)))) {
                shutdown(cl->fd, SHUT_WR); /* the server reads EOF and closes */
                cl->shut = true;
            }
        }
        if ((uv_hrtime() - start) / 1000000 > BUDGET_MS) {
            F.cut_off++;
            return;
        }
        step(cls, n);
    }
}

static unsigned open_conns(void)
{
    unsigned n = 0;
    for (int i = 0; i < 2; i++) {
        struct api *a = atomic_load(&F.api[i]);
        n += a ? a->nconns : 0;
    }
    return n;
}

/* Ends the ?min_seq waits of connections whose client is gone. */
static void expire_waits(void)
{
    for (int i = 0; i < 2; i++) {
        struct api *a = atomic_load(&F.api[i]);
        for (struct conn *c = a ? a->conns : NULL; c; c = c->next)
            if (c->waiting_min_seq && !c->closing && uv_timer_get_due_in(&c->timer) > 0)
                http_arm(c, 0);
    }
}

/* What the server still holds (before failing the drain check). */
static void dump_conns(void)
{
    for (int i = 0; i < 2; i++) {
        struct api *a = atomic_load(&F.api[i]);
        for (struct conn *c = a ? a->conns : NULL; c; c = c->next)
            fprintf(stderr,
                    "fuzz_http: server %d conn %p: closing %d handles_open %d active %p "
                    "(in_writer %d) cur %p sse %p waiting_min_seq %d in %zu/%zu\n",
                    i, (void *)c, c->closing, c->handles_open, (void *)c->active,
                    c->active ? c->active->in_writer : 0, (void *)c->cur, (void *)c->sse,
                    c->waiting_min_seq, c->in_off, c->in.len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct client cls[CONNS_MAX];
    size_t n = clients_open(cls, data, size);
    F.inputs++;
    exchange(cls, n);
    for (size_t i = 0; i < n; i++)
        close(cls[i].fd);
    /* Until the server freed every connection of this input. */
    uint64_t start = uv_hrtime();
    while (open_conns() && (uv_hrtime() - start) / 1000000 < DRAIN_MS) {
        expire_waits();
        step(cls, 0);
    }
    if (open_conns()) {
        dump_conns();
        die("drain", "the server kept a connection open after its client closed");
    }
    reset_if_big();
    return 0;
}
