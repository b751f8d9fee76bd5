/*
 * metrics.c — GET /metrics in the Prometheus text format (0.0.4).
 *
 * Counters live where they are counted: the writer (batches, commits), the
 * engine (per-handler apply time), the API (requests, ingest latency,
 * rejections). This file only reads and renders them.
 */
#include "api_int.h"

#include <stdio.h>
#include <string.h>

/* Ingest latency buckets, seconds. */
static const double lat_bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                    0.05,   0.1,   0.2,   0.5,   1.0};
#define LAT_BUCKETS (sizeof lat_bounds / sizeof *lat_bounds)

void metrics_http(struct api *a, int route, int status)
{
    if (route < 0 || route >= API_ROUTE_NAMES_MAX)
        route = API_ROUTE_NAMES_MAX - 1; /* "none": unrouted requests */
    int cls = status / 100;
    a->http_counts[route][cls >= 1 && cls <= 5 ? cls : 0]++;
}

void metrics_ingested(struct api *a, const struct cairn_str *type, int64_t latency_ns)
{
    size_t i;
    for (i = 0; i < API_METRIC_TYPES_MAX && a->ingested_type[i][0]; i++)
        if (strlen(a->ingested_type[i]) == type->n &&
            !memcmp(a->ingested_type[i], type->p, type->n))
            break;
    if (i == API_METRIC_TYPES_MAX)
        return; /* more types than tracked: counted in the writer totals only */
    if (!a->ingested_type[i][0])
        snprintf(a->ingested_type[i], sizeof a->ingested_type[i], "%.*s", (int)type->n, type->p);
    a->ingested[i]++;
    double s = (double)latency_ns / 1e9;
    a->ingest_latency_sum[i] += s;
    for (size_t b = 0; b < LAT_BUCKETS; b++)
        if (s <= lat_bounds[b])
            a->ingest_latency[i][b]++;
}

void metrics_rejected(struct api *a, const char *code)
{
    size_t i;
    for (i = 0; i < 32 && a->rejected_code[i][0]; i++)
        if (!strcmp(a->rejected_code[i], code))
            break;
    if (i == 32)
        i = 31; /* the last slot collects the overflow */
    if (!a->rejected_code[i][0])
        snprintf(a->rejected_code[i], sizeof a->rejected_code[i], "%s", code);
    a->rejected[i]++;
}

static void gauge(struct cairn_buf *b, const char *name, const char *help, uint64_t v)
{
    cairn_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name, name,
                     (unsigned long long)v);
}

static void render_writer(struct api *a, struct cairn_buf *b)
{
    struct log_writer_stats st;
    log_writer_stats(engine_writer(a->eng), &st);
    cairn_buf_printf(b,
                     "# HELP cairn_log_appended_events_total Events appended by this process.\n"
                     "# TYPE cairn_log_appended_events_total counter\n"
                     "cairn_log_appended_events_total %llu\n"
                     "# HELP cairn_log_duplicates_total Inputs answered as duplicates.\n"
                     "# TYPE cairn_log_duplicates_total counter\n"
                     "cairn_log_duplicates_total %llu\n"
                     "# HELP cairn_log_conflicts_total Inputs refused by expected_seq.\n"
                     "# TYPE cairn_log_conflicts_total counter\n"
                     "cairn_log_conflicts_total %llu\n",
                     (unsigned long long)st.events, (unsigned long long)st.duplicates,
                     (unsigned long long)st.conflicts);
    cairn_buf_puts(b, "# HELP cairn_log_batch_events Events per group commit.\n"
                      "# TYPE cairn_log_batch_events histogram\n");
    for (unsigned i = 0; i < LOG_BATCH_BUCKETS; i++)
        cairn_buf_printf(b, "cairn_log_batch_events_bucket{le=\"%u\"} %llu\n", 1u << i,
                         (unsigned long long)st.batch_hist[i]);
    cairn_buf_printf(b,
                     "cairn_log_batch_events_bucket{le=\"+Inf\"} %llu\n"
                     "cairn_log_batch_events_sum %llu\ncairn_log_batch_events_count %llu\n",
                     (unsigned long long)st.batches, (unsigned long long)st.events,
                     (unsigned long long)st.batches);
    cairn_buf_puts(b, "# HELP cairn_log_commit_seconds Durable commit latency of a batch.\n"
                      "# TYPE cairn_log_commit_seconds histogram\n");
    for (unsigned i = 0; i < LOG_COMMIT_BUCKETS; i++)
        cairn_buf_printf(b, "cairn_log_commit_seconds_bucket{le=\"%g\"} %llu\n",
                         0.0001 * (double)(1u << i), (unsigned long long)st.commit_hist[i]);
    cairn_buf_printf(b,
                     "cairn_log_commit_seconds_bucket{le=\"+Inf\"} %llu\n"
                     "cairn_log_commit_seconds_sum %.6f\ncairn_log_commit_seconds_count %llu\n",
                     (unsigned long long)st.commit_hist[LOG_COMMIT_BUCKETS],
                     (double)st.commit_ns_total / 1e9, (unsigned long long)st.batches);
}

