/*
 * schemas.h — JSON Schema (draft 2020-12 subset) validation of event
 * payloads, over jansson.
 *
 * One schema file per input type lives in a directory (`schemas/` in the
 * source tree): `<type>.json`, e.g. `telemetry.json`, `geofence.define.json`.
 * The set is loaded once at start-up; a new input type is added by dropping a
 * file in. Schemas are compiled when loaded (refs resolved, patterns
 * compiled), so validating is a walk with no allocation on the success path.
 *
 * The instance is the payload as ingest stores it, decoded msgpack
 * (schema_validate_mp); schema_validate takes a jansson value and encodes
 * it first (tests, tools). The schemas themselves are JSON documents.
 *
 * Supported keywords: type properties required additionalProperties enum
 * const minimum maximum exclusiveMinimum exclusiveMaximum minLength maxLength
 * minItems maxItems items $ref/$defs anyOf oneOf allOf not pattern
 * (POSIX extended regex) title description $schema $id $comment (annotations).
 * An unknown keyword is refused at load time, so a typo cannot silently
 * accept everything. String lengths count Unicode code points, as the
 * specification says.
 *
 * Error codes a failed validation sets (struct cairn_error.code):
 *   wrong_type      `type` did not match
 *   missing_field   a `required` property is absent
 *   unknown_field   a property not allowed by `additionalProperties`
 *   not_allowed     `enum` / `const` / `not` refused the value
 *   out_of_range    minimum / maximum / exclusiveMinimum / exclusiveMaximum
 *   too_long        maxLength / maxItems
 *   too_short       minLength / minItems
 *   pattern_mismatch `pattern`
 *   no_match        no branch of `anyOf` / `oneOf` matched
 *   ambiguous       more than one branch of `oneOf` matched
 *   too_deep        the instance nests deeper than CAIRN_DEPTH_MAX where the
 *                   schema descends into it (a limit, not a mismatch: it is
 *                   reported even from inside anyOf / oneOf / not)
 * `field` is a JSON pointer to the offending value, prefixed by the caller's
 * `where` ("/payload"), and the message says the reason in words
 * ("must be <= 90", "must be one of: online, offline, …").
 */
#ifndef CAIRN_SCHEMAS_H
#define CAIRN_SCHEMAS_H

#include "common.h"

#include <msgpack.h>

struct schema;     /* one compiled schema (immutable once compiled) */
struct schema_set; /* the schemas of a directory, by input type */

/* Compiles a schema document. The document is borrowed only during the
 * call. CAIRN_EINVAL with e set when the schema itself is invalid
 * (unsupported keyword, bad $ref, bad pattern, wrong keyword type): code
 * "invalid_schema", field the JSON pointer of the keyword in the schema.
 * `$ref` is a JSON pointer into the same document ("#", "#/$defs/x",
 * "#/definitions/x", any "#/…" naming a subschema); a ref cycle that never
 * descends into the instance is refused. `items` has its 2020-12 meaning
 * (one schema for every item). CAIRN_ENOMEM when memory runs out. */
int schema_new(struct schema **out, const json_t *doc, struct cairn_error *e);
void schema_free(struct schema *s);

/* Validates `instance`. Returns 0, or CAIRN_EINVAL with e describing the
 * first failure found. `where` (may be NULL or "") prefixes e->field. Thread
 * safe: a compiled schema is read-only. Bounded by CAIRN_DEPTH_MAX. */
int schema_validate(const struct schema *s, const json_t *instance, const char *where,
                    struct cairn_error *e);

/* The same over a decoded msgpack instance (strings must be valid UTF-8,
 * map keys strings: what ingest admits). */
int schema_validate_mp(const struct schema *s, const msgpack_object *instance, const char *where,
                       struct cairn_error *e);

/* The document the schema was compiled from (borrowed, valid until free). */
const json_t *schema_doc(const struct schema *s);

/* Loads every `*.json` file of `dir`; the type is the file name without
 * `.json`. CAIRN_EINVAL with e naming the file on a bad schema, CAIRN_EIO
 * when the directory cannot be read. Subdirectories (examples/) and hidden
 * files are skipped; a type name must be 1 to CAIRN_TYPE_MAX characters of
 * [A-Za-z0-9._-]. */
int schema_set_open(struct schema_set **out, const char *dir, struct cairn_error *e);
void schema_set_close(struct schema_set *set);

/* The schema for `type`, or NULL when the type is unknown. Borrowed until
 * the set is closed. */
const struct schema *schema_set_get(const struct schema_set *set, const char *type);
/* Types in the set, sorted by name: i in [0, count). Borrowed strings. */
size_t schema_set_count(const struct schema_set *set);
const char *schema_set_type(const struct schema_set *set, size_t i);

#endif
