/*
 * cp -- the DSA layer over a context-parallel group (docs/context-parallel.md). It sits between
 * engine and attn: the engine hands it the step's tokens, it runs the phases of
 * src/attn/dsa_layer.c on each rank's share and moves what the phases need between ranks
 * through src/comm. Each decode strategy is one file (cp_allgather_kv.c, cp_replicated_index.c,
 * cp_exact_topk.c, cp_lean.c) that says what moves; the merges are cp_merge.c; the prefill split,
 * the context path and the output projection are shared (cp_layer.c). Kernels never learn
 * about ranks.
 *
 * Token order on a rank: the step's T tokens are flattened in entry order (as
 * dsacp_engine_step documents). A rank computes its "active" tokens: every decode-like token (an
 * entry of one token, or a chunk on --context-path distributed; replicated over the ranks, heads
 * split) and the prefill tokens its split gives it (owner, contiguous or zigzag). Active rows are
 * laid out decode tokens first, then own prefill tokens, each group in step order.
 */
#ifndef DSACP_CP_INTERNAL_H
#define DSACP_CP_INTERNAL_H

#include "attn/dsa_layer.h"
#include "comm/comm.h"
#include "dsacp_cp.h"

typedef struct dsacp_cp_weights dsacp_cp_weights;

struct dsacp_hw; /* a planner's hardware profile (include/dsacp_plan.h), opaque here */

/* Chooses the context path of a chunk of n_new tokens after old_len sharded positions on the
 * profile hw (*distributed); an error status stops the step on every rank. */
typedef int (*dsacp_cp_context_chooser)(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W,
                                        int64_t latent_bytes, int64_t index_bytes, bool deployed, bool o_gather_v,
                                        bool o_tp_f32, const struct dsacp_hw *hw, int64_t old_len, int64_t n_new,
                                        bool *distributed);

/* The group and what each rank holds; fixed when the engine is created. */
typedef struct dsacp_cp_ctx {
    const dsacp_config *cfg;
    dsacp_cp_weights *wp;        /* DSA-CP weight plans (cp_weights.c), NULL in DCP mode */
    dsacp_comm *comm;
    int W, rank;
    dsacp_cp_options opt;
    dsacp_kv_cache *lat, *idx;   /* this rank's caches (the same object when both layouts agree) */
    /* The indexer cache's own sharding: position p is held by the ranks of holder group
     * (p / iI) mod iW, at local position dsacp_cp_local_pos(p, iI, iW); this rank is in group ir.
     * sharded: (W, I, rank); partial:G: (W / G, I G, rank / G); replicated or W = 1: (1, 1, 0).
     * icomm: one rank per group (the candidate exchanges); the group itself when iW = W. */
    int64_t iW, iI, ir;
    dsacp_comm *icomm, *icomm_own;
    int64_t block_size;          /* of the transient views */
    int64_t h0, h1;              /* this rank's heads: [H r / W, H (r + 1) / W) */
    /* o_proj over this rank's heads: a copy of its input columns per layer ([L], NULL at W = 1),
     * or NULL when the columns do not fall on the weight's FP8 blocks (then the heads' outputs
     * are all-gathered and every rank applies the whole o_proj: o_gather_v). */
    dsacp_weight **o_shard;
    bool o_gather_v;
    int64_t transient_peak;      /* bytes, largest transient of a layer call so far */
    double t_proj, t_attn, t_oproj; /* seconds in the layer's phases since the engine reset them */
    dsacp_cp_stats stats;        /* attention work and lean verdicts (dsacp_engine_cp_stats) */
    bool deployed;               /* the engine's numerics (lean's partials dtype in the rules) */
    /* Overlap of the non-blocking collectives (prefill entries, lean's scores, exact-topk's
     * candidates): seconds of compute done while one was in flight, and seconds then spent
     * waiting for it (dsacp_engine_overlap). */
    double ovl_compute, ovl_wait;
    struct dsacp_hw *hw;         /* --context-path auto's profile (cp options' context_hardware), or NULL */
    /* --context-path auto with a profile: the path the planner's time model prefers, installed by
     * the engine (dsacp_plan_context_distributed's signature) so that src/cp never calls the
     * planner; NULL: the byte rule (dsacp_cp_context_bytes). */
    dsacp_cp_context_chooser choose_context;
    char *ctx_choices;           /* per step with a sharded-context chunk: g(ather), d(istributed), m(ixed) */
    int64_t nctx_choices, capctx_choices;
    /* Set when a stage agreement of this step failed (the same on every rank): the engine stops
     * the step after the layer; cleared by the engine at the start of each step. */
    bool step_failed;
    /* The engine's step workspace (one for the whole step, docs/conventions.md): the step's CP
     * metadata, the single-process layer's buffers and, at W > 1, the layer call's, the
     * strategies' (their ws_need), the merges', o_proj's and the views' lists come from it, sized
     * by dsacp_cp_step_ws_bytes and dsacp_cp_layer_ws_bytes in the engine's sum, so that a
     * steady-state decode step takes nothing from the heap here. */
    dsacp_arena *ws;
    /* What sizes it (set by the engine): the layers' attention weights [n_layers] (the linears'
     * scratch) and the longest context a step can attend (dsacp_engine_max_context). */
    const dsacp_dsa_weights *layer_w;
    int64_t n_layers, max_context;
    /* W > 1: the active rows' new entries of a layer (a one-layer pool of block size 1, slot j =
     * active row j), kept from layer to layer and recreated only for a step with more rows than
     * stage_rows; freed with the engine. */
    dsacp_kv_cache *stage;
    int64_t stage_rows;
    /* W > 1: the transient views' pool of view_blocks blocks, its block table and the gather's
     * send and receive buffers (cp_view.c), kept from call to call, grown when a step needs more. */
    dsacp_kv_cache *view_cache;
    int32_t *view_table;
    uint8_t *view_buf;
    int64_t view_blocks;
} dsacp_cp_ctx;

