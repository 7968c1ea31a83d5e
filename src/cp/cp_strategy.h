/*
 * cp_strategy.h -- the decode strategy interface (docs/context-parallel.md section 3). A decode
 * strategy is one file (cp_allgather_kv.c, cp_replicated_index.c, cp_exact_topk.c, cp_lean.c,
 * cp_allgather_blocks.c) holding one dsacp_cp_strategy: its name, its option check, the heads
 * its decode rows need, its attend-and-merge step, its own o_proj where it has one, its byte and
 * call formula per phase, and its report fields. cp_strategy.c registers them in one table;
 * cp_rules.c, above it, holds what looks the table up; cp_formula.c, below it, the formula
 * pieces the strategy files share. Everything else (the layer, the engine, the planner, the
 * CLI, the tests) reads the table, never the enum value. Adding a strategy: one file plus one
 * line of the table.
 */
#ifndef DSACP_CP_STRATEGY_H
#define DSACP_CP_STRATEGY_H

#include "cp/cp.h"

#include <jansson.h>

/* What a strategy's formula reads: one step's decode-like tokens on rank `me`, every field the
 * same on every rank except me / ir. Byte counts are the communicator's (logical bytes). */
typedef struct dsacp_cp_formula {
    const dsacp_config *cfg;
    const dsacp_cp_options *opt;
    int64_t W, me;
    int64_t iW, iI, ir;            /* the indexer's holder groups (cp.h) */
    int64_t nd;                    /* decode-like tokens of the step */
    const int64_t *context;        /* [nd] positions cached before each (the tokens of a request in order) */
    int64_t nreq;                  /* requests among them */
    const int64_t *req_old;        /* [nreq] each request's cached positions before the step */
    int64_t latent_bytes, index_bytes; /* cache entry bytes per token */
    int64_t block_size;            /* the engine's cache block (tokens) */
    bool deployed;                 /* numerics (wire dtype of partials) */
    bool want_topk;                /* rank 0 asks for the selected sets */
    bool tp_a2a;                   /* DSA-CP tp step on the activation path (o_proj stays split) */
    /* the decode rows' o_proj path (dsacp_cp_o_paths): tp's column shards (tp, f32 copies when
     * the heads split FP8 blocks), or the heads' v rows gathered and the whole weight applied */
    bool tp, o_gather_v, o_tp_f32;
    const int64_t *request;        /* [nd] request index of each token (in 0 .. nreq) */
    /* lean's data-dependent counts (measured; 0 in a prediction) */
    int64_t lean_fallback_tokens, lean_fallback_rounds, lean_owned_winners;
    /* layers the step runs: a target step num_hidden_layers, an MTP step 1 (0: num_hidden_layers) */
    int64_t layers;
} dsacp_cp_formula;

typedef struct dsacp_cp_strategy {
    const char *name;              /* --decode-strategy value */
    const char *summary;           /* one line: what moves (help text, docs) */
    /* Capabilities the shared code reads instead of the strategy's identity. */
    bool gathers_context;          /* decode tokens read a transient full copy of their context (a
                                    * view agreement per layer; never the distributed context path;
                                    * every rank scores every position and attends its heads) */
    bool all_query_heads;          /* decode rows project and absorb every head on every rank */
    bool overlaps_candidates;      /* candidates travel while W_UK absorbs the query rows */
    bool replicated_index;         /* expects a replicated index cache (the CLI's default for it) */
    /* Option check beyond the common ones (dsacp_cp_options_check): dcp_decode when decode tokens
     * attend over a sharded cache with this strategy. NULL: nothing to check. */
    int (*check)(const dsacp_cp_options *opt, int W, int64_t block_size, bool dcp_decode);
    /* The attend-and-merge step of cp_layer.c (step 6): fills v of heads [h0, h1) (or, when
     * merges_output says so, the rank's partial of every head) and the selected sets. */
    int (*decode)(const dsacp_cp_decode_args *a);
    /* The step workspace decode takes from cp->ws (and gives back before returning) for n_dec
     * decode rows at contexts up to cp->max_context, added to *total (the engine sizes its
     * workspace with it through dsacp_cp_layer_ws_bytes); NULL: nothing. */
    void (*ws_need)(size_t *total, const dsacp_cp_ctx *cp, int64_t n_dec);
    /* The strategy applies o_proj itself to its decode rows (lean's output merge) on a step
     * whose o_proj is whole on every rank (!tp_a2a); NULL: never. */
    bool (*merges_output)(const dsacp_cp_options *opt, bool tp_a2a);
    int (*o_proj)(dsacp_cp_ctx *cp, const dsacp_dsa_ctx *ctx, const dsacp_weight *o, const dsacp_cp_step *st,
                  float *vcat, float *out, int *rc);
    /* Bytes per element of the partials and of the decode rows' o_proj all-reduce (4 if NULL). */
    int64_t (*wire_bytes)(const dsacp_cp_options *opt, bool deployed);
    /* Formula. shared_len/shared: counts every rank's formula reads (computed once per step for
     * all ranks, so W ranks cost O(W)); comm: the counters the strategy's own phases add on rank
     * f->me for the step, through every layer (o_proj and control are the layer's). shared_len
     * reads only f's W, iW and nreq, never decreasing in nreq (the planner sizes a step's memory
     * with nreq at its bound). */
    int64_t (*shared_len)(const dsacp_cp_formula *f);
    void (*shared)(const dsacp_cp_formula *f, int64_t *sh);
    void (*comm)(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT]);
    /* Bytes one query token moves through the strategy on the distributed context path (section
     * 3.6), given the o_proj bytes of the layer's path and the gather path's bytes; NULL for a
     * strategy that gathers the context (never cheaper than the gather). */
    double (*token_bytes)(const dsacp_cp_formula *f, double gather_bytes, double oproj_bytes);
    /* Report members (dsacp_cp_strategy_report); NULL: none. */
    int (*report)(const dsacp_cp_options *opt, json_t *obj);
} dsacp_cp_strategy;

