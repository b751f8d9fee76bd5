/*
 * gen_workload.c — a seeded generator of mixed `cairn append --engine`
 * input for the determinism and exactly-once tests.
 *
 *   gen_workload --seed S --count N [--all-ids] [--controls SCHEMA_DIR]
 *
 * prints N NDJSON lines: the six producer types (telemetry, location,
 * order, payment, metric, discovery) and engine ticks, with what makes
 * replay interesting rather than what makes it fast:
 *
 *  - out-of-order event times: about one device event in eight is late,
 *    some by more than the offline threshold, some before the device was
 *    first seen; other types are late now and then too;
 *  - gaps in event time longer than the devices' offline_after (300 s), and
 *    a pool of rarely seen devices, so ticks mark devices offline and later
 *    events bring them back (device.offline / device.online);
 *  - bad order transitions: steps out of order, steps after delivery or
 *    cancellation, steps of orders that were never created;
 *  - retries: an earlier line sent again verbatim (deduplicated by its id);
 *  - both time forms (RFC 3339 and integer nanoseconds), inputs with and
 *    without an idempotency id (--all-ids: every line has one, so a
 *    producer may resend a whole file after a crash), telemetry with more
 *    readings than the device view keeps;
 *  - with --controls: the control inputs of the handlers (geofence.define,
 *    rule.define, alarm.define, …) — every valid example payload of
 *    SCHEMA_DIR/examples/<type>.json whose type is not one of the above —
 *    for every tenant at the start, the `*.delete` and `*.ack` ones at 60 %
 *    of the way, the others again at 80 %; and producer data those
 *    examples look at (trucks, couriers and escorts near the example
 *    fences, the example alarms' metrics, resources of the example
 *    rules), so geofence, compliance and alert handlers have work to do.
 *    The lines are extra: N + 2 x tenants x examples in all.
 *
 * The same seed prints the same bytes everywhere: no wall clock, and every
 * number is printed from integers (no float formatting, no locale).
 */
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS 1000000000LL
#define MS 1000000LL
#define T0 (1795255200LL * NS) /* 2026-11-21T10:00:00Z */
#define LINE_MAX_BYTES 16384
#define TENANTS 3
#define HOT_DEVICES 120
#define COLD_DEVICES 1500
#define ORDER_SLOTS 60
#define RETRY_RING 64
#define CONTROLS_MAX 256

static const char *const tenants[TENANTS] = {"acme", "globex", "initech"};

struct order_slot {
    unsigned no, stage; /* stage: index into order_steps; 0 = not created yet */
};

/* A control input from the schema examples: type and compact JSON payload. */
struct control {
    char type[CAIRN_TYPE_MAX + 1];
    char *payload;
    bool late; /* *.delete, *.ack: sent at 60 % of the way */
};

struct gen {
    uint64_t rng;
    uint64_t seed;
    unsigned long line;
    int64_t clock;
    bool all_ids;
    unsigned next_order;
    struct order_slot orders[TENANTS][ORDER_SLOTS];
    char ring[RETRY_RING][LINE_MAX_BYTES]; /* recent lines with an id, for retries */
    unsigned nring;
    struct control controls[CONTROLS_MAX];
    unsigned ncontrols;
};

/* A line being built; an overflow is a bug in this file, so it aborts. */
struct out {
    char p[LINE_MAX_BYTES];
    size_t n;
};

/* ====================================================================== randomness */

static uint64_t rnd(struct gen *g)
{
    uint64_t z = (g->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned below(struct gen *g, unsigned n)
{
    return (unsigned)(((rnd(g) >> 32) * (uint64_t)n) >> 32);
}

static long range(struct gen *g, long lo, long hi)
{
    return lo + (long)below(g, (unsigned)(hi - lo + 1));
}

/* True with probability num / den. */
static bool chance(struct gen *g, unsigned num, unsigned den)
{
    return below(g, den) < num;
}

#define PICK(g, list) (list)[below(g, sizeof(list) / sizeof *(list))]

/* ====================================================================== output */

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->n, sizeof o->p - o->n, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof o->p - o->n) {
        fprintf(stderr, "gen_workload: line %s… over %d bytes\n", o->p, LINE_MAX_BYTES);
        exit(2);
    }
    o->n += (size_t)n;
}

