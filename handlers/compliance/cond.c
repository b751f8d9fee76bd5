/*
 * cond.c — the compliance condition language (cond.h): a tokenizer, a
 * recursive-descent parser into a flat node array, and an evaluator over
 * msgpack objects. The grammar and semantics are documented in cond.h.
 *
 * Invariants: parse nesting is bounded by COND_DEPTH_MAX, so evaluation
 * recursion is too; node children are indices into the same array; strings
 * (literals, path segments) are copies owned by the cond.
 */
#include "cond.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind {
    K_LIT_NULL,
    K_LIT_BOOL,
    K_LIT_NUM,
    K_LIT_STR,
    K_LIST,
    K_PATH,
    K_AND,
    K_OR,
    K_NOT,
    K_CMP,
    K_IN,
    K_MATCHES,
    K_EXISTS,
    K_ANY,
    K_ALL,
    K_COUNT,
    K_AGE,
    K_CIDR,
};

enum cmp { C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE };

struct seg {
    const char *p;
    uint32_t n;
};

struct node {
    uint8_t kind, cmp;
    bool boolean;
    bool from_root; /* path: starts with "$" */
    bool at;        /* path: starts with "@" */
    int a, b;       /* children (or -1) */
    double num;
    const char *str; /* literal string / path text */
    uint32_t strn;
    uint32_t first, count; /* K_LIST: kids; K_PATH: segs */
};

struct cond {
    struct node *nodes;
    size_t n;
    int root;
    struct seg *segs;
    size_t nsegs;
    int *kids;
    size_t nkids;
    char *pool; /* every string: literals, segments, path texts */
    size_t pooln, poolcap;
    int roots[COND_ROOTS_MAX];
    char *root_text[COND_ROOTS_MAX];
    size_t nroots;
};

/* ====================================================================== tokens */

enum tok {
    T_END,
    T_IDENT,
    T_STR,
    T_NUM,
    T_OP,
    T_LP,
    T_RP,
    T_LB,
    T_RB,
    T_COMMA,
    T_DOT,
    T_AT,
    T_DOLLAR
};

struct parser {
    const char *s;
    size_t n, pos;
    struct cond *c;
    enum tok t;
    size_t tstart, tlen; /* raw token span */
    char *sval;          /* decoded string literal (pool) */
    uint32_t svaln;
    double num;
    unsigned err_col;
    char *msg;
    size_t msgcap;
    int depth;
    int in_lambda;
    size_t prev_end; /* end of the last token consumed */
};

static int perr(struct parser *p, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int perr(struct parser *p, size_t at, const char *fmt, ...)
{
    if (!p->err_col) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->msg, p->msgcap, fmt, ap);
        va_end(ap);
        p->err_col = (unsigned)at + 1;
    }
    return CAIRN_EINVAL;
}

static char *pool_add(struct cond *c, const char *s, size_t n)
{
    /* The pool is sized up front (2 x source + 16), so pointers stay valid. */
    if (c->pooln + n + 1 > c->poolcap)
        return NULL;
    char *d = c->pool + c->pooln;
    memcpy(d, s, n);
    d[n] = '\0';
    c->pooln += n + 1;
    return d;
}

