/*
 * test_cp_p2p.c -- the communicator's point-to-point layer (src/comm/comm.h) and its groups
 * (dsacp_comm_split_group, dsacp_comm_dup, dsacp_comm_set_timeout): the counters of each side
 * exactly (one call per message and side, sender bytes_sent, receiver bytes_recv); matched probes
 * of several tags received in send order per (source, tag); sends of 0 bytes and of several MB,
 * hundreds in flight; a receive nobody answers fails with DSACP_ECOMM within about its timeout; a
 * message of the wrong size is refused; the argument errors; a group's counters independent of
 * its parent, a duplicate's message space its own, a send never waited on freed with its
 * communicator; the poll helper of a caller's own loop. Runs alone (a solo communicator: every
 * point-to-point call refused) and under mpirun at W = 2, 3, 4.
 */
#include "comm/comm.h"
#include "test.h"

#include <stdint.h>

enum { TAG_RING = 1, TAG_WRONG = 9, NTAGS = 3, PER_TAG = 20, MANY = 300 };
#define BIG_BYTES ((size_t)6 << 20)
/* The most a bounded wait may overrun its timeout here: on a loaded host a rank can be off the
 * CPU for seconds (2.3 s seen with 4 ranks on 2 shared cores); a hang is the failure to catch. */
#define SLACK_S 15.0

static int g_me, g_W;

/* A counter equal to (calls, sent, recv). */
static bool counter_is(dsacp_comm_counter k, int64_t calls, int64_t sent, int64_t recv)
{
    return k.calls == calls && k.bytes_sent == sent && k.bytes_recv == recv;
}

/* Every phase of c but `phase` counts nothing. */
static bool others_zero(const dsacp_comm *c, int phase)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        if (p != phase && !counter_is(dsacp_comm_get_counter(c, p), 0, 0, 0)) return false;
    return true;
}

/* A byte pattern of message (rank, i). */
static uint8_t pattern(int rank, size_t i) { return (uint8_t)(rank * 31 + i * 7 + 1); }

static void solo_checks(dsacp_comm *c)
{
    char b[4] = {0};
    dsacp_comm_request *r = NULL;
    bool found = true;
    dsacp_comm_message m;
    CHECK(dsacp_comm_tag_max(c) == 32767);
    CHECK(dsacp_comm_isend(c, 0, 0, b, sizeof b, DSACP_PHASE_kv_transfer, &r) == DSACP_EINVAL && !r);
    CHECK(dsacp_comm_send(c, 0, 0, b, sizeof b, DSACP_PHASE_kv_transfer) == DSACP_EINVAL);
    CHECK(dsacp_comm_recv(c, -1, -1, b, sizeof b, DSACP_PHASE_kv_transfer, NULL) == DSACP_EINVAL);
    CHECK(dsacp_comm_improbe(c, -1, -1, &found, &m) == DSACP_EINVAL && !found);
    CHECK(others_zero(c, -1));
}

/* A ring: each rank sends 100 + me bytes to the next rank and receives from the previous one,
 * on a fresh duplicate whose counters start at zero. */
static void ring_counters(dsacp_comm *world)
{
    dsacp_comm *d = NULL;
    REQUIRE_OK(dsacp_comm_dup(world, &d));
    CHECK(dsacp_comm_rank(d) == g_me && dsacp_comm_size(d) == g_W && others_zero(d, -1));
    const int next = (g_me + 1) % g_W, prev = (g_me + g_W - 1) % g_W;
    uint8_t out[128], in[128];
    for (size_t i = 0; i < sizeof out; i++) out[i] = pattern(g_me, i);
    dsacp_comm_request *r = NULL;
    int from = -1;
    CHECK_OK(dsacp_comm_isend(d, next, TAG_RING, out, 100 + (size_t)g_me, DSACP_PHASE_kv_transfer, &r));
    CHECK_OK(dsacp_comm_recv(d, prev, TAG_RING, in, 100 + (size_t)prev, DSACP_PHASE_kv_transfer, &from));
    CHECK_OK(dsacp_comm_wait(r));
    CHECK(from == prev);
    bool same = true;
    for (size_t i = 0; i < 100 + (size_t)prev; i++) same = same && in[i] == pattern(prev, i);
    CHECK(same);
    const dsacp_comm_counter k = dsacp_comm_get_counter(d, DSACP_PHASE_kv_transfer);
    CHECKF(counter_is(k, 2, 100 + g_me, 100 + prev), "rank %d: calls %lld sent %lld recv %lld", g_me,
           (long long)k.calls, (long long)k.bytes_sent, (long long)k.bytes_recv);
    CHECK(k.seconds >= 0 && others_zero(d, DSACP_PHASE_kv_transfer));
    /* A blocking send counts the same: one call, its bytes. */
    dsacp_comm_reset_counters(d);
    int v = g_me, w = -1;
    if (g_me == 0) CHECK_OK(dsacp_comm_send(d, 1, TAG_RING, &v, sizeof v, DSACP_PHASE_control));
    if (g_me == 1) CHECK_OK(dsacp_comm_recv(d, -1, -1, &w, sizeof w, DSACP_PHASE_control, &from));
    if (g_me == 1) CHECK(w == 0 && from == 0);
    const int64_t n = (int64_t)sizeof v;
    CHECK(counter_is(dsacp_comm_get_counter(d, DSACP_PHASE_control), g_me < 2, g_me == 0 ? n : 0, g_me == 1 ? n : 0));
    dsacp_comm_free(d);
}

