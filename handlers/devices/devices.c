/*
 * devices — the device view, from `telemetry` and `location` inputs; emits
 * `device.online` / `device.offline`. The worked example of the handler
 * contract (README, "Writing a handler").
 *
 * DBIs:
 *   devices.view  tlen|tenant|device_id -> the device document (msgpack map)
 *   devices.seen  time (i64 BE, biased) | tlen|tenant|device_id -> ""
 *                 one entry per ONLINE device, at or before its last_seen
 *                 (a lazy lower bound, corrected by ticks), so a tick finds
 *                 the devices to mark offline without a scan.
 *
 * Semantics:
 *  - last_seen is the newest event time seen for the device. A late event
 *    (older than last_seen) is counted but never overwrites newer values.
 *  - A device goes offline when a tick's time passes last_seen +
 *    offline_after_s (config, default 300): device.offline. The next event
 *    brings it back: device.online. A device seen for the first time is
 *    online without an event (nothing changed for anyone watching).
 *  - At most OFFLINE_PER_TICK devices go offline per tick; the rest follow
 *    on the next ticks (bounded work per input, still deterministic).
 *  - readings keeps the latest value of each key of telemetry `data`, up to
 *    READINGS_MAX keys (keys beyond are not added).
 */
#include "handler.h"

#include <stdlib.h>
#include <string.h>

#define OFFLINE_PER_TICK 10000
#define READINGS_MAX 64
#define DEFAULT_OFFLINE_AFTER_S 300

static const char *const consumes[] = {"telemetry", "location", "tick", NULL};
static const char *const emits[] = {"device.online", "device.offline", NULL};

struct devices {
    unsigned view, seen;
    int64_t offline_after_ns;
};

static struct devices *self(struct hctx *ctx)
{
    return *hctx_user(ctx);
}

static int devices_open(struct hctx *ctx)
{
    struct devices *d = calloc(1, sizeof *d);
    if (!d)
        return CAIRN_ENOMEM;
    const json_t *oa = json_object_get(hctx_config(ctx), "offline_after_s");
    d->offline_after_ns =
        (json_is_integer(oa) && json_integer_value(oa) > 0 ? json_integer_value(oa)
                                                           : DEFAULT_OFFLINE_AFTER_S) *
        1000000000LL;
    *hctx_user(ctx) = d;
    int rc = hctx_db(ctx, "view", 0, &d->view);
    return rc ? rc : hctx_db(ctx, "seen", 0, &d->seen);
}

