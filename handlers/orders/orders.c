/*
 * orders — the order view, from `order` inputs; emits
 * `order.invalid_transition` when an input breaks the lifecycle.
 *
 * DBIs:
 *   orders.view  tlen|tenant|order_id -> the order document (msgpack map)
 *
 * The order id is the payload's order_id (not the envelope key, which a
 * producer may set to something else); event_type names the step:
 * order.created -> "created", …, order.updated -> no status change.
 *
 * The lifecycle (strict: each step is the immediate successor):
 *
 *   created -> confirmed -> assigned -> picked_up -> in_transit -> delivered
 *      \___________\___________\___________\___________\---> cancelled
 *
 *   cancelled  from any status before delivered (not delivered, cancelled)
 *   updated    in an open status (not delivered or cancelled); no change
 *              of status, only of fields
 *   created    only for an order that has not been created yet
 *
 * Semantics:
 *  - Every input for an order is kept in its history, applied or not: an
 *    input for an order that has not been created yet makes a document
 *    with status null holding it, so nothing an auditor should see is
 *    dropped; order.created then applies normally.
 *  - An input that breaks the lifecycle changes nothing but the history
 *    and emits order.invalid_transition {order_id, from, to, reason,
 *    event_type} (key: order_id; from null for an order not created yet;
 *    to null for order.updated). Nothing is buffered for later: a step that
 *    arrives before its predecessor is invalid, and stays so when the
 *    predecessor arrives (the producer resends it).
 *  - Late inputs, by event time: an input whose target the order has
 *    already reached or passed AND whose event time is <= status_since is
 *    a stale retry or a late delivery: kept in history with late: true,
 *    changes nothing, emits nothing. "Reached or passed" is by rank along
 *    the lifecycle; a cancelled order has passed every status but
 *    delivered (it was cancelled from one of them); cancelled is reached
 *    only by a cancelled order; order.updated counts as passed once the
 *    order is closed (an update that happened while it was open). The same
 *    input with a later time than status_since is invalid instead (a real
 *    contradiction: backwards, repeated, updated after closing).
 *  - status_since is the event time of the step that set the status, but
 *    never earlier than the previous status_since: a producer clock behind
 *    by a little cannot move it backwards (which would make the late rule
 *    call a retry invalid). The history keeps each input's own time.
 *  - Fields (customer_id, items, total_amount, assigned_device_id,
 *    destination, metadata) are taken from applied order.created,
 *    order.updated and order.assigned inputs. Each field remembers the
 *    event time of the value it holds (field_times); a value with an older
 *    time than that is not taken (newest by event time wins, ties: the
 *    later input). Per field, so an old order.assigned still sets the
 *    device when a newer order.updated only changed the destination.
 *    A field absent from an input keeps its value; metadata and items are
 *    replaced whole, not merged.
 *  - history keeps the last HISTORY_MAX inputs; older ones are dropped and
 *    counted in history_dropped. counts has applied / late / invalid over
 *    the whole life of the order.
 *
 * The document (keys in this order):
 *   order_id, tenant, status (str|null), status_since (time|null),
 *   customer_id, items, total_amount, assigned_device_id, destination,
 *   metadata (as the producer sent them, null until set), created_at
 *   (time|null), field_times {<field>: time|null, …}, history [{seq, time,
 *   event_type, from, to, applied, late, reason}], history_dropped,
 *   counts {applied, late, invalid}, last_seq
 *
 * Performance: an order is read and decoded at most once per process (on
 * first use) into a struct ord, updated in memory by each input and
 * written back once per state transaction by the flush hook (see
 * devices.c, which does the same).
 */
#include "handler.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A real order sees a dozen inputs; 256 keeps every real one whole and
 * caps a flood of bad inputs for one order at ~75 KiB of history. */
#define HISTORY_MAX 256
/* The largest document: six fields, each copied from one input (at most a
 * payload each), plus the bounded history and a few scalars. It cannot be
 * exceeded, so writing a document never fails for size. */
#define DOC_MAX (6u * (size_t)CAIRN_PAYLOAD_MAX_CEILING + (1u << 20))
#define REASON_MAX 160

