/* serve_live.c -- the online loop (dsacp_live_*, include/dsacp_serve.h): placeholder. */
#include "serve/serve_loop.h"

#include <stdlib.h>
#include <string.h>

void dsacp_live_options_default(dsacp_live_options *o)
{
    memset(o, 0, sizeof *o);
    dsacp_serve_options_default(&o->serve);
    o->max_waiting = 256;
}
int dsacp_live_create(dsacp_engine *e, const dsacp_live_options *opt, dsacp_live **out)
{
    (void)e, (void)opt;
    *out = NULL;
    return dsacp_error(DSACP_EUNSUPPORTED, "dsacp_live_create: not built yet");
}
void dsacp_live_free(dsacp_live *lv) { (void)lv; }
int dsacp_live_submit(dsacp_live *lv, const dsacp_live_request *rq, uint64_t *id) { (void)lv, (void)rq, (void)id; return DSACP_EUNSUPPORTED; }
int dsacp_live_abort(dsacp_live *lv, uint64_t id) { (void)lv, (void)id; return DSACP_EUNSUPPORTED; }
void dsacp_live_shutdown(dsacp_live *lv, bool abort_all) { (void)lv, (void)abort_all; }
int dsacp_live_run(dsacp_live *lv, dsacp_live_sink sink, void *arg) { (void)lv, (void)sink, (void)arg; return DSACP_EUNSUPPORTED; }
void dsacp_live_get_stats(dsacp_live *lv, dsacp_live_stats *out) { (void)lv; memset(out, 0, sizeof *out); }
double dsacp_live_now(void) { return dsacp_now(); }
