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

struct dsacp_hw; /* a hardware profile (below) */

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
    /* DSA-CP weight plans (cp->mode == dsa-cp; every token of the step is then a prefill entry):
     * per layer the bytes q_b_proj and o_proj travel as ([L] each), the bytes of rank q's column
     * shard of o_proj as tp gathers it (data + its scale columns, or f32 when the heads split the
     * FP8 blocks; [W]), and whether the step takes tp's weight gather (else it moves
     * activations: all-to-all + reduce-scatter). NULL arrays: no weight phases. */
    const int64_t *q_bytes, *o_bytes, *o_shard_bytes;
    bool tp_gather;
    bool tp_auto;  /* o_proj auto: decide tp_gather by the engine's byte rule (o_shard_bytes needed) */
    bool o_tp_f32; /* tp's shards are f32 (the heads split o_proj's FP8 blocks) */
    /* Where the prefill entries sit in the step (the contiguous split cuts the step's tokens,
     * decode tokens included): the step's token count and each entry's first token. 0 / NULL:
     * the prefill entries are the whole step, in order. */
    int64_t step_tokens;
    const int64_t *pre_first; /* [npre] */
    /* Rank 0 asks for the selected sets (topk_dump): lean's decode tokens report the winners each
     * rank owned, a data-dependent count (dsacp_cp_stats.lean_owned_winners, x layers). */
    bool want_topk;
    int64_t lean_owned_winners;
    bool want_logits; /* rank 0 asks for logits: the prefill rows' hidden states travel to it */
    const struct dsacp_hw *context_hw; /* the profile of --context-path auto's time rule (or NULL) */
    bool logits_last; /* only each entry's last token's row (dsacp_engine_step_last) */
    /* Speculative decoding (docs/speculative.md). The layers the step runs: [layer0, layer0 +
     * layers) -- a target step [0, num_hidden_layers), an MTP step [num_hidden_layers, +1) (its
     * q_bytes / o_bytes entries at index layer0; layer-shard's owner layer0 mod W); layers 0:
     * num_hidden_layers from 0. */
    int64_t layer0, layers;
    /* [npre] or NULL: with logits_last, the rows of each prefill entry's last tokens rank 0's head
     * needs (a verify entry's n_logits; NULL: 1 each) */
    const int64_t *pre_logits;
    /* [npre] or NULL: the rank computing each prefill entry's tokens (an MTP chain row computed
     * where its hidden input is), -1: the split rule (NULL: the split rule for all) */
    const int64_t *pre_rank;
    /* dsacp_plan_entries_comm: [n] beside its entries, or NULL (ordinary entries) */
    const struct dsacp_plan_entry_spec *entry_spec;
} dsacp_plan_step;

/* Per phase: calls, bytes sent, bytes received on `rank` (seconds left 0), for one step through
 * all the model's layers, control agreements included. Returns DSACP_EINVAL for an option
 * combination the engine refuses. */
int dsacp_plan_step_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                         dsacp_comm_counter out[DSACP_PHASE_COUNT]);
/* The same without allocating: the step's per-rank counts carved from the caller's memory
 * (8-byte aligned), at least dsacp_plan_step_bytes(cfg, cp, s->W, s->nd, s->nreq) bytes (0 when
 * W == 1, mem may then be NULL; SIZE_MAX on overflow, a bound for nd and nreq at least the
 * step's serves any smaller step); DSACP_EINVAL naming mem when it is short. */
size_t dsacp_plan_step_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t nd, int64_t nreq);
int dsacp_plan_step_comm_mem(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *s,
                             dsacp_comm_counter out[DSACP_PHASE_COUNT], void *mem, size_t bytes);

/* --context-path auto's byte rule for a chunk after old_len cached positions (the engine uses
 * this function): the bytes gathering the sharded context moves per rank, and the bytes one
 * token moves through the decode strategy; the chunk is distributed when new x per < gather. */
