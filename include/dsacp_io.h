/*
 * dsacp_io.h -- files around a model, for tools built on the library: safetensors files (read
 * mapped and validated, written atomically), the input file of `dsacp forward`, and a model's
 * inspection (every problem found while loading, the files and tensors, the NaN/Inf scan).
 *
 * Thread safety: a dsacp_st_file is immutable once opened (any threads); a dsacp_st_writer is
 * used by one thread at a time. Inspection reads a dsacp_model, which is immutable (dsacp.h).
 * Ownership: handles are freed with their free/close (NULL accepted); a dsacp_st_writer borrows
 * the data of every tensor added until it is written; a dsacp_forward_input is released with
 * dsacp_forward_input_free; strings returned point into their handle.
 */
#ifndef DSACP_IO_H
#define DSACP_IO_H

#include "dsacp.h"
#include "dsacp_util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* safetensors                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct dsacp_st_file dsacp_st_file;
/* Maps and validates a file: header length within the file and <= 100 MB, a JSON object, known
 * dtypes, shape x element size == byte range, ranges inside the data region without overlaps,
 * overflow-safe arithmetic, no duplicate names. Errors name the file and the tensor. */
int dsacp_st_open(const char *path, dsacp_st_file **out);
void dsacp_st_close(dsacp_st_file *f);

/* Writer: collect tensors (the data pointers stay valid until the write), then write the file
 * atomically through dsacp_out (dsacp_util.h: exclusive temporary beside it, fsync, rename, fsync
 * of the directory; an existing path that is not a regular file is refused). Tensors are laid
 * out sorted by name, 8-byte-aligned header. */
typedef struct dsacp_st_writer dsacp_st_writer;
int dsacp_st_writer_create(dsacp_st_writer **out);
/* Copies name and shape; `data` is borrowed until the file is written. nbytes must equal numel
 * x dtype size. */
int dsacp_st_writer_add(dsacp_st_writer *w, const char *name, dsacp_dtype dtype, int ndim, const int64_t *shape,
                        const void *data);
/* Writes the file atomically (dsacp_out, dsacp_util.h). */
int dsacp_st_writer_write(dsacp_st_writer *w, const char *path);
/* The same up to the commit: on DSACP_OK the whole file sits in o's temporary and the caller
 * finishes with dsacp_out_commit (or dsacp_out_abort) -- for files that should appear together.
 * On failure nothing is left behind. */
int dsacp_st_writer_stage(dsacp_st_writer *w, const char *path, dsacp_out *o);
void dsacp_st_writer_free(dsacp_st_writer *w);

/* ------------------------------------------------------------------------------------------ */
/* The forward input (docs/usage.md, `dsacp forward`)                                         */
/* ------------------------------------------------------------------------------------------ */

/* A safetensors file with input_ids I32 [R, Lmax] (request r's tokens, then -1 up to Lmax) and
 * schedule I32 [S, R] (tokens of request r fed in step s; each column sums to its length). Every
 * size derived from it is overflow-checked and bounded by DSACP_FORWARD_MAX_BYTES: the largest
 * buffer (in bytes) a forward run allocates, 1 TiB or half the address space. */
#define DSACP_FORWARD_MAX_BYTES \
    ((uint64_t)SIZE_MAX / 2 < ((uint64_t)1 << 40) ? (size_t)(SIZE_MAX / 2) : (size_t)((uint64_t)1 << 40))

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

/* Element counts of a forward run's buffers, each checked by dsacp_size_product against
 * DSACP_FORWARD_MAX_BYTES (V = vocab_size, K = index_topk, NL = num_hidden_layers, Tmax =
 * max_step_tokens). */
typedef struct dsacp_forward_sizes {
    size_t logits;      /* F32 [R][Lmax][V] */
    size_t step_logits; /* F32 [Tmax][V] */
    size_t step_ids;    /* I32 [Tmax] */
    size_t topk;        /* I32 [NL][R][Lmax][K]; 0 without dump_topk */
    size_t step_topk;   /* I32 [NL][Tmax][K]; 0 without dump_topk */
} dsacp_forward_sizes;

/* Overflow-checked elem_size x factors[0] x ... x factors[n-1] bytes, at most `limit`; false
 * (and *out untouched) when a factor is negative or the product overflows or exceeds it. The
 * one place a size computed from file or config values is multiplied. */
bool dsacp_size_product(size_t elem_size, int n, const int64_t *factors, size_t limit, size_t *out);
/* Validates an open file as a forward input for `cfg` and fills `out` (free it with
 * dsacp_forward_input_free; zeroed after a failure). Messages start with the file's path.
 * DSACP_EFORMAT/ESHAPE for a malformed file, DSACP_ERANGE for an id outside the vocabulary or a
 * request longer than max_position_embeddings, DSACP_EINVAL for a config without a vocabulary
 * or layers, DSACP_ENOMEM. */
