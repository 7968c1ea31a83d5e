#!/usr/bin/env bash
# Positions beyond max_position_embeddings (issue 7, defect 10): generate and forward refuse them
# before computing, printing or writing anything, with a message naming max_position_embeddings
# and the requested length; exactly max_position_embeddings positions are still accepted.
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny --out "$tmp/m" --seed 2 >/dev/null || { echo "init-model failed"; exit 1; }
# The same weights with a 32-position limit (yarn's original length below it).
sed -i -e 's/"max_position_embeddings": 4096/"max_position_embeddings": 32/' \
       -e 's/"original_max_position_embeddings": 1024/"original_max_position_embeddings": 8/' "$tmp/m/config.json"
grep -q '"max_position_embeddings": 32' "$tmp/m/config.json" || { echo "config patch failed"; exit 1; }

# expect_refused NAME OUTFILE PATTERN... -- command: exit 1 or 2, one line on stderr with every
# pattern, nothing on stdout, no output file.
expect_refused() {
  local name=$1 outf=$2; shift 2
  local pats=()
  while [[ $1 != -- ]]; do pats+=("$1"); shift; done
  shift
  rm -f "$outf"
  "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  local ok=1
  (( rc == 1 || rc == 2 )) || { ok=0; echo "  exit status $rc"; }
  [[ -s $tmp/out ]] && { ok=0; echo "  stdout: $(cat "$tmp/out")"; }
  (( $(wc -l <"$tmp/err") == 1 )) || { ok=0; echo "  stderr is not one line"; }
  for p in "${pats[@]}"; do grep -qF -- "$p" "$tmp/err" || { ok=0; echo "  stderr lacks '$p'"; }; done
  [[ -e $outf ]] && { ok=0; echo "  output $outf written"; }
  if (( ok )); then pass "$name: $(cat "$tmp/err")"; else fail "$name: $(cat "$tmp/err")"; fi
}
expect_ok() {
  local name=$1; shift
  if "$@" >"$tmp/out" 2>"$tmp/err"; then pass "$name"; else fail "$name: $(cat "$tmp/err")"; fi
}

# generate: prompt + new tokens are all fed, so 30 + 3 = 33 positions do not fit in 32.
expect_refused "generate 30 + 3 > 32" "$tmp/none" "max_position_embeddings = 32" "33" -- \
  "$DSACP" generate --model "$tmp/m" --prompt-len 30 --new-tokens 3
expect_refused "generate prompt alone too long" "$tmp/none" "max_position_embeddings = 32" "40" -- \
  "$DSACP" generate --model "$tmp/m" --prompt-len 40 --new-tokens 0 --chunk 7
expect_ok "generate 30 + 2 = 32 positions" "$DSACP" generate --model "$tmp/m" --prompt-len 30 --new-tokens 2
grep -q "^generated: " "$tmp/out" || fail "generate within the limit printed no tokens"

# forward: request 0 has 40 tokens, request 1 has 20.
"$DSACP" make-input --out "$tmp/long.safetensors" --requests 2 --length 40 --vocab 512 --chunk 9 >/dev/null || exit 1
expect_refused "forward request of 40 > 32" "$tmp/out.safetensors" "max_position_embeddings = 32" "40 tokens" \
  "long.safetensors" "'input_ids'" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/long.safetensors" --output "$tmp/out.safetensors"
"$DSACP" make-input --out "$tmp/fits.safetensors" --requests 2 --length 32 --vocab 512 --chunk 9 >/dev/null || exit 1
expect_ok "forward request of exactly 32" "$DSACP" forward --model "$tmp/m" --input "$tmp/fits.safetensors" \
  --output "$tmp/fits_out.safetensors"
[[ -s $tmp/fits_out.safetensors ]] || fail "forward within the limit wrote no output"

finish
