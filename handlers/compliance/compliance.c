/*
 * compliance.c — the `violations` handler: a rules-as-data CSPM engine over
 * `discovery` inputs. Rules enter the log as `rule.define` / `rule.delete`
 * inputs (per tenant), so replay evaluates history with the rules in force
 * at each point. Emits `compliance.violation` / `compliance.resolved` on the
 * stream `violations`; serves GET /v1/violations (filters), /v1/violations/
 * {id} (the generic view route), /v1/compliance/{framework} and /v1/rules.
 *
 * DBIs (every key starts with tlen|tenant, as hkey_make writes it; rk is
 * the first 16 bytes of SHA-256(account \0 region \0 resource_id), ar the
 * first 8 of SHA-256(account \0 region)):
 *
 *   violations.rules      T | rule_id            -> {rule: <payload>, tenant, defined_at, seq}
 *   violations.view       T | violation_id (hex) -> the violation document
 *   violations.results    T | rule_id 00 | rk    -> 'P' | 'F' (latest result; only
 *                                                   for enabled rules of the resource's type)
 *   violations.resources  T | ar | rk            -> {resource_id, resource_type, account,
 *                                                   region, scan}
 *   violations.ctlres     T | fw 00 ctl 00 | rk  -> npass u32 BE | nfail u32 BE
 *                                                   (rules of the control the resource
 * passes/fails) violations.posture    T | fw 00 ctl          -> pass u64 BE | fail u64 BE
 * (resources)
 *
 * violation_id = hex(SHA-256(rule_id \0 rk))[0..32]: stable across replays.
 * A resource passes a control when every rule of the control that evaluated
 * it passed; the posture counts resources, not (rule, resource) pairs.
 *
 * The compiled rules live in memory (struct comp), rebuilt in open from
 * violations.rules — the engine closes and re-opens handlers after an
 * aborted batch, so the cache always matches the committed state.
 */
#include "cond.h"
#include "handler.h"

#include <assert.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RULES_PER_TENANT_MAX 1024 /* a CIS pack is ~50; bounds every per-input loop */
#define CONTROLS_PER_RULE_MAX 32
#define CONTROLS_MAX 65536    /* (tenant, framework, control) triples in memory */
#define FAILED_VALUE_MAX 4096 /* bytes of one failed attribute value kept in a violation */

static const char *const consumes[] = {"discovery", "rule.define", "rule.delete", NULL};
static const char *const emits[] = {"compliance.violation", "compliance.resolved", NULL};

enum res { R_NONE = 0, R_PASS = 'P', R_FAIL = 'F' };

struct ctl {
    char *tenant, *fw, *id;
};

struct crule {
    char *tenant, *id, *type, *severity, *title;
    bool enabled;
    struct cond *cond;
    uint8_t *doc; /* the stored rules value */
    size_t docn;
    int ctl[CONTROLS_PER_RULE_MAX];
    size_t nctl;
};

struct comp {
    unsigned rules, view, results, resources, ctlres, posture;
    struct crule *r;
    size_t nr, rcap;
    struct ctl *c;
    size_t nc, ccap;
    int64_t (*delta)[2]; /* per control: pass, fail changes of this input */
    int *touched;
    size_t ntouched, dcap;
};

static struct comp *self(struct hctx *ctx)
{
    return *hctx_user(ctx);
}

static bool str_is(const struct cairn_str *s, const char *c)
{
    return s->n == strlen(c) && !memcmp(s->p, c, s->n);
}

static char *dupn(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

/* ====================================================================== keys */

/* SHA-256 of the parts joined with 00 (each part <= 256 bytes). */
static void sha(const void *parts[], const size_t lens[], int n, uint8_t out[32])
{
    uint8_t buf[4 * 260];
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        assert(lens[i] <= 256);
        if (i)
            buf[k++] = 0;
        memcpy(buf + k, parts[i], lens[i]);
        k += lens[i];
    }
    SHA256(buf, k, out);
}

/* tlen|tenant then the parts, each followed by 00 except the last. */
static size_t key_make(uint8_t *out, const struct cairn_str *tenant, const struct cairn_str *parts,
                       int n)
{
    size_t k = hkey_make(out, 1 + CAIRN_TENANT_MAX, tenant, &(struct cairn_str){"", 0});
    for (int i = 0; i < n; i++) {
        memcpy(out + k, parts[i].p, parts[i].n);
        k += parts[i].n;
        if (i + 1 < n)
            out[k++] = 0;
    }
    return k;
}

static void resource_keys(const struct cairn_str *acct, const struct cairn_str *region,
                          const struct cairn_str *rid, uint8_t ar[8], uint8_t rk[16])
{
    uint8_t h[32];
    const void *p[3] = {acct->p, region->p, rid ? rid->p : ""};
    size_t l[3] = {acct->n, region->n, rid ? rid->n : 0};
    if (ar) {
        sha(p, l, 2, h);
        memcpy(ar, h, 8);
    }
    if (rk) {
        sha(p, l, 3, h);
        memcpy(rk, h, 16);
    }
}