static bool is_ident0(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static bool is_ident(char ch)
{
    return is_ident0(ch) || (ch >= '0' && ch <= '9') || ch == '-';
}

static int lex_string(struct parser *p)
{
    size_t i = p->pos + 1;
    char *d = p->c->pool + p->c->pooln;
    size_t dn = 0;
    if (p->c->pooln + (p->n - p->pos) + 1 > p->c->poolcap)
        return CAIRN_ENOMEM; /* cannot happen: the pool is 3x the source */
    for (;; i++) {
        if (i >= p->n)
            return perr(p, p->pos, "unterminated string");
        char ch = p->s[i];
        if (ch == '"')
            break;
        if (ch == '\\') {
            if (++i >= p->n)
                return perr(p, p->pos, "unterminated string");
            ch = p->s[i];
            if (ch == 'n')
                ch = '\n';
            else if (ch == 't')
                ch = '\t';
            else if (ch != '"' && ch != '\\')
                return perr(p, i - 1, "unknown escape '\\%c'", ch);
        }
        d[dn++] = ch;
    }
    d[dn] = '\0';
    p->sval = d;
    p->svaln = (uint32_t)dn;
    p->c->pooln += dn + 1;
    p->t = T_STR;
    p->tlen = i + 1 - p->pos;
    return 0;
}

static int lex_number(struct parser *p)
{
    char buf[64];
    size_t i = p->pos, k = 0;
    if (p->s[i] == '-')
        buf[k++] = p->s[i++];
    while (i < p->n && k < sizeof buf - 1 &&
           ((p->s[i] >= '0' && p->s[i] <= '9') || p->s[i] == '.' || p->s[i] == 'e' ||
            p->s[i] == 'E' ||
            ((p->s[i] == '-' || p->s[i] == '+') && k && (buf[k - 1] | 32) == 'e')))
        buf[k++] = p->s[i++];
    buf[k] = '\0';
    char *end;
    p->num = strtod(buf, &end);
    if (k == 0 || *end || (buf[0] == '-' && k == 1))
        return perr(p, p->pos, "malformed number");
    p->t = T_NUM;
    p->tlen = i - p->pos;
    return 0;
}

/* Reads the token at p->pos (after blanks) into p->t. */
static int lex(struct parser *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                             p->s[p->pos] == '\r'))
        p->pos++;
    p->tstart = p->pos;
    p->tlen = 1;
    if (p->pos >= p->n) {
        p->t = T_END;
        p->tlen = 0;
        return 0;
    }
    char ch = p->s[p->pos], nx = p->pos + 1 < p->n ? p->s[p->pos + 1] : '\0';
    switch (ch) {
    case '(': p->t = T_LP; return 0;
    case ')': p->t = T_RP; return 0;
    case '[': p->t = T_LB; return 0;
    case ']': p->t = T_RB; return 0;
    case ',': p->t = T_COMMA; return 0;
    case '.': p->t = T_DOT; return 0;
    case '@': p->t = T_AT; return 0;
    case '$': p->t = T_DOLLAR; return 0;
    case '"': return lex_string(p);
    case '=':
    case '!':
        if (nx != '=')
            return perr(p, p->pos, "unexpected '%c' (did you mean '%c='?)", ch, ch);
        p->t = T_OP;
        p->tlen = 2;
        return 0;
    case '<':
    case '>':
        p->t = T_OP;
        p->tlen = nx == '=' ? 2 : 1;
        return 0;
    default: break;
    }
    if ((ch >= '0' && ch <= '9') || (ch == '-' && nx >= '0' && nx <= '9'))
        return lex_number(p);
    if (is_ident0(ch)) {
        size_t i = p->pos;
        while (i < p->n && is_ident(p->s[i]))
            i++;
        p->t = T_IDENT;
        p->tlen = i - p->pos;
        return 0;
    }
    if ((unsigned char)ch < 0x20 || (unsigned char)ch >= 0x7f)
        return perr(p, p->pos, "unexpected byte 0x%02x", (unsigned char)ch);
    return perr(p, p->pos, "unexpected character '%c'", ch);
}

static int advance(struct parser *p)
{
    p->pos = p->prev_end = p->tstart + p->tlen;
    return lex(p);
}

static bool tok_is(const struct parser *p, const char *word)
{
    size_t n = strlen(word);
    return (p->t == T_IDENT || p->t == T_OP) && p->tlen == n && !memcmp(p->s + p->tstart, word, n);
}

/* ====================================================================== nodes */

static int node_new(struct parser *p, enum kind k, int *out)
{
    struct cond *c = p->c;
    if (c->n >= COND_NODES_MAX)
        return perr(p, p->tstart, "condition has more than %d nodes", COND_NODES_MAX);
    memset(&c->nodes[c->n], 0, sizeof c->nodes[c->n]);
    c->nodes[c->n].kind = (uint8_t)k;
    c->nodes[c->n].a = c->nodes[c->n].b = -1;
    *out = (int)c->n++;
    return 0;
}

static int parse_expr(struct parser *p, int *out);

static int expect(struct parser *p, enum tok t, const char *what)
{
    if (p->t != t)
        return p->t == T_END ? perr(p, p->tstart, "expected %s, found the end", what)
                             : perr(p, p->tstart, "expected %s", what);
    return advance(p);
}

