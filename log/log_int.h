/*
 * log_int.h — shared between the files of log/ only.
 */
#ifndef CAIRN_LOG_INT_H
#define CAIRN_LOG_INT_H

#include "log.h"

#include <assert.h>
#include <openssl/evp.h>

/* Encodes the envelope of `in` at `seq` into b and computes its hash.
 * On return the stored bytes are b->data + LOG_HASH_LEN, b->len -
 * LOG_HASH_LEN long (the first LOG_HASH_LEN bytes are prev, hashed). */
int log_envelope_encode(struct cairn_buf *b, EVP_MD_CTX *md, const struct log_input *in,
                        uint64_t seq, int64_t ingested, const uint8_t prev[LOG_HASH_LEN],
                        uint8_t hash[LOG_HASH_LEN]);

/* log_event_hash with a caller's digest context (no allocation). */
void log_event_hash_md(EVP_MD_CTX *md, const struct log_event *ev, uint8_t out[LOG_HASH_LEN]);

/* The appender's head seq (the writer thread's view; no transaction). */
void log_head_cached(struct log *log, uint64_t *seq);
const struct log_config *log_config(struct log *log);

#endif