static void violation_id(const char *rule, const uint8_t rk[16], char out[33])
{
    uint8_t h[32];
    const void *p[2] = {rule, rk};
    size_t l[2] = {strlen(rule), 16};
    sha(p, l, 2, h);
    cairn_hex(h, 16, out);
}

/* ====================================================================== the rule cache */

static int control_index(struct comp *s, const char *tenant, const struct cairn_str *fw,
                         const struct cairn_str *id, int *out)
{
    for (size_t i = 0; i < s->nc; i++)
        if (!strcmp(s->c[i].tenant, tenant) && str_is(fw, s->c[i].fw) && str_is(id, s->c[i].id)) {
            *out = (int)i;
            return 0;
        }
    if (s->nc == CONTROLS_MAX)
        return CAIRN_ETOOBIG;
    if (s->nc == s->ccap) {
        size_t cap = s->ccap ? 2 * s->ccap : 64;
        struct ctl *c = realloc(s->c, cap * sizeof *c);
        if (!c)
            return CAIRN_ENOMEM;
        s->c = c;
        s->ccap = cap;
    }
    struct ctl *c = &s->c[s->nc];
    c->tenant = strdup(tenant);
    c->fw = dupn(fw->p, fw->n);
    c->id = dupn(id->p, id->n);
    if (!c->tenant || !c->fw || !c->id) {
        free(c->tenant), free(c->fw), free(c->id);
        return CAIRN_ENOMEM;
    }
    *out = (int)s->nc++;
    return 0;
}

static void crule_deinit(struct crule *r)
{
    free(r->tenant), free(r->id), free(r->type), free(r->severity), free(r->title);
    free(r->doc);
    cond_free(r->cond);
    memset(r, 0, sizeof *r);
}

static char *mp_dup(const msgpack_object *o)
{
    struct cairn_str s;
    return mp_str(o, &s) ? dupn(s.p, s.n) : strdup("");
}

/* Builds a crule from a stored rules value (doc: {rule, tenant, …}). A rule
 * whose condition no longer compiles (an old log) is kept disabled. */
static int crule_init(struct comp *s, struct crule *r, const struct cairn_str *tenant,
                      const uint8_t *doc, size_t docn)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    memset(r, 0, sizeof *r);
    int rc = CAIRN_ENOMEM;
    if (msgpack_unpack_next(&u, (const char *)doc, docn, NULL) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_unpacked_destroy(&u);
        return CAIRN_ECORRUPT;
    }
    const msgpack_object *rule = mp_get(&u.data, "rule");
    struct cairn_str cs = {"", 0};
    r->tenant = dupn(tenant->p, tenant->n);
    r->id = mp_dup(mp_get(rule, "id"));
    r->type = mp_dup(mp_get(rule, "resource_type"));
    r->severity = mp_dup(mp_get(rule, "severity"));
    r->title = mp_dup(mp_get(rule, "title"));
    r->doc = malloc(docn);
    if (!r->tenant || !r->id || !r->type || !r->severity || !r->title || !r->doc)
        goto out;
    memcpy(r->doc, doc, docn);
    r->docn = docn;
    r->enabled = true;
    mp_bool(mp_get(rule, "enabled"), &r->enabled);
    unsigned col;
    char msg[128];
    mp_str(mp_get(rule, "condition"), &cs);
    if ((rc = cond_compile(cs.p, cs.n, &r->cond, &col, msg, sizeof msg)) == CAIRN_ENOMEM)
        goto out;
    if (rc)
        r->enabled = false;
    rc = 0;
    const msgpack_object *fws = mp_get(rule, "frameworks");
    for (uint32_t i = 0; !rc && fws && fws->type == MSGPACK_OBJECT_MAP && i < fws->via.map.size;
         i++) {
        struct cairn_str fw, id;
        const msgpack_object *ids = &fws->via.map.ptr[i].val;
        if (!mp_str(&fws->via.map.ptr[i].key, &fw) || ids->type != MSGPACK_OBJECT_ARRAY)
            continue;
        for (uint32_t j = 0; !rc && j < ids->via.array.size && r->nctl < CONTROLS_PER_RULE_MAX; j++)
            if (mp_str(&ids->via.array.ptr[j], &id))
                rc = control_index(s, r->tenant, &fw, &id, &r->ctl[r->nctl++]);
    }
out:
    msgpack_unpacked_destroy(&u);
    if (rc)
        crule_deinit(r);
    return rc;
}

static struct crule *rule_find(struct comp *s, const struct cairn_str *tenant,
                               const struct cairn_str *id)
{
    for (size_t i = 0; i < s->nr; i++)
        if (str_is(tenant, s->r[i].tenant) && str_is(id, s->r[i].id))
            return &s->r[i];
    return NULL;
}

static size_t rules_of(struct comp *s, const struct cairn_str *tenant)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nr; i++)
        n += str_is(tenant, s->r[i].tenant);
    return n;
}

