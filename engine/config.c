/*
 * config.c — the config file, checked before anything reads it.
 *
 * Each setting is read where it is used: cli_serve.c (listen, secrets, the
 * HTTP limits, the writer's log section), engine.c (apply_threads,
 * limits.payload_max) and each handler's open (handlers.<name>); each of
 * those readers keeps its default for a value it cannot use. Checked here
 * first, a misspelt key or a value of the wrong type or range is refused at
 * start with its JSON pointer and the reason, instead of quietly meaning
 * the default — `"offline_after_s": "600"` must not leave devices going
 * offline after 300 s.
 *
 * The document's shape is a JSON Schema, validated by schemas.h as
 * payloads are. Each handler's section is checked against the schema the
 * handler declares (struct handler.config_schema), so a new handler's
 * settings are checked without a change here; a section for a handler
 * that is not registered, or for one that declares no settings, is
 * refused.
 */
#include "engine.h"

#include <stdio.h>
#include <string.h>

/* Everything but `handlers`, whose sections the handlers describe. Bounds
 * are the readers': tick_interval_ms as the --tick-interval-ms flag,
 * batch_max CAIRN_BATCH_MAX_CEILING, queue_max CAIRN_QUEUE_MAX_CEILING,
 * payload_max CAIRN_PAYLOAD_MAX_CEILING,
 * 8 Stripe secrets per tenant (API_STRIPE_SECRETS_MAX); counts read into
 * 32-bit fields stop at 2^32 - 1. */
#define U32 "{\"type\":\"integer\",\"minimum\":1,\"maximum\":4294967295}"
#define SIZE "{\"type\":\"integer\",\"minimum\":1}"
static const char config_schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"listen\":{\"type\":\"string\",\"minLength\":1},"
    "\"jwt_secret_file\":{\"type\":\"string\",\"minLength\":1},"
    "\"stripe_secrets\":{\"type\":\"object\",\"additionalProperties\":"
    "{\"type\":\"array\",\"minItems\":1,\"maxItems\":8,"
    "\"items\":{\"type\":\"string\",\"minLength\":1}}},"
    "\"insecure_no_auth\":{\"type\":\"boolean\"},"
    "\"tick_interval_ms\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":3600000},"
    "\"apply_threads\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":2},"
    "\"limits\":{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"payload_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":16777216},"
    "\"header_max\":" SIZE ",\"body_max\":" SIZE ",\"batch_max\":" SIZE ","
    "\"header_timeout_ms\":" U32 ",\"body_timeout_ms\":" U32 ",\"idle_timeout_ms\":" U32 ","
    "\"max_connections\":" U32 ",\"max_sse_subscribers\":" U32 ",\"min_seq_wait_ms\":" U32 "}},"
    "\"log\":{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
    "\"batch_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":65536},"
    "\"batch_wait_us\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":4294967295},"
    "\"queue_max\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1048576}}},"
    "\"handlers\":{\"type\":\"object\"}}}";
#undef U32
#undef SIZE
_Static_assert(CAIRN_PAYLOAD_MAX_CEILING == 16777216, "limits.payload_max in config_schema");
_Static_assert(CAIRN_BATCH_MAX_CEILING == 65536, "log.batch_max in config_schema");
_Static_assert(CAIRN_QUEUE_MAX_CEILING == 1048576, "log.queue_max in config_schema");

/* Validates `doc` against the schema text `schema`; the error names the
 * value by its pointer from the document's root (`where` its prefix). */
static int check(const char *schema, const json_t *doc, const char *where, struct cairn_error *e)
{
    json_error_t je;
    struct schema *s = NULL;
    json_t *sd = json_loads(schema, 0, &je);
    int rc = sd ? schema_new(&s, sd, e) : CAIRN_EINVAL;
    json_decref(sd);
    if (rc) /* a bad built-in schema: a bug, said as such */
        return cairn_error_set(e, "config", where, "the schema of %s does not compile",
                               *where ? where : "the config");
    rc = schema_validate(s, doc, where, e);
    schema_free(s);
    return rc;
}

/* The integer a real with no fraction stands for, as a new jansson
 * integer; NULL for anything else (2^53 and beyond: a double no longer
 * holds every integer). */
static json_t *integral(const json_t *v)
{
    double d = json_is_real(v) ? json_real_value(v) : 0.5;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != (double)(int64_t)d)
        return NULL;
    return json_integer((json_int_t)d);
}

void engine_config_normalize(json_t *v)
{
    const char *k;
    json_t *item, *n;
    size_t i;
    json_object_foreach(v, k, item)
    {
        if ((n = integral(item)))
            json_object_set_new(v, k, n);
        else
            engine_config_normalize(item);
    }
    json_array_foreach(v, i, item)
    {
        if ((n = integral(item)))
            json_array_set_new(v, i, n);
        else
            engine_config_normalize(item);
    }
}

int engine_config_check(const json_t *config, const struct handler *const *table,
                        struct cairn_error *e)
{
    char where[CAIRN_ERR_FIELD_MAX];
    if (!config)
        return 0;
    int rc = check(config_schema, config, "", e);
    const char *name;
    const json_t *section;
    json_object_foreach((json_t *)json_object_get(config, "handlers"), name, section)
    {
        if (rc)
            break;
        const struct handler *h = NULL;
        for (size_t i = 0; table[i] && !h; i++)
            h = strcmp(table[i]->name, name) ? NULL : table[i];
        snprintf(where, sizeof where, "/handlers/%s", name);
        if (!h)
            rc = cairn_error_set(e, "unknown_field", where, "no handler is named %s", name);
        else if (!h->config_schema && !(json_is_object(section) && !json_object_size(section)))
            rc = cairn_error_set(e, "unknown_field", where, "the %s handler has no settings", name);
        else if (h->config_schema)
            rc = check(h->config_schema, section, where, e);
    }
    if (rc && e && e->code) { /* one line a CLI prints: where, then why */
        char msg[CAIRN_ERR_FIELD_MAX + CAIRN_ERR_MSG_MAX + 4];
        snprintf(msg, sizeof msg, "%s: %s", *e->field ? e->field : "the config", e->message);
        size_t n = strnlen(msg, sizeof e->message - 1);
        memcpy(e->message, msg, n);
        e->message[n] = '\0';
        e->code = "config";
    }
    return rc;
}
