/*
 * cli_int.h — shared by the `cairn` command's source files (engine/ only).
 */
#ifndef CAIRN_CLI_INT_H
#define CAIRN_CLI_INT_H

#include "engine.h"

#include <stdio.h>

/* Options every command takes. */
struct cli {
    const char *data;    /* --data DIR, $CAIRN_DATA, ./data */
    const char *schemas; /* --schemas DIR, $CAIRN_SCHEMAS, built-in */
    json_t *config;      /* --config FILE, $CAIRN_CONFIG: the config document */
    int argc;            /* the command's own arguments */
    char **argv;
};

/* Exit statuses. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_REJECTED = 2, CLI_UNVERIFIED = 3 };

/* Matches argv[*i] against `name` taking a value ("--from 5" or
 * "--from=5"); advances *i past what it used. */
bool cli_opt(struct cli *c, int *i, const char *name, const char **val);
/* Parses an unsigned integer option value or dies with a message. */
bool cli_u64(const char *name, const char *s, uint64_t *out);
/* Opens DATA/log. */
int cli_open_log(const struct cli *c, bool readonly, struct log **out);
/* Prints a one-line JSON error {"error": {...}} to stderr. */
void cli_fail(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Opens the engine on DATA (writer lock, state caught up to the log). */
int cli_open_engine(const struct cli *c, bool allow_engine_types, struct engine **out);
/* For reading the state: the engine when no other process writes (so the
 * state is first brought up to the log head), else the state read-only as
 * the writing process keeps it. Exactly one of *eng / *ro is set. */
int cli_open_state(const struct cli *c, struct engine **eng, struct proj **ro);

int cmd_append(struct cli *c);
int cmd_serve(struct cli *c);
int cmd_replay(struct cli *c);
int cmd_digest(struct cli *c);
int cmd_show(struct cli *c);
int cmd_stream(struct cli *c);
int cmd_tick(struct cli *c);
int cmd_token(struct cli *c);
int cmd_rules(struct cli *c);
int cmd_tail(struct cli *c);
int cmd_verify(struct cli *c);
int cmd_head(struct cli *c);
int cmd_backup(struct cli *c);

#endif