void dsacp_plan_context_rule(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                             int64_t index_bytes, bool deployed, bool o_gather_v, int64_t old_len, double *gather_bytes,
                             double *per_token);

/* How the engine applies o_proj to decode tokens for an o_proj stored as `dtype` (FP8: square
 * blocks of `block`): *gather_v when the heads' v rows are all-gathered and every rank applies
 * the whole o_proj (the heads' columns split the FP8 blocks, or DSA-CP's layer-shard o_proj),
 * *tp_f32 when DSA-CP's tp shards are kept in f32 for the same reason. */
void dsacp_plan_o_paths(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, dsacp_dtype dtype, int64_t block,
                        bool *gather_v, bool *tp_f32);

/* The context path of a chunk of n_new tokens after old_len positions on a sharded context, as
 * the engine decides it (cp->context_path; auto: the byte rule above, or with a hardware profile
 * -- cp->context_hardware loaded -- the path dsacp_plan_chunk_layer prices faster on it). The
 * engine and dsacp_plan_entries_comm both call this. An error status when planning the times
 * fails -- DSACP_ENOMEM, or DSACP_ERANGE for a figure that is not finite or byte counts past 64
 * bits, which a profile within dsacp_hw_load's ranges and an engine's step sizes do not reach
 * (the engine then stops the step on every rank). */
int dsacp_plan_context_distributed(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                                   int64_t index_bytes, bool deployed, bool o_gather_v, bool o_tp_f32, const struct dsacp_hw *hw,
                                   int64_t old_len, int64_t n_new, bool *distributed);

/* One entry of a step as dsacp_engine_step receives it: its request's cached positions before
 * the step and the new tokens. */
typedef struct dsacp_plan_entry {
    int64_t old_len, n_new;
} dsacp_plan_entry;
/* What a speculative-decoding step adds to an entry (docs/speculative.md; all zero: an ordinary
 * entry), given beside the entries in base->entry_spec. flags: DSACP_ENTRY_* (VERIFY: its rows
 * are decode rows whenever decode tokens are, each with its own context, never the context-path
 * choice); n_logits: rows of logits after its last tokens with logits_last (0: 1); path: how its
 * tokens are placed -- DSACP_PLAN_PATH_AUTO classified as the engine classifies entries, or given
 * (an MTP step, whose rows run where their hidden inputs are): _DECODE every rank, _SPLIT the
 * prefill split (a catch-up step repeats its target step's placement), _RANK all on rank `rank`
 * (a chain row under DSA-CP alone). An MTP step also sets base->layer0 / layers. */
typedef struct dsacp_plan_entry_spec {
    uint32_t flags;
    int64_t n_logits;
    int32_t path, rank;
} dsacp_plan_entry_spec;
enum { DSACP_PLAN_PATH_AUTO = 0, DSACP_PLAN_PATH_DECODE = 1, DSACP_PLAN_PATH_SPLIT = 2, DSACP_PLAN_PATH_RANK = 3 };

/* dsacp_plan_step_comm for a step given as entries: classifies them the way the engine does
 * (decode tokens, verify entries, prefill chunks, chunks after a sharded context by
 * cp->context_path, given paths by base->entry_spec, tp's weight path by cp->o_proj) and fills
 * base's lists (base's own lists and tp_gather ignored). */
int dsacp_plan_entries_comm(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                            const dsacp_plan_entry *ent, int64_t n, dsacp_comm_counter out[DSACP_PHASE_COUNT]);
/* The same allocating nothing: its lists and the step's counts (dsacp_plan_step_comm_mem)
 * carved from the caller's memory (8-byte aligned), at least dsacp_plan_entries_bytes(cfg, cp,
 * W, T, n) bytes for n entries bringing T new tokens in all on W ranks (SIZE_MAX on overflow;
 * nothing is needed when W == 1, mem may then be NULL); DSACP_EINVAL naming mem when it is
 * short. */
