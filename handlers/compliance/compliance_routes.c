/*
 * compliance_routes.c — the `violations` handler's HTTP routes, answered
 * from a read-only snapshot (key layouts: compliance.c).
 *
 *   GET /v1/violations             the violations of the caller's tenant, filtered:
 *                                  status severity rule_id (or rule) resource_type
 *                                  resource_id account region framework control;
 *                                  limit (<= 1000), cursor; <= 10 000 entries looked at
 *   GET /v1/compliance/{framework} the posture per control of the framework
 *   GET /v1/rules                  the rules in force (?resource_type=, ?enabled=)
 *
 * The view holds records (vrec.h), not documents: violations_view_doc makes
 * a violation's document from its record and the compliance.violation that
 * opened it — the handler's view_doc, so `cairn show violations` and the
 * generic view route GET /v1/violations/{id} serve documents too.
 */
#include "handler.h"
#include "vrec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000
#define SCAN_MAX 10000 /* entries one request looks at, as the generic views */
#define POSTURE_CONTROLS_MAX 1024

typedef bool (*match_fn)(struct hread *rd, const msgpack_object *doc);

/* ====================================================================== documents */

/* Whether the msgpack string at p (n bytes, a whole object) is lit. */
static bool key_is(const uint8_t *p, size_t n, const char *lit)
{
    size_t ln = strlen(lit), h = 0;
    if (n && (p[0] & 0xe0) == 0xa0)
        h = 1;
    else if (n > 1 && p[0] == 0xd9)
        h = 2;
    return h && n - h == ln && !memcmp(p + h, lit, ln);
}

/* The document of view record v (vrec.h), appended to out: the payload of
 * the compliance.violation that opened it, with status, resolved_at,
 * resolved_seq and resolution replaced when the record says it was
 * resolved — the bytes the handler's layout 2 stored in the view (its
 * resolve repacked the document, changing those four values). The handler's
 * view_doc (`cairn show violations`); k is not needed. */
int violations_view_doc(struct hread *rd, const MDB_val *k, const MDB_val *v, struct cairn_buf *out)
{
    (void)k;
    struct vrec r;
    const uint8_t *doc;
    size_t dn;
    if (!vrec_decode(v->mv_data, v->mv_size, &r))
        return CAIRN_ECORRUPT;
    int rc = hread_stream_payload(rd, r.dseq, &doc, &dn);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? CAIRN_ECORRUPT : rc; /* a record without its event */
    if (!r.resolved)
        return cairn_buf_append(out, doc, dn);
    struct cairn_rd hdr = {doc, doc + dn};
    uint32_t nkv;
    if ((rc = cairn_rd_map(&hdr, &nkv)))
        return rc;
    const uint8_t *p = hdr.p, *end = hdr.end;
    if ((rc = cairn_buf_reserve(out, dn + 64 + MPD_TIME_MAX + r.resolution.n)))
        return rc;
    uint8_t *o = out->data + out->len;
    o = mpd_raw(o, doc, (size_t)(p - doc)); /* the map's header */
    for (uint32_t i = 0; i < nkv; i++) {
        size_t kn = mp_raw_len(p, (size_t)(end - p));
        size_t vn = kn ? mp_raw_len(p + kn, (size_t)(end - p) - kn) : 0;
        if (!vn)
            return CAIRN_ECORRUPT;
        o = mpd_raw(o, p, kn);
        if (key_is(p, kn, "status"))
            o = mpd_key(o, "resolved");
        else if (key_is(p, kn, "resolved_at"))
            o = mpd_time(o, r.resolved_at);
        else if (key_is(p, kn, "resolved_seq"))
            o = mpd_u64(o, r.resolved_seq);
        else if (key_is(p, kn, "resolution"))
            o = mpd_strn(o, r.resolution.p, r.resolution.n);
        else
            o = mpd_raw(o, p + kn, vn);
        p += kn + vn;
    }
    out->len = (size_t)(o - out->data);
    return 0;
}

static int bad(struct cairn_error *e, const char *field, const char *msg)
{
    cairn_error_set(e, "invalid_parameter", field, "%s", msg);
    return 400;
}

/* Prefix for the caller's tenant (none for an all-tenants admin). */
static size_t tenant_prefix(struct hread *rd, uint8_t *out)
{
    const char *t = hread_tenant(rd);
    if (!t)
        return 0;
    return hkey_make(out, 1 + CAIRN_TENANT_MAX, &(struct cairn_str){t, strlen(t)},
                     &(struct cairn_str){"", 0});
}

