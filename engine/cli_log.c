/*
 * cli_log.c — `cairn append`, `tail`, `verify`, `head`.
 *
 * append is a three-stage pipeline so a producer piping into it always
 * knows what is durable:
 *
 *   main thread: read lines -> parse/validate -> chunk -> submit to writer
 *   writer:      group commit -> marks the chunk done
 *   printer:     prints chunks in input order as soon as each is done,
 *                and flushes
 *
 * A chunk is cut at CHUNK_LINES lines or whenever the input has nothing
 * more to read right now, so an interactive producer gets its answer at
 * once instead of waiting for a full chunk.
 */
#include "cli_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_LINES 1024
#define READ_BLOCK (256u << 10)

/* ====================================================================== line reader */

/* Reads lines from a file descriptor into a bounded buffer, so it can tell
 * whether more input is ready without blocking (stdio cannot). */
struct lines {
    int fd;
    struct cairn_buf b;
    size_t start; /* first unconsumed byte */
    bool eof;
    bool too_long; /* the current line passed CAIRN_LINE_MAX: skip to its end */
};

/* Next line (without '\n') in p and n; 1 on a line, 0 at end, <0 on error.
 * A line over CAIRN_LINE_MAX is returned as *n = SIZE_MAX once. */
static int lines_next(struct lines *l, const char **p, size_t *n)
{
    for (;;) {
        uint8_t *s = l->b.data ? l->b.data + l->start : NULL;
        uint8_t *nl = s ? memchr(s, '\n', l->b.len - l->start) : NULL;
        if (nl) {
            bool skipped = l->too_long;
            l->too_long = false;
            *p = (const char *)s;
            *n = skipped ? SIZE_MAX : (size_t)(nl - s);
            l->start = (size_t)(nl - l->b.data) + 1;
            return 1;
        }
        if (l->eof) {
            if (l->start >= l->b.len && !l->too_long)
                return 0;
            *p = (const char *)s;
            *n = l->too_long ? SIZE_MAX : l->b.len - l->start;
            l->too_long = false;
            l->start = l->b.len;
            return 1;
        }
        /* Compact, then read more. */
        if (l->start)
            memmove(l->b.data, l->b.data + l->start, l->b.len - l->start);
        l->b.len -= l->start;
        l->start = 0;
        if (l->b.len >= CAIRN_LINE_MAX) { /* drop what we have of a huge line */
            l->too_long = true;
            l->b.len = 0;
        }
        if (cairn_buf_reserve(&l->b, READ_BLOCK))
            return CAIRN_ENOMEM;
        ssize_t r = read(l->fd, l->b.data + l->b.len, READ_BLOCK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return CAIRN_EIO;
        if (r == 0)
            l->eof = true;
        l->b.len += (size_t)r;
    }
}

/* True when another line can be had without waiting. */
static bool lines_ready(struct lines *l)
{
    if (l->eof || (l->b.data && memchr(l->b.data + l->start, '\n', l->b.len - l->start)))
        return true;
    struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
    return poll(&pfd, 1, 0) > 0;
}

/* ====================================================================== chunks */

struct line {
    unsigned long no;
    int ev;                  /* index into evs, or -1 */
    struct cairn_error *err; /* when refused before the log */
};

struct chunk {
    struct log_req req; /* first: the writer hands it back */
    struct line lines[CHUNK_LINES];
    size_t nlines;
    struct ingest_event evs[CHUNK_LINES];
    struct log_input ins[CHUNK_LINES];
    struct log_result res[CHUNK_LINES];
    size_t nev;
    bool done;
    struct chunk *next;
};

/* Printed chunks are kept for the next lines (up to CHUNK_SPARE), with
 * their events' memory (engine.h: a parse reuses it): a fresh chunk per
 * 1 024 lines was a 300 KB calloc and 1 024 mallocs freed on the other
 * thread. */
#define CHUNK_SPARE 16

struct printer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct chunk *head, *tail;
    struct chunk *spare; /* printed chunks for reuse (linked by next) */
    size_t nspare;
    bool eof;
    bool failed; /* a batch could not be written: the feeder reads no further */
    int status;
};

static void chunk_done(struct log_req *req)
{
    struct chunk *ch = (struct chunk *)req;
    struct printer *pr = req->arg;
    pthread_mutex_lock(&pr->mu);
    ch->done = true;
    pthread_cond_broadcast(&pr->cv);
    pthread_mutex_unlock(&pr->mu);
}

/* Forgets the chunk's lines; its events keep their memory. */
static void chunk_clear(struct chunk *ch)
{
    for (size_t i = 0; i < ch->nlines; i++)
        free(ch->lines[i].err);
    ch->nlines = ch->nev = 0;
    ch->done = false;
    ch->next = NULL;
}

