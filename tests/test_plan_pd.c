/*
 * test_plan_pd.c -- the planner's disaggregated deployment (src/plan/plan_pd.c): the predicted
 * kv_transfer counters are src/cp's relayout formula summed over the chunks, per side and rank;
 * their time on a link falls with bandwidth and rises with the per-message latency; a deployment
 * without producers or consumers is refused; and the priced deployments behave as a queue should
 * (times grow with the load, the producers saturate at their capacity).
 */
#include "test.h"
#include "dsacp_plan.h"
#include "cp/cp.h"

#include <stdio.h>
#include <string.h>

static const char *src_dir(void)
{
    const char *s = getenv("DSACP_SOURCE_DIR");
    return s ? s : ".";
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static int64_t pick(int64_t lo, int64_t hi) /* uniform in [lo, hi] */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return lo + (int64_t)(rng % (uint64_t)(hi - lo + 1));
}

/* Random relayouts and chunk lists: every rank's prediction equals the formula summed, and the
 * producers send what the consumers receive. */
static void test_transfer_is_formula(void)
{
    for (int trial = 0; trial < 300; trial++) {
        dsacp_plan_relayout r = {.Wp = pick(1, 5), .Ip = pick(1, 9), .Wd = pick(1, 6), .Id = pick(1, 9),
                                 .kv_layout = pick(0, 1) ? DSACP_LAYOUT_SHARDED : DSACP_LAYOUT_REPLICATED,
                                 .index_group = 1, .latent_bytes = pick(1, 700), .index_bytes = pick(0, 140), .layers = pick(1, 4)};
        const int64_t li = pick(0, 2);
        r.index_layout = li == 0 ? DSACP_LAYOUT_SHARDED : li == 1 ? DSACP_LAYOUT_REPLICATED : DSACP_LAYOUT_PARTIAL;
        if (r.index_layout == DSACP_LAYOUT_PARTIAL) {
            do r.index_group = pick(1, r.Wd);
            while (r.Wd % r.index_group);
        }
        const dsacp_cp_relayout c = {r.Wp, r.Ip, r.Wd, r.Id, r.kv_layout, r.index_layout, r.index_group,
                                     r.latent_bytes, r.index_bytes, r.layers};
        /* the positions' owners repeat every lcm(Wp Ip, Wd Id): chunks shifted by whole periods
         * (which the planner counts once) among the others */
        int64_t g = r.Wp * r.Ip, h = r.Wd * r.Id;
        while (h) {
            const int64_t t = g % h;
            g = h, h = t;
        }
        const int64_t period = r.Wp * r.Ip / g * r.Wd * r.Id;
        dsacp_plan_chunk ch[8];
        const int n = (int)pick(1, 8);
        for (int i = 0, req = 0; i < n; i++) {
            const int kind = (int)pick(0, 2);
            const int64_t a = i && kind == 0 ? ch[i - 1].b : pick(0, 40); /* the next chunk of a request, or another */
            if (i && a != ch[i - 1].b) req++;
            ch[i] = (dsacp_plan_chunk){req, a, a + pick(1, 50)};
            if (i && kind == 2) { /* an earlier chunk shifted by whole periods */
                const int64_t j = pick(0, i - 1), k = pick(1, 3) * period;
                ch[i] = (dsacp_plan_chunk){++req, ch[j].a + k, ch[j].b + k};
            }
        }
        int64_t sent = 0, recv = 0;
        for (int side = 0; side < 2; side++)
            for (int64_t k = 0; k < (side ? r.Wd : r.Wp); k++) {
                dsacp_comm_counter got, want = {0};
                CHECK_OK(dsacp_plan_kv_transfer(&r, ch, n, side, k, &got));
                for (int i = 0; i < n; i++) dsacp_cp_relayout_comm(&c, ch[i].a, ch[i].b, side, k, &want);
                CHECKF(got.calls == want.calls && got.bytes_sent == want.bytes_sent && got.bytes_recv == want.bytes_recv,
                       "trial %d side %d rank %lld: %lld/%lld/%lld vs %lld/%lld/%lld", trial, side, (long long)k,
                       (long long)got.calls, (long long)got.bytes_sent, (long long)got.bytes_recv, (long long)want.calls,
                       (long long)want.bytes_sent, (long long)want.bytes_recv);
                sent += got.bytes_sent, recv += got.bytes_recv;
            }
        CHECKF(sent == recv && sent > 0, "trial %d: sent %lld, received %lld", trial, (long long)sent, (long long)recv);
    }
}

