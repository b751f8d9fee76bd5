/*
 * compliance.c — the `violations` handler: a rules-as-data CSPM engine over
 * `discovery` inputs. Rules enter the log as `rule.define` / `rule.delete`
 * inputs (per tenant), so replay evaluates history with the rules in force
 * at each point. Emits `compliance.violation` / `compliance.resolved` on the
 * stream `violations`; serves GET /v1/violations (filters), /v1/violations/
 * {id} (the generic view route, with view_doc), /v1/compliance/{framework} and
 * /v1/rules (compliance_routes.c).
 *
 * DBIs (every key starts with tlen|tenant, as hkey_make writes it; rk is
 * the first 16 bytes of SHA-256(account \0 region \0 resource_id), ar the
 * first 8 of SHA-256(account \0 region)):
 *
 *   violations.rules      T | rule_id            -> {rule: <payload>, tenant, defined_at, seq}
 *   violations.view       T | violation_id (hex) -> the violation's record (vrec.h): its
 *                                                   lifecycle fields and the dseq of the
 *                                                   compliance.violation holding the rest
 *   violations.resources  T | ar | rk            -> {resource_id, resource_type, account,
 *                                                   region, scan, results}
 *   violations.posture    T | fw 00 ctl          -> pass u64 BE | fail u64 BE (resources)
 *   violations.meta       "layout"               -> u32 BE (LAYOUT)
 *
 * `results` is a map rule_id -> "P" | "F": the latest result of every
 * enabled rule of the resource's type that evaluated it. Why there and not
 * one entry per (rule, resource) plus one per (control, resource), as the
 * first layout had: a discovery reads and writes the resource's record
 * anyway, so its results come with that one get and put instead of ~20
 * random B-tree writes per resource (on a first discovery those entries
 * were most of the instructions and a large share of the dirty pages).
 * A resource's state in a control (fail when a rule of the control failed
 * it, else pass when one passed it) is computed from that map when its
 * results change; the price is that a rule change (rule_clear) walks the
 * tenant's resources instead of a per-rule index — rule changes are rare.
 *
 * violation_id = hex(SHA-256(rule_id \0 rk))[0..32]: stable across replays.
 * The posture counts resources, not (rule, resource) pairs; the changes
 * accumulate in memory across the state transaction and are written once,
 * by flush, before the commit.
 *
 * The compiled rules live in memory (struct comp), rebuilt in open from
 * violations.rules, in (tenant, rule id) order — the order rules are
 * evaluated and events emitted in, so a reopened handler emits exactly
 * what a replay does. So do the sets of violations.view's and
 * violations.resources' keys that let a first discovery skip reads that
 * would find nothing (see "key sets"). The engine closes and re-opens
 * handlers after an aborted transaction, so the caches always match the
 * committed state.
 */
#include "cond.h"
#include "handler.h"
#include "vrec.h"

#include <assert.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RULES_PER_TENANT_MAX 1024 /* a CIS pack is ~50; bounds every per-input loop */
#define RULES_PER_TYPE_MAX RULES_PER_TENANT_MAX
#define CONTROLS_PER_RULE_MAX 32
#define CONTROLS_MAX 65536            /* (tenant, framework, control) triples in memory */
#define FAILED_VALUE_MAX 4096         /* bytes of one failed attribute value kept in a violation */
#define RECORD_MAX (1u << 20)         /* one resources value: 5 short strings + <= 1024 results */
#define COLLECT_MAX ((size_t)1 << 34) /* records a sweep or rule change holds at once */
/* The layout of violations.*: 2 = results inside the resources records;
 * 3 = view records (vrec.h) instead of whole documents in the view. A state
 * written by an older layout (1: a results and a ctlres DBI; 2: documents
 * in the view) is refused: it must be rebuilt from the log (cairn replay). */
#define LAYOUT 3

static const char *const consumes[] = {"discovery", "rule.define", "rule.delete", NULL};
static const char *const emits[] = {"compliance.violation", "compliance.resolved", NULL};

enum res { R_NONE = 0, R_PASS = 'P', R_FAIL = 'F' };

struct ctl {
    char *tenant, *fw, *id, *label; /* label: "fw:id", as violations list them */
};

struct crule {
    char *tenant, *id, *type, *severity, *title;
    size_t idn, typen;
    bool enabled;
    struct cond *cond;
    uint8_t *doc; /* the stored rules value */
    size_t docn;
    msgpack_unpacked u; /* doc decoded once: the two below point into it */
    const msgpack_object *frameworks, *remediation;
    int ctl[CONTROLS_PER_RULE_MAX];
    size_t nctl;
    /* The violation document's fields that come from the rule, packed once:
     * rule_id title severity, and frameworks controls remediation. */
    struct cairn_buf head, mid;
};

/* A control's state on one resource before and after an input (posture_move). */
struct cscr {
    uint32_t gen; /* the fields below are this call's when gen is the comp's */
    uint8_t before, after;
    bool done;
};

struct comp {
    unsigned rules, view, resources, posture, meta;
    struct hlayout layout;
    struct crule *r; /* sorted by (tenant, id) */
    size_t nr, rcap;
    struct ctl *c;
    size_t nc, ccap;
    int64_t (*delta)[2]; /* per control: pass, fail changes of this transaction */
    int *touched;
    size_t ntouched, dcap;
    struct cairn_buf rec, out; /* scratch: a copied resources value; one being written */
    struct cairn_buf doc;      /* scratch: a violation document */
    EVP_MD_CTX *md;            /* SHA-256, reused: see sha() */
    struct hkset vk;           /* the view's keys: see "key sets" */
    struct hkset rk;           /* the resources' keys */
    struct cscr *cs;           /* per control: posture_move's scratch */
    size_t cscap;
    uint32_t gen;
};

static struct comp *self(struct hctx *ctx)
{
    return *hctx_user(ctx);
}

static void be32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8),
    p[3] = (uint8_t)v;
}

