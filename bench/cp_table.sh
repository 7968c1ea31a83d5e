#!/usr/bin/env bash
# The measured tables of docs/context-parallel.md: decode over W ranks for each strategy at the
# v32-layer preset (one layer, DeepSeek-V3.2's attention dimensions) in deployed numerics (fp8
# latent and indexer caches), contexts 4K/32K/128K, W = 2, 4, 8 (oversubscribed on a small
# machine: one OpenMP thread per rank), through `dsacp bench --kernel cp --json`. Writes one
# JSON line per run to OUT (default: a scratch file) and prints a markdown table: bytes received
# per decode token per layer by the busiest rank, by phase; collective calls per layer; KV and
# transient bytes; attention time per token (slowest rank, median of --reps steps).
#   bench/cp_table.sh [--model DIR] [--out FILE] [--worlds "2 4 8"] [--contexts "4096 32768 131072"]
#                     [--strategies "exact-topk|replicated-index --index-layout replicated|..."]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
model="" out="" worlds="2 4 8" contexts="4096 32768 131072" reps=3
strategies="exact-topk|replicated-index --index-layout replicated|allgather-kv|lean|lean --lean-merge values|lean --partials fp32"
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;; --out) out=$2; shift 2 ;; --worlds) worlds=$2; shift 2 ;;
    --contexts) contexts=$2; shift 2 ;; --reps) reps=$2; shift 2 ;; --strategies) strategies=$2; shift 2 ;;
    *) echo "usage: $0 [--model DIR] [--out FILE] [--worlds LIST] [--contexts LIST] [--reps N] [--strategies 'S|S..']" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
if [ -z "$model" ]; then
  model=$(mktemp -d /tmp/dsacp-v32-XXXXXX)
  "$BUILD/dsacp" init-model --preset v32-layer --weights bf16 --no-mtp --out "$model" >/dev/null
fi
[ -n "$out" ] || out=$(mktemp /tmp/dsacp-cp-table-XXXXXX.jsonl)
: >"$out"
IFS='|' read -r -a strats <<<"$strategies"
for W in $worlds; do
  for L in $contexts; do
    for s in "${strats[@]}"; do
      # shellcheck disable=SC2086
      mpirun -np "$W" --oversubscribe "$BUILD/dsacp" bench --kernel cp --model "$model" --context "$L" \
        --reps "$reps" --json --decode-strategy $s | sed "s/^{/{\"label\": \"$s\", /" >>"$out"
    done
  done
done
echo "results: $out" >&2
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ph = ["kv_gather", "index_candidates", "lean_fallback", "query_gather", "attn_merge", "o_proj"]
print("| W | context | strategy | " + " | ".join(ph) + " | total KB | calls | KV MB/rank | transient MB | ms/token |")
print("|---|---|---|" + "---|" * (len(ph) + 5))
for r in rows:
    b = r["recv_bytes_max_rank"]
    tot = sum(b.get(p, 0) for p in ph)
    calls = sum(r["calls_per_step"].get(p, 0) for p in ph)
    print("| %d | %dK | %s | %s | %.1f | %.0f | %.2f | %.1f | %.2f |" % (
        r["world"], r["context"] // 1024, r["label"],
        " | ".join("%.1f" % (b.get(p, 0) / 1024) if b.get(p, 0) else "-" for p in ph),
        tot / 1024, calls / r["layers"], r["kv_bytes_per_rank_max"] / 2**20, r["transient_peak_bytes_max"] / 2**20,
        r["attention_ms_per_token"]))
PY
