#!/usr/bin/env bash
# `dsacp plan` calibrated on this machine against measured `dsacp run` (docs/planning.md): the
# `small` preset (f32 weights), one request of a 1024-token prompt generating 64 tokens, exact
# numerics, W = 1 and 2 (one OpenMP thread per rank under mpirun), per decode strategy: the
# predicted whole-model decode time per token (at the mean context of the decode steps) beside
# the measured median TPOT, and the two orderings of the strategies.
#   bench/plan_vs_run.sh [--model DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
model=""
[ "${1:-}" = --model ] && model=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d /tmp/dsacp-pvr-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$model" ]; then model=$tmp/small; "$BUILD/dsacp" init-model --preset small --out "$model" >/dev/null; fi
run() { # W strategy-flags -> median TPOT ms
  local W=$1; shift
  OMP_NUM_THREADS=$([ "$W" = 1 ] && echo 2 || echo 1) mpirun -np "$W" --oversubscribe $([ "$W" = 1 ] && echo --bind-to none) "$BUILD/dsacp" run --model "$model" \
    --requests 1 --prompt-len 1024:1024 --gen-len 64:64 --arrival-rate 0 --no-realtime --numerics exact \
    --json "$tmp/r.json" "$@" >/dev/null 2>&1
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['median_tpot_ms'])" "$tmp/r.json"
}
plan() { # W label -> predicted ms
  "$BUILD/dsacp" plan --model "$model" --context 1056 --cp "$1" --numerics exact --weight-bytes 4 \
    --hardware "$tmp/cpu$1.json" --json "$tmp/p.json" >/dev/null
  python3 -c "import json,sys; s={x['strategy']: x for x in json.load(open(sys.argv[1]))['strategies']}; print(s[sys.argv[2]]['tpot_model'] * 1e3)" "$tmp/p.json" "$2"
}
OMP_NUM_THREADS=2 "$BUILD/dsacp" plan --calibrate "$tmp/cpu1.json" >/dev/null
OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe "$BUILD/dsacp" plan --calibrate "$tmp/cpu2.json" >/dev/null
echo "| W | strategy | predicted ms/token | measured ms/token | measured / predicted |"
echo "|---|---|---|---|---|"
p=$(plan 1 "TP, no CP (caches replicated)"); m=$(run 1)
echo "| 1 | (one process) | $(printf %.2f "$p") | $(printf %.2f "$m") | $(python3 -c "print('%.2f' % ($m / $p))") |"
for s in "exact-topk|exact-topk ag_rs (vLLM)" "lean|lean output" "replicated-index --index-layout replicated|replicated-index (vllm-ascend, SGLang)" \
         "allgather-kv|allgather-kv (vllm-ascend #6563)" "exact-topk --dcp-comm-backend a2a|exact-topk a2a (Helix merge)"; do
  flags=${s%%|*}; label=${s#*|}
  # shellcheck disable=SC2086
  m=$(run 2 --decode-strategy $flags); p=$(plan 2 "$label")
  echo "| 2 | $flags | $(printf %.2f "$p") | $(printf %.2f "$m") | $(python3 -c "print('%.2f' % ($m / $p))") |"
done
