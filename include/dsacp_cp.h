/*
 * dsacp_cp.h -- context parallelism (CP): one model run by W ranks with the context split over
 * them. This header needs no MPI header: the communicator is an opaque handle. Programs that
 * already own an MPI communicator build the handle from it with dsacp_mpi.h.
 *
 * Terms (docs/context-parallel.md): W ranks form the CP group; I = interleave; position p of a
 * request belongs to rank owner(p) = (p / I) mod W, where it sits at local position
 *   lp = (p / (I W)) I + p mod I.
 * A "sharded" cache keeps only owned positions on each rank; a "replicated" one keeps all.
 *
 * W = 1 (a solo communicator, no MPI initialised) runs the same code and gives bit-identical
 * results to dsacp_engine_create; for W > 1 the selected top-k sets are identical to W = 1's and
 * outputs agree to fp32 reassociation (docs/context-parallel.md, "Correctness").
 */
#ifndef DSACP_CP_H
#define DSACP_CP_H

#include "dsacp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Communicator with exact accounting                                                         */
/* ------------------------------------------------------------------------------------------ */

typedef struct dsacp_comm dsacp_comm;

/* The phases communication is counted under (X(name, description)). */
#define DSACP_COMM_PHASE_MAP(X)                                                              \
    X(control, "status agreement and step metadata")                                          \
    X(kv_gather, "allgather-kv: gathered cache entries of the step's requests")              \
    X(index_candidates, "exact-topk: local top-k candidates (score, position); lean: scores")  \
    X(lean_fallback, "lean: full candidate exchange of the tokens its truncated lists left open") \
    X(query_gather, "decode query rows [q_abs | q_pe] of every head")                        \
    X(attn_merge, "partial attention merge: lse all-gather + output reduce-scatter")        \
    X(o_proj, "o_proj partial sums over head shards (all-reduce) or head outputs")           \
    X(prefill_kv, "new prefill tokens' packed cache entries (+ earlier context)")            \
    X(logits, "final hidden rows of prefill tokens gathered to rank 0")                      \
    X(topk_dump, "selected positions gathered to rank 0 (only when asked)")                  \
    X(q_proj_weight, "layer-shard: q_b_proj broadcast from its owner")                       \
    X(o_proj_weight, "layer-shard: o_proj broadcast; tp: o_proj shards gathered")            \
    X(input, "inputs broadcast from rank 0")                                                  \
    X(kv_transfer, "prefill group to decode group: prefilled latent and indexer entries, point to point")

typedef enum dsacp_comm_phase {
#define DSACP_COMM_PHASE_ENUM_(name, desc) DSACP_PHASE_##name,
    DSACP_COMM_PHASE_MAP(DSACP_COMM_PHASE_ENUM_)
#undef DSACP_COMM_PHASE_ENUM_
    DSACP_PHASE_COUNT
} dsacp_comm_phase;

/* "kv_gather", ...; "?" when out of range. */
const char *dsacp_comm_phase_name(int phase);

/* Counters of one phase on this rank. "Logical" bytes: the bytes this rank must obtain from
 * other ranks (recv) and that other ranks must obtain from this one (sent), fixed by what the
 * collective means, never by MPI's algorithm. Per collective, with n = one rank's block:
 *   all-gather(v):     recv = sum of the other ranks' blocks, sent = own block x (W - 1)
 *   all-to-all(v):     recv = sum of blocks the others address to me, sent = sum of mine to them
 *   reduce-scatter:    recv = own result block x (W - 1), sent = sum of the others' blocks
 *   all-reduce (n):    recv = sent = 2 n (W - 1) / W  (reduce-scatter + all-gather, rounded per block)
 *   broadcast (n):     root sent n (W - 1), others recv n
 *   gather(v) to root: root recv = sum of the others' blocks, others sent their block
 *   point to point:    one call per message on each side; sender bytes_sent, receiver bytes_recv
 * Bytes to or from oneself never count. A solo communicator counts nothing. */
