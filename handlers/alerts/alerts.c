/*
 * alerts — alerts from derived events and from threshold alarms on metric
 * samples; emits alert.triggered / alert.escalated / alert.acknowledged /
 * alert.resolved on stream `alerts`.
 *
 * DBIs:
 *   alerts.view      tlen|tenant|alert_id -> the alert document, or (when the last
 *                    change emitted it) 'E' | dseq u64 BE: the document is the
 *                    payload of that event of stream.alerts (see "view records")
 *   alerts.esc       escalate_at (i64 BE, biased) | tlen|tenant|alert_id -> ""
 *                    one entry per firing alert not yet escalated, so a tick
 *                    finds the alerts to escalate without a scan
 *   alerts.silences  tlen|tenant|silence_id -> the silence document
 *   alerts.alarms    tlen|tenant|alarm_id -> the alarm document
 *   alerts.bymetric  tlen|tenant|mlen u8|metric|alarm_id -> "" (the alarms a
 *                    sample of a metric may count for)
 *   alerts.agg       tlen|tenant|alen u8|alarm_id|period start (i64 BE) ->
 *                    count u64 BE | sum | min | max (f64 bits, BE): the
 *                    aggregates of periods not closed yet
 *   alerts.due       period end (i64 BE, biased) | tlen|tenant|alarm_id -> ""
 *                    the end of each alarm's next period to close
 *
 * In memory, rebuilt by open (the engine closes and reopens handlers when
 * a batch aborts): the alert documents written since the last flush (see
 * "the written-alerts cache") and whether any silence may exist; every
 * other decision reads the DBIs.
 *
 * ---------------------------------------------------------------- sources
 * One row of ALERT_SOURCES per derived type (adding a source is one row):
 * the source label, whether it opens or resolves, the severity (fixed, or
 * NULL: the payload's `severity`), the payload fields the key and rule come
 * from (the key falls back to the event key, the rule to the row's
 * constant). A fingerprint is (source, tenant, key, rule); the alert id is
 * the first 16 hex characters of SHA-256(source \0 tenant \0 key \0 rule).
 * "one-shot" sources have no resolving event: acknowledging such an alert
 * also resolves it (acknowledged, then resolved with resolution
 * "acknowledged"), so the next cause opens a new occurrence.
 *
 * ---------------------------------------------------------------- lifecycle
 *   (none|resolved) --open--> firing --ack--> acknowledged
 *   firing|acknowledged --resolve--> resolved
 *   firing --tick past escalate_at--> firing (escalated_at set, once)
 *  - An opening cause for an alert that is firing or acknowledged updates
 *    it (count, last_triggered_at, details, severity) and emits nothing;
 *    for a resolved (or new) one it starts a new occurrence: emits
 *    alert.triggered.
 *  - escalate_at = opened_at + escalation_s[severity] (config; "info" never
 *    escalates). A severity change while firing moves it. At most
 *    ESCALATIONS_PER_TICK alerts escalate per tick; the rest on later ticks.
 *  - A resolving cause for an alert that is not open changes nothing.
 *  - min_severity (config; a string, or {source: severity}; default
 *    {"compliance": "high", "geofence": "low"}): opening causes below it
 *    are ignored (geofence rows are "info": opt in with
 *    {"geofence": "info"}).
 *    Severities: critical > high > medium > low > info; an unknown payload
 *    severity counts as low.
 *
 * ---------------------------------------------------------------- silences
 * A transition (triggered, escalated, acknowledged, resolved) happening at
 * time t while a silence of the alert's tenant is active (starts_at <= t <
 * ends_at) and all of whose matchers equal the alert's labels (source,
 * type, severity, key, rule, alert_id) is recorded (silenced: true,
 * silenced_by) but not emitted. Each transition is judged on its own: no
 * catch-up emission when a silence expires. At most SILENCES_SCAN_MAX
 * silences of a tenant are considered; expired ones are deleted when seen.
 *
 * ---------------------------------------------------------------- alarms
 * See the ALARMS section below for the exact CloudWatch semantics.
 */
#include "handler.h"

#include <assert.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ESCALATIONS_PER_TICK 10000
/* Operators keep a few dozen silences; 1000 bounds the scan per transition. */
#define SILENCES_SCAN_MAX 1000
#define MATCHERS_MAX 16
/* Alarms one sample may count for (of its metric, in its tenant). */
#define ALARMS_PER_METRIC_MAX 64
/* Period closings per tick (all alarms): a clock jump of days on a 1 s
 * period is caught up over a few ticks instead of one huge transaction. */
#define CLOSES_PER_TICK 100000
/* Samples more than this many periods ahead of the next period to close
 * are dropped (a bad producer clock would otherwise grow alerts.agg). */
#define AHEAD_PERIODS_MAX 10000
#define WINDOW_MAX 32
#define HISTORY_MAX 32
#define TITLE_MAX 256
#define DOC_MAX (CAIRN_PAYLOAD_MAX_CEILING + (64u << 10))

enum sev { SEV_INFO, SEV_LOW, SEV_MEDIUM, SEV_HIGH, SEV_CRITICAL, SEV_COUNT };
static const char *const sev_names[SEV_COUNT] = {"info", "low", "medium", "high", "critical"};
static const int64_t sev_escalation_default_s[SEV_COUNT] = {0, 14400, 3600, 900, 300};

enum action { OPENS, RESOLVES };

/* type, source, action, fixed severity (NULL: payload "severity"), key
 * field, rule field (NULL: none), rule constant, one-shot */
#define ALERT_SOURCES(X)                                                                           \
    X("compliance.violation", "compliance", OPENS, NULL, "resource_id", "rule_id", "", false)      \
    X("compliance.resolved", "compliance", RESOLVES, NULL, "resource_id", "rule_id", "", false)    \
    X("device.offline", "devices", OPENS, "high", "device_id", NULL, "device.offline", false)      \
    X("device.online", "devices", RESOLVES, "high", "device_id", NULL, "device.offline", false)    \
    X("order.invalid_transition", "orders", OPENS, "medium", "order_id", NULL,                     \
      "order.invalid_transition", true)                                                            \
    X("payment.failed", "payments", OPENS, "high", "customer", NULL, "payment.failed", true)       \
    X("geofence.enter", "geofence", OPENS, "info", "device_id", "fence_id", "", false)             \
    X("geofence.exit", "geofence", RESOLVES, "info", "device_id", "fence_id", "", false)           \
    X("geofence.cross", "geofence", OPENS, "info", "device_id", "fence_id", "", true)              \
    X("order.arrived", "geofence", OPENS, "info", "order_id", NULL, "order.arrived", true)

struct source {
    const char *type, *source;
    enum action action;
    const char *severity, *key_field, *rule_field, *rule_const;
    bool one_shot;
};

#define SRC_ROW(t, s, a, sev, kf, rf, rc, os) {t, s, a, sev, kf, rf, rc, os},
#define SRC_TYPE(t, ...) t,
static const struct source sources[] = {ALERT_SOURCES(SRC_ROW)};
#define NSOURCES (sizeof sources / sizeof sources[0])

static const char *const consumes[] = {ALERT_SOURCES(SRC_TYPE) "alert.ack",
                                       "alert.silence",
                                       "alarm.define",
                                       "alarm.delete",
                                       "metric",
                                       "tick",
                                       NULL};
static const char *const raw_inputs[] = {"metric", NULL};
static const char *const emits[] = {"alert.triggered", "alert.escalated", "alert.acknowledged",
                                    "alert.resolved", NULL};

/* The source label of alarm alerts (not a table row: alarms open and
 * resolve their alerts themselves). */
#define ALARM_SOURCE "alarm"
#define ALARM_TYPE "alarm.state"

struct alerts {
    unsigned view, esc, silences, alarms, bymetric, agg, due;
    struct cairn_buf doc; /* the alert document commit writes (kept: no allocation per alert) */
    /* Alert documents written in this process, packed as stored (see
     * "the written-alerts cache" below). */
    struct hcache cache; /* of struct hentry: key then document; the dirty ones put by flush */
    int64_t esc_ns[SEV_COUNT];
    int min_sev[NSOURCES];
    /* false: alerts.silences is empty (set in open, true from the first
     * silence put on): a transition then skips the silence scan, a cursor
     * per alert. */
    bool any_silences;
    struct hkset vk; /* alerts.view's keys (see "the view's keys") */
    /* The tenant + metric prefixes of alerts.bymetric's keys: a sample of
     * a metric no alarm watches (most of them) reads nothing. It was a
     * cursor on bymetric per sample, each call taking the state's lock in
     * a parallel apply: a quarter of a replay's lock calls. */
    struct hkset mk;
};

/* The tenant + metric part of a bymetric key (struct alerts, mk). */
static size_t bymetric_prefix(const uint8_t *k, size_t n);

static struct alerts *self(struct hctx *ctx)
{
    return *hctx_user(ctx);
}

/* ====================================================================== small helpers */

static bool str_is(const struct cairn_str *s, const char *c)
{
    return s->n == strlen(c) && !memcmp(s->p, c, s->n);
}

static bool str_eq(const struct cairn_str *a, const struct cairn_str *b)
{
    return a->n == b->n && (!a->n || !memcmp(a->p, b->p, a->n));
}

static struct cairn_str cs(const char *c)
{
    return (struct cairn_str){c, strlen(c)};
}

static int sev_parse(const struct cairn_str *s)
{
    for (int i = 0; i < SEV_COUNT; i++)
        if (str_is(s, sev_names[i]))
            return i;
    return -1;
}

static void put_biased(uint8_t *p, int64_t t)
{
    cairn_be64_put(p, (uint64_t)t ^ (1ull << 63));
}

static int64_t get_biased(const void *p)
{
    return (int64_t)(cairn_be64_get(p) ^ (1ull << 63));
}

/* A stored document, copied out of the database (an MDB value is only
 * valid until the next write) and decoded. */
struct loaded {
    uint8_t *mem;
    msgpack_unpacked u;
    const msgpack_object *doc; /* NULL: absent */
};

/* Fills l (initialised, empty) from a copy of the document p[0..n). */
static int load_bytes(struct loaded *l, const void *p, size_t n)
{
    if (!(l->mem = malloc(n ? n : 1)))
        return CAIRN_ENOMEM;
    memcpy(l->mem, p, n);
    if (msgpack_unpack_next(&l->u, (const char *)l->mem, n, NULL) != MSGPACK_UNPACK_SUCCESS ||
        l->u.data.type != MSGPACK_OBJECT_MAP)
        return CAIRN_ECORRUPT;
    l->doc = &l->u.data;
    return 0;
}

static int load(struct hctx *ctx, unsigned db, const void *k, size_t kn, struct loaded *l)
{
    MDB_val v;
    memset(l, 0, sizeof *l);
    msgpack_unpacked_init(&l->u);
    int rc = hctx_get(ctx, db, k, kn, &v);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    return load_bytes(l, v.mv_data, v.mv_size);
}

