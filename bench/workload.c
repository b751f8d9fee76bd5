/*
 * workload.c — the seeded input generator (workload.h).
 *
 * Entities are drawn from fixed pools so the keys index sees realistic
 * reuse: a few thousand devices per tenant, a pool of open orders that walk
 * their lifecycle (order.created -> … -> order.delivered, then a new order takes the
 * slot), a few hundred metric series, two cloud accounts per tenant. Ids
 * (idempotency keys) are unique by construction: a counter, mixed so they
 * do not sort in input order (they never do in real traffic either).
 *
 * Numbers are printed from integers ("21.45" is 2145 with two decimals), so
 * the text does not depend on the locale or the libc's float formatting.
 */
#include "workload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const workload_type_names[WL_NTYPES] = {"telemetry", "location", "order",
                                                    "payment",   "metric",   "discovery"};

/* Share of each type, in per mille: device traffic dominates, inventory
 * scans are rare but large. */
static const unsigned type_permille[WL_NTYPES] = {360, 250, 90, 60, 210, 30};

#define TENANTS_MAX 8
#define ORDER_POOL 2048
#define ORDER_STAGES 6
#define SERIES_PER_TENANT 400

static const char *const tenant_names[TENANTS_MAX] = {"acme",          "globex", "initech",
                                                      "umbrella-corp", "hooli",  "stark-industries",
                                                      "wayne-ent",     "tyrell"};

struct order {
    unsigned tenant, stage;
    uint64_t no;
};

/* A device's last position, in millionths of a degree off its city. */
struct pos {
    int32_t lat, lon;
    bool set; /* false: no fix yet */
};

struct workload {
    struct workload_config cfg;
    struct pos *pos; /* per tenant and device: tenant * devices + device */
    uint64_t rng;
    uint64_t seq;  /* inputs generated so far: feeds unique ids */
    int64_t clock; /* event time of the latest input */
    uint64_t next_order;
    struct order orders[ORDER_POOL];
};

/* ====================================================================== randomness */

