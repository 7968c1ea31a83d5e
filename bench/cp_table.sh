#!/usr/bin/env bash
# The measured table of docs/context-parallel.md: decode over W ranks for each strategy at the
# v32-layer preset (one layer, DeepSeek-V3.2's attention dimensions) in deployed numerics (fp8
# latent and indexer caches), contexts 4K/32K/128K, W = 2, 4, 8 (oversubscribed on a small
# machine: one OpenMP thread per rank). Writes one JSON line per run (bench/cp_decode) to
# OUT (default: a scratch file) and prints a markdown table.
#   bench/cp_table.sh [--model DIR] [--out FILE] [--worlds "2 4 8"] [--contexts "4096 32768 131072"]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
model="" out="" worlds="2 4 8" contexts="4096 32768 131072" reps=3
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;; --out) out=$2; shift 2 ;; --worlds) worlds=$2; shift 2 ;;
    --contexts) contexts=$2; shift 2 ;; --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--model DIR] [--out FILE] [--worlds LIST] [--contexts LIST] [--reps N]" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
if [ -z "$model" ]; then
  model=$(mktemp -d /tmp/dsacp-v32-XXXXXX)
  "$BUILD/dsacp" init-model --preset v32-layer --weights bf16 --out "$model" >/dev/null
fi
[ -n "$out" ] || out=$(mktemp /tmp/dsacp-cp-table-XXXXXX.jsonl)
: >"$out"
for W in $worlds; do
  for L in $contexts; do
    for s in "exact-topk" "replicated-index --index-layout replicated" "allgather-kv"; do
      # shellcheck disable=SC2086
      mpirun -np "$W" --oversubscribe "$BUILD/cp_decode" --model "$model" --context "$L" --reps "$reps" \
        --decode-strategy $s >>"$out"
    done
  done
done
echo "results: $out" >&2
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ph = ["kv_gather", "index_candidates", "query_gather", "attn_merge", "o_proj"]
print("| W | context | strategy | " + " | ".join(ph) + " | total KB | KV MB/rank | transient MB | ms/token |")
print("|---|---|---|" + "---|" * (len(ph) + 4))
for r in rows:
    b = r["recv_bytes_max_rank"]
    tot = sum(b.get(p, 0) for p in ph)
    print("| %d | %dK | %s | %s | %.1f | %.2f | %.1f | %.1f |" % (
        r["world"], r["context"] // 1024, r["strategy"],
        " | ".join("%.1f" % (b.get(p, 0) / 1024) if b.get(p, 0) else "-" for p in ph),
        tot / 1024, r["kv_bytes_per_rank_max"] / 2**20, r["transient_peak_bytes_max"] / 2**20,
        r["attention_ms_per_token"]))
PY
