/*
 * cp_agree.c -- the allocation agreement every stage of a layer uses (cp.h, docs/context-parallel.md
 * "Failures"). Its own file at the bottom of src/cp: every strategy, the merges, the layer, the
 * o_proj paths and the weight plans call it, and it calls nothing of src/cp back. Beside it the
 * buffer lists a stage takes from the step workspace (dsacp_cp_buf): one list per stage, read
 * both by its sizing (the engine's sum) and by its take, so that the two cannot drift apart.
 */
#include "cp/cp.h"

#include <string.h>

int dsacp_cp_agree_alloc(dsacp_cp_ctx *cp, const char *site, bool ok, const char *what)
{
    int rc = DSACP_OK;
    if (!ok) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", what);
    else if (dsacp_fault(site)) rc = dsacp_fault_error(site, what);
    rc = dsacp_comm_agree_phase(cp->comm, rc, -1);
    if (rc) cp->step_failed = true;
    return rc;
}

void dsacp_cp_bufs_need(size_t *total, const dsacp_cp_buf *b, int n)
{
    for (int i = 0; i < n; i++) dsacp_arena_need(total, b[i].rows, b[i].cols, b[i].elem);
}

bool dsacp_cp_bufs_take(dsacp_arena *ws, const dsacp_cp_buf *b, int n, const char *what)
{
    bool ok = true;
    for (int i = 0; i < n; i++) {
        void *p = ok ? dsacp_arena_take(ws, b[i].rows, b[i].cols, b[i].elem, what) : NULL;
        memcpy(b[i].out, &p, sizeof p);
        ok = p != NULL;
    }
    return ok;
}

int dsacp_cp_bufs_agree(dsacp_cp_ctx *cp, const char *site, const dsacp_cp_buf *b, int n, const char *what)
{
    return dsacp_cp_agree_alloc(cp, site, dsacp_cp_bufs_take(cp->ws, b, n, what), what);
}
