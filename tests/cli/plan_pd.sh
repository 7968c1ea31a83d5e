#!/usr/bin/env bash
# `dsacp plan --pd P:D`: the disaggregated deployment against the same instances run PD-mixed
# (docs/planning.md, "Disaggregated prefill and decode"): the table and the transfer line are
# printed, --json holds them and parses, the link flags move the transfer's time the right way,
# and a bad value of every flag it adds is refused with one line naming the flag (exit 2).
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:-$(dirname "$0")/../..}
H200="$SRC/hardware/h200-nvlink8.json"

if out=$("$DSACP" plan --preset v32 --context 131072 --cp 8 --hardware "$H200" --pd 1:1 2>&1) \
   && grep -q '^disaggregated prefill and decode: 1 producer + 1 consumer instances of W = 8' <<<"$out" \
   && grep -q '^transfer per request (64 chunks x 61 layers)' <<<"$out" \
   && (( $(grep -cE '^ +[0-9.e+-]+ \|' <<<"$out") == 8 )); then
  pass "plan --pd 1:1 at 128K: the transfer line and a row per load of the default sweep"
else fail "plan --pd 1:1: $out"; fi
if out=$("$DSACP" plan --preset v32 --context 131072 --cp 8 --hardware "$H200" --pd 1:1 --producer-chunk 16384 2>&1) \
   && grep -q "2048-token chunks (a producer's: 16384)" <<<"$out" && grep -q '^transfer per request (8 chunks x 61 layers)' <<<"$out" \
   && grep -q '^TTFT lower: ' <<<"$out" && grep -q '^TPOT lower: ' <<<"$out"; then
  pass "plan --pd --producer-chunk 16384: the producer's chunks, the crossovers"
else fail "plan --pd --producer-chunk: $out"; fi

for hw in "$SRC"/hardware/*.json; do
  if "$DSACP" plan --preset v32 --context 32768 --cp 8 --hardware "$hw" --pd 2:3 --rate 0.5,1,2 --gen-len 512 \
       --json "$tmp/pd.json" >"$tmp/out" && python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))['pd']
assert (r['producers'], r['consumers'], r['prompt'], r['output'], r['chunk'], r['chunks']) == (2, 3, 32768, 512, 2048, 16), r
assert r['sent_calls'] == 16 * 61 and r['recv_calls'] == 16 * 61 and r['sent_bytes'] > 32768 * 788 * 61 // 8, r
assert 0 < r['transfer_exposed_s'] <= r['transfer_s'] and r['prefill_s'] > 0
assert [l['rate'] for l in r['loads']] == [0.5, 1, 2]
for l in r['loads']:
    for side in ('disaggregated', 'mixed'):
        s = l[side]
        if s['stable']:
            assert s['ttft'] > 0 and s['tpot'] > 0 and s['itl_max'] >= s['tpot'] and s['batch'] > 0 and s['limit'] == '', s
        else:
            assert s['ttft'] is None and s['limit'] in ('prefill', 'link', 'decode', 'memory'), s
    assert l['lower']
" "$tmp/pd.json"; then
    pass "plan --pd 2:3 --rate 0.5,1,2 --json on $(basename "$hw"): the pd section parses, its counts are the formula's"
  else fail "plan --pd --json on $hw: $(head -c 600 "$tmp/pd.json" 2>&1) $(cat "$tmp/out")"; fi
done

# the link flags: a slower link, a slower message -> a longer transfer; the profile's figures by default
t() { "$DSACP" plan --preset v32 --context 32768 --cp 8 --hardware "$H200" --pd 1:1 --rate 1 "$@" --json "$tmp/t.json" \
        >/dev/null && python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pd']['transfer_s'])" "$tmp/t.json"; }
fast=$(t --link-gbps 400 --link-latency-us 5) slow=$(t --link-gbps 10 --link-latency-us 5) \
  slowmsg=$(t --link-gbps 400 --link-latency-us 500) prof=$(t)
if python3 -c "import sys; f, s, m, p = map(float, sys.argv[1:]); assert f < s and f < m and p > 0" "$fast" "$slow" "$slowmsg" "$prof"
then pass "--link-gbps / --link-latency-us: 400 Gb/s ${fast}s, 10 Gb/s ${slow}s, 500 us per message ${slowmsg}s"
else fail "link flags: '$fast' '$slow' '$slowmsg' '$prof'"; fi
python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['pd']; assert r['link_bw'] == 50e9 and abs(r['link_latency_s'] - 20e-6) < 1e-12" \
  "$tmp/t.json" && pass "without link flags: the profile's net_bw and net_latency_us" || fail "profile link: $(head -c 300 "$tmp/t.json")"

base=(plan --preset v32 --context 32768 --cp 8 --hardware "$H200")
refused "--pd 0:1" 2 "--pd" "P:D" -- "$DSACP" "${base[@]}" --pd 0:1
refused "--pd 1:0" 2 "--pd" "P:D" -- "$DSACP" "${base[@]}" --pd 1:0
refused "--pd 2" 2 "--pd" "P:D" -- "$DSACP" "${base[@]}" --pd 2
refused "--pd a:b" 2 "--pd" -- "$DSACP" "${base[@]}" --pd a:b
refused "--pd 1:1x" 2 "--pd" -- "$DSACP" "${base[@]}" --pd 1:1x
refused "--link-gbps 0" 2 "--link-gbps" -- "$DSACP" "${base[@]}" --pd 1:1 --link-gbps 0
refused "--link-gbps nan" 2 "--link-gbps" -- "$DSACP" "${base[@]}" --pd 1:1 --link-gbps nan
refused "--link-latency-us -1" 2 "--link-latency-us" -- "$DSACP" "${base[@]}" --pd 1:1 --link-latency-us -1
refused "--rate 0" 2 "--rate" -- "$DSACP" "${base[@]}" --pd 1:1 --rate 0
refused "--rate 1," 2 "--rate" -- "$DSACP" "${base[@]}" --pd 1:1 --rate 1,
refused "--rate ''" 2 "--rate" -- "$DSACP" "${base[@]}" --pd 1:1 --rate ''
refused "--rate 1,x" 2 "--rate" -- "$DSACP" "${base[@]}" --pd 1:1 --rate 1,x
refused "--gen-len 0" 2 "--gen-len" -- "$DSACP" "${base[@]}" --pd 1:1 --gen-len 0
refused "--producer-chunk 0" 2 "--producer-chunk" -- "$DSACP" "${base[@]}" --pd 1:1 --producer-chunk 0
refused "--chunk beyond 2^20 with --pd" 2 "--chunk" -- "$DSACP" "${base[@]}" --pd 1:1 --chunk 2000000
refused "--producer-chunk without --pd" 2 "--producer-chunk" "--pd" -- "$DSACP" "${base[@]}" --producer-chunk 8192
refused "--rate without --pd" 2 "--rate" "--pd" -- "$DSACP" "${base[@]}" --rate 1
refused "--link-gbps without --pd" 2 "--link-gbps" "--pd" -- "$DSACP" "${base[@]}" --link-gbps 100
finish
