/*
 * forward_input -- the input file of `dsacp forward`, parsed and checked against a model config
 * before anything is allocated for the run. Library-internal (not in include/dsacp.h); calls
 * core and io/safetensors.
 *
 * The file is a safetensors file with two tensors:
 *   input_ids I32 [R, Lmax]: request r's tokens, then -1 up to Lmax (no token after a -1);
 *   schedule  I32 [S, R]:    tokens of request r fed in step s (>= 0); each request's column
 *                            sums to its length.
 * Every id is in [0, vocab_size); no request is longer than max_position_embeddings. Every
 * buffer size the run derives from the file and the config is computed once here, overflow-checked
 * and bounded by DSACP_FORWARD_MAX_BYTES. Errors name the file and the tensor or config field.
 * Its declarations are include/dsacp_io.h's (one each); this header gathers what
 * forward_input.c and the fuzzer include.
 */
#ifndef DSACP_FORWARD_INPUT_H
#define DSACP_FORWARD_INPUT_H

#include "core/core.h"
#include "dsacp_io.h" /* its types and functions: dsacp_forward_input, dsacp_forward_sizes, ... */
#include "io/safetensors.h"

#endif