/* The agreement of one allocation stage (docs/context-parallel.md, "Failures"): every rank of
 * cp->comm passes `ok` (its buffers of the stage were allocated); the fault hook may fail the
 * stage at `site` (dsacp_fault). All ranks return the same status -- DSACP_ENOMEM with the
 * failing rank's message ("<what>: out of memory") when any failed -- and set step_failed. A
 * 4-byte all-gather, not counted under any phase; W = 1: no communication. Call it where every
 * rank of the group passes, before the stage's first collective. */
int dsacp_cp_agree_alloc(dsacp_cp_ctx *cp, const char *site, bool ok, const char *what);

/* One buffer of a stage taken from the step workspace: *out (the address of the caller's
 * pointer, of any object type) receives rows x cols elements of elem bytes. A stage lists its
 * buffers once (DSACP_CP_BUF) for both its sizing, at the largest step (dsacp_cp_bufs_need), and
 * its take (dsacp_cp_bufs_take: every pointer set, NULL from the first that does not fit, with
 * DSACP_ENOMEM recorded naming `what`; false then). The caller agrees on the result
 * (dsacp_cp_agree_alloc) and gives the buffers back with dsacp_arena_rewind. */
typedef struct dsacp_cp_buf {
    void *out;
    int64_t rows, cols;
    size_t elem;
} dsacp_cp_buf;
#define DSACP_CP_BUF(p, r, c) ((dsacp_cp_buf){(void *)&(p), (r), (c), sizeof *(p)})
void dsacp_cp_bufs_need(size_t *total, const dsacp_cp_buf *b, int n);
bool dsacp_cp_bufs_take(dsacp_arena *ws, const dsacp_cp_buf *b, int n, const char *what);
/* The take of a stage's list from cp->ws and the group's agreement on it (dsacp_cp_agree_alloc at
 * `site`): every rank gets the same status, DSACP_ENOMEM "<what>: out of memory" when one failed. */