/* path := ("@" | "$" | seg) ("." seg)* */
static int parse_path(struct parser *p, int *out)
{
    struct cond *c = p->c;
    size_t start = p->tstart;
    int rc = node_new(p, K_PATH, out);
    if (rc)
        return rc;
    struct node *nd = &c->nodes[*out];
    nd->first = (uint32_t)c->nsegs;
    bool need_seg = true;
    if (p->t == T_AT || p->t == T_DOLLAR) {
        if (p->t == T_AT && !p->in_lambda)
            return perr(p, p->tstart, "'@' is only meaningful inside any() or all()");
        nd->at = p->t == T_AT;
        nd->from_root = p->t == T_DOLLAR;
        need_seg = false;
        if ((rc = advance(p)))
            return rc;
        if (p->t != T_DOT)
            goto done;
        if ((rc = advance(p)))
            return rc;
        need_seg = true;
    }
    for (;;) {
        if (need_seg) {
            if (nd->count >= COND_SEGS_MAX)
                return perr(p, p->tstart, "path has more than %d segments", COND_SEGS_MAX);
            struct seg *sg = &c->segs[c->nsegs];
            if (p->t == T_IDENT) {
                sg->p = pool_add(c, p->s + p->tstart, p->tlen);
                sg->n = (uint32_t)p->tlen;
            } else if (p->t == T_STR) {
                sg->p = p->sval;
                sg->n = p->svaln;
            } else if (p->t == T_NUM && p->num >= 0 && p->num == (double)(uint32_t)p->num) {
                sg->p = pool_add(c, p->s + p->tstart, p->tlen);
                sg->n = (uint32_t)p->tlen;
            } else {
                return perr(p, p->tstart, "expected a path segment");
            }
            if (!sg->p)
                return CAIRN_ENOMEM;
            c->nsegs++;
            nd->count++;
            if ((rc = advance(p)))
                return rc;
        }
        if (p->t != T_DOT)
            break;
        if ((rc = advance(p)))
            return rc;
        need_seg = true;
    }
done:
    /* The path as written: from its first byte to the end of its last token. */
    nd->strn = (uint32_t)(p->prev_end - start);
    nd->str = pool_add(c, p->s + start, nd->strn);
    return nd->str ? 0 : CAIRN_ENOMEM;
}

static int parse_list(struct parser *p, int *out)
{
    struct cond *c = p->c;
    int rc = node_new(p, K_LIST, out);
    int tmp[COND_LIST_LIT_MAX];
    uint32_t n = 0;
    if (!rc)
        rc = advance(p);
    while (!rc && p->t != T_RB) {
        if (n == COND_LIST_LIT_MAX)
            return perr(p, p->tstart, "list has more than %d items", COND_LIST_LIT_MAX);
        int k = -1;
        if (p->t == T_STR || p->t == T_NUM || tok_is(p, "true") || tok_is(p, "false") ||
            tok_is(p, "null")) {
            rc = node_new(p,
                          p->t == T_STR       ? K_LIT_STR
                          : p->t == T_NUM     ? K_LIT_NUM
                          : tok_is(p, "null") ? K_LIT_NULL
                                              : K_LIT_BOOL,
                          &k);
            if (rc)
                return rc;
            c->nodes[k].str = p->sval;
            c->nodes[k].strn = p->svaln;
            c->nodes[k].num = p->num;
            c->nodes[k].boolean = tok_is(p, "true");
            tmp[n++] = k;
            rc = advance(p);
        } else {
            return perr(p, p->tstart,
                        "a list holds literals only (strings, numbers, true, "
                        "false, null)");
        }
        if (!rc && p->t == T_COMMA)
            rc = advance(p);
        else if (!rc && p->t != T_RB)
            return perr(p, p->tstart, "expected ',' or ']'");
    }
    if (rc)
        return rc;
    c->nodes[*out].first = (uint32_t)c->nkids;
    c->nodes[*out].count = n;
    memcpy(c->kids + c->nkids, tmp, n * sizeof *tmp);
    c->nkids += n;
    return advance(p);
}

static const struct {
    const char *name;
    enum kind kind;
    int nargs;
    bool path_first;
} funcs[] = {
    {"exists", K_EXISTS, 1, true}, {"any", K_ANY, 2, true},
    {"all", K_ALL, 2, true},       {"count", K_COUNT, -2, true},
    {"age_days", K_AGE, 1, false}, {"cidr_contains", K_CIDR, 2, false},
};