static const char *const consumes[] = {"order", NULL};
static const char *const emits[] = {"order.invalid_transition", NULL};

/* Statuses in lifecycle order (the rank is the value), then the targets
 * that are not ranks. S_UPDATED is a target only, never a status. */
enum status {
    S_NONE = -1,
    S_CREATED,
    S_CONFIRMED,
    S_ASSIGNED,
    S_PICKED_UP,
    S_IN_TRANSIT,
    S_DELIVERED,
    S_CANCELLED,
    S_UPDATED,
};
#define S_COUNT 8
static const char *const status_names[S_COUNT] = {"created",   "confirmed",  "assigned",
                                                  "picked_up", "in_transit", "delivered",
                                                  "cancelled", "updated"};

#define NFIELDS 6
static const char *const fields[NFIELDS] = {"customer_id",        "items",       "total_amount",
                                            "assigned_device_id", "destination", "metadata"};
/* strlen of each name (checked in orders_open). */
static const uint8_t status_len[S_COUNT] = {7, 9, 8, 9, 10, 9, 9, 7};
static const uint8_t field_len[NFIELDS] = {11, 5, 12, 18, 11, 8};

/* The payload fields orders reads, found in one pass over the payload
 * (an mp_get scan per field was ~10 % of the handler); NULL when absent.
 * The first occurrence wins, as with mp_get. */
struct ordin {
    const msgpack_object *order_id, *event_type, *field[NFIELDS];
};

static void scan_body(const msgpack_object *body, struct ordin *in)
{
    memset(in, 0, sizeof *in);
    if (!body || body->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < body->via.map.size; i++) {
        const msgpack_object *k = &body->via.map.ptr[i].key, *val = &body->via.map.ptr[i].val;
        const msgpack_object **slot = NULL;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        const char *p = k->via.str.ptr;
        uint32_t n = k->via.str.size;
        if (n == 8 && !memcmp(p, "order_id", 8))
            slot = &in->order_id;
        else if (n == 10 && !memcmp(p, "event_type", 10))
            slot = &in->event_type;
        for (int f = 0; f < NFIELDS && !slot; f++)
            if (n == field_len[f] && !memcmp(p, fields[f], n))
                slot = &in->field[f];
        if (slot && !*slot)
            *slot = val;
    }
}

/* Orders kept decoded in memory across transactions (about a kilobyte
 * each). Past it, the cache is emptied after the next flush: it holds at
 * most this many plus those one transaction touches. */
#define CACHE_MAX (1u << 17)
#define VKEY_MAX (1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX)

/* What the stored document says, decoded. */
struct order {
    int status;    /* S_NONE until created */
    int64_t since; /* status_since, when status != S_NONE */
    bool has_created;
    int64_t created_at;
    bool fset[NFIELDS];
    int64_t ftime[NFIELDS];
    uint64_t applied, late, invalid, dropped;
};

/* Where a packed value lives in an ord's mem; len 0: null. */
struct span {
    uint32_t off, len;
};

/* One order, decoded: its document but for the parts kept packed in mem —
 * the view key (at 0, vn bytes), the six fields, then the history
 * entries (nhist of them, back to back, oldest first). */
struct ord {
    struct hentry e; /* the cache's part: key hash, dirty, mem */
    uint64_t last_seq;
    struct order o;
    uint32_t nhist;
    struct span field[NFIELDS], history;
};

struct orders {
    unsigned view;
    struct cairn_time_cache ts; /* fmt_time */
    struct hcache cache;        /* of struct ord; the dirty ones are written back by flush */
    struct cairn_buf tmp;       /* the next mem of the ord being updated */
    struct cairn_buf doc;       /* the document being written back */
};

enum outcome { APPLIED, LATE, INVALID };

struct verdict {
    enum outcome outcome;
    char reason[REASON_MAX];
};