/* A page of documents of DBI `name` passing `match`: {"seq","items","next_cursor"}.
 * records: the values are view records (vrec.h), made documents first. */
static int page(struct hread *rd, const char *name, match_fn match, bool records,
                struct cairn_buf *out, struct cairn_error *e)
{
    char buf[32], hex[1100];
    uint64_t limit = PAGE_DEFAULT;
    if (hread_param(rd, "limit", buf, sizeof buf)) {
        char *end;
        unsigned long long l = strtoull(buf, &end, 10);
        if (end == buf || *end || buf[0] == '-' || l > PAGE_MAX)
            return bad(e, "limit", "limit must be an integer in 0..1000");
        limit = l ? l : PAGE_DEFAULT;
    }
    uint8_t prefix[1 + CAIRN_TENANT_MAX], start[512];
    size_t pn = tenant_prefix(rd, prefix), sn = 0;
    if (hread_param(rd, "cursor", hex, sizeof hex)) {
        size_t hn = strlen(hex);
        if (hn % 2 || hn / 2 > sizeof start || hn == 0 || cairn_unhex(hex, hn, start))
            return bad(e, "cursor", "the cursor is not one this API gave");
        sn = hn / 2;
    }
    cairn_buf_printf(out, "{\"seq\":%llu,\"items\":[", (unsigned long long)hread_seq(rd));
    MDB_dbi dbi;
    MDB_cursor *cur = NULL;
    if (hread_db(rd, name, &dbi) || mdb_cursor_open(hread_txn(rd), dbi, &cur)) {
        cairn_buf_puts(out, "],\"next_cursor\":null}");
        return 200;
    }
    MDB_val k = sn ? (MDB_val){sn, start} : (MDB_val){pn, prefix}, v;
    int rc = k.mv_size ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
                       : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    if (!rc && sn && k.mv_size == sn && !memcmp(k.mv_data, start, sn))
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    size_t items = 0, scanned = 0;
    char last[1100] = "";
    bool more = false;
    struct cairn_buf doc_buf;
    cairn_buf_init(&doc_buf, CAIRN_PAYLOAD_MAX_CEILING + 4096);
    for (; !rc; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pn || memcmp(k.mv_data, prefix, pn))
            break;
        if (items == limit || scanned == SCAN_MAX) {
            more = true;
            break;
        }
        scanned++;
        cairn_hex(k.mv_data, k.mv_size < 512 ? k.mv_size : 511, last);
        if (records) { /* a record whose document cannot be made is skipped, as a bad one */
            cairn_buf_reset(&doc_buf);
            if (violations_view_doc(rd, &k, &v, &doc_buf))
                continue;
            v = (MDB_val){doc_buf.len, doc_buf.data};
        }
        msgpack_unpacked doc;
        msgpack_unpacked_init(&doc);
        if (msgpack_unpack_next(&doc, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS &&
            match(rd, &doc.data)) {
            if (items++)
                cairn_buf_putc(out, ',');
            cairn_msgpack_to_json(v.mv_data, v.mv_size, out, NULL);
        }
        msgpack_unpacked_destroy(&doc);
    }
    mdb_cursor_close(cur);
    cairn_buf_deinit(&doc_buf);
    if (more && last[0])
        cairn_buf_printf(out, "],\"next_cursor\":\"%s\"}", last);
    else
        cairn_buf_puts(out, "],\"next_cursor\":null}");
    return 200;
}

/* ====================================================================== violations */

static bool field_is(struct hread *rd, const msgpack_object *doc, const char *param,
                     const char *field)
{
    char want[512];
    if (!hread_param(rd, param, want, sizeof want))
        return true;
    struct cairn_str s;
    return mp_str(mp_get(doc, field), &s) && s.n == strlen(want) && !memcmp(s.p, want, s.n);
}

/* control=C matches "fw:C" (any framework, or the one given by framework=)
 * and control=fw:C exactly. */