/* Adds or replaces (in place, keeping the order) the tenant's rule. */
static int rule_set(struct comp *s, const struct cairn_str *tenant, const struct cairn_str *id,
                    const uint8_t *doc, size_t docn)
{
    struct crule nr;
    int rc = crule_init(s, &nr, tenant, doc, docn);
    if (rc)
        return rc;
    struct crule *old = rule_find(s, tenant, id);
    if (old) {
        crule_deinit(old);
        *old = nr;
        return 0;
    }
    if (s->nr == s->rcap) {
        size_t cap = s->rcap ? 2 * s->rcap : 64;
        struct crule *r = realloc(s->r, cap * sizeof *r);
        if (!r) {
            crule_deinit(&nr);
            return CAIRN_ENOMEM;
        }
        s->r = r;
        s->rcap = cap;
    }
    s->r[s->nr++] = nr;
    return 0;
}

static void rule_remove(struct comp *s, struct crule *r)
{
    crule_deinit(r);
    size_t i = (size_t)(r - s->r);
    memmove(&s->r[i], &s->r[i + 1], (s->nr - i - 1) * sizeof *r);
    s->nr--;
}

static void comp_free(struct comp *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nr; i++)
        crule_deinit(&s->r[i]);
    for (size_t i = 0; i < s->nc; i++)
        free(s->c[i].tenant), free(s->c[i].fw), free(s->c[i].id);
    free(s->r);
    free(s->c);
    free(s->delta);
    free(s->touched);
    free(s);
}

