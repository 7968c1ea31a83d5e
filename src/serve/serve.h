/*
 * serve -- the serving loop over an engine (docs/serving.md); its interface is public:
 * include/dsacp_serve.h. Calls engine, comm and core.
 */
#ifndef DSACP_SERVE_H
#define DSACP_SERVE_H

#include "core/core.h"
#include "dsacp_serve.h"

#endif