static void devices_close(struct hctx *ctx)
{
    free(*hctx_user(ctx));
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== the seen index */

static size_t seen_key(uint8_t *out, int64_t t, const uint8_t *vk, size_t vn)
{
    cairn_be64_put(out, (uint64_t)t ^ (1ull << 63));
    memcpy(out + 8, vk, vn);
    return 8 + vn;
}

/* The seen index is lazy: a device's entry is a lower bound of its
 * last_seen, written when it comes online and corrected on ticks (see
 * on_tick). Moving it on every event would cost a delete and a put per
 * event; a tick pays one move per device only when it looks due. */
static int seen_put(struct hctx *ctx, const uint8_t *vk, size_t vn, int64_t t)
{
    uint8_t sk[8 + 1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    return hctx_put(ctx, self(ctx)->seen, sk, seen_key(sk, t, vk, vn), "", 0);
}

/* ====================================================================== the document */

/* Writes data (new) merged over readings (old): old keys keep their order,
 * new values win, new keys are appended up to READINGS_MAX. */
static void write_readings(struct mpw *w, const msgpack_object *old, const msgpack_object *data)
{
    uint32_t no = old && old->type == MSGPACK_OBJECT_MAP ? old->via.map.size : 0;
    uint32_t nd = data && data->type == MSGPACK_OBJECT_MAP ? data->via.map.size : 0;
    const msgpack_object_kv *add[READINGS_MAX];
    uint32_t nadd = 0;
    for (uint32_t i = 0; i < nd && no + nadd < READINGS_MAX; i++) {
        const msgpack_object *k = &data->via.map.ptr[i].key;
        bool known = false;
        for (uint32_t j = 0; j < no && !known; j++)
            known = old->via.map.ptr[j].key.type == k->type &&
                    msgpack_object_equal(old->via.map.ptr[j].key, *k);
        if (!known && k->type == MSGPACK_OBJECT_STR)
            add[nadd++] = &data->via.map.ptr[i];
    }
    mpw_str(w, "readings");
    msgpack_pack_map(&w->pk, no + nadd);
    for (uint32_t j = 0; j < no; j++) {
        const msgpack_object_kv *kv = &old->via.map.ptr[j];
        const msgpack_object *nv = NULL;
        for (uint32_t i = 0; i < nd && !nv; i++)
            if (msgpack_object_equal(data->via.map.ptr[i].key, kv->key))
                nv = &data->via.map.ptr[i].val;
        mpw_obj(w, &kv->key);
        mpw_obj(w, nv ? nv : &kv->val);
    }
    for (uint32_t i = 0; i < nadd; i++) {
        mpw_obj(w, &add[i]->key);
        mpw_obj(w, &add[i]->val);
    }
}

/* The newer of the event's field and the document's. */
static const msgpack_object *pick(const msgpack_object *body, const msgpack_object *doc,
                                  const char *name, bool newer)
{
    const msgpack_object *v = newer ? mp_get(body, name) : NULL;
    return v ? v : mp_get(doc, name);
}

/* The position of a newer location event, else the document's. */
static void write_position(struct mpw *w, const struct event *ev, const msgpack_object *doc,
                           bool from_event)
{
    static const char *const fields[] = {"lat", "lon", "alt", "accuracy", "heading"};
    mpw_str(w, "position");
    if (!from_event) {
        mpw_obj(w, mp_get(doc, "position"));
        return;
    }
    uint32_t n = 1;
    for (size_t i = 0; i < 5; i++)
        n += mp_get(ev->body, fields[i]) != NULL;
    msgpack_pack_map(&w->pk, n);
    for (size_t i = 0; i < 5; i++)
        if (mp_get(ev->body, fields[i]))
            mpw_kv_obj(w, fields[i], mp_get(ev->body, fields[i]));
    mpw_kv_time(w, "time", ev->time);
}

struct seen_state {
    bool exists, online;
    int64_t first, last;
    uint64_t n_telemetry, n_location;
};

static void read_state(const msgpack_object *doc, struct seen_state *s)
{
    struct cairn_str t;
    s->exists = doc != NULL;
    s->online = true;
    s->first = s->last = INT64_MIN;
    s->n_telemetry = s->n_location = 0;
    if (!doc)
        return;
    mp_bool(mp_get(doc, "online"), &s->online);
    if (mp_str(mp_get(doc, "first_seen"), &t))
        cairn_time_parse(t.p, t.n, &s->first);
    if (mp_str(mp_get(doc, "last_seen"), &t))
        cairn_time_parse(t.p, t.n, &s->last);
    const msgpack_object *c = mp_get(doc, "counts");
    int64_t v;
    if (mp_i64(mp_get(c, "telemetry"), &v))
        s->n_telemetry = (uint64_t)v;
    if (mp_i64(mp_get(c, "location"), &v))
        s->n_location = (uint64_t)v;
}

static int write_doc(struct mpw *w, const struct event *ev, const struct cairn_str *id,
                     const msgpack_object *doc, const struct seen_state *old, bool newer)
{
    bool loc = ev->type.n == 8 && !memcmp(ev->type.p, "location", 8);
    int64_t first = old->exists && old->first < ev->time ? old->first : ev->time;
    int64_t last = old->exists && old->last > ev->time ? old->last : ev->time;
    msgpack_pack_map(&w->pk, 12);
    mpw_kv_str(w, "device_id", id);
    mpw_kv_str(w, "tenant", &ev->tenant);
    mpw_kv_bool(w, "online", true);
    mpw_kv_obj(w, "status", pick(ev->body, doc, "status", newer && !loc));
    mpw_kv_obj(w, "battery", pick(ev->body, doc, "battery", newer && !loc));
    mpw_kv_time(w, "first_seen", first);
    mpw_kv_time(w, "last_seen", last);
    write_position(w, ev, doc, newer && loc);
    mpw_kv_obj(w, "speed", pick(ev->body, doc, "speed", newer && loc));
    write_readings(w, mp_get(doc, "readings"), newer && !loc ? mp_get(ev->body, "data") : NULL);
    mpw_str(w, "counts");
    msgpack_pack_map(&w->pk, 2);
    mpw_kv_u64(w, "telemetry", old->n_telemetry + !loc);
    mpw_kv_u64(w, "location", old->n_location + loc);
    mpw_kv_u64(w, "last_seq", ev->seq);
    return mpw_finish(w);
}

/* ====================================================================== apply */

static int emit_simple(struct hctx *ctx, const struct event *cause, const char *type,
                       const struct cairn_str *tenant, const struct cairn_str *id,
                       int64_t last_seen)
{
    uint8_t tmp[512];
    struct cairn_buf b = {.data = tmp, .cap = sizeof tmp, .max = sizeof tmp};
    struct mpw w;
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 3);
    mpw_kv_str(&w, "device_id", id);
    mpw_kv_time(&w, "last_seen", last_seen);
    mpw_kv_time(&w, "at", cause->time);
    int rc = mpw_finish(&w);
    return rc ? rc : hctx_emit(ctx, cause, type, tenant, id, b.data, b.len);
}

static int on_device_event(struct hctx *ctx, const struct event *ev)
{
    struct devices *d = self(ctx);
    struct cairn_str id;
    uint8_t vk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
    if (!mp_str(mp_get(ev->body, "device_id"), &id) || id.n > CAIRN_KEY_MAX)
        return 0; /* the schema requires it; an old log may not have it */
    size_t vn = hkey_make(vk, sizeof vk, &ev->tenant, &id);
    MDB_val v;
    int rc = hctx_get(ctx, d->view, vk, vn, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    msgpack_unpacked old;
    msgpack_unpacked_init(&old);
    const msgpack_object *doc = NULL;
    if (rc == 0 && msgpack_unpack_next(&old, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS)
        doc = &old.data;
    struct seen_state st;
    read_state(doc, &st);
    bool newer = !st.exists || ev->time >= st.last;
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, CAIRN_PAYLOAD_MAX_CEILING);
    mpw_init(&w, &b);
    rc = write_doc(&w, ev, &id, doc, &st, newer);
    int64_t last = st.exists && st.last > ev->time ? st.last : ev->time;
    if (!rc)
        rc = hctx_put(ctx, d->view, vk, vn, b.data, b.len);
    if (!rc)
        rc = st.exists && st.online ? 0 : seen_put(ctx, vk, vn, last);
    if (!rc && st.exists && !st.online)
        rc = emit_simple(ctx, ev, "device.online", &ev->tenant, &id, last);
    cairn_buf_deinit(&b);
    msgpack_unpacked_destroy(&old);
    return rc;
}

/* Rewrites a document with online = false. */
static int mark_offline(struct hctx *ctx, const uint8_t *vk, size_t vn)
{
    struct devices *d = self(ctx);
    MDB_val v;
    int rc = hctx_get(ctx, d->view, vk, vn, &v);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    msgpack_unpacked doc;
    msgpack_unpacked_init(&doc);
    if (msgpack_unpack_next(&doc, v.mv_data, v.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS ||
        doc.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&doc);
        return CAIRN_ECORRUPT;
    }
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, CAIRN_PAYLOAD_MAX_CEILING);
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, doc.data.via.map.size);
    for (uint32_t i = 0; i < doc.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &doc.data.via.map.ptr[i];
        mpw_obj(&w, &kv->key);
        if (mp_str_eq(&kv->key, "online"))
            msgpack_pack_false(&w.pk);
        else
            mpw_obj(&w, &kv->val);
    }
    rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_put(ctx, d->view, vk, vn, b.data, b.len);
    cairn_buf_deinit(&b);
    msgpack_unpacked_destroy(&doc);
    return rc;
}

