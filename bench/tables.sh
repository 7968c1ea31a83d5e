#!/usr/bin/env bash
# bench/tables.sh -- the Markdown tables of docs/performance.md from the CSV of bench/sweep.sh.
#   bench/tables.sh [--in DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
in="$here/results"
[[ ${1:-} == --in ]] && in=$2
[[ -s $in/decode_layer.csv && -s $in/kernels.csv ]] || { echo "tables.sh: run bench/sweep.sh first" >&2; exit 1; }

echo "Time per decode token per layer (ms; batch 4: step time / 4) and 2-thread speed-up:"
echo
awk -F, 'NR > 1 { t[$1 "," $2 "," $3] = $4; if (!($1 in c)) { c[$1] = 1; cs[++n] = $1 } }
  END {
    print "| context | batch 1, 1 thr | batch 1, 2 thr | speed-up | batch 4, 1 thr | batch 4, 2 thr | speed-up |"
    print "|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= n; i++) {
      L = cs[i]; a = t[L ",1,1"]; b = t[L ",1,2"]; d = t[L ",4,1"]; e = t[L ",4,2"]
      printf "| %d | %.2f | %.2f | %.2fx | %.2f | %.2f | %.2fx |\n", L, a, b, (b > 0 ? a / b : 0), d, e, (e > 0 ? d / e : 0)
    }
  }' "$in/decode_layer.csv"
echo
for T in 2 1; do
  echo "Kernels, $T thread(s) (GFLOP/s, and the ratio to the ceiling measured in the same run):"
  echo
  awk -F, -v T="$T" 'NR > 1 && $2 == T {
      printf "| %d | %.0f (%.2fx) | %.0f (%.2fx) | %.0f (%.2fx) | %.0f (%.2fx) | %.3f ms (%.1f%%) | %.1f GB/s (%.0f%%) |\n",
        $1, $3, $3 / $6, $4, $4 / $6, $5, $5 / $7, $8, $8 / $9, $12, 100 * $14, $15, 100 * $15 / $16
    }
    BEGIN {
      print "| context | indexer fp8 (/ sgemm) | indexer f32 (/ sgemm) | indexer prefill 16q (/ sgemm) | sparse MLA (/ sgemm) | top-k (/ indexer) | fp8 linear, all 5 (/ stream copy) |"
      print "|---:|---:|---:|---:|---:|---:|---:|"
    }' "$in/kernels.csv"
  echo
  awk -F, -v T="$T" 'NR > 1 && $2 == T {
      printf "| %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f |\n", $1, $6, $7, $9, $10, $11, $16, $17
    }
    BEGIN {
      print "| context | sgemm indexer | sgemm indexer prefill 16q | sgemm MLA | peak FMA | peak bf16 dot | stream copy GB/s | stream read GB/s |"
      print "|---:|---:|---:|---:|---:|---:|---:|---:|"
    }' "$in/kernels.csv"
  echo
done
