/*
 * serve_plan -- what the loop's files share below them (src/serve): the plan as int64 words and
 * its broadcast from rank 0, and rank 0's record of a generated token (the request's output, its
 * stop, its sequence). serve.c (the loop and its scheduler) and serve_spec_round.c (a speculative
 * round's acceptance and MTP steps) both call down to it; it calls neither.
 */
#include "serve/serve_loop.h"

#include <stdlib.h>

/* ---- the plan, as int64 words ---- */


int dsacp_serve_plan_push(plan *p, int64_t v)
{
    if (p->n == p->cap) {
        int64_t cap = p->cap ? 2 * p->cap : 256;
        int64_t *nw = realloc(p->w, (size_t)cap * sizeof *nw);
        if (!nw) return dsacp_error(DSACP_ENOMEM, "out of memory for a step plan");
        p->w = nw, p->cap = cap;
    }
    p->w[p->n++] = v;
    return DSACP_OK;
}

/* Sends rank 0's plan (length 0: the run is over) to every rank. */
int dsacp_serve_plan_bcast(dsacp_comm *c, plan *p)
{
    int64_t n = p->n;
    int rc = dsacp_comm_bcast(c, &n, sizeof n, DSACP_PHASE_input);
    if (rc || dsacp_comm_rank(c) == 0) return rc ? rc : dsacp_comm_bcast(c, p->w, (size_t)n * sizeof *p->w, DSACP_PHASE_input);
    p->n = 0;
    for (int64_t i = 0; i < n; i++)
        if ((rc = dsacp_serve_plan_push(p, 0))) return rc;
    return dsacp_comm_bcast(c, p->w, (size_t)n * sizeof *p->w, DSACP_PHASE_input);
}

/* The first largest logit minus the largest of the others (0 on a tie; 0 for a one-word vocabulary). */
float dsacp_serve_top2_gap(const float *logits, int64_t V)
{
    if (V < 2) return 0;
    float a = logits[0] >= logits[1] ? logits[0] : logits[1], b = logits[0] >= logits[1] ? logits[1] : logits[0];
    for (int64_t i = 2; i < V; i++) {
        if (logits[i] > a) b = a, a = logits[i];
        else if (logits[i] > b) b = logits[i];
    }
    return a - b;
}

int dsacp_serve_seq_push(sreq *r, int32_t tok)
{
    if (r->len == r->cap) {
        int64_t cap = r->cap * 2 + 16;
        int32_t *n = realloc(r->seq, (size_t)cap * sizeof *n);
        if (!n) return dsacp_error(DSACP_ENOMEM, "out of memory");
        r->seq = n, r->cap = cap;
    }
    r->seq[r->len++] = tok;
    return DSACP_OK;
}

/* Rank 0: token `tok` (its top-2 gap) generated for request s now. It ends the request (*stopped)
 * at max_new_tokens, at a stop id, and on a producer (which hands the request over); otherwise it
 * is appended to the sequence, to be fed. */
int dsacp_serve_emit(sched *S, loop *L, int64_t s, int32_t tok, float gap, bool *stopped)
{
    const dsacp_serve_request *q = &S->rq[s];
    dsacp_serve_out *out = &S->res->out[s];
    const double when = dsacp_now() - L->t0;
    if (out->n_tokens == 0) out->first_s = when;
    out->tokens[out->n_tokens] = tok;
    out->gap[out->n_tokens] = gap;
    out->token_s[out->n_tokens++] = when;
    bool stop = out->n_tokens >= q->max_new_tokens || S->role == DSACP_KV_PRODUCER;
    for (int64_t k = 0; k < q->n_stop; k++) stop |= tok == q->stop_ids[k];
    *stopped = stop;
    int rc = S->live ? dsacp_live_token(S, L, s, tok, stop) : DSACP_OK;
    if (rc || !stop) return rc ? rc : dsacp_serve_seq_push(&S->r[s], tok);
    S->r[s].state = ST_DONE;
    out->finish_s = when;
    L->done++;
    return DSACP_OK;
}