/* A decimal with `dec` fraction digits from an integer: (-1234, 2) -> -12.34 */
static void put_fixed(struct out *o, long v, int dec)
{
    long scale = 1;
    for (int i = 0; i < dec; i++)
        scale *= 10;
    unsigned long a = v < 0 ? (unsigned long)-v : (unsigned long)v;
    put(o, "%s%lu.%0*lu", v < 0 ? "-" : "", a / (unsigned long)scale, dec,
        a % (unsigned long)scale);
}

/* Event time in one of the two accepted forms. */
static void put_time(struct gen *g, struct out *o, int64_t t)
{
    if (chance(g, 1, 2)) {
        put(o, "%lld", (long long)t);
        return;
    }
    char s[40];
    cairn_time_format(t, s, sizeof s);
    put(o, "\"%s\"", s);
}

/* The envelope up to and including "payload": */
static void head(struct gen *g, struct out *o, const char *type, const char *tenant, int64_t t,
                 const char *id)
{
    put(o, "{\"type\":\"%s\",\"tenant\":\"%s\",", type, tenant);
    if (id)
        put(o, "\"id\":\"%s\",", id);
    else if (g->all_ids || chance(g, 4, 5))
        put(o, "\"id\":\"g%llu-%lu\",", (unsigned long long)g->seed, g->line);
    put(o, "\"time\":");
    put_time(g, o, t);
    put(o, ",\"payload\":");
}

/* Event time of a producer input: mostly now, sometimes late. */
static int64_t event_time(struct gen *g, unsigned late_per_100)
{
    if (!chance(g, late_per_100, 100))
        return g->clock;
    /* Late by up to 10 minutes: beyond offline_after, sometimes before a
     * device's first event. */
    return g->clock - range(g, 1, 600000) * MS;
}

/* ====================================================================== payloads */

/* Fleets whose names the example fences select (truck-*, courier-*,
 * escort-*), each around one place: lat/lon in millionths of a degree. */
static const struct fleet {
    const char *prefix;
    long lat, lon, spread;
} fleets[] = {
    {"truck-", 52520000, 13410000, 25000},  /* the Berlin depot fence */
    {"courier-", 48856600, 2352200, 4000},  /* the hq circle, 250 m */
    {"escort-", 52520000, 13410000, 25000}, /* roaming around the trucks */
};
#define FLEET_DEVICES 12

/* A device: *fleet is set for fleet devices (else NULL). */
static void device_name(struct gen *g, char *out, size_t cap, const struct fleet **fleet)
{
    *fleet = NULL;
    if (g->ncontrols && chance(g, 1, 6)) {
        *fleet = &fleets[below(g, sizeof fleets / sizeof *fleets)];
        snprintf(out, cap, "%s%02u", (*fleet)->prefix, below(g, FLEET_DEVICES));
    } else if (chance(g, 1, 4)) {
        snprintf(out, cap, "dev-c%04u", below(g, COLD_DEVICES));
    } else {
        snprintf(out, cap, "dev-h%03u", below(g, HOT_DEVICES));
    }
}

static void gen_telemetry(struct gen *g, struct out *o, const char *tenant)
{
    static const char *const kinds[] = {"status",    "reading",      "reading",
                                        "heartbeat", "alert.tamper", "boot"};
    static const char *const status[] = {"online", "offline", "degraded", "maintenance"};
    char dev[32];
    const struct fleet *fleet;
    device_name(g, dev, sizeof dev, &fleet);
    head(g, o, "telemetry", tenant, event_time(g, 12), NULL);
    const char *kind = PICK(g, kinds);
    put(o, "{\"device_id\":\"%s\",\"event_type\":\"%s\"", dev, kind);
    if (!strcmp(kind, "status"))
        put(o, ",\"status\":\"%s\"", PICK(g, status));
    if (chance(g, 2, 3)) {
        put(o, ",\"battery\":");
        put_fixed(o, range(g, 0, 1000), 1);
    }
    if (!strcmp(kind, "reading")) {
        put(o, ",\"data\":{\"temperature_c\":");
        put_fixed(o, range(g, -3000, 4500), 2);
        put(o, ",\"humidity\":%ld,\"door_open\":%s", range(g, 0, 100),
            chance(g, 1, 10) ? "true" : "false");
        if (chance(g, 1, 20)) /* more keys than the view keeps (READINGS_MAX) */
            for (int i = 0; i < 80; i++)
                put(o, ",\"r%02d\":%ld", i, range(g, -50, 50));
        put(o, "}");
    } else if (!strcmp(kind, "boot")) {
        put(o, ",\"data\":{\"firmware\":\"2.%u.%u\",\"uptime_s\":0}", below(g, 6), below(g, 10));
    }
    put(o, "}");
}

