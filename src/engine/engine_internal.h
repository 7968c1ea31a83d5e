/*
 * engine_internal.h -- the engine's state, shared by its files and nothing else:
 *   engine.c         requests and steps (creation, the step's order, the request table);
 *   engine_model.c   the model stack around the attention: weight binding, norms, SwiGLU, MoE
 *                    routing and forward, lm_head;
 *   engine_cp.c      the context-parallel setup and the validation of the options;
 *   engine_plan.c    the planner's bookkeeping (the only engine file that includes dsacp_plan.h);
 *   engine_report.c  the report's notes (dsacp_engine_report_notes, written with jansson);
 *   engine_kv.c      the KV a relayout moves: wire bytes, pack/unpack of entries, imported
 *                    requests, the layer hook;
 *   engine_spec.c    speculative decoding's hand-over between steps: the hidden rows a step
 *                    leaves for the MTP layer and the checks of an MTP step (below engine.c).
 */
#ifndef DSACP_ENGINE_INTERNAL_H
#define DSACP_ENGINE_INTERNAL_H

#include "attn/dsa_layer.h"
#include "cp/cp.h"
#include "engine/engine.h"
#include "model/model.h"

/* The MLP weights of one layer: a dense SwiGLU, or routed experts plus shared ones. */
typedef struct dsacp_mlp_weights {
    bool moe;
    const dsacp_weight *gate, *up, *down; /* dense MLP, or the shared experts of an MoE layer */
    const dsacp_weight *router;           /* [E][D] */
    float *bias;                          /* F32 [E] e_score_correction_bias */
    const dsacp_weight **egate, **eup, **edown; /* [E] each */
} dsacp_mlp_weights;

typedef struct dsacp_engine_request {
    bool live;
    int64_t length;    /* tokens of the request so far (all ranks) */
    int64_t mtp_length; /* positions the MTP layer's caches hold (engine option mtp) */
    dsacp_kv_seq seq;  /* this rank's latent block table (and indexer, when one cache) */
    dsacp_kv_seq iseq; /* this rank's indexer block table when the layouts differ */
    /* engine_kv.c: between dsacp_engine_import_begin and _end the request holds the blocks of
     * import_len positions, its length stays 0 and no step may name it. */
    bool importing;
    int64_t import_len;
} dsacp_engine_request;

/* The positions a request's blocks are reserved for (its length, or what an import brings). */
static inline int64_t dsacp_engine_request_span(const dsacp_engine_request *r)
{
    return r->importing ? r->import_len : r->length > r->mtp_length ? r->length : r->mtp_length;
}

/* The hidden rows one step leaves for the next MTP step (engine_spec.c): the step's entries,
 * where each of its tokens ran (-1 every rank, else a rank), and this rank's rows. */
typedef struct dsacp_engine_stash {
    bool valid;
    int64_t n_ent, T;
    int64_t *req, *ntok, *pos0; /* [n_ent] */
    int32_t *place;             /* [T] */
    int64_t *row;               /* [T] this rank's row in h, -1 when not held */
    float *h;                   /* [T][D] (rows held) */
    int64_t cap_ent, cap_T;
} dsacp_engine_stash;

/* The planner's prediction of the engine's collectives (engine_plan.c). */
typedef struct dsacp_engine_plan dsacp_engine_plan;