static void unload(struct loaded *l)
{
    msgpack_unpacked_destroy(&l->u);
    free(l->mem);
    l->mem = NULL;
}

static bool get_time(const msgpack_object *o, int64_t *t)
{
    struct cairn_str s;
    return mp_str(o, &s) && !cairn_time_parse(s.p, s.n, t);
}

/* ====================================================================== open / close */

/* handlers.alerts (README, alerts): escalation_s by severity (0 to a
 * year), min_severity one severity or one per source. */
#define ESC "{\"type\":\"integer\",\"minimum\":0,\"maximum\":31536000}"
#define SEV "{\"enum\":[\"critical\",\"high\",\"medium\",\"low\",\"info\"]}"
static const char config_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"escalation_s\":{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"critical\":" ESC ",\"high\":" ESC ",\"medium\":" ESC ",\"low\":" ESC ",\"info\":" ESC "}},"
    "\"min_severity\":{\"anyOf\":[" SEV ",{\"type\":\"object\",\"additionalProperties\":false,"
    "\"properties\":{\"compliance\":" SEV ",\"devices\":" SEV ",\"orders\":" SEV ","
    "\"payments\":" SEV ",\"geofence\":" SEV "}}]}}}";
#undef ESC
#undef SEV

static void read_config(struct alerts *a, const json_t *cfg)
{
    const json_t *esc = json_object_get(cfg, "escalation_s");
    for (int i = 0; i < SEV_COUNT; i++) {
        const json_t *v = json_object_get(esc, sev_names[i]);
        int64_t s =
            json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 365 * 86400
                ? json_integer_value(v)
                : sev_escalation_default_s[i];
        a->esc_ns[i] = s * 1000000000LL;
    }
    const json_t *ms = json_object_get(cfg, "min_severity");
    for (size_t i = 0; i < NSOURCES; i++) {
        const json_t *v = json_is_object(ms) ? json_object_get(ms, sources[i].source) : ms;
        struct cairn_str s = {json_string_value(v), json_string_length(v)};
        int sev = json_is_string(v) ? sev_parse(&s) : -1;
        if (sev < 0)
            /* geofence hits are info-level and opt-in: a fleet's routine
             * enters and exits are not alerts unless asked for. */
            sev = !strcmp(sources[i].source, "compliance") ? SEV_HIGH
                  : !strcmp(sources[i].source, "geofence") ? SEV_LOW
                                                           : SEV_INFO;
        /* A plain string applies to the sources whose severity varies. */
        if (json_is_string(ms) && sources[i].severity)
            sev = !strcmp(sources[i].source, "geofence") ? SEV_LOW : SEV_INFO;
        a->min_sev[i] = sev;
    }
}

static int alerts_open(struct hctx *ctx)
{
    struct alerts *a = calloc(1, sizeof *a);
    if (!a)
        return CAIRN_ENOMEM;
    *hctx_user(ctx) = a;
    cairn_buf_init(&a->doc, DOC_MAX);
    a->mk.prefix = bymetric_prefix;
    read_config(a, hctx_config(ctx));
    int rc = hctx_db(ctx, "view", 0, &a->view);
    if (!rc)
        rc = hctx_db(ctx, "esc", 0, &a->esc);
    if (!rc)
        rc = hctx_db(ctx, "silences", 0, &a->silences);
    if (!rc)
        rc = hctx_db(ctx, "alarms", 0, &a->alarms);
    if (!rc)
        rc = hctx_db(ctx, "bymetric", 0, &a->bymetric);
    if (!rc)
        rc = hctx_db(ctx, "agg", 0, &a->agg);
    if (!rc)
        rc = hctx_db(ctx, "due", 0, &a->due);
    struct hcursor *c;
    if (!rc && !(rc = hctx_cursor_open(ctx, a->silences, NULL, 0, &c))) {
        MDB_val k, v;
        rc = hctx_cursor_next(c, &k, &v);
        hctx_cursor_close(c);
        a->any_silences = !rc;
        if (rc == CAIRN_ENOTFOUND)
            rc = 0;
    }
    return rc;
}

static void alerts_close(struct hctx *ctx)
{
    struct alerts *a = self(ctx);
    if (a) {
        hcache_free(&a->cache);
        cairn_buf_deinit(&a->doc);
        hkset_free(&a->vk);
        hkset_free(&a->mk);
    }
    free(a);
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== the view's keys */

/* Opening an alert reads its document first (state, count, occurrences):
 * a B-tree descent per alert that, for an alert never opened before (every
 * alert of a first discovery), finds nothing. The handler keeps a key set
 * of alerts.view (struct hkset, handler.h), added to by every document
 * written (documents are never deleted): a key not in it has no document
 * and the read is skipped. The state is the same either way. (The
 * violations handler keeps the same sets: handlers/compliance.) */

/* ====================================================================== view records */

/* Every change of an alert but one (a cause re-triggering a firing or
 * acknowledged alert: count, last_triggered_at, details, severity) emits
 * an event whose payload is the whole new document (alert.triggered,
 * .escalated, .acknowledged, .resolved), and streams are never trimmed. So
 * the view keeps, for an alert whose last change was emitted, only that
 * event's dseq ("E" | dseq u64 BE: 9 bytes), and the document itself
 * otherwise (a msgpack map: its first byte is never 'E'). The documents
 * are ~2 KB (the violation is their details) and their keys hashes: whole
 * documents in the view made nearly every alert opened dirty (and split)
 * its own B-tree leaf, in every commit — a fifth of the CPU of a first
 * discovery with every handler (bench/compliance). Readers make the
 * document again: load_view in apply (hctx_stream_payload), and
 * alerts_view_doc for `cairn show alerts`, the view routes and the ack
 * route. A state written before (documents only) reads as it is. */
#define VREF_LEN 9

static size_t vref_make(uint8_t out[VREF_LEN], uint64_t dseq)
{
    out[0] = 'E';
    cairn_be64_put(out + 1, dseq);
    return VREF_LEN;
}

/* The dseq a view value refers to, or 0 when it is a document. */
static uint64_t vref_dseq(const MDB_val *v)
{
    const uint8_t *p = v->mv_data;
    return v->mv_size == VREF_LEN && p[0] == 'E' ? cairn_be64_get(p + 1) : 0;
}

/* ====================================================================== the written-alerts cache
 */

/* The alert documents commit writes are kept here, packed as stored, and
 * put by flush once per state transaction (an alert that opens, escalates
 * and resolves within a batch is put once), or by commit when DEFER_MAX of
 * them wait. load_view reads them from here first, so the DBI is current
 * only after flush — and the engine
 * calls flush before every commit, and reopens the handler (emptying
 * this) after an aborted transaction. Bounded: past CACHE_MAX documents
 * it is emptied after the next flush. */
#define CACHE_MAX (1u << 16)
/* At most this many written documents wait for the flush: past it, commit
 * puts them at once (sorted, as the flush does). The engine ends a catch-up
 * transaction before its writes could fill the state's map, counting the
 * puts as they happen (proj_txn_full); documents held back to the flush
 * were not counted — with an alert per high/critical violation, ~10 000
 * of them, a page each — so the map could fill during the flush (the
 * transaction is then aborted, the map grown and its inputs applied
 * again). */
#define DEFER_MAX 4096

/* A cached document: the key (vn bytes) then the document in mem, and the
 * dseq of the event of stream.alerts whose payload it is (0: none — it
 * changed without an event: the view gets the document itself). */
struct aentry {
    struct hentry h;
    uint64_t dseq;
};

/* Keeps document v (n bytes) of key k, carried by event dseq (0: none), to
 * be put by flush. */
static int cache_put(struct alerts *a, const uint8_t *k, size_t kn, const uint8_t *v, size_t n,
                     uint64_t dseq)
{
    uint64_t h;
    struct hentry **slot;
    int rc = hcache_slot(&a->cache, k, kn, &h, &slot);
    if (rc)
        return rc;
    hkset_add(&a->vk, k, kn);
    struct hentry *w = *slot;
    if (!w) {
        struct aentry *ae = calloc(1, sizeof *ae);
        if (!(w = &ae->h)) /* (h is ae's first member: NULL stays NULL) */
            return CAIRN_ENOMEM;
        w->hash = h;
        w->vn = (uint32_t)kn;
        cairn_buf_init(&w->mem, 1 + CAIRN_TENANT_MAX + 16 + DOC_MAX);
        hcache_store(&a->cache, slot, w);
    }
    ((struct aentry *)w)->dseq = dseq;
    cairn_buf_reset(&w->mem);
    /* reserved at once: one allocation per new entry, not a grow per append */
    if ((rc = cairn_buf_reserve(&w->mem, kn + n)) || (rc = cairn_buf_append(&w->mem, k, kn)) ||
        (rc = cairn_buf_append(&w->mem, v, n)))
        return rc;
    return hcache_mark(&a->cache, w);
}

/* Writes one document: the reference to the event that holds it, or the
 * document itself. */
static int aentry_write(struct hctx *ctx, struct hcursor *c, struct hentry *w)
{
    (void)ctx;
    uint64_t dseq = ((struct aentry *)w)->dseq;
    uint8_t ref[VREF_LEN];
    return dseq ? hctx_cursor_put(c, w->mem.data, w->vn, ref, vref_make(ref, dseq))
                : hctx_cursor_put(c, w->mem.data, w->vn, w->mem.data + w->vn, w->mem.len - w->vn);
}

/* Puts the documents written since the last put, in key order through one
 * cursor; they stay in the cache, clean. */
static int put_dirty(struct hctx *ctx)
{
    struct alerts *a = self(ctx);
    return hcache_flush(ctx, &a->cache, a->view, aentry_write, SIZE_MAX);
}

/* Puts every alert document this transaction wrote (and not put yet), and
 * drops the cache's documents when it holds more than CACHE_MAX. */
static int alerts_flush(struct hctx *ctx)
{
    struct alerts *a = self(ctx);
    return hcache_flush(ctx, &a->cache, a->view, aentry_write, CACHE_MAX);
}

/* load() of the view: the document commit wrote last, if any (from the
 * cache, the view, or the event the view refers to). */
static int load_view(struct hctx *ctx, const uint8_t *k, size_t kn, struct loaded *l)
{
    struct hentry *w = hcache_find(&self(ctx)->cache, k, kn);
    bool maybe;
    memset(l, 0, sizeof *l);
    msgpack_unpacked_init(&l->u);
    int rc = w ? 0 : hkset_maybe(ctx, &self(ctx)->vk, self(ctx)->view, k, kn, &maybe);
    if (!w && (rc || !maybe)) /* as load() finding nothing */
        return rc;
    if (w)
        return load_bytes(l, w->mem.data + w->vn, w->mem.len - w->vn);
    MDB_val v;
    if ((rc = hctx_get(ctx, self(ctx)->view, k, kn, &v)))
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    uint64_t dseq = vref_dseq(&v);
    if (!dseq)
        return load_bytes(l, v.mv_data, v.mv_size);
    const uint8_t *p;
    size_t n;
    if ((rc = hctx_stream_payload(ctx, dseq, &p, &n)))
        return rc == CAIRN_ENOTFOUND ? CAIRN_ECORRUPT : rc; /* a reference to no event */
    return load_bytes(l, p, n);
}

/* ====================================================================== the alert document */

enum astate { A_NONE, A_FIRING, A_ACKED, A_RESOLVED };
static const char *const astate_names[] = {NULL, "firing", "acknowledged", "resolved"};

/* An alert, decoded (strings point into the stored document or the event:
 * valid while both are). */
struct alert {
    char id[17];
    struct cairn_str tenant, source, type, key, rule, severity, title, silenced_by;
    struct cairn_str ack_by, ack_reason, resolution;
    enum astate state;
    bool silenced, has_ack, has_escalated, has_escalate_at, has_resolved;
    int64_t opened_at, last_at, ack_at, escalated_at, escalate_at, resolved_at;
    uint64_t count, occurrences, last_seq;
    const msgpack_object *details;
    /* The bytes of details when they are a cause's payload (else p NULL):
     * written as they are instead of packing the decoded object again. */
    struct cairn_str details_raw;
};

/* SHA-256, fetched once per process: EVP_sha256() in EVP_DigestInit_ex
 * fetches it again on every call, which was half of alert_id's cost. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* The parts are joined in one buffer and hashed with the one-shot
 * EVP_Digest when they fit (always, within the keys' limits): a digest
 * context per alert (EVP_MD_CTX_new, Init, four Updates, Final, free)
 * cost more than the hash. */
static void alert_id(const struct cairn_str *source, const struct cairn_str *tenant,
                     const struct cairn_str *key, const struct cairn_str *rule, char out[17])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdn = 0;
    pthread_once(&sha256_once, sha256_fetch);
    const struct cairn_str *parts[] = {source, tenant, key, rule};
    uint8_t buf[1024];
    size_t n = 0;
    for (int i = 0; i < 4; i++)
        n += parts[i]->n + (i < 3);
    bool ok = sha256_md != NULL;
    if (ok && n <= sizeof buf) {
        n = 0;
        for (int i = 0; i < 4; i++) {
            if (parts[i]->n)
                memcpy(buf + n, parts[i]->p, parts[i]->n);
            n += parts[i]->n;
            if (i < 3)
                buf[n++] = 0;
        }
        ok = EVP_Digest(buf, n, md, &mdn, sha256_md, NULL);
    } else if (ok) {
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        ok = c && EVP_DigestInit_ex2(c, sha256_md, NULL);
        for (int i = 0; i < 4 && ok; i++)
            ok = EVP_DigestUpdate(c, parts[i]->p ? parts[i]->p : "", parts[i]->n) &&
                 (i == 3 || EVP_DigestUpdate(c, "", 1));
        ok = ok && EVP_DigestFinal_ex(c, md, &mdn);
        EVP_MD_CTX_free(c);
    }
    if (!ok)
        memset(md, 0, 8); /* allocation failure in OpenSSL: visible, not fatal */
    cairn_hex(md, 8, out);
}

