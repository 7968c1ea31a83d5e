#!/usr/bin/env bash
# The MTP layer in init-model and inspect (issue 23):
#  - init-model writes DeepSeek-V3.2's MTP layer (checkpoint layer num_hidden_layers) by default and
#    `dsacp inspect` reports it loaded with its tensor count; --no-mtp writes none and a config
#    declaring none;
#  - the target's tensors are bit for bit the same with and without it (same seed), so every stored
#    expectation made before the MTP layer still holds;
#  - a config declaring the MTP layer over a checkpoint without it inspects with a warning, and a
#    checkpoint holding only part of it is refused naming the first missing tensor and the file.
set -u
. "$(dirname "$0")/lib/common.sh"
command -v python3 >/dev/null || { echo "SKIP: needs python3"; exit 0; }

for p in tiny-moe tiny; do
  "$DSACP" init-model --preset $p --out "$tmp/$p" --seed 4 --weights bf16 >"$tmp/out" 2>&1 &&
    "$DSACP" init-model --preset $p --out "$tmp/$p-nomtp" --seed 4 --weights bf16 --no-mtp >>"$tmp/out" 2>&1 ||
    { fail "$p: init-model: $(cat "$tmp/out")"; continue; }
  grep -q "with the MTP layer" "$tmp/out" && grep -q "no MTP layer" "$tmp/out" && pass "$p: init-model says whether it wrote the MTP layer" ||
    fail "$p: init-model's line: $(cat "$tmp/out")"
  grep -q '"num_nextn_predict_layers": 1' "$tmp/$p/config.json" && grep -q '"num_nextn_predict_layers": 0' "$tmp/$p-nomtp/config.json" &&
    pass "$p: config declares 1 MTP layer, 0 with --no-mtp" || fail "$p: num_nextn_predict_layers in config.json"
  # Same seed: every tensor of the model without MTP is byte-identical in the model with it, and
  # the one with it adds only layer 2 (the MTP layer) tensors.
  if python3 - "$tmp/$p-nomtp/model.safetensors" "$tmp/$p/model.safetensors" >"$tmp/cmp" 2>&1 <<'PY'
import json, struct, sys
def tensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        hdr = json.loads(f.read(n)); base = 8 + n; out = {}
        for k, v in hdr.items():
            if k == '__metadata__': continue
            f.seek(base + v['data_offsets'][0])
            out[k] = (v['dtype'], v['shape'], f.read(v['data_offsets'][1] - v['data_offsets'][0]))
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
extra = sorted(set(b) - set(a))
assert set(a) <= set(b), 'tensors missing with MTP'
assert all(k.startswith('model.layers.2.') for k in extra), extra[:3]
assert not any(k.startswith('model.layers.2.') for k in a)
diff = [k for k in a if a[k] != b[k]]
assert not diff, 'target tensors differ: %s' % diff[:3]
print('%d target tensors identical, %d MTP tensors added' % (len(a), len(extra)))
PY
  then pass "$p: $(cat "$tmp/cmp")"; else fail "$p: $(cat "$tmp/cmp")"; fi

  "$DSACP" inspect --model "$tmp/$p" >"$tmp/out" 2>"$tmp/err"; rc=$?
  n=$(sed -n 's/^MTP layer: layer 2 loaded, \([0-9]*\) tensors$/\1/p' "$tmp/out")
  want=$([[ $p == tiny ]] && echo 22 || echo 48) # 5 of its own + a dense (17) or MoE (43) decoder layer
  (( rc == 0 )) && [[ $n == "$want" ]] && grep -q "problems: none" "$tmp/out" && grep -q "model.layers.2.eh_proj.weight" "$tmp/out" &&
    pass "$p: inspect reports the MTP layer loaded, $n tensors" || fail "$p: inspect (rc $rc): $(grep -i mtp "$tmp/out") $(cat "$tmp/err")"
  "$DSACP" inspect --model "$tmp/$p-nomtp" >"$tmp/out" 2>"$tmp/err"; rc=$?
  (( rc == 0 )) && grep -q "MTP layer: none (num_nextn_predict_layers = 0)" "$tmp/out" && grep -q "problems: none" "$tmp/out" &&
    pass "$p --no-mtp: inspect reports no MTP layer" || fail "$p --no-mtp: inspect (rc $rc): $(grep -i mtp "$tmp/out")"
done

# fp8: the MTP layer's linears are FP8 with block scales, eh_proj stays bf16 (as DeepSeek's checkpoint).
"$DSACP" init-model --preset tiny --out "$tmp/fp8" --seed 4 --weights fp8 >/dev/null &&
  "$DSACP" inspect --model "$tmp/fp8" >"$tmp/out" 2>&1 &&
  grep -qE "model.layers.2.self_attn.o_proj.weight +F8_E4M3 .* \+ weight_scale_inv" "$tmp/out" &&
  grep -qE "model.layers.2.eh_proj.weight +BF16 +\[256, 512\]" "$tmp/out" &&
  pass "fp8: MTP linears FP8 with scales, eh_proj BF16" || fail "fp8 MTP layer: $(grep 'layers.2.\(eh_proj\|self_attn.o_proj\)' "$tmp/out")"

# Declared but absent: a warning, the target still inspects (exit 0).
cp -r "$tmp/tiny-nomtp" "$tmp/declared"
sed -i 's/"num_nextn_predict_layers": 0/"num_nextn_predict_layers": 1/' "$tmp/declared/config.json"
"$DSACP" inspect --model "$tmp/declared" >"$tmp/out" 2>"$tmp/err"; rc=$?
(( rc == 0 )) && [[ ! -s $tmp/err ]] && grep -q "MTP layer: not loaded" "$tmp/out" &&
  grep -q "warning: .*the checkpoint has none: speculative method mtp unavailable" "$tmp/out" &&
  pass "MTP declared, not in the checkpoint: a warning, exit 0" || fail "declared MTP (rc $rc): $(grep -i mtp "$tmp/out") $(cat "$tmp/err")"

# Part of it: refused, naming the first missing tensor and the file.
mkdir -p "$tmp/partial" && cp "$tmp/tiny/config.json" "$tmp/partial/"
python3 - "$tmp/tiny/model.safetensors" "$tmp/partial/model.safetensors" <<'PY'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]; hdr = json.loads(f.read(n)); data = f.read()
out, blobs, off = {}, b'', 0
for k in sorted(hdr):
    if k == '__metadata__' or k == 'model.layers.2.hnorm.weight': continue
    b = data[hdr[k]['data_offsets'][0]:hdr[k]['data_offsets'][1]]
    out[k] = dict(hdr[k], data_offsets=[off, off + len(b)]); blobs += b; off += len(b)
h = json.dumps(out).encode(); h += b' ' * ((-len(h)) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(h)) + h + blobs)
PY
expect_error "part of the MTP layer" "partial/model.safetensors" "'model.layers.2.hnorm.weight'" "MTP layer 2 is incomplete" -- \
  "$DSACP" inspect --model "$tmp/partial"

finish
