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
 * duplicate are returned, never fatal (MPI_ERRORS_RETURN), and become DSACP_ECOMM.
 * Ownership: the handle owns only its duplicate; dsacp_comm_free releases it and never finalises
 * MPI (the program initialised it and finalises it after freeing every handle). `comm` may be
 * freed by the caller once this returns.
 * Thread safety: the MPI thread level the program chose decides. Under MPI_THREAD_FUNNELED every
 * call on the handle (and every step of an engine over it) comes from the main thread; under
 * SERIALIZED from one thread at a time; MPI_THREAD_MULTIPLE lets engines over different handles
 * step in different threads, still one thread at a time per handle.
 * Build: this header needs mpi.h: `pkg-config --cflags --libs dsacp-mpi`, or mpicc. */
int dsacp_comm_create_mpi(MPI_Comm comm, dsacp_comm **out);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_MPI_H */
