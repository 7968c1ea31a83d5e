/*
 * serve_pd.c -- prefill and decode on separate rank groups (dsacp_serve.h, docs/disaggregation.md):
 * the roles and the split of the world, the link between the groups, the leaders' control
 * messages, and the KV transfer itself. serve.c runs the loop and calls this file; nothing here
 * calls serve.c.
 *
 * The transfer (docs/disaggregation.md, "The relayout"): position p of a prompt is sent by
 * producer rank (p / I_p) mod W_p -- the rank that owns it, which keeps it under every producer
 * layout -- straight to every consumer rank that keeps it under the consumer's layouts. From
 * the producer's layer hook, after each layer's cache writes: one message per (request, layer,
 * producer rank, consumer rank) of a step's chunk, a 16-byte header {chunk start, layer,
 * n_latent, n_index} and the entries as the cache stores them, sent non-blocking so the step
 * goes on with the next layer. The consumer drains what has arrived at every step boundary
 * (matched probes on the request's tag, so a request it does not know yet is never touched)
 * into the blocks it reserved when it granted the request, and waits for the rest only when the
 * producer says the prompt is done (it then knows the chunks, so how many messages to expect).
 */
#include "serve/serve.h"
#include "comm/comm.h"
#include "cp/cp.h"
#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const role_names[] = {"kv_both", "kv_producer", "kv_consumer"};

const char *dsacp_kv_role_name(dsacp_kv_role role)
{
    return (int)role >= 0 && (int)role < 3 ? role_names[role] : "?";
}

int dsacp_kv_role_parse(const char *name, dsacp_kv_role *out)
{
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, role_names[i]) == 0) {
            *out = (dsacp_kv_role)i;
            return DSACP_OK;
        }
    return dsacp_error(DSACP_EINVAL, "kv role '%s': expected kv_both, kv_producer or kv_consumer", name ? name : "");
}

/* ---- the split ---- */

int dsacp_pd_split(dsacp_comm *world, dsacp_kv_role role, dsacp_comm **group)
{
    *group = NULL;
    const int W = dsacp_comm_size(world);
    int32_t mine = (int32_t)role, *all = malloc((size_t)W * sizeof *all);
    int rc = all ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    rc = dsacp_comm_agree_phase(world, rc, -1);
    if (rc) {
        free(all);
        return rc;
    }
    if ((rc = dsacp_comm_allgather(world, &mine, sizeof mine, all, -1))) {
        free(all);
        return rc;
    }
    int n[3] = {0, 0, 0}, bad = -1;
    for (int r = 0; r < W; r++) {
        if (all[r] < 0 || all[r] > 2) bad = r;
        else n[all[r]]++;
    }
    free(all);
    if (bad >= 0) return dsacp_error(DSACP_EINVAL, "kv role of world rank %d is not a role", bad);
    if (n[DSACP_KV_BOTH] == W) return DSACP_OK;
    if (n[DSACP_KV_BOTH] > 0)
        return dsacp_error(DSACP_EINVAL, "kv roles: %d rank%s kv_both beside %d kv_producer and %d kv_consumer: a "
                           "disaggregated job holds one producer group and one consumer group only", n[0],
                           n[0] == 1 ? " is" : "s are", n[1], n[2]);
    if (n[DSACP_KV_PRODUCER] == 0 || n[DSACP_KV_CONSUMER] == 0)
        return dsacp_error(DSACP_EINVAL, "kv roles: %d rank%s %s and none %s: a %s group needs a %s group in the same "
                           "job (mpirun -np P ... --kv-role kv_producer : -np D ... --kv-role kv_consumer)",
                           W, W == 1 ? " is" : "s are", n[1] ? "kv_producer" : "kv_consumer",
                           n[1] ? "kv_consumer" : "kv_producer", n[1] ? "producer" : "consumer",
                           n[1] ? "consumer" : "producer");
    return dsacp_comm_split_group(world, (int)role, dsacp_comm_rank(world), group);
}

/* ---- the link ---- */

/* What one rank tells the world about its group when the link is made. */
typedef struct pd_desc {
    int32_t role, W, numerics, kv_dtype;
    int64_t block_size, interleave;
    uint64_t model; /* a hash of the model's configuration */
    dsacp_cp_relayout side; /* this group's side of the relayout */
} pd_desc;

