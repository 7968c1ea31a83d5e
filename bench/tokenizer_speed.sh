#!/bin/bash
# Tokenizer throughput, dsacp beside Hugging Face tokenizers, one thread each, on the same texts
# (docs/text.md has a run): V3.2's tokenizer.json and the venv that tests/cli/tokenizer.sh caches
# in the build tree. The corpus: this repository's docs and C sources, and the test's random
# Unicode strings, each file encoded whole and line by line.
# usage: bench/tokenizer_speed.sh [BUILD_DIR] [REPEATS]
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}
reps=${2:-5}
cache=$build/tokenizer-cache
[ -x "$cache/venv/bin/python" ] && [ -s "$cache/deepseek-v3.2/tokenizer.json" ] ||
    { echo "run 'ctest -R cli_tokenizer' in $build first (it fetches tokenizers and V3.2's tokenizer.json)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat docs/*.md README.md >"$tmp/docs.txt"
cat src/*/*.c >"$tmp/code.txt"
(cd tests/tokenizer && "../../$cache/venv/bin/python" -c '
import random, sys
from make_cases import random_text, CORPUS
rng = random.Random(7)
open(sys.argv[1], "w").write("\n".join(CORPUS + [random_text(rng) for _ in range(20000)]))' "$tmp/unicode.txt")
for f in docs code unicode; do
    echo "== $f ($(wc -c <"$tmp/$f.txt") bytes)"
    for mode in whole lines; do
    "$build/tokenizer_speed" "$cache/deepseek-v3.2/tokenizer.json" "$reps" $mode "$tmp/$f.txt"
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$cache/venv/bin/python" - "$cache/deepseek-v3.2/tokenizer.json" "$reps" $mode "$tmp/$f.txt" <<'PY'
import sys, time
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[4], encoding="utf-8", newline="").read()
reps, mode = int(sys.argv[2]), sys.argv[3]
parts = text.splitlines(keepends=True) if mode == "lines" else [text]
parts = [p for q in parts for p in ([q] if q.endswith("\n") or q is parts[-1] else [q])]
t0 = time.perf_counter()
for _ in range(reps):
    n = sum(len(t.encode(p, add_special_tokens=False).ids) for p in parts)
s = time.perf_counter() - t0
b = len(text.encode()) * reps
print("tokenizers (" + mode + "): %d bytes, %d tokens, %.3f s, %.2f MB/s, %.0f tokens/s" % (b, n * reps, s, b / s / 1e6, n * reps / s))
PY
    done
done