/* splitmix64: tiny, fast, and good enough for picking fields. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd(struct workload *w)
{
    w->rng += 0x9e3779b97f4a7c15ull;
    return mix64(w->rng);
}

/* Uniform in [0, n). */
static unsigned below(struct workload *w, unsigned n)
{
    return (unsigned)(((rnd(w) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi]. */
static long range(struct workload *w, long lo, long hi)
{
    return lo + (long)below(w, (unsigned)(hi - lo + 1));
}

static const char *pick(struct workload *w, const char *const *list, unsigned n)
{
    return list[below(w, n)];
}

#define PICK(w, list) pick(w, list, sizeof list / sizeof *list)

/* Writes n characters of [0-9A-Za-z] derived from v into out (n <= 24). */
static void base62(uint64_t v, char *out, size_t n)
{
    static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (size_t i = 0; i < n; i++) {
        if (i % 10 == 0)
            v = mix64(v + i);
        out[i] = digits[v % 62];
        v /= 62;
    }
    out[n] = '\0';
}

/* ====================================================================== formatting */

/* A decimal with exactly `dec` fraction digits: fixed(-1234, 2) = "-12.34". */
static int put_fixed(struct cairn_buf *b, long v, int dec)
{
    long scale = 1;
    for (int i = 0; i < dec; i++)
        scale *= 10;
    unsigned long a = v < 0 ? (unsigned long)-v : (unsigned long)v;
    return cairn_buf_printf(b, "%s%lu.%0*lu", v < 0 ? "-" : "", a / (unsigned long)scale, dec,
                            a % (unsigned long)scale);
}

static int put_time(struct cairn_buf *b, int64_t ns)
{
    char t[40];
    size_t n = cairn_time_format(ns, t, sizeof t);
    int rc = cairn_buf_putc(b, '"');
    if (!rc)
        rc = cairn_buf_append(b, t, n);
    return rc ? rc : cairn_buf_putc(b, '"');
}

/* ====================================================================== payloads */

/* Readings (most), status reports, heartbeats (schemas/telemetry.json). */
static int gen_telemetry(struct workload *w, struct cairn_buf *b, unsigned dev)
{
    static const char *const status[] = {"online",   "online",      "online", "online",
                                         "degraded", "maintenance", "offline"};
    static const char *const fw[] = {"2.4.1", "2.4.1", "2.5.0", "2.3.7"};
    unsigned kind = below(w, 10);
    int rc = cairn_buf_printf(b, "{\"device_id\":\"dev-%06u\",\"event_type\":\"%s\"", dev,
                              kind < 6   ? "reading"
                              : kind < 9 ? "status"
                                         : "heartbeat");
    if (!rc && kind < 9)
        rc = cairn_buf_puts(b, ",\"battery\":");
    if (!rc && kind < 9)
        rc = put_fixed(b, range(w, 50, 1000), 1);
    if (!rc && kind < 6) {
        rc = cairn_buf_puts(b, ",\"data\":{\"temperature_c\":");
        if (!rc)
            rc = put_fixed(b, range(w, -2500, 4500), 2);
        if (!rc)
            rc = cairn_buf_puts(b, ",\"humidity\":");
        if (!rc)
            rc = put_fixed(b, range(w, 100, 950), 1);
        if (!rc)
            rc = cairn_buf_printf(b, ",\"pressure_hpa\":%ld,\"rssi\":%ld,\"door_open\":%s}}",
                                  range(w, 980, 1040), range(w, -110, -40),
                                  below(w, 20) ? "false" : "true");
    } else if (!rc && kind < 9) {
        rc = cairn_buf_printf(b,
                              ",\"status\":\"%s\",\"data\":{\"firmware\":\"%s\",\"uptime_s\":%ld}}",
                              PICK(w, status), PICK(w, fw), range(w, 60, 8000000));
    } else if (!rc) {
        rc = cairn_buf_putc(b, '}');
    }
    return rc;
}

/* Each tenant's fleet works around one city (schemas/location.json): a
 * device's first fix is anywhere in a box of 0.3 x 0.5 degrees around it,
 * each later one up to WALK_STEP millionths of a degree (~ 55 m of
 * latitude) from the one before, in the box — vehicles between fixes a
 * few seconds apart, not jumps across town. */
#define WALK_STEP 500
static int gen_location(struct workload *w, struct cairn_buf *b, unsigned tenant, unsigned dev)
{
    static const long lat0[TENANTS_MAX] = {52520008, 48856614, 40712776, 51507351,
                                           37774929, 35689487, 41878113, 59329323};
    static const long lon0[TENANTS_MAX] = {13404954,   2352222,   -74005974, -127758,
                                           -122419416, 139691706, -87629799, 18068581};
    struct pos *p = &w->pos[tenant * w->cfg.devices + dev % 100000];
    if (!p->set) {
        p->set = true;
        p->lat = (int32_t)range(w, -150000, 150000);
        p->lon = (int32_t)range(w, -250000, 250000);
    } else {
        long la = p->lat + range(w, -WALK_STEP, WALK_STEP),
             lo = p->lon + range(w, -WALK_STEP, WALK_STEP);
        p->lat = (int32_t)(la < -150000 ? -150000 : la > 150000 ? 150000 : la);
        p->lon = (int32_t)(lo < -250000 ? -250000 : lo > 250000 ? 250000 : lo);
    }
    int rc = cairn_buf_printf(b, "{\"device_id\":\"dev-%06u\",\"lat\":", dev);
    if (!rc)
        rc = put_fixed(b, lat0[tenant] + p->lat, 6);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"lon\":");
    if (!rc)
        rc = put_fixed(b, lon0[tenant] + p->lon, 6);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"alt\":");
    if (!rc)
        rc = put_fixed(b, range(w, 0, 1500), 1);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"accuracy\":");
    if (!rc)
        rc = put_fixed(b, range(w, 20, 500), 1);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"speed\":");
    if (!rc)
        rc = put_fixed(b, range(w, 0, 350), 1);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"heading\":");
    if (!rc)
        rc = put_fixed(b, range(w, 0, 3599), 1);
    return rc ? rc : cairn_buf_putc(b, '}');
}

/* The lines of an order follow from its number: every event of one order
 * that lists them lists the same. */
