/*
 * http_sse.c — bench/http_sse: many Server-Sent Events subscribers on one
 * stream, counting what they receive (bench/http.sh, part 3).
 *
 *   bench/http_sse --port P --token T --subs S --events N
 *                  [--path /v1/streams/NAME] [--timeout SECONDS]
 *
 * Opens S connections to 127.0.0.1:P, subscribes each (GET PATH, Accept:
 * text/event-stream, the bearer token), prints "ready" on stdout once every
 * subscriber got its 200, then counts the events each receives (lines that
 * start with "id:") until every one saw N, or the timeout passed. The
 * events are produced by someone else (the script POSTs them after
 * "ready"). Prints one line:
 *
 *   subs=S events=N delivered=D first_ms=F last_ms=L rate=R complete=0|1
 *
 * with times since "ready" of the first and the last event received and R
 * the events delivered per second over all subscribers between the first
 * event and the last. Subscribing to a stream that already holds the
 * events measures catch-up (the server sends them at once); subscribing
 * before they are appended measures live delivery, bounded by ingest.
 * One thread, epoll, no allocation per event; it reads as fast as the
 * kernel gives, so the server's fan-out is what is measured.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SUBS_MAX 1000
#define READ_BUF (256u << 10)

struct sub {
    int fd;
    bool ready;       /* the status line arrived */
    bool finished;    /* saw every event, or the connection ended */
    bool line_start;  /* the next byte begins a line */
    unsigned matched; /* bytes of "id:" matched at this line start */
    uint64_t events;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void usage(void)
{
    fprintf(stderr, "usage: http_sse --port P --token T --subs S --events N "
                    "[--path /v1/streams/NAME] [--timeout SECONDS]\n");
    exit(2);
}

static long num(const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < min || v > max)
        usage();
    return v;
}

/* Counts lines that start with "id:" (the SSE frames' first line). */
static void scan(struct sub *s, const char *p, size_t n)
{
    static const char id[] = "id:";
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (s->line_start || s->matched) {
            if (ch == id[s->matched]) {
                if (++s->matched == 3) {
                    s->events++;
                    s->matched = 0;
                }
            } else {
                s->matched = 0;
            }
        }
        s->line_start = ch == '\n';
    }
}

static int connect_one(int port, const char *path, const char *token)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    char req[8192];
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        perror("http_sse: connect");
        exit(1);
    }
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                     "Authorization: Bearer %s\r\n\r\n",
                     path, token);
    if (n < 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
        perror("http_sse: write");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv)
{
    int port = 0;
    long subs = 100, events = 0, timeout_s = 60;
    const char *token = NULL, *path = "/v1/streams/subscriptions";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = (int)num(argv[i + 1], 1, 65535);
        else if (!strcmp(argv[i], "--token"))
            token = argv[i + 1];
        else if (!strcmp(argv[i], "--subs"))
            subs = num(argv[i + 1], 1, SUBS_MAX);
        else if (!strcmp(argv[i], "--events"))
            events = num(argv[i + 1], 1, 1L << 40);
        else if (!strcmp(argv[i], "--path"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "--timeout"))
            timeout_s = num(argv[i + 1], 1, 3600);
        else
            usage();
    }
    if (!port || !token || !events || argc % 2 == 0)
        usage();

    static struct sub s[SUBS_MAX];
    static char buf[READ_BUF];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (long i = 0; i < subs; i++) {
        s[i] = (struct sub){.fd = connect_one(port, path, token), .line_start = true};
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, s[i].fd, &ev);
    }

    long ready = 0, done = 0;
    uint64_t delivered = 0;
    double start = now_ms(), t_ready = 0, first = -1, last = 0;
    while (done < subs && now_ms() - start < timeout_s * 1e3) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 100);
        for (int k = 0; k < n; k++) {
            struct sub *sb = &s[evs[k].data.u64];
            ssize_t r = read(sb->fd, buf, sizeof buf);
            if (r <= 0) {
                fprintf(stderr, "http_sse: subscriber %llu: %s after %llu events\n",
                        (unsigned long long)evs[k].data.u64, r ? strerror(errno) : "EOF",
                        (unsigned long long)sb->events);
                epoll_ctl(ep, EPOLL_CTL_DEL, sb->fd, NULL);
                done += !sb->finished;
                sb->finished = true;
                continue;
            }
            if (!sb->ready) {
                if (r < 12 || memcmp(buf, "HTTP/1.1 200", 12)) {
                    fprintf(stderr, "http_sse: subscribing failed: %.*s\n", (int)r, buf);
                    return 1;
                }
                sb->ready = true;
                if (++ready == subs) {
                    t_ready = now_ms();
                    printf("ready\n");
                    fflush(stdout);
                }
            }
            uint64_t before = sb->events;
            scan(sb, buf, (size_t)r);
            delivered += sb->events - before;
            if (sb->events > before) {
                last = now_ms();
                if (first < 0)
                    first = last;
            }
            if (!sb->finished && sb->events >= (uint64_t)events) {
                sb->finished = true;
                done++;
            }
        }
    }
    bool complete = delivered >= (uint64_t)events * (uint64_t)subs;
    if (!t_ready)
        t_ready = start;
    printf("subs=%ld events=%ld delivered=%llu first_ms=%.1f last_ms=%.1f rate=%.0f "
           "complete=%d\n",
           subs, events, (unsigned long long)delivered, first - t_ready, last - t_ready,
           last > first ? (double)delivered / ((last - first) / 1e3) : 0.0, complete);
    return complete ? 0 : 1;
}