int dsacp_cp_bufs_agree(dsacp_cp_ctx *cp, const char *site, const dsacp_cp_buf *b, int n, const char *what);

static inline int64_t dsacp_cp_idx_local(const dsacp_cp_ctx *cp, int64_t p)
{
    return cp->iW > 1 ? dsacp_cp_local_pos(p, cp->iI, cp->iW) : p;
}
static inline bool dsacp_cp_idx_holds(const dsacp_cp_ctx *cp, int64_t p)
{
    return cp->iW <= 1 || dsacp_cp_owner(p, cp->iI, cp->iW) == cp->ir;
}
/* Indexer positions of [0, L) held by holder group g. */
static inline int64_t dsacp_cp_idx_len(const dsacp_cp_ctx *cp, int64_t L, int64_t g)
{
    return cp->iW > 1 ? dsacp_cp_local_len(L, g, cp->iI, cp->iW) : L;
}

/* ---- DSA-CP weight plans (cp_weights.c) ---- */

/* A ring of broadcast buffers for a layer-sharded weight. */
typedef struct dsacp_cp_ring {
    int64_t slots;             /* prefetch depth (<= layers); 0: not sharded */
    size_t slot_bytes;
    uint8_t **buf;             /* [slots] */
    dsacp_weight *view;        /* [slots] the weight of the layer in the slot */
    int64_t *layer;            /* [slots] */
    dsacp_comm_request **req;  /* [slots] in-flight broadcast */
} dsacp_cp_ring;

struct dsacp_cp_weights {
    int64_t L;
    const dsacp_weight **q_b, **o; /* [L] the model's weights (data read only where planned) */
    dsacp_cp_ring q_ring, o_ring;  /* layer-shard */
    dsacp_weight **o_tp;           /* [L] tp: this rank's input columns of o_proj */
    int64_t *col;                  /* [W + 1] tp: first column of each rank */
    bool tp_f32;                   /* tp shards hold f32 (FP8 blocks would be split) */
    uint8_t *gather_recv, *gather_full;
    size_t recv_bytes, full_bytes;
    dsacp_comm_request *gather_req;
    int64_t gather_layer;
    dsacp_weight o_full;           /* view of the gathered full weight */
    bool step_gather;              /* tp/auto: this step gathers weights (else moves activations) */
    int64_t steps_gather, steps_activations, steps_allreduce;
    double last_gather_bytes, last_act_bytes;
    char *choices;                 /* tp/auto: one letter per step, g (weights), a (activations) or r
                                    * (a decode-only DSA-CP + DCP step: head columns + all-reduce) */
    int64_t nchoices, capchoices;
};
/* tp/auto's rule: bytes a rank receives per step for the weight gather, and per token of the
 * step for the activation path (evenly split tokens); crossover = gather / per-token. */
void dsacp_cp_weights_rule(const dsacp_cp_ctx *cp, double *gather_bytes, double *act_bytes_per_token);

/* Input columns [c0, c1) of a weight as a weight of its own (the same dtype; FP8 keeps the block
 * scales of those columns, which must start on a block; as_f32: dequantized values instead).
 * Used for o_proj's head columns (DCP decode, DSA-CP tp). Free with dsacp_cp_weight_free. */
int dsacp_cp_weight_columns(const dsacp_weight *o, int64_t c0, int64_t c1, bool as_f32, dsacp_weight **out);
void dsacp_cp_weight_free(dsacp_weight *w);

int dsacp_cp_weights_setup(dsacp_cp_ctx *cp, const dsacp_dsa_weights *attn, int64_t L);
void dsacp_cp_weights_free(dsacp_cp_weights *wp);
void dsacp_cp_weights_usage(const dsacp_cp_ctx *cp, dsacp_weight_usage *u);

