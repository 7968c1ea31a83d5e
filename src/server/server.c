/* server.c -- dsacp_server_* (include/dsacp_server.h): placeholder until the server lands. */
#include "server/server.h"

#include <string.h>

void dsacp_server_options_default(dsacp_server_options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_body_bytes = (size_t)4 << 20;
    o->timeout_s = 60;
    o->max_connections = 512;
    o->default_max_tokens = 16;
    dsacp_live_options_default(&o->live);
}

int dsacp_server_create(dsacp_engine *e, const dsacp_tokenizer *tok, const dsacp_server_options *opt,
                        dsacp_server **out)
{
    (void)e, (void)tok, (void)opt;
    *out = NULL;
    return dsacp_error(DSACP_EUNSUPPORTED, "dsacp_server_create: not built yet");
}
int dsacp_server_port(const dsacp_server *s) { (void)s; return -1; }
int dsacp_server_run(dsacp_server *s, double grace_s) { (void)s, (void)grace_s; return DSACP_EUNSUPPORTED; }
void dsacp_server_stop(dsacp_server *s) { (void)s; }
void dsacp_server_free(dsacp_server *s) { (void)s; }
