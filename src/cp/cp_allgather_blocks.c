/*
 * cp_allgather_blocks.c -- decode strategy "allgather-blocks": vllm-ascend PR #6563's stop-gap
 * (gather_kv_cross_cp) as it runs, so that its measured bytes are the seed's. The seed forces the
 * interleave to the block size (cp_kv_cache_interleave_size = block_size), so rank q's local
 * block j holds global block j W + q; every layer it all-gathers the block tables of the step's
 * requests and the whole blocks they reference, rebuilds a global table and runs the
 * single-process kernels on the copy.
 *
 * Moves (phase kv_gather, one all-gather per layer): for every decode request of the step, each
 * rank sends the blocks holding its positions of [0, new_len) -- whole blocks of B entries, the
 * last one whole even when partly filled -- and their block table entries (4 bytes each):
 *   sent by rank q = sum over requests of ceil(local_len(new_len, q) / B) x (4 + B x Esh)
 * with Esh the entry bytes of the sharded caches (latent and/or indexer). allgather-kv moves the
 * entries of [0, old_len) only (the new token comes from the rank's staging); the difference is
 * the partial blocks' padding, the tables and the step's new tokens.
 * Then every rank scores every position, takes the top-k itself and attends with its own heads,
 * exactly as allgather-kv does on its copy.
 */
#include "cp/cp_strategy.h"

#include <string.h>

/* Blocks rank q holds of a request with n positions (interleave = block size B). */
static int64_t blocks_of(int64_t n, int64_t q, int64_t B, int64_t W) { return (dsacp_cp_local_len(n, q, B, W) + B - 1) / B; }

typedef struct copy {
    dsacp_kv_cache *cache;   /* the transient copy (the context's view pool, one layer) */
    dsacp_kv_seq *seqs;      /* [n_ent] global block tables of the copy */
    dsacp_dsa_view *view;    /* [n_ent] */
    const dsacp_dsa_view **vptr; /* [n_dec] */
    uint8_t *send, *recv;
    size_t *rb;
    int64_t nblocks;         /* blocks of the copy */
} copy;

/* The decode's lists from cp->ws for n entries of n_dec decode tokens (one list sizes and
 * takes them). */
static int copy_list(const dsacp_cp_ctx *cp, int64_t n, int64_t n_dec, copy *c, dsacp_cp_buf *b)
{
    int k = 0;
    b[k++] = DSACP_CP_BUF(c->rb, cp->W, 1);
    b[k++] = DSACP_CP_BUF(c->seqs, n, 1);
    b[k++] = DSACP_CP_BUF(c->view, n, 1);
    b[k++] = DSACP_CP_BUF(c->vptr, n_dec + 1, 1);
    return k;
}

static void ws_need(size_t *total, const dsacp_cp_ctx *cp, int64_t n_dec)
{
    copy c;
    dsacp_cp_buf b[4];
    dsacp_cp_bufs_need(total, b, copy_list(cp, n_dec > 0 ? n_dec : 1, n_dec, &c, b));
}

/* Sizes and buffers of the layer's exchange, all taken before the group agrees on them: the
 * lists from cp->ws, the copy and the exchange's buffers from the context's view pool. */
static bool copy_alloc(const dsacp_cp_decode_args *a, int64_t blockb, copy *c)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const int64_t W = cp->W, B = cp->block_size, n = st->n_ent > 0 ? st->n_ent : 1;
    dsacp_cp_buf b[4];
    if (!dsacp_cp_bufs_take(cp->ws, b, copy_list(cp, n, st->n_dec, c, b), "the allgather-blocks copy")) return false;
    memset(c->rb, 0, (size_t)W * sizeof *c->rb);
    int64_t total = 0;
    for (int64_t e = 0; e < st->n_ent; e++) {
        if (!st->decode[e]) continue;
        total += (st->new_len[e] + B - 1) / B;
        for (int64_t q = 0; q < W && blockb; q++) c->rb[q] += (size_t)(blocks_of(st->new_len[e], q, B, W) * blockb);
    }
    if (!blockb) return true;
    if (dsacp_cp_views_reserve(cp, total > 0 ? total : 1)) return false;
    c->cache = cp->view_cache, c->nblocks = total > 0 ? total : 1;
    c->send = cp->view_buf, c->recv = cp->view_buf + c->rb[cp->rank];
    dsacp_cp_views_tables(cp, st, st->decode, c->seqs);
    return true;
}

