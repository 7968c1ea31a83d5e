#!/usr/bin/env bash
# dsacp run (issue 10): the same workload generates identical tokens on 1, 2 and 4 ranks for each
# decode strategy and layout and for DSA-CP (greedy, exact); a pool too small for the workload at
# once completes through queueing and preemption with the same tokens; bad inputs end every rank
# with one message and a non-zero status, no report file left.
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny-moe --out "$tmp/m" --seed 9 >/dev/null || { echo "init-model failed"; exit 1; }
W=(--model "$tmp/m" --requests 8 --prompt-len 10:70 --gen-len 3:9 --long-requests 1 --long-prompt-len 120:150
   --max-batch-tokens 48 --block-size 16 --no-realtime --seed 4)
tokens() { python3 -c "import json,sys; print(json.dumps([r['tokens'] for r in json.load(open(sys.argv[1]))['requests']]))" "$1"; }

"$DSACP" run "${W[@]}" --json "$tmp/ref.json" >"$tmp/log" 2>&1 || { echo "W=1 run failed: $(cat "$tmp/log")"; exit 1; }
ref=$(tokens "$tmp/ref.json")
[ -n "$ref" ] && pass "W=1 reference run" || fail "W=1 reference"
for n in 2 4; do
  for cfg in "--decode-strategy exact-topk" "--decode-strategy allgather-kv --cp-interleave 3" \
             "--decode-strategy replicated-index --kv-layout replicated" \
             "--cp-mode dsa-cp --o-proj auto --q-proj layer-shard"; do
    rm -f "$tmp/o.json"
    # shellcheck disable=SC2086
    if mpi "$n" "$DSACP" run "${W[@]}" $cfg --json "$tmp/o.json" --comm-report "$tmp/rep.json" >"$tmp/log" 2>&1 &&
       [ "$(tokens "$tmp/o.json")" = "$ref" ]; then
      pass "W=$n $cfg: identical tokens"
    else fail "W=$n $cfg: $(tail -n 5 "$tmp/log")"; fi
    # The planner predicted every collective of the serving loop's steps, per rank and phase.
    if r=$(python3 "$PLAN_MATCHES" "$tmp/rep.json" "$n"); then pass "W=$n $cfg: planner = counters and memory ($r)"
    else fail "W=$n $cfg: planner vs counters: $r"; fi
  done
done

# Seeded temperature / top-p sampling: the same draws on 1 and 2 ranks (a token's draw depends on
# its request and index only, never on the batch).
"$DSACP" run "${W[@]}" --temperature 0.8 --top-p 0.9 --json "$tmp/s1.json" >/dev/null 2>&1
if mpi 2 "$DSACP" run "${W[@]}" --temperature 0.8 --top-p 0.9 --json "$tmp/s2.json" >"$tmp/log" 2>&1 &&
   [ "$(tokens "$tmp/s1.json")" = "$(tokens "$tmp/s2.json")" ] && [ "$(tokens "$tmp/s1.json")" != "$ref" ]; then
  pass "sampled tokens identical on 1 and 2 ranks (and not the greedy ones)"
else fail "sampling: $(tail -n 3 "$tmp/log")"; fi

# Capacity: 6 blocks of 16 tokens cannot hold the workload at once.
rm -f "$tmp/o.json"
if mpi 2 "$DSACP" run "${W[@]}" --kv-blocks 6 --verify --json "$tmp/o.json" --comm-report "$tmp/rep.json" >"$tmp/log" 2>&1 &&
   python3 "$PLAN_MATCHES" "$tmp/rep.json" 2 >>"$tmp/log" &&
   [ "$(tokens "$tmp/o.json")" = "$ref" ] && grep -q 'Verify.*9 of 9' "$tmp/log"; then
  pre=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['preemptions'])" "$tmp/o.json")
  [ "$pre" -gt 0 ] && pass "small pool: $pre preemptions, same tokens, verified" || fail "small pool: no preemption counted"
else fail "small pool: $(tail -n 8 "$tmp/log")"; fi