static void read_alert(const msgpack_object *doc, struct alert *a)
{
    memset(a, 0, sizeof *a);
    if (!doc)
        return;
    struct cairn_str s;
    if (mp_str(mp_get(doc, "alert_id"), &s) && s.n == 16)
        memcpy(a->id, s.p, 16);
    mp_str(mp_get(doc, "tenant"), &a->tenant);
    mp_str(mp_get(doc, "source"), &a->source);
    mp_str(mp_get(doc, "type"), &a->type);
    mp_str(mp_get(doc, "key"), &a->key);
    mp_str(mp_get(doc, "rule"), &a->rule);
    mp_str(mp_get(doc, "severity"), &a->severity);
    mp_str(mp_get(doc, "title"), &a->title);
    mp_str(mp_get(doc, "silenced_by"), &a->silenced_by);
    mp_bool(mp_get(doc, "silenced"), &a->silenced);
    if (mp_str(mp_get(doc, "state"), &s))
        for (int i = A_FIRING; i <= A_RESOLVED; i++)
            if (str_is(&s, astate_names[i]))
                a->state = (enum astate)i;
    get_time(mp_get(doc, "opened_at"), &a->opened_at);
    get_time(mp_get(doc, "last_triggered_at"), &a->last_at);
    const msgpack_object *ack = mp_get(doc, "acknowledged");
    if (ack && ack->type == MSGPACK_OBJECT_MAP) {
        a->has_ack = true;
        mp_str(mp_get(ack, "by"), &a->ack_by);
        mp_str(mp_get(ack, "reason"), &a->ack_reason);
        get_time(mp_get(ack, "at"), &a->ack_at);
    }
    a->has_escalate_at = get_time(mp_get(doc, "escalate_at"), &a->escalate_at);
    a->has_escalated = get_time(mp_get(doc, "escalated_at"), &a->escalated_at);
    a->has_resolved = get_time(mp_get(doc, "resolved_at"), &a->resolved_at);
    mp_str(mp_get(doc, "resolution"), &a->resolution);
    int64_t v;
    a->count = mp_i64(mp_get(doc, "count"), &v) && v > 0 ? (uint64_t)v : 0;
    a->occurrences = mp_i64(mp_get(doc, "occurrences"), &v) && v > 0 ? (uint64_t)v : 0;
    a->details = mp_get(doc, "details");
}

/* A string value, nil when s->p is NULL (as mpw_kv_str). */
static uint8_t *pk_str(uint8_t *o, const struct cairn_str *s)
{
    return s->p ? mpd_strn(o, s->p, s->n) : mpd_nil(o);
}

static uint8_t *pk_time_opt(uint8_t *o, bool set, int64_t t)
{
    return set ? mpd_time(o, t) : mpd_nil(o);
}

/* The document, keys in this order (README, "Alerts"), appended to b. It
 * used to be packed field by field through msgpack-c (mpw_kv_*); it is
 * packed directly into room reserved up front (handler.h, "direct
 * packing": the same bytes), and details, when they are the cause's
 * payload, are copied as they are instead of packed again from their
 * decoded form — an alert per high/critical violation made that repacking
 * a fifth of the alerts handler. A cause's payload repacks to the same
 * bytes (every producer packs with msgpack-c or mpd_*); the sanitized
 * test builds check it. */
static int write_alert(struct cairn_buf *b, const struct alert *a)
{
    const struct cairn_str *strs[] = {&a->tenant, &a->source,     &a->type,      &a->key,
                                      &a->rule,   &a->severity,   &a->title,     &a->silenced_by,
                                      &a->ack_by, &a->ack_reason, &a->resolution};
    size_t bound = 512 + 16 + 8 * MPD_TIME_MAX;
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        bound += strs[i]->n + MPD_HDR_MAX;
    int rc = cairn_buf_reserve(b, bound);
    if (rc)
        return rc;
    uint8_t *o = b->data + b->len;
    o = mpd_map(o, 22);
    o = mpd_key(o, "alert_id");
    o = mpd_strn(o, a->id, 16);
    o = mpd_key(o, "tenant");
    o = pk_str(o, &a->tenant);
    o = mpd_key(o, "source");
    o = pk_str(o, &a->source);
    o = mpd_key(o, "type");
    o = pk_str(o, &a->type);
    o = mpd_key(o, "key");
    o = pk_str(o, &a->key);
    o = mpd_key(o, "rule");
    o = pk_str(o, &a->rule);
    o = mpd_key(o, "severity");
    o = pk_str(o, &a->severity);
    o = mpd_key(o, "state");
    const char *st = astate_names[a->state];
    o = st ? mpd_strn(o, st, strlen(st)) : mpd_nil(o);
    o = mpd_key(o, "silenced");
    o = mpd_bool(o, a->silenced);
    o = mpd_key(o, "silenced_by");
    o = pk_str(o, &a->silenced_by);
    o = mpd_key(o, "title");
    o = pk_str(o, &a->title);
    o = mpd_key(o, "opened_at");
    o = mpd_time(o, a->opened_at);
    o = mpd_key(o, "last_triggered_at");
    o = mpd_time(o, a->last_at);
    o = mpd_key(o, "count");
    o = mpd_u64(o, a->count);
    o = mpd_key(o, "occurrences");
    o = mpd_u64(o, a->occurrences);
    o = mpd_key(o, "acknowledged");
    if (a->has_ack) {
        o = mpd_map(o, 3);
        o = mpd_key(o, "by");
        o = pk_str(o, &a->ack_by);
        o = mpd_key(o, "reason");
        o = pk_str(o, &a->ack_reason);
        o = mpd_key(o, "at");
        o = mpd_time(o, a->ack_at);
    } else {
        o = mpd_nil(o);
    }
    o = mpd_key(o, "escalate_at");
    o = pk_time_opt(o, a->has_escalate_at, a->escalate_at);
    o = mpd_key(o, "escalated_at");
    o = pk_time_opt(o, a->has_escalated, a->escalated_at);
    o = mpd_key(o, "resolved_at");
    o = pk_time_opt(o, a->has_resolved, a->resolved_at);
    o = mpd_key(o, "resolution");
    o = pk_str(o, &a->resolution);
    o = mpd_key(o, "details");
    b->len = (size_t)(o - b->data);
    if (a->details_raw.p) {
        rc = cairn_buf_append(b, a->details_raw.p, a->details_raw.n);
        /* Checked in the sanitized test builds only (assertions stay on in
         * every build, and this check would cost what the copy saves): the
         * bytes decode and pack again to themselves. */
#if defined(__SANITIZE_ADDRESS__)
        struct cairn_buf chk;
        struct mpw cw;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        cairn_buf_init(&chk, DOC_MAX);
        mpw_init(&cw, &chk);
        size_t used = 0;
        bool one = msgpack_unpack_next(&u, a->details_raw.p, a->details_raw.n, &used) ==
                       MSGPACK_UNPACK_SUCCESS &&
                   used == a->details_raw.n;
        assert(one);
        mpw_obj(&cw, &u.data);
        assert(mpw_finish(&cw) ||
               (chk.len == a->details_raw.n && !memcmp(chk.data, a->details_raw.p, chk.len)));
        cairn_buf_deinit(&chk);
        msgpack_unpacked_destroy(&u);
        (void)one;
#endif
    } else {
        struct mpw w;
        mpw_init(&w, b);
        mpw_obj(&w, a->details);
        rc = mpw_finish(&w);
    }
    if (!rc)
        rc = cairn_buf_reserve(b, 16 + MPD_HDR_MAX);
    if (rc)
        return rc;
    o = b->data + b->len;
    o = mpd_key(o, "last_seq");
    o = mpd_u64(o, a->last_seq);
    b->len = (size_t)(o - b->data);
    return 0;
}