static uint32_t be32_get(const void *q)
{
    const uint8_t *p = q;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool str_is(const struct cairn_str *s, const char *c)
{
    return s->n == strlen(c) && !memcmp(s->p, c, s->n);
}

static bool str_eq(const struct cairn_str *a, const char *b, size_t bn)
{
    return a->n == bn && !memcmp(a->p, b, bn);
}

/* A string value, nil when s->p is NULL (as mpw_kv_str packs it). */
static uint8_t *pk_str(uint8_t *o, const struct cairn_str *s)
{
    return s->p ? mpd_strn(o, s->p, s->n) : mpd_nil(o);
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

/* OpenSSL 3 looks the algorithm up on every SHA256() call (~40 % of a
 * hash this small): fetch it once for the process. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* SHA-256 of the parts joined with 00 (each part <= 256 bytes), with the
 * handler's context (md) when it has one: EVP_Digest allocates and frees
 * a context per call, ~40 % of the time of a hash this small. */
static void sha(EVP_MD_CTX *md, const void *parts[], const size_t lens[], int n, uint8_t out[32])
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
    pthread_once(&sha256_once, sha256_fetch);
    unsigned len = 0;
    bool ok = md && sha256_md && EVP_DigestInit_ex2(md, sha256_md, NULL) &&
              EVP_DigestUpdate(md, buf, k) && EVP_DigestFinal_ex(md, out, &len);
    if (!ok) /* no context, or its first use could not allocate */
        ok = EVP_Digest(buf, k, out, &len, sha256_md ? sha256_md : EVP_sha256(), NULL);
    assert(ok && len == 32); /* no allocation can fail for a fetched digest */
    (void)ok;
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

static void resource_keys(EVP_MD_CTX *md, const struct cairn_str *acct,
                          const struct cairn_str *region, const struct cairn_str *rid,
                          uint8_t ar[8], uint8_t rk[16])
{
    uint8_t h[32];
    const void *p[3] = {acct->p, region->p, rid ? rid->p : ""};
    size_t l[3] = {acct->n, region->n, rid ? rid->n : 0};
    if (ar) {
        sha(md, p, l, 2, h);
        memcpy(ar, h, 8);
    }
    if (rk) {
        sha(md, p, l, 3, h);
        memcpy(rk, h, 16);
    }
}

static void violation_id(EVP_MD_CTX *md, const struct crule *r, const uint8_t rk[16], char out[33])
{
    uint8_t h[32];
    const void *p[2] = {r->id, rk};
    size_t l[2] = {r->idn, 16};
    sha(md, p, l, 2, h);
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
    char label[256];
    snprintf(label, sizeof label, "%.*s:%.*s", (int)fw->n, fw->p, (int)id->n, id->p);
    c->tenant = strdup(tenant);
    c->fw = dupn(fw->p, fw->n);
    c->id = dupn(id->p, id->n);
    c->label = strdup(label);
    if (!c->tenant || !c->fw || !c->id || !c->label) {
        free(c->tenant), free(c->fw), free(c->id), free(c->label);
        return CAIRN_ENOMEM;
    }
    *out = (int)s->nc++;
    return 0;
}

static void crule_deinit(struct crule *r)
{
    free(r->tenant), free(r->id), free(r->type), free(r->severity), free(r->title);
    msgpack_unpacked_destroy(&r->u);
    free(r->doc);
    cond_free(r->cond);
    cairn_buf_deinit(&r->head);
    cairn_buf_deinit(&r->mid);
    memset(r, 0, sizeof *r);
}

static char *mp_dup(const msgpack_object *o)
{
    struct cairn_str s;
    return mp_str(o, &s) ? dupn(s.p, s.n) : strdup("");
}

static int crule_controls(struct comp *s, struct crule *r)
{
    const msgpack_object *fws = r->frameworks;
    int rc = 0;
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
    return rc;
}

/* Packs the rule's parts of a violation document (see violation_open). */
static int crule_pack(const struct comp *s, struct crule *r)
{
    struct mpw w;
    cairn_buf_init(&r->head, CAIRN_PAYLOAD_MAX_CEILING);
    cairn_buf_init(&r->mid, CAIRN_PAYLOAD_MAX_CEILING);
    mpw_init(&w, &r->head);
    mpw_kv_cstr(&w, "rule_id", r->id);
    mpw_kv_cstr(&w, "title", r->title);
    mpw_kv_cstr(&w, "severity", r->severity);
    int rc = mpw_finish(&w);
    mpw_init(&w, &r->mid);
    mpw_kv_obj(&w, "frameworks", r->frameworks);
    mpw_str(&w, "controls");
    msgpack_pack_array(&w.pk, (uint32_t)r->nctl);
    for (size_t i = 0; i < r->nctl; i++)
        mpw_str(&w, s->c[r->ctl[i]].label);
    mpw_kv_obj(&w, "remediation", r->remediation);
    return rc ? rc : mpw_finish(&w);
}

/* Builds a crule from a stored rules value (doc: {rule, tenant, …}). A rule
 * whose condition no longer compiles (an old log) is kept disabled. */
static int crule_init(struct comp *s, struct crule *r, const struct cairn_str *tenant,
                      const uint8_t *doc, size_t docn)
{
    memset(r, 0, sizeof *r);
    msgpack_unpacked_init(&r->u);
    r->doc = malloc(docn ? docn : 1);
    if (!r->doc) {
        msgpack_unpacked_destroy(&r->u);
        return CAIRN_ENOMEM;
    }
    memcpy(r->doc, doc, docn);
    r->docn = docn;
    int rc = CAIRN_ENOMEM;
    if (msgpack_unpack_next(&r->u, (const char *)r->doc, docn, NULL) != MSGPACK_UNPACK_SUCCESS) {
        rc = CAIRN_ECORRUPT;
        goto out;
    }
    const msgpack_object *rule = mp_get(&r->u.data, "rule");
    struct cairn_str cs = {"", 0};
    r->tenant = dupn(tenant->p, tenant->n);
    r->id = mp_dup(mp_get(rule, "id"));
    r->type = mp_dup(mp_get(rule, "resource_type"));
    r->severity = mp_dup(mp_get(rule, "severity"));
    r->title = mp_dup(mp_get(rule, "title"));
    if (!r->tenant || !r->id || !r->type || !r->severity || !r->title)
        goto out;
    r->idn = strlen(r->id);
    r->typen = strlen(r->type);
    r->frameworks = mp_get(rule, "frameworks");
    r->remediation = mp_get(rule, "remediation");
    r->enabled = true;
    mp_bool(mp_get(rule, "enabled"), &r->enabled);
    unsigned col;
    char msg[128];
    mp_str(mp_get(rule, "condition"), &cs);
    if ((rc = cond_compile(cs.p, cs.n, &r->cond, &col, msg, sizeof msg)) == CAIRN_ENOMEM)
        goto out;
    if (rc)
        r->enabled = false;
    rc = crule_controls(s, r);
    if (!rc)
        rc = crule_pack(s, r);
out:
    if (rc)
        crule_deinit(r);
    return rc;
}

/* Orders rules by (tenant, id). */
static int rule_cmp(const struct cairn_str *tenant, const struct cairn_str *id,
                    const struct crule *r)
{
    size_t tn = strlen(r->tenant);
    int c = memcmp(tenant->p, r->tenant, tenant->n < tn ? tenant->n : tn);
    if (!c)
        c = (tenant->n > tn) - (tenant->n < tn);
    if (!c)
        c = memcmp(id->p, r->id, id->n < r->idn ? id->n : r->idn);
    if (!c)
        c = (id->n > r->idn) - (id->n < r->idn);
    return c;
}

/* The index of the rule, or of where it would go. */
static size_t rule_pos(struct comp *s, const struct cairn_str *tenant, const struct cairn_str *id,
                       bool *found)
{
    size_t lo = 0, hi = s->nr;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = rule_cmp(tenant, id, &s->r[mid]);
        if (!c) {
            *found = true;
            return mid;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    *found = false;
    return lo;
}

static struct crule *rule_find(struct comp *s, const struct cairn_str *tenant,
                               const struct cairn_str *id)
{
    bool found;
    size_t i = rule_pos(s, tenant, id, &found);
    return found ? &s->r[i] : NULL;
}

static size_t rules_of(struct comp *s, const struct cairn_str *tenant)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nr; i++)
        n += str_is(tenant, s->r[i].tenant);
    return n;
}

/* Adds or replaces the tenant's rule, keeping s->r sorted. */
static int rule_set(struct comp *s, const struct cairn_str *tenant, const struct cairn_str *id,
                    const uint8_t *doc, size_t docn)
{
    struct crule nr;
    int rc = crule_init(s, &nr, tenant, doc, docn);
    if (rc)
        return rc;
    bool found;
    size_t at = rule_pos(s, tenant, id, &found);
    if (found) {
        crule_deinit(&s->r[at]);
        s->r[at] = nr;
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
    memmove(&s->r[at + 1], &s->r[at], (s->nr - at) * sizeof *s->r);
    s->r[at] = nr;
    s->nr++;
    return 0;
}

static void rule_remove(struct comp *s, struct crule *r)
{
    crule_deinit(r);
    size_t i = (size_t)(r - s->r);
    memmove(&s->r[i], &s->r[i + 1], (s->nr - i - 1) * sizeof *r);
    s->nr--;
}

/* ====================================================================== key sets */

/* Two reads find nothing on a first discovery, each a B-tree descent: the
 * resource's record (resource_scan; 7 % of the CPU of a first discovery
 * while the state was written through malloc'ed dirty pages, whose list
 * each descent searched; since MDB_WRITEMAP, 1.5 % of its instructions)
 * and the violation's view record (violation_open, for times_opened:
 * records exist only for (rule, resource) pairs that failed before;
 * ~10 % of the handler's instructions when it was added). The handler
 * therefore keeps a key set (struct hkset, handler.h) for violations.view
 * and one for violations.resources, added to by every put: a key not in
 * the set has no value and its read is skipped. A record a complete scan
 * deleted keeps its key in the set and is read as before (finding
 * nothing). The state is the same either way. */

static void comp_free(struct comp *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nr; i++)
        crule_deinit(&s->r[i]);
    for (size_t i = 0; i < s->nc; i++)
        free(s->c[i].tenant), free(s->c[i].fw), free(s->c[i].id), free(s->c[i].label);
    free(s->r);
    free(s->c);
    free(s->delta);
    free(s->touched);
    free(s->cs);
    EVP_MD_CTX_free(s->md);
    hkset_free(&s->vk);
    hkset_free(&s->rk);
    cairn_buf_deinit(&s->rec);
    cairn_buf_deinit(&s->out);
    cairn_buf_deinit(&s->doc);
    free(s);
}

static int comp_open(struct hctx *ctx)
{
    struct comp *s = calloc(1, sizeof *s);
    if (!s)
        return CAIRN_ENOMEM;
    *hctx_user(ctx) = s;
    cairn_buf_init(&s->rec, RECORD_MAX);
    cairn_buf_init(&s->out, RECORD_MAX);
    cairn_buf_init(&s->doc, CAIRN_PAYLOAD_MAX_CEILING);
    s->md = EVP_MD_CTX_new(); /* NULL (out of memory): sha() falls back to EVP_Digest */
    int rc = hctx_db(ctx, "rules", 0, &s->rules);
    if (!rc)
        rc = hctx_db(ctx, "view", 0, &s->view);
    if (!rc)
        rc = hctx_db(ctx, "resources", 0, &s->resources);
    if (!rc)
        rc = hctx_db(ctx, "posture", 0, &s->posture);
    if (!rc)
        rc = hctx_db(ctx, "meta", 0, &s->meta);
    /* A state without the mark but with resources was written by layout 1
     * (its results are not where this code looks: evaluating on it would
     * reopen every open violation); layout 2 kept documents in the view. */
    s->layout = (struct hlayout){
        .meta = s->meta, .probe = s->resources, .layout = LAYOUT, .what = "violations"};
    if (!rc)
        rc = hlayout_check(ctx, &s->layout);
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

/* The handler's flush: writes the posture changes accumulated over the
 * transaction (in touched order: deterministic), and the layout mark the
 * first time. */
static int comp_flush(struct hctx *ctx)
{
    struct comp *s = self(ctx);
    int rc = 0;
    if ((rc = hlayout_mark(ctx, &s->layout)))
        return rc;
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

/* One rule's result on one resource, before and after an input. */
struct rres {
    const struct crule *r;
    enum res old, now;
    bool budget; /* the evaluation ran out of steps (recorded in the violation) */
};

static uint8_t res_merge(uint8_t st, enum res v)
{
    return st == R_FAIL || v == R_FAIL ? R_FAIL : v == R_PASS ? R_PASS : st;
}

/* The resource's results moved from .old to .now (rr: every result the
 * resource has, before or after): move its state in each control of the
 * rules that changed. A resource's state in a control is fail when a rule
 * of the control failed it, else pass when one passed it, else none. The
 * controls are visited in the order the changed rules list them (each
 * once): the order of the posture's changes. Both states of every control
 * of the resource are gathered in one pass (per-control scratch, reset by
 * a generation number), not recomputed per changed control. */
static int posture_move(struct comp *s, const struct rres *rr, size_t n)
{
    if (s->cscap < s->nc) {
        size_t cap = s->nc + 64;
        struct cscr *c = realloc(s->cs, cap * sizeof *c);
        if (!c)
            return CAIRN_ENOMEM;
        memset(c + s->cscap, 0, (cap - s->cscap) * sizeof *c);
        s->cs = c;
        s->cscap = cap;
    }
    if (++s->gen == 0) { /* wrapped: no stale entry may look current */
        for (size_t i = 0; i < s->cscap; i++)
            s->cs[i].gen = 0;
        s->gen = 1;
    }
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        any |= rr[i].old != rr[i].now;
        for (size_t j = 0; j < rr[i].r->nctl; j++) {
            struct cscr *x = &s->cs[rr[i].r->ctl[j]];
            if (x->gen != s->gen)
                *x = (struct cscr){s->gen, R_NONE, R_NONE, false};
            x->before = res_merge(x->before, rr[i].old);
            x->after = res_merge(x->after, rr[i].now);
        }
    }
    int rc = 0;
    for (size_t i = 0; any && i < n && !rc; i++) {
        if (rr[i].old == rr[i].now)
            continue;
        for (size_t j = 0; j < rr[i].r->nctl && !rc; j++) {
            int c = rr[i].r->ctl[j];
            struct cscr *x = &s->cs[c];
            if (x->done)
                continue;
            x->done = true;
            if (x->before != x->after)
                rc = delta_add(s, c, (x->after == R_PASS) - (x->before == R_PASS),
                               (x->after == R_FAIL) - (x->before == R_FAIL));
        }
    }
    return rc;
}

/* ====================================================================== violations */

struct resource {
    struct cairn_str id, type, account, region;
    uint8_t rk[16];
    const msgpack_object *attrs; /* NULL: none (or a stored record's resource: rec_resource) */
};

/* resource_id, resource_type, account and region: keys and values (the
 * violation and resolved documents, and the resources record). */
static uint8_t *pk_resource(uint8_t *o, const struct cairn_str *id, const struct cairn_str *type,
                            const struct cairn_str *account, const struct cairn_str *region)
{
    o = mpd_key(o, "resource_id");
    o = pk_str(o, id);
    o = mpd_key(o, "resource_type");
    o = pk_str(o, type);
    o = mpd_key(o, "account");
    o = pk_str(o, account);
    o = mpd_key(o, "region");
    return pk_str(o, region);
}

/* Emits b on the stream; *dseq (when not NULL) is the event's dseq. */
static int emit_map(struct hctx *ctx, const struct event *ev, const char *type,
                    const struct cairn_str *key, struct cairn_buf *b, uint64_t *dseq)
{
    int rc = hctx_emit(ctx, ev, type, &ev->tenant, key, b->data, b->len);
    if (!rc && dseq)
        *dseq = hctx_emitted_dseq(ctx);
    return rc;
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
        /* A huge value (a SG with 1000 rules) is cut: the document stays
         * bounded. Packed once, into w's buffer, and taken back when over. */
        size_t at = w->buf->len;
        int was = w->err;
        mpw_obj(w, v);
        if (!was && (w->err == CAIRN_ETOOBIG || (!w->err && w->buf->len - at > FAILED_VALUE_MAX))) {
            w->err = 0;
            w->buf->len = at;
            mpw_str(w, "(value over 4096 bytes)");
        }
    }
    if (budget)
        mpw_kv_cstr(w, "_error", "evaluation step budget exceeded");
}

/* The violation document: 20 fields (the ones filters use are top-level
 * strings: status, severity, rule_id, resource_type, account, region). It is
 * emitted (compliance.violation) and the view gets its record (vrec.h). */
static int violation_open(struct hctx *ctx, const struct event *ev, const struct crule *r,
                          const struct resource *res, bool budget)
{
    struct comp *s = self(ctx);
    char vid[33];
    violation_id(s->md, r, res->rk, vid);
    uint8_t k[1 + CAIRN_TENANT_MAX + 64];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &(struct cairn_str){vid, 32});
    uint32_t times = 0;
    MDB_val v;
    int rc = hkset_get(ctx, &s->vk, s->view, k, kn, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    if (!rc) {
        struct vrec old;
        if (!vrec_decode(v.mv_data, v.mv_size, &old))
            return CAIRN_ECORRUPT;
        times = old.times;
    }
    if (times < UINT32_MAX) /* (saturates: 4 G reopenings) */
        times++;
    /* Packed directly (handler.h, "direct packing": the bytes msgpack-c
     * gives) but for the failed values, which are decoded attributes. */
    struct cairn_buf *b = &s->doc;
    struct mpw w;
    cairn_buf_reset(b);
    size_t bound = 256 + r->head.len + r->mid.len + ev->tenant.n + res->id.n + res->type.n +
                   res->account.n + res->region.n + MPD_TIME_MAX + 16 * MPD_HDR_MAX;
    if ((rc = cairn_buf_reserve(b, bound)))
        return rc;
    uint8_t *o = b->data;
    o = mpd_map(o, 20);
    o = mpd_key(o, "violation_id");
    o = mpd_strn(o, vid, 32);
    o = mpd_key(o, "tenant");
    o = pk_str(o, &ev->tenant);
    o = mpd_key(o, "status");
    o = mpd_key(o, "open");
    o = mpd_raw(o, r->head.data, r->head.len); /* rule_id title severity */
    o = pk_resource(o, &res->id, &res->type, &res->account, &res->region);
    o = mpd_raw(o, r->mid.data, r->mid.len); /* frameworks controls remediation */
    b->len = (size_t)(o - b->data);
    mpw_init(&w, b);
    write_failed(&w, r, res, budget);
    if ((rc = mpw_finish(&w)) || (rc = cairn_buf_reserve(b, 128 + MPD_TIME_MAX)))
        return rc;
    o = b->data + b->len;
    o = mpd_key(o, "opened_at");
    o = mpd_time(o, ev->time);
    o = mpd_key(o, "opened_seq");
    o = mpd_u64(o, ev->seq);
    o = mpd_key(o, "resolved_at");
    o = mpd_nil(o);
    o = mpd_key(o, "resolved_seq");
    o = mpd_nil(o);
    o = mpd_key(o, "resolution");
    o = mpd_nil(o);
    o = mpd_key(o, "times_opened");
    o = mpd_i64(o, times);
    b->len = (size_t)(o - b->data);
    uint64_t dseq;
    if ((rc = emit_map(ctx, ev, "compliance.violation", &res->id, b, &dseq)))
        return rc;
    uint8_t rec[VREC_MAX];
    struct vrec vr = {.dseq = dseq,
                      .times = times,
                      .opened_at = ev->time,
                      .severity = {r->severity, strlen(r->severity)}};
    if (!(rc = hctx_put(ctx, s->view, k, kn, rec, vrec_encode(&vr, rec))))
        hkset_add(&s->vk, k, kn);
    return rc;
}

/* Marks the violation resolved (its view record) and emits
 * compliance.resolved: violation_id rule_id resource_id resource_type
 * account region severity controls opened_at reason — the document's
 * fields, which are the rule's and the resource's (r, res: the ones it was
 * opened with — a rule change that changes its controls resolves its
 * violations first) but for the severity and opened_at, kept in the record.
 * A missing record (impossible unless the state was edited) resolves
 * nothing. */
static int violation_resolve(struct hctx *ctx, const struct event *ev, const struct crule *r,
                             const struct resource *res, const char *reason)
{
    struct comp *s = self(ctx);
    char vid[33];
    violation_id(s->md, r, res->rk, vid);
    uint8_t k[1 + CAIRN_TENANT_MAX + 64];
    size_t kn = hkey_make(k, sizeof k, &ev->tenant, &(struct cairn_str){vid, 32});
    MDB_val v;
    int rc = hctx_get(ctx, s->view, k, kn, &v);
    if (rc)
        return rc == CAIRN_ENOTFOUND ? 0 : rc;
    uint8_t old[VREC_MAX], rec[VREC_MAX];
    struct vrec vr;
    if (v.mv_size > sizeof old)
        return CAIRN_ECORRUPT;
    memcpy(old, v.mv_data, v.mv_size); /* the put below may move it */
    if (!vrec_decode(old, v.mv_size, &vr))
        return CAIRN_ECORRUPT;
    vr.resolved = true;
    vr.resolved_seq = ev->seq;
    vr.resolved_at = ev->time;
    vr.resolution = (struct cairn_str){reason, strlen(reason)};
    if ((rc = hctx_put(ctx, s->view, k, kn, rec, vrec_encode(&vr, rec))))
        return rc;
    struct cairn_buf *b = &s->doc;
    cairn_buf_reset(b);
    size_t bound = 256 + 32 + r->idn + res->id.n + res->type.n + res->account.n + res->region.n +
                   vr.severity.n + strlen(reason) + MPD_TIME_MAX + 16 * MPD_HDR_MAX;
    for (size_t i = 0; i < r->nctl; i++)
        bound += strlen(s->c[r->ctl[i]].label) + MPD_HDR_MAX;
    if ((rc = cairn_buf_reserve(b, bound)))
        return rc;
    uint8_t *o = b->data;
    o = mpd_map(o, 10);
    o = mpd_key(o, "violation_id");
    o = mpd_strn(o, vid, 32);
    o = mpd_key(o, "rule_id");
    o = mpd_strn(o, r->id, r->idn);
    o = pk_resource(o, &res->id, &res->type, &res->account, &res->region);
    o = mpd_key(o, "severity");
    o = mpd_strn(o, vr.severity.p, vr.severity.n);
    o = mpd_key(o, "controls");
    o = mpd_array(o, (uint32_t)r->nctl);
    for (size_t i = 0; i < r->nctl; i++) {
        const char *l = s->c[r->ctl[i]].label;
        o = mpd_strn(o, l, strlen(l));
    }
    o = mpd_key(o, "opened_at");
    o = mpd_time(o, vr.opened_at);
    o = mpd_key(o, "reason");
    o = mpd_strn(o, reason, strlen(reason));
    b->len = (size_t)(o - b->data);
    return emit_map(ctx, ev, "compliance.resolved", &res->id, b, NULL);
}

/* Applies a resource's result changes: posture, then, in rule order, a
 * violation opened for each new failure (only a discovery's results fail
 * anew: res is then the discovered resource, with its attributes) and one
 * resolved (with reason) for each failure that ended. */
static int results_apply(struct hctx *ctx, const struct event *ev, const struct rres *rr, size_t n,
                         const struct resource *res, const char *reason)
{
    int rc = posture_move(self(ctx), rr, n);
    for (size_t i = 0; i < n && !rc; i++) {
        if (rr[i].now == R_FAIL && rr[i].old != R_FAIL) {
            rc = violation_open(ctx, ev, rr[i].r, res, rr[i].budget);
        } else if (rr[i].old == R_FAIL && rr[i].now != R_FAIL) {
            rc = violation_resolve(ctx, ev, rr[i].r, res, reason);
        }
    }
    return rc;
}

/* ====================================================================== resource records */

/* A resources value, decoded from a copy (it outlives writes to the DBI). */
struct rec {
    struct cairn_str id, type, account, region, mark;
    const msgpack_object *results; /* rule_id -> "P" | "F" (NULL: none) */
    msgpack_unpacked u;
};

/* Decodes the value at p (which the caller keeps alive while rec is used). */
static int rec_decode(struct rec *rc, const uint8_t *p, size_t n)
{
    memset(rc, 0, sizeof *rc);
    msgpack_unpacked_init(&rc->u);
    if (msgpack_unpack_next(&rc->u, (const char *)p, n, NULL) != MSGPACK_UNPACK_SUCCESS ||
        rc->u.data.type != MSGPACK_OBJECT_MAP)
        return CAIRN_ECORRUPT;
    const msgpack_object *d = &rc->u.data;
    mp_str(mp_get(d, "resource_id"), &rc->id);
    mp_str(mp_get(d, "resource_type"), &rc->type);
    mp_str(mp_get(d, "account"), &rc->account);
    mp_str(mp_get(d, "region"), &rc->region);
    mp_str(mp_get(d, "scan"), &rc->mark);
    rc->results = mp_get(d, "results");
    if (rc->results && rc->results->type != MSGPACK_OBJECT_MAP)
        rc->results = NULL;
    return 0;
}

/* The resource a record describes (rk: its key's last 16 bytes), to resolve
 * its violations: the fields their documents were opened with (the record
 * keeps the type its results were evaluated for; id, account and region
 * make its key). */
static struct resource rec_resource(const struct rec *rc, const uint8_t rk[16])
{
    struct resource res = {
        .id = rc->id, .type = rc->type, .account = rc->account, .region = rc->region};
    memcpy(res.rk, rk, 16);
    return res;
}

static enum res rec_result(const struct rec *rc, const struct crule *r)
{
    for (uint32_t i = 0; rc->results && i < rc->results->via.map.size; i++) {
        const msgpack_object_kv *kv = &rc->results->via.map.ptr[i];
        struct cairn_str id, v;
        if (mp_str(&kv->key, &id) && str_eq(&id, r->id, r->idn) && mp_str(&kv->val, &v) && v.n == 1)
            return v.p[0] == 'F' ? R_FAIL : v.p[0] == 'P' ? R_PASS : R_NONE;
    }
    return R_NONE;
}

/* Every stored result of the record, with .now = .old (the tenant's rules
 * they name; a name no rule has, impossible while the invariant holds, is
 * skipped). Returns the count. */
static size_t rec_results(struct comp *s, const struct cairn_str *tenant, const struct rec *rc,
                          struct rres *rr)
{
    size_t n = 0;
    for (uint32_t i = 0; rc->results && i < rc->results->via.map.size && n < RULES_PER_TYPE_MAX;
         i++) {
        struct cairn_str id;
        const struct crule *r;
        if (!mp_str(&rc->results->via.map.ptr[i].key, &id) || !(r = rule_find(s, tenant, &id)))
            continue;
        rr[n] = (struct rres){r, rec_result(rc, r), R_NONE, false};
        rr[n].now = rr[n].old;
        n++;
    }
    return n;
}

/* Writes the record with the results rr[].now (R_NONE left out). */
static int rec_put(struct hctx *ctx, const uint8_t *k, size_t kn, const struct rec *f,
                   const struct rres *rr, size_t n)
{
    struct comp *s = self(ctx);
    uint32_t kept = 0;
    size_t bound =
        64 + 5 * MPD_HDR_MAX + f->id.n + f->type.n + f->account.n + f->region.n + f->mark.n;
    for (size_t i = 0; i < n; i++)
        if (rr[i].now != R_NONE) {
            kept++;
            bound += rr[i].r->idn + MPD_HDR_MAX + 2;
        }
    cairn_buf_reset(&s->out);
    int rc = cairn_buf_reserve(&s->out, bound);
    if (rc)
        return rc;
    uint8_t *o = s->out.data;
    o = mpd_map(o, 6);
    o = pk_resource(o, &f->id, &f->type, &f->account, &f->region);
    o = mpd_key(o, "scan");
    o = pk_str(o, &f->mark);
    o = mpd_key(o, "results");
    o = mpd_map(o, kept);
    for (size_t i = 0; i < n; i++)
        if (rr[i].now != R_NONE) {
            o = mpd_strn(o, rr[i].r->id, rr[i].r->idn);
            o = mpd_strn(o, rr[i].now == R_FAIL ? "F" : "P", 1);
        }
    s->out.len = (size_t)(o - s->out.data);
    rc = hctx_put(ctx, s->resources, k, kn, s->out.data, s->out.len);
    if (!rc)
        hkset_add(&s->rk, k, kn);
    return rc;
}

/* Copies the values of the records under prefix that `pick` selects into
 * *buf (key then value, each u32-length-prefixed), deleting them when del. */
static int collect(struct hctx *ctx, const uint8_t *pre, size_t pn, bool del,
                   bool (*pick)(const MDB_val *k, const MDB_val *v, const void *arg),
                   const void *arg, struct cairn_buf *buf)
{
    struct hcursor *c;
    int rc = hctx_cursor_open(ctx, self(ctx)->resources, pre, pn, &c);
    if (rc)
        return rc;
    MDB_val k, v;
    while (!(rc = hctx_cursor_next(c, &k, &v))) {
        if (!pick(&k, &v, arg))
            continue;
        uint8_t l[8];
        be32_put(l, (uint32_t)k.mv_size);
        be32_put(l + 4, (uint32_t)v.mv_size);
        if (cairn_buf_append(buf, l, 8) || cairn_buf_append(buf, k.mv_data, k.mv_size) ||
            cairn_buf_append(buf, v.mv_data, v.mv_size))
            rc = CAIRN_ENOMEM;
        else if (del)
            rc = hctx_cursor_del(c);
        if (rc)
            break;
    }
    hctx_cursor_close(c);
    return rc == CAIRN_ENOTFOUND ? 0 : rc;
}

/* Iterates what collect gathered: the next key and value at *off (advanced). */
static bool collected_next(const struct cairn_buf *b, size_t *off, MDB_val *k, MDB_val *v)
{
    if (*off + 8 > b->len)
        return false;
    k->mv_size = be32_get(b->data + *off);
    v->mv_size = be32_get(b->data + *off + 4);
    k->mv_data = b->data + *off + 8;
    v->mv_data = (uint8_t *)k->mv_data + k->mv_size;
    *off += 8 + k->mv_size + v->mv_size;
    return true;
}

/* What collect gathered, sorted by rk (the key's last 16 bytes): the order
 * a rule's results are cleared and resolved in — the order of the first
 * layout's per-rule index (T | rule_id 00 | rk), kept so the derived
 * events of a rule change did not change with the layout. */
struct held {
    MDB_val k, v;
};

static int held_cmp(const void *a, const void *b)
{
    const MDB_val *x = &((const struct held *)a)->k, *y = &((const struct held *)b)->k;
    int c = memcmp((const uint8_t *)x->mv_data + x->mv_size - 16,
                   (const uint8_t *)y->mv_data + y->mv_size - 16, 16);
    return c ? c : (x->mv_data > y->mv_data) - (x->mv_data < y->mv_data);
}

static int collected_sort(const struct cairn_buf *b, struct held **out, size_t *n)
{
    size_t off = 0, cap = 0;
    MDB_val k, v;
    *out = NULL;
    *n = 0;
    while (collected_next(b, &off, &k, &v)) {
        if (k.mv_size < 16)
            continue; /* not a record key (collect's prefix is the tenant's) */
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            struct held *m = realloc(*out, cap * sizeof *m);
            if (!m)
                return CAIRN_ENOMEM;
            *out = m;
        }
        (*out)[(*n)++] = (struct held){k, v};
    }
    if (*n)
        qsort(*out, *n, sizeof **out, held_cmp);
    return 0;
}