size_t dsacp_plan_entries_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t T, int64_t n);
int dsacp_plan_entries_comm_mem(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_plan_step *base,
                                const dsacp_plan_entry *ent, int64_t n, dsacp_comm_counter out[DSACP_PHASE_COUNT],
                                void *mem, size_t bytes);

/* KV bytes `rank` keeps for requests of len[i] positions (blocks of block_size tokens, one pool
 * per cache when the layouts differ): latent and indexer, as dsacp_engine_kv_usage reports
 * latent_used_bytes and index_used_bytes. */
void dsacp_plan_kv_bytes(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t rank,
                         const int64_t *len, int64_t nreq, int64_t block_size, int64_t latent_bytes,
                         int64_t index_bytes, int64_t *latent_out, int64_t *index_out);

/* The q_b_proj / o_proj bytes a rank holds under the DSA-CP weight plans (cp->mode dsa-cp), as
 * dsacp_engine_weight_usage reports them (resident, layer-shard rings, tp's gather buffers;
 * steps_* left 0), for weights stored as `dtype` (F32, BF16, F16 or F8_E4M3 with square blocks
 * of `block`). */
void dsacp_plan_weight_usage(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t rank,
                             dsacp_dtype dtype, int64_t block, dsacp_weight_usage *out);

/* ---- hardware profiles and the roofline (docs/planning.md) ----
 * The planning functions below find the busiest rank in one pass over the ranks (O(W), not W
 * calls of dsacp_plan_step_comm), and return DSACP_ERANGE naming the figure when any result is
 * not a finite number (a profile built by hand beyond the loader's ranges). */

/* One rank's device and its links, from a JSON file (the files in hardware/; every field required):
 *   name, source (where the figures come from), flops_bf16, flops_fp8 (FLOP/s, dense peak),
 *   mem_bw (bytes/s), mem_bytes (capacity), ranks_per_node, link_bw (bytes/s one way, per rank,
 *   inside a node), link_latency_us (per collective round inside a node), net_bw and
 *   net_latency_us (the same across nodes, used when W > ranks_per_node). */
typedef struct dsacp_hw {
    char name[160], source[512];
    double flops_bf16, flops_fp8, mem_bw, mem_bytes;
    int64_t ranks_per_node;
    double link_bw, link_latency_us, net_bw, net_latency_us;
} dsacp_hw;
/* Reads and checks a profile: DSACP_EINVAL with a message naming the file and, for a field, the
 * field when the file cannot be opened, is not a regular file, is not JSON (the line of the
 * error), or a field is missing, of the wrong JSON type (ranks_per_node: an integer; name and
 * source: non-empty strings without control characters, within the struct's buffers) or outside
 * its physical range (docs/planning.md "Hardware profiles": FLOP rates 1e6..1e18 /s, bandwidths
 * 1e6..1e15 B/s, mem_bytes 1e6..1e15, ranks_per_node 1..65536, latencies 1e-3..1e6 us). */
int dsacp_hw_load(const char *path, dsacp_hw *out);

/* One decode layer under a strategy, on the busiest rank (the one receiving the most). */
typedef struct dsacp_plan_decode {
    double recv_bytes, sent_bytes;      /* per step, all phases but control */
    double calls;                       /* collective calls per layer (rounds) */
    double recv_phase[DSACP_PHASE_COUNT];
    double flops;                       /* per rank per step */
    double weight_bytes, kv_read_bytes; /* bytes read from memory per rank per step */
    double kv_bytes_per_rank;           /* held, latent + indexer, this layer */
    double calls_phase[DSACP_PHASE_COUNT];
    double t_compute, t_memory, t_comm; /* seconds: flops / peak, bytes / bandwidth, bytes / link + calls x latency */
    /* communication the engine overlaps with compute it runs meanwhile (non-blocking collectives):
     * the candidates / lean's scores with W_UK's query rows, the prefill entries' all-gather with
     * the query projection -- the smaller of the two times */
    double t_hidden;
    double t_layer;                     /* max(t_compute, t_memory) + t_comm - t_hidden */
} dsacp_plan_decode;