static int gen_items(struct cairn_buf *b, uint64_t order_no, long *total)
{
    uint64_t h = mix64(order_no);
    unsigned n = 1 + (unsigned)(h % 3);
    int rc = cairn_buf_puts(b, ",\"items\":[");
    *total = 0;
    for (unsigned i = 0; i < n && !rc; i++) {
        h = mix64(h + i);
        long qty = 1 + (long)(h % 4), cents = 199 + (long)((h >> 8) % 9800);
        *total += qty * cents;
        rc = cairn_buf_printf(b, "%s{\"product_id\":\"sku-%05u\",\"quantity\":%ld,\"price\":",
                              i ? "," : "", (unsigned)((h >> 24) % 40000), qty);
        if (!rc)
            rc = put_fixed(b, cents, 2);
        if (!rc)
            rc = cairn_buf_putc(b, '}');
    }
    return rc ? rc : cairn_buf_putc(b, ']');
}

/* order.created carries the whole order; later steps the status, and
 * from order.assigned on the courier (schemas/order.json). */
static int gen_order(struct workload *w, struct cairn_buf *b, const struct order *o)
{
    static const char *const steps[ORDER_STAGES] = {"created",   "confirmed",  "assigned",
                                                    "picked_up", "in_transit", "delivered"};
    char cus[16];
    long total;
    base62(o->no * 7919 + 17, cus, 14);
    int rc = cairn_buf_printf(b,
                              "{\"order_id\":\"ord_%08llu\",\"event_type\":\"order.%s\","
                              "\"status\":\"%s\",\"customer_id\":\"cus_%s\"",
                              (unsigned long long)o->no, steps[o->stage],
                              o->stage ? steps[o->stage] : "pending", cus);
    if (!rc && o->stage >= 2)
        rc = cairn_buf_printf(b, ",\"assigned_device_id\":\"dev-%06u\"",
                              o->tenant * 100000 + (unsigned)(mix64(o->no) % 2000));
    if (rc || o->stage != 0)
        return rc ? rc : cairn_buf_putc(b, '}');
    rc = gen_items(b, o->no, &total);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"total_amount\":");
    if (!rc)
        rc = put_fixed(b, total, 2);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"destination\":{\"lat\":");
    if (!rc)
        rc = put_fixed(b, 52400000 + range(w, 0, 250000), 6);
    if (!rc)
        rc = cairn_buf_puts(b, ",\"lon\":");
    if (!rc)
        rc = put_fixed(b, 13250000 + range(w, 0, 300000), 6);
    return rc ? rc : cairn_buf_puts(b, "},\"metadata\":{\"channel\":\"web\"}}");
}

/* A Stripe event, trimmed to the fields the payments view reads
 * (schemas/payment.json). */
static int gen_payment(struct workload *w, struct cairn_buf *b, const char *evt, int64_t now)
{
    static const char *const kinds[] = {"payment_intent.succeeded", "payment_intent.created",
                                        "charge.succeeded", "invoice.paid",
                                        "invoice.payment_failed"};
    static const char *const cur[] = {"eur", "usd", "gbp"};
    const char *kind = PICK(w, kinds);
    const char *obj = kind[0] == 'c' ? "charge" : kind[0] == 'i' ? "invoice" : "payment_intent";
    const char *prefix = obj[0] == 'c' ? "ch" : obj[0] == 'i' ? "in" : "pi";
    const char *status = strstr(kind, "failed")    ? "open"
                         : strstr(kind, "created") ? "requires_confirmation"
                         : obj[0] == 'i'           ? "paid"
                                                   : "succeeded";
    char oid[28], cus[16];
    base62(rnd(w), oid, 24);
    base62((uint64_t)below(w, 20000) * 7919 + 17, cus, 14);
    return cairn_buf_printf(
        b,
        "{\"id\":\"%s\",\"object\":\"event\",\"api_version\":\"2024-06-20\",\"type\":\"%s\","
        "\"created\":%lld,\"livemode\":true,\"data\":{\"object\":{\"id\":\"%s_%s\","
        "\"object\":\"%s\",\"amount\":%ld,\"currency\":\"%s\",\"customer\":\"cus_%s\","
        "\"status\":\"%s\"}}}",
        evt, kind, (long long)(now / 1000000000LL), prefix, oid, obj, range(w, 500, 250000),
        PICK(w, cur), cus, status);
}

