/*
 * serve_pd.c -- prefill and decode on separate rank groups (dsacp_serve.h, docs/disaggregation.md):
 * the roles, the split of the world into groups, the link between them.
 * (Being built: the link and the disaggregated loop land in the next commits.)
 */
#include "serve/serve.h"

#include <string.h>

static const char *const role_names[] = {"kv_both", "kv_producer", "kv_consumer"};

const char *dsacp_kv_role_name(dsacp_kv_role role)
{
    return (int)role >= 0 && (int)role < 3 ? role_names[role] : "?";
}

int dsacp_kv_role_parse(const char *name, dsacp_kv_role *out)
{
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, role_names[i]) == 0) {
            *out = (dsacp_kv_role)i;
            return DSACP_OK;
        }
    return dsacp_error(DSACP_EINVAL, "kv role '%s': expected kv_both, kv_producer or kv_consumer", name ? name : "");
}

int dsacp_pd_split(dsacp_comm *world, dsacp_kv_role role, dsacp_comm **group)
{
    (void)world, (void)role;
    *group = NULL;
    return dsacp_error(DSACP_EUNSUPPORTED, "disaggregated serving is not built yet");
}

int dsacp_pd_create(dsacp_comm *world, dsacp_engine *e, dsacp_kv_role role, double timeout_s, dsacp_pd **out)
{
    (void)world, (void)e, (void)role, (void)timeout_s;
    *out = NULL;
    return dsacp_error(DSACP_EUNSUPPORTED, "disaggregated serving is not built yet");
}

void dsacp_pd_free(dsacp_pd *pd) { (void)pd; }
dsacp_kv_role dsacp_pd_role(const dsacp_pd *pd) { (void)pd; return DSACP_KV_BOTH; }
dsacp_comm *dsacp_pd_link(const dsacp_pd *pd) { (void)pd; return NULL; }
void dsacp_pd_sizes(const dsacp_pd *pd, int *w_producer, int *w_consumer)
{
    (void)pd;
    *w_producer = *w_consumer = 0;
}
dsacp_comm_counter dsacp_pd_predicted(const dsacp_pd *pd)
{
    (void)pd;
    return (dsacp_comm_counter){0};
}