static void chunk_free(struct chunk *ch)
{
    chunk_clear(ch);
    for (size_t i = 0; i < CHUNK_LINES; i++) /* an earlier use may have filled more */
        ingest_event_deinit(&ch->evs[i]);
    free(ch);
}

/* A chunk for the next lines: a printed one, or a new one. */
static struct chunk *chunk_take(struct printer *pr)
{
    pthread_mutex_lock(&pr->mu);
    struct chunk *ch = pr->spare;
    if (ch) {
        pr->spare = ch->next;
        pr->nspare--;
        ch->next = NULL;
    }
    pthread_mutex_unlock(&pr->mu);
    return ch ? ch : calloc(1, sizeof *ch);
}

static int print_chunk(struct chunk *ch, struct cairn_buf *out)
{
    int status = CLI_OK;
    cairn_buf_reset(out);
    /* A batch that could not be written: each of its lines is answered
     * with why (nothing of it is in the log), and the run fails. */
    struct cairn_error unwritten;
    cairn_error_clear(&unwritten);
    if (ch->req.rc) {
        cairn_error_set(&unwritten, "unavailable", "", "the log could not be written: %s",
                        cairn_strerror(ch->req.rc));
        status = CLI_FAIL;
    }
    for (size_t i = 0; i < ch->nlines; i++) {
        const struct line *ln = &ch->lines[i];
        const struct log_result *r = NULL;
        const struct cairn_error *err = ln->err;
        if (ln->ev >= 0 && ch->req.rc)
            err = &unwritten;
        else if (ln->ev >= 0)
            r = &ch->res[ln->ev];
        if (status == CLI_OK && (err || (r && r->rc)))
            status = CLI_REJECTED;
        if (ingest_result_json(out, ln->no, r, err) || cairn_buf_putc(out, '\n'))
            return CLI_FAIL;
    }
    fwrite(out->data, 1, out->len, stdout);
    fflush(stdout);
    return status;
}

static void *printer_main(void *arg)
{
    struct printer *pr = arg;
    struct cairn_buf out;
    cairn_buf_init(&out, 64u << 20);
    pthread_mutex_lock(&pr->mu);
    for (;;) {
        while (!(pr->head && pr->head->done) && !(pr->eof && !pr->head))
            pthread_cond_wait(&pr->cv, &pr->mu);
        struct chunk *ch = pr->head;
        if (!ch)
            break;
        pr->head = ch->next;
        if (!pr->head)
            pr->tail = NULL;
        pthread_mutex_unlock(&pr->mu);
        int st = print_chunk(ch, &out);
        if (ch->req.rc)
            cli_fail("append",
                     "the log could not be written (lines %lu to %lu): %s; no further "
                     "input is read",
                     ch->lines[0].no, ch->lines[ch->nlines - 1].no, cairn_strerror(ch->req.rc));
        chunk_clear(ch);
        pthread_mutex_lock(&pr->mu);
        pr->failed |= st == CLI_FAIL;
        if (pr->nspare < CHUNK_SPARE) {
            ch->next = pr->spare;
            pr->spare = ch;
            pr->nspare++;
        } else {
            pthread_mutex_unlock(&pr->mu);
            chunk_free(ch);
            pthread_mutex_lock(&pr->mu);
        }
        if (st > pr->status && pr->status != CLI_FAIL)
            pr->status = st;
        if (st == CLI_FAIL)
            pr->status = CLI_FAIL;
    }
    pthread_mutex_unlock(&pr->mu);
    cairn_buf_deinit(&out);
    return NULL;
}

/* Hands the chunk to the printer (and the writer). Once it is linked in,
 * the printer may free it as soon as it is done: nothing below reads ch
 * after that unless the writer refused it (then it was never done). */
static int chunk_submit(struct printer *pr, struct log_writer *w, struct chunk *ch)
{
    const size_t nev = ch->nev;
    ch->req = (struct log_req){
        .inputs = ch->ins, .results = ch->res, .n = ch->nev, .done = chunk_done, .arg = pr};
    for (size_t i = 0; i < ch->nev; i++)
        ch->ins[i] = ch->evs[i].in;
    pthread_mutex_lock(&pr->mu);
    if (pr->tail)
        pr->tail->next = ch;
    else
        pr->head = ch;
    pr->tail = ch;
    if (nev == 0) {
        ch->done = true;
        pthread_cond_broadcast(&pr->cv);
    }
    pthread_mutex_unlock(&pr->mu);
    if (nev == 0)
        return 0;
    int rc = log_writer_submit(w, &ch->req, true);
    if (rc) { /* never queued: answer it here */
        ch->req.rc = rc;
        chunk_done(&ch->req);
    }
    return rc;
}