/* One step's metadata: the same on every rank (only `act` differs). */
typedef struct dsacp_cp_step {
    int64_t T, n_ent;
    const int64_t *pos;      /* [T] absolute position */
    const int32_t *ent;      /* [T] entry of each token */
    const int64_t *old_len;  /* [n_ent] tokens cached before the step */
    const int64_t *new_len;  /* [n_ent] after it */
    const uint8_t *decode;   /* [n_ent] 1: an entry of one token (processed by every rank) */
    dsacp_kv_seq *const *lat_seq, *const *idx_seq; /* [n_ent] this rank's block tables */
    int64_t n_dec, n_pre;    /* active rows: decode tokens, then this rank's prefill tokens */
    const int64_t *act;      /* [n_dec + n_pre] token index of each active row */
    const int64_t *act_row;  /* [T] active row of each token on this rank, -1 when not active */
    int64_t n_pre_all;       /* prefill tokens of the step, all ranks */
    const int64_t *pre_all;  /* [n_pre_all] prefill tokens grouped by owner rank, step order within */
    const int64_t *pre_off;  /* [W + 1] rank q's prefill tokens: pre_all[pre_off[q] .. pre_off[q+1]) */
    const int64_t *pre_idx;  /* [T] index of a prefill token in pre_all, -1 for decode tokens */
    bool want_topk;          /* gather selected sets to rank 0 */
    /* Given by the caller (dsacp_cp_step_build reads them): */
    int64_t layer0, layer1;  /* the layers the step runs: [0, L) for the target, [L, L + 1) for
                              * an MTP step (the weight plans issue their broadcasts in that range) */
    const uint32_t *flags;   /* [n_ent] or NULL: DSACP_ENTRY_* (VERIFY: decode rows whenever decode
                              * tokens are, never the context-path choice) */
    const int32_t *place;    /* [T] or NULL: the rank that computes token t, -1 for a decode row
                              * (every rank); all -1 or all >= 0 within an entry. An MTP step's rows
                              * run where their hidden inputs are (docs/speculative.md) */
} dsacp_cp_step;

/* Per step and per layer (collective, in this order): the step's o_proj path and the first
 * broadcasts; layer l's tp gather; q_b_proj and o_proj for layer l (waiting as needed); the
 * next broadcasts once layer l is done. */
int dsacp_cp_weights_step_begin(dsacp_cp_ctx *cp, const dsacp_cp_step *st);
int dsacp_cp_weights_layer_begin(dsacp_cp_ctx *cp, int64_t l);
int dsacp_cp_weights_q(dsacp_cp_ctx *cp, int64_t l, const dsacp_weight **out);
int dsacp_cp_weights_o_full(dsacp_cp_ctx *cp, int64_t l, const dsacp_weight **out);
int dsacp_cp_weights_layer_done(dsacp_cp_ctx *cp, int64_t l);

/* Builds the metadata of a step on this rank into `st` (arrays taken from cp->ws, which holds
 * dsacp_cp_step_ws_bytes for the step and keeps them until the engine resets it; `mem` names
 * them, dsacp_cp_step_free forgets them). pos/ent/old_len/new_len/seqs are the caller's. */
typedef struct dsacp_cp_step_mem {
    uint8_t *decode;
    int64_t *act, *act_row, *pre_all, *pre_off, *pre_idx;
} dsacp_cp_step_mem;
int dsacp_cp_step_build(dsacp_cp_ctx *cp, dsacp_cp_step *st, dsacp_cp_step_mem *mem);
/* The step workspace a step of T tokens in n_ent entries takes: its CP metadata, held for the
 * step (dsacp_cp_step_build); one layer's buffers, given back at the end of each layer (the
 * single-process layer at W = 1; at W > 1 the layer call's, the phases of src/attn it runs, the
 * strategy's decode (dsacp_cp_strategy.ws_need), the decode rows' o_proj and the views' lists).
 * SIZE_MAX when it overflows. */
size_t dsacp_cp_step_ws_bytes(const dsacp_cp_ctx *cp, int64_t T, int64_t n_ent);
size_t dsacp_cp_layer_ws_bytes(const dsacp_cp_ctx *cp, int64_t T);
/* W > 1: the step workspace the decode rows' o_proj takes (cp_oproj.c: the v rows' gather and
 * the head columns' linear scratch) for up to T decode rows, added to *total. */