/* Rank 0 sends every other rank PER_TAG messages on each of NTAGS tags, interleaved; the receiver
 * takes them by matched probe, first one tag at a time, then any tag: per tag, in send order. */
static void probe_order(dsacp_comm *world, bool any_tag)
{
    if (g_me == 0) {
        int32_t seq[NTAGS * PER_TAG];
        dsacp_comm_request *r[NTAGS * PER_TAG];
        for (int q = 1; q < g_W; q++) {
            for (int i = 0; i < NTAGS * PER_TAG; i++) {
                seq[i] = i / NTAGS;
                CHECK_OK(dsacp_comm_isend(world, q, 10 + i % NTAGS, &seq[i], sizeof seq[i], DSACP_PHASE_kv_transfer, &r[i]));
            }
            for (int i = 0; i < NTAGS * PER_TAG; i++) CHECK_OK(dsacp_comm_wait(r[i]));
        }
        return;
    }
    int next[NTAGS] = {0}, got = 0;
    while (got < NTAGS * PER_TAG) {
        const int want = any_tag ? -1 : 10 + got / PER_TAG;
        bool found = false;
        dsacp_comm_message m;
        CHECK_OK(dsacp_comm_improbe(world, any_tag ? -1 : 0, want, &found, &m));
        if (!found) continue;
        int32_t v = -1;
        CHECK(m.source == 0 && m.bytes == sizeof v && m.tag >= 10 && m.tag < 10 + NTAGS);
        CHECK(want < 0 || m.tag == want);
        CHECK_OK(dsacp_comm_mrecv(world, &m, &v, DSACP_PHASE_kv_transfer));
        CHECK(m.mpi_ == NULL && dsacp_comm_mrecv(world, &m, &v, DSACP_PHASE_kv_transfer) == DSACP_EINVAL);
        const int t = m.tag - 10;
        CHECKF(v == next[t], "tag %d: message %d arrived as number %d", m.tag, v, next[t]);
        next[t]++, got++;
    }
}

/* Rank 0 sends each other rank a message of 0 bytes, one of BIG_BYTES and MANY small ones, all in
 * flight at once, completed by tests; the receivers check sizes and contents. */
static void sizes_and_many(dsacp_comm *world)
{
    uint8_t *big = malloc(BIG_BYTES);
    REQUIRE_OK(big ? 0 : DSACP_ENOMEM);
    int32_t small[MANY];
    if (g_me == 0) {
        for (size_t i = 0; i < BIG_BYTES; i++) big[i] = pattern(0, i);
        const int n = (g_W - 1) * (MANY + 2);
        dsacp_comm_request **r = malloc((size_t)n * sizeof *r);
        REQUIRE_OK(r ? 0 : DSACP_ENOMEM);
        for (int i = 0; i < MANY; i++) small[i] = i;
        int k = 0;
        for (int q = 1; q < g_W; q++) {
            CHECK_OK(dsacp_comm_isend(world, q, 20, NULL, 0, DSACP_PHASE_kv_transfer, &r[k++]));
            CHECK_OK(dsacp_comm_isend(world, q, 21, big, BIG_BYTES, DSACP_PHASE_kv_transfer, &r[k++]));
            for (int i = 0; i < MANY; i++)
                CHECK_OK(dsacp_comm_isend(world, q, 22, &small[i], sizeof small[i], DSACP_PHASE_kv_transfer, &r[k++]));
        }
        for (int left = n; left > 0;)
            for (int i = 0; i < n; i++) {
                bool done = false;
                if (r[i]) CHECK_OK(dsacp_comm_test(r[i], &done));
                if (r[i] && done) r[i] = NULL, left--;
            }
        free(r);
    } else {
        memset(big, 0, BIG_BYTES);
        CHECK_OK(dsacp_comm_recv(world, 0, 20, NULL, 0, DSACP_PHASE_kv_transfer, NULL));
        CHECK_OK(dsacp_comm_recv(world, 0, 21, big, BIG_BYTES, DSACP_PHASE_kv_transfer, NULL));
        bool same = true;
        for (size_t i = 0; i < BIG_BYTES; i++) same = same && big[i] == pattern(0, i);
        CHECK(same);
        for (int i = 0; i < MANY; i++) {
            int32_t v = -1;
            CHECK_OK(dsacp_comm_recv(world, 0, 22, &v, sizeof v, DSACP_PHASE_kv_transfer, NULL));
            CHECK(v == i);
        }
    }
    free(big);
}

