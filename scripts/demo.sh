#!/usr/bin/env bash
# The demo behind `make demo`: build a "small" model, inspect it, run a mixed prefill/decode
# schedule through `dsacp forward`, and decode greedily with `dsacp generate`.
set -euo pipefail
build=${1:-build}
dsacp="$build/dsacp"
demo="$build/demo"
mkdir -p "$demo"
echo "== dsacp init-model --preset small"
"$dsacp" init-model --preset small --out "$demo/small" --seed 1
echo "== dsacp inspect (first and last lines)"
"$dsacp" inspect --model "$demo/small" > "$demo/inspect.txt"
head -n 12 "$demo/inspect.txt"
echo "  ..."
tail -n 6 "$demo/inspect.txt"
echo "== dsacp make-input + forward (3 requests, chunked prefill mixed with decode)"
"$dsacp" make-input --out "$demo/in.safetensors" --requests 3 --length 160 --vocab 8192 --chunk 61 --seed 2
"$dsacp" forward --model "$demo/small" --input "$demo/in.safetensors" --output "$demo/out.safetensors" --dump-topk
echo "== dsacp generate (exact mode, f32 cache)"
"$dsacp" generate --model "$demo/small" --prompt-len 200 --new-tokens 8 --seed 3
echo "== dsacp generate (deployed mode: Hadamard + FP8 indexer, fp8_ds_mla cache)"
"$dsacp" generate --model "$demo/small" --prompt-len 200 --new-tokens 8 --seed 3 --numerics deployed --kv-dtype fp8