typedef struct pd_send {
    dsacp_comm_request *req;
    void *buf;
} pd_send;

typedef struct pd_import {
    int64_t s, eid, length, received, expected; /* expected: -1 until the producer's chunks are known */
} pd_import;

struct dsacp_pd {
    dsacp_comm *world, *link;
    dsacp_engine *e;
    dsacp_kv_role role;
    int wrank, wsize, grank, Wp, Wd;
    int *pw, *dw;         /* world ranks of the producer's and the consumer's group ranks */
    int peer;             /* world rank of the other group's rank 0 */
    dsacp_cp_relayout rl; /* both sides */
    double timeout, last_sent, last_heard;
    int tag_slots;
    dsacp_comm_counter predicted;
    pd_send *sends;
    int64_t n_sends, cap_sends;
    /* producer: the step's entries while the layer hook runs */
    const int64_t *st_s, *st_eid, *st_a, *st_n;
    int64_t st_n_ent;
    int64_t *pos[2];
    int64_t pos_cap;
    /* consumer: requests whose entries are arriving */
    pd_import *imp;
    int64_t n_imp, cap_imp;
    uint8_t *rbuf;
    size_t rbuf_cap;
    /* control messages received */
    int64_t *cbuf;
    size_t cbuf_cap;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The configuration fields that make two models compute alike (a hash, compared between groups). */
static uint64_t config_hash(const dsacp_config *c)
{
    const int64_t v[] = {c->hidden_size, c->num_hidden_layers, c->num_attention_heads, c->q_lora_rank, c->kv_lora_rank,
                         c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim, c->index_n_heads, c->index_head_dim,
                         c->index_topk, c->vocab_size, c->intermediate_size, c->moe_intermediate_size,
                         c->n_routed_experts, c->n_shared_experts, c->num_experts_per_tok, c->n_group, c->topk_group,
                         c->first_k_dense_replace, c->max_position_embeddings, c->fp8_weights, c->tie_word_embeddings};
    const double d[] = {c->rope_theta, c->rope_factor, c->rms_norm_eps, c->routed_scaling_factor, c->softmax_scale};
    return fnv(fnv(14695981039346656037ull, v, sizeof v), d, sizeof d);
}

static const char *kv_dtype_name(int32_t d) { return d == DSACP_KV_F32 ? "f32" : d == DSACP_KV_BF16 ? "bf16" : "fp8_ds_mla"; }

/* The verdict on the two groups' descriptions (the same on every rank). */
static int pd_check(const pd_desc *p, const pd_desc *d)
{
    if (p->model != d->model)
        return dsacp_error(DSACP_EINVAL, "kv_producer and kv_consumer groups load different models (their "
                           "configurations differ): both groups must serve the same model");
    if (p->numerics != d->numerics)
        return dsacp_error(DSACP_EINVAL, "kv_producer group runs %s numerics, kv_consumer group %s: the groups must "
                           "run the same numerics", p->numerics ? "deployed" : "exact", d->numerics ? "deployed" : "exact");
    if (p->side.layers != d->side.layers)
        return dsacp_error(DSACP_EINVAL, "the kv_%s group's engine has the MTP layer, the kv_%s group's not: the "
                           "relayout moves every cached layer, so create both groups' engines with opt.mtp or neither",
                           p->side.layers > d->side.layers ? "producer" : "consumer",
                           p->side.layers > d->side.layers ? "consumer" : "producer");
    if (p->kv_dtype != d->kv_dtype)
        return dsacp_error(DSACP_EINVAL, "kv_producer group caches latents as %s, kv_consumer group as %s: the groups "
                           "must use the same cache dtype (entries travel as stored)", kv_dtype_name(p->kv_dtype),
                           kv_dtype_name(d->kv_dtype));
    return DSACP_OK;
}

void dsacp_pd_free(dsacp_pd *pd)
{
    if (!pd) return;
    for (int64_t i = 0; i < pd->n_sends; i++) {
        /* A send still in flight here belongs to a run that failed: its request is left to MPI
         * (cancelling a send is not reliable) and its buffer with it. */
        bool done = false;
        if (pd->sends[i].req && dsacp_comm_test(pd->sends[i].req, &done) == DSACP_OK && done) free(pd->sends[i].buf);
    }
    dsacp_engine_set_layer_hook(pd->e, NULL, NULL);
    dsacp_comm_free(pd->link);
    free(pd->pw), free(pd->dw), free(pd->sends), free(pd->pos[0]), free(pd->pos[1]), free(pd->imp);
    free(pd->rbuf), free(pd->cbuf);
    free(pd);
}

static int pd_layer_hook(void *arg, int64_t layer);
static int pd_consumer_hook(void *arg, int64_t layer);

/* The descriptions of every world rank, gathered; the groups' sizes and world ranks. */
static int pd_describe(dsacp_pd *pd, pd_desc *all)
{
    const dsacp_engine_options *eo = dsacp_engine_options_get(pd->e);
    const dsacp_cp_options *co = dsacp_engine_cp_options(pd->e);
    pd_desc me;
    memset(&me, 0, sizeof me);
    me.role = (int32_t)pd->role;
    me.W = dsacp_comm_size(dsacp_engine_comm(pd->e));
    me.numerics = (int32_t)eo->numerics;
    me.kv_dtype = (int32_t)eo->kv_dtype;
    me.block_size = eo->block_size;
    me.interleave = co->interleave;
    me.model = config_hash(dsacp_engine_config(pd->e));
    dsacp_engine_relayout_side(pd->e, pd->role == DSACP_KV_PRODUCER, &me.side);
    int rc = dsacp_comm_allgather(pd->world, &me, sizeof me, all, -1);
    if (rc) return rc;
    for (int r = 0; r < pd->wsize; r++)
        if (all[r].role == DSACP_KV_PRODUCER) pd->pw[pd->Wp++] = r;
        else if (all[r].role == DSACP_KV_CONSUMER) pd->dw[pd->Wd++] = r;
        else return dsacp_error(DSACP_EINVAL, "world rank %d is kv_both: a disaggregated job holds a producer and a "
                                "consumer group only", r);
    if (pd->Wp == 0 || pd->Wd == 0)
        return dsacp_error(DSACP_EINVAL, "the link needs a kv_producer and a kv_consumer group (%d and %d ranks)",
                           pd->Wp, pd->Wd);
    if (all[pd->pw[0]].W != pd->Wp || all[pd->dw[0]].W != pd->Wd)
        return dsacp_error(DSACP_EINVAL, "the groups' engines do not run over the groups of dsacp_pd_split");
    return DSACP_OK;
}

int dsacp_pd_create(dsacp_comm *world, dsacp_engine *e, dsacp_kv_role role, double timeout_s, dsacp_pd **out)
{
    *out = NULL;
    const int W = dsacp_comm_size(world);
    dsacp_pd *pd = calloc(1, sizeof *pd);
    pd_desc *all = malloc((size_t)W * sizeof *all);
    int rc = pd && all ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for the link");
    if (!rc && (pd->pw = malloc((size_t)W * sizeof *pd->pw)) == NULL) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc && (pd->dw = malloc((size_t)W * sizeof *pd->dw)) == NULL) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc && (role != DSACP_KV_PRODUCER && role != DSACP_KV_CONSUMER))
        rc = dsacp_error(DSACP_EINVAL, "dsacp_pd_create: role %s has no link (kv_producer or kv_consumer)",
                         dsacp_kv_role_name(role));
    if (!rc && !(timeout_s > 0 && isfinite(timeout_s)))
        rc = dsacp_error(DSACP_EINVAL, "dsacp_pd_create: timeout_s %g must be finite and > 0", timeout_s);
    rc = dsacp_comm_agree_phase(world, rc, -1);
    if (!rc) {
        pd->world = world, pd->e = e, pd->role = role, pd->timeout = timeout_s;
        pd->wrank = dsacp_comm_rank(world), pd->wsize = W;
        rc = pd_describe(pd, all);
    }
    if (!rc) rc = pd_check(&all[pd->pw[0]], &all[pd->dw[0]]);
    rc = dsacp_comm_agree_phase(world, rc, -1);
    if (!rc) rc = dsacp_comm_dup(world, &pd->link);
    if (!rc) {
        const pd_desc *p = &all[pd->pw[0]], *d = &all[pd->dw[0]];
        pd->rl = d->side; /* the consumer's layouts and wire sizes, the producer's senders */
        pd->rl.Wp = p->side.Wp, pd->rl.Ip = p->side.Ip;
        const int *mine = role == DSACP_KV_PRODUCER ? pd->pw : pd->dw;
        const int n = role == DSACP_KV_PRODUCER ? pd->Wp : pd->Wd;
        for (int g = 0; g < n; g++)
            if (mine[g] == pd->wrank) pd->grank = g;
        pd->peer = role == DSACP_KV_PRODUCER ? pd->dw[0] : pd->pw[0];
        dsacp_comm_set_timeout(pd->link, timeout_s);
        const int tmax = dsacp_comm_tag_max(pd->link);
        pd->tag_slots = tmax > 1 ? tmax - 1 : 1;
        pd->last_sent = pd->last_heard = dsacp_now();
        dsacp_engine_set_layer_hook(e, role == DSACP_KV_PRODUCER ? pd_layer_hook : pd_consumer_hook, pd);
    }
    rc = dsacp_comm_agree_phase(world, rc, -1);
    free(all);
    if (rc) {
        dsacp_pd_free(pd);
        return rc;
    }
    *out = pd;
    return DSACP_OK;
}

