/*
 * dsacp.h -- the public interface of libdsacp.
 *
 * dsacp runs DeepSeek Sparse Attention (DSA, the attention of DeepSeek-V3.2) over a paged KV
 * cache, on one process or across MPI ranks with context parallelism (dsacp_cp.h: the CP
 * group, options and counters; dsacp_mpi.h: a group from the caller's MPI communicator). This
 * header and those two are the documentation of the library: every buffer an entry point
 * accepts has its shape, dtype and layout written next to it.
 *
 * Conventions
 *  - Every function that can fail returns a dsacp_status: 0 on success, a negative code
 *    otherwise. dsacp_strerror() names the code; dsacp_last_error() gives the detailed,
 *    human-readable message of the last failure in the calling thread (it names the file and
 *    the field or tensor at fault).
 *  - Handles are opaque; each open, load or create call has a matching free that accepts NULL.
 *  - Shapes are written row-major, outermost first: "F32 [R][C]" is R rows of C floats, row
 *    stride C unless a stride argument says otherwise.
 *  - Sizes are int64_t; dtypes are the safetensors names (dsacp_dtype).
 *  - asserts are for programmer errors only; bad input is always a status code.
 *
 * Headers (all under the one prefix dsacp_; docs/api.md shows a whole program)
 *  - dsacp.h        this file: status codes, version, configs, models, presets, the engine;
 *  - dsacp_cp.h     context parallelism: the communicator, its counters, CP options and stats;
 *  - dsacp_mpi.h    a communicator from the caller's MPI_Comm (the only header needing mpi.h);
 *  - dsacp_serve.h  serving: admission, KV use, step times, the serving loop of `dsacp run`;
 *  - dsacp_util.h   the library's own helpers offered to tools: the error recorder, allocator,
 *                   checked sizes, clock, random generator, atomic output files;
 *  - dsacp_io.h     files: safetensors reader/writer, the forward input, model inspection;
 *  - dsacp_plan.h   the cost model behind `dsacp plan`;
 *  - dsacp_version.h  DSACP_VERSION_MAJOR/MINOR/PATCH and DSACP_VERSION (included here).
 * Build and link: `pkg-config --cflags --libs dsacp`, or CMake's find_package(dsacp) and the
 * target dsacp::dsacp. jansson, OpenMP and MPI are private dependencies of libdsacp.so.
 *
 * Thread safety (libuv style: what each handle allows; "thread" means a caller's thread)
 *  - The library has no global lock and starts no threads of its own outside a call: a step
 *    runs its kernels on OpenMP threads (OMP_NUM_THREADS) and returns when they are done.
 *  - Functions without a handle (dsacp_strerror, dsacp_config_parse/load/save,
 *    dsacp_preset_config, dsacp_model_init, dsacp_version, ...) are reentrant: any thread, any
 *    time, as long as their arguments are not shared with a concurrent writer.
 *  - dsacp_model: immutable once dsacp_model_load returned. Any number of threads and engines
 *    may use one model at the same time (dsacp_model_config, dsacp_engine_create, steps).
 *  - dsacp_engine: one thread at a time. Calls on one engine must not overlap (serialise them
 *    yourself); different engines may step concurrently in different threads, over one model.
 *    Every query of an engine (request length, KV use, step times) counts as a call.
 *  - dsacp_comm: one thread at a time, and the MPI thread level decides the rest.
 *    dsacp_comm_create_world initialises MPI with MPI_THREAD_FUNNELED, so every call on an MPI
 *    communicator -- and so every step of an engine over it -- must come from the thread that
 *    initialised MPI. A program that initialises MPI itself (dsacp_mpi.h) chooses the level;
 *    engines over different communicators in different threads need MPI_THREAD_MULTIPLE.
 *    A solo communicator (dsacp_comm_create_solo) has no MPI and follows the engine's rule.
 *  - Errors: the message behind dsacp_last_error() is thread-local; read it in the thread that
 *    got the failing status, before the next call that may fail.
 *  - Process-wide settings, read once and then shared by every thread: the kernels' instruction
 *    set (chosen from the CPU and the DSACP_ISA environment variable at the first kernel call)
 *    and DSACP_FAULT (fault injection for tests).
 *
 * Ownership and lifetimes
 *  - What a create/load/open call returns through `**out` belongs to the caller and is released
 *    by the matching free (which accepts NULL): dsacp_model_free, dsacp_engine_free,
 *    dsacp_comm_free. On failure *out is NULL and nothing needs freeing.
 *  - Lifetimes nest: a model outlives every engine created from it; a communicator outlives
 *    every engine created over it (dsacp_engine_create_cp); an engine outlives its request ids.
 *    dsacp_comm_free on the last handle of the world finalises MPI when dsacp initialised it.
 *  - Pointers the library returns into a handle (dsacp_model_config, dsacp_engine_config,
 *    dsacp_engine_comm) are borrowed: valid while the handle lives, never freed by the caller.
 *  - Buffers the caller passes (token ids, logits, topk) stay the caller's: the library copies
 *    what it keeps and does not hold the pointer after the call returns.
 *  - Strings the library returns (dsacp_strerror, names) are static; text it allocates for the
 *    caller says so and names the function that frees it (dsacp_comm_report_json: free()).
 */