/* This rank's part: per decode request its table entries, then those blocks whole. */
static void pack(const dsacp_cp_decode_args *a, bool lat_sh, bool idx_sh, uint8_t *s)
{
    const dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const int64_t B = cp->block_size, ml = cp->lat->mla_bytes * B, il = cp->idx->index_bytes * B;
    for (int64_t e = 0; e < st->n_ent; e++) {
        if (!st->decode[e]) continue;
        const dsacp_kv_seq *seq = lat_sh ? st->lat_seq[e] : st->idx_seq[e];
        const int64_t nb = blocks_of(st->new_len[e], cp->rank, B, cp->W);
        if (nb > 0) /* a rank holding none of a short request's blocks sends no table entry */
            memcpy(s, seq->blocks, (size_t)nb * sizeof *seq->blocks), s += nb * (int64_t)sizeof *seq->blocks;
        for (int64_t j = 0; j < nb; j++) {
            if (lat_sh) memcpy(s, cp->lat->mla[a->layer] + st->lat_seq[e]->blocks[j] * ml, (size_t)ml), s += ml;
            if (idx_sh) memcpy(s, cp->idx->index[a->layer] + st->idx_seq[e]->blocks[j] * il, (size_t)il), s += il;
        }
    }
}

/* The copy: rank q's local block j of a request is global block j W + q of its table. */
static void unpack(const dsacp_cp_decode_args *a, bool lat_sh, bool idx_sh, copy *c)
{
    const dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const int64_t W = cp->W, B = cp->block_size, ml = cp->lat->mla_bytes * B, il = cp->idx->index_bytes * B;
    const uint8_t *r = c->recv;
    for (int64_t q = 0; q < W && c->cache; q++)
        for (int64_t e = 0; e < st->n_ent; e++) {
            if (!st->decode[e]) continue;
            const int64_t nb = blocks_of(st->new_len[e], q, B, W);
            r += nb * (int64_t)sizeof(int32_t); /* the sender's table: its blocks come in that order */
            for (int64_t j = 0; j < nb; j++) {
                const int64_t to = c->seqs[e].blocks[j * W + q];
                if (lat_sh) memcpy(c->cache->mla[0] + to * ml, r, (size_t)ml), r += ml;
                if (idx_sh) memcpy(c->cache->index[0] + to * il, r, (size_t)il), r += il;
            }
        }
    for (int64_t e = 0; e < st->n_ent; e++) {
        c->view[e] = (dsacp_dsa_view){cp->lat, cp->idx, a->layer, a->layer, st->lat_seq[e], st->idx_seq[e]};
        if (!st->decode[e] || !c->cache) continue;
        if (lat_sh) c->view[e].lat = c->cache, c->view[e].lat_layer = 0, c->view[e].lat_seq = &c->seqs[e];
        if (idx_sh) c->view[e].idx = c->cache, c->view[e].idx_layer = 0, c->view[e].idx_seq = &c->seqs[e];
    }
}

