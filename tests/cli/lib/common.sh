# Shared by the CLI test scripts that source it (tests/cli/*.sh; this folder is not a test):
# a scratch directory removed on exit, pass/fail counters, and mpi N CMD... (mpirun under a
# timeout, oversubscribed, root-safe, one OpenMP thread per rank, leak detection off because
# Open MPI leaks internally). End a script with `finish`.
DSACP=${DSACP:?set by CTest}
MPIEXEC=${MPIEXEC:-mpirun}
command -v "$MPIEXEC" >/dev/null 2>&1 || MPIEXEC=mpirun
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d /tmp/dsacp-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0
pass() { passes=$((passes+1)); echo "ok   $*"; }
fail() { fails=$((fails+1)); echo "FAIL $*"; }
mpi() { local n=$1; shift; OMP_NUM_THREADS=1 ASAN_OPTIONS=${MPI_ASAN_OPTIONS:-detect_leaks=0} timeout "${MPI_TIMEOUT:-180}" "$MPIEXEC" -np "$n" --oversubscribe "$@"; }
finish() { echo "$passes passed, $fails failed"; [ "$fails" -eq 0 ]; }