static void gen_location(struct gen *g, struct out *o, const char *tenant)
{
    char dev[32];
    const struct fleet *f;
    device_name(g, dev, sizeof dev, &f);
    head(g, o, "location", tenant, event_time(g, 12), NULL);
    put(o, "{\"device_id\":\"%s\",\"lat\":", dev);
    put_fixed(o, f ? f->lat + range(g, -f->spread, f->spread) : range(g, -90000000, 90000000), 6);
    put(o, ",\"lon\":");
    put_fixed(o, f ? f->lon + range(g, -f->spread, f->spread) : range(g, -180000000, 180000000), 6);
    if (chance(g, 1, 2)) {
        put(o, ",\"alt\":");
        put_fixed(o, range(g, -100, 30000), 1);
    }
    if (chance(g, 2, 3)) {
        put(o, ",\"accuracy\":");
        put_fixed(o, range(g, 0, 5000), 1);
    }
    if (chance(g, 2, 3)) {
        put(o, ",\"speed\":");
        put_fixed(o, range(g, 0, 400), 1);
    }
    if (chance(g, 1, 2)) {
        put(o, ",\"heading\":");
        put_fixed(o, range(g, 0, 3599), 1);
    }
    put(o, "}");
}

static const char *const order_steps[] = {"order.created",   "order.confirmed",  "order.assigned",
                                          "order.picked_up", "order.in_transit", "order.delivered"};
#define ORDER_STAGES 6

/* Mostly the next step of a slot's order; one in five a bad transition. */
static void gen_order(struct gen *g, struct out *o, unsigned t)
{
    static const char *const any[] = {"order.created",   "order.confirmed",  "order.assigned",
                                      "order.picked_up", "order.in_transit", "order.delivered",
                                      "order.cancelled", "order.updated"};
    struct order_slot *s = &g->orders[t][below(g, ORDER_SLOTS)];
    const char *step;
    unsigned no = s->no;
    if (chance(g, 1, 30)) { /* an order nobody created */
        no = 900000 + below(g, 1000);
        step = PICK(g, any);
    } else if (chance(g, 1, 5)) { /* out of order, after the end, twice, … */
        step = PICK(g, any);
    } else if (s->stage == ORDER_STAGES || chance(g, 1, 25)) {
        step = s->stage == ORDER_STAGES ? "order.created" : "order.cancelled";
        if (s->stage == ORDER_STAGES) { /* a new order takes the slot */
            s->no = no = g->next_order++;
            s->stage = 1;
        } else {
            s->stage = ORDER_STAGES;
        }
    } else {
        step = order_steps[s->stage];
        s->stage++;
    }
    head(g, o, "order", tenants[t], event_time(g, 5), NULL);
    put(o, "{\"order_id\":\"ord-%06u\",\"event_type\":\"%s\"", no, step);
    if (!strcmp(step, "order.created")) {
        long total = 0;
        unsigned n = 1 + below(g, 3);
        put(o, ",\"customer_id\":\"cus_%04u\",\"status\":\"pending\",\"items\":[", below(g, 500));
        for (unsigned i = 0; i < n; i++) {
            long q = range(g, 1, 5), cents = range(g, 99, 20000);
            total += q * cents;
            put(o, "%s{\"product_id\":\"sku-%04u\",\"quantity\":%ld,\"price\":", i ? "," : "",
                below(g, 3000), q);
            put_fixed(o, cents, 2);
            put(o, "}");
        }
        put(o, "],\"total_amount\":");
        put_fixed(o, total, 2);
        put(o, ",\"destination\":{\"lat\":");
        put_fixed(o, range(g, 52300000, 52700000), 6);
        put(o, ",\"lon\":");
        put_fixed(o, range(g, 13100000, 13700000), 6);
        put(o, "},\"metadata\":{\"channel\":\"%s\"}", chance(g, 1, 2) ? "web" : "app");
    } else if (!strcmp(step, "order.assigned") || chance(g, 1, 4)) {
        put(o, ",\"assigned_device_id\":\"dev-h%03u\"", below(g, HOT_DEVICES));
    }
    if (!strcmp(step, "order.updated")) {
        put(o, ",\"total_amount\":");
        put_fixed(o, range(g, 0, 100000), 2);
    }
    if (!strcmp(step, "order.cancelled"))
        put(o, ",\"status\":\"cancelled\",\"metadata\":{\"reason\":\"customer_request\"}");
    put(o, "}");
}