#ifndef DSACP_H
#define DSACP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsacp_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* X(name, value, description): the one list of error codes (libuv style). */
#define DSACP_STATUS_MAP(X)                                                                  \
    X(OK, 0, "success")                                                                      \
    X(EINVAL, -1, "invalid argument")                                                        \
    X(ENOMEM, -2, "out of memory")                                                           \
    X(EIO, -3, "input/output error")                                                         \
    X(EFORMAT, -4, "malformed file")                                                         \
    X(ECONFIG, -5, "invalid model configuration")                                            \
    X(ESHAPE, -6, "tensor shape or dtype mismatch")                                          \
    X(ENOTFOUND, -7, "not found")                                                            \
    X(ECAPACITY, -8, "cache capacity exhausted")                                             \
    X(ERANGE, -9, "value out of range")                                                      \
    X(EUNSUPPORTED, -10, "unsupported feature")                                              \
    X(ECOMM, -11, "communication error")                                                     \
    X(EBUSY, -12, "busy: a bounded queue is full or the service is stopping")

typedef enum dsacp_status {
#define DSACP_STATUS_ENUM_(name, value, desc) DSACP_##name = value,
    DSACP_STATUS_MAP(DSACP_STATUS_ENUM_)
#undef DSACP_STATUS_ENUM_
} dsacp_status;

/* Description of a status code ("invalid argument"); never NULL. */
const char *dsacp_strerror(int status);
/* Name of a status code ("DSACP_EINVAL"); never NULL. */
const char *dsacp_status_name(int status);
/* The detailed message of the last failing call in this thread, e.g.
 * "m/model.safetensors: tensor 'x.weight': shape [4, 4] x F32 is 64 bytes but its range is 60".
 * Empty string when nothing failed yet. */
const char *dsacp_last_error(void);

/* The version of the library linked, "MAJOR.MINOR.PATCH" (DSACP_VERSION is the headers'). */
const char *dsacp_version(void);

/* ------------------------------------------------------------------------------------------ */
/* Dtypes                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Element types, named as safetensors names them. */
typedef enum dsacp_dtype {
    DSACP_DTYPE_INVALID = 0,
    DSACP_BOOL,
    DSACP_U8,
    DSACP_I8,
    DSACP_F8_E4M3, /* OCP e4m3 "fn": bias 7, no inf, NaN = S.1111.111, max 448 */
    DSACP_F8_E5M2,
    DSACP_I16,
    DSACP_U16,
    DSACP_F16,
    DSACP_BF16,
    DSACP_I32,
    DSACP_U32,
    DSACP_F32,
    DSACP_F64,
    DSACP_I64,
    DSACP_U64,
    DSACP_DTYPE_COUNT
} dsacp_dtype;

/* "F32", "BF16", ...; "INVALID" for an unknown value. */
const char *dsacp_dtype_name(dsacp_dtype dtype);
/* Parses a safetensors dtype string; DSACP_DTYPE_INVALID when unknown. */
dsacp_dtype dsacp_dtype_from_name(const char *name);
/* Bytes per element (1, 2, 4 or 8); 0 for DSACP_DTYPE_INVALID. */
size_t dsacp_dtype_size(dsacp_dtype dtype);

/* ------------------------------------------------------------------------------------------ */
/* Model configuration (Hugging Face config.json of a DeepSeek-V3.2 model)                   */
/* ------------------------------------------------------------------------------------------ */

typedef enum dsacp_rope_type { DSACP_ROPE_DEFAULT = 0, DSACP_ROPE_YARN = 1 } dsacp_rope_type;

#define DSACP_MAX_LAYERS 512