static void test_transfer_refusals(void)
{
    const dsacp_plan_relayout good = {.Wp = 2, .Ip = 1, .Wd = 4, .Id = 1, .kv_layout = DSACP_LAYOUT_SHARDED,
                                      .index_layout = DSACP_LAYOUT_PARTIAL, .index_group = 2, .latent_bytes = 656,
                                      .index_bytes = 132, .layers = 61};
    const dsacp_plan_chunk ch = {0, 0, 64}, bad_ch = {0, 10, 10};
    dsacp_comm_counter c;
    CHECK_OK(dsacp_plan_kv_transfer(&good, &ch, 1, 0, 1, &c));
    CHECK(dsacp_plan_kv_transfer(&good, &ch, 1, 0, 2, &c) == DSACP_EINVAL); /* no producer rank 2 */
    CHECK(dsacp_plan_kv_transfer(&good, &ch, 1, 1, 4, &c) == DSACP_EINVAL);
    CHECK(dsacp_plan_kv_transfer(&good, &ch, 1, 2, 0, &c) == DSACP_EINVAL);
    CHECK(dsacp_plan_kv_transfer(&good, &bad_ch, 1, 0, 0, &c) == DSACP_EINVAL);
    dsacp_plan_relayout r = good;
    r.index_group = 3;
    CHECK(dsacp_plan_kv_transfer(&r, &ch, 1, 0, 0, &c) == DSACP_EINVAL && strstr(dsacp_last_error(), "index_group"));
    r = good, r.Id = 0;
    CHECK(dsacp_plan_kv_transfer(&r, &ch, 1, 0, 0, &c) == DSACP_EINVAL && strstr(dsacp_last_error(), "'Id'"));
    CHECK_OK(dsacp_plan_kv_transfer(&good, NULL, 0, 1, 0, &c));
    CHECK(c.calls == 0 && c.bytes_recv == 0);
}

/* V3.2 on 8 H200s per instance, deployed numerics, experts over the 8 ranks; price() runs it. */
typedef struct v32_case {
    dsacp_config cfg;
    dsacp_cp_options cp;
    dsacp_hw hw;
    dsacp_plan_pd_options o;
} v32_case;

static void v32_setup(v32_case *v)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/hardware/h200-nvlink8.json", src_dir());
    REQUIRE_OK(dsacp_hw_load(p, &v->hw));
    REQUIRE_OK(dsacp_plan_preset("v32", &v->cfg));
    dsacp_cp_options_default(&v->cp);
    v->o = (dsacp_plan_pd_options){.producers = 1, .consumers = 1, .W = 8, .ep = 8, .prompt = 32768, .output = 256,
                                   .chunk = 2048, .deployed = true};
}

static int price(const v32_case *v, const double *rate, int64_t n, dsacp_plan_pd *q, dsacp_plan_pd_side *d,
                 dsacp_plan_pd_side *m)
{
    return dsacp_plan_pd_price(&v->cfg, &v->cp, &v->hw, &v->o, rate, n, q, d, m);
}

static void test_link_monotonic(void)
{
    v32_case v;
    v32_setup(&v);
    double last = INFINITY;
    for (double gbps = 1; gbps <= 1000; gbps *= 10) {
        v.o.link_bw = gbps * 1e9 / 8, v.o.link_latency_s = 5e-6;
        dsacp_plan_pd q;
        CHECK_OK(price(&v, NULL, 0, &q, NULL, NULL));
        CHECKF(q.transfer_s < last && q.transfer_s > 0, "%g Gb/s: %g s after %g s", gbps, q.transfer_s, last);
        CHECK(q.transfer_exposed_s > 0 && q.transfer_exposed_s <= q.transfer_s);
        /* the time is the formula's on the busiest rank: bytes / bandwidth + messages x latency */
        const double ts = dsacp_plan_link_seconds(&q.sent, 0, v.o.link_bw, v.o.link_latency_s);
        const double tr = dsacp_plan_link_seconds(&q.recv, 1, v.o.link_bw, v.o.link_latency_s);
        CHECK(fabs(q.transfer_s - fmax(ts, tr)) <= 1e-12 * q.transfer_s);
        CHECK(q.chunks == 16 && q.sent.calls == 16 * 61 && q.sent.bytes_sent > 32768 * (656 + 132) * 61 / 8);
        last = q.transfer_s;
    }
    /* a slower message costs more; 0 takes the profile's network figures */
    dsacp_plan_pd a, b, prof;
    v.o.link_latency_s = 1e-6;
    CHECK_OK(price(&v, NULL, 0, &a, NULL, NULL));
    v.o.link_latency_s = 1e-4;
    CHECK_OK(price(&v, NULL, 0, &b, NULL, NULL));
    CHECK(b.transfer_s > a.transfer_s);
    v.o.link_bw = 0, v.o.link_latency_s = 0;
    CHECK_OK(price(&v, NULL, 0, &prof, NULL, NULL));
    CHECK(prof.link_bw == v.hw.net_bw && fabs(prof.link_latency_s - v.hw.net_latency_us * 1e-6) < 1e-15);
}

/* Speculative decoding with method mtp: the MTP layer's prompt entries travel beside the target's
 * (one more layer of every message stream), and the producer runs the MTP layer's catch-up. */