static void gen_payment(struct gen *g, struct out *o, const char *tenant)
{
    static const char *const types[] = {"invoice.paid",
                                        "invoice.payment_failed",
                                        "customer.subscription.created",
                                        "customer.subscription.updated",
                                        "customer.subscription.deleted",
                                        "charge.refunded",
                                        "payment_intent.succeeded"};
    static const char *const sub_status[] = {"active", "past_due", "canceled", "trialing"};
    char evt[64];
    snprintf(evt, sizeof evt, "evt_%llux%lu", (unsigned long long)g->seed, g->line);
    int64_t t = event_time(g, 5);
    const char *type = PICK(g, types);
    unsigned cus = below(g, 300);
    head(g, o, "payment", tenant, t, evt);
    put(o, "{\"id\":\"%s\",\"object\":\"event\",\"type\":\"%s\",\"created\":%lld,", evt, type,
        (long long)(t / NS));
    put(o, "\"livemode\":%s,\"data\":{\"object\":", chance(g, 9, 10) ? "true" : "false");
    if (!strncmp(type, "invoice.", 8))
        put(o,
            "{\"id\":\"in_%06u\",\"object\":\"invoice\",\"customer\":\"cus_%04u\","
            "\"amount_due\":%ld,\"currency\":\"eur\",\"attempt_count\":%u,"
            "\"subscription\":\"sub_%04u\"}}",
            below(g, 100000), cus, range(g, 100, 50000), 1 + below(g, 4), cus);
    else if (!strncmp(type, "customer.", 9))
        put(o,
            "{\"id\":\"sub_%04u\",\"object\":\"subscription\",\"customer\":\"cus_%04u\","
            "\"status\":\"%s\"},\"previous_attributes\":{\"status\":\"%s\"}}",
            cus, cus, PICK(g, sub_status), PICK(g, sub_status));
    else if (!strncmp(type, "charge.", 7))
        put(o,
            "{\"id\":\"ch_%06u\",\"object\":\"charge\",\"customer\":\"cus_%04u\","
            "\"amount_refunded\":%ld}}",
            below(g, 100000), cus, range(g, 1, 5000));
    else
        put(o,
            "{\"id\":\"pi_%06u\",\"object\":\"payment_intent\",\"customer\":\"cus_%04u\","
            "\"amount\":%ld,\"currency\":\"usd\",\"status\":\"succeeded\"}}",
            below(g, 100000), cus, range(g, 100, 50000));
    put(o, "}");
}

static void gen_metric(struct gen *g, struct out *o, const char *tenant)
{
    static const char *const names[] = {"http_requests_total", "node_temperature_celsius",
                                        "queue_depth", "job:errors:rate5m"};
    static const char *const jobs[] = {"api", "worker", "edge"};
    head(g, o, "metric", tenant, event_time(g, 5), NULL);
    if (g->ncontrols && chance(g, 1, 3)) { /* what the example alarms watch */
        static const char *const watched[] = {
            "\"node_cpu_usage\",\"labels\":{\"instance\":\"gw-1\"}",
            "\"node_filesystem_free_bytes\",\"labels\":{\"mountpoint\":\"/\"}",
            "\"http_requests_total\",\"labels\":{\"job\":\"api\"}"};
        unsigned w = below(g, 3);
        put(o, "{\"name\":%s,\"value\":", watched[w]);
        if (w == 0)
            put_fixed(o, range(g, 0, 1000), 3); /* around the 0.9 threshold */
        else
            put(o, "%ld", w == 1 ? range(g, 0, 3000000000) : range(g, 0, 3));
        put(o, "}");
        return;
    }
    put(o, "{\"name\":\"%s\"", PICK(g, names));
    if (chance(g, 4, 5))
        put(o, ",\"labels\":{\"job\":\"%s\",\"instance\":\"10.0.0.%u:9100\"}", PICK(g, jobs),
            below(g, 8));
    put(o, ",\"value\":");
    if (chance(g, 1, 2))
        put(o, "%ld", range(g, -1000, 1000000));
    else
        put_fixed(o, range(g, -100000, 100000), 3);
    put(o, "}");
}