/* The last test's counters on world: every message above, exactly. */
static void world_counters(const dsacp_comm *world)
{
    const dsacp_comm_counter k = dsacp_comm_get_counter(world, DSACP_PHASE_kv_transfer);
    const int64_t per_rank = 2 * NTAGS * PER_TAG + 2 + MANY;
    const int64_t bytes = 2 * NTAGS * PER_TAG * (int64_t)sizeof(int32_t) + (int64_t)BIG_BYTES + MANY * (int64_t)sizeof(int32_t);
    if (g_me == 0) CHECKF(counter_is(k, per_rank * (g_W - 1), bytes * (g_W - 1), 0), "rank 0: calls %lld", (long long)k.calls);
    else CHECKF(counter_is(k, per_rank, 0, bytes), "rank %d: calls %lld recv %lld", g_me, (long long)k.calls,
                (long long)k.bytes_recv);
}

/* The argument errors, on every rank. */
static void bad_arguments(dsacp_comm *world)
{
    char b[8] = {0};
    dsacp_comm_request *r = NULL;
    bool found = true;
    dsacp_comm_message m;
    const int tmax = dsacp_comm_tag_max(world);
    CHECK(tmax >= 32767);
    CHECK(dsacp_comm_isend(world, g_me, 1, b, 1, DSACP_PHASE_kv_transfer, &r) == DSACP_EINVAL && !r);
    CHECK(strstr(dsacp_last_error(), "this rank") != NULL);
    CHECK(dsacp_comm_isend(world, g_W, 1, b, 1, DSACP_PHASE_kv_transfer, &r) == DSACP_EINVAL);
    CHECK(dsacp_comm_isend(world, -1, 1, b, 1, DSACP_PHASE_kv_transfer, &r) == DSACP_EINVAL);
    CHECK(dsacp_comm_isend(world, (g_me + 1) % g_W, -1, b, 1, DSACP_PHASE_kv_transfer, &r) == DSACP_EINVAL);
    CHECK(tmax == INT32_MAX || dsacp_comm_isend(world, (g_me + 1) % g_W, tmax + 1, b, 1, 0, &r) == DSACP_EINVAL);
    CHECK(dsacp_comm_isend(world, (g_me + 1) % g_W, 1, b, (size_t)INT32_MAX + 1, 0, &r) == DSACP_ERANGE);
    CHECK(dsacp_comm_recv(world, g_me, 1, b, 1, DSACP_PHASE_kv_transfer, NULL) == DSACP_EINVAL);
    CHECK(dsacp_comm_improbe(world, g_W, -1, &found, &m) == DSACP_EINVAL && !found);
    CHECK(dsacp_comm_improbe(world, -1, -2, &found, &m) == DSACP_EINVAL);
}

/* A message of the wrong size (longer, then shorter) is consumed and refused, naming both sizes. */
static void wrong_size(dsacp_comm *world)
{
    uint8_t b[16] = {0};
    if (g_me == 0) {
        CHECK_OK(dsacp_comm_send(world, 1, TAG_WRONG, b, 10, DSACP_PHASE_kv_transfer));
        CHECK_OK(dsacp_comm_send(world, 1, TAG_WRONG, b, 4, DSACP_PHASE_kv_transfer));
    } else if (g_me == 1) {
        CHECK(dsacp_comm_recv(world, 0, TAG_WRONG, b, 8, DSACP_PHASE_kv_transfer, NULL) == DSACP_ECOMM);
        CHECKF(strstr(dsacp_last_error(), "10 bytes") && strstr(dsacp_last_error(), "expected 8"), "%s",
               dsacp_last_error());
        CHECK(dsacp_comm_recv(world, 0, TAG_WRONG, b, 8, DSACP_PHASE_kv_transfer, NULL) == DSACP_ECOMM);
        CHECK(strstr(dsacp_last_error(), "4 bytes") != NULL);
        bool found = true;
        dsacp_comm_message m;
        CHECK_OK(dsacp_comm_improbe(world, -1, TAG_WRONG, &found, &m));
        CHECK(!found);
    }
}