/* ====================================================================== rules */

static bool has_result_of(const MDB_val *k, const MDB_val *v, const void *arg)
{
    (void)k;
    struct rec rc;
    bool has = !rec_decode(&rc, v->mv_data, v->mv_size) && rec_result(&rc, arg) != R_NONE;
    msgpack_unpacked_destroy(&rc.u);
    return has;
}

/* Drops every result of the rule (resolving its open violations): the rule
 * was disabled, deleted, or changed what it evaluates. Walks the tenant's
 * resources (there is no per-rule index: see the top of the file). */
static int rule_clear(struct hctx *ctx, const struct event *ev, const struct crule *r,
                      const char *reason)
{
    struct comp *s = self(ctx);
    uint8_t pre[1 + CAIRN_TENANT_MAX];
    size_t pn = hkey_make(pre, sizeof pre, &ev->tenant, &(struct cairn_str){"", 0});
    struct cairn_buf got;
    cairn_buf_init(&got, COLLECT_MAX);
    struct rres *rr = malloc(RULES_PER_TYPE_MAX * sizeof *rr);
    int rc = rr ? collect(ctx, pre, pn, false, has_result_of, r, &got) : CAIRN_ENOMEM;
    struct held *h = NULL;
    size_t nh = 0;
    if (!rc)
        rc = collected_sort(&got, &h, &nh);
    for (size_t j = 0; !rc && j < nh; j++) {
        MDB_val k = h[j].k, v = h[j].v;
        struct rec f;
        if ((rc = rec_decode(&f, v.mv_data, v.mv_size))) {
            msgpack_unpacked_destroy(&f.u);
            break;
        }
        size_t n = rec_results(s, &ev->tenant, &f, rr);
        for (size_t i = 0; i < n; i++)
            if (rr[i].r == r)
                rr[i].now = R_NONE;
        const uint8_t *rk = (const uint8_t *)k.mv_data + k.mv_size - 16;
        struct resource res = rec_resource(&f, rk);
        rc = results_apply(ctx, ev, rr, n, &res, reason);
        if (!rc)
            rc = rec_put(ctx, k.mv_data, k.mv_size, &f, rr, n);
        msgpack_unpacked_destroy(&f.u);
    }
    free(h);
    free(rr);
    cairn_buf_deinit(&got);
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
    struct crule **rules; /* the tenant's enabled rules, in rule order */
    size_t nrules;
    struct rres *rr; /* scratch: RULES_PER_TYPE_MAX */
};