static int parse_call(struct parser *p, int *out)
{
    size_t at = p->tstart;
    size_t f = 0, nf = sizeof funcs / sizeof *funcs;
    while (f < nf &&
           !(strlen(funcs[f].name) == p->tlen && !memcmp(funcs[f].name, p->s + p->tstart, p->tlen)))
        f++;
    if (f == nf)
        return perr(p, at, "unknown function '%.*s'", (int)(p->tlen > 64 ? 64 : p->tlen),
                    p->s + p->tstart);
    int rc = node_new(p, funcs[f].kind, out);
    if (!rc)
        rc = advance(p); /* name */
    if (!rc)
        rc = expect(p, T_LP, "'('");
    int a = -1, b = -1;
    if (!rc && funcs[f].path_first) {
        if (p->t != T_IDENT && p->t != T_STR && p->t != T_AT && p->t != T_DOLLAR)
            return perr(p, p->tstart, "%s() takes a path first", funcs[f].name);
        rc = parse_path(p, &a);
    } else if (!rc) {
        rc = parse_expr(p, &a);
    }
    /* nargs -2: a second argument is optional (count(path[, cond])). */
    if (!rc && (funcs[f].nargs == 2 || (funcs[f].nargs == -2 && p->t == T_COMMA))) {
        rc = expect(p, T_COMMA, "','");
        bool lambda = funcs[f].nargs < 0 || funcs[f].kind == K_ANY || funcs[f].kind == K_ALL;
        p->in_lambda += lambda;
        if (!rc)
            rc = parse_expr(p, &b);
        p->in_lambda -= lambda;
    }
    if (!rc && p->t == T_COMMA)
        return perr(p, p->tstart, "%s() takes %s argument%s", funcs[f].name,
                    funcs[f].nargs == 1   ? "1"
                    : funcs[f].nargs == 2 ? "2"
                                          : "1 or 2",
                    funcs[f].nargs == 1 ? "" : "s");
    if (!rc)
        rc = expect(p, T_RP, "')'");
    if (!rc) {
        p->c->nodes[*out].a = a;
        p->c->nodes[*out].b = b;
    }
    return rc;
}

static int parse_operand(struct parser *p, int *out)
{
    struct cond *c = p->c;
    int rc;
    switch (p->t) {
    case T_STR:
    case T_NUM:
        if ((rc = node_new(p, p->t == T_STR ? K_LIT_STR : K_LIT_NUM, out)))
            return rc;
        c->nodes[*out].str = p->sval;
        c->nodes[*out].strn = p->svaln;
        c->nodes[*out].num = p->num;
        return advance(p);
    case T_LB: return parse_list(p, out);
    case T_LP:
        if ((rc = advance(p)) || (rc = parse_expr(p, out)))
            return rc;
        return expect(p, T_RP, "')'");
    case T_AT:
    case T_DOLLAR: return parse_path(p, out);
    case T_IDENT: break;
    case T_END: return perr(p, p->tstart, "expected an operand, found the end");
    default: return perr(p, p->tstart, "expected an operand");
    }
    if (tok_is(p, "true") || tok_is(p, "false") || tok_is(p, "null")) {
        if ((rc = node_new(p, tok_is(p, "null") ? K_LIT_NULL : K_LIT_BOOL, out)))
            return rc;
        c->nodes[*out].boolean = tok_is(p, "true");
        return advance(p);
    }
    if (tok_is(p, "and") || tok_is(p, "or") || tok_is(p, "in") || tok_is(p, "matches"))
        return perr(p, p->tstart, "expected an operand, found '%.*s'", (int)p->tlen,
                    p->s + p->tstart);
    /* An identifier followed by '(' is a call. */
    size_t i = p->tstart + p->tlen;
    while (i < p->n && (p->s[i] == ' ' || p->s[i] == '\t'))
        i++;
    if (i < p->n && p->s[i] == '(')
        return parse_call(p, out);
    return parse_path(p, out);
}

