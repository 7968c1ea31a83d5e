#!/usr/bin/env bash
# bench/sweep.sh -- sweep `dsacp bench` over context length, batch size and threads for the
# v32-layer preset and write CSV into bench/results/ (docs/performance.md; plots: bench/plot.sh).
#
#   bench/sweep.sh [--dsacp PATH] [--out DIR] [--contexts "4096 8192 ..."] [--batches "1 4"]
#                  [--threads "1 2"] [--preset NAME] [--passes N] [--openblas-coretype auto|env|NAME]
#
# The sgemm ceilings use OpenBLAS's own kernel choice for the CPU (--openblas-coretype auto, the
# default, unsets OPENBLAS_CORETYPE; `env` keeps the caller's setting; a NAME forces that core).
# Per (context, threads): one `--kernel all` run at batch 1 (ceilings, kernels, decode layer);
# per (context, batch > 1, threads): one `--kernel layer` run. Fewer repetitions at long contexts
# keep the whole sweep to a few minutes on 2 cores. The sweep runs --passes times (default 2),
# one whole pass after the other, so that a burst of load from outside the VM (invisible to the
# busy check below) spoils at most one pass of a point: per point and result the best pass is
# kept (the minimum time, the maximum rate), the ceilings likewise, and the ratios are recomputed
# from the kept values. Writes
#   raw/*_pN.json       every run's JSON, as printed
#   raw/*.json          per point, the best of the passes (same shape)
#   sweep.csv           every result: context,batch,threads,name,value,unit,ceiling_name,ceiling_value,ratio
#   decode_layer.csv    context,batch,threads,decode_layer_time_ms,step_time_ms,tokens_per_s
#   kernels.csv         context,threads and the kernel and ceiling figures, one row each
#   sweep_meta.txt      machine, git state, load average before and after, wall time
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dsacp=${DSACP:-}
out="$here/results"
contexts="4096 8192 16384 32768 65536 131072"
batches="1 4"
threads="1 2"
preset=v32-layer
passes=2
blas=auto
while (($#)); do
  case $1 in
    --dsacp) dsacp=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --contexts) contexts=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    --openblas-coretype) blas=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "sweep.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
if [[ -z $dsacp ]]; then
  for d in "$root/build/dsacp" "$root/build-b/dsacp"; do [[ -x $d ]] && { dsacp=$d; break; }; done
fi
[[ -n $dsacp && -x $dsacp ]] || { echo "sweep.sh: no dsacp binary (build it, or pass --dsacp PATH)" >&2; exit 1; }
command -v jq >/dev/null || { echo "sweep.sh: needs jq (apt-get install -y jq)" >&2; exit 1; }

case $blas in
  auto) unset OPENBLAS_CORETYPE ;;
  env) ;;
  *) export OPENBLAS_CORETYPE=$blas ;;
