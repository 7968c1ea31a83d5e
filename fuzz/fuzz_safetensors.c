/* fuzz_safetensors.c -- libFuzzer entry: the safetensors reader must reject or accept any bytes
 * without crashing, and an accepted file must only describe bytes inside the input. */
#include "io/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Keeps the reads of tensor bytes from being optimized away. */
volatile unsigned fuzz_safetensors_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dsacp_st_file *f = NULL;
    int rc = dsacp_st_open_memory(data, size, "fuzz.safetensors", &f);
    if (rc != DSACP_OK) {
        if (f != NULL) abort();
        if (dsacp_last_error()[0] == '\0') abort();
        return 0;
    }
    unsigned sum = 0;
    int64_t n = dsacp_st_count(f);
    for (int64_t i = 0; i < n; i++) {
        const dsacp_st_tensor *t = dsacp_st_tensor_at(f, i);
        if (i > 0 && strcmp(dsacp_st_tensor_at(f, i - 1)->name, t->name) >= 0) abort();
        if (dsacp_st_find(f, t->name) != t) abort();
        if (t->ndim < 0 || t->ndim > DSACP_ST_MAX_DIMS) abort();
        if (t->nbytes != (size_t)t->numel * dsacp_dtype_size(t->dtype)) abort();
        const uint8_t *p = t->data;
        if (t->nbytes) {
            if (p < data || p + t->nbytes > data + size) abort();
            sum += p[0] + p[t->nbytes - 1]; /* ASan checks the ends are inside the input */
        }
    }
    const char *fmt = dsacp_st_metadata(f, "format");
    if (fmt) sum += (unsigned)strlen(fmt);
    fuzz_safetensors_sink = sum;
    dsacp_st_close(f);
    return 0;
}