/* batch decode tokens (one per request) with `context` cached positions each, W ranks, the
 * given CP options (deployed numerics: fp8 caches and weights, bf16 partials where the strategy
 * sends them). The weights' bytes per parameter: 1 (FP8 + block scales ~1/16384) when
 * deployed, else 2 (bf16). */
int dsacp_plan_decode_layer(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t context,
                            int64_t batch, bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out);

/* A decode step of the whole model per output token on the busiest rank: the attention layers
 * (dsacp_plan_decode_layer, with the weights stored at weight_bytes bytes per parameter: 4 f32,
 * 2 bf16, 1 fp8; 0: by the numerics), the MLP / MoE of every layer and lm_head (rank 0). Every
 * rank has every decode token (DCP): dense MLPs and shared experts run on every rank; the routed
 * experts are replicated (ep = 1, as dsacp's engine runs them: the experts the batch touches,
 * at most batch x num_experts_per_tok, are read) or spread over ep ranks (expert parallelism:
 * each rank runs its experts for the tokens routed to them -- the busiest rank's count from
 * seeded random routings -- and an all-reduce of the D outputs per MoE layer sums them). Each
 * part max(compute, memory); the collectives added. weights_per_rank: what the rank holds --
 * attention per the strategy (heads split, or whole where lean replicates them), MLPs, the
 * routed experts / ep, embedding and lm_head. */
typedef struct dsacp_plan_model {
    dsacp_plan_decode layer;
    double t_attention, t_mlp, t_moe_comm, t_head, tpot; /* seconds per step (tpot: per output token, = step) */
    double weights_per_rank;                             /* bytes */
    int64_t ep;
} dsacp_plan_model;
int dsacp_plan_decode_model(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                            int64_t batch, bool deployed, double weight_bytes, const dsacp_hw *hw, dsacp_plan_model *out);

/* ---- speculative decoding (issue 23; docs/planning.md "Speculative decoding") ---- */

/* k drafts per step accepted each with probability `acceptance` given the ones before it were
 * (the mean of the per-position rates); mtp: drafts from the model's MTP layer (its catch-up and
 * chain steps are priced), else n-gram prompt lookup (no draft step). */
typedef struct dsacp_plan_spec {
    int64_t k;          /* 1..16 */
    double acceptance;  /* [0, 1] */
    bool mtp;
} dsacp_plan_spec;
/* One speculative round on the busiest rank, per strategy: the target's verify step of batch x
 * (k + 1) decode rows, the MTP layer's catch-up step (the same rows through its one layer, eh_proj
 * and head) and its k - 1 chain steps (one row per request), and the expected tokens a round
 * emits E = (1 - A^(k+1)) / (1 - A) (k + 1 at A = 1): tpot = (verify + catch-up + chain) / E,
 * beside the non-speculative step `plain`. */
typedef struct dsacp_plan_spec_model {
    dsacp_plan_model plain, verify, mtp_step;  /* mtp_step: the MTP layer over batch x (k + 1) rows */
    double t_verify, t_catchup, t_chain;       /* seconds per round */
    double tokens_per_step, tpot;
    double mtp_kv_bytes_per_rank;              /* per request at the context: the MTP layer's caches */
} dsacp_plan_spec_model;
/* DSACP_EINVAL naming the field for k or acceptance out of range; the model's other figures as
 * dsacp_plan_decode_model takes them (cfg->num_hidden_layers: the target's layers; the MTP layer
 * is layer num_hidden_layers, MoE by the first_k_dense_replace / moe_layer_freq rule). */
int dsacp_plan_spec_price(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                          int64_t batch, bool deployed, double weight_bytes, const dsacp_hw *hw,
                          const dsacp_plan_spec *spec, dsacp_plan_spec_model *out);