typedef struct dsacp_config {
    /* Attention dimensions (docs/dsa-math.md section 1). */
    int64_t hidden_size;         /* D */
    int64_t num_hidden_layers;   /* layers of the target model (the MTP layer is not one of them) */
    int64_t num_nextn_predict_layers; /* MTP layers the checkpoint declares (0 or 1 used; DeepSeek-V3.2: 1).
                                       * The MTP layer is checkpoint layer num_hidden_layers
                                       * (docs/mtp.md); absent key: 0 */
    int64_t num_attention_heads; /* H */
    int64_t q_lora_rank;
    int64_t kv_lora_rank;        /* latent width of the MLA cache ("nope" part) */
    int64_t qk_nope_head_dim;
    int64_t qk_rope_head_dim;
    int64_t v_head_dim;
    int64_t index_n_heads;       /* Hi */
    int64_t index_head_dim;      /* di */
    int64_t index_topk;          /* k */
    /* The stack around the attention. */
    int64_t vocab_size;
    int64_t intermediate_size;     /* dense MLP */
    int64_t moe_intermediate_size; /* per routed / shared expert */
    int64_t n_routed_experts;      /* 0: every layer dense */
    int64_t n_shared_experts;
    int64_t num_experts_per_tok;
    int64_t n_group;
    int64_t topk_group;
    int64_t first_k_dense_replace; /* layers [0, first_k_dense_replace) are dense */
    int64_t moe_layer_freq;        /* a layer L >= first_k_dense_replace is MoE when L % freq == 0 */
    bool has_mlp_layer_types;      /* transformers 5 "mlp_layer_types" given: it decides instead */
    uint8_t mlp_layer_moe[DSACP_MAX_LAYERS]; /* 1 = "sparse" (MoE), 0 = "dense" */
    int64_t max_position_embeddings;
    double routed_scaling_factor;
    bool norm_topk_prob;
    bool tie_word_embeddings;
    double rms_norm_eps;
    /* RoPE (docs/dsa-math.md section 4). */
    double rope_theta;
    dsacp_rope_type rope_type;
    double rope_factor;               /* yarn factor (1 when not yarn) */
    double rope_original_max_position;
    double rope_beta_fast, rope_beta_slow;
    double rope_mscale, rope_mscale_all_dim; /* 0 when the key is absent */
    bool rope_has_attention_factor;
    double rope_attention_factor_key;        /* the explicit key, when present */
    /* Derived (filled by the parser, following transformers' rules). */
    double rope_attention_factor; /* multiplier of cos and sin */
    double softmax_scale;         /* (nope+rope)^-0.5 * m(factor, mscale_all_dim)^2 */
    /* Quantization (quantization_config). */
    bool fp8_weights;             /* quant_method fp8 present */
    int64_t weight_block_rows, weight_block_cols; /* [128, 128] */
    bool scale_fmt_ue8m0;
} dsacp_config;

/* Parses a config.json already in memory. `path` is used only in error messages.
 * Accepts both rope spellings ("rope_scaling" and transformers 5's "rope_parameters").
 * A missing or invalid required field fails with DSACP_ECONFIG and a message naming it. */
int dsacp_config_parse(const char *json_text, size_t len, const char *path, dsacp_config *out);
/* Reads and parses a config.json file. */
int dsacp_config_load(const char *path, dsacp_config *out);
/* Writes `cfg` as a config.json (rope_scaling spelling, plus rope_parameters) at `path`. */
int dsacp_config_save(const dsacp_config *cfg, const char *path);
/* True when layer `layer` has an MoE MLP. */
bool dsacp_config_layer_is_moe(const dsacp_config *cfg, int64_t layer);

/* Bytes of one token's cache entry for one layer. */
typedef enum dsacp_kv_dtype { DSACP_KV_F32 = 0, DSACP_KV_BF16 = 1, DSACP_KV_FP8 = 2 } dsacp_kv_dtype;
/* MLA latent cache: f32 (kv_lora+rope)*4, bf16 (kv_lora+rope)*2, fp8_ds_mla
 * kv_lora + 4*(kv_lora/128) + 2*rope (656 for V3.2). */
int64_t dsacp_mla_cache_bytes_per_token(const dsacp_config *cfg, dsacp_kv_dtype dtype);
/* Indexer key cache: f32 di*4; fp8 (bf16 is stored as f32) di + 4 (132 for V3.2). */
int64_t dsacp_index_cache_bytes_per_token(const dsacp_config *cfg, dsacp_kv_dtype dtype);

/* ------------------------------------------------------------------------------------------ */
/* Models                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct dsacp_model dsacp_model;

/* Loads a model directory: config.json plus model.safetensors, or the shards listed by
 * model.safetensors.index.json. Tensors are memory-mapped and kept in their stored dtype
 * (FP8 weights keep their weight_scale_inv block scales and are dequantized by the kernels).
 * Fails when a required tensor is missing or has the wrong shape or dtype. */