/* ====================================================================== silences */

/* The alert's label `name`, or false. */
static bool alert_label(const struct alert *a, const struct cairn_str *name, struct cairn_str *v)
{
    static const char *const names[] = {"source", "type", "severity", "key", "rule", "alert_id"};
    const struct cairn_str vals[] = {a->source, a->type, a->severity, a->key, a->rule, {a->id, 16}};
    for (int i = 0; i < 6; i++)
        if (str_is(name, names[i])) {
            *v = vals[i];
            return true;
        }
    return false;
}

static bool silence_matches(const msgpack_object *m, const struct alert *a)
{
    if (!m || m->type != MSGPACK_OBJECT_MAP || m->via.map.size == 0)
        return false;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        struct cairn_str name, want, have;
        if (!mp_str(&m->via.map.ptr[i].key, &name) || !mp_str(&m->via.map.ptr[i].val, &want) ||
            !alert_label(a, &name, &have) || !str_eq(&want, &have))
            return false;
    }
    return true;
}

/* Sets a->silenced / silenced_by (copied into idbuf) for a transition at t. */
static int judge_silence(struct hctx *ctx, struct alert *a, int64_t t, char *idbuf, size_t cap)
{
    struct alerts *al = self(ctx);
    uint8_t prefix[1 + CAIRN_TENANT_MAX];
    struct cairn_str none = {"", 0};
    size_t pn = hkey_make(prefix, sizeof prefix, &a->tenant, &none);
    struct hcursor *c;
    MDB_val k, v;
    a->silenced = false;
    a->silenced_by = (struct cairn_str){NULL, 0};
    if (!al->any_silences)
        return 0;
    int rc = hctx_cursor_open(ctx, al->silences, prefix, pn, &c);
    for (int n = 0; !rc && n < SILENCES_SCAN_MAX && !a->silenced; n++) {
        if ((rc = hctx_cursor_next(c, &k, &v)))
            break;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&u);
            rc = CAIRN_ECORRUPT;
            break;
        }
        int64_t from = 0, to = 0;
        struct cairn_str sid;
        get_time(mp_get(&u.data, "starts_at"), &from);
        get_time(mp_get(&u.data, "ends_at"), &to);
        if (to <= t && to > 0) {
            rc = hctx_cursor_del(c); /* expired: never matches again (times only grow) */
        } else if (from <= t && silence_matches(mp_get(&u.data, "matchers"), a) &&
                   mp_str(mp_get(&u.data, "silence_id"), &sid) && sid.n < cap) {
            memcpy(idbuf, sid.p, sid.n);
            a->silenced = true;
            a->silenced_by = (struct cairn_str){idbuf, sid.n};
        }
        msgpack_unpacked_destroy(&u);
    }
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static int on_silence(struct hctx *ctx, const struct event *ev)
{
    struct alerts *al = self(ctx);
    struct cairn_str sid;
    int64_t from = ev->time, to;
    if (!mp_str(mp_get(ev->body, "silence_id"), &sid) || sid.n > 128 ||
        !get_time(mp_get(ev->body, "ends_at"), &to))
        return 0;
    if (mp_get(ev->body, "starts_at") && !get_time(mp_get(ev->body, "starts_at"), &from))
        return 0;
    uint8_t k[1 + CAIRN_TENANT_MAX + 128];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &sid);
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, DOC_MAX);
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 8);
    mpw_kv_str(&w, "silence_id", &sid);
    mpw_kv_str(&w, "tenant", &ev->tenant);
    mpw_kv_obj(&w, "matchers", mp_get(ev->body, "matchers"));
    mpw_kv_time(&w, "starts_at", from);
    mpw_kv_time(&w, "ends_at", to);
    mpw_kv_obj(&w, "created_by", mp_get(ev->body, "created_by"));
    mpw_kv_obj(&w, "comment", mp_get(ev->body, "comment"));
    mpw_kv_u64(&w, "last_seq", ev->seq);
    int rc = mpw_finish(&w);
    if (!rc && to > ev->time)
        al->any_silences = true;
    if (!rc)
        rc = to > ev->time ? hctx_put(ctx, al->silences, k, kn, b.data, b.len)
                           : hctx_del(ctx, al->silences, k, kn);
    cairn_buf_deinit(&b);
    return rc;
}

/* ====================================================================== transitions */

static size_t esc_key(uint8_t *out, int64_t t, const struct alert *a)
{
    struct cairn_str id = {a->id, 16};
    put_biased(out, t);
    return 8 + hkey_make(out + 8, 1 + CAIRN_TENANT_MAX + 16, &a->tenant, &id);
}

static int esc_del(struct hctx *ctx, const struct alert *a)
{
    uint8_t k[8 + 1 + CAIRN_TENANT_MAX + 16];
    if (!a->has_escalate_at || a->has_escalated)
        return 0;
    return hctx_del(ctx, self(ctx)->esc, k, esc_key(k, a->escalate_at, a));
}

/* Sets escalate_at from opened_at and the severity; indexes it. */
static int esc_set(struct hctx *ctx, struct alert *a)
{
    struct alerts *al = self(ctx);
    uint8_t k[8 + 1 + CAIRN_TENANT_MAX + 16];
    int sev = sev_parse(&a->severity);
    int64_t after = al->esc_ns[sev < 0 ? SEV_LOW : sev];
    a->has_escalate_at = after > 0;
    if (!a->has_escalate_at)
        return 0;
    a->escalate_at = a->opened_at > INT64_MAX - after ? INT64_MAX : a->opened_at + after;
    return hctx_put(ctx, al->esc, k, esc_key(k, a->escalate_at, a), "", 0);
}

/* Writes the alert and, unless silenced (judged at t) or type is NULL,
 * emits `type` with the document as payload. */
static int commit(struct hctx *ctx, const struct event *cause, struct alert *a, const char *type,
                  int64_t t)
{
    struct alerts *al = self(ctx);
    char sidbuf[129];
    int rc = type ? judge_silence(ctx, a, t, sidbuf, sizeof sidbuf) : 0;
    if (rc)
        return rc;
    a->last_seq = cause->seq;
    uint8_t k[1 + CAIRN_TENANT_MAX + 16];
    struct cairn_str id = {a->id, 16};
    size_t kn = hkey_make(k, sizeof k, &a->tenant, &id);
    struct cairn_buf *b = &al->doc;
    cairn_buf_reset(b);
    rc = write_alert(b, a);
    uint64_t dseq = 0; /* the event carrying the document (view records) */
    if (!rc && type && !a->silenced &&
        !(rc = hctx_emit(ctx, cause, type, &a->tenant, &id, b->data, b->len)))
        dseq = hctx_emitted_dseq(ctx);
    if (!rc)
        rc = cache_put(al, k, kn, b->data, b->len, dseq);
    if (!rc && al->cache.ndirty >= DEFER_MAX)
        rc = put_dirty(ctx); /* see DEFER_MAX */
    return rc;
}

/* What opens or resolves an alert. */
struct cause_fp {
    struct cairn_str tenant, source, type, key, rule, severity, title;
    const msgpack_object *details;
    struct cairn_str details_raw; /* the bytes of details when known (p NULL: not) */
};

static int load_alert(struct hctx *ctx, const struct cairn_str *tenant, const char id[16],
                      struct loaded *l, struct alert *a)
{
    uint8_t k[1 + CAIRN_TENANT_MAX + 16];
    struct cairn_str ids = {id, 16};
    int rc = load_view(ctx, k, hkey_make(k, sizeof k, tenant, &ids), l);
    read_alert(l->doc, a);
    memcpy(a->id, id, 16);
    a->id[16] = '\0';
    a->tenant = *tenant;
    return rc;
}

static int alert_open(struct hctx *ctx, const struct event *cause, const struct cause_fp *f)
{
    char id[17];
    struct loaded l;
    struct alert a;
    alert_id(&f->source, &f->tenant, &f->key, &f->rule, id);
    int rc = load_alert(ctx, &f->tenant, id, &l, &a);
    bool fresh = a.state == A_NONE || a.state == A_RESOLVED;
    bool sev_changed = !fresh && !str_eq(&a.severity, &f->severity);
    if (!rc && !fresh && sev_changed && a.state == A_FIRING)
        rc = esc_del(ctx, &a);
    a.source = f->source;
    a.type = f->type;
    a.key = f->key;
    a.rule = f->rule;
    a.severity = f->severity;
    a.title = f->title;
    a.details = f->details;
    a.details_raw = f->details_raw;
    a.last_at = cause->time;
    a.count = fresh ? 1 : a.count + 1;
    if (fresh) {
        a.state = A_FIRING;
        a.opened_at = cause->time;
        a.occurrences++;
        a.has_ack = a.has_escalated = a.has_resolved = false;
        a.resolution = (struct cairn_str){NULL, 0};
    }
    if (!rc && a.state == A_FIRING && !a.has_escalated && (fresh || sev_changed))
        rc = esc_set(ctx, &a);
    if (!rc)
        rc = commit(ctx, cause, &a, fresh ? "alert.triggered" : NULL, cause->time);
    unload(&l);
    return rc;
}

/* details_from_cause: the alert's details become the cause's payload. */
static int alert_resolve(struct hctx *ctx, const struct event *cause,
                         const struct cairn_str *tenant, const char id[16], const char *resolution,
                         bool details_from_cause)
{
    struct loaded l;
    struct alert a;
    int rc = load_alert(ctx, tenant, id, &l, &a);
    if (!rc && (a.state == A_FIRING || a.state == A_ACKED)) {
        rc = a.state == A_FIRING ? esc_del(ctx, &a) : 0;
        a.state = A_RESOLVED;
        a.has_resolved = true;
        a.resolved_at = cause->time;
        a.resolution = cs(resolution);
        if (details_from_cause) {
            a.details = cause->body;
            a.details_raw = (struct cairn_str){(const char *)cause->payload, cause->payload_len};
        }
        if (!rc)
            rc = commit(ctx, cause, &a, "alert.resolved", cause->time);
    }
    unload(&l);
    return rc;
}

static const struct source *source_of(const struct cairn_str *type, enum action act)
{
    for (size_t i = 0; i < NSOURCES; i++)
        if (str_is(type, sources[i].type) && sources[i].action == act)
            return &sources[i];
    return NULL;
}