static void gen_discovery(struct gen *g, struct out *o, const char *tenant)
{
    static const char *const regions[] = {"eu-west-1", "us-east-1", "global"};
    static const char *const types[] = {"aws.s3.bucket", "aws.ec2.security_group",
                                        "aws.iam.role",  "gcp.compute.instance",
                                        "aws.ec2.vpc",   "aws.rds.db_instance"};
    head(g, o, "discovery", tenant, event_time(g, 5), NULL);
    put(o, "{\"account_id\":\"%012u\",\"region\":\"%s\",\"scan_id\":\"scan-%u\",\"complete\":%s,",
        100000 + below(g, 3), PICK(g, regions), below(g, 50), chance(g, 1, 3) ? "true" : "false");
    put(o, "\"resources\":[");
    unsigned n = below(g, 5);
    for (unsigned i = 0; i < n; i++) {
        const char *type = PICK(g, types);
        put(o, "%s{\"resource_id\":\"r-%04u\",\"resource_type\":\"%s\"", i ? "," : "",
            below(g, 200), type);
        if (chance(g, 3, 4)) {
            put(o,
                ",\"attributes\":{\"public\":%s,\"encryption\":{\"enabled\":%s},"
                "\"ports\":[22,%u]",
                chance(g, 1, 5) ? "true" : "false", chance(g, 3, 4) ? "true" : "false",
                below(g, 65535));
            /* What the example rules read: sometimes compliant, sometimes not. */
            if (!strcmp(type, "aws.s3.bucket") && chance(g, 2, 3))
                put(o,
                    ",\"PublicAccessBlockConfiguration\":{\"BlockPublicAcls\":%s,"
                    "\"RestrictPublicBuckets\":%s}",
                    chance(g, 2, 3) ? "true" : "false", chance(g, 3, 4) ? "true" : "false");
            if (!strcmp(type, "aws.ec2.vpc") && chance(g, 1, 2))
                put(o, ",\"FlowLogs\":[{\"FlowLogId\":\"fl-%u\"}]", below(g, 100));
            if (!strcmp(type, "aws.rds.db_instance"))
                put(o, ",\"Tags\":[{\"Key\":\"%s\",\"Value\":\"x\"}]",
                    chance(g, 1, 2) ? "owner" : "env");
            put(o, "}");
        }
        if (chance(g, 1, 2))
            put(o, ",\"tags\":{\"env\":\"%s\",\"owner\":\"team-%u\"}",
                chance(g, 1, 2) ? "prod" : "dev", below(g, 9));
        put(o, "}");
    }
    put(o, "]}");
}

static void gen_tick(struct gen *g, struct out *o)
{
    put(o, "{\"type\":\"tick\",\"tenant\":\"_engine\",\"id\":\"tick-%llu-%lu\",\"time\":",
        (unsigned long long)g->seed, g->line);
    put_time(g, o, g->clock);
    put(o, ",\"payload\":{\"interval_ms\":1000}");
}

/* ====================================================================== control inputs */

static bool producer_type(const char *t)
{
    static const char *const known[] = {"telemetry", "location",  "order", "payment",
                                        "metric",    "discovery", "tick"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(t, known[i]))
            return true;
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds every valid example of one control type. */
static void load_examples(struct gen *g, const char *path, const char *type)
{
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je), *v;
    size_t i;
    if (!json_is_array(json_object_get(doc, "valid"))) {
        fprintf(stderr, "gen_workload: %s: no \"valid\" array (%s)\n", path, je.text);
        exit(2);
    }
    json_array_foreach(json_object_get(doc, "valid"), i, v)
    {
        if (g->ncontrols == CONTROLS_MAX) {
            fprintf(stderr, "gen_workload: more than %d control examples\n", CONTROLS_MAX);
            exit(2);
        }
        struct control *c = &g->controls[g->ncontrols++];
        snprintf(c->type, sizeof c->type, "%s", type);
        c->payload = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII);
        size_t n = strlen(type);
        c->late =
            (n > 7 && !strcmp(type + n - 7, ".delete")) || (n > 4 && !strcmp(type + n - 4, ".ack"));
        if (!c->payload)
            exit(2);
    }
    json_decref(doc);
}

/* Reads DIR/examples/<type>.json for every control type, in name order. */
static void load_controls(struct gen *g, const char *dir)
{
    char path[4096], *names[CONTROLS_MAX];
    size_t n = 0;
    snprintf(path, sizeof path, "%s/examples", dir);
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "gen_workload: cannot read %s: %s\n", path, strerror(errno));
        exit(2);
    }
    for (struct dirent *de; (de = readdir(d)) && n < CONTROLS_MAX;) {
        size_t len = strlen(de->d_name);
        if (len > 5 && !strcmp(de->d_name + len - 5, ".json"))
            names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str); /* readdir order is not stable */
    for (size_t i = 0; i < n; i++) {
        char type[CAIRN_TYPE_MAX + 1];
        snprintf(type, sizeof type, "%.*s", (int)(strlen(names[i]) - 5), names[i]);
        snprintf(path, sizeof path, "%s/examples/%s", dir, names[i]);
        if (!producer_type(type))
            load_examples(g, path, type);
        free(names[i]);
    }
}

