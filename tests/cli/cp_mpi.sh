#!/usr/bin/env bash
# dsacp forward and generate under mpirun (issue 8): every decode strategy and layout at W = 2 and
# 3 gives the selected sets of W = 1 and its logits within 1e-5 (exact mode); --comm-report writes
# every rank's counters; only rank 0 prints; conflicting flags and bad inputs end every rank with
# a non-zero status and one message, never a hang (each run is under `timeout`).
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:-$(dirname "$0")/../..}

"$DSACP" init-model --preset tiny-moe --out "$tmp/m" --seed 5 >/dev/null || { echo "init-model failed"; exit 1; }
"$DSACP" make-input --out "$tmp/in.st" --requests 3 --length 80 --vocab 512 --chunk 13 --seed 6 >/dev/null \
  || { echo "make-input failed"; exit 1; }
"$DSACP" forward --model "$tmp/m" --input "$tmp/in.st" --output "$tmp/ref.st" --block-size 8 --dump-topk >/dev/null \
  || { echo "reference forward failed"; exit 1; }

# Conflicts and bad inputs: non-zero on every rank, one message, nothing written (defined before
# its first use; the list is at the end).
bad() {
  local name=$1 want=$2; shift 2
  rm -f "$tmp/bad.st"
  mpi 2 "$@" >"$tmp/log" 2>&1; local st=$?
  if [ $st -ne 0 ] && [ $st -ne 124 ] && grep -q -- "$want" "$tmp/log" && [ ! -e "$tmp/bad.st" ] \
     && [ "$(grep -c '^dsacp ' "$tmp/log")" = 1 ] && ! grep -q 'MPI_ABORT\|[Bb]acktrace\|Signal:' "$tmp/log"; then
    pass "$name"
  else
    fail "$name (status $st): $(cat "$tmp/log")"
  fi
}

