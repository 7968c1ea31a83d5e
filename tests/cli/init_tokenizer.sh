#!/usr/bin/env bash
# Models with a tokenizer (issue 24; docs/text.md section 3):
#  - init-model --tokenizer sizes the preset's vocabulary to the tokenizer (any tokenizer: its ids
#    rounded up to a multiple of 128; DeepSeek's own, 128,815 ids: 129,280, checked with V3.2's
#    file when tests/cli/tokenizer.sh has cached it), copies tokenizer.json byte for byte (and
#    tokenizer_config.json from the same directory), and writes bos_token_id / eos_token_id into
#    config.json; --vocab-size overrides, never below the tokenizer's ids;
#  - inspect reports <dir>/tokenizer.json (its id count), and one that does not load or has more
#    ids than the model's vocabulary as an error (exit 2);
#  - refusals (a tokenizer that does not load, a bad tokenizer_config.json, --vocab-size too
#    small) exit 2 naming the file or flag with nothing written, and a failure while writing the
#    model leaves nothing in --out; a symlink planted at tokenizer.json is never followed.
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
tok=$SRC/tests/data/tok_chat/tokenizer.json # 514 ids: <｜begin▁of▁sentence｜> 0, <｜end▁of▁sentence｜> 1

vocab_of() { sed -n 's/^ *"vocab_size": \([0-9]*\),*$/\1/p' "$1/config.json"; }
key_of() { sed -n "s/^ *\"$2\": \\([0-9]*\\),*\$/\\1/p" "$1/config.json"; }

for p in tiny small; do
  if "$DSACP" init-model --preset $p --tokenizer "$tok" --out "$tmp/$p" --weights bf16 --no-mtp >"$tmp/out" 2>"$tmp/err"; then
    [[ $(vocab_of "$tmp/$p") == 640 ]] && pass "$p: vocabulary 640 for 514 ids" || fail "$p: vocab_size $(vocab_of "$tmp/$p")"
    cmp -s "$tok" "$tmp/$p/tokenizer.json" && pass "$p: tokenizer.json copied byte for byte" || fail "$p: tokenizer.json differs"
    [[ -e $tmp/$p/tokenizer_config.json ]] && fail "$p: a tokenizer_config.json from nowhere" || pass "$p: no tokenizer_config.json (none beside the file)"
    [[ $(key_of "$tmp/$p" bos_token_id) == 0 && $(key_of "$tmp/$p" eos_token_id) == 1 ]] &&
      pass "$p: config.json's bos_token_id 0, eos_token_id 1" || fail "$p: bos/eos in config.json: $(grep _token_id "$tmp/$p/config.json")"
    grep -qF "tokenizer.json from $tok: 514 ids, vocabulary 640" "$tmp/out" && pass "$p: init-model says so" ||
      fail "$p: init-model's lines: $(cat "$tmp/out")"
    if "$DSACP" inspect --model "$tmp/$p" >"$tmp/out" 2>"$tmp/err"; then
      grep -qF "tokenizer: $tmp/$p/tokenizer.json, 514 ids (BOS id 0, EOS id 1), model vocabulary 640" "$tmp/out" &&
        pass "$p: inspect reports the tokenizer" || fail "$p: inspect: $(grep tokenizer "$tmp/out")"
    else fail "$p: inspect: $(cat "$tmp/err")"; fi
    ls "$tmp/$p" | grep -q tmp && fail "$p: temporaries left: $(ls "$tmp/$p")"
  else
    fail "$p: init-model --tokenizer: $(cat "$tmp/err")"
  fi
done

# The model loads and generates with the tokenizer's vocabulary.
"$DSACP" generate --model "$tmp/tiny" --prompt-len 4 --new-tokens 2 >"$tmp/out" 2>"$tmp/err" &&
  pass "generate runs on the model" || fail "generate: $(cat "$tmp/err")"