typedef struct dsacp_comm_counter {
    int64_t calls;
    int64_t bytes_sent, bytes_recv;
    double seconds; /* wall time inside the collectives (waits included) */
} dsacp_comm_counter;

/* A communicator for W = 1 that needs no MPI. */
int dsacp_comm_create_solo(dsacp_comm **out);
/* The world: initialises MPI when the process was started by mpirun (Open MPI or PMI
 * environment) and returns MPI_COMM_WORLD's handle, otherwise a solo communicator. argc/argv may
 * be NULL. dsacp_comm_free on the last handle finalises MPI if this call initialised it. */
int dsacp_comm_create_world(int *argc, char ***argv, dsacp_comm **out);
void dsacp_comm_free(dsacp_comm *comm);
int dsacp_comm_rank(const dsacp_comm *comm);
int dsacp_comm_size(const dsacp_comm *comm);
/* This rank's counters for a phase; zero the counters. */
dsacp_comm_counter dsacp_comm_get_counter(const dsacp_comm *comm, int phase);
void dsacp_comm_reset_counters(dsacp_comm *comm);
/* Collective: rank 0 gathers every rank's counters and builds the report as JSON text
 * ({"world": W, "bytes": "...", "ranks": [{"rank": r, "phases": {"kv_gather": {"calls": ..,
 * "bytes_sent": .., "bytes_recv": .., "seconds": ..}, ...}}, ...]}, followed by the members of
 * rank 0's notes, e.g. "cp": {...}), built with jansson so that it is always valid JSON. On rank 0
 * *json_out is a malloc'd NUL-terminated text (free it with free); on the other ranks NULL. The
 * status is agreed: a failure on any rank (out of memory) fails the call on every rank, with
 * *json_out NULL everywhere. */
int dsacp_comm_report_json(dsacp_comm *comm, char **json_out);
/* Collective: dsacp_comm_report_json written by rank 0 to `path` (atomically, with a final
 * newline). Other ranks pass any path. The status (the write included) is agreed. */
int dsacp_comm_write_report(dsacp_comm *comm, const char *path);
/* JSON object members (e.g. "\"plan\": {...}, \"x\": 1"), parsed as the body of one object and
 * merged into the report dsacp_comm_report_json builds (rank 0's; a member named like one of
 * the report's own replaces it); NULL clears them. Text that is not valid JSON members (an
 * unescaped quote or backslash in a string, a trailing comma, a duplicate name) is refused with
 * DSACP_EINVAL and the notes are left as they were. Not collective. */
int dsacp_comm_set_notes(dsacp_comm *comm, const char *json_members);
/* Collective status agreement: every rank passes its status; all return the first failing
 * rank's status (by rank order), and on the other ranks dsacp_last_error() becomes
 * "rank R: <that rank's message>". Used after every step and by the CLI. */
int dsacp_comm_agree(dsacp_comm *comm, int status);
/* Collective: rank 0's `len` bytes of `buf` to every rank (counted under `phase`). */
int dsacp_comm_bcast(dsacp_comm *comm, void *buf, size_t len, int phase);
/* Collectives a multi-rank front end uses beside the engine's (`phase` is a DSACP_PHASE_* the
 * bytes are counted under, or -1: uncounted, so a report holds exactly the engine's traffic).
 * dsacp_comm_allgather: every rank's `bytes` of `send`, in rank order, into recv [W][bytes].
 * dsacp_comm_agree_phase: dsacp_comm_agree counted under `phase`. */
int dsacp_comm_allgather(dsacp_comm *comm, const void *send, size_t bytes, void *recv, int phase);
int dsacp_comm_agree_phase(dsacp_comm *comm, int status, int phase);
/* Collective over c: ranks passing the same color form a new communicator ranked by key (ties by
 * rank), with its OWN counters (zero), notes and message space -- a group of a larger job. A group
 * of one is a solo communicator. Free it before c. */
