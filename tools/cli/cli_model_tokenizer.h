/* cli_model_tokenizer.h -- a model directory's tokenizer (<dir>/tokenizer.json, docs/text.md
 * section 3): the vocabulary `init-model --tokenizer` gives a preset, the files it copies into the
 * model directory, and the check of a tokenizer against a model's vocabulary (inspect, serve). */
#ifndef DSACP_CLI_MODEL_TOKENIZER_H
#define DSACP_CLI_MODEL_TOKENIZER_H

#include "dsacp.h"
#include "dsacp_text.h"
#include "dsacp_util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* DeepSeek's own tokenizers (V3, V3.1, V3.2): 128,815 ids, "<｜begin▁of▁sentence｜>" at id 0;
 * their models declare a vocabulary of 129,280 (config.json's vocab_size). */
#define CLI_DEEPSEEK_TOKENIZER_IDS 128815
#define CLI_DEEPSEEK_VOCAB 129280
/* Any other tokenizer: its id count rounded up to a multiple of this. */
#define CLI_VOCAB_MULTIPLE 128
/* The config parser's bound on vocab_size. */
#define CLI_MAX_VOCAB ((int64_t)1 << 24)
#define CLI_BOS_TOKEN "<｜begin▁of▁sentence｜>"
#define CLI_EOS_TOKEN "<｜end▁of▁sentence｜>"

/* The vocabulary a model takes for tokenizer t (the rule above); *why (may be NULL) says which. */
int64_t cli_tokenizer_vocab(const dsacp_tokenizer *t, const char **why);

/* A model directory's tokenizer: `file` when given (--tokenizer), else <model_dir>/tokenizer.json.
 * When cfg is not NULL, a tokenizer with more ids than cfg->vocab_size is refused (the model has
 * no embedding for them). Returns CLI_RUN with *out set (free it), or 2 after one line on stderr
 * naming the file (or, with neither, --tokenizer and <model_dir>/tokenizer.json); 1 when memory
 * ran out. */
int cli_model_tokenizer(const char *cmd, const char *file, const char *model_dir, const dsacp_config *cfg,
                        dsacp_tokenizer **out);

/* init-model's tokenizer files: read and checked before anything is written, staged as
 * temporaries in the model directory, committed once the model is written. */
typedef struct cli_tokenizer_files {
    const char *file;          /* --tokenizer */
    dsacp_tokenizer *tok;
    int64_t ids;               /* dsacp_tokenizer_vocab_size */
    int32_t bos, eos;          /* their ids, -1 when the tokenizer has no such token */
    char *json, *config;       /* tokenizer.json's bytes; tokenizer_config.json's beside it (NULL: none) */
    size_t json_len, config_len;
    dsacp_out json_out, config_out;
} cli_tokenizer_files;

/* Loads and reads `file` (and tokenizer_config.json in its directory when there is one). Returns
 * CLI_RUN, or the exit status after one line on stderr naming the file. */
int cli_tokenizer_files_read(const char *cmd, const char *file, cli_tokenizer_files *f);
/* Creates the temporaries beside <dir>/tokenizer.json (and tokenizer_config.json); dir exists. */
int cli_tokenizer_files_stage(cli_tokenizer_files *f, const char *dir);
/* Adds bos_token_id / eos_token_id to <dir>/config.json (extra keys, which the config parser
 * ignores, as in DeepSeek's config.json) and renames the temporaries into place. */
int cli_tokenizer_files_commit(cli_tokenizer_files *f, const char *dir);
/* Removes what is still staged and frees everything (a zeroed struct is fine). */
void cli_tokenizer_files_free(cli_tokenizer_files *f);

#endif
