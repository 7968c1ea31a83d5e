#!/usr/bin/env bash
# `dsacp inspect` is a quick look at a checkpoint of any size (issue 20, item 14): by default it
# reads config.json and the safetensors headers only, never a byte of weight data; the NaN/Inf
# scan of every weight is `--scan-weights`, with a progress line on stderr.
#  - a checkpoint whose 12 GiB of weights are a sparse hole (truncate -s: a valid header, data never
#    written) is inspected without reading it: the process's peak resident memory stays far below
#    the data (reading the hole maps it; copying an unaligned tensor allocates it). Once with the
#    data region aligned, once with a header whose length leaves every F32 tensor unaligned;
#  - a NaN planted in a weight is found only with --scan-weights (exit 1, every bad tensor listed,
#    one line on stderr); without it, exit 0 and one line saying the scan was skipped and how to
#    run it;
#  - the file-size check still refuses the same sparse checkpoint cut by one byte.
set -u
. "$(dirname "$0")/lib/common.sh"
command -v python3 >/dev/null || { echo "SKIP: needs python3"; exit 0; }

"$DSACP" init-model --preset tiny --out "$tmp/good" --seed 7 >/dev/null || { echo "init-model failed"; exit 1; }

# relayout SRC DST VOCAB PAD: DST is SRC with vocab_size VOCAB (the embedding and lm_head become
# F32 [VOCAB, D]: their data a hole at the end of the file, made by truncate), the header padded
# with PAD spaces (PAD = 1: the data region starts at an odd offset, so no F32 tensor is aligned).
relayout() {
  python3 - "$@" <<'EOF'
import json, os, re, struct, sys
src, dst, vocab, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.makedirs(dst, exist_ok=True)
cfg = open(os.path.join(src, 'config.json')).read()
cfg, n = re.subn(r'"vocab_size": *\d+', '"vocab_size": %d' % vocab, cfg)
assert n == 1
open(os.path.join(dst, 'config.json'), 'w').write(cfg)
with open(os.path.join(src, 'model.safetensors'), 'rb') as f:
    hlen = struct.unpack('<Q', f.read(8))[0]
    hdr = json.loads(f.read(hlen))
    base = 8 + hlen
    blobs = {}
    for k, v in hdr.items():
        if k == '__metadata__': continue
        f.seek(base + v['data_offsets'][0])
        blobs[k] = f.read(v['data_offsets'][1] - v['data_offsets'][0])
# Every [vocab, D] tensor: the MTP layer's shared head too (lm_head last: the cut below is in it).
big = [k for k in ['model.embed_tokens.weight', 'model.layers.2.shared_head.head.weight', 'lm_head.weight']
       if k in hdr]
out, off, data = {}, 0, b''
if '__metadata__' in hdr: out['__metadata__'] = hdr['__metadata__']
for k in sorted(blobs):
    if k in big: continue
    out[k] = dict(hdr[k], data_offsets=[off, off + len(blobs[k])])
    data += blobs[k]; off += len(blobs[k])
for k in big:
    assert hdr[k]['dtype'] == 'F32'
    d = hdr[k]['shape'][1]
    out[k] = {'dtype': 'F32', 'shape': [vocab, d], 'data_offsets': [off, off + 4 * vocab * d]}
    off += 4 * vocab * d
h = json.dumps(out).encode()
h += b' ' * ((-len(h)) % 8 + pad)
path = os.path.join(dst, 'model.safetensors')
with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(h)) + h + data)
os.truncate(path, 8 + len(h) + off)
EOF
}

# peak_rss_mib OUT ERR -- command: runs it, prints "RC PEAK_RSS_MIB" (the child's ru_maxrss).
peak_rss_mib() {
  local out=$1 err=$2; shift 3
  python3 - "$out" "$err" "$@" <<'EOF'
import resource, subprocess, sys
with open(sys.argv[1], 'wb') as o, open(sys.argv[2], 'wb') as e:
    rc = subprocess.run(sys.argv[3:], stdout=o, stderr=e).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
EOF
}

vocab=$((1 << 22))  # 4 Mi rows x 256 x 4 bytes: 4 GiB each for the embedding, lm_head and the MTP head
for pad in 0 1; do
  name="sparse 12 GiB checkpoint, $([[ $pad == 0 ]] && echo aligned || echo "every tensor unaligned")"
  relayout "$tmp/good" "$tmp/big$pad" $vocab $pad || { fail "$name: relayout failed"; continue; }
  read -r rc rss < <(peak_rss_mib "$tmp/out" "$tmp/err" -- "$DSACP" inspect --model "$tmp/big$pad")
  ok=1
  (( rc == 0 )) || { ok=0; echo "  exit status $rc: $(cat "$tmp/err")"; }
  [[ -s $tmp/err ]] && { ok=0; echo "  stderr: $(head -c 500 "$tmp/err")"; }
  grep -qE "model.embed_tokens.weight +F32 +\[$vocab, 256\]" "$tmp/out" || { ok=0; echo "  no embedding [$vocab, 256] listed"; }
  grep -q "problems: none" "$tmp/out" || { ok=0; echo "  not 'problems: none'"; }
  grep -q "not scanned for NaN/Inf (add --scan-weights" "$tmp/out" || { ok=0; echo "  no hint that the scan was skipped"; }
  # 12 GiB of data: reading (or copying) it would leave GiBs resident; the headers take a few MiB.
  (( rss < 1024 )) || { ok=0; echo "  peak resident memory $rss MiB: the weight data was read"; }
  if (( ok )); then pass "$name: inspected, peak RSS $rss MiB"; else fail "$name (peak RSS $rss MiB)"; fi