# tokenizer_config.json beside the file is copied too; --vocab-size overrides.
mkdir "$tmp/src"
cp "$tok" "$tmp/src/tokenizer.json"
printf '{"add_bos_token": false, "model_max_length": 131072}\n' >"$tmp/src/tokenizer_config.json"
if "$DSACP" init-model --preset tiny --tokenizer "$tmp/src/tokenizer.json" --vocab-size 1000 --out "$tmp/cfg" >"$tmp/out" 2>"$tmp/err"; then
  cmp -s "$tmp/src/tokenizer_config.json" "$tmp/cfg/tokenizer_config.json" && pass "tokenizer_config.json copied" ||
    fail "tokenizer_config.json not copied"
  [[ $(vocab_of "$tmp/cfg") == 1000 ]] && pass "--vocab-size 1000" || fail "--vocab-size: vocab_size $(vocab_of "$tmp/cfg")"
else fail "init-model with tokenizer_config.json: $(cat "$tmp/err")"; fi
"$DSACP" init-model --preset tiny --tokenizer "$tok" --vocab-size 514 --out "$tmp/exact" >/dev/null 2>"$tmp/err" &&
  [[ $(vocab_of "$tmp/exact") == 514 ]] && pass "--vocab-size equal to the ids" || fail "--vocab-size 514: $(cat "$tmp/err")"

# DeepSeek's own tokenizer: V3.2's file when tests/cli/tokenizer.sh has cached it.
v32=${DSACP_BUILD_DIR:-/nonexistent}/tokenizer-cache/deepseek-v3.2/tokenizer.json
if [[ -s $v32 ]]; then
  if "$DSACP" init-model --preset tiny --tokenizer "$v32" --out "$tmp/v32" --weights bf16 --no-mtp >"$tmp/out" 2>"$tmp/err"; then
    [[ $(vocab_of "$tmp/v32") == 129280 ]] && pass "V3.2: vocabulary 129280 for 128815 ids" || fail "V3.2: vocab_size $(vocab_of "$tmp/v32")"
    cmp -s "$v32" "$tmp/v32/tokenizer.json" && pass "V3.2: tokenizer.json copied byte for byte" || fail "V3.2: tokenizer.json differs"
    [[ $(key_of "$tmp/v32" bos_token_id) == 0 && $(key_of "$tmp/v32" eos_token_id) == 1 ]] &&
      pass "V3.2: bos_token_id 0, eos_token_id 1" || fail "V3.2: bos/eos in config.json"
    "$DSACP" inspect --model "$tmp/v32" 2>"$tmp/err" | grep -qF "128815 ids (BOS id 0, EOS id 1), model vocabulary 129280" &&
      pass "V3.2: inspect reports the tokenizer" || fail "V3.2: inspect: $(cat "$tmp/err")"
  else fail "V3.2: init-model: $(cat "$tmp/err")"; fi
  rm -rf "$tmp/v32"
else
  echo "note: V3.2's tokenizer.json is not cached in the build tree (ctest -R cli_tokenizer fetches it): its check skipped"
fi

# inspect: a tokenizer the vocabulary cannot hold, and one that does not load.
"$DSACP" init-model --preset tiny --out "$tmp/small-vocab" --no-mtp >/dev/null 2>&1 # vocabulary 512
cp "$tok" "$tmp/small-vocab/tokenizer.json"
"$DSACP" inspect --model "$tmp/small-vocab" >"$tmp/out" 2>"$tmp/err"; rc=$?
(( rc == 2 )) && [[ $(wc -l <"$tmp/err") == 1 ]] && grep -qF "$tmp/small-vocab/tokenizer.json: the tokenizer has 514 ids but the model's vocabulary (config.json vocab_size) is 512" "$tmp/err" &&
  pass "inspect: more ids than the vocabulary, exit 2: $(cat "$tmp/err")" || fail "inspect with 514 ids over 512: rc $rc: $(cat "$tmp/err")"
