/* Ping-pong between ranks 0 and 1 over whatever link joins them (bench/pd_netns.sh builds it with
 * mpicc and runs it across the two network namespaces): for each message size, the mean one-way
 * time (half the median round trip: robust to the scheduler's pauses on a shared machine) and the
 * bandwidth it implies. The smallest sizes give the per-message latency, the largest the link's
 * bandwidth -- the planner's link_latency_us and link_gbps. Output: one line per size,
 * "bytes one_way_us MB/s round_trips".
 *   mpirun -np 2 pingpong [MAX_BYTES [SECONDS_PER_SIZE]] */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REPS 100000

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Half the median round trip of `bytes` (rank 0's figure; rank 1 returns 0). */
static double one_way(char *buf, long bytes, int rank, double budget_s, double *rtt, long *reps_out)
{
    long reps = 0;
    double t0 = MPI_Wtime();
    int go = 1;
    while (go) {
        if (rank == 0) {
            const double t = MPI_Wtime();
            MPI_Send(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, (int)bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            rtt[reps++] = MPI_Wtime() - t;
            go = (MPI_Wtime() - t0 < budget_s && reps < MAX_REPS) || reps < 3;
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
    if (rank != 0)
        return 0;
    qsort(rtt, (size_t)reps, sizeof *rtt, by_value);
    return rtt[reps / 2] / 2.0;
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
    double *rtt = malloc(MAX_REPS * sizeof *rtt);
    if (!buf || !rtt) {
        fprintf(stderr, "pingpong: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memset(buf, 1, (size_t)max_bytes);
    for (long bytes = 0; bytes <= max_bytes; bytes = bytes ? bytes * 4 : 1) {
        long reps = 0;
        double s = one_way(buf, bytes, rank, budget, rtt, &reps);
        if (rank == 0)
            printf("%ld %.1f %.1f %ld\n", bytes, s * 1e6, bytes ? (double)bytes / s / 1e6 : 0.0, reps);
    }
    if (rank == 0)
        fflush(stdout);
    free(rtt);
    free(buf);
    MPI_Finalize();
    return 0;
}