static int on_ack(struct hctx *ctx, const struct event *ev)
{
    struct cairn_str id;
    if (!mp_str(mp_get(ev->body, "alert_id"), &id) || id.n != 16)
        return 0;
    struct loaded l;
    struct alert a;
    int rc = load_alert(ctx, &ev->tenant, id.p, &l, &a);
    if (!rc && a.state == A_FIRING) {
        rc = esc_del(ctx, &a);
        a.state = A_ACKED;
        a.has_ack = true;
        mp_str(mp_get(ev->body, "by"), &a.ack_by);
        a.ack_reason = (struct cairn_str){NULL, 0};
        mp_str(mp_get(ev->body, "reason"), &a.ack_reason);
        a.ack_at = ev->time;
        if (!rc)
            rc = commit(ctx, ev, &a, "alert.acknowledged", ev->time);
        const struct source *s = source_of(&a.type, OPENS);
        if (!rc && s && s->one_shot)
            rc = alert_resolve(ctx, ev, &ev->tenant, a.id, "acknowledged", false);
    }
    unload(&l);
    return rc;
}

/* ====================================================================== a payload's fields, raw */

/* Reads string fields of a derived event's payload (a msgpack map) from
 * its bytes, without decoding it: out[i] is what
 * mp_str(mp_get(body, keys[i])) gives — the value of the first key equal
 * to keys[i] when it is a string — and found[i] whether it did. Why: the
 * alerts handler needs at most four short top-level strings of a cause
 * (severity, key, rule, title), which come first in a violation document,
 * and most causes stop at the severity; decoding the whole document into
 * msgpack objects for that was a tenth of the instructions of a first
 * discovery with alerts. One pass (mp_raw_fields), which stops once every
 * key is seen; a malformed payload reads as missing fields. */
static void raw_fields(const struct event *ev, const char *const *keys, struct cairn_str *out,
                       bool *found, size_t nk)
{
    msgpack_object o[4];
    assert(nk <= 4);
    uint64_t got = ev->payload ? mp_raw_fields(ev->payload, ev->payload_len, keys, nk, o, NULL) : 0;
    for (size_t i = 0; i < nk; i++)
        found[i] = (got >> i & 1) && mp_str(&o[i], &out[i]);
}

/* ====================================================================== sources */

/* A derived event of a source row. Its fields are read from the payload's
 * bytes (raw_fields), so ev->body is never needed: the engine may leave
 * it undecoded. */
static int on_source(struct hctx *ctx, const struct event *ev, const struct source *s, size_t row)
{
    struct cause_fp f = {.tenant = ev->tenant, .source = cs(s->source), .type = ev->type};
    char title[TITLE_MAX];
    /* One scan for every field: key, title, then rule and severity when
     * the row takes them from the payload. */
    enum { F_KEY, F_TITLE, F_RULE, F_SEV };
    const char *keys[4] = {s->key_field, "title", s->rule_field, "severity"};
    struct cairn_str v[4] = {{NULL, 0}};
    bool found[4] = {false};
    if (s->rule_field) {
        raw_fields(ev, keys, v, found, s->severity ? 3 : 4);
    } else {
        keys[F_RULE] = keys[F_SEV];
        raw_fields(ev, keys, v, found, s->severity ? 2 : 3);
        v[F_SEV] = v[F_RULE], found[F_SEV] = found[F_RULE], found[F_RULE] = false;
    }
    struct cairn_str sev = s->severity                                 ? cs(s->severity)
                           : found[F_SEV] && sev_parse(&v[F_SEV]) >= 0 ? v[F_SEV]
                                                                       : cs("low");
    /* An opening cause below the source's minimum is ignored */
    if (s->action == OPENS && sev_parse(&sev) < self(ctx)->min_sev[row])
        return 0;
    f.key = found[F_KEY] && v[F_KEY].n <= CAIRN_KEY_MAX ? v[F_KEY] : ev->key;
    f.rule = found[F_RULE] && v[F_RULE].n <= CAIRN_KEY_MAX ? v[F_RULE] : cs(s->rule_const);
    char id[17];
    if (s->action == RESOLVES) {
        alert_id(&f.source, &f.tenant, &f.key, &f.rule, id);
        return alert_resolve(ctx, ev, &ev->tenant, id, s->type, true);
    }
    f.severity = sev;
    f.details = ev->body;
    f.details_raw = (struct cairn_str){(const char *)ev->payload, ev->payload_len};
    if (found[F_TITLE] && v[F_TITLE].n <= TITLE_MAX) {
        f.title = v[F_TITLE];
    } else {
        int n = snprintf(title, sizeof title, "%s %.*s", s->type,
                         (int)(f.key.n > 200 ? 200 : f.key.n), f.key.p ? f.key.p : "");
        f.title = (struct cairn_str){title, n < 0 ? 0 : (size_t)n};
    }
    return alert_open(ctx, ev, &f);
}

/* Collects (copies) up to max keys of a time index (keys start with a
 * biased event time) that are due at `now`, so the caller can act on them
 * with the cursor closed. Keys longer than stride end the collection. */