/* With a timeout of 0.3 s, a receive nobody answers fails with DSACP_ECOMM naming the peer, the
 * tag and the seconds, after at least the timeout and well before a hang (SLACK_S). Then a send
 * nobody receives: a large one is usually held until received, so its wait times out the same way
 * (MPI may also buffer it: then it completes); the receiver takes it afterwards. */
static void timeouts(dsacp_comm *world)
{
    dsacp_comm *d = NULL;
    REQUIRE_OK(dsacp_comm_dup(world, &d));
    dsacp_comm_set_timeout(d, 0.3);
    const int peer = (g_me + 1) % g_W;
    int v = 0;
    double t0 = dsacp_now();
    CHECK(dsacp_comm_recv(d, peer, 7, &v, sizeof v, DSACP_PHASE_kv_transfer, NULL) == DSACP_ECOMM);
    double dt = dsacp_now() - t0;
    char want[64];
    snprintf(want, sizeof want, "waiting for rank %d (tag 7)", peer);
    CHECKF(strstr(dsacp_last_error(), "timed out after 0.3 s") && strstr(dsacp_last_error(), want), "%s",
           dsacp_last_error());
    CHECKF(dt >= 0.3 && dt < SLACK_S, "timed out after %.3f s", dt);
    CHECK(dsacp_comm_recv(d, -1, -1, &v, sizeof v, DSACP_PHASE_kv_transfer, NULL) == DSACP_ECOMM);
    CHECK(strstr(dsacp_last_error(), "any rank (tag any)") != NULL);
    CHECK(counter_is(dsacp_comm_get_counter(d, DSACP_PHASE_kv_transfer), 0, 0, 0));
    REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK));

    uint8_t *big = calloc(BIG_BYTES, 1);
    REQUIRE_OK(big ? 0 : DSACP_ENOMEM);
    if (g_me == 0) {
        t0 = dsacp_now();
        const int rc = dsacp_comm_send(d, 1, 8, big, BIG_BYTES, DSACP_PHASE_kv_transfer);
        dt = dsacp_now() - t0;
        CHECKF(rc == DSACP_OK || (rc == DSACP_ECOMM && strstr(dsacp_last_error(), "waiting for rank 1 (tag 8)")),
               "%s", dsacp_last_error());
        CHECKF(rc == DSACP_OK || (dt >= 0.3 && dt < SLACK_S), "send timed out after %.3f s", dt);
    }
    REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK));
    dsacp_comm_set_timeout(d, 0); /* the drain waits as long as it takes */
    if (g_me == 1) CHECK_OK(dsacp_comm_recv(d, 0, 8, big, BIG_BYTES, DSACP_PHASE_kv_transfer, NULL));
    REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK)); /* the send is complete: its buffer may go */
    free(big);
    dsacp_comm_free(d);
}

/* Groups: split_group's counters are its own (the parent's do not move), dsacp_comm_split's are
 * the parent's; a group of one is solo; a duplicate's messages are not seen on its parent. */
static void groups(dsacp_comm *world)
{
    dsacp_comm *g = NULL, *shared = NULL;
    const dsacp_comm_counter before = dsacp_comm_get_counter(world, DSACP_PHASE_input);
    REQUIRE_OK(dsacp_comm_split_group(world, g_me % 2, -g_me, &g));
    const int gW = (g_W - g_me % 2 + 1) / 2;
    CHECK(dsacp_comm_size(g) == gW);
    /* key -me: ranked in reverse world order. */
    CHECK(dsacp_comm_rank(g) == gW - 1 - g_me / 2);
    CHECK(others_zero(g, -1));
    int v = g_me;
    CHECK_OK(dsacp_comm_bcast(g, &v, sizeof v, DSACP_PHASE_input));
    const int root = g_me % 2 + 2 * (gW - 1); /* world rank of the group's rank 0 */
    CHECK(v == root);
    CHECK(counter_is(dsacp_comm_get_counter(g, DSACP_PHASE_input), gW > 1, dsacp_comm_rank(g) == 0 ? 4 * (gW - 1) : 0,
                     gW > 1 && dsacp_comm_rank(g) ? 4 : 0));
    if (gW == 1) {
        solo_checks(g);
    } else {
        int w = -1;
        const int gr = dsacp_comm_rank(g);
        if (gr == 0) CHECK_OK(dsacp_comm_send(g, 1, 5, &v, sizeof v, DSACP_PHASE_kv_transfer));
        if (gr == 1) CHECK_OK(dsacp_comm_recv(g, 0, 5, &w, sizeof w, DSACP_PHASE_kv_transfer, NULL));
        CHECK(gr != 1 || w == root);
    }
    const dsacp_comm_counter after = dsacp_comm_get_counter(world, DSACP_PHASE_input);
    CHECK(after.calls == before.calls && after.bytes_recv == before.bytes_recv && after.bytes_sent == before.bytes_sent);
    dsacp_comm_free(g);

    REQUIRE_OK(dsacp_comm_split(world, g_me % 2, g_me, &shared));
    CHECK_OK(dsacp_comm_bcast(shared, &v, sizeof v, DSACP_PHASE_input));
    CHECK(dsacp_comm_get_counter(world, DSACP_PHASE_input).calls == before.calls + (gW > 1));
    dsacp_comm_free(shared);
}