static int comp_open(struct hctx *ctx)
{
    struct comp *s = calloc(1, sizeof *s);
    if (!s)
        return CAIRN_ENOMEM;
    *hctx_user(ctx) = s;
    int rc = hctx_db(ctx, "rules", 0, &s->rules);
    if (!rc)
        rc = hctx_db(ctx, "view", 0, &s->view);
    if (!rc)
        rc = hctx_db(ctx, "results", 0, &s->results);
    if (!rc)
        rc = hctx_db(ctx, "resources", 0, &s->resources);
    if (!rc)
        rc = hctx_db(ctx, "ctlres", 0, &s->ctlres);
    if (!rc)
        rc = hctx_db(ctx, "posture", 0, &s->posture);
    struct hcursor *c;
    if (!rc)
        rc = hctx_cursor_open(ctx, s->rules, NULL, 0, &c);
    if (rc)
        return rc;
    MDB_val k, v;
    while (!(rc = hctx_cursor_next(c, &k, &v))) {
        struct cairn_str t, id;
        if (!hkey_split(k.mv_data, k.mv_size, &t, &id)) {
            rc = CAIRN_ECORRUPT;
            break;
        }
        if ((rc = rule_set(s, &t, &id, v.mv_data, v.mv_size)))
            break;
    }
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

static void comp_close(struct hctx *ctx)
{
    comp_free(*hctx_user(ctx));
    *hctx_user(ctx) = NULL;
}

/* ====================================================================== validate */

static int comp_validate(const struct event *ev, struct cairn_error *e)
{
    if (!str_is(&ev->type, "rule.define"))
        return 0;
    struct cairn_str src;
    if (!mp_str(mp_get(ev->body, "condition"), &src))
        return cairn_error_set(e, "invalid_rule", "/payload/condition", "condition is required");
    struct cond *c;
    unsigned col;
    char msg[200];
    int rc = cond_compile(src.p, src.n, &c, &col, msg, sizeof msg);
    if (rc == CAIRN_EINVAL)
        return cairn_error_set(e, "invalid_rule", "/payload/condition", "column %u: %s", col, msg);
    cond_free(c);
    return rc;
}

/* ====================================================================== posture */

static int delta_add(struct comp *s, int ctl, int dpass, int dfail)
{
    if (s->dcap < s->nc) {
        size_t cap = s->nc + 64;
        int64_t(*d)[2] = realloc(s->delta, cap * sizeof *d);
        int *t = d ? realloc(s->touched, cap * sizeof *t) : NULL;
        if (d)
            s->delta = d;
        if (!d || !t)
            return CAIRN_ENOMEM;
        s->touched = t;
        memset(s->delta + s->dcap, 0, (cap - s->dcap) * sizeof *d);
        s->dcap = cap;
    }
    if (!s->delta[ctl][0] && !s->delta[ctl][1]) {
        bool seen = false;
        for (size_t i = 0; i < s->ntouched && !seen; i++)
            seen = s->touched[i] == ctl;
        if (!seen)
            s->touched[s->ntouched++] = ctl;
    }
    s->delta[ctl][0] += dpass;
    s->delta[ctl][1] += dfail;
    return 0;
}

static size_t ctl_key(uint8_t *k, const struct ctl *c)
{
    struct cairn_str t = {c->tenant, strlen(c->tenant)};
    struct cairn_str parts[2] = {{c->fw, strlen(c->fw)}, {c->id, strlen(c->id)}};
    return key_make(k, &t, parts, 2);
}

/* Writes the accumulated posture changes (in touched order: deterministic). */
static int posture_flush(struct hctx *ctx)
{
    struct comp *s = self(ctx);
    int rc = 0;
    for (size_t i = 0; i < s->ntouched && !rc; i++) {
        int c = s->touched[i];
        uint8_t k[512], val[16];
        size_t kn = ctl_key(k, &s->c[c]);
        MDB_val v;
        int64_t pass = 0, fail = 0;
        rc = hctx_get(ctx, s->posture, k, kn, &v);
        if (!rc && v.mv_size == 16) {
            pass = (int64_t)cairn_be64_get(v.mv_data);
            fail = (int64_t)cairn_be64_get((uint8_t *)v.mv_data + 8);
        }
        if (rc && rc != CAIRN_ENOTFOUND)
            break;
        pass += s->delta[c][0];
        fail += s->delta[c][1];
        s->delta[c][0] = s->delta[c][1] = 0;
        assert(pass >= 0 && fail >= 0);
        cairn_be64_put(val, (uint64_t)pass);
        cairn_be64_put(val + 8, (uint64_t)fail);
        rc = pass || fail ? hctx_put(ctx, s->posture, k, kn, val, 16)
                          : hctx_del(ctx, s->posture, k, kn);
    }
    s->ntouched = 0;
    return rc;
}

/* The resource's result for one rule moved from `from` to `to`: update the
 * resource's per-control counts and, when its control state changes, the
 * control's posture. */
static int ctlres_move(struct hctx *ctx, const struct crule *r, const uint8_t rk[16], enum res from,
                       enum res to)
{
    struct comp *s = self(ctx);
    int rc = 0;
    for (size_t i = 0; i < r->nctl && !rc; i++) {
        uint8_t k[512], val[8];
        size_t kn = ctl_key(k, &s->c[r->ctl[i]]);
        k[kn++] = 0;
        memcpy(k + kn, rk, 16);
        kn += 16;
        MDB_val v;
        uint32_t np = 0, nf = 0;
        rc = hctx_get(ctx, s->ctlres, k, kn, &v);
        if (rc && rc != CAIRN_ENOTFOUND)
            return rc;
        if (!rc && v.mv_size == 8) {
            np = (uint32_t)(cairn_be64_get(v.mv_data) >> 32);
            nf = (uint32_t)cairn_be64_get(v.mv_data);
        }
        enum res before = nf ? R_FAIL : np ? R_PASS : R_NONE;
        np -= from == R_PASS, nf -= from == R_FAIL;
        np += to == R_PASS, nf += to == R_FAIL;
        enum res after = nf ? R_FAIL : np ? R_PASS : R_NONE;
        cairn_be64_put(val, (uint64_t)np << 32 | nf);
        rc = np || nf ? hctx_put(ctx, s->ctlres, k, kn, val, 8) : hctx_del(ctx, s->ctlres, k, kn);
        if (!rc && before != after)
            rc = delta_add(s, r->ctl[i], (after == R_PASS) - (before == R_PASS),
                           (after == R_FAIL) - (before == R_FAIL));
    }
    return rc;
}

/* ====================================================================== violations */

struct resource {
    struct cairn_str id, type, account, region;
    uint8_t rk[16];
    const msgpack_object *attrs;
};

static int emit_map(struct hctx *ctx, const struct event *ev, const char *type,
                    const struct cairn_str *key, struct cairn_buf *b)
{
    return hctx_emit(ctx, ev, type, &ev->tenant, key, b->data, b->len);
}

static void write_controls(struct mpw *w, const struct comp *s, const struct crule *r)
{
    mpw_str(w, "controls");
    msgpack_pack_array(&w->pk, (uint32_t)r->nctl);
    for (size_t i = 0; i < r->nctl; i++) {
        char buf[256];
        const struct ctl *c = &s->c[r->ctl[i]];
        snprintf(buf, sizeof buf, "%s:%s", c->fw, c->id);
        mpw_str(w, buf);
    }
}

static void write_failed(struct mpw *w, const struct crule *r, const struct resource *res,
                         bool budget)
{
    size_t n = cond_roots(r->cond);
    mpw_str(w, "failed");
    msgpack_pack_map(&w->pk, (uint32_t)(n + budget));
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *v = cond_root_value(r->cond, i, res->attrs);
        mpw_str(w, cond_root_text(r->cond, i));
        /* A huge value (a SG with 1000 rules) is cut: the document stays bounded. */
        struct cairn_buf tmp;
        cairn_buf_init(&tmp, FAILED_VALUE_MAX);
        struct mpw t;
        mpw_init(&t, &tmp);
        mpw_obj(&t, v);
        if (mpw_finish(&t))
            mpw_str(w, "(value over 4096 bytes)");
        else
            mpw_obj(w, v);
        cairn_buf_deinit(&tmp);
    }
    if (budget)
        mpw_kv_cstr(w, "_error", "evaluation step budget exceeded");
}

/* The violation document: 20 fields (the ones filters use are top-level
 * strings: status, severity, rule_id, resource_type, account, region). */