# Compares two forward outputs: identical topk.* tensors, logits within a relative tolerance.
cat >"$tmp/cmp.py" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        a, e = v['data_offsets']; f = 'f' if v['dtype'] == 'F32' else 'i'
        out[k] = struct.unpack('<%d%s' % ((e - a) // 4, f), d[a:e])
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
if sorted(a) != sorted(b): print('tensors differ', sorted(a), sorted(b)); sys.exit(1)
for k in a:
    if k.startswith('topk') and a[k] != b[k]: print(k, 'differs'); sys.exit(1)
la, lb = a['logits'], b['logits']
m = max(abs(x) for x in la); d = max(abs(x - y) for x, y in zip(la, lb))
print('max rel %.3g' % (d / m)); sys.exit(0 if d / m <= float(sys.argv[3]) else 1)
EOF

for W in 2 3; do
  for cfg in "--decode-strategy exact-topk" "--decode-strategy allgather-kv --cp-interleave 3" \
             "--decode-strategy replicated-index --kv-layout replicated" \
             "--decode-strategy allgather-kv --kv-layout sharded --index-layout replicated --cp-kv-cache-interleave-size 8" \
             "--cp-mode dsa-cp --kv-layout replicated --index-layout replicated --q-proj layer-shard --o-proj auto" \
             "--cp-mode dsa-cp --q-proj replicated --o-proj tp" \
             "--cp-mode dsa-cp --decode-strategy replicated-index --index-layout replicated --o-proj layer-shard --prefetch 1" \
             "--cp-mode dsa-cp --kv-layout replicated --index-layout replicated --o-proj layer-shard --prefill-split owner" \
             "--decode-strategy lean --lean-candidates 1.5 --context-path distributed" \
             "--context-path auto --prefill-split zigzag --dcp-comm-backend a2a" \
             "--index-layout partial:$W --decode-strategy lean" \
             "--decode-strategy lean --lean-merge values --partials fp32 --prefill-split zigzag --cp-interleave 2" \
             "--decode-strategy lean --context-path auto --context-hardware $SRC/hardware/h200-nvlink8.json"; do
    out="$tmp/o.st"; rm -f "$out"
    # shellcheck disable=SC2086
    if mpi "$W" "$DSACP" forward --model "$tmp/m" --input "$tmp/in.st" --output "$out" --block-size 8 --dump-topk \
         --comm-report "$tmp/rep.json" $cfg >"$tmp/log" 2>&1 && r=$(python3 "$tmp/cmp.py" "$tmp/ref.st" "$out" 1e-5); then
      pass "W=$W $cfg: same selected sets, logits $r"
    else
      fail "W=$W $cfg: $(cat "$tmp/log") ${r:-}"
    fi
    # One line of output, from rank 0 alone.
    [ "$(grep -c '^forward:' "$tmp/log")" = 1 ] && pass "W=$W $cfg: rank 0 alone prints" || fail "W=$W printed: $(cat "$tmp/log")"
    if python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['world']==$W and len(r['ranks'])==$W" "$tmp/rep.json"; then
      pass "W=$W comm report has every rank"
    else
      fail "W=$W comm report: $(cat "$tmp/rep.json" 2>&1 | head -5)"
    fi
    # The planner predicted every collective of every step on every rank, per phase, exactly.
    if r=$(python3 "$PLAN_MATCHES" "$tmp/rep.json" $W); then pass "W=$W $cfg: planner = counters and memory ($r)"
    else fail "W=$W $cfg: planner vs counters: $r"; fi
  done
done

# DSA-CP's report shows the o_proj rule, its crossover and every step's choice.
mpi 2 "$DSACP" forward --model "$tmp/m" --input "$tmp/in.st" --output "$tmp/o.st" --cp-mode dsa-cp --o-proj auto \
  --comm-report "$tmp/rep.json" >/dev/null 2>&1
if python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['cp']; assert c['mode']=='dsa-cp' and c['o_proj']=='auto' \
     and c['o_proj_crossover_tokens'] > 0 and len(c['o_proj_choices']) > 0 and set(c['o_proj_choices']) <= set('gar')" "$tmp/rep.json"; then
  pass "dsa-cp comm report: o_proj rule, crossover and choices"
else fail "dsa-cp comm report: $(cat "$tmp/rep.json" 2>&1 | tail -5)"; fi

# The label is the path that ran: --o-proj tp's decode-only steps move activations (the seed's
# all-to-all + reduce-scatter: 2 o_proj calls per layer) only when DSA-CP keeps every cache
# replicated; with sharded layouts (DSA-CP + DCP) they are an all-reduce of head columns ('r',
# 1 call per layer). Prefill steps gather the weight ('g'). tiny-moe: 2 layers, 6 decode steps.
for lay in sharded replicated; do
  want_c="gggrrrrrr" want_calls=12
  [ $lay = replicated ] && want_c="gggaaaaaa" want_calls=24
  mpi 2 "$DSACP" generate --model "$tmp/m" --prompt-len 40 --new-tokens 6 --chunk 16 --cp-mode dsa-cp --o-proj tp \
    --kv-layout $lay --index-layout $lay --comm-report "$tmp/rep.json" >/dev/null 2>&1
  if python3 -c "import json,sys; r=json.load(open(sys.argv[1])); c=r['cp']; \
       assert c['o_proj_choices']=='$want_c', c['o_proj_choices']; \
       assert all(q['phases']['o_proj']['calls']==$want_calls for q in r['ranks'])" "$tmp/rep.json"; then
    pass "dsa-cp tp, $lay layouts: o_proj labelled $want_c, $want_calls o_proj calls"
  else fail "dsa-cp tp, $lay layouts: $(head -c 600 "$tmp/rep.json")"; fi
done

# lean's report: the verdict counters of every rank, the context rule and choices.
mpi 2 "$DSACP" forward --model "$tmp/m" --input "$tmp/in.st" --output "$tmp/o.st" --decode-strategy lean \
  --lean-candidates 1 --context-path auto --comm-report "$tmp/rep.json" >/dev/null 2>&1
if python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['cp']; w=c['attention_work']; \
     assert c['decode_strategy']=='lean' and c['lean']['candidates_factor']==1 and len(w)==2 \
     and all(x['lean_decisions']==w[0]['lean_decisions'] for x in w) and w[0]['keys_scored'] > 0 \
     and set(c['context_choices']) <= set('gdm') and c['context_distributed_bytes_per_query_token'] > 0" "$tmp/rep.json"; then
  pass "lean comm report: verdict counters, context rule and choices"
else fail "lean comm report: $(cat "$tmp/rep.json" 2>&1 | tail -5)"; fi

# bench --kernel cp: decode and chunk steps, per phase and overlap, one JSON object each.
if mpi 2 "$DSACP" bench --kernel cp --model "$tmp/m" --context 90 --chunk 20 --reps 1 --json --decode-strategy lean \
     --block-size 8 >"$tmp/b.json" 2>"$tmp/log" && python3 -c "
import json,sys
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert [r['kind'] for r in rows]==['decode','chunk'], rows
d=rows[0]
assert d['world']==2 and d['strategy']=='lean' and d['recv_bytes_max_rank']['o_proj']>0 and d['step_ms']>0
assert 0 <= d['overlap'] <= 1 and 'index_candidates' in d['calls_per_step']" "$tmp/b.json"; then
  pass "bench --kernel cp W=2: decode and chunk rows"
else fail "bench --kernel cp: $(cat "$tmp/log" "$tmp/b.json" 2>&1 | tail -5)"; fi
bad "bench --kernel cp without a model" "needs '--model DIR'" "$DSACP" bench --kernel cp --preset tiny

# generate: the same tokens on 1 and 2 ranks.
g1=$("$DSACP" generate --model "$tmp/m" --prompt-len 40 --new-tokens 6 --chunk 16 | grep '^generated:')
g2=$(mpi 2 "$DSACP" generate --model "$tmp/m" --prompt-len 40 --new-tokens 6 --chunk 16 --cp-interleave 2 | grep '^generated:')
[ -n "$g1" ] && [ "$g1" = "$g2" ] && pass "generate W=2: $g2" || fail "generate: W=1 '$g1' vs W=2 '$g2'"
mpi 2 "$DSACP" generate --model "$tmp/m" --prompt-len 40 --new-tokens 6 --chunk 16 --decode-strategy lean \
  --context-path auto --comm-report "$tmp/rep.json" >/dev/null 2>&1
if r=$(python3 "$PLAN_MATCHES" "$tmp/rep.json" 2); then pass "generate lean W=2: planner = counters and memory ($r)"
else fail "generate lean W=2: planner vs counters: $r"; fi
g3=$(mpi 3 "$DSACP" generate --model "$tmp/m" --prompt-len 40 --new-tokens 6 --chunk 16 --cp-mode dsa-cp --o-proj tp \
     --q-proj layer-shard | grep '^generated:')
[ "$g1" = "$g3" ] && pass "generate dsa-cp W=3: $g3" || fail "generate dsa-cp: W=1 '$g1' vs W=3 '$g3'"

# Conflicts and bad inputs (bad, above).
F=("$DSACP" forward --model "$tmp/m" --input "$tmp/in.st" --output "$tmp/bad.st")
bad "replicated-index with a sharded index" "needs '--index-layout replicated'" "${F[@]}" --decode-strategy replicated-index --index-layout sharded
bad "exact-topk with a replicated index" "needs '--index-layout sharded'" "${F[@]}" --index-layout replicated
bad "interleave 0" "cp-interleave" "${F[@]}" --cp-interleave 0
bad "interleaves disagree" "disagree" "${F[@]}" --cp-interleave 2 --cp-kv-cache-interleave-size 4
bad "decode-context-parallel-size mismatch" "has 2 ranks" "${F[@]}" --decode-context-parallel-size 4
bad "unknown merge backend" "unknown merge backend" "${F[@]}" --dcp-comm-backend nccl
bad "unknown strategy" "unknown decode strategy" "${F[@]}" --decode-strategy helix
bad "q-proj tp" "q_b_proj is replicated or layer-shard" "${F[@]}" --cp-mode dsa-cp --q-proj tp
bad "unknown prefill split" "unknown prefill split" "${F[@]}" --prefill-split ring
bad "lean candidates below 1" "lean-candidates" "${F[@]}" --decode-strategy lean --lean-candidates 0.5
bad "lean candidates not a number" "lean-candidates" "${F[@]}" --decode-strategy lean --lean-candidates many
bad "unknown lean merge" "unknown lean merge" "${F[@]}" --decode-strategy lean --lean-merge heads
bad "partial index group not dividing W" "must divide" "${F[@]}" --index-layout partial:3
bad "partial index without its group" "partial:G" "${F[@]}" --index-layout partial
bad "unknown context path" "unknown context path" "${F[@]}" --context-path ring
bad "unknown partials dtype" "unknown partials dtype" "${F[@]}" --decode-strategy lean --partials fp16
bad "context hardware without auto" "belongs to '--context-path auto'" "${F[@]}" --context-hardware "$SRC/hardware/h200-nvlink8.json"
bad "context hardware missing" "hw.missing" "${F[@]}" --context-path auto --context-hardware "$tmp/hw.missing"
bad "weight plan in dcp mode" "belong to --cp-mode dsa-cp" "${F[@]}" --o-proj layer-shard
bad "partial index layout in dsa-cp mode" "belongs to --cp-mode dcp" "${F[@]}" --cp-mode dsa-cp --index-layout partial:2
bad "dsa-cp + dcp, exact-topk on a replicated index" "needs '--index-layout sharded'" "${F[@]}" --cp-mode dsa-cp --index-layout replicated
bad "unknown plan" "unknown weight plan" "${F[@]}" --cp-mode dsa-cp --o-proj shard
bad "missing input" "in.missing" "$DSACP" forward --model "$tmp/m" --input "$tmp/in.missing" --output "$tmp/bad.st"
bad "missing model" "config.json" "$DSACP" generate --model "$tmp/none"

finish