static int due_keys(struct hctx *ctx, unsigned db, int64_t now, uint8_t *keys, size_t stride,
                    size_t max, size_t *kns, size_t *nk)
{
    struct hcursor *c;
    MDB_val k, v;
    int rc = hctx_cursor_open(ctx, db, NULL, 0, &c);
    if (rc)
        return rc;
    while (*nk < max && !(rc = hctx_cursor_next(c, &k, &v))) {
        if (get_biased(k.mv_data) > now || k.mv_size > stride)
            break;
        memcpy(keys + *nk * stride, k.mv_data, k.mv_size);
        kns[(*nk)++] = k.mv_size;
    }
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* Escalates the firing alerts whose escalate_at passed. */
static int escalate(struct hctx *ctx, const struct event *tick)
{
    struct alerts *al = self(ctx);
    int rc = 0;
    for (int done = 0; !rc && done < ESCALATIONS_PER_TICK;) {
        /* Collect a few keys, then act with the cursor closed. */
        uint8_t keys[64][8 + 1 + CAIRN_TENANT_MAX + 16];
        size_t kns[64], nk = 0;
        size_t want = ESCALATIONS_PER_TICK - done < 64 ? (size_t)(ESCALATIONS_PER_TICK - done) : 64;
        rc = due_keys(ctx, al->esc, tick->time, &keys[0][0], sizeof keys[0], want, kns, &nk);
        if (rc || nk == 0)
            break;
        for (size_t i = 0; i < nk && !rc; i++, done++) {
            struct cairn_str tenant, id;
            if ((rc = hctx_del(ctx, al->esc, keys[i], kns[i])))
                break;
            if (!hkey_split(keys[i] + 8, kns[i] - 8, &tenant, &id) || id.n != 16)
                continue;
            struct loaded l;
            struct alert a;
            rc = load_alert(ctx, &tenant, id.p, &l, &a);
            if (!rc && a.state == A_FIRING && !a.has_escalated) {
                a.has_escalated = true;
                a.escalated_at = tick->time;
                rc = commit(ctx, tick, &a, "alert.escalated", tick->time);
            }
            unload(&l);
        }
    }
    return rc;
}

/* ====================================================================== ALARMS
 *
 * CloudWatch-style threshold alarms, exactly as implemented:
 *
 *  - Periods are aligned to the epoch: [k*P, (k+1)*P) for period_s = P. A
 *    sample (a `metric` input whose name equals `metric` and whose labels
 *    include every matcher) counts in the period of its event time. The
 *    datapoint of a period is its statistic: avg (sum/count), min, max,
 *    sum, count (the number of samples). A period without samples has no
 *    datapoint: it is MISSING (count too: CloudWatch's SampleCount is
 *    missing, not 0, without data).
 *  - A datapoint breaches when `value <comparison> threshold`.
 *  - A period is closed by the first tick whose time is >= its end; each
 *    closed period is evaluated in order (several per tick after a gap).
 *    A sample for a closed period is late: dropped, counted in
 *    late_samples (ticks are the clock; state never changes backwards).
 *  - The first period is the one holding the definition's event time.
 *    The evaluation window is the last N = evaluation_periods closed
 *    periods; periods before the first one are missing (there was no
 *    data). Unlike CloudWatch we never look back past N periods for more
 *    real datapoints: a state depends only on its window.
 *  - With b breaching datapoints, m missing periods in the window and
 *    M = datapoints_to_alarm:
 *      breaching     missing periods breach: ALARM if b + m >= M, else OK
 *      notBreaching  missing periods are fine: ALARM if b >= M, else OK
 *      missing       m == N: INSUFFICIENT_DATA; else ALARM if b >= M, else OK
 *      ignore        m == N: the state stays; else ALARM if b >= M, else OK
 *    A new alarm starts in INSUFFICIENT_DATA.
 *  - Entering ALARM opens an alert (source "alarm", key and rule the
 *    alarm id, type "alarm.state", the alarm's severity); leaving ALARM
 *    (to OK or INSUFFICIENT_DATA) resolves it (resolution "alarm.ok" /
 *    "alarm.insufficient_data"). Redefining or deleting an alarm in ALARM
 *    resolves it too ("alarm.redefined" / "alarm.deleted"); a redefinition
 *    restarts evaluation (aggregates dropped, INSUFFICIENT_DATA, first
 *    period = the redefinition's).
 *
 * The alarm document: alarm_id, tenant, definition (the alarm.define
 * payload), state, state_since, alert_id, next_period (start of the next
 * period to close), window [value|null, …] (oldest first, <= N),
 * history [{period, value, state}] (last HISTORY_MAX evaluations),
 * late_samples, last_seq.
 */

enum stat { ST_AVG, ST_MIN, ST_MAX, ST_SUM, ST_COUNT };
enum cmp { C_GT, C_GE, C_LT, C_LE };
enum missing { M_MISSING, M_IGNORE, M_BREACHING, M_NOT_BREACHING };
enum alstate { AL_INSUFFICIENT, AL_OK, AL_ALARM };
static const char *const alstate_names[] = {"INSUFFICIENT_DATA", "OK", "ALARM"};
static const char *const stat_names[] = {"avg", "min", "max", "sum", "count"};
static const char *const cmp_names[] = {">", ">=", "<", "<="};
static const char *const missing_names[] = {"missing", "ignore", "breaching", "notBreaching"};

struct alarm_def {
    struct cairn_str alarm_id, metric, severity;
    const msgpack_object *matchers;
    int stat, cmp, missing;
    int64_t period_ns;
    double threshold;
    int n, m;
};

static int name_index(const msgpack_object *o, const char *const *names, int count)
{
    struct cairn_str s;
    if (!mp_str(o, &s))
        return -1;
    for (int i = 0; i < count; i++)
        if (str_is(&s, names[i]))
            return i;
    return -1;
}

/* Parses an alarm.define payload; false when it is not a usable one. */
static bool parse_def(const msgpack_object *p, struct alarm_def *d, struct cairn_error *e)
{
    int64_t per, n, m;
    memset(d, 0, sizeof *d);
    d->matchers = mp_get(p, "matchers");
    if (!mp_str(mp_get(p, "alarm_id"), &d->alarm_id) || d->alarm_id.n == 0 || d->alarm_id.n > 128 ||
        !mp_str(mp_get(p, "metric"), &d->metric) || d->metric.n == 0 || d->metric.n > 200)
        return cairn_error_set(e, "invalid_value", "/payload/alarm_id",
                               "alarm_id and metric "
                               "are required"),
               false;
    d->stat = name_index(mp_get(p, "statistic"), stat_names, 5);
    d->cmp = name_index(mp_get(p, "comparison"), cmp_names, 4);
    d->missing =
        mp_get(p, "missing_data") ? name_index(mp_get(p, "missing_data"), missing_names, 4) : 0;
    if (!mp_get(p, "severity"))
        d->severity = cs("high");
    else if (!mp_str(mp_get(p, "severity"), &d->severity) || sev_parse(&d->severity) < 0)
        return cairn_error_set(e, "invalid_value", "/payload/severity", "unknown severity"), false;
    if (d->stat < 0 || d->cmp < 0 || d->missing < 0 ||
        !mp_num(mp_get(p, "threshold"), &d->threshold) || !mp_i64(mp_get(p, "period_s"), &per) ||
        per < 1 || per > 86400 || !mp_i64(mp_get(p, "evaluation_periods"), &n) || n < 1 ||
        n > WINDOW_MAX)
        return cairn_error_set(e, "invalid_value", "/payload", "not a valid alarm definition"),
               false;
    m = n;
    if (mp_get(p, "datapoints_to_alarm") &&
        (!mp_i64(mp_get(p, "datapoints_to_alarm"), &m) || m < 1 || m > n))
        return cairn_error_set(e, "out_of_range", "/payload/datapoints_to_alarm",
                               "datapoints_to_alarm must be 1..evaluation_periods (%lld)",
                               (long long)n),
               false;
    if (d->matchers &&
        (d->matchers->type != MSGPACK_OBJECT_MAP || d->matchers->via.map.size > MATCHERS_MAX))
        return cairn_error_set(e, "too_long", "/payload/matchers", "at most %d matchers",
                               MATCHERS_MAX),
               false;
    d->period_ns = per * 1000000000LL;
    d->n = (int)n;
    d->m = (int)m;
    return true;
}

/* The runtime part of an alarm document. */
struct alarm_rt {
    int state;
    int64_t state_since, next_period;
    int wn;
    bool present[WINDOW_MAX];
    double vals[WINDOW_MAX];
    uint64_t late;
    const msgpack_object *history; /* the stored one */
    /* evaluations added this time (appended to history) */
    int nh;
    int64_t h_period[HISTORY_MAX];
    bool h_present[HISTORY_MAX];
    double h_val[HISTORY_MAX];
    int h_state[HISTORY_MAX];
};

static void read_rt(const msgpack_object *doc, struct alarm_rt *r)
{
    memset(r, 0, sizeof *r);
    r->state = name_index(mp_get(doc, "state"), alstate_names, 3);
    if (r->state < 0)
        r->state = AL_INSUFFICIENT;
    get_time(mp_get(doc, "state_since"), &r->state_since);
    get_time(mp_get(doc, "next_period"), &r->next_period);
    const msgpack_object *w = mp_get(doc, "window");
    for (uint32_t i = 0;
         w && w->type == MSGPACK_OBJECT_ARRAY && i < w->via.array.size && r->wn < WINDOW_MAX;
         i++, r->wn++)
        r->present[r->wn] = mp_num(&w->via.array.ptr[i], &r->vals[r->wn]);
    int64_t v;
    r->late = mp_i64(mp_get(doc, "late_samples"), &v) && v > 0 ? (uint64_t)v : 0;
    r->history = mp_get(doc, "history");
}

static bool breaches(const struct alarm_def *d, double v)
{
    switch (d->cmp) {
    case C_GT: return v > d->threshold;
    case C_GE: return v >= d->threshold;
    case C_LT: return v < d->threshold;
    default: return v <= d->threshold;
    }
}

/* The state after evaluating the window (see the rules above). */
static int evaluate(const struct alarm_def *d, const struct alarm_rt *r)
{
    int b = 0, m = d->n - r->wn;
    for (int i = 0; i < r->wn; i++) {
        if (!r->present[i])
            m++;
        else if (breaches(d, r->vals[i]))
            b++;
    }
    switch (d->missing) {
    case M_BREACHING: return b + m >= d->m ? AL_ALARM : AL_OK;
    case M_NOT_BREACHING: return b >= d->m ? AL_ALARM : AL_OK;
    case M_IGNORE: return m == d->n ? r->state : b >= d->m ? AL_ALARM : AL_OK;
    default: return m == d->n ? AL_INSUFFICIENT : b >= d->m ? AL_ALARM : AL_OK;
    }
}

static int write_alarm(struct mpw *w, const struct cairn_str *tenant, const msgpack_object *def,
                       const struct alarm_def *d, const struct alarm_rt *r, uint64_t seq)
{
    char id[17];
    struct cairn_str src = cs(ALARM_SOURCE);
    alert_id(&src, tenant, &d->alarm_id, &d->alarm_id, id);
    msgpack_pack_map(&w->pk, 11);
    mpw_kv_str(w, "alarm_id", &d->alarm_id);
    mpw_kv_str(w, "tenant", tenant);
    mpw_kv_obj(w, "definition", def);
    mpw_kv_cstr(w, "state", alstate_names[r->state]);
    mpw_kv_time(w, "state_since", r->state_since);
    mpw_kv_cstr(w, "alert_id", id);
    mpw_kv_time(w, "next_period", r->next_period);
    mpw_str(w, "window");
    msgpack_pack_array(&w->pk, (size_t)r->wn);
    for (int i = 0; i < r->wn; i++)
        if (r->present[i])
            msgpack_pack_double(&w->pk, r->vals[i]);
        else
            msgpack_pack_nil(&w->pk);
    const msgpack_object *h = r->history;
    uint32_t hn = h && h->type == MSGPACK_OBJECT_ARRAY ? h->via.array.size : 0;
    uint32_t keep = (uint32_t)(HISTORY_MAX - r->nh) < hn ? (uint32_t)(HISTORY_MAX - r->nh) : hn;
    mpw_str(w, "history");
    msgpack_pack_array(&w->pk, keep + (uint32_t)r->nh);
    for (uint32_t i = hn - keep; i < hn; i++)
        mpw_obj(w, &h->via.array.ptr[i]);
    for (int i = 0; i < r->nh; i++) {
        msgpack_pack_map(&w->pk, 3);
        mpw_kv_time(w, "period", r->h_period[i]);
        if (r->h_present[i])
            mpw_kv_num(w, "value", r->h_val[i]);
        else
            mpw_kv_cstr(w, "value", NULL);
        mpw_kv_cstr(w, "state", alstate_names[r->h_state[i]]);
    }
    mpw_kv_u64(w, "late_samples", r->late);
    mpw_kv_u64(w, "last_seq", seq);
    return mpw_finish(w);
}

/* ---------------------------------------------------------------- keys */

static size_t alarm_key(uint8_t *out, const struct cairn_str *tenant, const struct cairn_str *id)
{
    return hkey_make(out, 1 + CAIRN_TENANT_MAX + 128, tenant, id);
}

/* tlen|tenant|alen|alarm_id[|period] */
static size_t agg_prefix(uint8_t *out, const struct cairn_str *tenant, const struct cairn_str *id)
{
    struct cairn_str none = {"", 0};
    size_t n = hkey_make(out, 1 + CAIRN_TENANT_MAX, tenant, &none);
    out[n++] = (uint8_t)id->n;
    memcpy(out + n, id->p, id->n);
    return n + id->n;
}

static size_t bymetric_key(uint8_t *out, const struct cairn_str *tenant,
                           const struct cairn_str *metric, const struct cairn_str *id)
{
    size_t n = agg_prefix(out, tenant, metric);
    if (id) {
        memcpy(out + n, id->p, id->n);
        n += id->n;
    }
    return n;
}

static size_t bymetric_prefix(const uint8_t *k, size_t n)
{
    if (!n || 1 + (size_t)k[0] >= n)
        return n;
    size_t t = 1 + (size_t)k[0];     /* tlen | tenant */
    size_t p = t + 1 + (size_t)k[t]; /* mlen | metric */
    return p <= n ? p : n;
}

static size_t due_key(uint8_t *out, int64_t due, const struct cairn_str *tenant,
                      const struct cairn_str *id)
{
    put_biased(out, due);
    return 8 + alarm_key(out + 8, tenant, id);
}

#define AGG_KEY_MAX (1 + CAIRN_TENANT_MAX + 1 + 200 + 8)
#define DUE_KEY_MAX (8 + 1 + CAIRN_TENANT_MAX + 128)

static int put_alarm(struct hctx *ctx, const struct cairn_str *tenant, const msgpack_object *def,
                     const struct alarm_def *d, const struct alarm_rt *r, uint64_t seq)
{
    uint8_t k[1 + CAIRN_TENANT_MAX + 128];
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, DOC_MAX);
    mpw_init(&w, &b);
    int rc = write_alarm(&w, tenant, def, d, r, seq);
    if (!rc)
        rc = hctx_put(ctx, self(ctx)->alarms, k, alarm_key(k, tenant, &d->alarm_id), b.data, b.len);
    cairn_buf_deinit(&b);
    return rc;
}

/* The alert of an alarm entering / leaving ALARM. */
static int alarm_alert(struct hctx *ctx, const struct event *cause, const struct cairn_str *tenant,
                       const struct alarm_def *d, const msgpack_object *def, bool open,
                       const char *resolution)
{
    struct cairn_str src = cs(ALARM_SOURCE);
    if (!open) {
        char id[17];
        alert_id(&src, tenant, &d->alarm_id, &d->alarm_id, id);
        return alert_resolve(ctx, cause, tenant, id, resolution, false);
    }
    char title[TITLE_MAX], thr[40];
    cairn_fmt_double(d->threshold, thr, sizeof thr);
    int n = snprintf(title, sizeof title, "%.*s: %s(%.*s) %s %s", (int)d->alarm_id.n, d->alarm_id.p,
                     stat_names[d->stat], (int)d->metric.n, d->metric.p, cmp_names[d->cmp], thr);
    struct cause_fp f = {.tenant = *tenant,
                         .source = src,
                         .type = cs(ALARM_TYPE),
                         .key = d->alarm_id,
                         .rule = d->alarm_id,
                         .severity = d->severity,
                         .title = {title, n < 0 ? 0 : (size_t)(n < TITLE_MAX ? n : TITLE_MAX - 1)},
                         .details = def};
    return alert_open(ctx, cause, &f);
}

/* Drops an alarm's aggregates, due entry and metric index entry; resolves
 * its alert when in ALARM. */