int dsacp_model_load(const char *dir, dsacp_model **out);
void dsacp_model_free(dsacp_model *model);
const dsacp_config *dsacp_model_config(const dsacp_model *model);

/* Weight dtypes init-model can write. */
typedef enum dsacp_weight_format {
    DSACP_WEIGHTS_F32 = 0,
    DSACP_WEIGHTS_BF16 = 1,
    DSACP_WEIGHTS_FP8 = 2, /* linear weights F8_E4M3 + weight_scale_inv [ceil(r/128)][ceil(c/128)] */
} dsacp_weight_format;

/* Names of the built-in presets, NULL-terminated: "tiny", "tiny-moe", "small", "v32-layer". */
const char *const *dsacp_preset_names(void);
/* Fills `out` with a preset's configuration; DSACP_ENOTFOUND for an unknown name. */
int dsacp_preset_config(const char *name, dsacp_config *out);
/* Writes config.json and model.safetensors into `dir` (created if absent) with random weights
 * that depend only on (config, seed, format). Files are written to temporaries and renamed, so a
 * failure leaves no partial output. */
int dsacp_model_init(const dsacp_config *cfg, const char *dir, uint64_t seed,
                     dsacp_weight_format format);


/* ------------------------------------------------------------------------------------------ */
/* Engine: paged caches, requests and steps (one process)                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum dsacp_numerics {
    DSACP_NUMERICS_EXACT = 0,    /* fp32 everywhere, what transformers computes */
    DSACP_NUMERICS_DEPLOYED = 1, /* Hadamard + FP8 indexer, FP8 activations into FP8 layers, and
                                  * the bf16-dot chain (activations, q and latents rounded to bf16,
                                  * products of bf16 pairs summed in fp32 as VDPBF16PS does) in
                                  * BF16/FP8 linears and sparse MLA: docs/numerics.md */
} dsacp_numerics;

typedef struct dsacp_engine_options {
    dsacp_numerics numerics;
    dsacp_kv_dtype kv_dtype; /* MLA latent cache: f32, bf16, or fp8_ds_mla (deployed mode only) */
    int64_t block_size;      /* tokens per cache block: a power of two >= 1 (default 64) */
    int64_t num_blocks;      /* blocks in the pool, shared by all requests (capacity) */
    bool mtp;                /* also run the model's MTP layer (dsacp_engine_mtp_step, docs/mtp.md):
                              * its latent and indexer caches are one more layer of the pools,
                              * sharded like the target's. DSACP_EINVAL when the model has none. */
} dsacp_engine_options;

/* Defaults: exact, f32 cache, block size 64, 1024 blocks, no MTP layer. */
void dsacp_engine_options_default(dsacp_engine_options *opt);

typedef struct dsacp_engine dsacp_engine;

/* The model must outlive the engine. The indexer key cache is F32 in exact mode and FP8 (132
 * bytes per token for di = 128) in deployed mode. */
int dsacp_engine_create(const dsacp_model *model, const dsacp_engine_options *opt, dsacp_engine **out);
void dsacp_engine_free(dsacp_engine *engine);

/* Requests: an id names a sequence whose cache grows step by step. */
int dsacp_engine_add_request(dsacp_engine *engine, int64_t *request_id);
/* Returns the request's cache blocks to the pool; the id becomes invalid. */
int dsacp_engine_end_request(dsacp_engine *engine, int64_t request_id);
/* Tokens cached for the request so far (its next position), or a negative status. */
int64_t dsacp_engine_request_length(const dsacp_engine *engine, int64_t request_id);

/* One request's part of a step: n_tokens >= 1 new tokens at positions length .. length+n-1. */
typedef struct dsacp_step_entry {
    int64_t request_id;
    int64_t n_tokens;
    const int32_t *token_ids; /* I32 [n_tokens], each in [0, vocab) */
} dsacp_step_entry;

/* Entry flags. VERIFY: a speculative verify entry (docs/speculative.md): its k + 1 rows (the
 * last sampled token and k draft tokens) are decode rows -- every rank of a DCP group runs them
 * through the decode strategy, each row with its own causal bound (its position) and its own
 * top-k, exactly as if they were decoded one by one; DSA-CP alone splits them like decode tokens. */
#define DSACP_ENTRY_VERIFY 1u

/* Per-entry options of dsacp_engine_step_opts and dsacp_engine_mtp_step. */
typedef struct dsacp_entry_opts {
    int64_t n_logits; /* logits after the entry's last n_logits tokens (0 counts as 1; <= n_tokens) */
    uint32_t flags;   /* DSACP_ENTRY_* */
} dsacp_entry_opts;

