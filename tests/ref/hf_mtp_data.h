/* hf_mtp_data.h -- tests/data/hf_tiny_mtp/expected.safetensors (tools/hf_mtp_reference.py): what
 * transformers computed for the tiny model's target and MTP layer (docs/mtp.md), read for the
 * tests (test_hf_mtp, test_ref_mtp). Arrays point into the open file. */
#ifndef DSACP_HF_MTP_DATA_H
#define DSACP_HF_MTP_DATA_H

#include "dsacp.h"
#include "io/safetensors.h"

#include <stdint.h>

#define HF_MTP_MAX_LAYERS 8

typedef struct hf_mtp_data {
    dsacp_st_file *f;
    int64_t R, Lmax, V, K, D, NL; /* sequences, their padded length, vocab, index_topk, hidden, layers */
    const int32_t *ids;        /* [R][Lmax] target tokens, -1 padded */
    const int32_t *next;       /* [R] the last catch-up row's token (the target's argmax) */
    const float *logits;       /* [R][Lmax][V] target logits */
    const int32_t *topk[HF_MTP_MAX_LAYERS]; /* [R][Lmax][K] target selections per layer */
    const uint8_t *tie[HF_MTP_MAX_LAYERS];  /* [R][Lmax] near-tie rows per layer */
    const float *mtp_logits;   /* [R][Lmax][V] the MTP layer's logits of row p */
    const float *mtp_hidden;   /* [R][Lmax][D] its pre-norm output */
    const int32_t *mtp_topk;   /* [R][Lmax][K] */
    const uint8_t *mtp_tie;    /* [R][Lmax] */
    const int32_t *chain_ids;  /* [R] the chained row's token */
    const float *chain_logits; /* [R][V] */
    const int32_t *chain_topk; /* [R][K] */
    const uint8_t *chain_tie;  /* [R] */
} hf_mtp_data;

/* Opens tests/data/hf_tiny_mtp/expected.safetensors (under tu_source_dir) for a model of config
 * cfg and checks every array's size; exits the test on failure. dsacp_st_close(d->f) when done. */
void hf_mtp_open(const dsacp_config *cfg, hf_mtp_data *d);
/* The length of sequence r. */
int64_t hf_mtp_seq_len(const hf_mtp_data *d, int64_t r);
/* The first row of sequence r (of n rows) that a near tie of the reference (any target layer or
 * the MTP layer) may have changed, or n: later rows are left out of comparisons. */
int64_t hf_mtp_first_affected(const hf_mtp_data *d, int64_t r, int64_t n);

#endif