/* Every result of a resource that is gone is dropped (violations resolve). */
static int resource_gone(struct hctx *ctx, const struct event *ev, const struct scan *sc,
                         const struct rec *f, const uint8_t rk[16])
{
    size_t n = rec_results(self(ctx), &ev->tenant, f, sc->rr);
    for (size_t i = 0; i < n; i++)
        sc->rr[i].now = R_NONE;
    struct resource res = rec_resource(f, rk);
    return results_apply(ctx, ev, sc->rr, n, &res, "resource_gone");
}

/* One discovered resource: its record (a new type drops the old type's
 * results first), then every enabled rule of its type, evaluated. The
 * record is rewritten only when something in it changed. */
static int resource_scan(struct hctx *ctx, const struct event *ev, const struct scan *sc,
                         const struct resource *res)
{
    struct comp *s = self(ctx);
    uint8_t k[1 + CAIRN_TENANT_MAX + 24];
    struct cairn_str parts[1] = {{(const char *)sc->ar, 8}};
    size_t kn = key_make(k, &ev->tenant, parts, 1);
    memcpy(k + kn, res->rk, 16);
    kn += 16;
    MDB_val v;
    int rc = hkset_get(ctx, &s->rk, s->resources, k, kn, &v);
    if (rc && rc != CAIRN_ENOTFOUND)
        return rc;
    bool found = !rc, same_type = false, changed = true;
    struct rec old;
    msgpack_unpacked_init(&old.u);
    if (found) {
        msgpack_unpacked_destroy(&old.u);
        cairn_buf_reset(&s->rec);
        if (cairn_buf_append(&s->rec, v.mv_data, v.mv_size))
            return CAIRN_ENOMEM;
        if ((rc = rec_decode(&old, s->rec.data, s->rec.len)))
            goto out;
        same_type = str_eq(&old.type, res->type.p, res->type.n);
        changed = !same_type || !str_eq(&old.mark, sc->marker.p, sc->marker.n);
        if (!same_type && (rc = resource_gone(ctx, ev, sc, &old, res->rk)))
            goto out;
    }
    size_t n = 0;
    for (size_t i = 0; i < sc->nrules; i++) {
        const struct crule *r = sc->rules[i];
        if (!str_eq(&res->type, r->type, r->typen))
            continue;
        struct rres *x = &sc->rr[n++];
        *x = (struct rres){r, same_type ? rec_result(&old, r) : R_NONE, R_NONE, false};
        x->now = cond_eval(r->cond, res->attrs, ev->time, NULL, &x->budget) ? R_PASS : R_FAIL;
        changed |= x->now != x->old;
    }
    rc = results_apply(ctx, ev, sc->rr, n, res, "compliant");
    struct rec now = {.id = res->id,
                      .type = res->type,
                      .account = sc->account,
                      .region = sc->region,
                      .mark = sc->marker};
    if (!rc && changed)
        rc = rec_put(ctx, k, kn, &now, sc->rr, n);
out:
    msgpack_unpacked_destroy(&old.u);
    return rc;
}

