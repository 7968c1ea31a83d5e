/* Ping-pong between ranks 0 and 1 over whatever link joins them (bench/pd_netns.sh builds it with
 * mpicc and runs it across the two network namespaces): for each message size, the mean one-way
 * time (half a round trip) and the bandwidth it implies. The smallest sizes give the per-message
 * latency, the largest the link's bandwidth -- the planner profile's link_latency_us and
 * link_gbps. Output: one line per size, "bytes one_way_us MB/s".
 *   mpirun -np 2 pingpong [MAX_BYTES [SECONDS_PER_SIZE]] */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double one_way(char *buf, long bytes, int rank, double budget_s, long *reps_out)
{
    long reps = 0;
    double t0 = MPI_Wtime(), t = t0;
    int go = 1;
    while (go) {
        if (rank == 0) {
            MPI_Send(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            t = MPI_Wtime();
            reps++;
            go = (t - t0 < budget_s && reps < 100000) || reps < 3;
        } else {
            MPI_Recv(buf, (int)bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, (int)bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
            reps++;
        }
        if (rank == 0)
            MPI_Send(&go, 1, MPI_INT, 1, 1, MPI_COMM_WORLD);
        else
            MPI_Recv(&go, 1, MPI_INT, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    *reps_out = reps;
    return (t - t0) / (double)reps / 2.0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, world = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    long max_bytes = argc > 1 ? atol(argv[1]) : 16L << 20;
    double budget = argc > 2 ? atof(argv[2]) : 1.0;
    if (world != 2 || max_bytes < 1 || max_bytes > (1L << 30) || budget <= 0) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs 2 ranks, 1 <= MAX_BYTES <= 1 GiB, SECONDS > 0\n");
        MPI_Finalize();
        return 2;
    }
    char *buf = malloc((size_t)max_bytes);
    if (!buf) {
        fprintf(stderr, "pingpong: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memset(buf, 1, (size_t)max_bytes);
    for (long bytes = 0; bytes <= max_bytes; bytes = bytes ? bytes * 4 : 1) {
        long reps = 0;
        double s = one_way(buf, bytes, rank, budget, &reps);
        /* the one-way time of the message (the turn flag rides after the measured window) */
        if (rank == 0)
            printf("%ld %.1f %.1f %ld\n", bytes, s * 1e6, bytes ? (double)bytes / s / 1e6 : 0.0, reps);
    }
    if (rank == 0)
        fflush(stdout);
    free(buf);
    MPI_Finalize();
    return 0;
}