dsacp_kv_role dsacp_pd_role(const dsacp_pd *pd) { return pd->role; }
dsacp_comm *dsacp_pd_link(const dsacp_pd *pd) { return pd->link; }
void dsacp_pd_sizes(const dsacp_pd *pd, int *w_producer, int *w_consumer)
{
    *w_producer = pd->Wp;
    *w_consumer = pd->Wd;
}
dsacp_comm_counter dsacp_pd_predicted(const dsacp_pd *pd) { return pd->predicted; }

bool dsacp_pd_leader(const dsacp_pd *pd) { return pd->grank == 0; }
dsacp_comm *dsacp_pd_world(const dsacp_pd *pd) { return pd->world; }
int dsacp_pd_world_rank(const dsacp_pd *pd) { return pd->wrank; }
int dsacp_pd_peer(const dsacp_pd *pd) { return pd->peer; }
double dsacp_pd_timeout(const dsacp_pd *pd) { return pd->timeout; }

/* ---- sends in flight ---- */

/* Completed sends give their buffers back. */
static int pd_sends_test(dsacp_pd *pd)
{
    int64_t k = 0;
    int rc = DSACP_OK;
    for (int64_t i = 0; i < pd->n_sends; i++) {
        bool done = false;
        if (!rc) rc = dsacp_comm_test(pd->sends[i].req, &done);
        if (done) free(pd->sends[i].buf);
        else pd->sends[k++] = pd->sends[i];
    }
    pd->n_sends = k;
    return rc;
}