int dsacp_comm_split_group(dsacp_comm *c, int color, int key, dsacp_comm **out);
/* Collective: the same ranks in a new message space with its own (zero) counters. */
int dsacp_comm_dup(dsacp_comm *c, dsacp_comm **out);
/* Bound, in seconds, on every point-to-point wait of this communicator (<= 0: wait forever, the
 * default): a wait that passes it fails with DSACP_ECOMM naming the peer and the seconds. */
void dsacp_comm_set_timeout(dsacp_comm *c, double seconds);

/* ------------------------------------------------------------------------------------------ */
/* CP engine                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef enum dsacp_cp_layout {
    DSACP_LAYOUT_SHARDED = 0,    /* each rank keeps only the positions it owns */
    DSACP_LAYOUT_REPLICATED = 1, /* every rank keeps every position */
    /* indexer keys only ("partial:G", local-inference-lab/vllm #179): replicated within groups of
     * G consecutive ranks and sharded across the W / G groups; each group scores its own keys and
     * the candidates travel between groups only. G divides W. */
    DSACP_LAYOUT_PARTIAL = 2,
} dsacp_cp_layout;

typedef enum dsacp_decode_strategy {
    /* vllm-ascend #6563: every layer all-gathers the sharded cache entries of the step's
     * requests into a transient full copy and runs the single-process kernels on it. */
    DSACP_DECODE_ALLGATHER_KV = 0,
    /* index layout replicated: every rank scores all positions and takes the top-k itself,
     * attends over the winners it owns, partial outputs LSE-merged. */
    DSACP_DECODE_REPLICATED_INDEX = 1,
    /* vLLM #46076: local index scores and local top-k, candidate all-gather, exact merge,
     * attention over owned winners, LSE merge. */
    DSACP_DECODE_EXACT_TOPK = 2,
    /* dsacp's own (docs/context-parallel.md section 3.5): the query projection replicated (no
     * query gather), truncated candidate lists of scores only (positions stay home) with a
     * provable threshold check and an exact fallback, the merge after W_UV and o_proj (one lse
     * all-gather and one all-reduce of D values per token). Exact: the same selected sets as
     * exact-topk. Index layout sharded (or replicated: no candidates at all). */
    DSACP_DECODE_LEAN = 3,
} dsacp_decode_strategy;

/* How a prefill chunk reaches the earlier context of its request when that context is sharded
 * (chunked prefill, a cached prefix): gather it transiently (the sharded entries of the
 * context, ~788 B per context token in fp8, once per layer), or process the chunk's tokens like
 * decode tokens -- on every rank, through the decode strategy's distributed top-k and merge (its
 * bytes per query token) -- or choose per entry and step by those two byte counts (auto). */
typedef enum dsacp_context_path {
    DSACP_CONTEXT_GATHER = 0,
    DSACP_CONTEXT_DISTRIBUTED = 1,
    DSACP_CONTEXT_AUTO = 2,
} dsacp_context_path;

/* How partial attention results are merged (vLLM's --dcp-comm-backend): ag_rs = all-gather of
 * the lse, every rank scales its partials, reduce-scatter over heads (cp_lse_ag_out_rs);
 * a2a = one all-to-all of every head's partial row and lse to the head's rank, merged there in
 * rank order (Helix). For exact-topk, replicated-index and lean's values merge; lean's output
 * merge all-gathers the lse either way (every rank scales its whole partial). */
typedef enum dsacp_merge_backend {
    DSACP_MERGE_AG_RS = 0,
    DSACP_MERGE_A2A = 1,
} dsacp_merge_backend;

/* lean's merge: "output" applies W_UV and the whole o_proj to each rank's scaled partial and
 * all-reduces D values per token; "values" applies W_UV only, reduce-scatters the 128-wide head
 * rows to their heads' ranks and keeps o_proj split by heads (less weight read per rank). */
