#!/bin/bash
# docs/performance.md part 3 (issue 25): every figure of its tables in one pass, on a quiet
# machine. Uses build/dsacp (or DSACP=path); writes $OUT/part3.txt (default /tmp).
# The decode layers run twice: with OMP_WAIT_POLICY=PASSIVE (as every other row) and with
# libgomp's default wait policy (the two differ most there: docs/performance.md part 3).
cd "$(dirname "$0")/.." || exit 1
B=${DSACP:-build/dsacp}
O=${OUT:-/tmp}
log() { echo "== $(date +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg) ${OMP_WAIT_POLICY:-default}: $*"; }
layers() {
    log layer v32 32K 2t; $B bench --preset v32-layer --kernel layer --context 32768 --threads 2 --reps 5
    log layer small 1K 2t; $B bench --preset small --kernel layer --context 1024 --threads 2 --reps 5
}
{
    export OMP_WAIT_POLICY=PASSIVE
    for t in 1 2; do
        log ceilings ${t}t; $B bench --preset v32-layer --kernel ceilings --threads $t --reps 5
        log gemm ${t}t; $B bench --preset v32-layer --kernel gemm --threads $t --reps 3
        log mla ${t}t; $B bench --preset v32-layer --kernel mla --threads $t --reps 5
    done
    layers
    for c in 1024 4096; do
        for nm in deployed exact; do
            log prefill v32 $c $nm; $B bench --preset v32-layer --kernel prefill --context $c --numerics $nm --threads 2 --reps 2
        done
    done
    log prefill v32 16384 deployed
    $B bench --preset v32-layer --kernel prefill --context 16384 --numerics deployed --threads 2 --reps 1
    unset OMP_WAIT_POLICY
    layers
    log done
} 2>&1 | tee "$O/part3.txt"