void dsacp_cp_oproj_need(size_t *total, const dsacp_cp_ctx *cp, int64_t T);
/* W > 1: the buffers a layer call takes for a step of T tokens in n_ent entries (cp_layer.c). */
void dsacp_cp_layer_buffers_need(size_t *total, const dsacp_cp_ctx *cp, int64_t T, int64_t n_ent);
/* --context-path auto's rule for a chunk of a request with old_len cached positions: bytes a
 * rank receives per layer to gather the sharded context, and per query token on the
 * distributed path (the decode strategy's formula, section 3 of docs/context-parallel.md);
 * distributed when n_new x per_token < gather. The same on every rank. */
void dsacp_cp_context_rule(const dsacp_cp_ctx *cp, int64_t old_len, double *gather_bytes, double *per_token);
void dsacp_cp_step_free(dsacp_cp_step_mem *mem);

/* Step 7 of the layer on W > 1 (cp_oproj.c): vcat F32 [n_dec + n_pre][H][dv] -> out F32
 * [n_dec + n_pre][D]; own_merge: the strategy applies o_proj to its decode rows itself (lean's
 * output merge); wire16: the decode rows' all-reduce in bf16. Collective. */
int dsacp_cp_layer_o_proj(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                          const dsacp_cp_step *st, bool own_merge, bool wire16, float *vcat, float *out, int *rc);

/* The layer: x F32 [n_dec + n_pre][D] (RMS-normed rows of the active tokens) -> out F32
 * [n_dec + n_pre][D]. topk (rank 0, st->want_topk): I32 [T][index_topk] in step order.
 * Collective over the group. Never returns early on a local failure: every rank goes through
 * every collective, a failed rank with garbage, and the status is agreed by the caller. */
int dsacp_cp_layer_forward(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_dsa_weights *w, int64_t layer,
                           const dsacp_cp_step *st, const float *x, float *out, int32_t *topk);

/* ---- shared by the strategies ---- */

/* Everything a decode strategy gets: the projections of the active rows (decode rows first,
 * query rows of heads [h0, h1)), and where to put the heads' v rows and the selected sets. */
typedef struct dsacp_cp_decode_args {
    dsacp_cp_ctx *cp;
    const dsacp_dsa_ctx *ctx;
    const dsacp_dsa_weights *w;
    int64_t layer;
    const dsacp_cp_step *st;
    const dsacp_dsa_proj *proj;
    const int64_t *pos_act;          /* [n_dec + n_pre] positions of the active rows */
    const dsacp_kv_cache *stage;     /* active rows' new entries (slot = row) */
    float *vcat;     /* F32 [n_dec][H][dv]: fill the columns of heads [h0, h1) */
    int32_t *topk;   /* I32 [n_dec][index_topk]: the selected set of each decode token */
    int *rc;         /* local failure (keep taking part in the collectives) */
    bool output_merge; /* the strategy's merges_output holds for this step */
    bool wire16;       /* partials travel as bf16 (the strategy's wire_bytes is 2) */
} dsacp_cp_decode_args;

/* The longest context among the decode rows (positions of the longest one's context, at least 1):
 * what a strategy's per-token score buffers take. */
int64_t dsacp_cp_decode_maxn(const dsacp_cp_decode_args *a);

/* The strategies' attend-and-merge steps are their table entries (cp_strategy.h). lean's
 * output merge: vcat gets this rank's scaled partial v of EVERY head (the strategy's o_proj
 * applies the whole o_proj and all-reduces); otherwise the merged v of heads [h0, h1). */