typedef enum dsacp_lean_merge {
    DSACP_LEAN_MERGE_OUTPUT = 0,
    DSACP_LEAN_MERGE_VALUES = 1,
} dsacp_lean_merge;

/* What lean's partial results travel as: auto = bf16 in deployed numerics (as production
 * engines send them), fp32 in exact numerics (W-invariant to fp32 reassociation); f32 forces
 * fp32 in both. */
typedef enum dsacp_partials_dtype {
    DSACP_PARTIALS_AUTO = 0,
    DSACP_PARTIALS_F32 = 1,
} dsacp_partials_dtype;

typedef enum dsacp_prefill_split {
    DSACP_PREFILL_OWNER = 0,      /* a token is computed by the rank that owns its position */
    DSACP_PREFILL_CONTIGUOUS = 1, /* DSA-CP's flat slice: the step's T tokens padded to a multiple
                                   * of W, rank r computes rows [r c, (r + 1) c), c = ceil(T / W) */
    DSACP_PREFILL_ZIGZAG = 2,     /* Megatron / vLLM PCP / SGLang: each request's new tokens of the step
                                   * in 2W near-equal chunks, rank r computes chunks r and 2W - 1 - r */
} dsacp_prefill_split;

typedef enum dsacp_cp_mode {
    /* Decode context parallelism: decode tokens are processed by every rank (heads split),
     * prefill tokens by their split; the decode strategy attends over the sharded cache. */
    DSACP_CP_DCP = 0,
    /* DSA-CP (vllm-ascend #5702/#6120): every token of a step -- prefill and decode -- is
     * computed by one rank (the prefill split), with all heads; the new tokens' entries are
     * all-gathered once per layer. With replicated layouts each rank attends locally; with
     * sharded ones (DSA-CP + DCP) the earlier context is gathered like allgather-kv. */
    DSACP_CP_DSA_CP = 1,
} dsacp_cp_mode;

/* Where a rank gets the full q_b_proj / o_proj a DSA-CP token needs (docs/context-parallel.md
 * section 9). */
typedef enum dsacp_weight_plan {
    DSACP_WEIGHTS_REPLICATED = 0,  /* every rank reads the whole weight */
    DSACP_WEIGHTS_LAYER_SHARD = 1, /* layer i's weight lives on rank i mod W and is broadcast into a
                                    * ring of `prefetch` buffers, `prefetch` layers ahead */
    DSACP_WEIGHTS_TP = 2,          /* o_proj only: rank r keeps its heads' input columns; steps with
                                    * prefill gather them into one full buffer, decode-only steps
                                    * move activations (all-to-all + reduce-scatter) */
    DSACP_WEIGHTS_AUTO = 3,        /* o_proj only: tp's two paths chosen per step by bytes */
    DSACP_WEIGHTS_TP_GATHER = 4,   /* o_proj only: tp, always the weight gather (benchmarks) */
    DSACP_WEIGHTS_TP_A2A = 5,      /* o_proj only: tp, always the activation path (benchmarks) */
} dsacp_weight_plan;

typedef struct dsacp_cp_options {
    int64_t interleave;                /* I >= 1 (default 1) */
    dsacp_cp_layout kv_layout;         /* MLA latent cache (default sharded) */
    dsacp_cp_layout index_layout;      /* indexer key cache (default sharded) */
    int64_t index_group;               /* partial: G (ranks per group) */
    dsacp_decode_strategy decode;      /* default exact-topk */
    dsacp_prefill_split prefill_split; /* default owner */
    dsacp_cp_mode mode;                /* default DCP */
    dsacp_weight_plan q_proj, o_proj;  /* DSA-CP only; default replicated */
    int64_t prefetch;                  /* layer-shard ring depth, >= 1 (default 2) */
    double lean_factor;                /* lean: each rank sends its best min(ceil(f k / W), k) scores, f
                                        * in [1, 1024] (default 2; f >= W sends whole local top-k lists);
                                        * more: fewer fallbacks, more bytes */
    dsacp_lean_merge lean_merge;       /* default output */
    dsacp_partials_dtype partials;     /* default auto */
    dsacp_context_path context_path;   /* default gather */
    dsacp_merge_backend merge_backend; /* default ag_rs */
    /* auto: a `dsacp plan` hardware profile (a file of hardware/) -- the path is chosen by the time
     * the planner predicts on it (dsacp_plan_context_distributed) instead of by bytes; read when
     * the engine is created. NULL (default): bytes. */
    const char *context_hardware;
} dsacp_cp_options;