struct stale_arg {
    const struct scan *sc;
    size_t pn; /* tlen|tenant|ar: a record's key is that and rk */
};

static bool stale(const MDB_val *k, const MDB_val *v, const void *arg)
{
    const struct stale_arg *a = arg;
    struct rec f;
    bool st = k->mv_size == a->pn + 16 && !rec_decode(&f, v->mv_data, v->mv_size) &&
              !str_eq(&f.mark, a->sc->marker.p, a->sc->marker.n);
    msgpack_unpacked_destroy(&f.u);
    return st;
}

/* A complete scan: resources of the account/region it did not list are gone. */
static int sweep(struct hctx *ctx, const struct event *ev, const struct scan *sc)
{
    uint8_t pre[1 + CAIRN_TENANT_MAX + 8];
    struct cairn_str parts[1] = {{(const char *)sc->ar, 8}};
    size_t pn = key_make(pre, &ev->tenant, parts, 1);
    struct cairn_buf got;
    cairn_buf_init(&got, COLLECT_MAX);
    int rc = collect(ctx, pre, pn, true, stale, &(struct stale_arg){sc, pn}, &got);
    size_t off = 0;
    MDB_val k, v;
    while (!rc && collected_next(&got, &off, &k, &v)) {
        struct rec f;
        if (!(rc = rec_decode(&f, v.mv_data, v.mv_size)))
            rc = resource_gone(ctx, ev, sc, &f, (const uint8_t *)k.mv_data + k.mv_size - 16);
        msgpack_unpacked_destroy(&f.u);
    }
    cairn_buf_deinit(&got);
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
    resource_keys(s->md, &sc.account, &sc.region, NULL, sc.ar, NULL);
    sc.rules = malloc((s->nr + 1) * sizeof *sc.rules);
    sc.rr = malloc(RULES_PER_TYPE_MAX * sizeof *sc.rr);
    int rc = sc.rules && sc.rr ? 0 : CAIRN_ENOMEM;
    for (size_t i = 0; !rc && i < s->nr; i++)
        if (s->r[i].enabled && str_is(&ev->tenant, s->r[i].tenant))
            sc.rules[sc.nrules++] = &s->r[i];
    for (uint32_t i = 0; !rc && i < list->via.array.size; i++) {
        const msgpack_object *o = &list->via.array.ptr[i];
        struct resource res = {.account = sc.account, .region = sc.region};
        if (!mp_str(mp_get(o, "resource_id"), &res.id) ||
            !mp_str(mp_get(o, "resource_type"), &res.type) || res.id.n > CAIRN_ID_MAX ||
            res.type.n > 128)
            continue;
        res.attrs = mp_get(o, "attributes");
        resource_keys(s->md, &sc.account, &sc.region, &res.id, NULL, res.rk);
        rc = resource_scan(ctx, ev, &sc, &res);
    }
    if (!rc && complete)
        rc = sweep(ctx, ev, &sc);
    free(sc.rules);
    free(sc.rr);
    return rc;
}

static int comp_apply(struct hctx *ctx, const struct event *ev)
{
    if (str_is(&ev->type, "discovery"))
        return on_discovery(ctx, ev);
    if (str_is(&ev->type, "rule.define"))
        return on_rule_define(ctx, ev);
    if (str_is(&ev->type, "rule.delete"))
        return on_rule_delete(ctx, ev);
    return 0;
}

/* ====================================================================== routes */

/* compliance_routes.c */
extern const struct handler_route violations_routes[];
int violations_view_doc(struct hread *rd, const MDB_val *k, const MDB_val *v,
                        struct cairn_buf *out);

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
    .flush = comp_flush,
    .view_doc = violations_view_doc,
    /* apply touches only its context (rules, posture counts, the key sets,
     * its SHA-256 context) and the state through hctx_*: it may run on the
     * engine's apply worker during catch-up and replay. */
    .concurrent = true,
};