static bool control_matches(struct hread *rd, const msgpack_object *doc)
{
    char want[256], fw[128];
    if (!hread_param(rd, "control", want, sizeof want))
        return true;
    bool has_fw = hread_param(rd, "framework", fw, sizeof fw);
    const msgpack_object *cs = mp_get(doc, "controls");
    for (uint32_t i = 0; cs && cs->type == MSGPACK_OBJECT_ARRAY && i < cs->via.array.size; i++) {
        struct cairn_str c;
        if (!mp_str(&cs->via.array.ptr[i], &c))
            continue;
        const char *colon = memchr(c.p, ':', c.n);
        size_t fn = colon ? (size_t)(colon - c.p) : 0;
        struct cairn_str id = colon ? (struct cairn_str){colon + 1, c.n - fn - 1} : c;
        if (c.n == strlen(want) && !memcmp(c.p, want, c.n))
            return true;
        if (id.n == strlen(want) && !memcmp(id.p, want, id.n) &&
            (!has_fw || (fn == strlen(fw) && !memcmp(c.p, fw, fn))))
            return true;
    }
    return false;
}

static bool violation_matches(struct hread *rd, const msgpack_object *doc)
{
    char fw[128];
    if (!field_is(rd, doc, "status", "status") || !field_is(rd, doc, "severity", "severity") ||
        !field_is(rd, doc, "rule_id", "rule_id") || !field_is(rd, doc, "rule", "rule_id") ||
        !field_is(rd, doc, "resource_type", "resource_type") ||
        !field_is(rd, doc, "resource_id", "resource_id") ||
        !field_is(rd, doc, "account", "account") || !field_is(rd, doc, "region", "region"))
        return false;
    if (hread_param(rd, "framework", fw, sizeof fw) && !mp_get(mp_get(doc, "frameworks"), fw))
        return false;
    return control_matches(rd, doc);
}

static int get_violations(struct hread *rd, char **args, struct cairn_buf *out,
                          struct cairn_error *e)
{
    (void)args;
    return page(rd, "view", violation_matches, true, out, e);
}

/* ====================================================================== rules */

static bool rule_matches(struct hread *rd, const msgpack_object *doc)
{
    const msgpack_object *rule = mp_get(doc, "rule");
    char want[16];
    if (!field_is(rd, rule, "resource_type", "resource_type") ||
        !field_is(rd, rule, "severity", "severity"))
        return false;
    if (hread_param(rd, "enabled", want, sizeof want)) {
        bool en = true;
        mp_bool(mp_get(rule, "enabled"), &en);
        if (strcmp(want, en ? "true" : "false"))
            return false;
    }
    return true;
}

static int get_rules(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    (void)args;
    return page(rd, "rules", rule_matches, false, out, e);
}

/* ====================================================================== posture */

struct pctl {
    char id[128];
    uint64_t pass, fail;
    char rules[1024]; /* JSON array body of rule ids */
    size_t rn;
    size_t last; /* the rule (posture_rules' count, from 1) added last: once per rule */
};

static struct pctl *pctl_find(struct pctl *c, size_t *n, const char *id, size_t idn)
{
    for (size_t i = 0; i < *n; i++)
        if (strlen(c[i].id) == idn && !memcmp(c[i].id, id, idn))
            return &c[i];
    if (*n == POSTURE_CONTROLS_MAX || idn >= sizeof c->id)
        return NULL;
    struct pctl *p = &c[(*n)++];
    memset(p, 0, sizeof *p);
    memcpy(p->id, id, idn);
    return p;
}

static int cmp_pctl(const void *a, const void *b)
{
    return strverscmp(((const struct pctl *)a)->id, ((const struct pctl *)b)->id);
}

/* The controls of the framework the tenant's enabled rules map, with their rules. */
static void posture_rules(struct hread *rd, const uint8_t *pre, size_t pn, const char *fw,
                          struct pctl *c, size_t *n)
{
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k = {pn, (void *)pre}, v;
    size_t nrule = 0;
    if (hread_db(rd, "rules", &dbi) || mdb_cursor_open(hread_txn(rd), dbi, &cur))
        return;
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pn || memcmp(k.mv_data, pre, pn))
            break;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        nrule++;
        if (msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *rule = mp_get(&u.data, "rule");
            const msgpack_object *ids = mp_get(mp_get(rule, "frameworks"), fw);
            struct cairn_str rid = {"", 0};
            bool en = true;
            mp_bool(mp_get(rule, "enabled"), &en);
            mp_str(mp_get(rule, "id"), &rid);
            for (uint32_t i = 0;
                 en && ids && ids->type == MSGPACK_OBJECT_ARRAY && i < ids->via.array.size; i++) {
                struct cairn_str id;
                struct pctl *p;
                if (!mp_str(&ids->via.array.ptr[i], &id) || !(p = pctl_find(c, n, id.p, id.n)) ||
                    p->last == nrule)
                    continue; /* (a control the rule lists twice names the rule once) */
                p->last = nrule;
                if (p->rn + rid.n + 4 < sizeof p->rules) {
                    p->rn += (size_t)snprintf(p->rules + p->rn, sizeof p->rules - p->rn,
                                              "%s\"%.*s\"", p->rn ? "," : "", (int)rid.n, rid.p);
                }
            }
        }
        msgpack_unpacked_destroy(&u);
    }
    mdb_cursor_close(cur);
}

