/*
 * dsacp_mpi.h -- the one public entry point that needs mpi.h: a dsacp communicator over a
 * communicator the program already owns (a sub-communicator of a larger job, for example).
 * Everything else about context parallelism is in dsacp_cp.h.
 */
#ifndef DSACP_MPI_H
#define DSACP_MPI_H

#include <mpi.h>

#include "dsacp_cp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Wraps a duplicate of `comm` (MPI must be initialised; the caller keeps `comm`). Errors of the
 * duplicate are returned, never fatal (MPI_ERRORS_RETURN), and become DSACP_ECOMM. */
int dsacp_comm_create_mpi(MPI_Comm comm, dsacp_comm **out);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_MPI_H */
