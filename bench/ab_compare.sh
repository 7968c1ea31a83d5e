#!/bin/bash
# Two builds of dsacp side by side, interleaved round by round on one machine (so load and clock
# drift hit both alike): the decode layer and prefill kernels of the v32-layer preset, and the
# engine's decode step, prefill step and W = 2 decode step on a model directory.
#   bench/ab_compare.sh BEFORE_BINARY AFTER_BINARY MODEL_DIR [ROUNDS]
# MODEL_DIR: e.g. `dsacp init-model --preset small --out DIR`. Prints one line per build and round
# (milliseconds). Issue 21's before/after table in its closing note came from this script.
set -eu
A=$1 B=$2 M=$3 R=${4:-3}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
step() { awk '/^  step/{print $2}'; }
for ((round = 1; round <= R; round++)); do
    for bin in "$A" "$B"; do
        tag=$([ "$bin" = "$A" ] && echo before || echo after)
        l=$("$bin" bench --preset v32-layer --kernel layer --context 8192 --reps 5 2>&1 | awk '/^decode_layer_step_time/{print $2}')
        p=$("$bin" bench --preset v32-layer --kernel prefill --context 1024 --reps 1 2>&1 | awk '/^prefill_layer_time/{print $2}')
        d=$("$bin" bench --model "$M" --kernel cp --context 2048 --batch 4 --reps 16 2>&1 | step)
        c=$("$bin" bench --model "$M" --kernel cp --context 0 --chunk 1024 --reps 1 2>&1 | step)
        w=$(timeout 300 mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1 "$bin" bench --model "$M" --kernel cp \
            --context 2048 --batch 4 --reps 32 2>&1 | step)
        echo "round $round $tag: layer_decode $l  layer_prefill1024 $p  engine_decode_step $d  engine_prefill1024 $c  w2_decode_step $w"
    done
done
