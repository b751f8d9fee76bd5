/*
 * subscriptions — the subscription view per customer, from `payment`
 * inputs (Stripe events); emits `payment.failed` and
 * `subscription.canceled`.
 *
 * DBIs:
 *   subscriptions.view  tlen|tenant|customer -> the customer document
 *   subscriptions.paid  tlen|tenant|customer "/" invoice_id -> amount_paid
 *                       (i64 BE): the invoices already counted in
 *                       lifetime_paid (Stripe ids hold no '/').
 *
 * The customer is the input's key (ingest fills it from
 * data.object.customer, or data.object.id for a customer object); an input
 * without one is skipped. Handled types (others are ignored):
 *   customer.subscription.{created,updated,deleted,paused,resumed,
 *   trial_will_end}  data.object is a Subscription
 *   invoice.{paid,payment_succeeded,payment_failed,finalized,updated}
 *                    data.object is an Invoice
 *
 * Semantics:
 *  - Stripe delivers out of order and retries. The document has two parts,
 *    the subscription and the last invoice, each with the event it
 *    reflects (subscription_event / invoice_event: id, type, created) as
 *    its watermark. An event changes its part only when (created, id) is
 *    greater than the watermark: created (Unix seconds) first; on a tie,
 *    the Stripe event ids compared bytewise (memcmp, a prefix is smaller).
 *    Ids carry no order, so the tie-break is arbitrary but the same on
 *    every replica and replay. Anything else is stale: counted in
 *    stale_events and otherwise ignored (no emit). The same event applied
 *    twice is stale the second time.
 *  - The view follows one subscription per customer: the one of the
 *    newest subscription event (a customer with two at once shows the one
 *    that changed last).
 *  - A field the event's object lacks keeps its value while the object is
 *    the same subscription / invoice, and is null for a new one (Stripe
 *    sends whole objects; test fixtures and old API versions may not).
 *    customer.subscription.deleted without a status sets "canceled".
 *    plan is items.data[0].price (or the legacy `plan` object);
 *    current_period_end is top-level or on items.data[0] (API
 *    2025-03-31+); an invoice's subscription is `subscription` or
 *    parent.subscription_details.subscription (same versions).
 *  - lifetime_paid sums amount_paid per currency ({"eur": 5800}: amounts
 *    in different currencies do not add up; Stripe may bill one customer
 *    in several) over distinct invoices: invoice.paid and
 *    invoice.payment_succeeded both arrive for one payment, so an invoice
 *    is counted once (subscriptions.paid). It is counted even when the
 *    event is stale for the invoice part: a payment that happened is money
 *    received. An invoice without a currency or amount_paid is not
 *    counted (nor marked: a complete event for it still counts).
 *    paid_invoices is the number of invoices counted.
 *  - payment.failed {customer, invoice_id, amount_due, currency,
 *    attempt_count, subscription} for a fresh invoice.payment_failed;
 *    subscription.canceled {customer, subscription_id, canceled_at} for a
 *    fresh customer.subscription.deleted (canceled_at from the object, or
 *    the event's created). Key: the customer.
 *  - Times are RFC 3339 strings (Stripe's Unix seconds converted).
 *
 * The document (keys in this order):
 *   customer, tenant, subscription_id, status, plan {price_id, product,
 *   unit_amount, currency, interval} | null, current_period_end,
 *   canceled_at, last_invoice {id, status, amount_due, amount_paid,
 *   currency, subscription, created} | null, lifetime_paid {currency:
 *   amount}, paid_invoices, stale_events, subscription_event {id, type,
 *   created} | null, invoice_event {id, type, created} | null, last_seq
 */
#include "handler.h"

#include <stdlib.h>
#include <string.h>

/* ISO 4217 has fewer than 200 codes, so every real customer fits; a
 * currency beyond the bound (not real data) is recorded as paid but not
 * summed. */
#define CURRENCIES_MAX 200
#define CURRENCY_LEN_MAX 16
/* Stripe ids are short (< 100 bytes); longer ones are not Stripe's. */
#define STRIPE_ID_MAX 256
/* A document holds ids, a few scalars and the currency map. */
#define DOC_MAX (64u << 10)
#define EMIT_MAX (8u << 10)
/* Unix seconds we can turn into i64 nanoseconds. */
#define CREATED_MAX (INT64_MAX / 1000000000LL)

