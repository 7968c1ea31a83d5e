#!/usr/bin/env bash
# bench/targets.sh -- the figures behind every target of issue 4, each from a `dsacp bench` command
# run --runs times (default 5, one after the other), printed as a Markdown table with the median
# run's value and the range over the runs (docs/performance.md).
#
#   bench/targets.sh [--dsacp PATH] [--runs N] [--out DIR | --write-results]
#                    [--openblas-coretype auto|env|NAME]
#
# Commands (all v32-layer, 2 threads = every core of the reference machine):
#   A  dsacp bench --preset v32-layer --context 32768 --json                     (everything)
#   B  dsacp bench --preset v32-layer --context 131072 --kernel topk --json       (top-k target)
#   C  dsacp bench --preset v32-layer --context 32768 --batch 4 --kernel layer --json
# The JSON of every run is kept in DIR: by default a fresh scratch directory (mktemp -d, its path
# printed on stderr), so that a run never rewrites the tracked results; --write-results puts it
# in bench/results/targets (the files docs/performance.md cites), replacing the runs there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dsacp=${DSACP:-}
runs=5
out=
blas=auto
while (($#)); do
  case $1 in
    --dsacp) dsacp=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --write-results) out="$here/results/targets"; shift ;;
    --openblas-coretype) blas=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "targets.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
if [[ -z $dsacp ]]; then
  for d in "$root/build/dsacp" "$root/build-b/dsacp"; do [[ -x $d ]] && { dsacp=$d; break; }; done
fi
[[ -n $dsacp && -x $dsacp ]] || { echo "targets.sh: no dsacp binary (pass --dsacp PATH)" >&2; exit 1; }
command -v jq >/dev/null || { echo "targets.sh: needs jq" >&2; exit 1; }
case $blas in auto) unset OPENBLAS_CORETYPE ;; env) ;; *) export OPENBLAS_CORETYPE=$blas ;; esac
if [[ -z $out ]]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/dsacp-targets-XXXXXX")
  echo "targets.sh: run JSON in $out (pass --write-results to update bench/results/targets)" >&2
fi
mkdir -p "$out"
rm -f "$out"/[ABC]_r*.json

for ((r = 1; r <= runs; r++)); do
  "$dsacp" bench --preset v32-layer --context 32768 --json >"$out/A_r$r.json"
  "$dsacp" bench --preset v32-layer --context 131072 --kernel topk --json >"$out/B_r$r.json"
  "$dsacp" bench --preset v32-layer --context 32768 --batch 4 --kernel layer --json >"$out/C_r$r.json"
done

# stat RUNSET NAME FIELD: "median [min-max]" of FIELD (value or ratio) over the runs.
stat() {
  jq -rs --arg n "$2" --arg f "$3" '[.[].results[] | select(.name == $n) | .[$f] | select(. != null)] | sort
    | if length == 0 then "n/a" else
        (.[(length - 1) / 2 | floor]) as $m
        | def r: if . >= 100 then (. | round | tostring) elif . >= 1 then ((. * 100 | round) / 100 | tostring)
                 else ((. * 1000 | round) / 1000 | tostring) end;
          "\($m | r) [\(.[0] | r)-\(.[-1] | r)]" end' "$out"/"$1"_r*.json
}
row() { # target, figure name, set, value-field unit, status-expr
  printf '| %s | %s %s | %s |\n' "$1" "$(stat "$3" "$2" value)" "$4" "$(stat "$3" "$2" ratio)"
}
m=$(jq -r '.machine | "\(.cpu), \(.cores) cores, isa \(.isa), OpenBLAS \(.openblas) kernels"' "$out/A_r1.json")
echo "Machine: $m; $runs runs of each command; median [min-max] over the runs."
echo
echo "| measurement | value | ratio to its ceiling |"
echo "|---|---:|---:|"
row "indexer decode, fp8 keys (A)" indexer_fp8 A "GFLOP/s"
row "indexer decode, f32 keys (A)" indexer_f32 A "GFLOP/s"
row "indexer prefill, 16 queries, fp8 (A)" indexer_prefill16_fp8 A "GFLOP/s"
row "sgemm, indexer shape (A)" sgemm_indexer A "GFLOP/s"
row "sparse MLA decode (A)" sparse_mla A "GFLOP/s"
row "sgemm, sparse MLA shape (A)" sgemm_mla A "GFLOP/s"
row "peak FMA (A)" peak_fma_avx512 A "GFLOP/s"
row "peak bf16 dot (A)" peak_bf16dp_avx512 A "GFLOP/s"
for n in q_a q_b kv_a o_proj wq_b all; do row "fp8 linear $n, 1 token (A)" "linear_$n" A "GB/s"; done
row "stream copy (A)" stream_copy A "GB/s"
row "stream read (A)" stream_read A "GB/s"
row "top-k 2048 of 131072 (B)" topk_time B "ms"
printf '| %s | %s ms | |\n' "indexer decode at 131072, fp8 (B)" "$(stat B topk_time ceiling_value)"
row "decode layer, 32K, batch 1, 2 threads (A)" decode_layer_time A "ms"
row "decode layer, 32K, batch 1, 1 thread (A)" decode_layer_time_1t A "ms"
row "2 threads / 1 thread, batch 1 (A)" decode_layer_speedup_2t A "x"
row "decode layer, 32K, batch 4, per token, 2 threads (C)" decode_layer_time C "ms"
row "decode layer, 32K, batch 4, per token, 1 thread (C)" decode_layer_time_1t C "ms"
row "2 threads / 1 thread, batch 4 (C)" decode_layer_speedup_2t C "x"