# stop_ids: generation ends at (and keeps) the first stop token.
printf '{"prompt_ids": [3, 1, 4, 1, 5], "max_new_tokens": 6}\n' >"$tmp/nostop.jsonl"
"$DSACP" run --model "$tmp/m" --prompts "$tmp/nostop.jsonl" --no-realtime --json "$tmp/ns.json" >/dev/null 2>&1
first=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['requests'][0]['tokens'][0])" "$tmp/ns.json" 2>/dev/null)
printf '{"prompt_ids": [3, 1, 4, 1, 5], "max_new_tokens": 6, "stop_ids": [%s]}\n' "${first:-0}" >"$tmp/stop.jsonl"
if [ -n "$first" ] && "$DSACP" run --model "$tmp/m" --prompts "$tmp/stop.jsonl" --no-realtime --json "$tmp/st.json" >/dev/null 2>&1 &&
   [ "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['requests'][0]['tokens'])" "$tmp/st.json")" = "[$first]" ]; then
  pass "stop_ids end generation at the stop token"
else fail "stop_ids: first token '$first', $(cat "$tmp/st.json" 2>&1 | tail -3)"; fi

# JSON report fields (vllm bench serve's names).
if python3 - "$tmp/ref.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ["completed", "request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
          "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "mean_e2el_ms", "steps", "requests"]:
    assert k in r, k
assert r["completed"] == 9 and len(r["requests"]) == 9
PY
then pass "report fields"; else fail "report fields"; fi

# Bad inputs.
bad() {
  local name=$1 want=$2 n=$3; shift 3
  rm -f "$tmp/bad.json"
  if [ "$n" = 1 ]; then "$@" --json "$tmp/bad.json" >"$tmp/log" 2>&1; else mpi "$n" "$@" --json "$tmp/bad.json" >"$tmp/log" 2>&1; fi
  local st=$?
  if [ $st -ne 0 ] && [ $st -ne 124 ] && grep -q -- "$want" "$tmp/log" && [ ! -e "$tmp/bad.json" ] &&
     [ "$(grep -c '^dsacp run' "$tmp/log")" = 1 ] && ! grep -q 'MPI_ABORT\|[Bb]acktrace\|Signal:' "$tmp/log"; then
    pass "$name"
  else fail "$name (status $st): $(cat "$tmp/log")"; fi
}
printf '{"prompt_ids": [1, 2, 3]}\n{"prompt_ids": [1, 2,\n' >"$tmp/broken.jsonl"
printf '{"prompt_ids": [1, 2, 999999]}\n' >"$tmp/vocab.jsonl"
python3 -c "import json; print(json.dumps({'prompt_ids': [1] * 5000}))" >"$tmp/long.jsonl"
: >"$tmp/empty.jsonl"
R=("$DSACP" run --model "$tmp/m" --no-realtime)
bad "malformed JSONL names the line" "line 2" 2 "${R[@]}" --prompts "$tmp/broken.jsonl"
bad "token id outside the vocabulary" "outside the vocabulary" 2 "${R[@]}" --prompts "$tmp/vocab.jsonl"
bad "prompt beyond max_position_embeddings" "max_position_embeddings" 2 "${R[@]}" --prompts "$tmp/long.jsonl"
bad "zero requests" "zero requests" 2 "${R[@]}" --requests 0
bad "empty prompts file" "no requests" 1 "${R[@]}" --prompts "$tmp/empty.jsonl"
bad "pool too small for one request" "does not fit the KV pool" 2 "${R[@]}" --requests 4 --prompt-len 8:200 --gen-len 1 --kv-blocks 1 --block-size 16
bad "pool below the shortest request (before generating)" "cannot hold the shortest request" 2 "${R[@]}" --requests 2 --prompt-len 200 --kv-blocks 1 --block-size 16
bad "conflicting workload flags" "conflicts" 1 "${R[@]}" --prompts "$tmp/vocab.jsonl" --requests 3
bad "conflicting pool flags" "at most one" 1 "${R[@]}" --kv-blocks 4 --kv-memory 1M
bad "both model and preset" "exactly one" 1 "$DSACP" run --model "$tmp/m" --preset tiny

finish