static int alarm_drop(struct hctx *ctx, const struct event *cause, const struct cairn_str *tenant,
                      const struct loaded *old, const char *resolution)
{
    struct alerts *al = self(ctx);
    struct alarm_def d;
    struct alarm_rt r;
    const msgpack_object *def = mp_get(old->doc, "definition");
    if (!parse_def(def, &d, NULL))
        return 0;
    read_rt(old->doc, &r);
    uint8_t k[AGG_KEY_MAX + 128];
    int rc =
        hctx_del(ctx, al->due, k, due_key(k, r.next_period + d.period_ns, tenant, &d.alarm_id));
    if (!rc)
        rc = hctx_del(ctx, al->bymetric, k, bymetric_key(k, tenant, &d.metric, &d.alarm_id));
    struct hcursor *c;
    MDB_val kk, v;
    size_t pn = agg_prefix(k, tenant, &d.alarm_id);
    if (!rc)
        rc = hctx_cursor_open(ctx, al->agg, k, pn, &c);
    if (!rc) {
        while (!(rc = hctx_cursor_next(c, &kk, &v)))
            if (kk.mv_size == pn + 8 && (rc = hctx_cursor_del(c)))
                break;
        hctx_cursor_close(c);
        if (rc == CAIRN_ENOTFOUND)
            rc = 0;
    }
    if (!rc && r.state == AL_ALARM)
        rc = alarm_alert(ctx, cause, tenant, &d, def, false, resolution);
    return rc;
}

static int on_alarm_define(struct hctx *ctx, const struct event *ev, bool del)
{
    struct alerts *al = self(ctx);
    struct alarm_def d;
    struct cairn_str id;
    if (!mp_str(mp_get(ev->body, "alarm_id"), &id) || id.n == 0 || id.n > 128)
        return 0;
    if (!del && !parse_def(ev->body, &d, NULL))
        return 0;
    uint8_t k[AGG_KEY_MAX + 128];
    size_t kn = alarm_key(k, &ev->tenant, &id);
    struct loaded old;
    int rc = load(ctx, al->alarms, k, kn, &old);
    if (!rc && old.doc)
        rc = alarm_drop(ctx, ev, &ev->tenant, &old, del ? "alarm.deleted" : "alarm.redefined");
    unload(&old);
    if (rc || del)
        return rc ? rc : hctx_del(ctx, al->alarms, k, kn);
    struct alarm_rt r = {.state = AL_INSUFFICIENT, .state_since = ev->time};
    r.next_period = ev->time - ev->time % d.period_ns;
    rc = put_alarm(ctx, &ev->tenant, ev->body, &d, &r, ev->seq);
    if (!rc) {
        size_t bn = bymetric_key(k, &ev->tenant, &d.metric, &d.alarm_id);
        rc = hctx_put(ctx, al->bymetric, k, bn, "", 0);
        hkset_add(&al->mk, k, bymetric_prefix(k, bn));
    }
    if (!rc)
        rc = hctx_put(ctx, al->due, k,
                      due_key(k, r.next_period + d.period_ns, &ev->tenant, &d.alarm_id), "", 0);
    return rc;
}

/* ---------------------------------------------------------------- samples */

static bool labels_match(const msgpack_object *matchers, const msgpack_object *labels)
{
    for (uint32_t i = 0;
         matchers && matchers->type == MSGPACK_OBJECT_MAP && i < matchers->via.map.size; i++) {
        const msgpack_object_kv *kv = &matchers->via.map.ptr[i];
        bool found = false;
        for (uint32_t j = 0;
             labels && labels->type == MSGPACK_OBJECT_MAP && j < labels->via.map.size && !found;
             j++)
            found = msgpack_object_equal(labels->via.map.ptr[j].key, kv->key) &&
                    msgpack_object_equal(labels->via.map.ptr[j].val, kv->val);
        if (!found)
            return false;
    }
    return true;
}

static void agg_encode(uint8_t out[32], uint64_t n, double sum, double mn, double mx)
{
    double d[3] = {sum, mn, mx};
    cairn_be64_put(out, n);
    for (int i = 0; i < 3; i++) {
        uint64_t bits;
        memcpy(&bits, &d[i], 8);
        cairn_be64_put(out + 8 + 8 * i, bits);
    }
}

static bool agg_decode(const MDB_val *v, uint64_t *n, double d[3])
{
    if (v->mv_size != 32)
        return false;
    *n = cairn_be64_get(v->mv_data);
    for (int i = 0; i < 3; i++) {
        uint64_t bits = cairn_be64_get((uint8_t *)v->mv_data + 8 + 8 * i);
        memcpy(&d[i], &bits, 8);
    }
    return true;
}

/* Counts one sample (its labels: a map, or NULL) for one alarm. */
static int sample_for(struct hctx *ctx, const struct event *ev, const struct cairn_str *alarm_id,
                      double value, const msgpack_object *labels)
{
    struct alerts *al = self(ctx);
    uint8_t k[AGG_KEY_MAX + 128];
    struct loaded l;
    int rc = load(ctx, al->alarms, k, alarm_key(k, &ev->tenant, alarm_id), &l);
    struct alarm_def d;
    const msgpack_object *def = mp_get(l.doc, "definition");
    if (rc || !l.doc || !parse_def(def, &d, NULL) || !labels_match(d.matchers, labels)) {
        unload(&l);
        return rc;
    }
    struct alarm_rt r;
    read_rt(l.doc, &r);
    int64_t period = ev->time - ev->time % d.period_ns;
    if (period < r.next_period) {
        r.late++;
        rc = put_alarm(ctx, &ev->tenant, def, &d, &r, ev->seq);
    } else if ((period - r.next_period) / d.period_ns <= AHEAD_PERIODS_MAX) {
        size_t kn = agg_prefix(k, &ev->tenant, &d.alarm_id);
        put_biased(k + kn, period);
        kn += 8;
        MDB_val v;
        uint64_t n = 0;
        double a[3] = {0, value, value};
        rc = hctx_get(ctx, al->agg, k, kn, &v);
        if (rc == 0 && !agg_decode(&v, &n, a))
            rc = CAIRN_ECORRUPT;
        if (rc == 0 || rc == CAIRN_ENOTFOUND) {
            uint8_t val[32];
            agg_encode(val, n + 1, a[0] + value, value < a[1] ? value : a[1],
                       value > a[2] ? value : a[2]);
            rc = hctx_put(ctx, al->agg, k, kn, val, sizeof val);
        }
    }
    unload(&l);
    return rc;
}

static int on_metric(struct hctx *ctx, const struct event *ev)
{
    struct alerts *al = self(ctx);
    struct cairn_str name;
    double value;
    msgpack_object no, vo; /* raw_inputs: read from the payload */
    if (!mp_raw_get(ev->payload, ev->payload_len, "name", &no) || !mp_str(&no, &name) ||
        name.n == 0 || name.n > 200)
        return 0;
    uint8_t prefix[AGG_KEY_MAX];
    size_t pn = bymetric_key(prefix, &ev->tenant, &name, NULL);
    bool maybe;
    int rc = hkset_maybe(ctx, &al->mk, al->bymetric, prefix, pn, &maybe);
    /* most samples feed no alarm: their value is not even read */
    if (rc || !maybe || !mp_raw_get(ev->payload, ev->payload_len, "value", &vo) ||
        !mp_num(&vo, &value) || !isfinite(value))
        return rc;
    char ids[ALARMS_PER_METRIC_MAX][128];
    size_t idn[ALARMS_PER_METRIC_MAX], n = 0;
    struct hcursor *c;
    MDB_val k, v;
    rc = hctx_cursor_open(ctx, al->bymetric, prefix, pn, &c);
    while (!rc && n < ALARMS_PER_METRIC_MAX && !(rc = hctx_cursor_next(c, &k, &v)))
        if (k.mv_size > pn && k.mv_size - pn <= 128) {
            idn[n] = k.mv_size - pn;
            memcpy(ids[n++], (uint8_t *)k.mv_data + pn, k.mv_size - pn);
        }
    hctx_cursor_close(c);
    if (rc == CAIRN_ENOTFOUND)
        rc = 0;
    if (rc || !n)
        return rc;
    /* Alarms watch it: its labels are needed, decoded here when the
     * engine did not (raw_inputs). */
    msgpack_zone z;
    msgpack_object body;
    const msgpack_object *b = ev->body;
    if (!b) {
        if (!msgpack_zone_init(&z, 1024))
            return CAIRN_ENOMEM;
        if (mp_unpack(ev->payload, ev->payload_len, &z, &body, NULL)) {
            msgpack_zone_destroy(&z);
            return CAIRN_ECORRUPT; /* as the engine's decoding would have */
        }
        b = &body;
    }
    const msgpack_object *labels = mp_get(b, "labels");
    for (size_t i = 0; i < n && !rc; i++)
        rc = sample_for(ctx, ev, &(struct cairn_str){ids[i], idn[i]}, value, labels);
    if (!ev->body)
        msgpack_zone_destroy(&z);
    return rc;
}

/* ---------------------------------------------------------------- evaluation */

/* Closes the period starting at r->next_period: its datapoint joins the
 * window, the window is evaluated, a change of state opens or resolves the
 * alert. */
static int close_period(struct hctx *ctx, const struct event *tick, const struct cairn_str *tenant,
                        const msgpack_object *def, const struct alarm_def *d, struct alarm_rt *r)
{
    struct alerts *al = self(ctx);
    uint8_t k[AGG_KEY_MAX];
    size_t kn = agg_prefix(k, tenant, &d->alarm_id);
    put_biased(k + kn, r->next_period);
    kn += 8;
    MDB_val v;
    uint64_t n = 0;
    double a[3];
    bool present = false;
    double val = 0;
    int rc = hctx_get(ctx, al->agg, k, kn, &v);
    if (rc == 0) {
        if (!agg_decode(&v, &n, a))
            return CAIRN_ECORRUPT;
        present = n > 0;
        double stats[] = {n ? a[0] / (double)n : 0, a[1], a[2], a[0], (double)n};
        val = stats[d->stat];
        rc = hctx_del(ctx, al->agg, k, kn);
    } else if (rc == CAIRN_ENOTFOUND) {
        rc = 0;
    }
    if (rc)
        return rc;
    if (r->wn == d->n) {
        memmove(r->present, r->present + 1, (size_t)(d->n - 1) * sizeof r->present[0]);
        memmove(r->vals, r->vals + 1, (size_t)(d->n - 1) * sizeof r->vals[0]);
        r->wn--;
    }
    r->present[r->wn] = present;
    r->vals[r->wn++] = present ? val : 0;
    int old = r->state, now = evaluate(d, r);
    int64_t end = r->next_period + d->period_ns;
    if (r->nh == HISTORY_MAX) {
        memmove(r->h_period, r->h_period + 1, (HISTORY_MAX - 1) * sizeof r->h_period[0]);
        memmove(r->h_present, r->h_present + 1, (HISTORY_MAX - 1) * sizeof r->h_present[0]);
        memmove(r->h_val, r->h_val + 1, (HISTORY_MAX - 1) * sizeof r->h_val[0]);
        memmove(r->h_state, r->h_state + 1, (HISTORY_MAX - 1) * sizeof r->h_state[0]);
        r->nh--;
    }
    r->h_period[r->nh] = r->next_period;
    r->h_present[r->nh] = present;
    r->h_val[r->nh] = val;
    r->h_state[r->nh++] = now;
    r->next_period = end;
    if (now == old)
        return 0;
    r->state = now;
    r->state_since = end;
    if (now == AL_ALARM)
        return alarm_alert(ctx, tick, tenant, d, def, true, NULL);
    if (old == AL_ALARM)
        return alarm_alert(ctx, tick, tenant, d, def, false,
                           now == AL_OK ? "alarm.ok" : "alarm.insufficient_data");
    return 0;
}