/* Sends buf (malloc'd, owned by the link from now on) to world rank dest. */
static int pd_isend(dsacp_pd *pd, int dest, int tag, void *buf, size_t bytes, int phase)
{
    if (pd->n_sends == pd->cap_sends) {
        const int64_t cap = pd->cap_sends ? 2 * pd->cap_sends : 64;
        pd_send *n = realloc(pd->sends, (size_t)cap * sizeof *n);
        if (!n) {
            free(buf);
            return dsacp_error(DSACP_ENOMEM, "out of memory for the transfer's sends");
        }
        pd->sends = n, pd->cap_sends = cap;
    }
    dsacp_comm_request *req = NULL;
    int rc = dsacp_comm_isend(pd->link, dest, tag, buf, bytes, phase, &req);
    if (rc) {
        free(buf);
        return rc;
    }
    pd->sends[pd->n_sends++] = (pd_send){req, buf};
    return DSACP_OK;
}

int dsacp_pd_flush(dsacp_pd *pd, double max_s)
{
    dsacp_comm_poll p;
    dsacp_comm_poll_start(&p, max_s >= 0 ? fmax(max_s, 1e-9) : pd->timeout);
    int rc;
    while (!(rc = pd_sends_test(pd)) && pd->n_sends > 0)
        if (!dsacp_comm_poll_next(&p))
            return dsacp_error(DSACP_ECOMM, "world rank %d: %lld message%s not taken by the %s group after %g s", pd->wrank,
                               (long long)pd->n_sends, pd->n_sends == 1 ? " was" : "s were",
                               pd->role == DSACP_KV_PRODUCER ? "kv_consumer" : "kv_producer",
                               max_s >= 0 ? max_s : pd->timeout);
    return rc;
}