static int parse_cmp(struct parser *p, int *out)
{
    static const char *const ops[] = {"==", "!=", "<", "<=", ">", ">="};
    int l, r, rc = parse_operand(p, &l);
    if (rc)
        return rc;
    if (p->t == T_OP) {
        size_t k = 0;
        while (!tok_is(p, ops[k]))
            k++;
        if ((rc = node_new(p, K_CMP, out)) || (rc = advance(p)) || (rc = parse_operand(p, &r)))
            return rc;
        p->c->nodes[*out].cmp = (uint8_t)k;
    } else if (tok_is(p, "in")) {
        if ((rc = node_new(p, K_IN, out)) || (rc = advance(p)))
            return rc;
        if (p->t != T_LB)
            return perr(p, p->tstart, "'in' takes a list: [\"a\", \"b\"]");
        if ((rc = parse_list(p, &r)))
            return rc;
    } else if (tok_is(p, "matches")) {
        if ((rc = node_new(p, K_MATCHES, out)) || (rc = advance(p)))
            return rc;
        if (p->t != T_STR)
            return perr(p, p->tstart, "'matches' takes a string pattern");
        if ((rc = parse_operand(p, &r)))
            return rc;
    } else {
        *out = l;
        return 0;
    }
    p->c->nodes[*out].a = l;
    p->c->nodes[*out].b = r;
    return 0;
}

static int parse_unary(struct parser *p, int *out)
{
    if (!tok_is(p, "not"))
        return parse_cmp(p, out);
    if (++p->depth > COND_DEPTH_MAX)
        return perr(p, p->tstart, "nesting deeper than %d", COND_DEPTH_MAX);
    int a, rc = node_new(p, K_NOT, out);
    if (!rc)
        rc = advance(p);
    if (!rc)
        rc = parse_unary(p, &a);
    if (!rc)
        p->c->nodes[*out].a = a;
    p->depth--;
    return rc;
}

static int parse_chain(struct parser *p, int *out, const char *word, enum kind k,
                       int (*sub)(struct parser *, int *))
{
    int l, r, rc = sub(p, &l);
    while (!rc && tok_is(p, word)) {
        int nd = -1;
        if ((rc = node_new(p, k, &nd)) || (rc = advance(p)) || (rc = sub(p, &r)))
            return rc;
        p->c->nodes[nd].a = l;
        p->c->nodes[nd].b = r;
        l = nd;
    }
    *out = l;
    return rc;
}

static int parse_and(struct parser *p, int *out)
{
    return parse_chain(p, out, "and", K_AND, parse_unary);
}

static int parse_expr(struct parser *p, int *out)
{
    if (++p->depth > COND_DEPTH_MAX)
        return perr(p, p->tstart, "nesting deeper than %d", COND_DEPTH_MAX);
    int rc = parse_chain(p, out, "or", K_OR, parse_and);
    p->depth--;
    return rc;
}

/* ====================================================================== roots */

/* Collects top-level paths (outside lambda bodies) in source order. */
static void collect_roots(struct cond *c, int i)
{
    if (i < 0)
        return;
    const struct node *nd = &c->nodes[i];
    if (nd->kind == K_PATH) {
        if (nd->at)
            return;
        for (size_t k = 0; k < c->nroots; k++)
            if (!strcmp(c->root_text[k], nd->str))
                return;
        if (c->nroots < COND_ROOTS_MAX) {
            c->roots[c->nroots] = i;
            c->root_text[c->nroots++] = (char *)nd->str;
        }
        return;
    }
    if (nd->kind == K_LIST)
        return;
    collect_roots(c, nd->a);
    if (nd->kind != K_ANY && nd->kind != K_ALL && nd->kind != K_COUNT)
        collect_roots(c, nd->b);
}