static int orders_open(struct hctx *ctx)
{
    for (int i = 0; i < S_COUNT; i++)
        assert(strlen(status_names[i]) == status_len[i]);
    for (int i = 0; i < NFIELDS; i++)
        assert(strlen(fields[i]) == field_len[i]);
    struct orders *o = calloc(1, sizeof *o);
    if (!o)
        return CAIRN_ENOMEM;
    cairn_time_cache_init(&o->ts);
    cairn_buf_init(&o->tmp, DOC_MAX);
    cairn_buf_init(&o->doc, DOC_MAX + 4096);
    *hctx_user(ctx) = o;
    return hctx_db(ctx, "view", 0, &o->view);
}

static void orders_close(struct hctx *ctx)
{
    struct orders *o = *hctx_user(ctx);
    if (o) {
        hcache_free(&o->cache);
        cairn_buf_deinit(&o->tmp);
        cairn_buf_deinit(&o->doc);
        free(o);
    }
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== names */

/* "order.picked_up" -> S_PICKED_UP; S_NONE for anything else. */
static int parse_target(const struct cairn_str *et)
{
    if (et->n <= 6 || memcmp(et->p, "order.", 6))
        return S_NONE;
    for (int s = 0; s < S_COUNT; s++)
        if (et->n - 6 == status_len[s] && !memcmp(et->p + 6, status_names[s], et->n - 6))
            return s;
    return S_NONE;
}

/* The status name, NULL for none (S_NONE) and for S_UPDATED as a "to". */
static const char *status_name(int s)
{
    return s >= 0 && s < S_UPDATED ? status_names[s] : NULL;
}

static bool is_open(int s)
{
    return s >= S_CREATED && s < S_DELIVERED;
}

/* ====================================================================== reading the document */

/* A time field: nil (unset) or an RFC 3339 string we wrote. */
static int get_time(const msgpack_object *doc, const char *k, bool *set, int64_t *t)
{
    const msgpack_object *o = mp_get(doc, k);
    struct cairn_str s;
    *set = false;
    if (!o || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (!mp_str(o, &s) || cairn_time_parse(s.p, s.n, t))
        return CAIRN_ECORRUPT;
    *set = true;
    return 0;
}

static uint64_t get_u64(const msgpack_object *map, const char *k)
{
    int64_t v;
    return mp_i64(mp_get(map, k), &v) && v > 0 ? (uint64_t)v : 0;
}

static int read_order(const msgpack_object *doc, struct order *o)
{
    memset(o, 0, sizeof *o);
    o->status = S_NONE;
    if (!doc)
        return 0;
    if (doc->type != MSGPACK_OBJECT_MAP)
        return CAIRN_ECORRUPT;
    const msgpack_object *st = mp_get(doc, "status");
    struct cairn_str s;
    if (mp_str(st, &s)) {
        for (int i = 0; i < S_UPDATED && o->status == S_NONE; i++)
            if (s.n == strlen(status_names[i]) && !memcmp(s.p, status_names[i], s.n))
                o->status = i;
        if (o->status == S_NONE)
            return CAIRN_ECORRUPT;
    } else if (st && st->type != MSGPACK_OBJECT_NIL) {
        return CAIRN_ECORRUPT;
    }
    bool set;
    int rc = get_time(doc, "status_since", &set, &o->since);
    if (!rc && set != (o->status != S_NONE))
        rc = CAIRN_ECORRUPT;
    if (!rc)
        rc = get_time(doc, "created_at", &o->has_created, &o->created_at);
    const msgpack_object *ft = mp_get(doc, "field_times");
    for (int i = 0; i < NFIELDS && !rc; i++)
        rc = get_time(ft, fields[i], &o->fset[i], &o->ftime[i]);
    const msgpack_object *c = mp_get(doc, "counts");
    o->applied = get_u64(c, "applied");
    o->late = get_u64(c, "late");
    o->invalid = get_u64(c, "invalid");
    o->dropped = get_u64(doc, "history_dropped");
    return rc;
}

/* ====================================================================== the lifecycle */

/* Has an order in status s already reached or passed target t? */
static bool reached(int s, int t)
{
    if (s == S_NONE)
        return false;
    if (t == S_UPDATED)
        return !is_open(s);
    if (t == S_CANCELLED)
        return s == S_CANCELLED;
    if (s == S_CANCELLED)
        return t < S_DELIVERED;
    return s >= t;
}

static void __attribute__((format(printf, 2, 3))) invalid(struct verdict *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    v->outcome = INVALID;
    vsnprintf(v->reason, sizeof v->reason, fmt, ap);
    va_end(ap);
}

/* Judges input target t at event time `time` against the order o. */
static void judge(const struct order *o, int t, int64_t time, struct verdict *v)
{
    int s = o->status;
    const char *sn = status_name(s), *tn = status_names[t];
    v->outcome = APPLIED;
    v->reason[0] = '\0';
    if (reached(s, t) && time <= o->since)
        v->outcome = LATE;
    else if (s == S_NONE && t != S_CREATED)
        invalid(v, "the order has not been created");
    else if (s == S_NONE)
        ; /* created */
    else if (t == S_CREATED)
        invalid(v, "the order already exists (%s)", sn);
    else if (t == S_UPDATED && !is_open(s))
        invalid(v, "the order is %s: it cannot be updated", sn);
    else if (t == S_UPDATED)
        ; /* an update of an open order */
    else if (t == S_CANCELLED && s == S_CANCELLED)
        invalid(v, "the order is already cancelled");
    else if (t == S_CANCELLED && s == S_DELIVERED)
        invalid(v, "the order is delivered: it cannot be cancelled");
    else if (t == S_CANCELLED)
        ; /* a cancellation before delivery */
    else if (s == S_CANCELLED)
        invalid(v, "the order is cancelled: it cannot become %s", tn);
    else if (t == s)
        invalid(v, "the order is already %s", sn);
    else if (t < s)
        invalid(v, "%s would go back from %s", tn, sn);
    else if (t > s + 1)
        invalid(v, "%s skips %s", tn, status_names[s + 1]);
}

/* The order after applying input target t at `time`; take[i]: field i
 * comes from the input. */
static void advance(const struct order *o, const struct event *ev, const struct ordin *in, int t,
                    const struct verdict *v, struct order *n, bool take[NFIELDS])
{
    *n = *o;
    memset(take, 0, NFIELDS * sizeof *take);
    n->applied += v->outcome == APPLIED;
    n->late += v->outcome == LATE;
    n->invalid += v->outcome == INVALID;
    if (v->outcome != APPLIED)
        return;
    if (t != S_UPDATED) {
        n->since = o->status == S_NONE || ev->time > o->since ? ev->time : o->since;
        n->status = t;
    }
    if (t == S_CREATED) {
        n->has_created = true;
        n->created_at = ev->time;
    }
    if (t != S_CREATED && t != S_UPDATED && t != S_ASSIGNED)
        return;
    for (int i = 0; i < NFIELDS; i++)
        if (in->field[i] && (!o->fset[i] || ev->time >= o->ftime[i])) {
            take[i] = true;
            n->fset[i] = true;
            n->ftime[i] = ev->time;
        }
}

/* ====================================================================== the cache */

/* Fills r (its key already in mem) from the stored document. */
static int ord_decode(struct ord *r, const msgpack_object *doc)
{
    struct mpw w;
    int64_t seq;
    int rc = read_order(doc, &r->o);
    if (rc)
        return rc;
    if (mp_i64(mp_get(doc, "last_seq"), &seq))
        r->last_seq = (uint64_t)seq;
    mpw_init(&w, &r->e.mem);
    for (int i = 0; i < NFIELDS; i++) {
        size_t at = r->e.mem.len;
        const msgpack_object *f = mp_get(doc, fields[i]);
        if (f)
            mpw_obj(&w, f);
        r->field[i] = (struct span){(uint32_t)at, (uint32_t)(r->e.mem.len - at)};
    }
    const msgpack_object *h = mp_get(doc, "history");
    size_t at = r->e.mem.len;
    for (uint32_t i = 0; h && h->type == MSGPACK_OBJECT_ARRAY && i < h->via.array.size; i++) {
        mpw_obj(&w, &h->via.array.ptr[i]);
        r->nhist++;
    }
    r->history = (struct span){(uint32_t)at, (uint32_t)(r->e.mem.len - at)};
    return mpw_finish(&w);
}

/* The cached order of vk, read from the view on first use (a new one,
 * status none, when it has no document). */
static int ord_get(struct hctx *ctx, const uint8_t *vk, size_t vn, struct ord **out)
{
    struct orders *os = *hctx_user(ctx);
    struct hentry *e;
    bool fresh;
    int rc = hcache_get_or_new(&os->cache, vk, vn, sizeof(struct ord), DOC_MAX, &e, &fresh);
    *out = (struct ord *)e;
    if (rc || !fresh)
        return rc;
    struct ord *r = *out;
    r->o.status = S_NONE;
    MDB_val val;
    rc = hctx_get(ctx, os->view, vk, vn, &val);
    if (rc == CAIRN_ENOTFOUND) {
        rc = 0;
        for (int i = 0; i < NFIELDS; i++)
            r->field[i] = (struct span){(uint32_t)vn, 0};
        r->history = (struct span){(uint32_t)vn, 0};
    } else if (!rc) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        rc = msgpack_unpack_next(&u, val.mv_data, val.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS
                 ? ord_decode(r, &u.data)
                 : CAIRN_ECORRUPT;
        msgpack_unpacked_destroy(&u);
    }
    if (rc) {
        hentry_free(&r->e);
        *out = NULL;
        return rc;
    }
    hcache_add(&os->cache, &r->e);
    return 0;
}

/* ====================================================================== updating an ord */

/* cairn_time_format's bytes (out: MPD_TIME_MAX), through the handler's
 * cache of recently formatted seconds: inputs come roughly in time
 * order, and formatting each history entry's time was ~15 % of the
 * handler. */
static size_t fmt_time(struct orders *o, int64_t ns, char *out)
{
    return cairn_time_format_cached(&o->ts, ns, out, MPD_TIME_MAX);
}

/* The most a history entry takes (write_entry). */
#define ENTRY_MAX(et_n) (128 + MPD_TIME_MAX + 2 * MPD_HDR_MAX + (et_n) + 2 * 16 + REASON_MAX)

static uint8_t *put_cstr_opt(uint8_t *o, const char *s)
{
    return s ? mpd_strn(o, s, strlen(s)) : mpd_nil(o);
}

/* A history entry: {seq, time, event_type, from, to, applied, late,
 * reason}, written directly into ENTRY_MAX(et->n) reserved bytes at o
 * (the packer's bytes: the key/value calls were ~10 % of the handler). */
static uint8_t *write_entry(struct orders *os, uint8_t *o, const struct event *ev,
                            const struct cairn_str *et, int from, int t, const struct verdict *v)
{
    char tm[MPD_TIME_MAX];
    o = mpd_map(o, 8);
    o = mpd_u64(mpd_key(o, "seq"), ev->seq);
    o = mpd_strn(mpd_key(o, "time"), tm, fmt_time(os, ev->time, tm));
    o = mpd_strn(mpd_key(o, "event_type"), et->p, et->n);
    o = put_cstr_opt(mpd_key(o, "from"), status_name(from));
    o = put_cstr_opt(mpd_key(o, "to"), status_name(t));
    o = mpd_bool(mpd_key(o, "applied"), v->outcome == APPLIED);
    o = mpd_bool(mpd_key(o, "late"), v->outcome == LATE);
    return put_cstr_opt(mpd_key(o, "reason"), v->outcome == INVALID ? v->reason : NULL);
}

/* The new mem of r: the fields (taken from the event or kept), the kept
 * tail of the history and the new entry; counts the drop in n. Built in
 * the scratch buffer, which then becomes r's mem (no copy). */
static int take_values(struct orders *os, struct ord *r, const struct event *ev,
                       const struct ordin *in, const struct cairn_str *et, int t,
                       const struct verdict *v, struct order *n, const bool take[NFIELDS])
{
    struct cairn_buf *b = &os->tmp;
    struct ord nr = *r;
    struct mpw w;
    bool any = false;
    for (int i = 0; i < NFIELDS; i++)
        any |= take[i];
    if (!any && r->nhist < HISTORY_MAX) {
        /* No field taken and no entry dropped (most inputs): the entry
         * is appended where it goes, the end of mem (history is the
         * last span), instead of rebuilding mem around it. */
        struct cairn_buf *m = &r->e.mem;
        int rc = cairn_buf_reserve(m, ENTRY_MAX(et->n));
        if (rc)
            return rc;
        uint8_t *e = write_entry(os, m->data + m->len, ev, et, r->o.status, t, v);
        size_t len = (size_t)(e - (m->data + m->len));
        m->len += len;
        r->history.len += (uint32_t)len;
        r->nhist++;
        return 0;
    }
    cairn_buf_reset(b);
    int rc = cairn_buf_append(b, r->e.mem.data, r->e.vn);
    if (rc)
        return rc;
    mpw_init(&w, b);
    for (int i = 0; i < NFIELDS; i++) {
        size_t at = b->len;
        const msgpack_object *f = take[i] ? in->field[i] : NULL;
        if (f)
            mpw_obj(&w, f);
        else
            mpw_raw(&w, r->e.mem.data + r->field[i].off, r->field[i].len);
        nr.field[i] = (struct span){(uint32_t)at, (uint32_t)(b->len - at)};
    }
    /* The history keeps its last HISTORY_MAX - 1 entries, then the new. */
    const uint8_t *h = r->e.mem.data + r->history.off, *end = h + r->history.len;
    uint32_t keep = r->nhist < HISTORY_MAX - 1 ? r->nhist : HISTORY_MAX - 1;
    for (uint32_t i = keep; i < r->nhist; i++) {
        size_t len = mp_raw_len(h, (size_t)(end - h));
        if (!len)
            return CAIRN_ECORRUPT;
        h += len;
    }
    n->dropped += r->nhist - keep;
    size_t at = b->len;
    mpw_raw(&w, h, (size_t)(end - h));
    if ((rc = mpw_finish(&w)) || (rc = cairn_buf_reserve(b, ENTRY_MAX(et->n))))
        return rc;
    b->len = (size_t)(write_entry(os, b->data + b->len, ev, et, r->o.status, t, v) - b->data);
    nr.history = (struct span){(uint32_t)at, (uint32_t)(b->len - at)};
    nr.nhist = keep + 1;
    nr.e.mem = *b;
    *b = r->e.mem;
    *r = nr;
    return 0;
}

/* ====================================================================== writing back */

/* A time (fmt_time: the document's times are mostly recent), or nil. */
static uint8_t *put_time_opt(struct orders *os, uint8_t *o, bool set, int64_t t)
{
    char tm[MPD_TIME_MAX];
    return set ? mpd_strn(o, tm, fmt_time(os, t, tm)) : mpd_nil(o);
}

/* Packs r's document (keys in the order of the file comment) and puts it
 * in the view. */
static int ord_write(struct hctx *ctx, struct hcursor *c, struct hentry *e)
{
    struct orders *os = *hctx_user(ctx);
    struct ord *r = (struct ord *)e;
    const struct order *n = &r->o;
    struct cairn_str tenant, id;
    if (!hkey_split(r->e.mem.data, r->e.vn, &tenant, &id))
        return CAIRN_ECORRUPT;
    cairn_buf_reset(&os->doc);
    /* mem holds every variable-length part; the rest is 31 keys, 9 times,
     * status names and headers and numbers. */
    int rc = cairn_buf_reserve(&os->doc, r->e.mem.len + 9 * MPD_TIME_MAX + 48 * MPD_HDR_MAX + 512);
    if (rc)
        return rc;
    uint8_t *o = mpd_map(os->doc.data, 16);
    o = mpd_strn(mpd_key(o, "order_id"), id.p, id.n);
    o = mpd_strn(mpd_key(o, "tenant"), tenant.p, tenant.n);
    o = put_cstr_opt(mpd_key(o, "status"), status_name(n->status));
    o = put_time_opt(os, mpd_key(o, "status_since"), n->status != S_NONE, n->since);
    for (int i = 0; i < NFIELDS; i++) {
        o = mpd_strn(o, fields[i], field_len[i]);
        o = r->field[i].len ? mpd_raw(o, r->e.mem.data + r->field[i].off, r->field[i].len)
                            : mpd_nil(o);
    }
    o = put_time_opt(os, mpd_key(o, "created_at"), n->has_created, n->created_at);
    o = mpd_map(mpd_key(o, "field_times"), NFIELDS);
    for (int i = 0; i < NFIELDS; i++)
        o = put_time_opt(os, mpd_strn(o, fields[i], field_len[i]), n->fset[i], n->ftime[i]);
    o = mpd_array(mpd_key(o, "history"), r->nhist);
    o = mpd_raw(o, r->e.mem.data + r->history.off, r->history.len);
    o = mpd_u64(mpd_key(o, "history_dropped"), n->dropped);
    o = mpd_map(mpd_key(o, "counts"), 3);
    o = mpd_u64(mpd_key(o, "applied"), n->applied);
    o = mpd_u64(mpd_key(o, "late"), n->late);
    o = mpd_u64(mpd_key(o, "invalid"), n->invalid);
    o = mpd_u64(mpd_key(o, "last_seq"), r->last_seq);
    os->doc.len = (size_t)(o - os->doc.data);
    assert(os->doc.len <= os->doc.cap);
    return hctx_cursor_put(c, r->e.mem.data, r->e.vn, os->doc.data, os->doc.len);
}

/* Writes back every order this transaction changed. */
static int orders_flush(struct hctx *ctx)
{
    struct orders *os = *hctx_user(ctx);
    return hcache_flush(ctx, &os->cache, os->view, ord_write, CACHE_MAX);
}

/* order.invalid_transition {order_id, from, to, reason, event_type} */
static int emit_invalid(struct hctx *ctx, const struct event *ev, const struct cairn_str *id,
                        const struct cairn_str *et, int from, int t, const struct verdict *v)
{
    uint8_t tmp[CAIRN_KEY_MAX + REASON_MAX + 1024];
    struct cairn_buf b = {.data = tmp, .cap = sizeof tmp, .max = sizeof tmp};
    struct mpw w;
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 5);
    mpw_kv_str(&w, "order_id", id);
    mpw_kv_cstr(&w, "from", status_name(from));
    mpw_kv_cstr(&w, "to", status_name(t));
    mpw_kv_cstr(&w, "reason", v->reason);
    mpw_kv_str(&w, "event_type", et);
    int rc = mpw_finish(&w);
    return rc ? rc : hctx_emit(ctx, ev, "order.invalid_transition", &ev->tenant, id, b.data, b.len);
}

/* ====================================================================== apply */

static int orders_apply(struct hctx *ctx, const struct event *ev)
{
    struct orders *os = *hctx_user(ctx);
    struct cairn_str id, et;
    uint8_t vk[VKEY_MAX];
    int t;
    struct ordin in;
    scan_body(ev->body, &in);
    /* The schema requires both; an old log may not have them. */
    if (!mp_str(in.order_id, &id) || id.n == 0 || id.n > CAIRN_KEY_MAX ||
        !mp_str(in.event_type, &et) || (t = parse_target(&et)) == S_NONE)
        return 0;
    size_t vn = hkey_make(vk, sizeof vk, &ev->tenant, &id);
    if (!vn)
        return 0;
    struct ord *r;
    struct order n;
    struct verdict v;
    bool take[NFIELDS];
    int rc = ord_get(ctx, vk, vn, &r);
    if (rc)
        return rc;
    int from = r->o.status;
    judge(&r->o, t, ev->time, &v);
    advance(&r->o, ev, &in, t, &v, &n, take);
    if ((rc = take_values(os, r, ev, &in, &et, t, &v, &n, take)))
        return rc;
    r->o = n;
    r->last_seq = ev->seq;
    if ((rc = hcache_mark(&os->cache, &r->e)))
        return rc;
    return v.outcome == INVALID ? emit_invalid(ctx, ev, &id, &et, from, t, &v) : 0;
}

const struct handler orders_handler = {
    .version = HANDLER_VERSION,
    .name = "orders",
    .consumes = consumes,
    .emits = emits,
    .open = orders_open,
    .apply = orders_apply,
    .close = orders_close,
    .view = "view",
    .flush = orders_flush,
    .concurrent = true, /* touches only its context (handler.h) */
};
