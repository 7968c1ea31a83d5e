/*
 * shard_index -- model.safetensors.index.json, the list of shard files of a sharded checkpoint.
 * Parsed from memory so the fuzzer (fuzz/fuzz_shard_index.c) links only this, core and jansson.
 */
#ifndef DSACP_SHARD_INDEX_H
#define DSACP_SHARD_INDEX_H

#include "core/core.h"

/* At most this many distinct shard files (DeepSeek-V3.2 has 163). */
#define DSACP_SHARD_INDEX_MAX_FILES 65536

typedef struct dsacp_shard_index {
    char **files;  /* distinct shard file names, in first-seen order of weight_map */
    int64_t nfiles;
    int64_t ntensors; /* entries of weight_map */
} dsacp_shard_index;

/* Parses an index file's text (`len` bytes, need not be NUL-terminated). Every weight_map value
 * must be a plain file name in the model directory: non-empty, at most 255 bytes, no '/', no
 * NUL, not "." or "..". DSACP_EFORMAT (or DSACP_ENOMEM) with a message naming `path` and the
 * field otherwise; `out` is then empty. Free with dsacp_shard_index_free. */
int dsacp_shard_index_parse(const char *text, size_t len, const char *path, dsacp_shard_index *out);
void dsacp_shard_index_free(dsacp_shard_index *idx);

#endif