/* A Prometheus sample of one of a few hundred series (schemas/metric.json). */
static int gen_metric(struct workload *w, struct cairn_buf *b)
{
    static const char *const names[] = {"http_requests_total", "http_request_duration_seconds_sum",
                                        "node_cpu_seconds_total", "process_resident_memory_bytes"};
    static const char *const jobs[] = {"api", "worker", "gateway", "node"};
    static const char *const methods[] = {"GET", "GET", "GET", "POST", "PUT", "DELETE"};
    unsigned s = below(w, SERIES_PER_TENANT);
    int rc =
        cairn_buf_printf(b,
                         "{\"name\":\"%s\",\"labels\":{\"job\":\"%s\",\"instance\":\"10.0.%u.%u:"
                         "9100\",\"method\":\"%s\",\"code\":\"%s\",\"env\":\"prod\"},\"value\":",
                         names[s % 4], jobs[(s / 4) % 4], s / 16, s % 250 + 2, methods[(s / 3) % 6],
                         s % 13 ? "200" : "500");
    if (!rc)
        rc = put_fixed(b, range(w, 0, 2000000000), 3);
    return rc ? rc : cairn_buf_putc(b, '}');
}

static int gen_resource(struct workload *w, struct cairn_buf *b, const char *account)
{
    char id[12];
    base62(rnd(w), id, 10);
    switch (below(w, 3)) {
    case 0:
        return cairn_buf_printf(
            b,
            "{\"resource_id\":\"arn:aws:s3:::data-%s\",\"resource_type\":\"aws.s3.bucket\","
            "\"attributes\":{\"versioning\":{\"status\":\"%s\"},\"encryption\":"
            "{\"sse_algorithm\":\"%s\"}},\"tags\":{\"env\":\"prod\"}}",
            id, below(w, 4) ? "Enabled" : "Suspended", below(w, 5) ? "aws:kms" : "none");
    case 1:
        return cairn_buf_printf(b,
                                "{\"resource_id\":\"sg-%s\",\"resource_type\":\"aws.ec2.security_"
                                "group\",\"attributes\":{\"ingress\":[{\"protocol\":\"tcp\","
                                "\"port\":%s,\"cidr\":\"%s\"}]}}",
                                id, below(w, 3) ? "443" : "22",
                                below(w, 6) ? "10.0.0.0/8" : "0.0.0.0/0");
    default:
        return cairn_buf_printf(
            b,
            "{\"resource_id\":\"arn:aws:iam::%s:role/svc-%s\",\"resource_type\":"
            "\"aws.iam.role\",\"attributes\":{\"last_used_days\":%ld}}",
            account, id, range(w, 0, 400));
    }
}

/* A small partial scan: one or two resources (schemas/discovery.json). */
static int gen_discovery(struct workload *w, struct cairn_buf *b, unsigned tenant)
{
    static const char *const regions[] = {"eu-west-1", "eu-central-1", "us-east-1", "us-west-2"};
    char account[24];
    snprintf(account, sizeof account, "%012llu",
             100000000000ull + tenant * 1000003ull + below(w, 2));
    unsigned n = 1 + (below(w, 3) == 0);
    int rc = cairn_buf_printf(b,
                              "{\"account_id\":\"%s\",\"region\":\"%s\",\"complete\":false,"
                              "\"resources\":[",
                              account, PICK(w, regions));
    for (unsigned i = 0; i < n && !rc; i++) {
        if (i)
            rc = cairn_buf_putc(b, ',');
        if (!rc)
            rc = gen_resource(w, b, account);
    }
    return rc ? rc : cairn_buf_puts(b, "]}");
}

/* ====================================================================== envelope */

static enum workload_type pick_type(struct workload *w)
{
    unsigned r = below(w, 1000), acc = 0;
    for (int t = 0; t < WL_NTYPES; t++) {
        acc += type_permille[t];
        if (r < acc)
            return (enum workload_type)t;
    }
    return WL_TELEMETRY;
}