void dsacp_cp_options_default(dsacp_cp_options *opt);
/* Decode strategies are a table (src/cp/cp_strategy.c): dsacp_decode_strategy values are its
 * indices, 0 .. dsacp_decode_strategy_count() - 1; the enum above names the first four, any
 * other is reached by its name (dsacp_decode_strategy_parse). */
int dsacp_decode_strategy_count(void);
/* 1 when the strategy expects a replicated index cache (replicated-index: the CLI's default
 * index layout for it), else 0. */
int dsacp_decode_strategy_replicated_index(dsacp_decode_strategy s);
/* 1 when decode tokens read a transient whole copy of their context (allgather-kv,
 * allgather-blocks: never the distributed context path), else 0. */
int dsacp_decode_strategy_gathers_context(dsacp_decode_strategy s);
/* The strategy's own rule on its options on W ranks with cache blocks of block_size tokens
 * (part of dsacp_cp_options_check; replicated-index needs a replicated index layout,
 * exact-topk a sharded one, allgather-blocks interleave = block_size): DSACP_EINVAL with the
 * strategy's message, else 0. Pure. */
int dsacp_decode_strategy_check(const dsacp_cp_options *opt, int W, int64_t block_size);
/* The check every CP engine runs on its options (dsacp_engine_create_cp), callable before it:
 * DSACP_EINVAL with the message naming the option for an unknown value or a conflicting
 * combination on W ranks with cache blocks of block_size tokens (the strategy's own rules
 * included: replicated-index needs a replicated index layout, exact-topk a sharded one).
 * Pure: no communication. */
int dsacp_cp_options_check(const dsacp_config *cfg, const dsacp_cp_options *opt, int W, int64_t block_size);
/* The run-time rules (src/cp/cp_rules.c; the engine decides by them, `dsacp plan` predicts by
 * them). --context-path auto's byte rule for a chunk after old_len cached positions: the bytes a
 * rank receives per layer gathering the sharded context, and the bytes one query token moves
 * through the decode strategy (its formula, docs/context-parallel.md section 3.6); the chunk is
 * distributed when new tokens x per_token < gather. latent_bytes / index_bytes: cache entry
 * bytes per token; o_gather_v: the decode rows' o_proj path (dsacp_cp_o_paths). */
void dsacp_cp_context_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                            int64_t index_bytes, bool deployed, bool o_gather_v, int64_t old_len, double *gather_bytes,
                            double *per_token);
/* How decode rows reach o_proj for an o_proj stored as `dtype` (FP8: square blocks of `block`):
 * *gather_v when the heads' v rows are all-gathered and every rank applies the whole o_proj (the
 * heads' columns split the FP8 blocks, or DSA-CP's layer-shard o_proj), *tp_f32 when DSA-CP's
 * tp shards are kept in f32 for the same reason. */
void dsacp_cp_o_paths(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, dsacp_dtype dtype, int64_t block,
                      bool *gather_v, bool *tp_f32);
/* "allgather-kv", "replicated-index", "exact-topk", "lean" (and the table's others); "sharded"/"replicated";
 * "owner"/"contiguous"/"zigzag";
 * "dcp"/"dsa-cp"; "replicated"/"layer-shard"/"tp"/"auto"/"tp-gather"/"tp-a2a". */