static const char *const consumes[] = {"payment", NULL};
static const char *const emits[] = {"payment.failed", "subscription.canceled", NULL};

enum kind {
    K_NONE,
    K_SUB,     /* customer.subscription.* except deleted */
    K_SUB_DEL, /* customer.subscription.deleted */
    K_INV,     /* invoice.finalized, invoice.updated */
    K_INV_PAID,
    K_INV_FAILED,
};

static const struct {
    const char *type;
    enum kind kind;
} kinds[] = {
    {"customer.subscription.created", K_SUB},
    {"customer.subscription.updated", K_SUB},
    {"customer.subscription.deleted", K_SUB_DEL},
    {"customer.subscription.paused", K_SUB},
    {"customer.subscription.resumed", K_SUB},
    {"customer.subscription.trial_will_end", K_SUB},
    {"invoice.paid", K_INV_PAID},
    {"invoice.payment_succeeded", K_INV_PAID},
    {"invoice.payment_failed", K_INV_FAILED},
    {"invoice.finalized", K_INV},
    {"invoice.updated", K_INV},
};

/* Customers whose document is kept in memory across transactions. Past
 * it, the cache is emptied after the next flush. */
#define CACHE_MAX (1u << 17)
#define VKEY_MAX (1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX)

/* One customer's document, packed as stored (len 0: none yet). The
 * view key is at mem[0..vn). */
struct cust {
    struct hentry e; /* the cache's part: key hash, dirty, mem */
};

struct subs {
    unsigned view, paid;
    struct hcache cache;  /* of struct cust; the dirty ones are written back by flush */
    struct cairn_buf tmp; /* the next document being written */
    msgpack_zone zone;    /* the document being read */
};

/* The Stripe event being applied. */
struct stripe {
    enum kind kind;
    struct cairn_str id, type;
    int64_t created; /* ns */
    const msgpack_object *obj;
};

/* A part's watermark, read from the document. */
struct mark {
    bool set;
    int64_t created; /* ns */
    struct cairn_str id;
};

/* The stored document's top-level fields, found in one pass instead of
 * an mp_get scan of the document per field read (~2 % of the handler's
 * instructions); NULL when absent (or no document). The first
 * occurrence wins, as with mp_get. */
enum dfield {
    D_SUBSCRIPTION_ID,
    D_STATUS,
    D_PLAN,
    D_CURRENT_PERIOD_END,
    D_CANCELED_AT,
    D_LAST_INVOICE,
    D_LIFETIME_PAID,
    D_PAID_INVOICES,
    D_STALE_EVENTS,
    D_SUBSCRIPTION_EVENT,
    D_INVOICE_EVENT,
    D_N
};
static const char *const dnames[D_N] = {"subscription_id",    "status",        "plan",
                                        "current_period_end", "canceled_at",   "last_invoice",
                                        "lifetime_paid",      "paid_invoices", "stale_events",
                                        "subscription_event", "invoice_event"};

/* strlen of each (checked in subs_open). */
static const uint8_t dlen[D_N] = {15, 6, 4, 18, 11, 12, 13, 13, 12, 18, 13};

struct dix {
    const msgpack_object *f[D_N];
};

static void doc_index(const msgpack_object *doc, struct dix *x)
{
    memset(x, 0, sizeof *x);
    if (!doc || doc->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < doc->via.map.size; i++) {
        const msgpack_object *k = &doc->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        for (int f = 0; f < D_N; f++)
            if (!x->f[f] && k->via.str.size == dlen[f] &&
                !memcmp(k->via.str.size ? k->via.str.ptr : "", dnames[f], k->via.str.size)) {
                x->f[f] = &doc->via.map.ptr[i].val;
                break;
            }
    }
}

static int subs_open(struct hctx *ctx)
{
    for (int f = 0; f < D_N; f++)
        assert(strlen(dnames[f]) == dlen[f]);
    struct subs *s = calloc(1, sizeof *s);
    if (!s)
        return CAIRN_ENOMEM;
    if (!msgpack_zone_init(&s->zone, 4096)) {
        free(s);
        return CAIRN_ENOMEM;
    }
    cairn_buf_init(&s->tmp, VKEY_MAX + DOC_MAX);
    *hctx_user(ctx) = s;
    int rc = hctx_db(ctx, "view", 0, &s->view);
    return rc ? rc : hctx_db(ctx, "paid", 0, &s->paid);
}