/* A unique idempotency id. mix64 is a bijection, so u differs for every
 * input; Stripe-style ids spell u in base62 and pad with random letters,
 * the others are UUID-shaped, as NATS message ids and OMS ids usually are. */
static void unique_id(struct workload *w, const char *prefix, char *out, size_t cap)
{
    static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    uint64_t u = mix64(w->seq ^ w->cfg.seed), v = mix64(u);
    if (strcmp(prefix, "evt_")) {
        snprintf(out, cap, "%s%08llx-%04llx-4%03llx-a%03llx-%012llx", prefix,
                 (unsigned long long)(u >> 32), (unsigned long long)(u >> 16) & 0xffff,
                 (unsigned long long)u & 0xfff, (unsigned long long)(v >> 52),
                 (unsigned long long)v & 0xffffffffffffull);
        return;
    }
    char tail[32];
    for (int i = 0; i < 11; i++, u /= 62) /* 62^11 > 2^64: all of u */
        tail[i] = digits[u % 62];
    base62(v, tail + 11, 13);
    snprintf(out, cap, "%s%s", prefix, tail);
}

static int envelope_head(struct cairn_buf *b, enum workload_type t, const char *tenant,
                         const char *id, int64_t time)
{
    int rc =
        cairn_buf_printf(b, "{\"type\":\"%s\",\"tenant\":\"%s\",", workload_type_names[t], tenant);
    if (!rc && id)
        rc = cairn_buf_printf(b, "\"id\":\"%s\",", id);
    if (!rc)
        rc = cairn_buf_puts(b, "\"time\":");
    if (!rc)
        rc = put_time(b, time);
    return rc ? rc : cairn_buf_puts(b, ",\"payload\":");
}

static int gen_payload(struct workload *w, struct cairn_buf *b, enum workload_type t,
                       unsigned tenant, const char *id, struct order *o)
{
    unsigned dev = tenant * 100000 + below(w, w->cfg.devices);
    switch (t) {
    case WL_TELEMETRY: return gen_telemetry(w, b, dev);
    case WL_LOCATION: return gen_location(w, b, tenant, dev);
    case WL_ORDER: return gen_order(w, b, o);
    case WL_PAYMENT: return gen_payment(w, b, id, w->clock);
    case WL_METRIC: return gen_metric(w, b);
    default: return gen_discovery(w, b, tenant);
    }
}

int workload_next(struct workload *w, struct cairn_buf *out, enum workload_type *type)
{
    enum workload_type t = pick_type(w);
    struct order *o = &w->orders[below(w, ORDER_POOL)];
    unsigned tenant = t == WL_ORDER ? o->tenant : below(w, w->cfg.tenants);
    char id[64];
    const char *idp = NULL;
    w->seq++;
    w->clock += (int64_t)below(w, (unsigned)(2 * w->cfg.step_ns / 1000000 + 1)) * 1000000;
    /* Stripe's event id, the OMS message id, NATS's Nats-Msg-Id when set. */
    const char *prefix = t == WL_PAYMENT                         ? "evt_"
                         : t == WL_ORDER                         ? "oms-"
                         : t == WL_TELEMETRY && below(w, 5) == 0 ? "msg-"
                                                                 : NULL;
    if (prefix) {
        unique_id(w, prefix, id, sizeof id);
        idp = id;
    }
    size_t mark = out->len;
    int rc = envelope_head(out, t, tenant_names[tenant], idp, w->clock);
    if (!rc)
        rc = gen_payload(w, out, t, tenant, idp, o);
    if (!rc)
        rc = cairn_buf_putc(out, '}');
    if (rc) {
        out->len = mark;
        return rc;
    }
    if (t == WL_ORDER && ++o->stage == ORDER_STAGES) /* delivered: a new order takes the slot */
        *o = (struct order){.tenant = below(w, w->cfg.tenants), .no = w->next_order++};
    if (type)
        *type = t;
    return 0;
}