int dsacp_forward_input_from_file(const dsacp_st_file *f, const dsacp_config *cfg, dsacp_forward_input *out);
/* The same over a file image in memory; `path` is used in messages only. */
int dsacp_forward_input_parse(const void *data, size_t len, const char *path, const dsacp_config *cfg,
                              dsacp_forward_input *out);
void dsacp_forward_input_free(dsacp_forward_input *in);
/* The sizes of the run's buffers; DSACP_ERANGE naming `path`, the buffer and the config fields
 * when one exceeds DSACP_FORWARD_MAX_BYTES. */
int dsacp_forward_input_sizes(const dsacp_forward_input *in, const dsacp_config *cfg, bool dump_topk, const char *path,
                              dsacp_forward_sizes *out);

/* ------------------------------------------------------------------------------------------ */
/* Model inspection                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* A problem found while loading: errors make dsacp_model_load fail; warnings (unexpected
 * tensors, skipped MTP layers) are only reported (inspect lists them). */
typedef struct dsacp_model_problem {
    bool error;
    char text[400];
} dsacp_model_problem;

/* Flags of dsacp_model_load_ex. */
enum {
    /* Return the model even when required tensors are missing or malformed (the status is still
     * the first error), so every problem can be listed. A model returned with errors must not be
     * run. */
    DSACP_LOAD_KEEP_GOING = 1u,
    /* Read config.json, the shard index and the safetensors headers only: names, dtypes, shapes,
     * offsets and sizes (against the file size) are validated, and no byte of weight data is read
     * (a tensor whose data is not aligned to its element size stays an unaligned view instead of
     * being copied). What inspect does; the cost is proportional to the headers, not the weights.
     * Such a model must not be run; dsacp_model_scan_finite may read it. */
    DSACP_LOAD_STRUCTURE_ONLY = 2u,
};

/* dsacp_model_load with DSACP_LOAD_* flags (0: exactly dsacp_model_load). */
int dsacp_model_load_ex(const char *dir, unsigned flags, dsacp_model **out);
int64_t dsacp_model_problem_count(const dsacp_model *m);
const dsacp_model_problem *dsacp_model_problem_at(const dsacp_model *m, int64_t i);
/* The files mapped. */
int64_t dsacp_model_file_count(const dsacp_model *m);
const char *dsacp_model_file_path(const dsacp_model *m, int64_t i);

/* One stored tensor as the model holds it (packed experts listed per expert). */
typedef struct dsacp_tensor_info {
    const char *name;   /* canonical name (borrowed from the model) */
    dsacp_dtype dtype;  /* F32, BF16, F16 or F8_E4M3 */
    int ndim;           /* 1 or 2 */
    int64_t rows, cols; /* 1-D: rows = 1, cols = n */
    int64_t scale_rows, scale_cols; /* F8_E4M3: its F32 weight_scale_inv blocks; else 0 */
    int64_t bytes;      /* stored bytes, block scales included */
} dsacp_tensor_info;
int64_t dsacp_model_weight_count(const dsacp_model *m);
/* Tensor i in [0, dsacp_model_weight_count); DSACP_ERANGE naming i otherwise. */
int dsacp_model_tensor_info(const dsacp_model *m, int64_t i, dsacp_tensor_info *out);

/* The non-finite scan: every stored floating-point value of the model's weights (F32, BF16, F16
 * and F8_E4M3 data, and the F32 weight_scale_inv block scales of FP8 weights; unaligned data is
 * fine) is checked for NaN and infinity. Loading never scans (the weights stay memory-mapped and
 * untouched); `dsacp inspect --scan-weights` does. It reads every byte of the canonical weights:
 * dsacp_model_scan_bytes(m) of them (a tied lm_head is the embedding, counted once).
 *
 * DSACP_OK when all are finite; otherwise DSACP_ERANGE, and dsacp_last_error() names the first
 * bad tensor (in name order) and the first bad flat index in it, e.g.
 * "model.layers.0.self_attn.q_a_proj.weight: non-finite value (nan) at index 17"
 * (a scale is named "<weight name minus .weight>.weight_scale_inv").
 * `on_bad` (may be NULL) is called with that message for every bad tensor, in name order, after
 * the scan. `progress` (may be NULL) is called with the bytes scanned so far and the total: at
 * the start (0), after each weight, and at the end (total == done); from any scan thread, never
 * by two at once. */
typedef void (*dsacp_scan_progress_fn)(int64_t done_bytes, int64_t total_bytes, void *ctx);
typedef void (*dsacp_scan_bad_fn)(const char *message, void *ctx);
int dsacp_model_scan_finite(const dsacp_model *m, dsacp_scan_progress_fn progress, dsacp_scan_bad_fn on_bad,
                            void *ctx);
int64_t dsacp_model_scan_bytes(const dsacp_model *m);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_IO_H */
