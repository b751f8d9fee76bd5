/*
 * workload.h — a seeded generator of realistic Cairn inputs, for benchmarks.
 *
 * Every input is one JSON object in the envelope `cairn append` and
 * POST /v1/events take:
 *
 *   {"type":"telemetry","tenant":"acme","key"?:…,"id"?:…,"time":"…","payload":{…}}
 *
 * of the six producer types (telemetry, location, order, payment, metric,
 * discovery), in a mix that resembles one busy installation: mostly device
 * traffic, a steady stream of metric samples, order lifecycles, Stripe
 * events and the odd inventory scan. Lines average about 250 bytes.
 *
 * The same seed gives the same bytes on every machine (no wall clock, no
 * locale: numbers are printed from integers), so results of different
 * benchmark runs are comparable.
 */
#ifndef CAIRN_BENCH_WORKLOAD_H
#define CAIRN_BENCH_WORKLOAD_H

#include "common.h"

enum workload_type {
    WL_TELEMETRY,
    WL_LOCATION,
    WL_ORDER,
    WL_PAYMENT,
    WL_METRIC,
    WL_DISCOVERY,
    WL_NTYPES
};

/* Input type names, indexed by enum workload_type (static strings). */
extern const char *const workload_type_names[WL_NTYPES];

struct workload_config {
    uint64_t seed;    /* 0: 1 */
    unsigned tenants; /* 0: 8 (at most 8) */
    unsigned devices; /* devices per tenant; 0: 2000 */
    int64_t start_ns; /* event time of the first input; 0: 2026-11-21T10:00:00Z */
    int64_t step_ns;  /* mean event-time step between inputs, >= 1 ms (0: 1 ms) */
};

struct workload;

int workload_new(struct workload **out, const struct workload_config *cfg);
void workload_free(struct workload *w);

/* Appends the next input as one JSON object (no newline) to out; *type
 * (optional) tells which type it was. CAIRN_ETOOBIG when out is full. */
int workload_next(struct workload *w, struct cairn_buf *out, enum workload_type *type);

/* ====================================================================== corpora */

/* n inputs stored back to back: input i is data.data[off[i] .. off[i+1]). */
struct workload_corpus {
    struct cairn_buf data;
    size_t *off; /* n + 1 entries */
    size_t n;
    uint64_t per_type[WL_NTYPES];
};

/* n inputs as NDJSON: each object followed by '\n' (part of the item). */
int workload_corpus_json(struct workload_corpus *c, const struct workload_config *cfg, size_t n);
/* The same inputs, each JSON object encoded as one msgpack map (the
 * msgpack form of POST /v1/events). e tells which input failed. */
int workload_corpus_msgpack(struct workload_corpus *out, const struct workload_corpus *json,
                            struct cairn_error *e);
void workload_corpus_deinit(struct workload_corpus *c);

#endif