int cond_compile(const char *src, size_t n, struct cond **out, unsigned *col, char *msg,
                 size_t msgcap)
{
    *out = NULL;
    *col = 0;
    if (msgcap)
        msg[0] = '\0';
    if (n > COND_SRC_MAX) {
        *col = COND_SRC_MAX + 1;
        snprintf(msg, msgcap, "condition is over %d bytes", COND_SRC_MAX);
        return CAIRN_EINVAL;
    }
    struct cond *c = calloc(1, sizeof *c);
    if (!c)
        return CAIRN_ENOMEM;
    c->nodes = calloc(COND_NODES_MAX, sizeof *c->nodes);
    c->segs = calloc(n + 1, sizeof *c->segs);
    c->kids = calloc(n + 1, sizeof *c->kids);
    c->poolcap = 3 * n + 64;
    c->pool = malloc(c->poolcap);
    if (!c->nodes || !c->segs || !c->kids || !c->pool) {
        cond_free(c);
        return CAIRN_ENOMEM;
    }
    struct parser p = {.s = src, .n = n, .c = c, .msg = msg, .msgcap = msgcap};
    int rc = lex(&p);
    if (!rc && p.t == T_END)
        rc = perr(&p, 0, "empty condition");
    if (!rc)
        rc = parse_expr(&p, &c->root);
    if (!rc && p.t != T_END)
        rc = perr(&p, p.tstart, "unexpected '%.*s' after the condition",
                  (int)(p.tlen > 32 ? 32 : p.tlen), src + p.tstart);
    if (rc) {
        *col = p.err_col ? p.err_col : 1;
        if (rc == CAIRN_ENOMEM)
            snprintf(msg, msgcap, "out of memory");
        cond_free(c);
        return rc;
    }
    collect_roots(c, c->root);
    *out = c;
    return 0;
}

void cond_free(struct cond *c)
{
    if (!c)
        return;
    free(c->nodes);
    free(c->segs);
    free(c->kids);
    free(c->pool);
    free(c);
}

/* ====================================================================== evaluation */

enum vt { V_MISSING, V_NIL, V_BOOL, V_NUM, V_STR, V_OBJ };

struct val {
    enum vt t;
    bool b;
    double n;
    const char *s;
    size_t sn;
    const msgpack_object *o;
};

struct ev {
    const struct cond *c;
    const msgpack_object *root;
    int64_t now;
    uint64_t steps;
    bool budget;
};

static const msgpack_object *map_get(const msgpack_object *m, const char *k, size_t kn)
{
    if (!m || m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *key = &m->via.map.ptr[i].key;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == kn &&
            !memcmp(key->via.str.ptr, k, kn))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static const msgpack_object *resolve(const struct cond *c, const struct node *nd,
                                     const msgpack_object *root, const msgpack_object *scope)
{
    const msgpack_object *o = nd->from_root ? root : scope;
    for (uint32_t i = 0; o && i < nd->count; i++) {
        const struct seg *sg = &c->segs[nd->first + i];
        if (o->type == MSGPACK_OBJECT_ARRAY && sg->n && sg->p[0] >= '0' && sg->p[0] <= '9') {
            unsigned long ix = strtoul(sg->p, NULL, 10);
            o = ix < o->via.array.size ? &o->via.array.ptr[ix] : NULL;
        } else {
            o = map_get(o, sg->p, sg->n);
        }
    }
    return o;
}

static struct val of_obj(const msgpack_object *o)
{
    struct val v = {.t = V_MISSING};
    if (!o)
        return v;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: v.t = V_NIL; break;
    case MSGPACK_OBJECT_BOOLEAN: v.t = V_BOOL, v.b = o->via.boolean; break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: v.t = V_NUM, v.n = (double)o->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: v.t = V_NUM, v.n = (double)o->via.i64; break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: v.t = V_NUM, v.n = o->via.f64; break;
    case MSGPACK_OBJECT_STR: v.t = V_STR, v.s = o->via.str.ptr, v.sn = o->via.str.size; break;
    default: v.t = V_OBJ, v.o = o; break;
    }
    return v;
}

static struct val eval(struct ev *e, int i, const msgpack_object *scope);

static bool truth(struct ev *e, int i, const msgpack_object *scope)
{
    struct val v = eval(e, i, scope);
    return v.t == V_BOOL && v.b;
}

static struct val vbool(bool b)
{
    return (struct val){.t = V_BOOL, .b = b};
}

/* -1, 0, 1, or 2 when not comparable (different kinds, missing, objects). */
static int compare(const struct val *a, const struct val *b)
{
    if (a->t == V_MISSING || b->t == V_MISSING || a->t != b->t)
        return 2;
    switch (a->t) {
    case V_NIL: return 0;
    case V_BOOL: return a->b == b->b ? 0 : a->b ? 1 : -1;
    case V_NUM: return a->n < b->n ? -1 : a->n > b->n ? 1 : 0;
    case V_STR: {
        size_t m = a->sn < b->sn ? a->sn : b->sn;
        int r = m ? memcmp(a->s, b->s, m) : 0;
        if (!r)
            r = a->sn < b->sn ? -1 : a->sn > b->sn;
        return r < 0 ? -1 : r > 0;
    }
    default: return a->o && b->o && msgpack_object_equal(*a->o, *b->o) ? 0 : 2;
    }
}

