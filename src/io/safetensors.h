/*
 * safetensors -- reading (mmap, fully validated) and writing of .safetensors files.
 * The public half (dsacp_st_open/close and the writer) is declared in include/dsacp_io.h; this
 * header adds the library's own: the tensors, the in-memory open, look-ups, metadata. Calls
 * only core. Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {str: str}}, then the data region; offsets are relative to it.
 */
#ifndef DSACP_SAFETENSORS_H
#define DSACP_SAFETENSORS_H

#include "core/core.h"
#include "dsacp_io.h" /* the public half: dsacp_st_file, open/close, the writer */

#define DSACP_ST_MAX_DIMS 8
#define DSACP_ST_MAX_HEADER (100u * 1000u * 1000u) /* 100 MB */

typedef struct dsacp_st_tensor {
    char *name;                       /* NUL-terminated, owned by the file handle */
    dsacp_dtype dtype;
    int ndim;
    int64_t shape[DSACP_ST_MAX_DIMS];
    int64_t numel;
    const void *data;                 /* points into the mapping (read-only) */
    size_t nbytes;
} dsacp_st_tensor;

/* dsacp_st_open's validation over a buffer in memory (the buffer must outlive the handle; used by the
 * fuzzer and tests). `path` is used in messages only. */
int dsacp_st_open_memory(const void *data, size_t len, const char *path, dsacp_st_file **out);
const char *dsacp_st_path(const dsacp_st_file *f);
/* Tensors sorted by name. */
int64_t dsacp_st_count(const dsacp_st_file *f);
const dsacp_st_tensor *dsacp_st_tensor_at(const dsacp_st_file *f, int64_t i);
/* Binary search by name; NULL when absent. */
const dsacp_st_tensor *dsacp_st_find(const dsacp_st_file *f, const char *name);
/* Value of a "__metadata__" key, NULL when absent. */
const char *dsacp_st_metadata(const dsacp_st_file *f, const char *key);

/* A "__metadata__" entry of the file a writer writes (dsacp_st_writer, dsacp_io.h). */
int dsacp_st_writer_set_metadata(dsacp_st_writer *w, const char *key, const char *value);

#endif