static void subs_close(struct hctx *ctx)
{
    struct subs *s = *hctx_user(ctx);
    if (s) {
        hcache_free(&s->cache);
        cairn_buf_deinit(&s->tmp);
        msgpack_zone_destroy(&s->zone);
        free(s);
    }
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== the cache */

/* Documents are kept packed, as stored: a payment event reads its
 * customer's document from memory and writes it back there; flush puts
 * each changed one once per transaction (was a get and a put per event).
 * The engine reopens the handler after an aborted transaction, so the
 * cache never holds work that did not commit. */

/* The cached customer of vk, read from the view on first use. */
static int cust_get(struct hctx *ctx, const uint8_t *vk, size_t vn, struct cust **out)
{
    struct subs *s = *hctx_user(ctx);
    struct hentry *e;
    bool fresh;
    int rc =
        hcache_get_or_new(&s->cache, vk, vn, sizeof(struct cust), VKEY_MAX + DOC_MAX, &e, &fresh);
    *out = (struct cust *)e;
    if (rc || !fresh)
        return rc;
    struct cust *c = *out;
    MDB_val v = {0, NULL};
    if ((rc = hctx_get(ctx, s->view, vk, vn, &v)) == CAIRN_ENOTFOUND)
        rc = 0;
    if (!rc && v.mv_size)
        rc = cairn_buf_append(&c->e.mem, v.mv_data, v.mv_size);
    if (rc) {
        hentry_free(&c->e);
        *out = NULL;
        return rc;
    }
    hcache_add(&s->cache, &c->e);
    return 0;
}

/* Writes back every customer this transaction changed. */
static int subs_flush(struct hctx *ctx)
{
    struct subs *s = *hctx_user(ctx);
    /* a customer's mem holds its document */
    return hcache_flush(ctx, &s->cache, s->view, NULL, CACHE_MAX);
}

/* ====================================================================== reading */

static bool is_sub(enum kind k)
{
    return k == K_SUB || k == K_SUB_DEL;
}

/* A string of 1..max bytes. */
static bool str_max(const msgpack_object *o, size_t max, struct cairn_str *s)
{
    return mp_str(o, s) && s->n > 0 && s->n <= max;
}

/* An id that may be expanded into an object with an id. */
static const msgpack_object *id_of(const msgpack_object *o)
{
    return o && o->type == MSGPACK_OBJECT_MAP ? mp_get(o, "id") : o;
}

static bool str_eq(const struct cairn_str *a, const struct cairn_str *b)
{
    return a->n == b->n && (!a->n || !memcmp(a->p, b->p, a->n));
}

/* Unix seconds -> ns; false when absent, negative or too large. */
static bool unix_ns(const msgpack_object *o, int64_t *ns)
{
    int64_t s;
    if (!mp_i64(o, &s) || s < 0 || s > CREATED_MAX)
        return false;
    *ns = s * 1000000000LL;
    return true;
}

static bool parse_stripe(const struct event *ev, struct stripe *st)
{
    memset(st, 0, sizeof *st);
    if (!mp_str(mp_get(ev->body, "type"), &st->type))
        return false;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0] && !st->kind; i++)
        if (st->type.n == strlen(kinds[i].type) && !memcmp(st->type.p, kinds[i].type, st->type.n))
            st->kind = kinds[i].kind;
    st->obj = mp_path(ev->body, "data", "object", NULL);
    return st->kind != K_NONE && str_max(mp_get(ev->body, "id"), STRIPE_ID_MAX, &st->id) &&
           unix_ns(mp_get(ev->body, "created"), &st->created) && st->obj &&
           st->obj->type == MSGPACK_OBJECT_MAP;
}