/* Evaluates one due alarm: closes its periods that ended by the tick. */
static int alarm_tick(struct hctx *ctx, const struct event *tick, const uint8_t *dk, size_t dkn,
                      int *budget)
{
    struct alerts *al = self(ctx);
    struct cairn_str tenant, id;
    int rc = hctx_del(ctx, al->due, dk, dkn);
    if (rc || !hkey_split(dk + 8, dkn - 8, &tenant, &id) || id.n > 128)
        return rc;
    uint8_t k[DUE_KEY_MAX];
    struct loaded l;
    struct alarm_def d;
    rc = load(ctx, al->alarms, k, alarm_key(k, &tenant, &id), &l);
    const msgpack_object *def = mp_get(l.doc, "definition");
    if (rc || !l.doc || !parse_def(def, &d, NULL)) {
        unload(&l);
        return rc;
    }
    struct alarm_rt r;
    read_rt(l.doc, &r);
    while (!rc && *budget > 0 && r.next_period <= tick->time - d.period_ns) {
        rc = close_period(ctx, tick, &tenant, def, &d, &r);
        --*budget;
    }
    if (!rc)
        rc = put_alarm(ctx, &tenant, def, &d, &r, tick->seq);
    if (!rc)
        rc =
            hctx_put(ctx, al->due, k, due_key(k, r.next_period + d.period_ns, &tenant, &id), "", 0);
    unload(&l);
    return rc;
}

static int alarms_tick(struct hctx *ctx, const struct event *tick)
{
    struct alerts *al = self(ctx);
    int budget = CLOSES_PER_TICK, rc = 0;
    while (!rc && budget > 0) {
        uint8_t keys[32][DUE_KEY_MAX];
        size_t kns[32], nk = 0;
        rc = due_keys(ctx, al->due, tick->time, &keys[0][0], sizeof keys[0], 32, kns, &nk);
        if (rc || nk == 0)
            break;
        for (size_t i = 0; i < nk && !rc && budget > 0; i++)
            rc = alarm_tick(ctx, tick, keys[i], kns[i], &budget);
    }
    return rc;
}

/* ====================================================================== apply / validate */

static int alerts_apply(struct hctx *ctx, const struct event *ev)
{
    if (ev->derived) {
        for (size_t i = 0; i < NSOURCES; i++)
            if (str_is(&ev->type, sources[i].type))
                return on_source(ctx, ev, &sources[i], i);
        return 0;
    }
    if (str_is(&ev->type, "tick")) {
        int rc = alarms_tick(ctx, ev);
        return rc ? rc : escalate(ctx, ev);
    }
    if (str_is(&ev->type, "metric"))
        return on_metric(ctx, ev);
    if (str_is(&ev->type, "alert.ack"))
        return on_ack(ctx, ev);
    if (str_is(&ev->type, "alert.silence"))
        return on_silence(ctx, ev);
    if (str_is(&ev->type, "alarm.define"))
        return on_alarm_define(ctx, ev, false);
    if (str_is(&ev->type, "alarm.delete"))
        return on_alarm_define(ctx, ev, true);
    return 0;
}

static int alerts_validate(const struct event *ev, struct cairn_error *e)
{
    if (str_is(&ev->type, "alarm.define")) {
        struct alarm_def d;
        return parse_def(ev->body, &d, e) ? 0 : CAIRN_EINVAL;
    }
    if (!str_is(&ev->type, "alert.silence"))
        return 0;
    const msgpack_object *m = mp_get(ev->body, "matchers");
    int64_t from = ev->time, to;
    if (!m || m->type != MSGPACK_OBJECT_MAP || m->via.map.size == 0 ||
        m->via.map.size > MATCHERS_MAX)
        return cairn_error_set(e, "invalid_value", "/payload/matchers",
                               "a silence needs 1..%d matchers", MATCHERS_MAX);
    if (mp_get(ev->body, "starts_at") && !get_time(mp_get(ev->body, "starts_at"), &from))
        return cairn_error_set(e, "invalid_value", "/payload/starts_at",
                               "starts_at must be an RFC 3339 time");
    if (!get_time(mp_get(ev->body, "ends_at"), &to))
        return cairn_error_set(e, "invalid_value", "/payload/ends_at",
                               "ends_at must be an RFC 3339 time");
    if (to <= from && mp_get(ev->body, "starts_at"))
        return cairn_error_set(e, "out_of_range", "/payload/ends_at",
                               "ends_at must be after starts_at");
    return 0;
}

/* ====================================================================== routes */

static bool id_ok(const char *id)
{
    if (strlen(id) != 16)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* The handler's view_doc: the document of view value v (view records), read
 * from the snapshot rd — appended to out. */
static int alerts_view_doc(struct hread *rd, const MDB_val *k, const MDB_val *v,
                           struct cairn_buf *out)
{
    (void)k;
    uint64_t dseq = vref_dseq(v);
    if (!dseq)
        return cairn_buf_append(out, v->mv_data, v->mv_size);
    const uint8_t *p;
    size_t n;
    int rc = hread_stream_payload(rd, dseq, &p, &n);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? CAIRN_ECORRUPT : rc; /* a reference to no event */
    return cairn_buf_append(out, p, n);
}

/* POST /v1/alerts/{id}/ack {"by", "reason"?} -> an alert.ack input. */
static int route_ack(struct hread *rd, char **args, const json_t *body, json_t **event,
                     struct cairn_error *e)
{
    const char *tenant = hread_tenant(rd);
    const json_t *by = json_object_get(body, "by"), *reason = json_object_get(body, "reason");
    if (!tenant)
        return cairn_error_set(e, "missing_parameter", "tenant", "give ?tenant="), 400;
    if (!json_is_object(body) || !json_is_string(by) || json_string_length(by) == 0)
        return cairn_error_set(e, "missing_field", "/by", "by (who acknowledges) is required"), 400;
    if (reason && !json_is_string(reason))
        return cairn_error_set(e, "wrong_type", "/reason", "reason must be a string"), 400;
    MDB_dbi dbi;
    MDB_val k, v;
    uint8_t key[1 + CAIRN_TENANT_MAX + 16];
    struct cairn_str t = cs(tenant), id = cs(args[0]);
    if (!id_ok(args[0]) || t.n > CAIRN_TENANT_MAX || hread_db(rd, "view", &dbi))
        return cairn_error_set(e, "not_found", NULL, "no alert %.64s", args[0]), 404;
    k = (MDB_val){hkey_make(key, sizeof key, &t, &id), key};
    if (mdb_get(hread_txn(rd), dbi, &k, &v))
        return cairn_error_set(e, "not_found", NULL, "no alert %.64s", args[0]), 404;
    struct cairn_buf doc;
    cairn_buf_init(&doc, DOC_MAX);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    bool firing =
        !alerts_view_doc(rd, &k, &v, &doc) &&
        msgpack_unpack_next(&u, (const char *)doc.data, doc.len, NULL) == MSGPACK_UNPACK_SUCCESS &&
        mp_str_eq(mp_get(&u.data, "state"), "firing");
    msgpack_unpacked_destroy(&u);
    cairn_buf_deinit(&doc);
    if (!firing)
        return cairn_error_set(e, "conflict", "/state", "alert %s is not firing", args[0]), 409;
    json_t *payload = json_pack("{s:s, s:O}", "alert_id", args[0], "by", by);
    if (payload && reason)
        json_object_set(payload, "reason", (json_t *)reason);
    *event = payload ? json_pack("{s:s, s:s, s:o}", "type", "alert.ack", "key", args[0], "payload",
                                 payload)
                     : NULL;
    if (!*event)
        return cairn_error_set(e, "internal", NULL, "out of memory"), 500;
    return 0;
}

/* GET /v1/alarms: the alarms (definitions and state) of the tenant. */
static int route_alarms(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    (void)args;
    (void)e;
    const char *tenant = hread_tenant(rd);
    uint8_t prefix[1 + CAIRN_TENANT_MAX];
    struct cairn_str t = cs(tenant ? tenant : ""), none = {"", 0};
    size_t pn = tenant && t.n <= CAIRN_TENANT_MAX ? hkey_make(prefix, sizeof prefix, &t, &none) : 0;
    MDB_dbi dbi;
    MDB_cursor *cur = NULL;
    MDB_val k = {pn, prefix}, v;
    size_t n = 0;
    bool more = false;
    cairn_buf_printf(out, "{\"seq\":%llu,\"items\":[", (unsigned long long)hread_seq(rd));
    if (!hread_db(rd, "alarms", &dbi) && !mdb_cursor_open(hread_txn(rd), dbi, &cur)) {
        int rc = pn ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
                    : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        for (; !rc; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size < pn || memcmp(k.mv_data, prefix, pn))
                break;
            if (n == 1000) {
                more = true;
                break;
            }
            if (n++)
                cairn_buf_putc(out, ',');
            cairn_msgpack_to_json(v.mv_data, v.mv_size, out, NULL);
        }
        mdb_cursor_close(cur);
    }
    cairn_buf_printf(out, "],\"truncated\":%s}", more ? "true" : "false");
    return 200;
}

static const struct handler_route routes[] = {
    {.path = "alerts/{}/ack", .post = route_ack},
    {.path = "alarms", .get = route_alarms},
    {.path = NULL},
};

const struct handler alerts_handler = {
    .version = HANDLER_VERSION,
    .name = "alerts",
    .config_schema = config_schema,
    .consumes = consumes,
    .emits = emits,
    .open = alerts_open,
    .validate = alerts_validate,
    .apply = alerts_apply,
    .close = alerts_close,
    .view = "view",
    .routes = routes,
    .flush = alerts_flush,
    .view_doc = alerts_view_doc,
    /* A cause's fields are read from its payload's bytes (on_source), and
     * its details copied as they are: the engine need not decode it. */
    .derived_raw = true,
    /* and a metric sample's name and value (on_metric) */
    .raw_inputs = raw_inputs,
};