/* ---- control messages between the leaders (tag 0 of the link) ---- */

int dsacp_pd_ctl_send(dsacp_pd *pd, const int64_t *w, int64_t n)
{
    int64_t *buf = malloc((size_t)(n > 0 ? n : 1) * sizeof *buf);
    if (!buf) return dsacp_error(DSACP_ENOMEM, "out of memory for a control message");
    memcpy(buf, w, (size_t)n * sizeof *buf);
    pd->last_sent = dsacp_now();
    int rc = pd_isend(pd, pd->peer, 0, buf, (size_t)n * sizeof *buf, DSACP_PHASE_control);
    return rc ? rc : pd_sends_test(pd);
}

int dsacp_pd_alive(dsacp_pd *pd)
{
    if (dsacp_now() - pd->last_sent < 1.0) return pd_sends_test(pd);
    const int64_t w = DSACP_PD_ALIVE;
    return dsacp_pd_ctl_send(pd, &w, 1);
}

int dsacp_pd_ctl_poll(dsacp_pd *pd, const int64_t **w, int64_t *n)
{
    *w = NULL, *n = 0;
    bool found = false;
    dsacp_comm_message m;
    int rc = dsacp_comm_improbe(pd->link, pd->peer, 0, &found, &m);
    if (rc || !found) {
        if (!rc && dsacp_now() - pd->last_heard > pd->timeout)
            rc = dsacp_error(DSACP_ECOMM, "no word from the %s group (world rank %d) for %g s: it or the link failed",
                             pd->role == DSACP_KV_PRODUCER ? "kv_consumer" : "kv_producer", pd->peer, pd->timeout);
        return rc;
    }
    if (m.bytes % sizeof(int64_t) || m.bytes == 0)
        return dsacp_error(DSACP_ECOMM, "malformed control message of %zu bytes from world rank %d", m.bytes, m.source);
    if (m.bytes > pd->cbuf_cap) {
        int64_t *nb = realloc(pd->cbuf, m.bytes);
        if (!nb) return dsacp_error(DSACP_ENOMEM, "out of memory for a control message");
        pd->cbuf = nb, pd->cbuf_cap = m.bytes;
    }
    if ((rc = dsacp_comm_mrecv(pd->link, &m, pd->cbuf, DSACP_PHASE_control))) return rc;
    pd->last_heard = dsacp_now();
    if (pd->cbuf[0] == DSACP_PD_ALIVE) return DSACP_OK;
    *w = pd->cbuf;
    *n = (int64_t)(m.bytes / sizeof(int64_t));
    return DSACP_OK;
}

int dsacp_pd_abort_error(const dsacp_pd *pd, const int64_t *w, int64_t n)
{
    char msg[400] = "";
    if (n > 2) snprintf(msg, sizeof msg, "%.*s", (int)((n - 2) * 8 < 399 ? (n - 2) * 8 : 399), (const char *)(w + 2));
    const int st = n > 1 && w[1] < 0 && w[1] >= DSACP_ECOMM ? (int)w[1] : DSACP_ECOMM;
    return dsacp_error(st, "the %s group failed: %s", pd->role == DSACP_KV_PRODUCER ? "kv_consumer" : "kv_producer", msg);
}

int dsacp_pd_ctl_wait(dsacp_pd *pd, double max_s, const int64_t **w, int64_t *n)
{
    /* Silence past the timeout is ctl_poll's error; max_s only ends the wait quietly. */
    dsacp_comm_poll p;
    dsacp_comm_poll_start(&p, max_s >= 0 ? fmax(max_s, 1e-9) : 0);
    for (;;) {
        int rc = dsacp_pd_ctl_poll(pd, w, n);
        if (rc || *n > 0) return rc;
        if (pd->role == DSACP_KV_CONSUMER && (rc = dsacp_pd_poll(pd))) return rc;
        if ((rc = dsacp_pd_alive(pd))) return rc;
        if (!dsacp_comm_poll_next(&p)) return DSACP_OK;
    }
}