struct dsacp_engine {
    const dsacp_model *model;
    const dsacp_config *cfg;
    dsacp_engine_options opt;
    dsacp_rope rope;
    dsacp_kv_cache *cache;  /* latent cache (and indexer cache when both layouts agree) */
    dsacp_kv_cache *icache; /* indexer cache when the layouts differ, else == cache */
    dsacp_comm *comm;
    bool owns_comm;
    dsacp_cp_ctx cp;
    dsacp_step_times times; /* of the last step */
    int64_t L;  /* the target's layers */
    int64_t NL; /* layers bound and cached: L, plus the MTP layer (index L) with opt.mtp */
    /* the model stack (engine_model.c) */
    dsacp_dsa_weights *attn;
    dsacp_mlp_weights *mlp;
    float **in_norm, **post_norm, *final_norm;
    const dsacp_weight *embed, *head;
    /* the MTP layer's own parts (bound with opt.mtp; its decoder layer is index L of the arrays) */
    float *mtp_enorm, *mtp_hnorm, *mtp_norm;
    const dsacp_weight *mtp_eh, *mtp_head, *mtp_embed;
    dsacp_engine_stash stash_target, stash_mtp; /* engine_spec.c */
    dsacp_engine_request *req;
    int64_t nreq, capreq;
    dsacp_engine_plan *plan; /* NULL until dsacp_engine_plan_setup */
    /* The step workspace (engine.c, "the step"): sized at creation for a one-token step (or by
     * dsacp_engine_set_max_num_batched_tokens for the largest step accepted), grown at the start
     * of a larger step than any before (nothing taken then), reset at every step. */
    dsacp_arena ws;
    int64_t max_step_tokens; /* dsacp_engine_set_max_num_batched_tokens; 0: no limit */
    dsacp_engine_layer_hook layer_hook; /* dsacp_engine_set_layer_hook (engine_kv.c), NULL: none */
    void *layer_hook_arg;
};

/* ---- engine.c ---- */
/* The live request `id`, or NULL. */
dsacp_engine_request *dsacp_engine_find_request(const dsacp_engine *e, int64_t id);
/* The longest context a request can reach in this engine: max_position_embeddings, or less when
 * the latent pools of the group hold fewer positions (one rank's pool holds at most num_blocks x
 * block_size of them). Per-step buffers that follow the context length are sized for this, once,
 * so that a growing context never grows the workspace. */
int64_t dsacp_engine_max_context(const dsacp_engine *e);

/* ---- engine_model.c ---- */
/* Binds every layer's weights and norm vectors, the final norm, the embedding and lm_head. */
int dsacp_engine_model_bind(dsacp_engine *e);
/* Releases what dsacp_engine_model_bind made (also after a partial bind). */
void dsacp_engine_model_release(dsacp_engine *e);
/* The bytes dsacp_engine_mlp takes from the workspace for n <= T rows, whichever layer (SIZE_MAX
 * when it overflows). */
size_t dsacp_engine_model_workspace(const dsacp_engine *e, int64_t T);
/* out[n][D] = MLP of layer l (dense SwiGLU, or MoE with its shared experts) over x[n][D]; its
 * scratch comes from ws and is given back before it returns. */
int dsacp_engine_mlp(const dsacp_engine *e, dsacp_arena *ws, int64_t l, const float *x, int64_t n, float *out,
                     bool act_quant);
/* The bytes dsacp_engine_head takes from the workspace for n <= T rows (either head). */
size_t dsacp_engine_head_workspace(const dsacp_engine *e, int64_t T);
/* logits[n][V] = lm_head x[n][D], or the MTP layer's shared head (mtp) (the kernel's scratch from
 * ws, given back); DSACP_ERANGE naming the first non-finite logit. */
int dsacp_engine_head(const dsacp_engine *e, dsacp_arena *ws, const float *x, int64_t n, float *logits, bool mtp);
/* The MTP layer's input rows (docs/mtp.md): out[n][D] = eh_proj [enorm(embed(tokens[i])) (zero at
 * position 0); hnorm(hidden[i])]; scratch from ws (dsacp_engine_model_workspace counts it). */
int dsacp_engine_mtp_input(const dsacp_engine *e, dsacp_arena *ws, const int32_t *tokens, const int64_t *pos,
                           const float *hidden, int64_t n, float *out, bool aq);

/* ---- engine_spec.c ---- */
void dsacp_engine_stash_free(dsacp_engine_stash *s);
/* Keeps a finished step's hidden rows: st's entries and placement, and this rank's active rows
 * rows[n_dec + n_pre][D] (st->act order). DSACP_ENOMEM leaves the stash invalid. */
int dsacp_engine_stash_keep(dsacp_engine *e, dsacp_engine_stash *s, const dsacp_step_entry *entries, const int64_t *pos0,
                            const dsacp_cp_step *st, const float *rows);
