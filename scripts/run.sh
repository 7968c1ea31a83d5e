#!/usr/bin/env bash
# The main job behind `make run`: the `small` preset model served by `dsacp run` on 2 MPI ranks
# (context parallelism, exact-topk decode over a sharded cache) with a mixed workload -- a few
# prompts of several thousand tokens and many short ones arriving over time -- verified against
# one process, reported in vLLM's metrics (docs/serving.md). Extra flags: make run ARGS="...".
# Writes build/run/report.json and, with python3, build/run/report.svg (bench/plot_run.py).
set -euo pipefail
build=${1:-build}
shift || true
dsacp="$build/dsacp"
out="$build/run"
mkdir -p "$out"
if [ ! -f "$out/small/model.safetensors" ]; then
  echo "make run: creating the small preset model in $out/small (once)" >&2
  "$dsacp" init-model --preset small --out "$out/small" --seed 1 >/dev/null
fi
ranks=${DSACP_RANKS:-2}
mpi=(mpirun -np "$ranks" --oversubscribe)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE
# shellcheck disable=SC2086
"${mpi[@]}" "$dsacp" run --model "$out/small" \
  --long-requests 2 --long-prompt-len 1500:2500 \
  --requests 24 --prompt-len 32:256 --gen-len 16:40 --arrival-rate 4 \
  --max-batch-tokens 512 --verify --json "$out/report.json" --seed 7 "$@"
if command -v python3 >/dev/null && python3 bench/plot_run.py "$out/report.json" "$out/report.svg" 2>/dev/null; then
  echo "picture: $out/report.svg (per-step time by phase, TTFT and TPOT distributions)"
fi