/* The presets dsacp_preset_config knows, and "v32": the whole DeepSeek-V3.2 (61 layers, 256
 * routed experts, vocabulary 129280) for planning only -- no checkpoint is ever made of it. */
int dsacp_plan_preset(const char *name, dsacp_config *out);

/* One prefill layer for a fresh prompt of P tokens on W ranks, the busiest rank:
 *   DSACP_PLAN_PREFILL_CP          the CP engine: tokens by cp->prefill_split, all heads per token,
 *                                  entries all-gathered (dsacp_plan_step_comm)
 *   DSACP_PLAN_PREFILL_TP          tensor-parallel attention without CP: heads split, the indexer
 *                                  replicated (every rank scores every row), o_proj all-reduced
 *   DSACP_PLAN_PREFILL_TP_IDXSPLIT the same with the indexer's rows split over the ranks and the
 *                                  selected positions all-gathered (TensorRT-LLM #11871)
 * out->recv_bytes / calls: per layer; flops and times for the whole prompt. */
enum { DSACP_PLAN_PREFILL_CP = 0, DSACP_PLAN_PREFILL_TP = 1, DSACP_PLAN_PREFILL_TP_IDXSPLIT = 2 };
int dsacp_plan_prefill_layer(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t P, int mode,
                             bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out);

/* One layer of a chunk of `chunk` new tokens of one request after `context` positions cached on
 * the group (chunked prefill, or a prompt after a cached prefix), on the busiest rank, by the
 * context path cp->context_path takes (docs/context-parallel.md 3.6): gather -- the chunk's
 * tokens split by cp->prefill_split, every head for a rank's tokens, the sharded context
 * all-gathered; distributed -- every token on every rank through the decode strategy (its heads
 * or, for lean, all of them); auto -- the engine's byte rule picks (*distributed says which).
 * recv_bytes / calls exact (dsacp_plan_entries_comm); flops and memory as for prefill and
 * decode layers; kv_bytes_per_rank: the gathered context's transient bytes (gather) or the held
 * shard (distributed). */
int dsacp_plan_chunk_layer(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t context, int64_t chunk,
                           bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out, bool *distributed);

/* ---- disaggregated prefill and decode (issue 22; docs/planning.md "Disaggregated prefill and
 * decode") ---- */

/* The KV relayout from a producer group to a consumer group as the planner takes it: the fields
 * of src/cp's dsacp_cp_relayout (docs/context-parallel.md), whose formula prices it. Position p is
 * sent by producer rank (p / Ip) mod Wp; the consumer keeps it by its layouts (Wd, Id, kv_layout,
 * index_layout, index_group); latent_bytes / index_bytes: wire bytes per position and layer. */
typedef struct dsacp_plan_relayout {
    int64_t Wp, Ip, Wd, Id;
    dsacp_cp_layout kv_layout, index_layout;
    int64_t index_group;
    int64_t latent_bytes, index_bytes, layers;
} dsacp_plan_relayout;
/* A prefill chunk the producer ran: positions [a, b) of request `request`. */
typedef struct dsacp_plan_chunk {
    int64_t request, a, b;
} dsacp_plan_chunk;
/* The kv_transfer counter (calls, bytes_sent, bytes_recv; seconds 0) of one rank for the chunks
 * chunks[0..n): side 0 producer rank `rank` (what it sends), side 1 consumer rank `rank` (what it
 * receives) -- the relayout formula summed over the chunks, one message per (chunk, layer,
 * producer rank, consumer rank) carrying a position. DSACP_EINVAL naming the field for a relayout,
 * side, rank or chunk out of range (0 <= a < b, request >= 0). */
int dsacp_plan_kv_transfer(const dsacp_plan_relayout *r, const dsacp_plan_chunk *chunks, int64_t n, int side, int64_t rank,
                           dsacp_comm_counter *out);