done
# The size check still catches the same file cut short by one byte.
sz=$(stat -c %s "$tmp/big1/model.safetensors")
truncate -s $((sz - 1)) "$tmp/big1/model.safetensors"
expect_error "sparse checkpoint cut by one byte" "big1/model.safetensors" "lm_head.weight" "past" -- \
  "$DSACP" inspect --model "$tmp/big1"
rm -rf "$tmp/big0" "$tmp/big1"

# A NaN and an Inf, in an unaligned layout (the scan reads unaligned data too).
relayout "$tmp/good" "$tmp/nan" 512 1 || { fail "relayout failed"; finish; exit 1; }
patch_f32 "$tmp/nan/model.safetensors" model.layers.0.self_attn.q_b_proj.weight 77 nan || exit 1
patch_f32 "$tmp/nan/model.safetensors" model.norm.weight 3 -inf || exit 1

"$DSACP" inspect --model "$tmp/nan" >"$tmp/out" 2>"$tmp/err"; rc=$?
if (( rc == 0 )) && [[ ! -s $tmp/err ]] && grep -q "problems: none" "$tmp/out" &&
   (( $(grep -c "not scanned for NaN/Inf (add --scan-weights to read all" "$tmp/out") == 1 )); then
  pass "NaN weight, no --scan-weights: exit 0, one line says the scan was skipped and how to run it"
else fail "NaN weight without --scan-weights: rc $rc, stderr '$(cat "$tmp/err")'"; fi

"$DSACP" inspect --model "$tmp/nan" --scan-weights >"$tmp/out" 2>"$tmp/err"; rc=$?
ok=1
(( rc == 1 )) || { ok=0; echo "  exit status $rc"; }
(( $(wc -l <"$tmp/err") == 1 )) || { ok=0; echo "  stderr is not one line: $(cat "$tmp/err")"; }
grep -qF "model.layers.0.self_attn.q_b_proj.weight: non-finite value (nan) at index 77" "$tmp/err" ||
  { ok=0; echo "  stderr does not name the first bad tensor"; }
grep -qF "model.layers.0.self_attn.q_b_proj.weight: non-finite value (nan) at index 77" "$tmp/out" ||
  { ok=0; echo "  q_b_proj not listed"; }
grep -qF "model.norm.weight: non-finite value (-inf) at index 3" "$tmp/out" || { ok=0; echo "  model.norm not listed"; }
grep -q "problems: 2 errors" "$tmp/out" || { ok=0; echo "  not 'problems: 2 errors'"; }
grep -qE "weights: [0-9.]+ GB scanned for NaN/Inf in .*GB/s\): non-finite values found" "$tmp/out" ||
  { ok=0; echo "  no scan summary"; }
if (( ok )); then pass "NaN + Inf weights with --scan-weights: both listed, $(cat "$tmp/err")"
else fail "NaN weights with --scan-weights"; cat "$tmp/out"; fi

"$DSACP" inspect --model "$tmp/good" --scan-weights >"$tmp/out" 2>"$tmp/err"; rc=$?
if (( rc == 0 )) && [[ ! -s $tmp/err ]] && grep -q "problems: none" "$tmp/out" &&
   grep -qE "weights: [0-9.]+ GB scanned for NaN/Inf in .*: all finite" "$tmp/out"; then
  pass "good model with --scan-weights: all finite, nothing on stderr (not a terminal)"
else fail "good model with --scan-weights: rc $rc, stderr '$(cat "$tmp/err")'"; fi

# On a terminal the scan shows its progress line: bytes done / total and the rate.
if command -v script >/dev/null && script -qec true /dev/null >/dev/null 2>&1; then
  script -qec "\"$DSACP\" inspect --model \"$tmp/good\" --scan-weights >/dev/null" /dev/null >"$tmp/tty" 2>&1
  if grep -aqE "scanning weights: [0-9.]+ / [0-9.]+ GB \([0-9.]+ GB/s\)" "$tmp/tty"; then
    pass "progress line on a terminal: $(tr '\r' '\n' <"$tmp/tty" | grep -a scanning | tail -1)"
  else fail "no progress line on a terminal: $(cat -v "$tmp/tty")"; fi
else echo "skip progress line on a terminal (no script(1))"; fi

finish