/* The document's last_seen and online flag. */
static int device_seen(struct hctx *ctx, const uint8_t *vk, size_t vn, struct seen_state *st)
{
    MDB_val v;
    int rc = hctx_get(ctx, self(ctx)->view, vk, vn, &v);
    if (rc)
        return rc;
    msgpack_unpacked doc;
    msgpack_unpacked_init(&doc);
    if (msgpack_unpack_next(&doc, v.mv_data, v.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS)
        rc = CAIRN_ECORRUPT;
    else
        read_state(&doc.data, st);
    msgpack_unpacked_destroy(&doc);
    return rc;
}

/* Marks offline the devices whose last_seen is older than the threshold.
 * Index entries are lower bounds: an entry that is due but whose device
 * was seen since is moved to its real last_seen instead. */
static int on_tick(struct hctx *ctx, const struct event *tick)
{
    struct devices *d = self(ctx);
    struct hcursor *c;
    MDB_val k, v;
    int64_t threshold = tick->time - d->offline_after_ns;
    int rc = hctx_cursor_open(ctx, d->seen, NULL, 0, &c);
    for (int n = 0; !rc && n < OFFLINE_PER_TICK; n++) {
        if ((rc = hctx_cursor_next(c, &k, &v)))
            break;
        int64_t entry = (int64_t)(cairn_be64_get(k.mv_data) ^ (1ull << 63));
        if (entry >= threshold)
            break;
        uint8_t vk[1 + CAIRN_TENANT_MAX + CAIRN_KEY_MAX];
        size_t vn = k.mv_size - 8;
        struct cairn_str tenant, id;
        struct seen_state st;
        memcpy(vk, (uint8_t *)k.mv_data + 8, vn);
        if (!hkey_split(vk, vn, &tenant, &id))
            rc = CAIRN_ECORRUPT;
        if (!rc)
            rc = hctx_cursor_del(c);
        if (!rc)
            rc = device_seen(ctx, vk, vn, &st);
        if (rc == CAIRN_ENOTFOUND) {
            rc = 0; /* no document: a stale entry */
            continue;
        }
        if (rc || !st.online)
            continue;
        if (st.last >= threshold) /* seen since: the entry moves up, past this scan */
            rc = seen_put(ctx, vk, vn, st.last);
        else if (!(rc = mark_offline(ctx, vk, vn)))
            rc = emit_simple(ctx, tick, "device.offline", &tenant, &id, st.last);
    }
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static int devices_apply(struct hctx *ctx, const struct event *ev)
{
    if (ev->type.n == 4 && !memcmp(ev->type.p, "tick", 4))
        return on_tick(ctx, ev);
    return on_device_event(ctx, ev);
}

const struct handler devices_handler = {
    .version = HANDLER_VERSION,
    .name = "devices",
    .consumes = consumes,
    .emits = emits,
    .open = devices_open,
    .apply = devices_apply,
    .close = devices_close,
    .view = "view",
};