/* Parses one line into the chunk. */
static void chunk_add(struct chunk *ch, struct ingest *ing, unsigned long no, const char *p,
                      size_t n)
{
    struct line *ln = &ch->lines[ch->nlines++];
    struct cairn_error e;
    ln->no = no;
    ln->ev = -1;
    ln->err = NULL;
    cairn_error_clear(&e);
    int rc = n == SIZE_MAX
                 ? cairn_error_set(&e, "too_large", "", "line is over the %u-byte limit",
                                   (unsigned)CAIRN_LINE_MAX)
                 : ingest_parse_json(ing, p, n, "cli", cairn_now_ns(), &ch->evs[ch->nev], &e);
    if (rc == 0) {
        ln->ev = (int)ch->nev++;
        return;
    }
    if (!e.code)
        cairn_error_set(&e, "internal", "", "%s", cairn_strerror(rc));
    ln->err = malloc(sizeof *ln->err);
    if (ln->err)
        *ln->err = e;
}

/* Reads, parses and submits every line; returns CLI_FAIL on I/O failure. */
static int append_feed(struct lines *in, struct ingest *ing, struct log_writer *w,
                       struct printer *pr)
{
    struct chunk *ch = NULL;
    unsigned long no = 0;
    const char *p;
    size_t n;
    int rc;
    while ((rc = lines_next(in, &p, &n)) == 1) {
        pthread_mutex_lock(&pr->mu);
        bool failed = pr->failed;
        pthread_mutex_unlock(&pr->mu);
        if (failed) /* a batch could not be written: nothing after it is appended */
            break;
        no++;
        if (n != SIZE_MAX && cairn_blank(p, n))
            continue;
        if (!ch && !(ch = chunk_take(pr)))
            return CLI_FAIL;
        chunk_add(ch, ing, no, p, n);
        if (ch->nlines == CHUNK_LINES || !lines_ready(in)) {
            if (chunk_submit(pr, w, ch))
                return CLI_FAIL;
            ch = NULL;
        }
    }
    if (ch && chunk_submit(pr, w, ch))
        return CLI_FAIL;
    if (rc < 0) {
        cli_fail("io", "reading input failed: %s", cairn_strerror(rc));
        return CLI_FAIL;
    }
    return CLI_OK;
}

int cmd_append(struct cli *c)
{
    const char *file = "-";
    bool engine_types = false;
    for (int i = 0; i < c->argc; i++) {
        if (!strcmp(c->argv[i], "--engine"))
            engine_types = true;
        else if (c->argv[i][0] == '-' && c->argv[i][1]) {
            cli_fail("usage", "append: unknown option %s", c->argv[i]);
            return CLI_FAIL;
        } else
            file = c->argv[i];
    }
    struct lines in = {.fd = strcmp(file, "-") ? open(file, O_RDONLY | O_CLOEXEC) : 0};
    struct engine *eng = NULL;
    struct printer pr = {.status = CLI_OK};
    pthread_t printer;
    int status = CLI_FAIL;

    cairn_buf_init(&in.b, CAIRN_LINE_MAX + READ_BLOCK);
    if (in.fd < 0) {
        cli_fail("io", "cannot open %s: %s", file, strerror(errno));
        goto out;
    }
    if (cli_open_engine(c, engine_types, &eng) || engine_start(eng))
        goto out;
    pthread_mutex_init(&pr.mu, NULL);
    pthread_cond_init(&pr.cv, NULL);
    pthread_create(&printer, NULL, printer_main, &pr);
    int fed = append_feed(&in, engine_ingest(eng), engine_writer(eng), &pr);
    pthread_mutex_lock(&pr.mu);
    pr.eof = true;
    pthread_cond_broadcast(&pr.cv);
    pthread_mutex_unlock(&pr.mu);
    pthread_join(printer, NULL);
    while (pr.spare) {
        struct chunk *ch = pr.spare;
        pr.spare = ch->next;
        chunk_free(ch);
    }
    pthread_mutex_destroy(&pr.mu);
    pthread_cond_destroy(&pr.cv);
    status = fed == CLI_FAIL ? CLI_FAIL : pr.status;
out:
    engine_close(eng); /* drains the writer: every result was printed */
    if (in.fd > 0)
        close(in.fd);
    cairn_buf_deinit(&in.b);
    return status;
}

/* ====================================================================== tail */

struct tail_opts {
    uint64_t from, limit;
    bool follow;
    struct cairn_str tenant, key;
};

