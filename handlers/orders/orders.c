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

struct orders {
    unsigned view;
};

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

enum outcome { APPLIED, LATE, INVALID };

struct verdict {
    enum outcome outcome;
    char reason[REASON_MAX];
};

static int orders_open(struct hctx *ctx)
{
    struct orders *o = calloc(1, sizeof *o);
    if (!o)
        return CAIRN_ENOMEM;
    *hctx_user(ctx) = o;
    return hctx_db(ctx, "view", 0, &o->view);
}

static void orders_close(struct hctx *ctx)
{
    free(*hctx_user(ctx));
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== names */

/* "order.picked_up" -> S_PICKED_UP; S_NONE for anything else. */
static int parse_target(const struct cairn_str *et)
{
    if (et->n <= 6 || memcmp(et->p, "order.", 6))
        return S_NONE;
    for (int s = 0; s < S_COUNT; s++)
        if (et->n - 6 == strlen(status_names[s]) && !memcmp(et->p + 6, status_names[s], et->n - 6))
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
static void advance(const struct order *o, const struct event *ev, int t, const struct verdict *v,
                    struct order *n, bool take[NFIELDS])
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
        if (mp_get(ev->body, fields[i]) && (!o->fset[i] || ev->time >= o->ftime[i])) {
            take[i] = true;
            n->fset[i] = true;
            n->ftime[i] = ev->time;
        }
}

/* ====================================================================== writing */

static void kv_time_opt(struct mpw *w, const char *k, bool set, int64_t t)
{
    if (set)
        mpw_kv_time(w, k, t);
    else
        mpw_kv_cstr(w, k, NULL);
}

static void write_entry(struct mpw *w, const struct event *ev, const struct cairn_str *et, int from,
                        int t, const struct verdict *v)
{
    msgpack_pack_map(&w->pk, 8);
    mpw_kv_u64(w, "seq", ev->seq);
    mpw_kv_time(w, "time", ev->time);
    mpw_kv_str(w, "event_type", et);
    mpw_kv_cstr(w, "from", status_name(from));
    mpw_kv_cstr(w, "to", status_name(t));
    mpw_kv_bool(w, "applied", v->outcome == APPLIED);
    mpw_kv_bool(w, "late", v->outcome == LATE);
    mpw_kv_cstr(w, "reason", v->outcome == INVALID ? v->reason : NULL);
}

/* The kept tail of the old history and the new entry; counts the drop. */
static void write_history(struct mpw *w, const msgpack_object *doc, struct order *n,
                          const struct event *ev, const struct cairn_str *et, int from, int t,
                          const struct verdict *v)
{
    const msgpack_object *h = mp_get(doc, "history");
    uint32_t size = h && h->type == MSGPACK_OBJECT_ARRAY ? h->via.array.size : 0;
    uint32_t keep = size < HISTORY_MAX - 1 ? size : HISTORY_MAX - 1;
    n->dropped += size - keep;
    mpw_str(w, "history");
    msgpack_pack_array(&w->pk, keep + 1);
    for (uint32_t i = size - keep; i < size; i++)
        mpw_obj(w, &h->via.array.ptr[i]);
    write_entry(w, ev, et, from, t, v);
}

static int write_doc(struct mpw *w, const struct event *ev, const struct cairn_str *id,
                     const struct cairn_str *et, const msgpack_object *doc, const struct order *o,
                     struct order *n, const bool take[NFIELDS], int t, const struct verdict *v)
{
    msgpack_pack_map(&w->pk, 16);
    mpw_kv_str(w, "order_id", id);
    mpw_kv_str(w, "tenant", &ev->tenant);
    mpw_kv_cstr(w, "status", status_name(n->status));
    kv_time_opt(w, "status_since", n->status != S_NONE, n->since);
    for (int i = 0; i < NFIELDS; i++)
        mpw_kv_obj(w, fields[i], mp_get(take[i] ? ev->body : doc, fields[i]));
    kv_time_opt(w, "created_at", n->has_created, n->created_at);
    mpw_str(w, "field_times");
    msgpack_pack_map(&w->pk, NFIELDS);
    for (int i = 0; i < NFIELDS; i++)
        kv_time_opt(w, fields[i], n->fset[i], n->ftime[i]);
    write_history(w, doc, n, ev, et, o->status, t, v);
    mpw_kv_u64(w, "history_dropped", n->dropped);
    mpw_str(w, "counts");
    msgpack_pack_map(&w->pk, 3);
    mpw_kv_u64(w, "applied", n->applied);
    mpw_kv_u64(w, "late", n->late);
    mpw_kv_u64(w, "invalid", n->invalid);
    mpw_kv_u64(w, "last_seq", ev->seq);
    return mpw_finish(w);
}

/* order.invalid_transition {order_id, from, to, reason, event_type} */
static int emit_invalid(struct hctx *ctx, const struct event *ev, const struct cairn_str *id,
                        const struct cairn_str *et, int from, int t, const struct verdict *v)
{
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, CAIRN_KEY_MAX + REASON_MAX + 1024);
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 5);
    mpw_kv_str(&w, "order_id", id);
    mpw_kv_cstr(&w, "from", status_name(from));
    mpw_kv_cstr(&w, "to", status_name(t));
    mpw_kv_cstr(&w, "reason", v->reason);
    mpw_kv_str(&w, "event_type", et);
    int rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_emit(ctx, ev, "order.invalid_transition", &ev->tenant, id, b.data, b.len);
    cairn_buf_deinit(&b);
    return rc;
}

/* ====================================================================== apply */

static int orders_apply(struct hctx *ctx, const struct event *ev)
{
    struct orders *self = *hctx_user(ctx);
    struct cairn_str id, et;
    uint8_t vk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    int t;
    /* The schema requires both; an old log may not have them. */
    if (!mp_str(mp_get(ev->body, "order_id"), &id) || id.n == 0 || id.n > CAIRN_KEY_MAX ||
        !mp_str(mp_get(ev->body, "event_type"), &et) || (t = parse_target(&et)) == S_NONE)
        return 0;
    size_t vn = hkey_make(vk, sizeof vk, &ev->tenant, &id);
    if (!vn)
        return 0;
    MDB_val val;
    int rc = hctx_get(ctx, self->view, vk, vn, &val);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    msgpack_unpacked old;
    msgpack_unpacked_init(&old);
    const msgpack_object *doc = NULL;
    if (rc == 0) {
        if (msgpack_unpack_next(&old, val.mv_data, val.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&old);
            return CAIRN_ECORRUPT;
        }
        doc = &old.data;
    }
    struct order o, n;
    struct verdict v;
    bool take[NFIELDS];
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, DOC_MAX);
    mpw_init(&w, &b);
    rc = read_order(doc, &o);
    if (!rc) {
        judge(&o, t, ev->time, &v);
        advance(&o, ev, t, &v, &n, take);
        rc = write_doc(&w, ev, &id, &et, doc, &o, &n, take, t, &v);
    }
    if (!rc)
        rc = hctx_put(ctx, self->view, vk, vn, b.data, b.len);
    if (!rc && v.outcome == INVALID)
        rc = emit_invalid(ctx, ev, &id, &et, o.status, t, &v);
    cairn_buf_deinit(&b);
    msgpack_unpacked_destroy(&old);
    return rc;
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
};
