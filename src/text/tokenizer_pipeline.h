/* tokenizer_pipeline.h -- tokenizer.json's parts around the BPE model (tokenizer_pipeline.c). */
#ifndef DSACP_TEXT_TOKENIZER_PIPELINE_H
#define DSACP_TEXT_TOKENIZER_PIPELINE_H

#include "text/tokenizer.h"

#include <jansson.h>

/* added_tokens (NULL: none): the strings of their ids, special flags, the two tries. The added
 * ids go into str_ids before the vocabulary's (token_id finds them first). */
int text_added_read(dsacp_tokenizer *t, const char *path, json_t *added);
/* normalizer, pre_tokenizer, post_processor and decoder; DSACP_EUNSUPPORTED naming what is not
 * implemented. */
int text_pipeline_read(dsacp_tokenizer *t, const char *path, json_t *root);
void text_pipeline_free(dsacp_tokenizer *t);

#endif
