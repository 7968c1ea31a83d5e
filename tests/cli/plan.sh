#!/usr/bin/env bash
# `dsacp plan`: a table and a recommendation per hardware profile, a JSON report, clear errors for
# bad profiles and flags, and --calibrate under mpirun writing a profile that plan then reads.
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:-$(dirname "$0")/../..}

for hw in "$SRC"/hardware/*.json; do
  if out=$("$DSACP" plan --preset v32-layer --context 131072 --cp 8 --hardware "$hw" 2>&1) \
     && grep -q '^lean output ' <<<"$out" && grep -q '^recommendation: ' <<<"$out"; then
    pass "plan on $(basename "$hw"): $(grep '^recommendation' <<<"$out" | cut -c1-80)"
  else fail "plan on $hw: $out"; fi
done
if "$DSACP" plan --preset v32-layer --context 1048576 --cp 32 --batch 4 --hardware "$SRC/hardware/h200-nvlink8.json" \
     --json "$tmp/p.json" >/dev/null && python3 -c "
import json,sys
r=json.load(open(sys.argv[1])); s={x['strategy']: x for x in r['strategies']}
assert r['world']==32 and r['context']==1048576 and r['recommendation'] in s
lean=s['lean output']; ex=s['exact-topk ag_rs (vLLM)']
assert lean['recv_bytes_per_token'] < ex['recv_bytes_per_token'] and lean['calls'] < ex['calls']
assert all(x['t_layer'] >= x['t_comm'] > 0 for x in s.values())" "$tmp/p.json"; then
  pass "plan --json at 1M, W = 32 (crossing nodes)"
else fail "plan --json: $(cat "$tmp/p.json" 2>&1 | head -c 400)"; fi

if "$DSACP" plan --preset v32-layer --cp 8 --prefill 8192 --hardware "$SRC/hardware/b200-nvlink8.json" --plot "$tmp/p.svg" \
     >/dev/null && grep -q '<svg' "$tmp/p.svg" && grep -q 'lean values a2a' "$tmp/p.svg" && grep -q 'prefill of a 8192' "$tmp/p.svg"; then
  pass "plan --plot writes an SVG (decode and prefill)"
else fail "plan --plot"; fi
# PNG: a valid file (chunk CRCs, the zlib stream decodes to every scanline) with the chart's colours.
if "$DSACP" plan --preset v32 --cp 8 --prefill 8192 --hardware "$SRC/hardware/b200-nvlink8.json" --plot "$tmp/p.png" \
     >/dev/null && python3 -c "
import struct, sys, zlib
d = open(sys.argv[1], 'rb').read(); assert d[:8] == b'\x89PNG\r\n\x1a\n'
i, idat, seen = 8, b'', []
while i < len(d):
    n = struct.unpack('>I', d[i:i + 4])[0]; t = d[i + 4:i + 8]; body = d[i + 8:i + 8 + n]
    assert zlib.crc32(t + body) & 0xffffffff == struct.unpack('>I', d[i + 8 + n:i + 12 + n])[0], t
    seen.append(t)
    if t == b'IHDR': w, h, depth, ctype = struct.unpack('>IIBB', body[:10])
    if t == b'PLTE': pal = [body[k:k + 3].hex() for k in range(0, n, 3)]
    if t == b'IDAT': idat += body
    i += 12 + n
raw = zlib.decompress(idat)
assert seen[0] == b'IHDR' and seen[-1] == b'IEND' and (depth, ctype) == (8, 3) and len(raw) == (w + 1) * h
assert {'4878cf', 'ee854a', '6acc64', '000000', 'ffffff'} <= set(pal), pal
used = set(raw[k] for k in range(len(raw)) if k % (w + 1))
assert len(used) == len(pal), (used, pal)" "$tmp/p.png"; then
  pass "plan --plot writes a PNG (decodes; the chart's colours used)"
else fail "plan --plot PNG"; fi
expect_error "plot neither svg nor png" "--plot" ".svg or .png" -- "$DSACP" plan --preset tiny --hardware "$SRC/hardware/b200-nvlink8.json" --plot "$tmp/p.jpg"
[ ! -e "$tmp/p.jpg" ] && pass "no file for a refused plot" || fail "p.jpg written"
if out=$("$DSACP" plan --preset v32-layer --layers 61 --context 153600 --cp 8 --prefill 153600 \
     --hardware "$SRC/hardware/b200-nvlink8.json") && grep -q '^TP, indexer rows split' <<<"$out" && grep -q '^CP zigzag' <<<"$out" \
     && grep -q '^dsa-cp o_proj tp' <<<"$out" && grep -q '^layer-shard q and o' <<<"$out"; then
  pass "plan --prefill: TP, indexer split, CP splits; crossovers; dsa-cp weight plans"
else fail "plan --prefill: $out"; fi

# The whole V3.2 (planning only): experts spread over the ranks, weights and KV held per rank,
# whole-model TPOT above the attention's, the chunked-prefill table with both paths.
if "$DSACP" plan --preset v32 --context 1048576 --cp 8 --batch 8 --chunk 1024 --hardware "$SRC/hardware/b200-nvlink8.json" \
     --json "$tmp/v.json" >"$tmp/log" && python3 -c "
import json,sys
r=json.load(open(sys.argv[1])); s={x['strategy']: x for x in r['strategies']}
assert r['ep']==8 and r['layers']==61 and r['chunk_tokens']==1024
tp=s['TP, no CP (caches replicated)']; ex=s['exact-topk ag_rs (vLLM)']
assert not tp['fits'] and ex['fits'] and 70e9 < ex['weights_per_rank'] < 100e9, (tp['held_per_rank'], ex['weights_per_rank'])
assert all(x['tpot_model'] > x['tpot'] and x['t_moe_comm'] > 0 for x in s.values())
# overlap where the engine overlaps (candidates / lean's scores with W_UK), none for TP's all-reduce
assert ex['t_hidden'] > 0 and s['lean values a2a']['t_hidden'] > 0 and tp['t_hidden'] == 0
assert abs(sum(p['recv_bytes'] for p in ex['phases'].values()) - ex['recv_bytes_per_token'] * 8) < 8
assert sum(p['calls'] for p in ex['phases'].values()) == ex['calls'] and ex['phases']['index_candidates']['calls'] == 1
c={x['strategy']: x for x in r['chunk']}['exact-topk ag_rs (vLLM)']
assert c['gather']['recv_bytes'] > 0 and c['distributed']['recv_bytes'] > 0 and c['auto'] in ('gather', 'distributed')" "$tmp/v.json"; then
  pass "plan --preset v32: whole model, expert parallelism, memory per rank, chunk paths"
else fail "plan --preset v32: $(tail -3 "$tmp/log") $(head -c 300 "$tmp/v.json" 2>&1)"; fi
expect_error "plan --ep not dividing the experts" "--ep" "divisor" -- "$DSACP" plan --preset v32 --cp 8 --ep 3 \
  --hardware "$SRC/hardware/h200-nvlink8.json"
expect_error "plan --preset nope lists v32 among the presets" "unknown preset" "v32-layer" "for planning v32" -- \
  "$DSACP" plan --preset nope --context 100 --cp 2 --hardware "$SRC/hardware/h200-nvlink8.json"
expect_error "init-model of the planning-only preset" "unknown preset" -- "$DSACP" init-model --preset v32 --out "$tmp/v32"
[ ! -e "$tmp/v32" ] && pass "init-model --preset v32 wrote nothing" || fail "init-model --preset v32 left $tmp/v32"

echo '{"name": "x", "source": "y", "flops_bf16": 1e12}' >"$tmp/bad.json"
expect_error "profile without mem_bw... fields" "bad.json" "flops_fp8" -- "$DSACP" plan --preset tiny --hardware "$tmp/bad.json"
expect_error "plan without a profile" "--hardware" -- "$DSACP" plan --preset tiny
expect_error "plan with a bad --cp" "cp" -- "$DSACP" plan --preset tiny --cp 0 --hardware "$SRC/hardware/h200-nvlink8.json"
expect_error "plan of a missing model" "config.json" -- "$DSACP" plan --model "$tmp/none" --hardware "$SRC/hardware/h200-nvlink8.json"

# This machine, calibrated over 2 ranks, then planned.
if mpi 2 "$DSACP" plan --calibrate "$tmp/cpu.json" >"$tmp/log" 2>&1 \
   && "$DSACP" plan --preset small --context 4096 --cp 2 --hardware "$tmp/cpu.json" >"$tmp/log2" 2>&1; then
  pass "calibrate (2 ranks) and plan with it: $(grep -o '"link_latency_us": [0-9.e+-]*' "$tmp/cpu.json")"
else fail "calibrate: $(cat "$tmp/log" "$tmp/log2" 2>/dev/null | tail -5)"; fi
# --calibrate anywhere on the line (not only first)
if "$DSACP" plan --preset tiny --calibrate "$tmp/cpu1.json" >/dev/null 2>"$tmp/err" && grep -q '"flops_fp8"' "$tmp/cpu1.json"; then
  pass "calibrate after other flags, one process"
else fail "calibrate after other flags: $(cat "$tmp/err")"; fi
# ---- issue 20: exit statuses, outputs opened before the work, strict numbers, bounded profiles ----
# expect_status NAME STATUS PATTERN... -- CMD: exits with STATUS, one line on stderr holding every
# pattern, nothing on stdout.
expect_status() {
  local name=$1 want=$2; shift 2
  local pats=()
  while [[ $1 != -- ]]; do pats+=("$1"); shift; done
  shift
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? ok=1
  (( rc == want )) || { ok=0; echo "FAIL $name: exit status $rc, expected $want"; }
  [[ $(wc -l <"$tmp/err") -eq 1 ]] || { ok=0; echo "FAIL $name: stderr is not one line"; }
  [[ -s $tmp/out ]] && { ok=0; echo "FAIL $name: stdout not empty: $(head -c 200 "$tmp/out")"; }
  for p in "${pats[@]}"; do grep -qF -- "$p" "$tmp/err" || { ok=0; echo "FAIL $name: stderr lacks '$p'"; }; done
  if (( ok )); then pass "$name: $(cat "$tmp/err")"; else fail "$name: $(head -c 500 "$tmp/err")"; fi
}
H200="$SRC/hardware/h200-nvlink8.json"
profile() { # profile FILE FIELD VALUE: h200's profile with one field replaced
  python3 -c "
import json,sys; d=json.load(open(sys.argv[1])); d[sys.argv[3]]=json.loads(sys.argv[4]); json.dump(d,open(sys.argv[2],'w'))" \
    "$H200" "$1" "$2" "$3"
}
# item 8: tiny positive bandwidths printed inf with exit 0; every field has a physical range
profile "$tmp/tiny_mem.json" mem_bw 1e-300
expect_status "profile mem_bw 1e-300" 2 "tiny_mem.json" "mem_bw" "physical range" -- "$DSACP" plan --preset v32 --hardware "$tmp/tiny_mem.json"
profile "$tmp/tiny_net.json" net_bw 1e-300
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['net_latency_us']=1e300; json.dump(d,open(sys.argv[1],'w'))" "$tmp/tiny_net.json"
expect_status "profile net_bw 1e-300, huge latency, --cp 16" 2 "tiny_net.json" "net_" -- "$DSACP" plan --preset v32 --cp 16 --hardware "$tmp/tiny_net.json"
profile "$tmp/rpn.json" ranks_per_node 8.5
expect_status "profile ranks_per_node 8.5" 2 "rpn.json" "ranks_per_node" -- "$DSACP" plan --preset tiny --hardware "$tmp/rpn.json"
profile "$tmp/lat.json" link_latency_us '"8"'
expect_status "profile latency as a string" 2 "lat.json" "link_latency_us" -- "$DSACP" plan --preset tiny --hardware "$tmp/lat.json"
# item 15: a profile that cannot be read says why
expect_status "profile missing" 2 "$tmp/none.json" "cannot open" -- "$DSACP" plan --preset tiny --hardware "$tmp/none.json"
grep -q 'line -1' "$tmp/err" && fail "missing profile still says line -1" || pass "missing profile: no 'line -1'"
expect_status "profile is a directory" 2 "not a regular file" -- "$DSACP" plan --preset tiny --hardware "$tmp"
printf '{\n "name": "x",\n "source": oops\n}\n' >"$tmp/broken.json"
expect_status "profile not JSON" 2 "broken.json" "JSON error at line 3" -- "$DSACP" plan --preset tiny --hardware "$tmp/broken.json"
# item 11: every numeric flag through the strict parser
for bad in "--lean-candidates 0x2" "--lean-candidates nan" "--lean-candidates 2abc" "--weight-bytes 3" "--weight-bytes inf" \
           "--weight-bytes 0x1" "--cp 8.0" "--context 1e3" "--chunk -1" "--batch 1,2"; do
  # shellcheck disable=SC2086
  expect_status "plan $bad" 2 "${bad%% *}" -- "$DSACP" plan --preset tiny --hardware "$H200" $bad
done
# item 9: --cp 4096 finishes (it took minutes, ~W^2) and gives finite figures; a hang guard, not a timing
if timeout 120 "$DSACP" plan --preset v32 --cp 4096 --prefill 65536 --hardware "$H200" --json "$tmp/w4096.json" >"$tmp/log" \
   && python3 -c "
import json,math,sys
def walk(x):
    if isinstance(x,dict): [walk(v) for v in x.values()]
    elif isinstance(x,list): [walk(v) for v in x]
    elif isinstance(x,float): assert math.isfinite(x)
r=json.load(open(sys.argv[1])); walk(r); assert r['world']==4096 and len(r['chunk'])>0" "$tmp/w4096.json"; then
  pass "plan --cp 4096 completes with finite figures"
else fail "plan --cp 4096: $(tail -3 "$tmp/log")"; fi
# the largest context, batch and --cp together: byte counts stay within 64 bits, figures finite
if timeout 120 "$DSACP" plan --preset v32 --numerics exact --cp 4096 --context 4294967296 --batch 65536 --hardware "$H200" \
     --json "$tmp/max.json" >/dev/null 2>"$tmp/err" && python3 -c "
import json,math,sys
r=json.load(open(sys.argv[1])); s={x['strategy']: x for x in r['strategies']}
a=s['allgather-kv (vllm-ascend #6563)']; assert 2**59 < a['recv_bytes_per_token']*65536 < 2**63, a
assert all(math.isfinite(v) for x in r['strategies'] for v in x.values() if isinstance(v,float))" "$tmp/max.json"; then
  pass "plan at the largest --context, --batch and --cp: exact byte counts, finite figures"
else fail "plan at the largest flags: $(cat "$tmp/err")"; fi
# item 6: outputs opened before any work; nothing on stdout and no file unless every output succeeded
expect_status "--json /dev/full" 1 "--json" "/dev/full" -- "$DSACP" plan --preset v32-layer --hardware "$H200" --json /dev/full
expect_status "--json in a missing directory" 1 "--json" "$tmp/nodir/p.json" -- "$DSACP" plan --preset v32-layer --hardware "$H200" --json "$tmp/nodir/p.json"
mkdir -p "$tmp/adir"
expect_status "--json a directory" 1 "--json" -- "$DSACP" plan --preset v32-layer --hardware "$H200" --json "$tmp/adir"
echo keep >"$tmp/target"; ln -s "$tmp/target" "$tmp/link.json"
expect_status "--json a symlink" 1 "--json" "link.json" -- "$DSACP" plan --preset v32-layer --hardware "$H200" --json "$tmp/link.json"
[[ $(cat "$tmp/target") == keep && -L $tmp/link.json ]] && pass "the symlink and its target untouched" || fail "symlink followed"
mkdir -p "$tmp/d.svg"
expect_status "--plot a directory" 1 "--plot" "d.svg" -- "$DSACP" plan --preset v32-layer --hardware "$H200" --plot "$tmp/d.svg"
expect_status "--json fine, --plot in a missing directory" 1 "--plot" -- "$DSACP" plan --preset v32-layer --hardware "$H200" \
  --json "$tmp/ok.json" --plot "$tmp/nodir/p.svg"
[[ ! -e $tmp/ok.json ]] && pass "no --json file when --plot fails" || fail "--json written although --plot failed"
left=$(find "$tmp" -name '*.tmp.*')
[[ -z $left && -z $(ls -A "$tmp/adir") ]] && pass "no temporaries left" || fail "temporaries left: $left"
"$DSACP" plan --preset v32-layer --hardware "$H200" >/dev/full 2>"$tmp/err"
st=$?
(( st == 1 )) && grep -q "stdout" "$tmp/err" && pass "stdout on /dev/full: exit 1, $(cat "$tmp/err")" \
  || fail "stdout on /dev/full: exit $st, $(cat "$tmp/err")"
expect_status "--calibrate into a directory: refused before measuring" 1 "--calibrate" "adir" -- "$DSACP" plan --calibrate "$tmp/adir"
[[ -z $(ls -A "$tmp/adir") ]] && pass "--calibrate left nothing" || fail "--calibrate left $(ls -A "$tmp/adir")"
expect_status "--json and --plot the same file" 2 "same file" -- "$DSACP" plan --preset tiny --hardware "$H200" --json "$tmp/x.svg" --plot "$tmp/x.svg"
# item 12: the JSON through jansson: a model path with a quote and a backslash stays valid JSON
weird="$tmp/we\"ird\\dir"
if "$DSACP" init-model --preset tiny --out "$weird" >/dev/null 2>"$tmp/err" \
   && "$DSACP" plan --model "$weird" --cp 2 --hardware "$H200" --json "$tmp/weird.json" >/dev/null 2>>"$tmp/err" \
   && python3 -c "
import json,sys
r=json.load(open(sys.argv[1])); assert r['model']==sys.argv[2], r['model']" "$tmp/weird.json" "$weird"; then
  pass "plan --json with a quote and a backslash in the model path: valid JSON, the path intact"
else fail "plan --json, odd model path: $(cat "$tmp/err") $(head -c 300 "$tmp/weird.json" 2>&1)"; fi
finish