static int read_mark(const msgpack_object *p, struct mark *m)
{
    struct cairn_str t;
    memset(m, 0, sizeof *m);
    if (!p || p->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (!mp_str(mp_get(p, "id"), &m->id) || !mp_str(mp_get(p, "created"), &t) ||
        cairn_time_parse(t.p, t.n, &m->created))
        return CAIRN_ECORRUPT;
    m->set = true;
    return 0;
}

/* Is the event after the watermark: (created, id) > (m.created, m.id)? */
static bool after(const struct stripe *st, const struct mark *m)
{
    if (!m->set || st->created != m->created)
        return !m->set || st->created > m->created;
    size_t n = st->id.n < m->id.n ? st->id.n : m->id.n;
    int c = memcmp(st->id.p, m->id.p, n);
    return c > 0 || (c == 0 && st->id.n > m->id.n);
}

static uint64_t u64_of(const msgpack_object *o)
{
    int64_t v;
    return mp_i64(o, &v) && v > 0 ? (uint64_t)v : 0;
}

/* ====================================================================== lifetime_paid */

/* A payment to count: the invoice, its currency and amount. */
struct payment {
    bool counted; /* counted by this event */
    struct cairn_str invoice, currency;
    int64_t amount;
};

/* Counts a paid invoice once: marks it in subscriptions.paid. */
static int count_payment(struct hctx *ctx, const struct event *ev, const struct stripe *st,
                         struct payment *pay)
{
    struct subs *s = *hctx_user(ctx);
    uint8_t k[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX + 1 + STRIPE_ID_MAX];
    char rest[CAIRN_KEY_MAX + 1 + STRIPE_ID_MAX];
    memset(pay, 0, sizeof *pay);
    if (st->kind != K_INV_PAID || !str_max(mp_get(st->obj, "id"), STRIPE_ID_MAX, &pay->invoice) ||
        !str_max(mp_get(st->obj, "currency"), CURRENCY_LEN_MAX, &pay->currency) ||
        !mp_i64(mp_get(st->obj, "amount_paid"), &pay->amount) || pay->amount < 0 ||
        ev->key.n > CAIRN_KEY_MAX)
        return 0;
    memcpy(rest, ev->key.p, ev->key.n);
    rest[ev->key.n] = '/';
    memcpy(rest + ev->key.n + 1, pay->invoice.p, pay->invoice.n);
    struct cairn_str r = {rest, ev->key.n + 1 + pay->invoice.n};
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &r);
    if (!kn)
        return 0;
    uint8_t amount[8];
    MDB_val counted_before;
    cairn_be64_put(amount, (uint64_t)pay->amount);
    /* One descent: stored only when this invoice was not counted yet. */
    int rc = hctx_put_new(ctx, s->paid, k, kn, amount, sizeof amount, &counted_before);
    if (rc == CAIRN_ECONFLICT)
        return 0;
    pay->counted = !rc;
    return rc;
}

/* Is msgpack key k the string s? */
static bool key_is(const msgpack_object *k, const struct cairn_str *s)
{
    return k->type == MSGPACK_OBJECT_STR &&
           str_eq(&(struct cairn_str){k->via.str.ptr, k->via.str.size}, s);
}

/* lifetime_paid with the payment added (kept order; a new currency last). */
static void write_lifetime(struct mpw *w, const struct dix *doc, const struct payment *pay)
{
    const msgpack_object *m = doc->f[D_LIFETIME_PAID];
    uint32_t n = m && m->type == MSGPACK_OBJECT_MAP ? m->via.map.size : 0;
    bool found = false;
    if (n > CURRENCIES_MAX)
        n = CURRENCIES_MAX;
    for (uint32_t i = 0; i < n && pay->counted && !found; i++)
        found = key_is(&m->via.map.ptr[i].key, &pay->currency);
    bool add = pay->counted && !found && n < CURRENCIES_MAX;
    mpw_str(w, "lifetime_paid");
    msgpack_pack_map(&w->pk, n + add);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        int64_t v = 0;
        mp_i64(&kv->val, &v);
        if (pay->counted && key_is(&kv->key, &pay->currency))
            v = v > INT64_MAX - pay->amount ? INT64_MAX : v + pay->amount;
        mpw_obj(w, &kv->key);
        msgpack_pack_int64(&w->pk, v);
    }
    if (add) {
        mpw_strn(w, &pay->currency);
        msgpack_pack_int64(&w->pk, pay->amount);
    }
}

/* ====================================================================== writing the parts */

/* Unix seconds as an RFC 3339 time; false (nothing written) when o is not
 * usable seconds. */
static bool kv_unix(struct mpw *w, const char *k, const msgpack_object *o)
{
    int64_t ns;
    if (!unix_ns(o, &ns))
        return false;
    mpw_kv_time(w, k, ns);
    return true;
}

/* k: o if it is a string of 1..STRIPE_ID_MAX bytes, else keep (may be
 * NULL: null). */