int dsacp_pd_clock_sync(dsacp_pd *pd, double t0, double *shift)
{
    enum { PINGS = 5 };
    *shift = 0;
    double best_rtt = INFINITY;
    for (int k = 0; k < PINGS; k++) {
        const int64_t *w;
        int64_t n;
        int rc;
        if (pd->role == DSACP_KV_PRODUCER) { /* answer each ping with the time on this clock */
            if ((rc = dsacp_pd_ctl_wait(pd, -1, &w, &n))) return rc;
            if (n != 1 || w[0] != DSACP_PD_PING) return dsacp_error(DSACP_ECOMM, "the clocks' exchange: unexpected message");
            const double now = dsacp_now() - t0;
            int64_t pong[2] = {DSACP_PD_PONG, 0};
            memcpy(&pong[1], &now, sizeof now);
            if ((rc = dsacp_pd_ctl_send(pd, pong, 2))) return rc;
            continue;
        }
        const int64_t ping = DSACP_PD_PING;
        const double a = dsacp_now() - t0;
        if ((rc = dsacp_pd_ctl_send(pd, &ping, 1)) || (rc = dsacp_pd_ctl_wait(pd, -1, &w, &n))) return rc;
        const double b = dsacp_now() - t0;
        if (n != 2 || w[0] != DSACP_PD_PONG) return dsacp_error(DSACP_ECOMM, "the clocks' exchange: unexpected message");
        double theirs;
        memcpy(&theirs, &w[1], sizeof theirs);
        if (b - a < best_rtt) best_rtt = b - a, *shift = theirs - (a + b) / 2;
    }
    return DSACP_OK;
}

void dsacp_pd_abort(dsacp_pd *pd, int status, const char *msg)
{
    int64_t w[2 + 50] = {DSACP_PD_ABORT, status};
    const size_t len = strlen(msg) < 399 ? strlen(msg) : 399;
    memcpy(w + 2, msg, len);
    (void)dsacp_pd_ctl_send(pd, w, 2 + (int64_t)(len + 8) / 8);
}

/* ---- producer: the layer hook sends the step's new entries ---- */

void dsacp_pd_step_begin(dsacp_pd *pd, const int64_t *s, const int64_t *eid, const int64_t *a, const int64_t *n,
                         int64_t n_ent)
{
    pd->st_s = s, pd->st_eid = eid, pd->st_a = a, pd->st_n = n, pd->st_n_ent = n_ent;
    /* The prediction: what this rank's sends of the step add to the kv_transfer counter. */
    for (int64_t i = 0; i < n_ent; i++)
        dsacp_cp_relayout_comm(&pd->rl, a[i], a[i] + n[i], 0, pd->grank, &pd->predicted);
}

void dsacp_pd_step_end(dsacp_pd *pd) { pd->st_n_ent = 0; }

static int grow_pos(dsacp_pd *pd, int64_t n)
{
    if (n <= pd->pos_cap) return DSACP_OK;
    for (int k = 0; k < 2; k++) {
        int64_t *p = realloc(pd->pos[k], (size_t)n * sizeof *p);
        if (!p) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld positions", (long long)n);
        pd->pos[k] = p;
    }
    pd->pos_cap = n;
    return DSACP_OK;
}

int64_t dsacp_pd_tag(const dsacp_pd *pd, int64_t s) { return 1 + s % pd->tag_slots; }

/* One message: entries of positions pos[0] (latent) and pos[1] (index) of one layer of entry i. */
static int pd_send_entries(dsacp_pd *pd, int64_t i, int64_t layer, int dst, int64_t nl, int64_t ni)
{
    const int64_t lb = pd->rl.latent_bytes, ib = pd->rl.index_bytes;
    const size_t bytes = DSACP_RELAYOUT_HEADER + (size_t)(nl * lb + ni * ib);
    uint8_t *buf = malloc(bytes);
    if (!buf) return dsacp_error(DSACP_ENOMEM, "out of memory for a transfer message of %zu bytes", bytes);
    const int32_t h[4] = {(int32_t)pd->st_a[i], (int32_t)layer, (int32_t)nl, (int32_t)ni};
    memcpy(buf, h, sizeof h);
    int rc = dsacp_engine_kv_pack(pd->e, pd->st_eid[i], layer, DSACP_KV_LATENT, pd->pos[0], nl, buf + DSACP_RELAYOUT_HEADER);
    if (!rc)
        rc = dsacp_engine_kv_pack(pd->e, pd->st_eid[i], layer, DSACP_KV_INDEX, pd->pos[1], ni,
                                  buf + DSACP_RELAYOUT_HEADER + nl * lb);
    if (rc) {
        free(buf);
        return rc;
    }
    return pd_isend(pd, pd->dw[dst], (int)dsacp_pd_tag(pd, pd->st_s[i]), buf, bytes, DSACP_PHASE_kv_transfer);
}

