/*
 * dsacp_plan.h -- the cost model behind `dsacp plan` (docs/planning.md): what a step of the CP
 * engine moves, per rank and per phase, from the same formulas docs/context-parallel.md gives
 * and test_cp checks against the communicator's counters exactly; and the KV bytes a rank holds.
 * No MPI needed: these are pure functions of the configuration.
 */
#ifndef DSACP_PLAN_H
#define DSACP_PLAN_H

#include "dsacp.h"
#include "dsacp_cp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A step of the engine as the planner sees it, on one rank. */
typedef struct dsacp_plan_step {
    int64_t W, rank;
    /* Decode-like tokens (DCP: processed by every rank): their count and, per token, the
     * positions cached before it (its request's context; a token of a distributed chunk counts
     * the chunk's earlier tokens too). The tokens of one request are listed in order. */
    int64_t nd;
    const int64_t *context;   /* [nd] */
    const int64_t *request;   /* [nd] request index of each token (allgather-kv gathers per request) */
    int64_t nreq;             /* requests among the decode tokens */
    const int64_t *req_old;   /* [nreq] cached positions of each such request before the step */
    /* Prefill entries of the step (computed by their split): cached and new tokens each. */
    int64_t npre;
    const int64_t *pre_old, *pre_new; /* [npre] */
    int64_t latent_bytes, index_bytes; /* cache entry bytes per token (the engine's dtypes) */
    int64_t hidden_bytes;              /* D x 4 (logits rows to rank 0) */
    bool deployed;                     /* numerics: lean's bf16 partials */
    bool o_gather_v;                   /* o_proj's head columns split its FP8 blocks */
    /* lean: tokens whose verdict fell back, and layers in which that happened (a prediction
     * uses the measured rate or 0) */
    int64_t lean_fallback_tokens, lean_fallback_rounds;
} dsacp_plan_step;

/* Per phase: calls, bytes sent, bytes received on `rank` (seconds left 0), for one step through
 * all the model's layers, control agreements included. Returns DSACP_EINVAL for an option
 * combination the engine refuses. */
int dsacp_plan_step_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                         dsacp_comm_counter out[DSACP_PHASE_COUNT]);

/* KV bytes `rank` keeps for requests of len[i] positions (blocks of block_size tokens, one pool
 * per cache when the layouts differ): latent and indexer, as dsacp_engine_kv_usage reports
 * latent_used_bytes and index_used_bytes. */
void dsacp_plan_kv_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t rank,
                         const int64_t *len, int64_t nreq, int64_t block_size, int64_t latent_bytes,
                         int64_t index_bytes, int64_t *latent_out, int64_t *index_out);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_PLAN_H */
