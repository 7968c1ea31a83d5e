#!/usr/bin/env bash
# NaN and Inf weights (issue 7, defect 9): inspect --scan-weights reports the tensor and the first bad index as an
# error (exit 1, never "problems: none"); generate and forward fail with an error naming the
# non-finite logits instead of printing token 0 or writing NaN logits, and leave no partial
# stdout or output file behind.
set -u
. "$(dirname "$0")/lib/common.sh"
command -v python3 >/dev/null || { echo "SKIP: needs python3"; exit 0; }

"$DSACP" init-model --preset tiny --out "$tmp/good" --seed 5 >/dev/null || { echo "init-model failed"; exit 1; }
cp -r "$tmp/good" "$tmp/nan"
patch_f32 "$tmp/nan/model.safetensors" model.norm.weight 5 nan || { echo "patch failed"; exit 1; }
cp -r "$tmp/good" "$tmp/inf"
# down_proj of layer 1 is [256, 512]: flat index 3*512+10 = 1546 is [3][10].
patch_f32 "$tmp/inf/model.safetensors" model.layers.1.mlp.down_proj.weight $((3 * 512 + 10)) inf || exit 1
"$DSACP" make-input --out "$tmp/in.safetensors" --requests 2 --length 12 --vocab 512 --chunk 5 >/dev/null || exit 1

# The good model still passes.
"$DSACP" inspect --model "$tmp/good" --scan-weights >"$tmp/out" 2>"$tmp/err"; rc=$?
if (( rc == 0 )) && grep -q "problems: none" "$tmp/out"; then pass "good model: problems: none"
else fail "good model: rc $rc $(cat "$tmp/err")"; fi

# inspect_bad NAME DIR PATTERN...: exit 1, the problem listed on stdout, one line on stderr.
inspect_bad() {
  local name=$1 dir=$2; shift 2
  "$DSACP" inspect --model "$dir" --scan-weights >"$tmp/out" 2>"$tmp/err"; local rc=$?
  local ok=1
  (( rc == 1 )) || { ok=0; echo "  exit status $rc"; }
  grep -q "problems: none" "$tmp/out" && { ok=0; echo "  says problems: none"; }
  (( $(wc -l <"$tmp/err") == 1 )) || { ok=0; echo "  stderr is not one line"; }
  for p in "$@"; do
    grep -qF -- "$p" "$tmp/err" || { ok=0; echo "  stderr lacks '$p'"; }
    grep -qF -- "$p" "$tmp/out" || { ok=0; echo "  problems list lacks '$p'"; }
  done
  if (( ok )); then pass "$name: $(cat "$tmp/err")"; else fail "$name: $(cat "$tmp/err")"; fi
}
inspect_bad "inspect, NaN in a norm" "$tmp/nan" "model.norm.weight" "index 5" "nan"
inspect_bad "inspect, Inf in a linear" "$tmp/inf" "model.layers.1.mlp.down_proj.weight" "index 1546" "inf"

# run_bad NAME OUTFILE -- command: non-zero exit below 128, one line on stderr mentioning the
# non-finite values, nothing on stdout, no output file.
run_bad() {
  local name=$1 outf=$2; shift 3
  rm -f "$outf"
  "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  local ok=1
  (( rc != 0 && rc < 128 )) || { ok=0; echo "  exit status $rc"; }
  [[ -s $tmp/out ]] && { ok=0; echo "  stdout: $(cat "$tmp/out")"; }
  (( $(wc -l <"$tmp/err") == 1 )) || { ok=0; echo "  stderr is not one line"; }
  grep -qi "finite" "$tmp/err" || { ok=0; echo "  stderr does not say the logits are not finite"; }
  [[ -e $outf ]] && { ok=0; echo "  output $outf written"; }
  if (( ok )); then pass "$name: $(cat "$tmp/err")"; else fail "$name: $(cat "$tmp/err")"; fi
}
for m in nan inf; do
  run_bad "generate, $m weight" "$tmp/none" -- "$DSACP" generate --model "$tmp/$m" --prompt-len 8 --new-tokens 4
  run_bad "forward, $m weight" "$tmp/out_$m.safetensors" -- "$DSACP" forward --model "$tmp/$m" \
    --input "$tmp/in.safetensors" --output "$tmp/out_$m.safetensors"
  run_bad "forward --dump-topk, $m weight" "$tmp/outk_$m.safetensors" -- "$DSACP" forward --model "$tmp/$m" \
    --input "$tmp/in.safetensors" --output "$tmp/outk_$m.safetensors" --dump-topk
done

finish