static int violation_open(struct hctx *ctx, const struct event *ev, const struct crule *r,
                          const struct resource *res, bool budget)
{
    struct comp *s = self(ctx);
    char vid[33];
    violation_id(r->id, res->rk, vid);
    uint8_t k[1 + CAIRN_TENANT_MAX + 64];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &(struct cairn_str){vid, 32});
    int64_t times = 0;
    MDB_val v;
    int rc = hctx_get(ctx, s->view, k, kn, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    if (!rc) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        if (msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS)
            mp_i64(mp_get(&u.data, "times_opened"), &times);
        msgpack_unpacked_destroy(&u);
    }
    msgpack_unpacked ru;
    msgpack_unpacked_init(&ru);
    msgpack_unpack_next(&ru, (const char *)r->doc, r->docn, NULL);
    const msgpack_object *rule = mp_get(&ru.data, "rule");
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, CAIRN_PAYLOAD_MAX_CEILING);
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 20);
    mpw_kv_cstr(&w, "violation_id", vid);
    mpw_kv_str(&w, "tenant", &ev->tenant);
    mpw_kv_cstr(&w, "status", "open");
    mpw_kv_cstr(&w, "rule_id", r->id);
    mpw_kv_cstr(&w, "title", r->title);
    mpw_kv_cstr(&w, "severity", r->severity);
    mpw_kv_str(&w, "resource_id", &res->id);
    mpw_kv_str(&w, "resource_type", &res->type);
    mpw_kv_str(&w, "account", &res->account);
    mpw_kv_str(&w, "region", &res->region);
    mpw_kv_obj(&w, "frameworks", mp_get(rule, "frameworks"));
    write_controls(&w, s, r);
    mpw_kv_obj(&w, "remediation", mp_get(rule, "remediation"));
    write_failed(&w, r, res, budget);
    mpw_kv_time(&w, "opened_at", ev->time);
    mpw_kv_u64(&w, "opened_seq", ev->seq);
    mpw_kv_cstr(&w, "resolved_at", NULL);
    mpw_kv_cstr(&w, "resolved_seq", NULL);
    mpw_kv_cstr(&w, "resolution", NULL);
    mpw_kv_i64(&w, "times_opened", times + 1);
    rc = mpw_finish(&w);
    msgpack_unpacked_destroy(&ru);
    if (!rc)
        rc = hctx_put(ctx, s->view, k, kn, b.data, b.len);
    if (!rc)
        rc = emit_map(ctx, ev, "compliance.violation", &res->id, &b);
    cairn_buf_deinit(&b);
    return rc;
}

/* Marks the violation resolved (rewriting its document) and emits
 * compliance.resolved. A missing document (impossible unless the state was
 * edited) resolves nothing. */
static int violation_resolve(struct hctx *ctx, const struct event *ev, const struct crule *r,
                             const uint8_t rk[16], const char *reason)
{
    struct comp *s = self(ctx);
    char vid[33];
    violation_id(r->id, rk, vid);
    uint8_t k[1 + CAIRN_TENANT_MAX + 64];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &(struct cairn_str){vid, 32});
    MDB_val v;
    int rc = hctx_get(ctx, s->view, k, kn, &v);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&u);
        return CAIRN_ECORRUPT;
    }
    const msgpack_object *doc = &u.data;
    char at[40];
    cairn_time_format(ev->time, at, sizeof at);
    struct cairn_buf b, p;
    struct mpw w, pw;
    cairn_buf_init(&b, CAIRN_PAYLOAD_MAX_CEILING);
    cairn_buf_init(&p, CAIRN_PAYLOAD_MAX_CEILING);
    mpw_init(&w, &b);
    mpw_init(&pw, &p);
    msgpack_pack_map(&w.pk, doc->via.map.size);
    for (uint32_t i = 0; i < doc->via.map.size; i++) {
        const msgpack_object_kv *kv = &doc->via.map.ptr[i];
        mpw_obj(&w, &kv->key);
        if (mp_str_eq(&kv->key, "status"))
            mpw_str(&w, "resolved");
        else if (mp_str_eq(&kv->key, "resolved_at"))
            mpw_str(&w, at);
        else if (mp_str_eq(&kv->key, "resolved_seq"))
            msgpack_pack_uint64(&w.pk, ev->seq);
        else if (mp_str_eq(&kv->key, "resolution"))
            mpw_str(&w, reason);
        else
            mpw_obj(&w, &kv->val);
    }
    static const char *const copy[] = {"violation_id",  "rule_id",  "resource_id",
                                       "resource_type", "account",  "region",
                                       "severity",      "controls", "opened_at"};
    msgpack_pack_map(&pw.pk, 10);
    for (size_t i = 0; i < sizeof copy / sizeof *copy; i++)
        mpw_kv_obj(&pw, copy[i], mp_get(doc, copy[i]));
    mpw_kv_cstr(&pw, "reason", reason);
    rc = mpw_finish(&w);
    if (!rc)
        rc = mpw_finish(&pw);
    if (!rc)
        rc = hctx_put(ctx, s->view, k, kn, b.data, b.len);
    /* The derived key (the resource) is read from the payload copy: the
     * old document may have moved with the put. */
    if (!rc) {
        struct cairn_str key = {(const char *)p.data, 0};
        msgpack_unpacked pu;
        msgpack_unpacked_init(&pu);
        if (msgpack_unpack_next(&pu, (const char *)p.data, p.len, NULL) == MSGPACK_UNPACK_SUCCESS)
            mp_str(mp_get(&pu.data, "resource_id"), &key);
        rc = emit_map(ctx, ev, "compliance.resolved", &key, &p);
        msgpack_unpacked_destroy(&pu);
    }
    cairn_buf_deinit(&b);
    cairn_buf_deinit(&p);
    msgpack_unpacked_destroy(&u);
    return rc;
}

