/*
 * forward_input -- the input file of `dsacp forward`, parsed and checked against a model config
 * before anything is allocated for the run. Library-internal (not in include/dsacp.h); calls
 * core and io/safetensors.
 *
 * The file is a safetensors file with two tensors:
 *   input_ids I32 [R, Lmax]: request r's tokens, then -1 up to Lmax (no token after a -1);
 *   schedule  I32 [S, R]:    tokens of request r fed in step s (>= 0); each request's column
 *                            sums to its length.
 * Every id is in [0, vocab_size); no request is longer than max_position_embeddings. Every
 * buffer size the run derives from the file and the config is computed once here, overflow-checked
 * and bounded by DSACP_FORWARD_MAX_BYTES. Errors name the file and the tensor or config field.
 */
#ifndef DSACP_FORWARD_INPUT_H
#define DSACP_FORWARD_INPUT_H

#include "core/core.h"
#include "io/safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest buffer (in bytes) a forward run allocates: 1 TiB, or half the address space. */
#define DSACP_FORWARD_MAX_BYTES \
    ((uint64_t)SIZE_MAX / 2 < ((uint64_t)1 << 40) ? (size_t)(SIZE_MAX / 2) : (size_t)((uint64_t)1 << 40))

/* Overflow-checked size of a buffer: elem_size x factors[0] x ... x factors[n-1] bytes. Fails
 * (false, *out untouched) when a factor is negative, the product overflows size_t, or it exceeds
 * `limit` bytes. The one place a size computed from file or config values is multiplied. */
bool dsacp_size_product(size_t elem_size, int n, const int64_t *factors, size_t limit, size_t *out);

typedef struct dsacp_forward_input {
    int64_t requests;        /* R >= 1 */
    int64_t max_len;         /* Lmax >= 1 */
    int64_t steps;           /* S >= 0 */
    int32_t *input_ids;      /* I32 [R][Lmax], a copy (the file may be closed) */
    int32_t *schedule;       /* I32 [S][R], a copy */
    int64_t *length;         /* [R]: tokens of each request (position of its first -1) */
    int64_t total_tokens;    /* sum of length */
    int64_t max_step_tokens; /* the most tokens any one step feeds (T of the largest step) */
} dsacp_forward_input;

/* Element counts of the run's buffers, each checked by dsacp_size_product against
 * DSACP_FORWARD_MAX_BYTES (V = vocab_size, K = index_topk, NL = num_hidden_layers, Tmax =
 * max_step_tokens). */
typedef struct dsacp_forward_sizes {
    size_t logits;      /* F32 [R][Lmax][V] */
    size_t step_logits; /* F32 [Tmax][V] */
    size_t step_ids;    /* I32 [Tmax] */
    size_t topk;        /* I32 [NL][R][Lmax][K]; 0 without dump_topk */
    size_t step_topk;   /* I32 [NL][Tmax][K]; 0 without dump_topk */
} dsacp_forward_sizes;

/* Validates an open safetensors file as a forward input for `cfg` and fills `out` (free it with
 * dsacp_forward_input_free; after a failure it is left zeroed). Messages start with the file's
 * path. DSACP_EFORMAT/ESHAPE for a malformed file, DSACP_ERANGE for an id outside the
 * vocabulary or a request longer than max_position_embeddings, DSACP_EINVAL for a config
 * without a vocabulary or layers, DSACP_ENOMEM. */
int dsacp_forward_input_from_file(const dsacp_st_file *f, const dsacp_config *cfg, dsacp_forward_input *out);
/* The same over a file image in memory (dsacp_st_open_memory); `path` is used in messages only. */
int dsacp_forward_input_parse(const void *data, size_t len, const char *path, const dsacp_config *cfg,
                              dsacp_forward_input *out);
void dsacp_forward_input_free(dsacp_forward_input *in);

/* The sizes of the run's buffers; DSACP_ERANGE naming `path`, the buffer and the config fields
 * when one exceeds DSACP_FORWARD_MAX_BYTES. */
int dsacp_forward_input_sizes(const dsacp_forward_input *in, const dsacp_config *cfg, bool dump_topk,
                              const char *path, dsacp_forward_sizes *out);

#endif
