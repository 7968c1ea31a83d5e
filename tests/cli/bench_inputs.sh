#!/usr/bin/env bash
# dsacp bench refuses what it would otherwise ignore or only find once running (issue 20
# follow-up): --kernel cp gets plain bench's checks (block size against the model, powers of two,
# --threads / --isa values, flags cp does not read) and refuses a context (+ decode steps + chunk)
# beyond max_position_embeddings before any work; every kernel refuses the flags it does not read;
# --json writes a model path that is not UTF-8 (its bytes >= 0x80 as '?') instead of exiting 0
# with nothing printed.
set -u
. "$(dirname "$0")/lib/common.sh"

# refused: tests/cli/lib/common.sh.
"$DSACP" init-model --preset tiny --out "$tmp/m" >/dev/null || { fail "init-model"; finish; exit; }
CP=("$DSACP" bench --model "$tmp/m" --kernel cp)

# ---- 1. --kernel cp: plain bench's checks, before any work ----
# (this one ran to completion on 3.2 GB of cache blocks)
refused "cp --block-size above the model" 2 "--block-size" "max_position_embeddings" -- \
  "${CP[@]}" --context 64 --reps 1 --block-size 1048576
refused "cp --block-size 3" 2 "--block-size" "power of two" -- "${CP[@]}" --context 64 --reps 1 --block-size 3
# the tiny model has 4096 positions; the default context is 32768
refused "cp default --context beyond the model" 2 "--context" "32768" "max_position_embeddings 4096" -- \
  "${CP[@]}" --reps 1
refused "cp --context + --chunk beyond the model" 2 "--context 4096" "--chunk 4096" "--reps" \
  "max_position_embeddings 4096" -- "${CP[@]}" --context 4096 --chunk 4096
refused "cp --context + decode steps beyond the model" 2 "--context 4095" "--reps" "4097" -- \
  "${CP[@]}" --context 4095 --reps 2
refused "cp --threads 0" 2 "--threads" -- "${CP[@]}" --context 64 --reps 1 --threads 0
refused "cp --isa bogus" 2 "--isa" "bogus" -- "${CP[@]}" --context 64 --reps 1 --isa bogus
refused "cp --warm (not read)" 2 "--warm" "--kernel cp" "linear" -- "${CP[@]}" --context 64 --reps 1 --warm
refused "cp --preset beside --model (not read)" 2 "--preset" "--kernel cp" -- \
  "${CP[@]}" --preset tiny --context 64 --reps 1
# what cp does read still runs: --threads and --isa apply to its engine; the positions end exactly
# at max_position_embeddings (4000 + 1 decode step + 95)
if "${CP[@]}" --context 4000 --reps 1 --chunk 95 --threads 1 --isa scalar --json >"$tmp/cp.json" 2>"$tmp/err" &&
   [[ $(grep -c '"kind"' "$tmp/cp.json") == 2 ]]; then
  pass "cp at exactly max_position_embeddings, --threads 1 --isa scalar"
else fail "cp at max_position_embeddings: $(cat "$tmp/err" "$tmp/cp.json" | tail -3)"; fi

# ---- 2. every kernel refuses the flags it does not read, naming the kernels that do ----
B=("$DSACP" bench --model "$tmp/m" --reps 1)
refused "topk --chunk" 2 "--chunk" "--kernel topk" "cp" -- "${B[@]}" --kernel topk --context 64 --chunk 5
refused "linear --batch" 2 "--batch" "--kernel linear" "layer" -- "${B[@]}" --kernel linear --batch 2
refused "mla --block-size" 2 "--block-size" "--kernel mla" "layer, prefill" -- \
  "${B[@]}" --kernel mla --context 64 --block-size 128
refused "gemm --context" 2 "--context" "--kernel gemm" -- "${B[@]}" --kernel gemm --context 64
refused "layer --warm" 2 "--warm" "--kernel layer" "linear" -- "${B[@]}" --kernel layer --context 64 --warm
refused "topk --numerics" 2 "--numerics" "--kernel topk" -- "${B[@]}" --kernel topk --context 64 --numerics exact
refused "ceilings --isa" 2 "--isa" "--kernel ceilings" -- "${B[@]}" --kernel ceilings --context 64 --isa scalar

# ---- 3. --json with a model directory whose name is not UTF-8 ----
bad=$tmp/$'bad\xffutf8'
cp -r "$tmp/m" "$bad"
if "$DSACP" bench --model "$bad" --kernel topk --context 64 --reps 1 --threads 1 --json >"$tmp/j.json" 2>"$tmp/err" &&
   python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["config"]["model"].endswith("/bad?utf8"), d["config"]["model"]; assert any(r["name"] == "topk_time" for r in d["results"])' "$tmp/j.json"; then
  pass "bench --json names a non-UTF-8 model directory with '?'"
else fail "bench --json, non-UTF-8 model path (rc $?): $(head -c 300 "$tmp/j.json") $(cat "$tmp/err")"; fi

finish