/* One (rule, resource) result changes from `from` to `to` (R_NONE: the
 * result is dropped). res is NULL unless `to` is R_FAIL. */
static int result_move(struct hctx *ctx, const struct event *ev, const struct crule *r,
                       const uint8_t rk[16], enum res from, enum res to, const struct resource *res,
                       bool budget, const char *reason)
{
    struct comp *s = self(ctx);
    uint8_t k[512];
    struct cairn_str parts[2] = {{r->id, strlen(r->id)}, {(const char *)rk, 16}};
    size_t kn = key_make(k, &ev->tenant, parts, 2);
    uint8_t val = (uint8_t)to;
    int rc =
        to == R_NONE ? hctx_del(ctx, s->results, k, kn) : hctx_put(ctx, s->results, k, kn, &val, 1);
    if (!rc)
        rc = ctlres_move(ctx, r, rk, from, to);
    if (!rc && to == R_FAIL && from != R_FAIL)
        rc = violation_open(ctx, ev, r, res, budget);
    if (!rc && from == R_FAIL && to != R_FAIL)
        rc = violation_resolve(ctx, ev, r, rk, reason);
    return rc;
}

static int result_get(struct hctx *ctx, const struct cairn_str *tenant, const struct crule *r,
                      const uint8_t rk[16], enum res *out)
{
    struct comp *s = self(ctx);
    uint8_t k[512];
    struct cairn_str parts[2] = {{r->id, strlen(r->id)}, {(const char *)rk, 16}};
    size_t kn = key_make(k, tenant, parts, 2);
    MDB_val v;
    int rc = hctx_get(ctx, s->results, k, kn, &v);
    *out = rc == 0 && v.mv_size == 1 ? (enum res)((uint8_t *)v.mv_data)[0] : R_NONE;
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* ====================================================================== rules */

/* Drops every result of the rule (resolving its open violations): the rule
 * was disabled, deleted, or changed what it evaluates. */
static int rule_clear(struct hctx *ctx, const struct event *ev, const struct crule *r,
                      const char *reason)
{
    struct comp *s = self(ctx);
    uint8_t pre[512];
    struct cairn_str parts[2] = {{r->id, strlen(r->id)}, {"", 0}};
    size_t pn = key_make(pre, &ev->tenant, parts, 2);
    struct hcursor *c;
    int rc = hctx_cursor_open(ctx, s->results, pre, pn, &c);
    if (rc)
        return rc;
    /* Collect first: result_move writes to the DBI the cursor walks. */
    uint8_t(*rks)[17] = NULL;
    size_t n = 0, cap = 0;
    MDB_val k, v;
    while (!(rc = hctx_cursor_next(c, &k, &v))) {
        if (k.mv_size != pn + 16 || v.mv_size != 1)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            void *m = realloc(rks, cap * sizeof *rks);
            if (!m) {
                rc = CAIRN_ENOMEM;
                break;
            }
            rks = m;
        }
        memcpy(rks[n], (uint8_t *)k.mv_data + pn, 16);
        rks[n++][16] = ((uint8_t *)v.mv_data)[0];
    }
    hctx_cursor_close(c);
    if (rc == CAIRN_ENOTFOUND)
        rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = result_move(ctx, ev, r, rks[i], (enum res)rks[i][16], R_NONE, NULL, false, reason);
    free(rks);
    return rc;
}

/* Whether a redefinition changes what the rule's results mean. */
static bool rule_meaning_changed(const msgpack_object *a, const msgpack_object *b)
{
    static const char *const f[] = {"condition", "resource_type", "frameworks"};
    for (size_t i = 0; i < 3; i++) {
        const msgpack_object *x = mp_get(a, f[i]), *y = mp_get(b, f[i]);
        if (!x || !y ? x != y : !msgpack_object_equal(*x, *y))
            return true;
    }
    return false;
}

static int on_rule_define(struct hctx *ctx, const struct event *ev)
{
    struct comp *s = self(ctx);
    struct cairn_str id;
    if (!mp_str(mp_get(ev->body, "id"), &id) || id.n == 0 || id.n > 128)
        return 0; /* the schema requires it */
    struct crule *old = rule_find(s, &ev->tenant, &id);
    if (!old && rules_of(s, &ev->tenant) >= RULES_PER_TENANT_MAX)
        return 0; /* over the limit: ignored (documented) */
    int rc = 0;
    if (old) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        msgpack_unpack_next(&u, (const char *)old->doc, old->docn, NULL);
        const msgpack_object *orule = mp_get(&u.data, "rule");
        bool same = orule && msgpack_object_equal(*orule, *ev->body);
        bool now_enabled = true;
        mp_bool(mp_get(ev->body, "enabled"), &now_enabled);
        if (!same && old->enabled && (!now_enabled || rule_meaning_changed(orule, ev->body)))
            rc = rule_clear(ctx, ev, old, now_enabled ? "rule_changed" : "rule_disabled");
        msgpack_unpacked_destroy(&u);
        if (rc || same)
            return rc;
    }
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, CAIRN_PAYLOAD_MAX_CEILING);
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 4);
    mpw_kv_obj(&w, "rule", ev->body);
    mpw_kv_str(&w, "tenant", &ev->tenant);
    mpw_kv_time(&w, "defined_at", ev->time);
    mpw_kv_u64(&w, "seq", ev->seq);
    uint8_t k[1 + CAIRN_TENANT_MAX + 128];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &id);
    rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_put(ctx, s->rules, k, kn, b.data, b.len);
    if (!rc)
        rc = rule_set(s, &ev->tenant, &id, b.data, b.len);
    cairn_buf_deinit(&b);
    return rc;
}