/* lean's list length k' = min(K, max(1, ceil(f K / W))). */
int64_t dsacp_cp_lean_kprime(int64_t K, int64_t W, double f);
/* lean's verdict for one token, a pure function of the exchanged lists (every rank computes the
 * same): keys[q][0 .. m[q]) the float keys (dsacp_float_key) of rank q's best scores, largest
 * first; trunc[q]: rank q has more positions than it sent. Returns DSACP_LEAN_DECIDED with
 * *tau = the k-th best key of the union and *take = how many of its positions scoring exactly
 * tau rank `me` selects (its first ones in list order; -1: all of them), or the reason to fall
 * back (cp_lean.c explains why the verdict is exact). */
enum { DSACP_LEAN_DECIDED = 0, DSACP_LEAN_THRESHOLD = 1, DSACP_LEAN_TIES = 2 };
/* A candidate as one sortable key: larger is better (score, then the lower position). */
static inline uint64_t dsacp_cp_cand_key(float score, int32_t pos)
{
    return ((uint64_t)dsacp_float_key(score) << 32) | (uint64_t)(UINT32_MAX - (uint32_t)pos);
}
static inline int32_t dsacp_cp_cand_pos(uint64_t key) { return (int32_t)(UINT32_MAX - (uint32_t)(key & 0xFFFFFFFFu)); }
/* qsort order of candidate keys: best first (cp_merge.c). */
int dsacp_cp_cmp_key_desc(const void *a, const void *b);
/* The positions a rank selects from its own list (cand keys, best first, n of them) after a
 * DECIDED verdict (tau, take): into out, in list order; returns the count. */
int64_t dsacp_cp_lean_own(const uint64_t *list, int64_t n, uint32_t tau, int64_t take, int32_t *out);
int dsacp_cp_lean_decide(int64_t W, const uint32_t *const *keys, const int64_t *m, const uint8_t *trunc, int64_t K,
                         int64_t me, uint32_t *tau, int64_t *take);

/* The pieces every merging strategy shares (cp_merge.c), written once:
 * score + top-k of this rank's shard of the indexer keys for decode row j (nl = the positions of
 * its context this rank's index group holds): sel gets the local indices, best first; returns
 * their count (qpack: scratch of dsacp_index_query_bytes, scores: F32 [nl], topk_work:
 * dsacp_topk_ws_bytes(nl) bytes); */
int64_t dsacp_cp_shard_topk(const dsacp_cp_decode_args *a, int64_t j, void *qpack, float *scores, int32_t *sel,
                            void *topk_work);
/* attention of all heads of decode row j (query rows q F32 [H][dk]) over the positions pos[0..n)
 * in ascending order -- only those this rank owns when `owned_only` -- gathered into kv (F32
 * [K][dk]) from the latent cache: o F32 [H][dc], lse F32 [H] (no position: o = 0, lse = -inf);
 * work: dsacp_cp_mla_work_bytes(cp, K, H) bytes (work_bytes; short: *a->rc set); deployed mode
 * (ctx->mode) runs the sparse MLA's bf16-dot twin, exact mode the f32 kernel; returns the
 * positions attended; */
int64_t dsacp_cp_attend_positions(const dsacp_cp_decode_args *a, int64_t j, const int32_t *pos, int64_t n,
                                  bool owned_only, const float *q, float *kv, float *o, float *lse, void *work,
                                  size_t work_bytes);
/* the sparse MLA workspace of K keys and H heads for the context's numerics (cp->deployed: the
 * bf16-dot twin's, else the f32 kernel's); */
size_t dsacp_cp_mla_work_bytes(const dsacp_cp_ctx *cp, int64_t K, int64_t H);
/* the LSE merge's log total over R parts lse[r * stride] (the max plus the log of the sum of
 * exp in double), -INFINITY when every part is -inf: a part's weight is exp(lse_r - total). */
double dsacp_cp_lse_total(const float *lse, int64_t R, int64_t stride);

/* Attention of the decode tokens over the winners this rank owns, then the LSE merge and W_UV
 * (cp_merge.c): sel[j] holds token j's selected positions (ascending, nsel[j] of them). Its
 * buffers come from cp->ws (given back): dsacp_cp_merge_need adds them for nd decode rows, the
 * a2a merge's included when the options ask for it. */
