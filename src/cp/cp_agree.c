/*
 * cp_agree.c -- the allocation agreement every stage of a layer uses (cp.h, docs/context-parallel.md
 * "Failures"). Its own file at the bottom of src/cp: every strategy, the merges, the layer, the
 * o_proj paths and the weight plans call it, and it calls nothing of src/cp back.
 */
#include "cp/cp.h"

int dsacp_cp_agree_alloc(dsacp_cp_ctx *cp, const char *site, bool ok, const char *what)
{
    int rc = DSACP_OK;
    if (!ok) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", what);
    else if (dsacp_fault(site)) rc = dsacp_fault_error(site, what);
    rc = dsacp_comm_agree_phase(cp->comm, rc, -1);
    if (rc) cp->step_failed = true;
    return rc;
}