static bool cmp_holds(enum cmp op, const struct val *a, const struct val *b)
{
    if (a->t == V_MISSING || b->t == V_MISSING)
        return false;
    int r = compare(a, b);
    switch (op) {
    case C_EQ: return r == 0;
    case C_NE: return r != 0;
    case C_LT: return r == -1;
    case C_LE: return r == -1 || r == 0;
    case C_GT: return r == 1;
    case C_GE: return r == 1 || r == 0;
    }
    return false;
}

static bool glob(const char *s, size_t sn, const char *g, size_t gn)
{
    size_t si = 0, gi = 0, star = SIZE_MAX, mark = 0;
    while (si < sn) {
        if (gi < gn && (g[gi] == '?' || g[gi] == s[si])) {
            si++, gi++;
        } else if (gi < gn && g[gi] == '*') {
            star = gi++;
            mark = si;
        } else if (star != SIZE_MAX) {
            gi = star + 1;
            si = ++mark;
        } else {
            return false;
        }
    }
    while (gi < gn && g[gi] == '*')
        gi++;
    return gi == gn;
}

/* Parses "addr" or "addr/len" (v4 or v6) into 16 bytes + family + prefix. */
static bool parse_net(const struct val *v, uint8_t addr[16], int *fam, int *plen)
{
    char buf[64];
    if (v->t != V_STR || v->sn == 0 || v->sn >= sizeof buf)
        return false;
    memcpy(buf, v->s, v->sn);
    buf[v->sn] = '\0';
    char *slash = strchr(buf, '/');
    if (slash)
        *slash++ = '\0';
    memset(addr, 0, 16);
    *fam = strchr(buf, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(*fam, buf, addr) != 1)
        return false;
    int maxp = *fam == AF_INET ? 32 : 128;
    *plen = maxp;
    if (slash) {
        char *end;
        long l = strtol(slash, &end, 10);
        if (end == slash || *end || l < 0 || l > maxp)
            return false;
        *plen = (int)l;
    }
    return true;
}

static bool cidr_contains(const struct val *net, const struct val *x)
{
    uint8_t a[16], b[16];
    int fa, fb, pa, pb;
    if (!parse_net(net, a, &fa, &pa) || !parse_net(x, b, &fb, &pb) || fa != fb || pb < pa)
        return false;
    for (int bit = 0; bit < pa; bit++) {
        uint8_t m = (uint8_t)(0x80 >> (bit % 8));
        if ((a[bit / 8] & m) != (b[bit / 8] & m))
            return false;
    }
    return true;
}

static struct val age_days(struct ev *e, const struct val *v)
{
    int64_t t;
    if (v->t == V_STR) {
        if (cairn_time_parse(v->s, v->sn, &t))
            return (struct val){.t = V_MISSING};
    } else if (v->t == V_NUM && v->n > -1e11 && v->n < 1e11) {
        t = (int64_t)(v->n * 1e9);
    } else {
        return (struct val){.t = V_MISSING};
    }
    return (struct val){.t = V_NUM, .n = (double)(e->now - t) / 86400e9};
}

static struct val quantify(struct ev *e, const struct node *nd, const msgpack_object *scope)
{
    bool any = nd->kind == K_ANY;
    const msgpack_object *o = resolve(e->c, &e->c->nodes[nd->a], e->root, scope);
    if (!o || o->type == MSGPACK_OBJECT_NIL)
        return vbool(!any);
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return vbool(truth(e, nd->b, o));
    uint32_t n = o->via.array.size < COND_LIST_MAX ? o->via.array.size : COND_LIST_MAX;
    for (uint32_t i = 0; i < n && !e->budget; i++)
        if (truth(e, nd->b, &o->via.array.ptr[i]) == any)
            return vbool(any);
    return vbool(!any);
}

