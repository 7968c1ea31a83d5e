/* hf_mtp_data.c -- the reader of tests/data/hf_tiny_mtp/expected.safetensors (hf_mtp_data.h). */
#include "hf_mtp_data.h"

#include "test_util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

/* A failure here makes the test meaningless: report and stop it. */
static void require(bool ok, const char *what)
{
    if (ok) return;
    fprintf(stderr, "hf_tiny_mtp/expected.safetensors: %s: %s\n", what, dsacp_last_error());
    exit(1);
}

static const void *need(dsacp_st_file *f, const char *name, int64_t numel)
{
    const dsacp_st_tensor *t = dsacp_st_find(f, name);
    require(t && t->numel == numel, name);
    return t->data;
}

void hf_mtp_open(const dsacp_config *cfg, hf_mtp_data *d)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/data/hf_tiny_mtp/expected.safetensors", tu_source_dir());
    require(dsacp_st_open(path, &d->f) == 0, "cannot open");
    const dsacp_st_tensor *ids = dsacp_st_find(d->f, "input_ids");
    require(ids && ids->ndim == 2 && cfg->num_hidden_layers <= HF_MTP_MAX_LAYERS, "input_ids / layers");
    d->R = ids->shape[0], d->Lmax = ids->shape[1], d->V = cfg->vocab_size, d->K = cfg->index_topk;
    d->D = cfg->hidden_size, d->NL = cfg->num_hidden_layers;
    const int64_t RL = d->R * d->Lmax;
    d->ids = ids->data;
    d->next = need(d->f, "next_ids", d->R);
    d->logits = need(d->f, "logits", RL * d->V);
    d->mtp_logits = need(d->f, "mtp.logits", RL * d->V);
    d->mtp_hidden = need(d->f, "mtp.hidden", RL * d->D);
    d->mtp_topk = need(d->f, "mtp.topk", RL * d->K);
    d->mtp_tie = need(d->f, "mtp.tie", RL);
    d->chain_ids = need(d->f, "chain.ids", d->R);
    d->chain_logits = need(d->f, "chain.logits", d->R * d->V);
    d->chain_topk = need(d->f, "chain.topk", d->R * d->K);
    d->chain_tie = need(d->f, "chain.tie", d->R);
    for (int64_t l = 0; l < d->NL; l++) {
        char n[32];
        snprintf(n, sizeof n, "topk.%lld", (long long)l);
        d->topk[l] = need(d->f, n, RL * d->K);
        snprintf(n, sizeof n, "tie.%lld", (long long)l);
        d->tie[l] = need(d->f, n, RL);
    }
}

int64_t hf_mtp_seq_len(const hf_mtp_data *d, int64_t r)
{
    int64_t n = 0;
    while (n < d->Lmax && d->ids[r * d->Lmax + n] >= 0) n++;
    return n;
}

int64_t hf_mtp_first_affected(const hf_mtp_data *d, int64_t r, int64_t n)
{
    for (int64_t p = 0; p < n; p++) {
        bool t = d->mtp_tie[r * d->Lmax + p];
        for (int64_t l = 0; l < d->NL; l++) t = t || d->tie[l][r * d->Lmax + p];
        if (t) return p;
    }
    return n;
}