int dsacp_pd_send_layer(dsacp_pd *pd, int64_t layer) { return pd_layer_hook(pd, layer); }

static int pd_layer_hook(void *arg, int64_t layer)
{
    dsacp_pd *pd = arg;
    int rc = DSACP_OK;
    for (int64_t i = 0; i < pd->st_n_ent && !rc; i++) {
        const int64_t a = pd->st_a[i], b = a + pd->st_n[i];
        if ((rc = grow_pos(pd, b - a))) break;
        for (int dst = 0; dst < pd->Wd && !rc; dst++) {
            const int64_t nl = dsacp_cp_relayout_positions(&pd->rl, DSACP_KV_LATENT, a, b, pd->grank, dst, pd->pos[0]);
            const int64_t ni = dsacp_cp_relayout_positions(&pd->rl, DSACP_KV_INDEX, a, b, pd->grank, dst, pd->pos[1]);
            if (nl + ni > 0) rc = pd_send_entries(pd, i, layer, dst, nl, ni);
        }
    }
    return rc ? rc : pd_sends_test(pd);
}

/* ---- consumer: entries arrive into reserved blocks ---- */

int dsacp_pd_import_add(dsacp_pd *pd, int64_t s, int64_t eid, int64_t length)
{
    if (pd->n_imp == pd->cap_imp) {
        const int64_t cap = pd->cap_imp ? 2 * pd->cap_imp : 16;
        pd_import *n = realloc(pd->imp, (size_t)cap * sizeof *n);
        if (!n) return dsacp_error(DSACP_ENOMEM, "out of memory for the transfers");
        pd->imp = n, pd->cap_imp = cap;
    }
    pd->imp[pd->n_imp++] = (pd_import){s, eid, length, 0, -1};
    return DSACP_OK;
}

static int src_rank(const dsacp_pd *pd, int world_rank)
{
    for (int g = 0; g < pd->Wp; g++)
        if (pd->pw[g] == world_rank) return g;
    return -1;
}

/* Receives one matched message of import k and writes its entries. */
static int pd_receive(dsacp_pd *pd, pd_import *im, dsacp_comm_message *m)
{
    if (m->bytes > pd->rbuf_cap) {
        uint8_t *nb = realloc(pd->rbuf, m->bytes);
        if (!nb) return dsacp_error(DSACP_ENOMEM, "out of memory for a transfer message of %zu bytes", m->bytes);
        pd->rbuf = nb, pd->rbuf_cap = m->bytes;
    }
    int rc = dsacp_comm_mrecv(pd->link, m, pd->rbuf, DSACP_PHASE_kv_transfer);
    if (rc) return rc;
    int32_t h[4] = {0, 0, 0, 0};
    const int src = src_rank(pd, m->source);
    if (m->bytes >= sizeof h) memcpy(h, pd->rbuf, sizeof h);
    const int64_t lb = pd->rl.latent_bytes, ib = pd->rl.index_bytes;
    if (src < 0 || m->bytes < sizeof h || h[0] < 0 || h[1] < 0 || h[1] >= pd->rl.layers || h[2] < 0 || h[3] < 0 ||
        (int64_t)m->bytes != DSACP_RELAYOUT_HEADER + h[2] * lb + h[3] * ib)
        return dsacp_error(DSACP_ECOMM, "malformed transfer message of %zu bytes from world rank %d", m->bytes, m->source);
    if ((rc = grow_pos(pd, h[2] > h[3] ? h[2] : h[3]))) return rc;
    dsacp_cp_relayout_first(&pd->rl, DSACP_KV_LATENT, h[0], h[2], src, pd->grank, pd->pos[0]);
    dsacp_cp_relayout_first(&pd->rl, DSACP_KV_INDEX, h[0], h[3], src, pd->grank, pd->pos[1]);
    if ((h[2] > 0 && pd->pos[0][h[2] - 1] >= im->length) || (h[3] > 0 && pd->pos[1][h[3] - 1] >= im->length))
        return dsacp_error(DSACP_ECOMM, "transfer message from world rank %d: positions past the prompt of %lld tokens",
                           m->source, (long long)im->length);
    rc = dsacp_engine_kv_unpack(pd->e, im->eid, h[1], DSACP_KV_LATENT, pd->pos[0], h[2], pd->rbuf + DSACP_RELAYOUT_HEADER);
    if (!rc)
        rc = dsacp_engine_kv_unpack(pd->e, im->eid, h[1], DSACP_KV_INDEX, pd->pos[1], h[3],
                                    pd->rbuf + DSACP_RELAYOUT_HEADER + h[2] * lb);
    im->received++;
    return rc;
}

