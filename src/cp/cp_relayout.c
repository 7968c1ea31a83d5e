/*
 * cp_relayout -- who sends which prefilled entries to whom when a request moves from a producer
 * group to a consumer group (docs/disaggregation.md, "The relayout" and "Bytes"). Pure
 * arithmetic over the two groups' shapes: no cache, no communication. The serve layer sends by
 * these rules, the planner counts by them, and the engine's own layouts (engine_cp.c's
 * dsacp_engine_kept_on, cp.h's dsacp_cp_idx_holds) must give the same holders.
 *
 * Along the positions, the sender changes only at multiples of I_p and a consumer rank's
 * holding only at multiples of its layout's unit (I_d sharded, I_d G partial:G, never when
 * replicated), so [a, b) is walked in segments on which both are constant: a segment costs
 * O(1), whatever its length.
 */
#include "cp/cp.h"

#include <assert.h>

/* The layout of kind on the consumer, and its run length: the positions a consumer rank holds
 * change only at its multiples; 0 when every rank holds every position. */
static dsacp_cp_layout layout_of(const dsacp_cp_relayout *r, int kind)
{
    return kind == DSACP_KV_LATENT ? r->kv_layout : r->index_layout;
}

static int64_t unit_of(const dsacp_cp_relayout *r, int kind)
{
    const dsacp_cp_layout l = layout_of(r, kind);
    if (r->Wd <= 1 || l == DSACP_LAYOUT_REPLICATED) return 0;
    return l == DSACP_LAYOUT_PARTIAL ? r->Id * r->index_group : r->Id;
}

int64_t dsacp_cp_relayout_sender(const dsacp_cp_relayout *r, int64_t p)
{
    return r->Wp <= 1 ? 0 : dsacp_cp_owner(p, r->Ip, r->Wp);
}

bool dsacp_cp_relayout_holds(const dsacp_cp_relayout *r, int kind, int64_t p, int64_t q)
{
    const dsacp_cp_layout l = layout_of(r, kind);
    if (r->Wd <= 1 || l == DSACP_LAYOUT_REPLICATED) return true;
    if (l == DSACP_LAYOUT_PARTIAL) {
        const int64_t G = r->index_group;
        return q / G == dsacp_cp_owner(p, r->Id * G, r->Wd / G);
    }
    return dsacp_cp_owner(p, r->Id, r->Wd) == q;
}

/* The next multiple of step after p, or b when that is at or beyond b (no overflow near
 * INT64_MAX). */
static int64_t next_edge(int64_t p, int64_t step, int64_t b)
{
    const int64_t rest = step - p % step;
    return rest >= b - p ? b : p + rest;
}

/* The start of producer rank src's next run at or after p (b when none before b). */
static int64_t next_run_of(const dsacp_cp_relayout *r, int64_t p, int64_t src, int64_t b)
{
    const int64_t have = dsacp_cp_relayout_sender(r, p);
    if (have == src) return p;
    const int64_t runs = (src - have + r->Wp) % r->Wp; /* whole runs of the others to skip */
    const int64_t start = p - p % r->Ip;
    if (runs > (b - start) / r->Ip) return b;
    const int64_t next = start + runs * r->Ip;
    return next < b ? next : b;
}

/* Walks [a, b) by segments and collects up to `limit` positions src sends dst (into pos when
 * non-NULL); returns how many. */
static int64_t walk(const dsacp_cp_relayout *r, int kind, int64_t a, int64_t b, int64_t src, int64_t dst,
                    int64_t limit, int64_t *pos)
{
    const int64_t u = unit_of(r, kind);
    int64_t n = 0;
    if (src < 0 || src >= (r->Wp > 1 ? r->Wp : 1)) return 0;
    for (int64_t p = a; p < b && n < limit;) {
        p = next_run_of(r, p, src, b);
        if (p >= b) break;
        int64_t end = r->Wp > 1 ? next_edge(p, r->Ip, b) : b;
        if (u > 0) end = next_edge(p, u, end);
        if (dsacp_cp_relayout_holds(r, kind, p, dst)) {
            int64_t take = end - p;
            if (take > limit - n) take = limit - n;
            if (pos)
                for (int64_t k = 0; k < take; k++) pos[n + k] = p + k;
            n += take;
        }
        p = end;
    }
    return n;
}

int64_t dsacp_cp_relayout_positions(const dsacp_cp_relayout *r, int kind, int64_t a, int64_t b, int64_t src,
                                    int64_t dst, int64_t *pos)
{
    return a < b ? walk(r, kind, a, b, src, dst, INT64_MAX, pos) : 0;
}

/* The pattern of senders and holders repeats every lcm(I_p W_p, I_d W_d) positions, so n
 * positions that exist lie within n such periods of a: the walk's bound (saturated). */
static int64_t period_of(const dsacp_cp_relayout *r)
{
    int64_t x = r->Wp > 1 ? r->Ip * r->Wp : 1, y = r->Wd > 1 ? r->Id * r->Wd : 1;
    int64_t g = x, h = y;
    while (h) {
        const int64_t t = g % h;
        g = h;
        h = t;
    }
    const int64_t xg = x / g;
    return xg > INT64_MAX / y ? INT64_MAX : xg * y;
}

void dsacp_cp_relayout_first(const dsacp_cp_relayout *r, int kind, int64_t a, int64_t n, int64_t src, int64_t dst,
                             int64_t *pos)
{
    if (n <= 0) return;
    const int64_t period = period_of(r);
    int64_t span = INT64_MAX - a;
    if (period <= span / (n + 1)) span = period * (n + 1);
    const int64_t got = walk(r, kind, a, a + span, src, dst, n, pos);
    assert(got == n && "the sender announced more positions than the relayout gives it");
    (void)got;
}

void dsacp_cp_relayout_comm(const dsacp_cp_relayout *r, int64_t a, int64_t b, int side, int64_t rank,
                            dsacp_comm_counter *out)
{
    const int64_t peers = side == 0 ? r->Wd : r->Wp;
    for (int64_t k = 0; k < peers; k++) {
        const int64_t src = side == 0 ? rank : k, dst = side == 0 ? k : rank;
        const int64_t nl = dsacp_cp_relayout_positions(r, DSACP_KV_LATENT, a, b, src, dst, NULL);
        const int64_t ni = dsacp_cp_relayout_positions(r, DSACP_KV_INDEX, a, b, src, dst, NULL);
        if (nl + ni == 0) continue;
        const int64_t bytes = r->layers * (DSACP_RELAYOUT_HEADER + nl * r->latent_bytes + ni * r->index_bytes);
        out->calls += r->layers;
        if (side == 0) out->bytes_sent += bytes;
        else out->bytes_recv += bytes;
    }
}