/* The table (cp_strategy.c, below cp_rules.c and above nothing the strategy files call):
 * strategies by id (dsacp_decode_strategy, the index in the table). */
int dsacp_cp_strategy_count(void);
const dsacp_cp_strategy *dsacp_cp_strategy_at(int id);
/* The strategy of a set of options (assert: checked options). */
const dsacp_cp_strategy *dsacp_cp_strategy_of(const dsacp_cp_options *opt);


/* ---- pieces of the formulas shared by the strategies (cp_formula.c: never the table) ---- */

/* c += (calls, sent, recv). */
void dsacp_cp_count(dsacp_comm_counter *c, int64_t calls, int64_t sent, int64_t recv);
/* Heads of rank q. */
static inline int64_t dsacp_cp_heads(int64_t H, int64_t q, int64_t W)
{
    return dsacp_split_begin(H, q + 1, W) - dsacp_split_begin(H, q, W);
}
/* The layers f's step runs (f->layers, num_hidden_layers when 0): every per-layer count x it. */
static inline int64_t dsacp_cp_formula_layers(const dsacp_cp_formula *f)
{
    return f->layers > 0 ? f->layers : f->cfg->num_hidden_layers;
}
/* Bytes of a sharded cache entry under f's layouts (latent where sharded, indexer where sharded). */
int64_t dsacp_cp_formula_sharded_entry(const dsacp_cp_formula *f);
/* The query gather and the LSE merge of the partial outputs (cp_merge.c), per layer x L. */
void dsacp_cp_formula_merge(const dsacp_cp_formula *f, dsacp_comm_counter out[DSACP_PHASE_COUNT]);
/* Bytes per query token of the query gather and the merge (token_bytes of the merging
 * strategies): candidates + query rows + lse + partial rows + the o_proj bytes. */
double dsacp_cp_merge_token_bytes(const dsacp_cp_formula *f, double candidates, double oproj_bytes);
/* The all-reduce of n elements of s bytes on rank me (reduce-scatter + all-gather over blocks
 * n q / W), L times. */
void dsacp_cp_formula_allreduce(dsacp_comm_counter *c, int64_t n, int64_t s, int64_t W, int64_t me, int64_t L);
/* The strategy's wire bytes (4 without a wire_bytes hook). */
int64_t dsacp_cp_wire_bytes(const dsacp_cp_strategy *s, const dsacp_cp_options *opt, bool deployed);
/* The indexer's holder groups of `rank` (cp.h's iW, iI, ir): W sharded, W / G partial:G, else 1. */
void dsacp_cp_index_groups(const dsacp_cp_options *opt, int64_t W, int64_t rank, int64_t *iW, int64_t *iI, int64_t *ir);

/* ---- the rules over the table (cp_rules.c; also dsacp_cp_options_check, dsacp_cp_context_bytes
 * and dsacp_cp_o_paths of dsacp_cp.h) ---- */

/* The whole formula of the decode-like tokens of a step on rank f->me: the
 * strategy's phases (with its shared counts `sh`, from dsacp_cp_formula_shared) and the decode
 * rows' o_proj (cp_layer.c step 7), added to out. */
void dsacp_cp_decode_comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT]);
/* The strategy's shared counts of a step: _len their number (0 when it has none or the step has
 * no decode token), _into writes them to the caller's sh[_len] (the planner's step memory), and
 * dsacp_cp_formula_shared allocates them (dsacp_calloc'ed, *sh = NULL when none; dsacp_free). */
int64_t dsacp_cp_formula_shared_len(const dsacp_cp_formula *f);
void dsacp_cp_formula_shared_into(const dsacp_cp_formula *f, int64_t *sh);
int dsacp_cp_formula_shared(const dsacp_cp_formula *f, int64_t **sh);
/* Puts the configured strategy's own members into the engine's report object (lean: its
 * options and merge backend); DSACP_ENOMEM when jansson fails. */
int dsacp_cp_strategy_report(const dsacp_cp_options *opt, json_t *obj);

#endif /* DSACP_CP_STRATEGY_H */
