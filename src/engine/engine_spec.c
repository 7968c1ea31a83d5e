/*
 * engine_spec -- speculative decoding's hand-over between steps (docs/speculative.md, docs/mtp.md):
 * the hidden rows a step leaves for the MTP layer (a target step's final-normed rows, an MTP
 * step's own output), where each of them lives (every rank for a decode row, one rank for a
 * prefill row), and the checks that say which rows an MTP step reads (engine.c, above it, runs
 * the steps and truncates rejected positions). Nothing here communicates: an MTP step runs each row on the ranks that hold its
 * hidden input, so no hidden state ever moves between ranks.
 */
#include "engine/engine_internal.h"

#include <stdlib.h>
#include <string.h>

void dsacp_engine_stash_free(dsacp_engine_stash *s)
{
    dsacp_free(s->req), dsacp_free(s->ntok), dsacp_free(s->pos0), dsacp_free(s->place), dsacp_free(s->row);
    dsacp_free(s->h);
    memset(s, 0, sizeof *s);
}

/* Grows one array to hold n elements (its contents are not kept). */
static int grow(void **p, int64_t n, int64_t have, size_t elem)
{
    if (n <= have) return DSACP_OK;
    size_t bytes;
    if (!dsacp_mul_ok((size_t)n, elem, &bytes)) return dsacp_error(DSACP_ENOMEM, "stash of %lld rows overflows", (long long)n);
    void *q = dsacp_alloc(bytes);
    if (!q) return dsacp_error(DSACP_ENOMEM, "out of memory for the MTP layer's hidden rows");
    dsacp_free(*p);
    *p = q;
    return DSACP_OK;
}

/* The rank that computed token t of a built step: -1 for a decode row (every rank). */
static int32_t placement(const dsacp_cp_step *st, int64_t t)
{
    if (st->decode[st->ent[t]]) return -1;
    const int64_t k = st->pre_idx[t];
    int32_t q = 0;
    while (st->pre_off[q + 1] <= k) q++;
    return q;
}

int dsacp_engine_stash_keep(dsacp_engine *e, dsacp_engine_stash *s, const dsacp_step_entry *entries, const int64_t *pos0,
                            const dsacp_cp_step *st, const float *rows)
{
    const int64_t n = st->n_ent, T = st->T, D = e->cfg->hidden_size, na = st->n_dec + st->n_pre;
    s->valid = false;
    if (n > s->cap_ent) {
        int rc = grow((void **)&s->req, n, 0, sizeof *s->req);
        if (!rc) rc = grow((void **)&s->ntok, n, 0, sizeof *s->ntok);
        if (!rc) rc = grow((void **)&s->pos0, n, 0, sizeof *s->pos0);
        if (rc) return rc;
        s->cap_ent = n;
    }
    if (T > s->cap_T) {
        size_t hb;
        int rc = grow((void **)&s->place, T, 0, sizeof *s->place);
        if (!rc) rc = grow((void **)&s->row, T, 0, sizeof *s->row);
        if (!rc && !dsacp_mul_ok((size_t)T, (size_t)D, &hb)) rc = dsacp_error(DSACP_ENOMEM, "stash overflows");
        if (!rc) rc = grow((void **)&s->h, (int64_t)hb, 0, sizeof *s->h);
        if (rc) return rc;
        s->cap_T = T;
    }
    for (int64_t i = 0; i < n; i++) s->req[i] = entries[i].request_id, s->ntok[i] = entries[i].n_tokens, s->pos0[i] = pos0[i];
    for (int64_t t = 0; t < T; t++) s->place[t] = placement(st, t), s->row[t] = st->act_row[t];
    if (na > 0) memcpy(s->h, rows, (size_t)(na * D) * sizeof(float));
    s->n_ent = n, s->T = T;
    s->valid = true;
    return DSACP_OK;
}

/* A catch-up: the entries are the last target step's, each request's MTP layer where that step
 * started it. */
static bool is_catch_up(const dsacp_engine_stash *s, const dsacp_step_entry *entries, int64_t n)
{
    if (!s->valid || s->n_ent != n) return false;
    for (int64_t i = 0; i < n; i++)
        if (s->req[i] != entries[i].request_id || s->ntok[i] != entries[i].n_tokens) return false;
    return true;
}

/* The token of the MTP stash at (request, position), or -1. */
static int64_t stash_token(const dsacp_engine_stash *s, int64_t req, int64_t pos)
{
    if (!s->valid) return -1;
    for (int64_t i = 0, t = 0; i < s->n_ent; t += s->ntok[i], i++)
        if (s->req[i] == req) return pos >= s->pos0[i] && pos < s->pos0[i] + s->ntok[i] ? t + pos - s->pos0[i] : -1;
    return -1;
}

int dsacp_engine_mtp_sources(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const int64_t *pos0,
                             int32_t *place, int64_t *src, const dsacp_engine_stash **from)
{
    const dsacp_engine_stash *tg = &e->stash_target, *mt = &e->stash_mtp;
    if (is_catch_up(tg, entries, n)) {
        for (int64_t i = 0; i < n; i++)
            if (pos0[i] != tg->pos0[i])
                return dsacp_error(DSACP_EINVAL, "MTP step entry %lld: request %lld's MTP layer holds %lld positions, "
                                   "the target step it follows started at %lld (truncate it there first)",
                                   (long long)i, (long long)entries[i].request_id, (long long)pos0[i],
                                   (long long)tg->pos0[i]);
        for (int64_t t = 0; t < tg->T; t++) place[t] = tg->place[t], src[t] = tg->row[t];
        *from = tg;
        return DSACP_OK;
    }
    for (int64_t i = 0; i < n; i++) {
        const int64_t t = pos0[i] > 0 ? stash_token(mt, entries[i].request_id, pos0[i] - 1) : -1;
        if (entries[i].n_tokens != 1 || t < 0)
            return dsacp_error(DSACP_EINVAL, "MTP step entry %lld (request %lld, position %lld): neither a catch-up "
                               "of the last target step (the same entries) nor a chained row (one token whose "
                               "previous position was a row of the previous MTP step)", (long long)i,
                               (long long)entries[i].request_id, (long long)pos0[i]);
        place[i] = mt->place[t], src[i] = mt->row[t];
    }
    *from = mt;
    return DSACP_OK;
}