static void test_transfer_mtp(void)
{
    v32_case v;
    v32_setup(&v);
    dsacp_plan_pd a, b;
    CHECK_OK(price(&v, NULL, 0, &a, NULL, NULL));
    v.o.mtp = true;
    CHECK_OK(price(&v, NULL, 0, &b, NULL, NULL));
    CHECKF(b.sent.calls * 61 == a.sent.calls * 62 && b.sent.bytes_sent * 61 == a.sent.bytes_sent * 62 &&
               b.recv.bytes_recv * 61 == a.recv.bytes_recv * 62,
           "mtp: %lld calls %lld bytes, without %lld calls %lld bytes (61 -> 62 layers)", (long long)b.sent.calls,
           (long long)b.sent.bytes_sent, (long long)a.sent.calls, (long long)a.sent.bytes_sent);
    /* the producer's prefill grows by its MTP catch-up: one more layer per chunk, one more head row */
    CHECK(b.prefill_s > a.prefill_s && b.prefill_s < a.prefill_s * 62 / 61 * 1.001 && b.transfer_s > a.transfer_s);
}

static void test_pd_refusals(void)
{
    v32_case v;
    v32_setup(&v);
    dsacp_plan_pd q;
    const double rate = 0.1;
    dsacp_plan_pd_side d, m;
    v.o.producers = 0;
    CHECK(price(&v, &rate, 1, &q, &d, &m) == DSACP_EINVAL && strstr(dsacp_last_error(), "'producers'"));
    v.o.producers = 1, v.o.consumers = 0;
    CHECK(price(&v, &rate, 1, &q, &d, &m) == DSACP_EINVAL && strstr(dsacp_last_error(), "'consumers'"));
    v.o.consumers = 1, v.o.ep = 9;
    CHECK(price(&v, &rate, 1, &q, &d, &m) == DSACP_EINVAL && strstr(dsacp_last_error(), "'ep'"));
    v.o.ep = 8, v.o.link_bw = 10;
    CHECK(price(&v, &rate, 1, &q, &d, &m) == DSACP_EINVAL && strstr(dsacp_last_error(), "link_bw"));
    v.o.link_bw = 0;
    const double zero = 0;
    CHECK(price(&v, &zero, 1, &q, &d, &m) == DSACP_EINVAL && strstr(dsacp_last_error(), "rate"));
}

/* The queues: times grow with the load; past the producers' capacity the disaggregated
 * deployment does not keep up (prefill) while the PD-mixed one, with twice the instances
 * prefilling, still does at 1.25x; a PD-mixed decode step waits for the chunks beside it. */
static void test_pd_queues(void)
{
    v32_case v;
    v32_setup(&v);
    dsacp_plan_pd q;
    REQUIRE_OK(price(&v, NULL, 0, &q, NULL, NULL));
    const double cap = 1 / q.prefill_s;
    double rate[5] = {0.05 * cap, 0.3 * cap, 0.6 * cap, 0.9 * cap, 1.25 * cap};
    dsacp_plan_pd_side d[5], m[5];
    REQUIRE_OK(price(&v, rate, 5, &q, d, m));
    for (int i = 0; i < 4; i++) {
        CHECKF(d[i].stable && m[i].stable, "load %d: %s / %s", i, d[i].limit, m[i].limit);
        CHECK(d[i].ttft >= q.prefill_s + q.transfer_exposed_s && d[i].tpot > 0 && d[i].itl_max == d[i].tpot);
        CHECK(m[i].itl_max > m[i].tpot && m[i].ttft > q.prefill_s && m[i].prefill_util > 0 && m[i].prefill_util < 1);
        CHECK(d[i].held_per_rank > 0 && d[i].held_per_rank <= 0.9 * v.hw.mem_bytes);
        if (i) CHECK(d[i].ttft > d[i - 1].ttft && m[i].ttft > m[i - 1].ttft && m[i].tpot >= m[i - 1].tpot);
    }
    CHECK(!d[4].stable && !strcmp(d[4].limit, "prefill") && d[4].prefill_util > 1);
    CHECK(m[4].stable);
    /* at the lightest load the producer's prefill has no decode steps beside it */
    CHECK(d[0].ttft < m[0].ttft);
    /* a producer prefilling in larger chunks gathers the context fewer times and sends fewer
     * messages; the PD-mixed side does not change */
    dsacp_plan_pd big;
    dsacp_plan_pd_side d2[5], m2[5];
    v.o.producer_chunk = 8192;
    REQUIRE_OK(price(&v, rate, 5, &big, d2, m2));
    CHECK(big.chunks == 4 && big.prefill_s < q.prefill_s && big.sent.calls == 4 * 61 && big.sent.calls < q.sent.calls);
    CHECK(big.sent.bytes_sent < q.sent.bytes_sent); /* fewer headers, the same entries */
    CHECK(m2[2].ttft == m[2].ttft && m2[2].tpot == m[2].tpot && d2[2].ttft < d[2].ttft);
}

int main(void)
{
    test_transfer_is_formula();
    test_transfer_refusals();
    test_link_monotonic();
    test_transfer_mtp();
    test_pd_refusals();
    test_pd_queues();
    return test_finish("test_plan_pd");
}
