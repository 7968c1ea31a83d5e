/*
 * test_cp_relayout.c -- the relayout formula of src/cp/cp_relayout.c (issue 22) against a brute
 * force over random (W_p, I_p, W_d, I_d, consumer layouts incl. partial:G, chunk) cases: the
 * sender rule, the holders (their count over [0, L) is what the engine keeps,
 * dsacp_cp_local_len), every position held by at least one rank and always by its owner
 * (p / I_d) mod W_d, the positions of each (src, dst) pair and their first-n form, and the
 * counters of a chunk (one message per layer and pair, the header and the entries' bytes; sum
 * sent == sum received). Pure arithmetic: under mpirun every rank runs the same cases alone.
 */
#include "test.h"
#include "cp/cp.h"
#include "dsacp.h"

#include <stdint.h>

static uint64_t g_state = 0x243F6A8885A308D3ull;

static int64_t draw(int64_t lo, int64_t hi) /* uniform in [lo, hi] */
{
    g_state ^= g_state << 13, g_state ^= g_state >> 7, g_state ^= g_state << 17;
    return lo + (int64_t)(g_state % (uint64_t)(hi - lo + 1));
}

/* A divisor of W drawn among all of them. */
static int64_t draw_divisor(int64_t W)
{
    int64_t d[16], n = 0;
    for (int64_t g = 1; g <= W; g++)
        if (W % g == 0) d[n++] = g;
    return d[draw(0, n - 1)];
}

static dsacp_cp_relayout random_case(void)
{
    dsacp_cp_relayout r = {0};
    r.Wp = draw(1, 5), r.Ip = draw(1, 6), r.Wd = draw(1, 8), r.Id = draw(1, 6);
    r.kv_layout = draw(0, 1) ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_SHARDED;
    const int64_t il = draw(0, 2);
    r.index_layout = il == 0 ? DSACP_LAYOUT_SHARDED : il == 1 ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_PARTIAL;
    r.index_group = r.index_layout == DSACP_LAYOUT_PARTIAL ? draw_divisor(r.Wd) : 1;
    r.latent_bytes = draw(1, 700), r.index_bytes = draw(1, 140), r.layers = draw(1, 4);
    return r;
}

/* The engine's count of positions of [0, L) consumer rank q keeps under a layout
 * (engine_cp.c's dsacp_engine_kept_on, written from the consumer's side). */
static int64_t kept_count(const dsacp_cp_relayout *r, int kind, int64_t L, int64_t q)
{
    const dsacp_cp_layout l = kind == DSACP_KV_LATENT ? r->kv_layout : r->index_layout;
    if (r->Wd == 1 || l == DSACP_LAYOUT_REPLICATED) return L;
    if (l == DSACP_LAYOUT_PARTIAL)
        return dsacp_cp_local_len(L, q / r->index_group, r->Id * r->index_group, r->Wd / r->index_group);
    return dsacp_cp_local_len(L, q, r->Id, r->Wd);
}

/* Holders: counts equal the engine's, every position has one, its owner among them. */
static void check_holders(const dsacp_cp_relayout *r, int64_t L, int64_t *bad)
{
    for (int kind = 0; kind < 2; kind++) {
        for (int64_t q = 0; q < r->Wd; q++) {
            int64_t n = 0;
            for (int64_t p = 0; p < L; p++) n += dsacp_cp_relayout_holds(r, kind, p, q);
            if (n != kept_count(r, kind, L, q)) (*bad)++;
        }
        for (int64_t p = 0; p < L; p++)
            if (!dsacp_cp_relayout_holds(r, kind, p, dsacp_cp_owner(p, r->Id, r->Wd))) (*bad)++;
    }
    for (int64_t p = 0; p < L; p++)
        if (dsacp_cp_relayout_sender(r, p) != (r->Wp == 1 ? 0 : (p / r->Ip) % r->Wp)) (*bad)++;
}

/* Positions of every (src, dst, kind) against a scan; first-n from a against their prefix.
 * Adds each pair's brute-force counters to sent[src] / recv[dst]. */
static void check_pairs(const dsacp_cp_relayout *r, int64_t a, int64_t b, dsacp_comm_counter *sent,
                        dsacp_comm_counter *recv, int64_t *bad)
{
    int64_t want[512], got[512];
    for (int64_t s = 0; s < r->Wp; s++)
        for (int64_t d = 0; d < r->Wd; d++) {
            int64_t nk[2];
            for (int kind = 0; kind < 2; kind++) {
                int64_t n = 0;
                for (int64_t p = a; p < b; p++)
                    if (dsacp_cp_relayout_sender(r, p) == s && dsacp_cp_relayout_holds(r, kind, p, d)) want[n++] = p;
                const int64_t m = dsacp_cp_relayout_positions(r, kind, a, b, s, d, got);
                if (m != n || memcmp(want, got, (size_t)n * sizeof *want)) (*bad)++;
                if (dsacp_cp_relayout_positions(r, kind, a, b, s, d, NULL) != n) (*bad)++;
                if (n > 0) {
                    const int64_t k = draw(1, n);
                    memset(got, 0xff, sizeof got);
                    dsacp_cp_relayout_first(r, kind, a, k, s, d, got);
                    if (memcmp(want, got, (size_t)k * sizeof *want)) (*bad)++;
                }
                nk[kind] = n;
            }
            if (nk[0] + nk[1] == 0) continue;
            const int64_t bytes = r->layers * (DSACP_RELAYOUT_HEADER + nk[0] * r->latent_bytes + nk[1] * r->index_bytes);
            sent[s].calls += r->layers, sent[s].bytes_sent += bytes;
            recv[d].calls += r->layers, recv[d].bytes_recv += bytes;
        }
}