static int on_rule_delete(struct hctx *ctx, const struct event *ev)
{
    struct comp *s = self(ctx);
    struct cairn_str id;
    if (!mp_str(mp_get(ev->body, "id"), &id) || id.n == 0 || id.n > 128)
        return 0;
    struct crule *r = rule_find(s, &ev->tenant, &id);
    if (!r)
        return 0;
    int rc = r->enabled ? rule_clear(ctx, ev, r, "rule_deleted") : 0;
    uint8_t k[1 + CAIRN_TENANT_MAX + 128];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &id);
    if (!rc)
        rc = hctx_del(ctx, s->rules, k, kn);
    if (!rc)
        rule_remove(s, r);
    return rc;
}

/* ====================================================================== discovery */

struct scan {
    struct cairn_str account, region, marker;
    uint8_t ar[8];
    char seqmark[32];
    struct crule **rules; /* the tenant's enabled rules */
    size_t nrules;
};

/* Every result of a resource that is gone is dropped (violations resolve). */
static int resource_gone(struct hctx *ctx, const struct event *ev, const struct scan *sc,
                         const struct cairn_str *type, const uint8_t rk[16])
{
    int rc = 0;
    for (size_t i = 0; i < sc->nrules && !rc; i++) {
        const struct crule *r = sc->rules[i];
        enum res old;
        if (!str_is(type, r->type))
            continue;
        if (!(rc = result_get(ctx, &ev->tenant, r, rk, &old)) && old != R_NONE)
            rc = result_move(ctx, ev, r, rk, old, R_NONE, NULL, false, "resource_gone");
    }
    return rc;
}

static int resource_record(struct hctx *ctx, const struct event *ev, const struct scan *sc,
                           const struct resource *res)
{
    struct comp *s = self(ctx);
    uint8_t k[1 + CAIRN_TENANT_MAX + 24];
    struct cairn_str parts[1] = {{(const char *)sc->ar, 8}};
    size_t kn = key_make(k, &ev->tenant, parts, 1);
    memcpy(k + kn, res->rk, 16);
    kn += 16;
    MDB_val v;
    int rc = hctx_get(ctx, s->resources, k, kn, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    if (!rc) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        struct cairn_str otype = {"", 0}, omark = {"", 0};
        if (msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS) {
            mp_str(mp_get(&u.data, "resource_type"), &otype);
            mp_str(mp_get(&u.data, "scan"), &omark);
        }
        bool same_type = otype.n == res->type.n && !memcmp(otype.p, res->type.p, otype.n);
        bool same = same_type && omark.n == sc->marker.n && !memcmp(omark.p, sc->marker.p, omark.n);
        char tbuf[160];
        struct cairn_str ot = {tbuf, otype.n < sizeof tbuf ? otype.n : 0};
        memcpy(tbuf, otype.p, ot.n);
        msgpack_unpacked_destroy(&u);
        if (same)
            return 0;
        if (!same_type && (rc = resource_gone(ctx, ev, sc, &ot, res->rk)))
            return rc;
    }
    struct cairn_buf b;
    struct mpw w;
    cairn_buf_init(&b, 4096);
    mpw_init(&w, &b);
    msgpack_pack_map(&w.pk, 5);
    mpw_kv_str(&w, "resource_id", &res->id);
    mpw_kv_str(&w, "resource_type", &res->type);
    mpw_kv_str(&w, "account", &sc->account);
    mpw_kv_str(&w, "region", &sc->region);
    mpw_kv_str(&w, "scan", &sc->marker);
    rc = mpw_finish(&w);
    if (!rc)
        rc = hctx_put(ctx, s->resources, k, kn, b.data, b.len);
    cairn_buf_deinit(&b);
    return rc;
}

static int evaluate(struct hctx *ctx, const struct event *ev, const struct scan *sc,
                    const struct resource *res)
{
    int rc = 0;
    for (size_t i = 0; i < sc->nrules && !rc; i++) {
        const struct crule *r = sc->rules[i];
        if (!str_is(&res->type, r->type))
            continue;
        bool budget = false;
        enum res now = cond_eval(r->cond, res->attrs, ev->time, NULL, &budget) ? R_PASS : R_FAIL;
        enum res old;
        if (!(rc = result_get(ctx, &ev->tenant, r, res->rk, &old)) && old != now)
            rc = result_move(ctx, ev, r, res->rk, old, now, res, budget, "compliant");
    }
    return rc;
}