/* Seconds a rank's kv_transfer takes on a link of bytes_per_s (one way) and latency_s per message:
 * its bytes (sent on side 0, received on side 1) / bandwidth + calls x latency. */
double dsacp_plan_link_seconds(const dsacp_comm_counter *c, int side, double bytes_per_s, double latency_s);

/* A disaggregated deployment against the same ranks run PD-mixed. Instances of W ranks each (one
 * node when W = the profile's ranks_per_node): `producers` prefill only and hand each request's
 * KV to one of `consumers`, which decode only; PD-mixed runs producers + consumers instances that
 * each prefill (chunk by chunk, one chunk per step beside the decode batch) and decode. */
typedef struct dsacp_plan_pd_options {
    int64_t producers, consumers;   /* P, D >= 1 */
    int64_t W, ep;                  /* ranks per instance; expert parallelism inside it (1..W) */
    int64_t prompt, output;         /* tokens per request: prompt and generated, >= 1 */
    int64_t chunk;                  /* PD-mixed prefill chunk (tokens per step beside the decode batch), >= 1 */
    int64_t producer_chunk;         /* a producer's chunk (no decode steps beside it); 0: chunk */
    double link_bw, link_latency_s; /* the transfer's link per rank (bytes/s one way, seconds per
                                     * message); 0: the profile's net_bw / net_latency_us */
    bool deployed;                  /* fp8 caches and weights (else bf16 weights, f32 caches) */
    double weight_bytes;            /* bytes per weight parameter, 0: by the numerics */
    bool mtp;                       /* both groups carry the MTP layer (speculative decoding with
                                     * method mtp): its prompt entries travel with the transfer */
} dsacp_plan_pd_options;
/* Per request, whatever the load: the transfer (the busiest producer rank's and consumer rank's
 * kv_transfer counters, the seconds the slower of the two takes on the link, and what is left of
 * it after the prefill's last layer when it streams layer by layer in flight), the producer's
 * prefill of the prompt, its chunks (of producer_chunk tokens), and the link used. */
typedef struct dsacp_plan_pd {
    dsacp_comm_counter sent, recv;
    double transfer_s, transfer_exposed_s, prefill_s;
    int64_t chunks;
    double link_bw, link_latency_s;
} dsacp_plan_pd;
/* One deployment at one load: stable when every queue's utilisation is below 1 and the decode
 * batch fits the memory; otherwise `limit` names what saturates first and the times are 0. */
typedef struct dsacp_plan_pd_side {
    bool stable;
    const char *limit;    /* "" when stable, else "prefill", "link", "decode" or "memory" */
    double ttft, tpot;    /* seconds: mean time to first token (queueing included), per output token */
    double itl_max;       /* the longest step a decoding request waits (PD-mixed: one carrying a chunk) */
    double prefill_util;  /* utilisation of the prefill queue (disaggregated: or of the link, if higher) */
    double batch;         /* decoding requests per instance (Little's law) */
    double held_per_rank; /* bytes on the busiest decoding rank: the batch's KV + the weights */
} dsacp_plan_pd_side;
/* Prices both deployments of o at each load rate[i] (requests per second into the deployment,
 * > 0) on the profile, for a model cfg (num_hidden_layers: the whole stack) and the CP options of
 * every instance (decode strategy, layouts, interleave, context path; producer and consumer the
 * same): *req, and disagg[i] / mixed[i]. Every step time comes from dsacp_plan_decode_model and
 * dsacp_plan_chunk_layer; docs/planning.md gives the queueing model. DSACP_EINVAL naming the field
 * for producers or consumers < 1 and every other option out of range. */
int dsacp_plan_pd_price(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_hw *hw, const dsacp_plan_pd_options *o,
                        const double *rate, int64_t nrate, dsacp_plan_pd *req, dsacp_plan_pd_side *disagg,
                        dsacp_plan_pd_side *mixed);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_PLAN_H */