void dsacp_cp_merge_need(size_t *total, const dsacp_cp_ctx *cp, int64_t nd);
int dsacp_cp_attend_owned_and_merge(const dsacp_cp_decode_args *a, const int32_t *sel, const int64_t *nsel,
                                    const float *qown);
/* Helix's merge (--dcp-comm-backend a2a): part F32 [nd][H][wd] unscaled partial rows and lse
 * F32 [nd][H] of this rank; every head's row and lse go to the head's rank in one all-to-all
 * (rows as bf16 when asked, lse fp32), which merges them in rank order into out F32
 * [nd][h1 - h0][wd]. recv = (W - 1) nd Hs (wd s + 4) bytes. Its buffers come from cp->ws (given
 * back): dsacp_cp_merge_a2a_need adds them for nd rows of wd floats (the f32 wire, the larger). */
void dsacp_cp_merge_a2a_need(size_t *total, const dsacp_cp_ctx *cp, int64_t nd, int64_t wd);
int dsacp_cp_merge_a2a(dsacp_cp_ctx *cp, int64_t nd, int64_t H, int64_t wd, const float *part, const float *lse,
                       float *out, bool bf16, int phase);
/* The absorbed query rows of this rank's heads for the decode rows (F32 [n_dec][h1 - h0][dc + dr]),
 * what the merge above gathers: computed by the strategy while its candidates travel. */
void dsacp_cp_own_query_rows(const dsacp_cp_decode_args *a, float *qown);

/* Transient full views (cp_view.c): for the entries listed, positions [0, new_len) readable on
 * this rank. Sharded parts of the entries' earlier context are all-gathered (counted under
 * `phase`); the step's new tokens come from `stage` (this rank's active rows, slot = row) or
 * from `pre_recv` (every prefill token's packed entry, indexed by pre_idx). */
typedef struct dsacp_cp_views {
    dsacp_kv_seq *seqs;      /* [n_ent] of the step (only listed entries are filled; NULL when nothing was sharded) */
    dsacp_dsa_view *view;    /* [n_ent] */
    int64_t n_ent;
    int64_t bytes;           /* transient bytes (pool blocks + gathered buffers) the views use */
    dsacp_arena *ws;         /* where seqs and view were taken (cp->ws), given back by dsacp_cp_views_free */
    size_t mark;
} dsacp_cp_views;
/* The views' lists come from cp->ws (dsacp_cp_views_need: for n_ent entries); the gathered
 * entries land in the context's transient pool (cp->view_cache), created at the first gather and
 * grown -- to twice the blocks needed -- only when a step needs more, its block table and the
 * exchange's buffers with it, so that a steady-state decode step allocates nothing; freed by
 * dsacp_cp_views_release (with the engine). */
void dsacp_cp_views_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_ent);
void dsacp_cp_views_release(dsacp_cp_ctx *cp);
/* The pool for nblocks blocks (a local status: the caller's agreement covers it). */
int dsacp_cp_views_reserve(dsacp_cp_ctx *cp, int64_t nblocks);
/* Block tables of the listed entries over the pool (new_len positions each, the pool's blocks
 * in entry order): seqs [n_ent], unlisted entries empty. */
void dsacp_cp_views_tables(dsacp_cp_ctx *cp, const dsacp_cp_step *st, const uint8_t *want, dsacp_kv_seq *seqs);
int dsacp_cp_views_build(dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t layer, const uint8_t *want_entry,
                         const dsacp_kv_cache *stage, const uint8_t *pre_recv, int phase, dsacp_cp_views *out,
                         int *rc);
void dsacp_cp_views_free(dsacp_cp_views *v);

/* A one-layer pool of nblocks blocks of B tokens with the entry formats of this rank's latent
 * and indexer caches (transient views; B = 1: the staged entries of a layer call). */
int dsacp_cp_cache_like(const dsacp_kv_cache *lat, const dsacp_kv_cache *idx, int64_t B, int64_t nblocks,
                        dsacp_kv_cache **out);