/* Prints events from o->from; advances o->from and o->limit. */
static int tail_once(struct log *log, struct tail_opts *o, struct cairn_buf *out)
{
    struct log_snap *s;
    struct log_iter *it;
    struct log_event ev;
    bool entity = o->tenant.p && o->key.p;
    int rc = log_snap_begin(log, &s);
    if (rc)
        return rc;
    if ((rc =
             log_iter_open(s, o->from, entity ? &o->tenant : NULL, entity ? &o->key : NULL, &it))) {
        log_snap_end(s);
        return rc;
    }
    while (o->limit && !(rc = log_iter_next(it, &ev))) {
        cairn_buf_reset(out);
        if ((rc = log_event_json(&ev, out)) || (rc = cairn_buf_putc(out, '\n')))
            break;
        fwrite(out->data, 1, out->len, stdout);
        o->from = ev.seq + 1;
        o->limit--;
    }
    fflush(stdout);
    log_iter_close(it);
    log_snap_end(s);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

int cmd_tail(struct cli *c)
{
    struct tail_opts o = {.from = 1, .limit = UINT64_MAX};
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--from", &v))
            cli_u64("--from", v, &o.from);
        else if (cli_opt(c, &i, "--limit", &v))
            cli_u64("--limit", v, &o.limit);
        else if (cli_opt(c, &i, "--tenant", &v))
            o.tenant = (struct cairn_str){v, strlen(v)};
        else if (cli_opt(c, &i, "--key", &v))
            o.key = (struct cairn_str){v, strlen(v)};
        else if (!strcmp(c->argv[i], "--follow") || !strcmp(c->argv[i], "-f"))
            o.follow = true;
        else {
            cli_fail("usage", "tail: unknown option %s", c->argv[i]);
            return CLI_FAIL;
        }
    }
    if (!o.tenant.p != !o.key.p) {
        cli_fail("usage", "tail: --tenant and --key go together");
        return CLI_FAIL;
    }
    struct log *log;
    if (cli_open_log(c, true, &log))
        return CLI_FAIL;
    struct cairn_buf out;
    cairn_buf_init(&out, CAIRN_PAYLOAD_MAX_CEILING * 8);
    int rc;
    while (!(rc = tail_once(log, &o, &out)) && o.follow && o.limit) {
        struct timespec ts = {0, 100 * 1000000L}; /* poll the head 10 times a second */
        nanosleep(&ts, NULL);
    }
    cairn_buf_deinit(&out);
    log_close(log);
    if (rc)
        cli_fail("read", "reading the log failed: %s", cairn_strerror(rc));
    return rc ? CLI_FAIL : CLI_OK;
}

/* ====================================================================== verify, head */

int cmd_verify(struct cli *c)
{
    uint64_t from = 1, to = 0;
    for (int i = 0; i < c->argc; i++) {
        const char *v;
        if (cli_opt(c, &i, "--from", &v))
            cli_u64("--from", v, &from);
        else if (cli_opt(c, &i, "--to", &v))
            cli_u64("--to", v, &to);
        else {
            cli_fail("usage", "verify: unknown option %s", c->argv[i]);
            return CLI_FAIL;
        }
    }
    struct log *log;
    struct log_verify_report r;
    if (cli_open_log(c, true, &log))
        return CLI_FAIL;
    int rc = log_verify(log, from, to, &r);
    log_close(log);
    if (rc) {
        cli_fail("read", "verify could not read the log: %s", cairn_strerror(rc));
        return CLI_FAIL;
    }
    char hex[2 * LOG_HASH_LEN + 1];
    cairn_hex(r.head, LOG_HASH_LEN, hex);
    if (r.ok) {
        printf("{\"ok\":true,\"events\":%llu,\"head\":\"%s\"}\n", (unsigned long long)r.events,
               hex);
        return CLI_OK;
    }
    printf("{\"ok\":false,\"seq\":%llu,\"reason\":\"%s\",\"events_verified\":%llu}\n",
           (unsigned long long)r.bad_seq, r.reason, (unsigned long long)r.events);
    return CLI_UNVERIFIED;
}

int cmd_head(struct cli *c)
{
    struct log *log;
    uint64_t seq;
    uint8_t hash[LOG_HASH_LEN];
    char hex[2 * LOG_HASH_LEN + 1];
    if (c->argc) {
        cli_fail("usage", "head takes no arguments");
        return CLI_FAIL;
    }
    if (cli_open_log(c, true, &log))
        return CLI_FAIL;
    int rc = log_head(log, &seq, hash);
    log_close(log);
    if (rc) {
        cli_fail("read", "reading the head failed: %s", cairn_strerror(rc));
        return CLI_FAIL;
    }
    cairn_hex(hash, LOG_HASH_LEN, hex);
    printf("{\"seq\":%llu,\"hash\":\"%s\"}\n", (unsigned long long)seq, hex);
    return CLI_OK;
}
