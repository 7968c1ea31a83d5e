#!/usr/bin/env bash
# DSA-CP weight plans (docs/context-parallel.md section 9): one step of T decode tokens under
# --cp-mode dsa-cp at W ranks for each plan, on the v32-layer attention with fp8 weights (the MLP
# shrunk: bench/cp_step.c). Prints a markdown table; JSON lines go to OUT (default: scratch).
#   bench/cp_plans.sh [--model DIR] [--out FILE] [--worlds "2 4"] [--tokens "1 64 1024"]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
model="" out="" worlds="2 4" tokens="1 64 1024"
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;; --out) out=$2; shift 2 ;; --worlds) worlds=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    *) echo "usage: $0 [--model DIR] [--out FILE] [--worlds LIST] [--tokens LIST]" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
if [ -z "$model" ]; then model=$(mktemp -d /tmp/dsacp-v32attn-XXXXXX); "$BUILD/cp_step" --make-model "$model"; fi
[ -n "$out" ] || out=$(mktemp /tmp/dsacp-cp-plans-XXXXXX.jsonl)
: >"$out"
for W in $worlds; do
  for T in $tokens; do
    for plan in "replicated replicated" "layer-shard layer-shard" "replicated tp-a2a" "replicated tp-gather" "replicated auto"; do
      set -- $plan
      mpirun -np "$W" --oversubscribe "$BUILD/cp_step" --model "$model" --tokens "$T" --q-proj "$1" --o-proj "$2" \
        --reps 2 >>"$out"
    done
  done
done
echo "results: $out" >&2
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| W | T | q_proj | o_proj | q+o resident MB/rank | ring MB | gather MB | received per step (busiest rank) | step ms |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    w = r["weights_rank0"]; b = r["recv_bytes_max_rank"]
    moved = ", ".join("%s %.2f MB" % (k, v / 2**20) for k, v in b.items() if k != "control" and v > 0)
    o = r["o_proj"]
    if o in ("auto", "tp"):
        o += " (%s)" % ("gather" if r["o_proj_steps"]["gather"] else "a2a")
    print("| %d | %d | %s | %s | %.1f | %.1f | %.1f | %s | %.0f |" % (
        r["world"], r["tokens"], r["q_proj"], o, (w["q_proj_resident"] + w["o_proj_resident"]) / 2**20,
        w["ring"] / 2**20, w["gather"] / 2**20, moved or "-", r["step_ms"]))
PY
