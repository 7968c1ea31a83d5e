/*
 * safetensors -- reading (mmap, fully validated) and writing of .safetensors files.
 * Calls only core. Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {str: str}}, then the data region; offsets are relative to it.
 */
#ifndef DSACP_SAFETENSORS_H
#define DSACP_SAFETENSORS_H

#include "core/core.h"

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

typedef struct dsacp_st_file dsacp_st_file;

/* Maps and validates a file: header length within the file and <= 100 MB, valid JSON object,
 * known dtypes, shape x element size == byte range, ranges inside the data region, no overlaps,
 * overflow-safe arithmetic, no duplicate names. Errors name the file and the tensor. */
int dsacp_st_open(const char *path, dsacp_st_file **out);
/* The same validation over a buffer in memory (the buffer must outlive the handle; used by the
 * fuzzer and tests). `path` is used in messages only. */
int dsacp_st_open_memory(const void *data, size_t len, const char *path, dsacp_st_file **out);
void dsacp_st_close(dsacp_st_file *f);
const char *dsacp_st_path(const dsacp_st_file *f);
/* Tensors sorted by name. */
int64_t dsacp_st_count(const dsacp_st_file *f);
const dsacp_st_tensor *dsacp_st_tensor_at(const dsacp_st_file *f, int64_t i);
/* Binary search by name; NULL when absent. */
const dsacp_st_tensor *dsacp_st_find(const dsacp_st_file *f, const char *name);
/* Value of a "__metadata__" key, NULL when absent. */
const char *dsacp_st_metadata(const dsacp_st_file *f, const char *key);

/* Writer: collect tensors (the data pointers must stay valid until write), then write the file
 * atomically through dsacp_out (core.h: exclusive temporary beside it, fsync, rename, fsync of
 * the directory; an existing path that is not a regular file is refused). Tensors are laid out
 * sorted by name, 8-byte-aligned header. */
typedef struct dsacp_st_writer dsacp_st_writer;
int dsacp_st_writer_create(dsacp_st_writer **out);
/* Copies name and shape; `data` is borrowed. nbytes must equal numel x dtype size. */
int dsacp_st_writer_add(dsacp_st_writer *w, const char *name, dsacp_dtype dtype, int ndim,
                        const int64_t *shape, const void *data);
int dsacp_st_writer_set_metadata(dsacp_st_writer *w, const char *key, const char *value);
int dsacp_st_writer_write(dsacp_st_writer *w, const char *path);
/* The same up to the commit: on DSACP_OK the whole file sits in o's temporary and the caller
 * finishes with dsacp_out_commit (or dsacp_out_abort) -- for writing several files that should
 * appear together. On failure nothing is left behind. */
int dsacp_st_writer_stage(dsacp_st_writer *w, const char *path, dsacp_out *o);
void dsacp_st_writer_free(dsacp_st_writer *w);

#endif