static void posture_counts(struct hread *rd, const uint8_t *pre, size_t pn, struct pctl *c,
                           size_t *n)
{
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k = {pn, (void *)pre}, v;
    if (hread_db(rd, "posture", &dbi) || mdb_cursor_open(hread_txn(rd), dbi, &cur))
        return;
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pn || memcmp(k.mv_data, pre, pn))
            break;
        struct pctl *p =
            v.mv_size == 16 ? pctl_find(c, n, (const char *)k.mv_data + pn, k.mv_size - pn) : NULL;
        if (p) {
            p->pass = cairn_be64_get(v.mv_data);
            p->fail = cairn_be64_get((uint8_t *)v.mv_data + 8);
        }
    }
    mdb_cursor_close(cur);
}

static int get_posture(struct hread *rd, char **args, struct cairn_buf *out, struct cairn_error *e)
{
    const char *t = hread_tenant(rd), *fw = args[0];
    if (!t) {
        cairn_error_set(e, "missing_parameter", "tenant", "a posture is per tenant: give ?tenant=");
        return 400;
    }
    if (strlen(fw) == 0 || strlen(fw) > 64)
        return bad(e, "framework", "framework must be 1 to 64 bytes");
    uint8_t pre[1 + CAIRN_TENANT_MAX + 80];
    size_t tn =
        hkey_make(pre, sizeof pre, &(struct cairn_str){t, strlen(t)}, &(struct cairn_str){"", 0});
    size_t pn = tn;
    memcpy(pre + pn, fw, strlen(fw));
    pn += strlen(fw);
    pre[pn++] = 0;
    struct pctl *c = calloc(POSTURE_CONTROLS_MAX, sizeof *c);
    if (!c) {
        cairn_error_set(e, "internal", NULL, "out of memory");
        return 500;
    }
    size_t n = 0, passing = 0, failing = 0, none = 0;
    posture_rules(rd, pre, tn, fw, c, &n);
    posture_counts(rd, pre, pn, c, &n);
    qsort(c, n, sizeof *c, cmp_pctl);
    for (size_t i = 0; i < n; i++)
        c[i].fail ? failing++ : c[i].pass ? passing++ : none++;
    cairn_buf_printf(out, "{\"seq\":%llu,\"tenant\":", (unsigned long long)hread_seq(rd));
    cairn_buf_json_str(out, t, strlen(t));
    cairn_buf_puts(out, ",\"framework\":");
    cairn_buf_json_str(out, fw, strlen(fw));
    cairn_buf_printf(out,
                     ",\"summary\":{\"controls\":%zu,\"passing\":%zu,\"failing\":%zu,"
                     "\"not_evaluated\":%zu},\"controls\":[",
                     n, passing, failing, none);
    for (size_t i = 0; i < n; i++) {
        cairn_buf_puts(out, i ? ",{\"control\":" : "{\"control\":");
        cairn_buf_json_str(out, c[i].id, strlen(c[i].id));
        cairn_buf_printf(out,
                         ",\"status\":\"%s\",\"pass\":%llu,\"fail\":%llu,"
                         "\"resources_evaluated\":%llu,\"rules\":[%s]}",
                         c[i].fail   ? "fail"
                         : c[i].pass ? "pass"
                                     : "not_evaluated",
                         (unsigned long long)c[i].pass, (unsigned long long)c[i].fail,
                         (unsigned long long)(c[i].pass + c[i].fail), c[i].rules);
    }
    cairn_buf_puts(out, "]}");
    free(c);
    return 200;
}

const struct handler_route violations_routes[] = {
    {"violations", get_violations, NULL},
    {"compliance/{}", get_posture, NULL},
    {"rules", get_rules, NULL},
    {NULL, NULL, NULL},
};