grep -q "^problems: 1 errors" "$tmp/out" && grep -q "^  error: .*514 ids" "$tmp/out" && pass "inspect lists it among the problems" ||
  fail "inspect's problems: $(tail -3 "$tmp/out")"
echo '{"model": 3}' >"$tmp/small-vocab/tokenizer.json"
"$DSACP" inspect --model "$tmp/small-vocab" >"$tmp/out" 2>"$tmp/err"; rc=$?
(( rc == 2 )) && grep -qF "$tmp/small-vocab/tokenizer.json" "$tmp/err" && grep -q "does not load" "$tmp/out" && pass "inspect: a tokenizer.json that does not load: $(cat "$tmp/err")" ||
  fail "inspect with a broken tokenizer.json: rc $rc: $(cat "$tmp/err")"

# Refusals: exit 2 naming the file or flag, nothing written.
REFUSED_NO_FILES=("$tmp/r")
refused "--vocab-size below the ids" 2 "--vocab-size" "514 ids" -- \
  "$DSACP" init-model --preset tiny --tokenizer "$tok" --vocab-size 513 --out "$tmp/r"
refused "--vocab-size not a number" 2 "--vocab-size" -- \
  "$DSACP" init-model --preset tiny --tokenizer "$tok" --vocab-size 6x --out "$tmp/r"
refused "missing tokenizer" 2 "$tmp/none.json" -- "$DSACP" init-model --preset tiny --tokenizer "$tmp/none.json" --out "$tmp/r"
echo '{"model": {"type": "WordPiece"}}' >"$tmp/bad.json"
refused "tokenizer that does not load" 2 "$tmp/bad.json" -- "$DSACP" init-model --preset tiny --tokenizer "$tmp/bad.json" --out "$tmp/r"
echo 'not json' >"$tmp/src/tokenizer_config.json"
refused "bad tokenizer_config.json" 2 "$tmp/src/tokenizer_config.json" -- \
  "$DSACP" init-model --preset tiny --tokenizer "$tmp/src/tokenizer.json" --out "$tmp/r"
rm "$tmp/src/tokenizer_config.json"

# A failure while writing the model (file size limit: EFBIG, as a full disk) leaves nothing.
( ulimit -f 64; trap '' XFSZ; exec timeout 10 "$DSACP" init-model --preset tiny --tokenizer "$tok" --out "$tmp/efbig" ) >/dev/null 2>"$tmp/err"; rc=$?
(( rc == 1 )) && [[ ! -e $tmp/efbig ]] && pass "a failed write leaves no directory: $(head -1 "$tmp/err")" ||
  fail "EFBIG: rc $rc, left: $(ls -A "$tmp/efbig" 2>&1)"
mkdir "$tmp/efbig2"
( ulimit -f 64; trap '' XFSZ; exec timeout 10 "$DSACP" init-model --preset tiny --tokenizer "$tok" --out "$tmp/efbig2" ) >/dev/null 2>"$tmp/err"; rc=$?
(( rc == 1 )) && [[ -d $tmp/efbig2 && -z $(ls -A "$tmp/efbig2") ]] && pass "an existing directory is left empty" ||
  fail "EFBIG in an existing directory: rc $rc, left: $(ls -A "$tmp/efbig2")"

# A symlink planted at <out>/tokenizer.json is refused, its target untouched.
echo precious >"$tmp/victim"
mkdir "$tmp/planted" && ln -s "$tmp/victim" "$tmp/planted/tokenizer.json"
"$DSACP" init-model --preset tiny --tokenizer "$tok" --out "$tmp/planted" >/dev/null 2>"$tmp/err"; rc=$?
(( rc != 0 && rc < 128 )) && [[ $(cat "$tmp/victim") == precious && -L $tmp/planted/tokenizer.json && ! -e $tmp/planted/config.json ]] &&
  pass "a symlink at tokenizer.json is refused: $(cat "$tmp/err")" || fail "planted symlink: rc $rc, $(cat "$tmp/err"); $(ls -A "$tmp/planted")"
finish
