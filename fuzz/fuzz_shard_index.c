/* fuzz_shard_index.c -- libFuzzer entry: model.safetensors.index.json must be accepted or
 * rejected without crashing; an accepted index lists distinct, plain file names that stay in the
 * model directory. Links only src/model/shard_index.c, src/core/core.c and jansson. */
#include "model/shard_index.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dsacp_shard_index idx;
    memset(&idx, 0xa5, sizeof idx);
    int rc = dsacp_shard_index_parse((const char *)data, size, "fuzz/model.safetensors.index.json", &idx);
    if (rc == DSACP_OK) {
        if (idx.nfiles < 1 || idx.nfiles > idx.ntensors || idx.nfiles > DSACP_SHARD_INDEX_MAX_FILES) abort();
        for (int64_t i = 0; i < idx.nfiles; i++) {
            const char *s = idx.files[i];
            size_t n = strlen(s);
            if (n == 0 || n > 255 || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) abort();
            if (i > 0 && !strcmp(s, idx.files[i - 1])) abort();
        }
    } else if (dsacp_last_error()[0] == '\0' || idx.nfiles != 0 || idx.files != NULL) {
        abort();
    }
    dsacp_shard_index_free(&idx);
    return 0;
}