static void render_ingest(struct api *a, struct cairn_buf *b)
{
    cairn_buf_puts(b, "# HELP cairn_ingest_events_total Events accepted over HTTP, by type.\n"
                      "# TYPE cairn_ingest_events_total counter\n");
    for (size_t i = 0; i < API_METRIC_TYPES_MAX && a->ingested_type[i][0]; i++)
        cairn_buf_printf(b, "cairn_ingest_events_total{type=\"%s\",source=\"http\"} %llu\n",
                         a->ingested_type[i], (unsigned long long)a->ingested[i]);
    cairn_buf_puts(b, "# HELP cairn_ingest_latency_seconds Request received to durable ack.\n"
                      "# TYPE cairn_ingest_latency_seconds histogram\n");
    for (size_t i = 0; i < API_METRIC_TYPES_MAX && a->ingested_type[i][0]; i++) {
        const char *t = a->ingested_type[i];
        for (size_t k = 0; k < LAT_BUCKETS; k++)
            cairn_buf_printf(b,
                             "cairn_ingest_latency_seconds_bucket{type=\"%s\",source=\"http\","
                             "le=\"%g\"} %llu\n",
                             t, lat_bounds[k], (unsigned long long)a->ingest_latency[i][k]);
        cairn_buf_printf(b,
                         "cairn_ingest_latency_seconds_bucket{type=\"%s\",source=\"http\","
                         "le=\"+Inf\"} %llu\n"
                         "cairn_ingest_latency_seconds_sum{type=\"%s\",source=\"http\"} %.6f\n"
                         "cairn_ingest_latency_seconds_count{type=\"%s\",source=\"http\"} %llu\n",
                         t, (unsigned long long)a->ingested[i], t, a->ingest_latency_sum[i], t,
                         (unsigned long long)a->ingested[i]);
    }
    cairn_buf_puts(b, "# HELP cairn_rejected_total Refused inputs and requests, by reason.\n"
                      "# TYPE cairn_rejected_total counter\n");
    for (size_t i = 0; i < 32 && a->rejected_code[i][0]; i++)
        cairn_buf_printf(b, "cairn_rejected_total{reason=\"%s\"} %llu\n", a->rejected_code[i],
                         (unsigned long long)a->rejected[i]);
}

static void render_engine(struct api *a, struct cairn_buf *b)
{
    struct engine_handler_stats hs[64];
    size_t n = engine_handler_stats(a->eng, hs, 64);
    cairn_buf_puts(b, "# HELP cairn_handler_events_total Events given to each handler.\n"
                      "# TYPE cairn_handler_events_total counter\n");
    for (size_t i = 0; i < n; i++)
        cairn_buf_printf(b, "cairn_handler_events_total{handler=\"%s\"} %llu\n", hs[i].name,
                         (unsigned long long)hs[i].applied);
    cairn_buf_puts(b, "# HELP cairn_handler_apply_seconds_total Time spent in each handler.\n"
                      "# TYPE cairn_handler_apply_seconds_total counter\n");
    for (size_t i = 0; i < n; i++)
        cairn_buf_printf(b, "cairn_handler_apply_seconds_total{handler=\"%s\"} %.6f\n", hs[i].name,
                         (double)hs[i].apply_ns / 1e9);
}

static void render_http(struct api *a, struct cairn_buf *b)
{
    cairn_buf_puts(b, "# HELP cairn_http_requests_total HTTP requests by route and status class.\n"
                      "# TYPE cairn_http_requests_total counter\n");
    for (int r = 0; r < API_ROUTE_NAMES_MAX; r++)
        for (int c = 1; c <= 5; c++)
            if (a->http_counts[r][c])
                cairn_buf_printf(b, "cairn_http_requests_total{route=\"%s\",code=\"%dxx\"} %llu\n",
                                 (size_t)r < routes_count() ? routes_name(r) : "none", c,
                                 (unsigned long long)a->http_counts[r][c]);
    if (a->jwt) {
        uint64_t hits, misses;
        api_jwt_stats(a->jwt, &hits, &misses);
        cairn_buf_printf(b,
                         "# HELP cairn_jwt_cache_total Bearer tokens answered from the cache of "
                         "verified tokens (hit) or verified in full (miss).\n"
                         "# TYPE cairn_jwt_cache_total counter\n"
                         "cairn_jwt_cache_total{result=\"hit\"} %llu\n"
                         "cairn_jwt_cache_total{result=\"miss\"} %llu\n",
                         (unsigned long long)hits, (unsigned long long)misses);
    }
    gauge(b, "cairn_sse_subscribers", "Open SSE subscriptions.", a->nsubs);
    gauge(b, "cairn_http_connections", "Open HTTP connections.", a->nconns);
    gauge(b, "cairn_log_write_failing",
          "1 while ingest writes fail (the last one did: a full disk, say), else 0.",
          a->write_failing);
    cairn_buf_printf(b,
                     "# HELP cairn_log_write_failures_total Ingest requests whose log write "
                     "failed (answered 503).\n"
                     "# TYPE cairn_log_write_failures_total counter\n"
                     "cairn_log_write_failures_total %llu\n",
                     (unsigned long long)a->write_failures);
}

void metrics_render(struct api *a, struct cairn_buf *b)
{
    uint64_t head = 0, cp = (uint64_t)a->applied;
    log_head(engine_log(a->eng), &head, NULL);
    gauge(b, "cairn_log_head_seq", "Seq of the last event in the log.", head);
    gauge(b, "cairn_state_checkpoint_seq", "Last log seq applied to the state.", cp);
    gauge(b, "cairn_state_lag_events", "Events in the log not yet applied.",
          head > cp ? head - cp : 0);
    render_writer(a, b);
    render_ingest(a, b);
    render_engine(a, b);
    render_http(a, b);
}