/* The MTP step's sources, checked (the same verdict on every rank): for each token t of the step
 * (entries at MTP positions pos0[i]...), place[t] and src[t] = the stash row it reads (in *from,
 * the target's stash for a catch-up, the MTP's for a chain), -1 when this rank does not hold it. */
int dsacp_engine_mtp_sources(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const int64_t *pos0,
                             int32_t *place, int64_t *src, const dsacp_engine_stash **from);

/* ---- engine_cp.c ---- */
/* Validation of the options before anything is allocated (the same verdict on every rank). */
int dsacp_engine_check_options(const dsacp_config *cfg, const dsacp_engine_options *opt, const dsacp_cp_options *cp,
                               int W);
/* The context-parallel context of a created engine (pools and layers bound). */
int dsacp_engine_setup_cp(dsacp_engine *e, const dsacp_cp_options *cp);
/* Releases what dsacp_engine_setup_cp made. */
void dsacp_engine_release_cp(dsacp_engine *e);
/* Positions of [0, L) rank q keeps in a cache of the given layout. */
int64_t dsacp_engine_kept_on(const dsacp_engine *e, dsacp_cp_layout layout, int64_t L, int q);

/* ---- engine_plan.c ---- */
/* What the planner needs to know of this engine, and the counters so far as its start. */
int dsacp_engine_plan_setup(dsacp_engine *e);
void dsacp_engine_plan_free(dsacp_engine *e);
/* Loads the --context-path auto profile into e->cp.hw. */
int dsacp_engine_plan_load_hw(dsacp_engine *e, const char *path);
/* The profile's name (e->cp.hw), NULL without one. */
const char *dsacp_engine_plan_hw_name(const dsacp_engine *e);
/* The counters before an engine call, and their growth added to the measured side after it. */
void dsacp_engine_measure_begin(const dsacp_engine *e, dsacp_comm_counter before[DSACP_PHASE_COUNT]);
void dsacp_engine_measure_end(dsacp_engine *e, const dsacp_comm_counter before[DSACP_PHASE_COUNT]);
/* One agreement of the group added to the prediction. */
void dsacp_engine_plan_agreement(dsacp_engine *e);
/* The workspace dsacp_engine_plan_step takes for n entries bringing T tokens (the entries and the
 * planner's lists, dsacp_plan_entries_bytes). */
size_t dsacp_engine_plan_workspace(const dsacp_engine *e, int64_t T, int64_t n);
/* A step that completed (added to the prediction; its scratch from ws, given back), or one that
 * failed (the prediction is lost). */
/* st: the step as built (entries' lengths, flags, placement, layer range); n_logits [n_ent]: the
 * logits rows of each entry when `last` (each >= 1); mtp: an MTP step (dsacp_engine_mtp_step). */
void dsacp_engine_plan_step(dsacp_engine *e, dsacp_arena *ws, const dsacp_cp_step *st, const int64_t *n_logits,
                            const uint8_t want[2], bool last, bool mtp);
void dsacp_engine_plan_lost(dsacp_engine *e);
/* The planned counters and (measured non-NULL) the measured ones, per phase. */
void dsacp_engine_plan_counters(const dsacp_engine *e, dsacp_comm_counter planned[DSACP_PHASE_COUNT],
                                dsacp_comm_counter measured[DSACP_PHASE_COUNT]);
/* Whether every step so far is in the prediction. */
bool dsacp_engine_plan_tracked(const dsacp_engine *e);
/* Forgets the lean statistics already counted (after dsacp_engine_cp_stats_reset). */
void dsacp_engine_plan_stats_reset(dsacp_engine *e);
/* The planner's memory of this rank: kv[2] the KV bytes of the live requests [latent, index];
 * weights[4] (DSA-CP only, else untouched) [q resident, o resident, ring, gather]. */
int dsacp_engine_plan_memory(const dsacp_engine *e, int64_t kv[2], int64_t weights[4]);

#endif