/* A consumer drains arrived entries after every layer of its own steps too: over TCP a large
 * message moves only while the receiving side calls MPI (Open MPI's rendezvous has no progress
 * thread by default), so polling between layers keeps the transfer in flight while the consumer
 * decodes (docs/netns.md). The importing requests' blocks are not read by the step. */
static int pd_consumer_hook(void *arg, int64_t layer)
{
    (void)layer;
    return dsacp_pd_poll(arg);
}

/* Drains the messages of import im that have arrived. */
static int pd_drain(dsacp_pd *pd, pd_import *im)
{
    for (;;) {
        bool found = false;
        dsacp_comm_message m;
        int rc = dsacp_comm_improbe(pd->link, -1, (int)dsacp_pd_tag(pd, im->s), &found, &m);
        if (rc || !found) return rc;
        if ((rc = pd_receive(pd, im, &m))) return rc;
    }
}

int dsacp_pd_poll(dsacp_pd *pd)
{
    int rc = DSACP_OK;
    for (int64_t k = 0; k < pd->n_imp && !rc; k++) rc = pd_drain(pd, &pd->imp[k]);
    return rc;
}

int dsacp_pd_import_finish(dsacp_pd *pd, int64_t s, const int64_t *chunks, int64_t n_chunks)
{
    int64_t k = 0;
    while (k < pd->n_imp && pd->imp[k].s != s) k++;
    if (k == pd->n_imp) return dsacp_error(DSACP_EINVAL, "request %lld is not being transferred", (long long)s);
    pd_import *im = &pd->imp[k];
    dsacp_comm_counter c = {0};
    for (int64_t i = 0; i < n_chunks; i++) dsacp_cp_relayout_comm(&pd->rl, chunks[2 * i], chunks[2 * i + 1], 1, pd->grank, &c);
    pd->predicted.calls += c.calls, pd->predicted.bytes_sent += c.bytes_sent, pd->predicted.bytes_recv += c.bytes_recv;
    im->expected = c.calls;
    dsacp_comm_poll p;
    dsacp_comm_poll_start(&p, pd->timeout);
    int rc = DSACP_OK;
    while (!rc && im->received < im->expected) {
        if ((rc = pd_drain(pd, im)) || im->received >= im->expected) break;
        if (!dsacp_comm_poll_next(&p))
            rc = dsacp_error(DSACP_ECOMM, "world rank %d: %lld of the %lld transfer messages of request %lld arrived "
                             "in %g s", pd->wrank, (long long)im->received, (long long)im->expected, (long long)s,
                             pd->timeout);
    }
    if (!rc && im->received > im->expected)
        rc = dsacp_error(DSACP_ECOMM, "request %lld: %lld transfer messages arrived, %lld expected", (long long)s,
                         (long long)im->received, (long long)im->expected);
    if (!rc) rc = dsacp_engine_import_end(pd->e, im->eid);
    pd->imp[k] = pd->imp[--pd->n_imp];
    return rc;
}

/* The bytes and messages every producer rank sends for these chunks of one request. */
void dsacp_pd_chunks_cost(const dsacp_pd *pd, const int64_t *chunks, int64_t n_chunks, int64_t *bytes, int64_t *messages)
{
    dsacp_comm_counter c = {0};
    for (int64_t r = 0; r < pd->Wp; r++)
        for (int64_t i = 0; i < n_chunks; i++) dsacp_cp_relayout_comm(&pd->rl, chunks[2 * i], chunks[2 * i + 1], 0, r, &c);
    *bytes = c.bytes_sent, *messages = c.calls;
}