static void kv_str_or(struct mpw *w, const char *k, const msgpack_object *o,
                      const msgpack_object *keep)
{
    struct cairn_str s;
    mpw_kv_obj(w, k, str_max(o, STRIPE_ID_MAX, &s) ? o : keep);
}

/* k: o if it is an integer, else keep (may be NULL: null). */
static void kv_int_or(struct mpw *w, const char *k, const msgpack_object *o,
                      const msgpack_object *keep)
{
    int64_t v;
    if (mp_i64(o, &v))
        mpw_kv_i64(w, k, v);
    else
        mpw_kv_obj(w, k, keep);
}

/* The subscription's first item (where newer API versions put the price
 * and the period). */
static const msgpack_object *first_item(const msgpack_object *sub)
{
    const msgpack_object *d = mp_path(sub, "items", "data", NULL);
    return d && d->type == MSGPACK_OBJECT_ARRAY && d->via.array.size ? &d->via.array.ptr[0] : NULL;
}

/* plan {price_id, product, unit_amount, currency, interval} from a Price
 * (items.data[0].price) or a legacy Plan; the kept one when neither. */
static void write_plan(struct mpw *w, const msgpack_object *sub, const struct dix *keep)
{
    const msgpack_object *price = mp_get(first_item(sub), "price"), *legacy = mp_get(sub, "plan");
    bool is_price = price && price->type == MSGPACK_OBJECT_MAP;
    const msgpack_object *p = is_price ? price : legacy;
    if (!p || p->type != MSGPACK_OBJECT_MAP) {
        mpw_kv_obj(w, "plan", keep->f[D_PLAN]);
        return;
    }
    mpw_str(w, "plan");
    msgpack_pack_map(&w->pk, 5);
    kv_str_or(w, "price_id", mp_get(p, "id"), NULL);
    kv_str_or(w, "product", id_of(mp_get(p, "product")), NULL);
    kv_int_or(w, "unit_amount", mp_get(p, is_price ? "unit_amount" : "amount"), NULL);
    kv_str_or(w, "currency", mp_get(p, "currency"), NULL);
    kv_str_or(w, "interval",
              is_price ? mp_path(p, "recurring", "interval", NULL) : mp_get(p, "interval"), NULL);
}

/* subscription_id, status, plan, current_period_end, canceled_at from a
 * fresh subscription event. A field the object lacks keeps the document's
 * value when both are about the same subscription, else is null. */
static const struct dix no_doc; /* every field NULL */

static void write_sub(struct mpw *w, const struct stripe *st, const struct dix *doc)
{
    const msgpack_object *o = st->obj, *item = first_item(o);
    struct cairn_str nid, oid;
    bool has_id = str_max(mp_get(o, "id"), STRIPE_ID_MAX, &nid);
    bool same = !has_id || (mp_str(doc->f[D_SUBSCRIPTION_ID], &oid) && str_eq(&nid, &oid));
    const struct dix *keep = same ? doc : &no_doc;
    kv_str_or(w, "subscription_id", mp_get(o, "id"), keep->f[D_SUBSCRIPTION_ID]);
    struct cairn_str status;
    if (str_max(mp_get(o, "status"), 64, &status))
        mpw_kv_str(w, "status", &status);
    else if (st->kind == K_SUB_DEL)
        mpw_kv_cstr(w, "status", "canceled");
    else
        mpw_kv_obj(w, "status", keep->f[D_STATUS]);
    write_plan(w, o, keep);
    if (!kv_unix(w, "current_period_end", mp_get(o, "current_period_end")) &&
        !kv_unix(w, "current_period_end", mp_get(item, "current_period_end")))
        mpw_kv_obj(w, "current_period_end", keep->f[D_CURRENT_PERIOD_END]);
    const msgpack_object *c = mp_get(o, "canceled_at");
    if (kv_unix(w, "canceled_at", c))
        ;
    else if (st->kind == K_SUB_DEL)
        mpw_kv_time(w, "canceled_at", st->created);
    else
        mpw_kv_obj(w, "canceled_at", c ? NULL : keep->f[D_CANCELED_AT]);
}

/* The invoice's subscription: `subscription` (an id or expanded) or, from
 * API 2025-03-31, parent.subscription_details.subscription. */