const char *dsacp_decode_strategy_name(dsacp_decode_strategy s);
const char *dsacp_cp_layout_name(dsacp_cp_layout l);
/* Parse those names; DSACP_EINVAL (message lists the accepted names) when unknown. */
int dsacp_decode_strategy_parse(const char *name, dsacp_decode_strategy *out);
int dsacp_cp_layout_parse(const char *name, dsacp_cp_layout *out);
/* The index layout: "sharded", "replicated" or "partial:G" (G >= 1; group size). */
int dsacp_index_layout_parse(const char *name, dsacp_cp_layout *out, int64_t *group);
const char *dsacp_prefill_split_name(dsacp_prefill_split s);
int dsacp_prefill_split_parse(const char *name, dsacp_prefill_split *out);
const char *dsacp_cp_mode_name(dsacp_cp_mode m);
int dsacp_cp_mode_parse(const char *name, dsacp_cp_mode *out);
const char *dsacp_weight_plan_name(dsacp_weight_plan p);
int dsacp_weight_plan_parse(const char *name, dsacp_weight_plan *out);
/* "output"/"values"; "auto"/"fp32"; "gather"/"distributed"/"auto"; "ag_rs"/"a2a". */
const char *dsacp_lean_merge_name(dsacp_lean_merge m);
int dsacp_lean_merge_parse(const char *name, dsacp_lean_merge *out);
const char *dsacp_partials_dtype_name(dsacp_partials_dtype d);
int dsacp_partials_dtype_parse(const char *name, dsacp_partials_dtype *out);
const char *dsacp_merge_backend_name(dsacp_merge_backend b);
int dsacp_merge_backend_parse(const char *name, dsacp_merge_backend *out);
const char *dsacp_context_path_name(dsacp_context_path p);
int dsacp_context_path_parse(const char *name, dsacp_context_path *out);

/* Collective over `comm` (every rank calls it with the same options; the model is loaded on
 * every rank). opt->num_blocks is the pool of each rank. Conflicting options (replicated-index
 * with a sharded index layout, interleave < 1) fail with DSACP_EINVAL on every rank. The comm
 * must outlive the engine. With comm == NULL this is dsacp_engine_create. */
int dsacp_engine_create_cp(const dsacp_model *model, const dsacp_engine_options *opt,
                           const dsacp_cp_options *cp, dsacp_comm *comm, dsacp_engine **out);

/* dsacp_engine_step is collective on a CP engine: every rank passes the same entries (token ids
 * included); logits and topk are written on rank 0 only (other ranks may pass NULL, and rank 0's
 * choice of NULL or not must be the same on every rank: pass `want_logits`/`want_topk` through
 * the same arguments everywhere -- a non-NULL pointer on another rank is simply left untouched).
 * A failure on any rank fails the step on every rank (dsacp_comm_agree). */

/* Bytes of KV cache this rank holds now for the latent and indexer caches (allocated pools),
 * and the largest transient buffer a step used so far (gathered entries, views). */
typedef struct dsacp_kv_usage {
    int64_t latent_pool_bytes, index_pool_bytes;   /* allocated pools */
    int64_t latent_used_bytes, index_used_bytes;   /* blocks in use by live requests */
    int64_t transient_peak_bytes;
} dsacp_kv_usage;
void dsacp_engine_kv_usage(const dsacp_engine *engine, dsacp_kv_usage *out);
/* Weight bytes of q_b_proj and o_proj this rank holds under the DSA-CP plans: resident (read
 * from the mapped checkpoint, or shard copies for tp), the layer-shard rings, tp's gather
 * buffers; and how many steps took tp's weight gather, its activation path (all-to-all of the v
 * columns + reduce-scatter, for tokens computed by one rank each), or neither (steps_allreduce: a
 * decode-only step of DSA-CP + DCP, sharded layouts, whose decode tokens every rank computes with
 * its heads' o_proj columns, summed by one all-reduce). */
