#!/usr/bin/env bash
# Prefill over W ranks per split (docs/context-parallel.md section 8): one prompt of --tokens
# tokens prefilled in one step by `dsacp bench --kernel cp --context 0 --chunk P` on the
# v32-layer attention with a 128-wide MLP (bench/cp_step --make-model: the time is the attention
# layer's), deployed numerics. Prints per (W, split): the step time (slowest rank), the bytes the
# busiest rank received (the prefill entries and context; the rest: a distributed chunk's decode
# phases), and the attention work per rank from the
# comm report (query tokens, keys scored; max / mean = the load imbalance).
# With --context C also one chunk of --tokens after C cached positions per --context-path.
#   bench/cp_prefill.sh [--model DIR] [--worlds "2 4"] [--tokens 32768] [--splits "owner contiguous zigzag"]
#                       [--context C --paths "gather distributed" --strategy S]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
model="" worlds="2 4" tokens=32768 splits="owner contiguous zigzag" context=0 paths="gather" strategy=lean
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;; --worlds) worlds=$2; shift 2 ;; --tokens) tokens=$2; shift 2 ;;
    --splits) splits=$2; shift 2 ;; --context) context=$2; shift 2 ;; --paths) paths=$2; shift 2 ;;
    --strategy) strategy=$2; shift 2 ;;
    *) echo "usage: $0 [--model DIR] [--worlds LIST] [--tokens N] [--splits LIST] [--context C --paths LIST --strategy S]" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/dsacp-cp-prefill-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$model" ]; then
  model=$tmp/v32
  "$BUILD/cp_step" --make-model "$model"
fi
echo "| W | split | context | path | tokens | step s | prefill_kv MB recv | other KB recv | tokens/rank max/min | keys scored max/mean | keys attended max/mean |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for W in $worlds; do
  for s in $splits; do
    for p in $paths; do
      mpirun -np "$W" --oversubscribe "$BUILD/dsacp" bench --kernel cp --model "$model" --context "$context" \
        --chunk "$tokens" --reps 1 --json --prefill-split "$s" --context-path "$p" --decode-strategy "$strategy" \
        --comm-report "$tmp/r.json" | tail -1 >"$tmp/b.json"
      python3 - "$tmp/b.json" "$tmp/r.json" "$s" "$p" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
w = r["cp"]["attention_work"]
tok = [x["prefill_tokens"] + x["decode_tokens"] for x in w]
ks = [x["keys_scored"] for x in w]; ka = [x["keys_attended"] for x in w]
mean = lambda v: sum(v) / len(v)
rb = b["recv_bytes_max_rank"]
other = sum(v for k, v in rb.items() if k not in ("prefill_kv", "control"))
print("| %d | %s | %d | %s | %d | %.1f | %.2f | %.1f | %d / %d | %.3f | %.3f |" % (
    b["world"], sys.argv[3], b["context"], sys.argv[4], b["tokens_per_step"], b["step_ms"] / 1e3,
    rb.get("prefill_kv", 0) / 2**20, other / 1024, max(tok) // b["layers"], min(tok) // b["layers"],
    max(ks) / mean(ks) if mean(ks) else 0, max(ka) / mean(ka) if mean(ka) else 0))
PY
    done
  done
done