/* Raw cache entries: latent (mla_bytes) and indexer key (index_bytes: f32 [di] or e4m3 [di] then
 * its F32 scale) of one slot, copied in or out. */
void dsacp_cp_get_lat(const dsacp_kv_cache *c, int64_t layer, int64_t slot, uint8_t *dst);
void dsacp_cp_put_lat(dsacp_kv_cache *c, int64_t layer, int64_t slot, const uint8_t *src);
void dsacp_cp_get_idx(const dsacp_kv_cache *c, int64_t layer, int64_t slot, uint8_t *dst);
void dsacp_cp_put_idx(dsacp_kv_cache *c, int64_t layer, int64_t slot, const uint8_t *src);

/* Slot of global position p of entry e in this rank's latent / indexer cache (the caller knows
 * the rank holds it). */
int64_t dsacp_cp_lat_slot(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t e, int64_t p);
int64_t dsacp_cp_idx_slot(const dsacp_cp_ctx *cp, const dsacp_cp_step *st, int64_t e, int64_t p);

/* ---- the relayout between a producer and a consumer group (cp_relayout.c) ----
 * A request prefilled on the producer group (W_p ranks, interleave I_p) moves its latent and
 * indexer entries to the consumer group (W_d ranks, interleave I_d, the consumer's layouts):
 * position p is sent by the producer rank that computed it, (p / I_p) mod W_p, straight to every
 * consumer rank that keeps it (docs/disaggregation.md, "The relayout" and "Bytes"). */
enum { DSACP_KV_LATENT = 0, DSACP_KV_INDEX = 1 };
#define DSACP_RELAYOUT_HEADER 16 /* bytes in front of every transfer message: int32[4] {a, layer, n_latent, n_index} */
typedef struct dsacp_cp_relayout {
    int64_t Wp, Ip;                 /* producer group: position p is SENT by rank (p / Ip) mod Wp */
    int64_t Wd, Id;                 /* consumer group */
    dsacp_cp_layout kv_layout, index_layout; int64_t index_group; /* the CONSUMER's layouts */
    int64_t latent_bytes, index_bytes;                            /* wire bytes per position, one layer */
    int64_t layers;
} dsacp_cp_relayout;
int64_t dsacp_cp_relayout_sender(const dsacp_cp_relayout *r, int64_t p);
/* Whether consumer rank q keeps position p of kind (DSACP_KV_LATENT/INDEX) -- the engine's own rule:
 * Wd == 1 or replicated: every rank; sharded: (p / Id) mod Wd; partial:G: the ranks q with
 * q / G == (p / (Id G)) mod (Wd / G). */
bool dsacp_cp_relayout_holds(const dsacp_cp_relayout *r, int kind, int64_t p, int64_t q);
/* Positions of [a, b) that producer rank src sends consumer rank dst for kind, ascending: returns the
 * count, writes them to pos when pos != NULL. Also: the first n such positions from a (for a
 * receiver that knows a and n; they must exist): */
int64_t dsacp_cp_relayout_positions(const dsacp_cp_relayout *r, int kind, int64_t a, int64_t b, int64_t src,
                                    int64_t dst, int64_t *pos);
void dsacp_cp_relayout_first(const dsacp_cp_relayout *r, int kind, int64_t a, int64_t n, int64_t src, int64_t dst,
                             int64_t *pos);
/* Counters of moving chunk [a, b) of one request: ONE message per (layer, src, dst) pair with at least
 * one position of either kind, DSACP_RELAYOUT_HEADER + n_latent latent_bytes + n_index index_bytes
 * bytes. side 0: producer rank `rank` (calls, bytes_sent); side 1: consumer rank `rank` (calls,
 * bytes_recv). ADDED to *out. O((b - a) / min(Ip, Id)) per peer. */
void dsacp_cp_relayout_comm(const dsacp_cp_relayout *r, int64_t a, int64_t b, int side, int64_t rank,
                            dsacp_comm_counter *out);

#endif