int workload_new(struct workload **out, const struct workload_config *cfg)
{
    struct workload *w = calloc(1, sizeof *w);
    if (!w)
        return CAIRN_ENOMEM;
    w->cfg = *cfg;
    if (!w->cfg.seed)
        w->cfg.seed = 1;
    if (!w->cfg.tenants || w->cfg.tenants > TENANTS_MAX)
        w->cfg.tenants = TENANTS_MAX;
    if (!w->cfg.devices)
        w->cfg.devices = 2000;
    if (w->cfg.devices > 99999)
        w->cfg.devices = 99999;
    if (!w->cfg.start_ns)
        w->cfg.start_ns = 1795255200LL * 1000000000LL; /* 2026-11-21T10:00:00Z */
    if (w->cfg.step_ns < 1000000)
        w->cfg.step_ns = 1000000;
    if (!(w->pos = calloc((size_t)w->cfg.tenants * w->cfg.devices, sizeof *w->pos))) {
        free(w);
        return CAIRN_ENOMEM;
    }
    w->rng = w->cfg.seed;
    w->clock = w->cfg.start_ns;
    for (unsigned i = 0; i < ORDER_POOL; i++) /* orders already under way */
        w->orders[i] = (struct order){.tenant = below(w, w->cfg.tenants),
                                      .stage = below(w, ORDER_STAGES),
                                      .no = 10000000 + i};
    w->next_order = 10000000 + ORDER_POOL;
    *out = w;
    return 0;
}

void workload_free(struct workload *w)
{
    if (w)
        free(w->pos);
    free(w);
}

/* ====================================================================== corpora */

/* The largest corpus we build: 16 GiB, far beyond any sensible run. */
#define CORPUS_MAX (16ull << 30)

static int corpus_init(struct workload_corpus *c, size_t n)
{
    memset(c, 0, sizeof *c);
    cairn_buf_init(&c->data, CORPUS_MAX);
    c->off = calloc(n + 1, sizeof *c->off);
    return c->off ? 0 : CAIRN_ENOMEM;
}

int workload_corpus_json(struct workload_corpus *c, const struct workload_config *cfg, size_t n)
{
    struct workload *w;
    int rc = corpus_init(c, n);
    if (rc)
        return rc;
    if ((rc = workload_new(&w, cfg))) {
        workload_corpus_deinit(c);
        return rc;
    }
    rc = cairn_buf_reserve(&c->data, n * 260); /* one allocation in the usual case */
    for (size_t i = 0; i < n && !rc; i++) {
        enum workload_type t = WL_TELEMETRY;
        c->off[i] = c->data.len;
        rc = workload_next(w, &c->data, &t);
        if (!rc)
            rc = cairn_buf_putc(&c->data, '\n');
        if (!rc)
            c->per_type[t]++;
    }
    workload_free(w);
    if (rc) {
        workload_corpus_deinit(c);
        return rc;
    }
    c->off[n] = c->data.len;
    c->n = n;
    return 0;
}

int workload_corpus_msgpack(struct workload_corpus *out, const struct workload_corpus *json,
                            struct cairn_error *e)
{
    int rc = corpus_init(out, json->n);
    if (rc)
        return rc;
    memcpy(out->per_type, json->per_type, sizeof out->per_type);
    rc = cairn_buf_reserve(&out->data, json->data.len);
    for (size_t i = 0; i < json->n && !rc; i++) {
        json_error_t je;
        const char *p = (const char *)json->data.data + json->off[i];
        json_t *v = json_loadb(p, json->off[i + 1] - json->off[i], 0, &je);
        out->off[i] = out->data.len;
        if (!v) {
            rc = cairn_error_set(e, "invalid_json", "", "input %zu: %s", i, je.text);
            break;
        }
        rc = cairn_json_to_msgpack(v, &out->data, e);
        json_decref(v);
    }
    if (rc) {
        workload_corpus_deinit(out);
        return rc;
    }
    out->off[json->n] = out->data.len;
    out->n = json->n;
    return 0;
}

void workload_corpus_deinit(struct workload_corpus *c)
{
    cairn_buf_deinit(&c->data);
    free(c->off);
    c->off = NULL;
    c->n = 0;
}
