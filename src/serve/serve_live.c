/*
 * serve_live.c -- the online loop (dsacp_live_*, include/dsacp_serve.h; docs/serving.md "Online"):
 * create, run and free, above serve.c's loop; the queue, slots and events are serve_live_queue.c's.
 *
 * The batch loop of serve.c with requests that come and go while it runs. Other threads of rank 0
 * submit and abort under a mutex; the loop's thread takes both at the start of every plan
 * (dsacp_live_plan_begin), so the scheduler itself runs on one thread and sees the same state as
 * in a batch run. A request occupies a slot -- an index of the scheduler's per-request arrays --
 * from submission to its final event; a slot whose request ended (and whose engine request the
 * plan ended on every rank) takes the next submission, so the arrays stay as large as the most
 * requests ever in flight at once, not as the requests served. The other ranks learn of slots from
 * the plans' adds (dsacp_live_reserve). With nothing to run, rank 0 waits up to 50 ms for a
 * submission, then sends a plan without entries: every rank idles in the plan's broadcast.
 */
#include "serve/serve_live.h"
#include "engine/engine.h"

#include <stdlib.h>
#include <string.h>

void dsacp_live_options_default(dsacp_live_options *o)
{
    memset(o, 0, sizeof *o);
    dsacp_serve_options_default(&o->serve);
    o->serve.realtime = false;
    o->max_waiting = 256;
}

/* ---- create, run, free ---- */

int dsacp_live_create(dsacp_engine *e, const dsacp_live_options *opt, dsacp_live **out)
{
    *out = NULL;
    dsacp_comm *c = dsacp_engine_comm(e);
    int rc = DSACP_OK;
    if (!opt) rc = dsacp_error(DSACP_EINVAL, "dsacp_live_create: opt must not be NULL");
    else if (opt->serve.spec.method != DSACP_SPEC_NONE)
        rc = dsacp_error(DSACP_EUNSUPPORTED, "online serving: speculative decoding is not supported yet");
    else if (opt->serve.pd)
        rc = dsacp_error(DSACP_EUNSUPPORTED, "online serving: disaggregated links (kv roles) are not supported yet");
    else if (opt->serve.max_batch_tokens < 1 || opt->serve.max_num_seqs < 1 || opt->max_waiting < 1)
        rc = dsacp_error(DSACP_EINVAL, "online serving: max_batch_tokens %lld, max_num_seqs %lld and max_waiting %lld "
                         "must be >= 1", (long long)opt->serve.max_batch_tokens, (long long)opt->serve.max_num_seqs,
                         (long long)opt->max_waiting);
    dsacp_live *lv = rc ? NULL : calloc(1, sizeof *lv);
    if (!rc && !lv) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    if (lv) {
        lv->e = e, lv->opt = *opt, lv->root = dsacp_comm_rank(c) == 0;
        lv->opt.serve.progress = NULL;
        atomic_init(&lv->shut, 0);
        pthread_mutex_init(&lv->mu, NULL);
        pthread_cond_init(&lv->cv, NULL);
        lv->S.e = e, lv->S.o = &lv->opt.serve, lv->S.res = &lv->res, lv->S.live = lv;
        lv->L.c = c, lv->L.V = dsacp_engine_config(e)->vocab_size, lv->L.root = lv->root;
        if (lv->root && !(lv->L.work = malloc((size_t)lv->L.V * sizeof *lv->L.work)))
            rc = dsacp_error(DSACP_ENOMEM, "out of memory");
        if (!rc && lv->root) rc = dsacp_live_slots_grow(lv, 16);
    }
    rc = dsacp_comm_agree(c, rc);
    if (rc) {
        dsacp_live_free(lv);
        return rc;
    }
    *out = lv;
    return DSACP_OK;
}

int dsacp_live_run(dsacp_live *lv, dsacp_live_sink sink, void *arg)
{
    if (!lv) return dsacp_error(DSACP_EINVAL, "dsacp_live_run: lv must not be NULL");
    if (lv->ran) return dsacp_error(DSACP_EINVAL, "dsacp_live_run: the loop ran already (create another)");
    lv->ran = true;
    lv->sink = sink, lv->sink_arg = arg;
    int rc = dsacp_serve_loop(&lv->S, &lv->L);
    if (rc && lv->root) dsacp_live_fail_all(lv, rc);
    return rc;
}

void dsacp_live_free(dsacp_live *lv)
{
    if (!lv) return;
    dsacp_serve_sched_free(&lv->S, &lv->L, lv->e, lv->S.n);
    for (int64_t s = 0; s < lv->cap; s++) free(lv->S.lrq[s].prompt), free((void *)lv->S.lrq[s].stop_ids);
    free(lv->S.lrq);
    for (int64_t i = 0; i < lv->n_pend; i++) free(lv->pend[i].prompt), free(lv->pend[i].stop);
    free(lv->pend), free(lv->aborts), free(lv->ids), free(lv->slot_id), free(lv->slot_user);
    for (int64_t i = 0; i < lv->n_ev; i++) free(lv->ev_msg[i]);
    free(lv->ev), free(lv->ev_msg);
    dsacp_serve_result_free(&lv->res);
    pthread_mutex_destroy(&lv->mu);
    pthread_cond_destroy(&lv->cv);
    free(lv);
}