static struct val eval(struct ev *e, int i, const msgpack_object *scope)
{
    const struct node *nd = &e->c->nodes[i];
    if (++e->steps > COND_STEPS_MAX) {
        e->budget = true;
        return (struct val){.t = V_MISSING};
    }
    switch ((enum kind)nd->kind) {
    case K_LIT_NULL: return (struct val){.t = V_NIL};
    case K_LIT_BOOL: return vbool(nd->boolean);
    case K_LIT_NUM: return (struct val){.t = V_NUM, .n = nd->num};
    case K_LIT_STR: return (struct val){.t = V_STR, .s = nd->str, .sn = nd->strn};
    case K_LIST: return (struct val){.t = V_MISSING}; /* only under `in` */
    case K_PATH: return of_obj(resolve(e->c, nd, e->root, scope));
    case K_AND: return vbool(truth(e, nd->a, scope) && truth(e, nd->b, scope));
    case K_OR: return vbool(truth(e, nd->a, scope) || truth(e, nd->b, scope));
    case K_NOT: return vbool(!truth(e, nd->a, scope));
    case K_CMP: {
        struct val a = eval(e, nd->a, scope), b = eval(e, nd->b, scope);
        return vbool(cmp_holds((enum cmp)nd->cmp, &a, &b));
    }
    case K_IN: {
        struct val a = eval(e, nd->a, scope);
        const struct node *l = &e->c->nodes[nd->b];
        for (uint32_t k = 0; k < l->count && a.t != V_MISSING; k++) {
            struct val b = eval(e, e->c->kids[l->first + k], scope);
            if (compare(&a, &b) == 0)
                return vbool(true);
        }
        return vbool(false);
    }
    case K_MATCHES: {
        struct val a = eval(e, nd->a, scope), g = eval(e, nd->b, scope);
        return vbool(a.t == V_STR && glob(a.s, a.sn, g.s, g.sn));
    }
    case K_EXISTS: {
        const msgpack_object *o = resolve(e->c, &e->c->nodes[nd->a], e->root, scope);
        return vbool(o && o->type != MSGPACK_OBJECT_NIL);
    }
    case K_ANY:
    case K_ALL: return quantify(e, nd, scope);
    case K_COUNT: {
        const msgpack_object *o = resolve(e->c, &e->c->nodes[nd->a], e->root, scope);
        double n = !o || o->type == MSGPACK_OBJECT_NIL ? 0
                   : o->type == MSGPACK_OBJECT_ARRAY   ? o->via.array.size
                   : o->type == MSGPACK_OBJECT_MAP     ? o->via.map.size
                                                       : 1;
        if (nd->b >= 0 && n > 0) { /* count(list, cond): the elements where cond holds */
            uint32_t m = o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 1;
            n = 0;
            for (uint32_t k = 0; k < m && k < COND_LIST_MAX && !e->budget; k++)
                n += truth(e, nd->b, o->type == MSGPACK_OBJECT_ARRAY ? &o->via.array.ptr[k] : o);
        }
        return (struct val){.t = V_NUM, .n = n};
    }
    case K_AGE: {
        struct val a = eval(e, nd->a, scope);
        return age_days(e, &a);
    }
    case K_CIDR: {
        struct val a = eval(e, nd->a, scope), b = eval(e, nd->b, scope);
        return vbool(cidr_contains(&a, &b));
    }
    }
    return (struct val){.t = V_MISSING};
}

bool cond_eval(const struct cond *c, const msgpack_object *attrs, int64_t now_ns, uint64_t *steps,
               bool *budget_hit)
{
    static const msgpack_object empty = {.type = MSGPACK_OBJECT_MAP};
    const msgpack_object *root = attrs && attrs->type == MSGPACK_OBJECT_MAP ? attrs : &empty;
    struct ev e = {.c = c, .root = root, .now = now_ns};
    bool ok = truth(&e, c->root, root) && !e.budget;
    if (steps)
        *steps += e.steps;
    if (budget_hit)
        *budget_hit = e.budget;
    return ok;
}

size_t cond_roots(const struct cond *c)
{
    return c->nroots;
}

const char *cond_root_text(const struct cond *c, size_t i)
{
    return i < c->nroots ? c->root_text[i] : NULL;
}

const msgpack_object *cond_root_value(const struct cond *c, size_t i, const msgpack_object *attrs)
{
    if (i >= c->nroots || !attrs || attrs->type != MSGPACK_OBJECT_MAP)
        return NULL;
    return resolve(c, &c->nodes[c->roots[i]], attrs, attrs);
}
