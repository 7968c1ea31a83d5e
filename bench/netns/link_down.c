/* What Open MPI does when the link between two hosts goes down mid-run and a rank then ends
 * (bench/pd_netns.sh fault's probe, docs/netns.md "Failures"): ranks 0 and 1 (one per host)
 * exchange a message every 10 ms; once a receive has waited longer than TIMEOUT seconds (the link
 * is down: TCP never reports the loss within minutes), each rank prints the time and ends by MODE:
 *   finalize  MPI_Finalize, then exit 1
 *   abort     MPI_Abort(MPI_COMM_WORLD, 1)
 *   exit      exit(1) without MPI_Finalize
 *   mpirun -np 2 link_down MODE TIMEOUT */
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c11 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void nap(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* 0 when the exchange completed, 1 when it waited longer than timeout_s */
static int exchange(int peer, double timeout_s)
{
    int out = 1, in = 0, done = 0;
    MPI_Request req[2];
    MPI_Irecv(&in, 1, MPI_INT, peer, 0, MPI_COMM_WORLD, &req[0]);
    MPI_Isend(&out, 1, MPI_INT, peer, 0, MPI_COMM_WORLD, &req[1]);
    double t0 = MPI_Wtime();
    while (!done) {
        MPI_Testall(2, req, &done, MPI_STATUSES_IGNORE);
        if (!done && MPI_Wtime() - t0 > timeout_s)
            return 1; /* the requests stay pending: what a failed rank has in flight */
        if (!done)
            nap(100);
    }
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *mode = argc > 1 ? argv[1] : "finalize";
    double timeout_s = argc > 2 ? atof(argv[2]) : 3.0;
    double t0 = MPI_Wtime();
    long n = 0;
    while (exchange(1 - rank, timeout_s) == 0) {
        n++;
        nap(10000);
    }
    fprintf(stderr, "link_down: rank %d: no message for %.1f s after %ld exchanges (%.1f s): %s\n", rank,
            timeout_s, n, MPI_Wtime() - t0, mode);
    if (strcmp(mode, "abort") == 0)
        MPI_Abort(MPI_COMM_WORLD, 1);
    if (strcmp(mode, "finalize") == 0) {
        MPI_Finalize();
        fprintf(stderr, "link_down: rank %d: MPI_Finalize returned after %.1f s\n", rank, MPI_Wtime() - t0);
    }
    return 1;
}