static const msgpack_object *invoice_sub(const msgpack_object *inv)
{
    const msgpack_object *s = id_of(mp_get(inv, "subscription"));
    struct cairn_str tmp;
    if (mp_str(s, &tmp))
        return s;
    return id_of(mp_path(inv, "parent", "subscription_details", "subscription", NULL));
}

/* last_invoice {id, status, amount_due, amount_paid, currency,
 * subscription, created} from a fresh invoice event. */
static void write_invoice(struct mpw *w, const struct stripe *st, const struct dix *doc)
{
    const msgpack_object *o = st->obj, *old = doc->f[D_LAST_INVOICE];
    struct cairn_str nid, oid;
    bool has_id = str_max(mp_get(o, "id"), STRIPE_ID_MAX, &nid);
    bool same = old && (!has_id || (mp_str(mp_get(old, "id"), &oid) && str_eq(&nid, &oid)));
    const msgpack_object *keep = same ? old : NULL;
    struct cairn_str status;
    mpw_str(w, "last_invoice");
    msgpack_pack_map(&w->pk, 7);
    kv_str_or(w, "id", mp_get(o, "id"), mp_get(keep, "id"));
    if (str_max(mp_get(o, "status"), 64, &status))
        mpw_kv_str(w, "status", &status);
    else if (st->kind == K_INV_PAID)
        mpw_kv_cstr(w, "status", "paid");
    else
        mpw_kv_obj(w, "status", mp_get(keep, "status"));
    kv_int_or(w, "amount_due", mp_get(o, "amount_due"), mp_get(keep, "amount_due"));
    kv_int_or(w, "amount_paid", mp_get(o, "amount_paid"), mp_get(keep, "amount_paid"));
    kv_str_or(w, "currency", mp_get(o, "currency"), mp_get(keep, "currency"));
    kv_str_or(w, "subscription", invoice_sub(o), mp_get(keep, "subscription"));
    if (!kv_unix(w, "created", mp_get(o, "created")))
        mpw_kv_obj(w, "created", mp_get(keep, "created"));
}

/* A part's watermark: the event it reflects. */
static void write_mark(struct mpw *w, const char *k, const struct stripe *st)
{
    mpw_str(w, k);
    msgpack_pack_map(&w->pk, 3);
    mpw_kv_str(w, "id", &st->id);
    mpw_kv_str(w, "type", &st->type);
    mpw_kv_time(w, "created", st->created);
}

static int write_doc(struct mpw *w, const struct event *ev, const struct stripe *st,
                     const struct dix *doc, bool fresh, const struct payment *pay)
{
    bool sub = is_sub(st->kind);
    msgpack_pack_map(&w->pk, 14);
    mpw_kv_str(w, "customer", &ev->key);
    mpw_kv_str(w, "tenant", &ev->tenant);
    if (fresh && sub)
        write_sub(w, st, doc);
    else
        for (int f = D_SUBSCRIPTION_ID; f <= D_CANCELED_AT; f++)
            mpw_kv_obj(w, dnames[f], doc->f[f]);
    if (fresh && !sub)
        write_invoice(w, st, doc);
    else
        mpw_kv_obj(w, "last_invoice", doc->f[D_LAST_INVOICE]);
    write_lifetime(w, doc, pay);
    mpw_kv_u64(w, "paid_invoices", u64_of(doc->f[D_PAID_INVOICES]) + pay->counted);
    mpw_kv_u64(w, "stale_events", u64_of(doc->f[D_STALE_EVENTS]) + !fresh);
    if (fresh && sub)
        write_mark(w, "subscription_event", st);
    else
        mpw_kv_obj(w, "subscription_event", doc->f[D_SUBSCRIPTION_EVENT]);
    if (fresh && !sub)
        write_mark(w, "invoice_event", st);
    else
        mpw_kv_obj(w, "invoice_event", doc->f[D_INVOICE_EVENT]);
    mpw_kv_u64(w, "last_seq", ev->seq);
    return mpw_finish(w);
}

/* ====================================================================== emitting */

/* payment.failed {customer, invoice_id, amount_due, currency,
 * attempt_count, subscription} */