/* Prints the controls of one phase (late or not) for every tenant. */
static void emit_controls(struct gen *g, bool late)
{
    for (unsigned t = 0; t < TENANTS; t++)
        for (unsigned i = 0; i < g->ncontrols; i++) {
            const struct control *c = &g->controls[i];
            if (c->late != late)
                continue;
            printf("{\"type\":\"%s\",\"tenant\":\"%s\",\"id\":\"ctl-%llu-%lu-%u-%u\","
                   "\"time\":%lld,\"payload\":%s}\n",
                   c->type, tenants[t], (unsigned long long)g->seed, g->line, t, i,
                   (long long)g->clock, c->payload);
        }
}

/* ====================================================================== the mix */

static void next_line(struct gen *g, struct out *o)
{
    o->n = 0;
    o->p[0] = '\0';
    g->line++;
    /* 1..100 ms between inputs; now and then a silence longer than the
     * devices' offline_after, always followed by a tick. */
    g->clock += range(g, 1, 100) * MS;
    bool gap = chance(g, 1, 1500);
    if (gap)
        g->clock += range(g, 301, 900) * NS;
    unsigned r = below(g, 1000);
    if (gap || r < 8) {
        gen_tick(g, o);
    } else if (r < 35 && g->nring) { /* a retry of a recent input */
        put(o, "%s", g->ring[below(g, g->nring < RETRY_RING ? g->nring : RETRY_RING)]);
        return;
    } else if (r < 330) {
        gen_telemetry(g, o, tenants[below(g, TENANTS)]);
    } else if (r < 560) {
        gen_location(g, o, tenants[below(g, TENANTS)]);
    } else if (r < 720) {
        gen_order(g, o, below(g, TENANTS));
    } else if (r < 820) {
        gen_payment(g, o, tenants[below(g, TENANTS)]);
    } else if (r < 960) {
        gen_metric(g, o, tenants[below(g, TENANTS)]);
    } else {
        gen_discovery(g, o, tenants[below(g, TENANTS)]);
    }
    put(o, "}"); /* the envelope */
    if (strstr(o->p, "\"id\":")) {
        memcpy(g->ring[g->nring % RETRY_RING], o->p, o->n + 1);
        g->nring++;
    }
}

static bool arg_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    static struct gen g; /* the retry ring is 1 MiB: not on the stack */
    uint64_t seed = 1, count = 1000;
    const char *controls = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc && arg_u64(argv[i + 1], &seed))
            i++;
        else if (!strcmp(argv[i], "--count") && i + 1 < argc && arg_u64(argv[i + 1], &count))
            i++;
        else if (!strcmp(argv[i], "--all-ids"))
            g.all_ids = true;
        else if (!strcmp(argv[i], "--controls") && i + 1 < argc)
            controls = argv[++i];
        else {
            fprintf(stderr, "usage: gen_workload [--seed S] [--count N] [--all-ids] "
                            "[--controls SCHEMA_DIR]\n");
            return 2;
        }
    }
    g.seed = seed;
    g.rng = seed * 0x2545f4914f6cdd1dull;
    g.clock = T0;
    g.next_order = 1000;
    for (unsigned t = 0; t < TENANTS; t++)
        for (unsigned s = 0; s < ORDER_SLOTS; s++)
            g.orders[t][s] = (struct order_slot){.no = g.next_order++, .stage = 0};
    if (controls)
        load_controls(&g, controls);
    static struct out o;
    for (uint64_t i = 0; i < count; i++) {
        if (g.ncontrols && (i == 0 || i == count * 4 / 5))
            emit_controls(&g, false);
        if (g.ncontrols && i == count * 3 / 5)
            emit_controls(&g, true);
        next_line(&g, &o);
        fputs(o.p, stdout);
        fputc('\n', stdout);
    }
    for (unsigned i = 0; i < g.ncontrols; i++)
        free(g.controls[i].payload);
    return fflush(stdout) ? 1 : 0;
}