static int decode(const dsacp_cp_decode_args *a)
{
    dsacp_cp_ctx *cp = a->cp;
    const dsacp_cp_step *st = a->st;
    const int64_t W = cp->W, nd = st->n_dec, K = a->ctx->cfg->index_topk;
    const bool lat_sh = W > 1 && cp->opt.kv_layout == DSACP_LAYOUT_SHARDED, idx_sh = W > 1 && cp->iW > 1;
    const int64_t blockb = (lat_sh || idx_sh) ? (int64_t)sizeof(int32_t) +
                           cp->block_size * ((lat_sh ? cp->lat->mla_bytes : 0) + (idx_sh ? cp->idx->index_bytes : 0)) : 0;
    copy c = {0};
    const size_t mark = dsacp_arena_mark(cp->ws);
    const bool fits = !blockb || cp->opt.interleave == cp->block_size;
    int crc = dsacp_cp_agree_alloc(cp, "strategy", copy_alloc(a, fits ? blockb : 0, &c), "the allgather-blocks copy");
    if (!crc && !fits)
        *a->rc = dsacp_error(DSACP_EINVAL, "allgather-blocks: interleave %lld differs from the block size %lld",
                             (long long)cp->opt.interleave, (long long)cp->block_size);
    if (!crc && fits && blockb) {
        pack(a, lat_sh, idx_sh, c.send);
        crc = dsacp_comm_allgatherv(cp->comm, c.send, c.rb[cp->rank], c.recv, c.rb, DSACP_PHASE_kv_gather);
        int64_t bytes = (c.cache ? c.nblocks * c.cache->block_size * (c.cache->mla_bytes + c.cache->index_bytes) : 0);
        for (int64_t q = 0; q < W; q++) bytes += (int64_t)c.rb[q];
        if (bytes > cp->transient_peak) cp->transient_peak = bytes;
    }
    if (!crc && fits) unpack(a, lat_sh, idx_sh, &c);
    if (!crc && fits && !*a->rc) {
        for (int64_t j = 0; j < nd; j++) {
            c.vptr[j] = &c.view[st->ent[st->act[j]]];
            const int64_t n = a->pos_act[j] + 1;
            cp->stats.decode_tokens++;
            cp->stats.keys_scored += n;
            cp->stats.keys_attended += n < K ? n : K;
        }
        int rc = dsacp_dsa_attend_views(a->ctx, a->w, a->proj, 0, nd, a->pos_act, c.vptr, cp->h0, cp->h1, a->vcat,
                                        a->topk, a->layer);
        if (rc) *a->rc = rc;
    }
    dsacp_arena_rewind(cp->ws, mark);
    return crc;
}

static int check(const dsacp_cp_options *cp, int W, int64_t block_size, bool dcp_decode)
{
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL)
        return dsacp_error(DSACP_EINVAL, "decode strategy allgather-blocks gathers whole blocks of a sharded or "
                           "replicated index cache: index_layout partial:G is not supported");
    if (cp->interleave != block_size)
        return dsacp_error(DSACP_EINVAL, "decode strategy allgather-blocks gathers whole cache blocks: it needs "
                           "interleave equal to block_size (%lld), as the seed forces it", (long long)block_size);
    return DSACP_OK;
}

/* Shared counts: [q] the blocks rank q sends for the step, [W] their sum, then nreq of work. */
static int64_t shared_len(const dsacp_cp_formula *f) { return f->W + 1 + f->nreq; }

static void shared(const dsacp_cp_formula *f, int64_t *sh)
{
    const int64_t W = f->W, B = f->opt->interleave;
    int64_t *tokens = sh + W + 1;
    for (int64_t j = 0; j < f->nd; j++) tokens[f->request[j]]++;
    for (int64_t r = 0; r < f->nreq; r++) {
        const int64_t n = f->req_old[r] + tokens[r];
        for (int64_t q = 0; q < W; q++) sh[q] += blocks_of(n, q, B, W);
        sh[W] += (n + B - 1) / B;
    }
}

static void comm(const dsacp_cp_formula *f, const int64_t *sh, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    const int64_t W = f->W, L = dsacp_cp_formula_layers(f), Esh = dsacp_cp_formula_sharded_entry(f);
    if (!Esh) return;
    const int64_t blockb = 4 + f->opt->interleave * Esh, mine = sh[f->me] * blockb, oth = (sh[W] - sh[f->me]) * blockb;
    dsacp_cp_count(&out[DSACP_PHASE_kv_gather], L, L * mine * (W - 1), L * oth);
}

const dsacp_cp_strategy dsacp_cp_strategy_allgather_blocks = {
    .name = "allgather-blocks",
    .summary = "vllm-ascend #6563 as it runs: every layer all-gathers whole cache blocks and block tables (interleave = block size)",
    .gathers_context = true,
    .check = check,
    .decode = decode,
    .ws_need = ws_need,
    .shared_len = shared_len,
    .shared = shared,
    .comm = comm,
};