typedef struct dsacp_weight_usage {
    int64_t q_proj_resident, o_proj_resident, ring_bytes, gather_bytes;
    int64_t steps_gather, steps_activations, steps_allreduce;
} dsacp_weight_usage;
void dsacp_engine_weight_usage(const dsacp_engine *engine, dsacp_weight_usage *out);
/* What this rank's attention did since the engine was created (or the counters were reset), summed
 * over layers: the load balance of a prefill split and the work of a decode strategy, and the
 * lean strategy's decisions. keys_scored: index scores computed (one per key per query token);
 * keys_attended: latent rows read by sparse MLA. lean_*: per decode token and layer whose
 * context exceeds index_topk on a sharded index: decided from the truncated lists, or fallen
 * back to the full exchange because a truncated list reached the threshold (threshold) or equal
 * scores at the threshold lay on several ranks (ties). Every rank reaches the same verdicts, so
 * the lean_* counts are the same on every rank. */
typedef struct dsacp_cp_stats {
    int64_t prefill_tokens, decode_tokens;       /* query tokens this rank attended (x layers) */
    int64_t keys_scored, keys_attended;
    int64_t lean_decisions, lean_fallback_threshold, lean_fallback_ties;
    int64_t lean_fallback_rounds;                /* layer calls that ran the fallback exchange */
    int64_t lean_owned_winners;                  /* selected positions of lean's decode tokens this
                                                  * rank owned and attended (x layers): what it
                                                  * sends rank 0 when the selected sets are asked */
    int64_t context_gather, context_distributed; /* chunks (entry x step) with sharded earlier
                                                  * context, by the path they took */
} dsacp_cp_stats;
void dsacp_engine_cp_stats(const dsacp_engine *engine, dsacp_cp_stats *out);
void dsacp_engine_cp_stats_reset(dsacp_engine *engine);
/* Puts the engine's CP configuration, weight usage and DSA-CP o_proj choices (the rule, its
 * crossover, every step's choice) into its communicator's report notes. */
int dsacp_engine_report_notes(const dsacp_engine *engine);

/* The planner's prediction (dsacp_plan.h, docs/planning.md) of the collectives of every step this
 * engine ran (dsacp_engine_step / _step_last / _fill_random) on this rank, per phase, summed
 * step by step through dsacp_plan_entries_comm (lean's fallbacks and owned winners taken from
 * the engine's stats), and (measured, may be NULL) what the communicator's counters grew by
 * during those calls: equal, field by field (seconds left 0). DSACP_EUNSUPPORTED (both still
 * filled) after a step that failed midway, whose collectives are not predicted. */
int dsacp_engine_plan_comm(const dsacp_engine *engine, dsacp_comm_counter planned[DSACP_PHASE_COUNT],
                           dsacp_comm_counter measured[DSACP_PHASE_COUNT]);

/* The engine's communicator (a solo one for a plain engine). */
dsacp_comm *dsacp_engine_comm(const dsacp_engine *engine);

/* Ownership arithmetic (docs/context-parallel.md section 1). */
static inline int64_t dsacp_cp_owner(int64_t p, int64_t I, int64_t W) { return (p / I) % W; }
static inline int64_t dsacp_cp_local_pos(int64_t p, int64_t I, int64_t W) { return (p / (I * W)) * I + p % I; }
static inline int64_t dsacp_cp_global_pos(int64_t lp, int64_t r, int64_t I, int64_t W)
{
    return (lp / I) * (I * W) + r * I + lp % I;
}
/* Positions of [0, L) that rank r owns. */
static inline int64_t dsacp_cp_local_len(int64_t L, int64_t r, int64_t I, int64_t W)
{
    const int64_t base = (L / (I * W)) * I, rest = L - base * W - r * I;
    return base + (rest < 0 ? 0 : rest > I ? I : rest);
}

#ifdef __cplusplus
}
#endif
#endif /* DSACP_CP_H */
