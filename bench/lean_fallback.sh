#!/usr/bin/env bash
# How often lean's truncated lists cannot decide (docs/context-parallel.md 3.5): the `small` preset
# generates --new tokens after a --prompt-token random prompt under mpirun with
# --decode-strategy lean, for each W, candidates factor f and interleave I; the comm report's
# per-rank counters give the decisions (decode tokens x layers whose context exceeds index_topk)
# and the fallbacks by cause. The index scores are the model's own, over its own generated text.
#   bench/lean_fallback.sh [--model DIR] [--worlds "2 4 8"] [--factors "1 1.25 1.5 2"]
#                          [--interleaves "1 64"] [--prompt N] [--new N] [--numerics deployed|exact]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
model="" worlds="2 4 8" factors="1 1.25 1.5 2" interleaves="1 64" prompt=1024 new=512 numerics=deployed
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;; --worlds) worlds=$2; shift 2 ;; --factors) factors=$2; shift 2 ;;
    --interleaves) interleaves=$2; shift 2 ;; --prompt) prompt=$2; shift 2 ;; --new) new=$2; shift 2 ;;
    --numerics) numerics=$2; shift 2 ;;
    *) echo "usage: $0 [--model DIR] [--worlds LIST] [--factors LIST] [--interleaves LIST] [--prompt N] [--new N] [--numerics M]" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/dsacp-lean-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$model" ]; then
  model=$tmp/small
  "$BUILD/dsacp" init-model --preset small --out "$model" >/dev/null
fi
kv=f32; [ "$numerics" = deployed ] && kv=fp8
echo "| W | I | f | k' | decisions | fallbacks (threshold) | fallbacks (ties) | rate | fallback rounds |"
echo "|---|---|---|---|---|---|---|---|---|"
for W in $worlds; do
  for I in $interleaves; do
    for f in $factors; do
      mpirun -np "$W" --oversubscribe "$BUILD/dsacp" generate --model "$model" --prompt-len "$prompt" \
        --new-tokens "$new" --numerics "$numerics" --kv-dtype "$kv" --decode-strategy lean --lean-candidates "$f" \
        --cp-interleave "$I" --comm-report "$tmp/r.json" >/dev/null
      python3 - "$tmp/r.json" "$W" "$I" "$f" "$new" "$model/config.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1])); W, I, f, new = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
cfg = json.load(open(sys.argv[6])); k = cfg["index_topk"]; L = cfg["num_hidden_layers"]
notes = r.get("notes", r)
cp = notes["cp"] if "cp" in notes else r["cp"]
a = cp["attention_work"][0]
d, t, ti = a["lean_decisions"], a["lean_fallback_threshold"], a["lean_fallback_ties"]
kp = min(k, max(1, math.ceil(f * k / W)))
print("| %d | %d | %g | %d | %d | %d | %d | %.2f%% | %d |" % (W, I, f, kp, d, t, ti, 100.0 * (t + ti) / d if d else 0,
      a["lean_fallback_rounds"]))
PY
    done
  done
done