/* Runs one engine step over a batch of requests (prefill chunks and decode tokens mixed), the
 * tokens flattened in entry order into T = sum n_tokens rows. A request may appear once per step.
 *   logits: F32 [T][vocab] or NULL, row t = the logits after token t.
 *   topk:   I32 [num_layers][T][index_topk] or NULL: each layer's selected positions per token,
 *           ascending, -1 padded.
 * Capacity: blocks for every entry are reserved before anything is computed; when the pool is
 * short, the whole step is refused with DSACP_ECAPACITY and no cache or request changes. */
int dsacp_engine_step(dsacp_engine *engine, const dsacp_step_entry *entries, int64_t n_entries,
                      float *logits, int32_t *topk);
/* The same step computing the logits only after each entry's last token -- all that sampling
 * needs -- instead of after every token: lm_head runs on n_entries rows, not T.
 *   logits_last: F32 [n_entries][vocab] or NULL, row i = the logits after entry i's last token
 *                (bit-identical to row (its offset + n_tokens - 1) of dsacp_engine_step's). */
int dsacp_engine_step_last(dsacp_engine *engine, const dsacp_step_entry *entries, int64_t n_entries,
                           float *logits_last, int32_t *topk);
/* dsacp_engine_step_last with per-entry options (opts: [n_entries], or NULL for n_logits 1 and no
 * flags): the logits after each entry's last m_i = max(1, n_logits) tokens -- what a verify step
 * needs -- lm_head on sum m_i rows.
 *   logits: F32 [sum m_i][vocab] or NULL (rank 0), entry i's rows in order, each bit-identical to
 *           the same token's row of dsacp_engine_step's. */
int dsacp_engine_step_opts(dsacp_engine *engine, const dsacp_step_entry *entries, const dsacp_entry_opts *opts,
                           int64_t n_entries, float *logits, int32_t *topk);

/* ---- Speculative decoding (docs/speculative.md, docs/mtp.md) ---- */

/* Whether the model holds a complete MTP layer (checkpoint layer num_hidden_layers). */
bool dsacp_model_has_mtp(const dsacp_model *model);

/* The MTP layer over a batch (an engine created with opt.mtp), collective like a step. Entry i
 * brings n_tokens rows at the request's MTP positions p = m .. m + n - 1 (m =
 * dsacp_engine_request_mtp_length). Row p's token is the request's token at position p + 1 (the
 * one the target fed there or sampled after p; beyond what is known, any valid id: such rows are
 * truncated afterwards). The rows' hidden inputs, for the whole call, are either
 *   - catch-up: the last dsacp_engine_step* call's final-normed hidden rows -- the entries must be
 *     that step's, same requests, n_tokens and order, and each request's MTP length must be the
 *     target length it had before that step; or
 *   - chain: every entry one row at p = its request's MTP length, whose position p - 1 was a row
 *     of the previous dsacp_engine_mtp_step: the MTP layer's own output there (a chained draft);
 * anything else is DSACP_EINVAL naming the entry. The layer (docs/mtp.md): e = enorm(embed(token))
 * (zero rows at position 0, as vLLM), g = hnorm(hidden), x = eh_proj [e; g], one decoder layer
 * (DSA attention over the MTP layer's own caches, its MLP), logits = head(shared_head.norm(x)).
 *   opts:   [n_entries] or NULL: n_logits as dsacp_engine_step_opts (flags are the target step's
 *           in catch-up, none in chain; ignored).
 *   logits: F32 [sum m_i][vocab] or NULL (rank 0): the logits after each entry's last m_i rows.
 *   topk:   I32 [T][index_topk] or NULL (rank 0): the MTP layer's selected sets per row.
 * Rows run on the ranks that hold their hidden inputs: no hidden state moves between ranks. */
int dsacp_engine_mtp_step(dsacp_engine *engine, const dsacp_step_entry *entries, const dsacp_entry_opts *opts,
                          int64_t n_entries, float *logits, int32_t *topk);
/* MTP positions cached for the request (<= what dsacp_engine_request_length says + k - 1 while
 * drafting), or a negative status. */
int64_t dsacp_engine_request_mtp_length(const dsacp_engine *engine, int64_t request_id);
/* Rejected speculation: the request keeps its first `length` target positions and `mtp_length`
 * MTP positions (each <= what it holds; mtp_length ignored without MTP); the entries beyond are
 * discarded and blocks no longer needed by either return to the pool, on every rank that holds
 * them. Local: every rank of the group must make the same call before the group's next step. */
int dsacp_engine_truncate_request(dsacp_engine *engine, int64_t request_id, int64_t length, int64_t mtp_length);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_H */