/* A complete scan: resources of the account/region it did not list are gone. */
static int sweep(struct hctx *ctx, const struct event *ev, const struct scan *sc)
{
    struct comp *s = self(ctx);
    uint8_t pre[1 + CAIRN_TENANT_MAX + 8];
    struct cairn_str parts[1] = {{(const char *)sc->ar, 8}};
    size_t pn = key_make(pre, &ev->tenant, parts, 1);
    struct gone {
        uint8_t rk[16];
        char type[129];
    } *g = NULL;
    size_t n = 0, cap = 0;
    struct hcursor *c;
    int rc = hctx_cursor_open(ctx, s->resources, pre, pn, &c);
    MDB_val k, v;
    while (!rc && !(rc = hctx_cursor_next(c, &k, &v))) {
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        struct cairn_str mark = {"", 0}, type = {"", 0};
        if (k.mv_size == pn + 16 &&
            msgpack_unpack_next(&u, v.mv_data, v.mv_size, NULL) == MSGPACK_UNPACK_SUCCESS) {
            mp_str(mp_get(&u.data, "scan"), &mark);
            mp_str(mp_get(&u.data, "resource_type"), &type);
        }
        bool stale = k.mv_size == pn + 16 &&
                     (mark.n != sc->marker.n || memcmp(mark.p, sc->marker.p, mark.n));
        if (stale && n == cap) {
            cap = cap ? 2 * cap : 64;
            void *m = realloc(g, cap * sizeof *g);
            if (!m)
                rc = CAIRN_ENOMEM;
            else
                g = m;
        }
        if (!rc && stale) {
            memcpy(g[n].rk, (uint8_t *)k.mv_data + pn, 16);
            snprintf(g[n].type, sizeof g[n].type, "%.*s", (int)type.n, type.p);
            n++;
            rc = hctx_cursor_del(c);
        }
        msgpack_unpacked_destroy(&u);
    }
    hctx_cursor_close(c);
    if (rc == CAIRN_ENOTFOUND)
        rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        struct cairn_str t = {g[i].type, strlen(g[i].type)};
        rc = resource_gone(ctx, ev, sc, &t, g[i].rk);
    }
    free(g);
    return rc;
}

static int on_discovery(struct hctx *ctx, const struct event *ev)
{
    struct comp *s = self(ctx);
    struct scan sc = {{0}};
    const msgpack_object *list = mp_get(ev->body, "resources");
    bool complete = false;
    if (!mp_str(mp_get(ev->body, "account_id"), &sc.account) ||
        !mp_str(mp_get(ev->body, "region"), &sc.region) || !list ||
        list->type != MSGPACK_OBJECT_ARRAY)
        return 0; /* the schema requires them */
    mp_bool(mp_get(ev->body, "complete"), &complete);
    if (!mp_str(mp_get(ev->body, "scan_id"), &sc.marker)) {
        snprintf(sc.seqmark, sizeof sc.seqmark, "seq:%llu", (unsigned long long)ev->seq);
        sc.marker = (struct cairn_str){sc.seqmark, strlen(sc.seqmark)};
    }
    resource_keys(&sc.account, &sc.region, NULL, sc.ar, NULL);
    sc.rules = malloc((s->nr + 1) * sizeof *sc.rules);
    if (!sc.rules)
        return CAIRN_ENOMEM;
    for (size_t i = 0; i < s->nr; i++)
        if (s->r[i].enabled && str_is(&ev->tenant, s->r[i].tenant))
            sc.rules[sc.nrules++] = &s->r[i];
    int rc = 0;
    for (uint32_t i = 0; i < list->via.array.size && !rc; i++) {
        const msgpack_object *o = &list->via.array.ptr[i];
        struct resource res = {.account = sc.account, .region = sc.region};
        if (!mp_str(mp_get(o, "resource_id"), &res.id) ||
            !mp_str(mp_get(o, "resource_type"), &res.type) || res.id.n > CAIRN_ID_MAX ||
            res.type.n > 128)
            continue;
        res.attrs = mp_get(o, "attributes");
        resource_keys(&sc.account, &sc.region, &res.id, NULL, res.rk);
        rc = resource_record(ctx, ev, &sc, &res);
        if (!rc)
            rc = evaluate(ctx, ev, &sc, &res);
    }
    if (!rc && complete)
        rc = sweep(ctx, ev, &sc);
    free(sc.rules);
    return rc;
}

static int comp_apply(struct hctx *ctx, const struct event *ev)
{
    int rc;
    if (str_is(&ev->type, "discovery"))
        rc = on_discovery(ctx, ev);
    else if (str_is(&ev->type, "rule.define"))
        rc = on_rule_define(ctx, ev);
    else if (str_is(&ev->type, "rule.delete"))
        rc = on_rule_delete(ctx, ev);
    else
        return 0;
    int frc = posture_flush(ctx);
    return rc ? rc : frc;
}

/* ====================================================================== routes */

/* compliance_routes.c */
extern const struct handler_route violations_routes[];

const struct handler violations_handler = {
    .version = HANDLER_VERSION,
    .name = "violations",
    .consumes = consumes,
    .emits = emits,
    .open = comp_open,
    .validate = comp_validate,
    .apply = comp_apply,
    .close = comp_close,
    .view = "view",
    .routes = violations_routes,
};