static void pack_failed(struct mpw *w, const struct event *ev, const struct stripe *st)
{
    const msgpack_object *o = st->obj;
    msgpack_pack_map(&w->pk, 6);
    mpw_kv_str(w, "customer", &ev->key);
    kv_str_or(w, "invoice_id", mp_get(o, "id"), NULL);
    kv_int_or(w, "amount_due", mp_get(o, "amount_due"), NULL);
    kv_str_or(w, "currency", mp_get(o, "currency"), NULL);
    kv_int_or(w, "attempt_count", mp_get(o, "attempt_count"), NULL);
    kv_str_or(w, "subscription", invoice_sub(o), NULL);
}

/* subscription.canceled {customer, subscription_id, canceled_at} */
static void pack_canceled(struct mpw *w, const struct event *ev, const struct stripe *st)
{
    msgpack_pack_map(&w->pk, 3);
    mpw_kv_str(w, "customer", &ev->key);
    kv_str_or(w, "subscription_id", mp_get(st->obj, "id"), NULL);
    if (!kv_unix(w, "canceled_at", mp_get(st->obj, "canceled_at")))
        mpw_kv_time(w, "canceled_at", st->created);
}

static int emit(struct hctx *ctx, const struct event *ev, const struct stripe *st)
{
    bool failed = st->kind == K_INV_FAILED;
    if (!failed && st->kind != K_SUB_DEL)
        return 0;
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, EMIT_MAX);
    mpw_init(&w, &b);
    (failed ? pack_failed : pack_canceled)(&w, ev, st);
    int rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_emit(ctx, ev, failed ? "payment.failed" : "subscription.canceled", &ev->tenant,
                       &ev->key, b.data, b.len);
    cairn_buf_deinit(&b);
    return rc;
}

/* ====================================================================== apply */

static int subs_apply(struct hctx *ctx, const struct event *ev)
{
    struct subs *s = *hctx_user(ctx);
    struct stripe st;
    struct payment pay;
    uint8_t vk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    size_t vn;
    if (!ev->key.n || !parse_stripe(ev, &st) ||
        !(vn = hkey_make(vk, sizeof vk, &ev->tenant, &ev->key)))
        return 0;
    int rc = count_payment(ctx, ev, &st, &pay);
    struct cust *c;
    if (rc || (rc = cust_get(ctx, vk, vn, &c)))
        return rc;
    msgpack_object obj;
    const msgpack_object *doc = NULL;
    size_t off = 0;
    if (c->e.mem.len > c->e.vn) {
        msgpack_unpack_return urc = msgpack_unpack((const char *)c->e.mem.data + c->e.vn,
                                                   c->e.mem.len - c->e.vn, &off, &s->zone, &obj);
        if ((urc != MSGPACK_UNPACK_SUCCESS && urc != MSGPACK_UNPACK_EXTRA_BYTES) ||
            obj.type != MSGPACK_OBJECT_MAP) {
            msgpack_zone_clear(&s->zone);
            return CAIRN_ECORRUPT;
        }
        doc = &obj;
    }
    struct mark m;
    struct cairn_buf *b = &s->tmp;
    struct mpw w;
    cairn_buf_reset(b);
    rc = cairn_buf_append(b, vk, vn);
    mpw_init(&w, b);
    struct dix x;
    doc_index(doc, &x);
    if (!rc)
        rc = read_mark(x.f[is_sub(st.kind) ? D_SUBSCRIPTION_EVENT : D_INVOICE_EVENT], &m);
    bool fresh = after(&st, &m);
    if (!rc)
        rc = write_doc(&w, ev, &st, &x, fresh, &pay);
    if (!rc && b->len - vn > DOC_MAX) /* the document alone is bounded */
        rc = CAIRN_ETOOBIG;
    msgpack_zone_clear(&s->zone);
    if (rc)
        return rc;
    /* The new document becomes the customer's memory, the old one the
     * next scratch: no copy. */
    struct cairn_buf old_mem = c->e.mem;
    c->e.mem = *b;
    *b = old_mem;
    if ((rc = hcache_mark(&s->cache, &c->e)))
        return rc;
    return fresh ? emit(ctx, ev, &st) : 0;
}

const struct handler subscriptions_handler = {
    .version = HANDLER_VERSION,
    .name = "subscriptions",
    .consumes = consumes,
    .emits = emits,
    .open = subs_open,
    .apply = subs_apply,
    .close = subs_close,
    .view = "view",
    .flush = subs_flush,
    .concurrent = true, /* touches only its context (handler.h) */
};
