#!/usr/bin/env bash
# bench/plot.sh -- PNG plots of the CSV that bench/sweep.sh wrote, into docs/images/:
#   decode_layer_time.png   time per decode token per layer vs context (batch x threads)
#   kernel_gflops.png       indexer and sparse MLA GFLOP/s vs context, beside sgemm and peak FMA
#   topk_ratio.png          top-k time as a fraction of the indexer time vs context
#
#   bench/plot.sh [--in DIR] [--out DIR]      (needs gnuplot: apt-get install -y gnuplot-nox)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
in="$here/results"
out="$here/../docs/images"
while (($#)); do
  case $1 in
    --in) in=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "plot.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
command -v gnuplot >/dev/null || { echo "plot.sh: needs gnuplot (apt-get install -y gnuplot-nox)" >&2; exit 1; }
for f in decode_layer.csv kernels.csv; do
  [[ -s $in/$f ]] || { echo "plot.sh: $in/$f missing (run bench/sweep.sh first)" >&2; exit 1; }
done
mkdir -p "$out"
cpu=$(grep -m1 '^cpu:' "$in/sweep_meta.txt" 2>/dev/null | cut -d' ' -f2- || true)
term="set terminal pngcairo size 1000,560 font 'DejaVu Sans,11'"
if ! gnuplot -e "set terminal pngcairo" 2>/dev/null; then term="set terminal png size 1000,560"; fi

gnuplot <<GP
$term
set datafile separator ','
set grid
set logscale x 2
set xrange [3400:160000]
set xtics ("4K" 4096, "8K" 8192, "16K" 16384, "32K" 32768, "64K" 65536, "128K" 131072)
set xlabel 'context (tokens)'
set key top left

set output '$out/decode_layer_time.png'
set title "dsacp v32-layer: one decode token, one DSA attention layer\n($cpu; deployed numerics, fp8 caches)"
set ylabel 'ms per decode token per layer'
set yrange [0:*]
f = '$in/decode_layer.csv'
plot f every ::1 using 1:((\$2==1 && \$3==1) ? \$4 : 1/0) with linespoints lw 2 pt 7 title 'batch 1, 1 thread', \
     f every ::1 using 1:((\$2==1 && \$3==2) ? \$4 : 1/0) with linespoints lw 2 pt 5 title 'batch 1, 2 threads', \
     f every ::1 using 1:((\$2==4 && \$3==1) ? \$4 : 1/0) with linespoints lw 2 pt 9 dt 2 title 'batch 4, 1 thread (step / 4)', \
     f every ::1 using 1:((\$2==4 && \$3==2) ? \$4 : 1/0) with linespoints lw 2 pt 11 dt 2 title 'batch 4, 2 threads (step / 4)'

set output '$out/kernel_gflops.png'
set title "dsacp kernels at V3.2 dimensions, 2 threads, vs ceilings measured in the same run\n($cpu)"
set ylabel 'GFLOP/s'
set key outside right
k = '$in/kernels.csv'
plot k every ::1 using 1:(\$2==2 ? \$3 : 1/0) with linespoints lw 2 pt 7 lc rgb '#9400d3' title 'indexer decode, fp8 keys', \
     k every ::1 using 1:(\$2==2 ? \$4 : 1/0) with linespoints lw 2 pt 5 title 'indexer decode, f32 keys', \
     k every ::1 using 1:(\$2==2 ? \$5 : 1/0) with linespoints lw 2 pt 13 title 'indexer prefill (16 q), fp8', \
     k every ::1 using 1:(\$2==2 ? \$8 : 1/0) with linespoints lw 2 pt 9 lc rgb '#e69f00' title 'sparse MLA decode (top-k)', \
     k every ::1 using 1:(\$2==2 ? \$6 : 1/0) with lines lw 2 dt 2 lc rgb '#9400d3' title 'sgemm, indexer shape', \
     k every ::1 using 1:(\$2==2 ? \$9 : 1/0) with lines lw 2 dt 3 lc rgb '#e69f00' title 'sgemm, sparse MLA shape', \
     k every ::1 using 1:(\$2==2 ? \$10 : 1/0) with lines lw 2 dt 4 lc rgb 'black' title 'peak FMA (AVX-512)'

set output '$out/topk_ratio.png'
set title "top-k (radix select) time / indexer decode time, same query\n($cpu)"
set ylabel 'top-k time / indexer time'
set key inside top right
set yrange [0:0.12]
plot k every ::1 using 1:(\$2==2 ? \$14 : 1/0) with linespoints lw 2 pt 7 title '2 threads (indexer on 2, top-k on 1)', \
     k every ::1 using 1:(\$2==1 ? \$14 : 1/0) with linespoints lw 2 pt 5 title '1 thread', \
     0.10 with lines lw 2 dt 2 lc rgb 'red' title 'target <= 10%'
GP
ls -l "$out"/decode_layer_time.png "$out"/kernel_gflops.png "$out"/topk_ratio.png
