/*
 * cond.h — the compliance condition language: compiled once when a rule is
 * defined, evaluated against a resource's `attributes` (msgpack map).
 *
 * A condition is the COMPLIANT state: a resource passes a rule when its
 * condition is true and fails (a violation) when it is false.
 *
 *   expr    := or
 *   or      := and ("or" and)*
 *   and     := unary ("and" unary)*
 *   unary   := "not" unary | cmp
 *   cmp     := operand [ ("=="|"!="|"<"|"<="|">"|">=") operand
 *                      | "in" list | "matches" STRING ]
 *   operand := STRING | NUMBER | true | false | null | list | path
 *            | FUNC "(" args ")" | "(" expr ")"
 *   list    := "[" [operand ("," operand)*] "]"        (literals only)
 *   path    := seg ("." seg)*   seg: identifier, digits (array index) or
 *              "quoted" (keys such as "aws:SecureTransport");
 *              "@" is the current element inside any/all, "$" the root
 *   FUNC    := exists(path) any(path, expr) all(path, expr) count(path[, expr])
 *              age_days(operand) cidr_contains(operand, operand)
 *
 * Semantics (deterministic, no allocation while evaluating):
 *  - A path that does not resolve is MISSING. Every comparison, `in` and
 *    `matches` with a MISSING operand is false — `!=` included — so a
 *    positive assertion about a missing attribute fails the rule
 *    (`PublicAccessBlockConfiguration.BlockPublicAcls == true` fails for a
 *    bucket without the configuration). `not` negates the boolean result.
 *  - Values of different kinds are never equal (`!=` is true); numbers
 *    compare as doubles, strings bytewise; `<`… between other kinds: false.
 *  - A bare operand used as a condition is true only when it is boolean true.
 *  - any/all iterate an array's elements (at most COND_LIST_MAX; the rest are
 *    ignored); a missing or null value is an empty list (any: false, all:
 *    true); any other value is a one-element list (AWS policies allow a
 *    single Statement object or a single Action string). Inside, paths are
 *    relative to the element; "@" is the element itself, "$" the resource.
 *  - exists(p): p resolves to a non-null value. count(p): array length, map
 *    size, 0 when missing/null, else 1; count(p, cond): the elements (as
 *    any/all see them) for which cond holds.
 *  - age_days(x): days (fractional) from the timestamp x (RFC 3339 string or
 *    epoch seconds) to the event time; MISSING when x is missing or not a
 *    timestamp.
 *  - cidr_contains(net, x): x (an address or a CIDR, IPv4 or IPv6) lies
 *    within net; false when either is missing or malformed.
 *  - s matches "glob": `*` any run, `?` one byte; false for non-strings.
 *  - Bounds: source COND_SRC_MAX bytes, COND_NODES_MAX nodes, nesting
 *    COND_DEPTH_MAX, COND_SEGS_MAX segments per path, list literals
 *    COND_LIST_LIT_MAX items; evaluation stops after COND_STEPS_MAX steps
 *    and the rule then FAILS (recorded as "_error" in the failed values).
 */
#ifndef CAIRN_COND_H
#define CAIRN_COND_H

#include "common.h"

#include <msgpack.h>

#define COND_SRC_MAX 4096     /* a rule's condition; rules are written by people */
#define COND_NODES_MAX 512    /* ample for the shipped rules (largest ~60) */
#define COND_DEPTH_MAX 16     /* parse nesting: bounds evaluation recursion */
#define COND_SEGS_MAX 16      /* AWS documents nest < 8 levels */
#define COND_LIST_LIT_MAX 64  /* `in [...]` literals */
#define COND_LIST_MAX 1024    /* elements any/all visit (a SG holds <= 1000 rules) */
#define COND_STEPS_MAX 200000 /* per evaluation: nested any/all stay bounded */
#define COND_ROOTS_MAX 16     /* top-level paths reported as failed values */

struct cond;

/* Compiles src (n bytes). 0 with *out, or CAIRN_EINVAL with *col (1-based
 * byte column) and msg ("unknown function 'foo'"), or CAIRN_ENOMEM. */
int cond_compile(const char *src, size_t n, struct cond **out, unsigned *col, char *msg,
                 size_t msgcap);
void cond_free(struct cond *c);

/* Evaluates against attrs (a msgpack map, or NULL: no attributes) at event
 * time now_ns. true: compliant. *steps (optional) accumulates the steps
 * taken; *budget_hit (optional) is set when COND_STEPS_MAX was reached. */
bool cond_eval(const struct cond *c, const msgpack_object *attrs, int64_t now_ns, uint64_t *steps,
               bool *budget_hit);

/* The top-level paths the condition reads (outside any/all bodies, plus the
 * lists any/all iterate), in source order, deduplicated: i < cond_roots(c). */
size_t cond_roots(const struct cond *c);
/* The i-th such path as written ("IpPermissions"), and its value in attrs
 * (NULL when missing). */
const char *cond_root_text(const struct cond *c, size_t i);
const msgpack_object *cond_root_value(const struct cond *c, size_t i, const msgpack_object *attrs);

#endif