esac
mkdir -p "$out/raw"
# Timing hygiene: before each run, wait (up to 60 s) until the other processes leave the CPUs
# idle -- less than 10% of one core busy over half a second -- and log what was seen.
busy_pct() { # percent of all CPUs busy over 0.5 s
  local a b; a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
wait_quiet() {
  local waited=0 b
  while b=$(busy_pct); (( b * $(nproc) > 10 && waited < 60 )); do sleep 2; waited=$((waited + 2)); done
  echo "$b"
}
reps_for() { local L=$1; if ((L <= 16384)); then echo 7; elif ((L <= 65536)); then echo 5; else echo 3; fi; }

t_start=$(date +%s)
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "dsacp: $dsacp"
  echo "git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)" \
       "(uncommitted changes: $(git -C "$root" status --porcelain 2>/dev/null | wc -l) files)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  echo "openblas: $("$dsacp" bench --preset tiny --kernel ceilings --context 16 --reps 1 --json | jq -r .machine.openblas)" \
       "(OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/sweep_meta.txt"

echo "context,batch,threads,name,value,unit,ceiling_name,ceiling_value,ratio" >"$out/sweep.csv"
to_csv() { # JSON file, context, batch, threads
  jq -r --argjson L "$2" --argjson B "$3" --argjson T "$4" \
    '.results[] | [$L, $B, $T, .name, .value, .unit, (.ceiling_name // ""), (.ceiling_value // ""), (.ratio // "")] | @csv' \
    "$1" | tr -d '"' >>"$out/sweep.csv"
}
rm -f "$out"/raw/*.json
for ((P = 1; P <= passes; P++)); do
for T in $threads; do
  for L in $contexts; do
    for B in $batches; do
      R=$(reps_for "$L")
      if ((B == 1)); then kernel=all; else kernel=layer; fi
      f="$out/raw/${kernel}_c${L}_b${B}_t${T}_p${P}.json"
      busy=$(wait_quiet)
      s=$(date +%s.%N)
      "$dsacp" bench --preset "$preset" --context "$L" --batch "$B" --threads "$T" --kernel "$kernel" \
          --reps "$R" --json >"$f"
      printf 'pass %d context %6d batch %d threads %d kernel %-5s reps %d (CPUs %2d%% busy before): %5.1f s, decode_layer_time %.3f ms\n' \
          "$P" "$L" "$B" "$T" "$kernel" "$R" "$busy" "$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
          "$(jq -r '.results[] | select(.name == "decode_layer_time") | .value' "$f")"
      echo "pass $P context $L batch $B threads $T: CPUs ${busy}% busy before the run" >>"$out/sweep_meta.txt"
    done
  done
done
done

# Best of the passes, per point and result; ratios recomputed from the kept values.
for f in "$out"/raw/*_p1.json; do
  base=${f%_p1.json}
  jq -s --argjson passes "$passes" 'def better($u): if ($u == "ms") then min else max end;
    (.[0]) as $first
    | ([.[].results[]] | group_by(.name) | map(.[0].unit as $u | {key: .[0].name, value: (map(.value) | better($u))})
       | from_entries) as $best
    | $first | .config.passes = $passes
    | .config.statistic = "minimum over reps, best of passes"
    | .results |= map(.value = $best[.name]
        | if .ceiling_name != null and ($best[.ceiling_name] != null) then .ceiling_value = $best[.ceiling_name] else . end
        | if .ceiling_name != null then .ratio = .value / .ceiling_value else . end)' \
    "$base"_p*.json >"$base.json"
  name=$(basename "$base")
  L=${name#*_c}; L=${L%%_*}; B=${name#*_b}; B=${B%%_*}; T=${name##*_t}
  to_csv "$base.json" "$L" "$B" "$T"
done
{ head -1 "$out/sweep.csv"; tail -n +2 "$out/sweep.csv" | sort -s -t, -k3,3n -k2,2n -k1,1n; } >"$out/sweep.tmp"
mv "$out/sweep.tmp" "$out/sweep.csv"

# Wide tables for the plots and the docs.
jq -rs 'def v($n): ((.results[] | select(.name == $n) | .value) // null);
  ["context","batch","threads","decode_layer_time_ms","step_time_ms","tokens_per_s"],
  (.[] | [.config.context, .config.batch, .config.threads, v("decode_layer_time"), v("decode_layer_step_time"),
          v("decode_layer_tokens_per_s")]) | @csv' $(ls "$out"/raw/*.json | grep -v '_p[0-9]*\.json$') | tr -d '"' |
  { read -r h; echo "$h"; sort -t, -k2,2n -k3,3n -k1,1n; } >"$out/decode_layer.csv"
jq -rs 'def v($n): ((.results[] | select(.name == $n) | .value) // null);
  ["context","threads","indexer_fp8","indexer_f32","indexer_prefill16_fp8","sgemm_indexer","sgemm_indexer_prefill16",
   "sparse_mla","sgemm_mla","peak_fma","peak_bf16dp","topk_ms","indexer_fp8_ms","topk_over_indexer",
   "linear_all_GBs","stream_copy_GBs","stream_read_GBs"],
  (.[] | select(.config.kernel == "all") | [.config.context, .config.threads, v("indexer_fp8"), v("indexer_f32"),
     v("indexer_prefill16_fp8"), v("sgemm_indexer"), v("sgemm_indexer_prefill16"), v("sparse_mla"), v("sgemm_mla"),
     v("peak_fma_avx512"), v("peak_bf16dp_avx512"), v("topk_time"), v("indexer_fp8_time"),
     ((.results[] | select(.name == "topk_time") | .ratio) // null), v("linear_all"), v("stream_copy"),
     v("stream_read")]) | @csv' $(ls "$out"/raw/*.json | grep -v '_p[0-9]*\.json$') | tr -d '"' |
  { read -r h; echo "$h"; sort -t, -k2,2n -k1,1n; } >"$out/kernels.csv"

{
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wall: $(( $(date +%s) - t_start )) s"
} >>"$out/sweep_meta.txt"
cat "$out/sweep_meta.txt"
echo "wrote $out/sweep.csv, $out/decode_layer.csv, $out/kernels.csv"