static bool counter_eq(const dsacp_comm_counter *x, const dsacp_comm_counter *y)
{
    return x->calls == y->calls && x->bytes_sent == y->bytes_sent && x->bytes_recv == y->bytes_recv;
}

static void test_random_cases(void)
{
    int64_t bad_hold = 0, bad_pos = 0, bad_comm = 0, bad_sum = 0;
    for (int c = 0; c < 3000; c++) {
        const dsacp_cp_relayout r = random_case();
        const int64_t a = draw(0, 150), b = a + draw(0, 300);
        check_holders(&r, b, &bad_hold);
        dsacp_comm_counter sent[8] = {{0}}, recv[8] = {{0}};
        check_pairs(&r, a, b, sent, recv, &bad_pos);
        int64_t ts = 0, tr = 0;
        for (int64_t s = 0; s < r.Wp; s++) {
            dsacp_comm_counter f = {0};
            dsacp_cp_relayout_comm(&r, a, b, 0, s, &f);
            if (!counter_eq(&f, &sent[s])) bad_comm++;
            ts += f.bytes_sent;
        }
        for (int64_t d = 0; d < r.Wd; d++) {
            dsacp_comm_counter f = {0};
            dsacp_cp_relayout_comm(&r, a, b, 1, d, &f);
            if (!counter_eq(&f, &recv[d])) bad_comm++;
            tr += f.bytes_recv;
        }
        if (ts != tr) bad_sum++;
    }
    printf("relayout: 3000 random cases: %lld holder, %lld position, %lld counter, %lld sum mismatches\n",
           (long long)bad_hold, (long long)bad_pos, (long long)bad_comm, (long long)bad_sum);
    CHECK(bad_hold == 0);
    CHECK(bad_pos == 0);
    CHECK(bad_comm == 0);
    CHECK(bad_sum == 0);
}

/* The counters add to what *out holds; an empty chunk and a pair that never meets move nothing;
 * a long chunk costs segments, not positions (1M positions at I = 64 stay instant). */
static void test_edges(void)
{
    dsacp_cp_relayout r = {.Wp = 2, .Ip = 1, .Wd = 2, .Id = 1, .kv_layout = DSACP_LAYOUT_SHARDED,
                           .index_layout = DSACP_LAYOUT_SHARDED, .index_group = 1, .latent_bytes = 656,
                           .index_bytes = 132, .layers = 61};
    dsacp_comm_counter c = {.calls = 5, .bytes_sent = 7, .bytes_recv = 11};
    dsacp_cp_relayout_comm(&r, 10, 10, 0, 0, &c);
    CHECK(c.calls == 5 && c.bytes_sent == 7 && c.bytes_recv == 11);
    /* even positions from producer 0 all go to consumer 0: one message per layer */
    dsacp_cp_relayout_comm(&r, 0, 10, 0, 0, &c);
    CHECK(c.calls == 5 + 61 && c.bytes_sent == 7 + 61 * (16 + 5 * (656 + 132)) && c.bytes_recv == 11);
    CHECK(dsacp_cp_relayout_positions(&r, DSACP_KV_LATENT, 0, 100, 0, 1, NULL) == 0);
    r.Ip = r.Id = 64, r.Wp = 4, r.Wd = 8;
    const double t0 = dsacp_now();
    dsacp_comm_counter big = {0};
    for (int64_t q = 0; q < 4; q++) dsacp_cp_relayout_comm(&r, 0, 1000000, 0, q, &big);
    CHECK(big.bytes_sent == (int64_t)61 * (1000000 * (int64_t)(656 + 132) + 4 * 2 * 16)); /* producer q meets consumers q and q + 4 */
    CHECK(dsacp_now() - t0 < 1.0);
    /* a position far out (no overflow in the walk's edges) */
    int64_t p = -1;
    dsacp_cp_relayout_first(&r, DSACP_KV_INDEX, INT64_MAX - 1000, 1, dsacp_cp_relayout_sender(&r, INT64_MAX - 1000),
                            dsacp_cp_owner(INT64_MAX - 1000, 64, 8), &p);
    CHECK(p == INT64_MAX - 1000);
}

int main(void)
{
    test_random_cases();
    test_edges();
    return test_finish("test_cp_relayout");
}