/* A message on a duplicate is invisible on the parent (and the other way round). */
static void dup_space(dsacp_comm *world)
{
    dsacp_comm *d = NULL;
    REQUIRE_OK(dsacp_comm_dup(world, &d));
    int v = 42, w = 0;
    if (g_me == 0) CHECK_OK(dsacp_comm_send(d, 1, 3, &v, sizeof v, DSACP_PHASE_kv_transfer));
    REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK));
    if (g_me == 1) {
        bool found = true;
        dsacp_comm_message m;
        CHECK_OK(dsacp_comm_improbe(world, -1, -1, &found, &m));
        CHECK(!found);
        CHECK_OK(dsacp_comm_recv(d, 0, 3, &w, sizeof w, DSACP_PHASE_kv_transfer, NULL));
        CHECK(w == 42);
    }
    /* A send never waited on is freed with its communicator (a run ending with an error). */
    dsacp_comm_request *r = NULL;
    if (g_me == 0) CHECK_OK(dsacp_comm_isend(d, 1, 4, &v, sizeof v, DSACP_PHASE_kv_transfer, &r));
    if (g_me == 1) CHECK_OK(dsacp_comm_recv(d, 0, 4, &w, sizeof w, DSACP_PHASE_kv_transfer, NULL));
    REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK));
    dsacp_comm_free(d);
}

/* The poll of a caller's own loop: back to back at first, false once its timeout has passed (and
 * not much later), never false without a timeout. */
static void poll_helper(void)
{
    dsacp_comm_poll p;
    const double t0 = dsacp_now();
    dsacp_comm_poll_start(&p, 0.05);
    int polls = 0;
    while (dsacp_comm_poll_next(&p)) polls++;
    const double dt = dsacp_now() - t0;
    CHECKF(dt >= 0.05 && dt < SLACK_S && polls > 10, "poll: %d polls, false after %.3f s", polls, dt);
    dsacp_comm_poll_start(&p, 0);
    for (int i = 0; i < 100; i++) CHECK(dsacp_comm_poll_next(&p));
}

int main(int argc, char **argv)
{
    dsacp_comm *world = NULL;
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &world));
    g_me = dsacp_comm_rank(world), g_W = dsacp_comm_size(world);
    poll_helper();
    if (g_W == 1) {
        solo_checks(world);
        dsacp_comm *g = NULL, *d = NULL;
        CHECK_OK(dsacp_comm_split_group(world, 0, 0, &g));
        CHECK_OK(dsacp_comm_dup(world, &d));
        if (g) solo_checks(g);
        if (d) solo_checks(d);
        dsacp_comm_free(g), dsacp_comm_free(d);
    } else {
        ring_counters(world);
        dsacp_comm_reset_counters(world);
        probe_order(world, false);
        probe_order(world, true);
        sizes_and_many(world);
        world_counters(world);
        REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK));
        bad_arguments(world);
        wrong_size(world);
        REQUIRE_OK(dsacp_comm_agree(world, DSACP_OK));
        timeouts(world);
        groups(world);
        dup_space(world);
    }
    /* Every rank's verdict: a failed check anywhere fails the test on every rank. */
    const int rc = dsacp_comm_agree(world, test_failures_ ? DSACP_EINVAL : DSACP_OK);
    dsacp_comm_free(world);
    return rc && !test_failures_ ? 1 : test_finish("test_cp_p2p");
}
