#!/usr/bin/env bash
# dsacp run --speculative-config (issue 23, docs/speculative.md): greedy tokens with ngram and mtp
# speculation identical to the run without it (and --verify's replay, which runs without it, says
# so), the report's spec-decode metrics with vLLM's names (text and --json), on one rank and two,
# and disaggregated (--pd 1:1, 2:2: ngram on the consumer group); bad configurations refused with
# one line naming the field.
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny --out "$tmp/m" --seed 31 >/dev/null || { echo "init-model failed"; exit 1; }
# {350, 351, 352}'s output loops under this model (tests/test_cp_spec_serve.c): ngram drafts there.
cat >"$tmp/p.jsonl" <<'JSONL'
{"prompt_ids": [350, 351, 352], "max_new_tokens": 24}
{"prompt_ids": [5, 9, 11, 40, 2, 7, 300, 12, 88, 1, 4, 6, 77, 123, 9, 10, 2, 3, 99, 100, 101, 7, 8, 5, 200, 31, 17, 46, 47], "max_new_tokens": 10}
{"prompt_ids": [61, 62, 63, 64, 65, 66, 67], "max_new_tokens": 12, "stop_ids": [274]}
JSONL
W=(--model "$tmp/m" --prompts "$tmp/p.jsonl" --max-batch-tokens 24 --block-size 8 --no-realtime --seed 5)
tokens() { python3 -c "import json,sys; print(json.dumps([r['tokens'] for r in json.load(open(sys.argv[1]))['requests']]))" "$1"; }
spec() { python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['speculative']; print(s[sys.argv[2]])" "$1" "$2"; }

"$DSACP" run "${W[@]}" --json "$tmp/ref.json" >"$tmp/log" 2>&1 || { echo "reference run failed: $(cat "$tmp/log")"; exit 1; }
ref=$(tokens "$tmp/ref.json")
[ "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['speculative'])" "$tmp/ref.json")" = None ] &&
  pass "without speculation the report's speculative is null" || fail "speculative not null without speculation"

NG='{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}'
MT='{"method": "deepseek_mtp", "num_speculative_tokens": 2}'
for cfg in "$NG" "$MT"; do
  for n in 1 $([ "$cfg" = "$MT" ] && echo 2); do
    rm -f "$tmp/o.json"
    if mpi "$n" "$DSACP" run "${W[@]}" --speculative-config "$cfg" --verify --json "$tmp/o.json" >"$tmp/log" 2>&1 &&
       [ "$(tokens "$tmp/o.json")" = "$ref" ]; then pass "W=$n $cfg: tokens identical to the run without it"
    else fail "W=$n $cfg: $(tail -n 5 "$tmp/log")"; fi
    grep -q "Verify (exact numerics: every token identical to one process): 3 of 3" "$tmp/log" &&
      pass "W=$n: --verify (without speculation) passes" || fail "W=$n: verify line: $(grep Verify "$tmp/log")"
    for k in "spec_decode_num_drafts / num_draft_tokens / num_accepted_tokens" "Draft acceptance rate" \
             "Mean acceptance length" "Tokens per target step" "Per-position acceptance rate" "Time per phase: draft"; do
      grep -qF "$k" "$tmp/log" || fail "W=$n: the report lacks '$k'"
    done
    d=$(spec "$tmp/o.json" spec_decode_num_drafts); t=$(spec "$tmp/o.json" spec_decode_num_draft_tokens)
    a=$(spec "$tmp/o.json" spec_decode_num_accepted_tokens); m=$(spec "$tmp/o.json" mean_acceptance_length)
    if python3 -c "import sys; d,t,a,m=int('$d'),int('$t'),int('$a'),float('$m'); sys.exit(not(d>0 and a<=t and abs(m-(1+a/d))<1e-9))"; then
      pass "W=$n: --json speculative: $d drafts, $t draft tokens, $a accepted, mean acceptance length $m"
    else fail "W=$n: --json speculative: $d $t $a $m"; fi
  done
done

# Disaggregated (--pd P:D): the consumer group speculates, the producer never does (with mtp it
# computes the prompt's MTP entries, which travel beside the target layers'); tokens identical to
# the run without speculation, --verify passes, the consumer's counters in the report, the link's
# counters equal to the formula.
for run in "1:1 $NG" "2:2 $NG" "1:2 $MT" "2:1 $MT"; do
  pd=${run%% *}; cfg=${run#* }
  rm -f "$tmp/o.json"
  if mpi $(( ${pd%:*} + ${pd#*:} )) "$DSACP" run "${W[@]}" --pd "$pd" --speculative-config "$cfg" --verify \
       --json "$tmp/o.json" >"$tmp/log" 2>&1 && [ "$(tokens "$tmp/o.json")" = "$ref" ] &&
     grep -q "Verify (exact numerics: every token identical to one process): 3 of 3" "$tmp/log" &&
     grep -q "equal on every rank" "$tmp/log" && grep -qF "Draft acceptance rate" "$tmp/log"; then
    d=$(spec "$tmp/o.json" spec_decode_num_drafts); a=$(spec "$tmp/o.json" acceptance_rate)
    ng=$([ "$cfg" = "$NG" ] && echo 1 || echo 0) # ngram accepts here, a random MTP layer need not
    if python3 -c "import sys; sys.exit(not(int('$d') > 0 and ($ng == 0 or float('$a') > 0)))"; then
      pass "--pd $pd $cfg: tokens identical to the run without it, $d drafts, acceptance $a"
    else fail "--pd $pd $cfg: speculative $d drafts, acceptance $a"; fi
  else fail "--pd $pd $cfg: $(tail -n 5 "$tmp/log")"; fi
done
# A consumer pool too small for the workload: the consumer preempts and recomputes (with mtp: its
# catch-up too) beside verify entries; --verify still passes.
for cfg in "$MT" "$NG"; do
  if mpi 3 "$DSACP" run --model "$tmp/m" --requests 12 --prompt-len 6:40 --gen-len 10:30 --no-realtime --seed 9 \
       --max-batch-tokens 32 --pd 1:2 --block-size 8 --kv-blocks 9 --speculative-config "$cfg" --verify >"$tmp/log" 2>&1 &&
     grep -q "Verify (exact numerics: every token identical to one process): 12 of 12" "$tmp/log"; then
    pass "--pd 1:2 $cfg, a tight consumer pool: verified ($(grep -o 'kv_consumer (W 2).*preemptions [0-9]*' "$tmp/log" | grep -o 'preemptions [0-9]*'))"
  else fail "--pd 1:2 $cfg, a tight consumer pool: $(tail -n 5 "$tmp/log")"; fi
done
# Speculation on one group only (an MPMD launch, mtp on the consumer alone): --speculative-config is
# a flag of the whole job, refused on every rank with one line of dsacp's naming it (mpirun adds its
# own lines); the library's own refusal of a one-sided MTP layer is test_cp_pd's.
mpi 1 "$DSACP" run "${W[@]}" --kv-role kv_producer : -np 1 "$DSACP" run "${W[@]}" --kv-role kv_consumer \
  --speculative-config "$MT" >"$tmp/out" 2>"$tmp/err"; st=$?
if [ $st -eq 2 ] && [ "$(grep -c '^dsacp run' "$tmp/err")" = 1 ] && grep -qF "'--speculative-config'" "$tmp/err"; then
  pass "speculation on the consumer group only refused: $(grep '^dsacp run' "$tmp/err")"
else fail "speculation on one group only: status $st, $(head -c 1500 "$tmp/err")"; fi

# Rejection sampling: draws seeded by (seed, request, token index), so one rank and two agree.
"$DSACP" run "${W[@]}" --speculative-config "$NG" --temperature 0.8 --json "$tmp/t1.json" >"$tmp/log" 2>&1
if mpi 2 "$DSACP" run "${W[@]}" --speculative-config "$NG" --temperature 0.8 --json "$tmp/t2.json" >"$tmp/log" 2>&1 &&
   [ "$(tokens "$tmp/t1.json")" = "$(tokens "$tmp/t2.json")" ] && [ "$(tokens "$tmp/t1.json")" != "$ref" ]; then
  pass "sampled tokens with speculation identical on 1 and 2 ranks (and not the greedy ones)"
else fail "sampling with speculation: $(tail -n 3 "$tmp/log")"; fi
if mpi 2 "$DSACP" run "${W[@]}" --pd 1:1 --speculative-config "$NG" --temperature 0.8 --json "$tmp/t3.json" >"$tmp/log" 2>&1 &&
   [ "$(tokens "$tmp/t1.json")" = "$(tokens "$tmp/t3.json")" ]; then
  pass "sampled tokens with speculation identical disaggregated (--pd 1:1: first token on the producer)"
else fail "sampling with speculation, --pd 1:1: $(tail -n 3 "$tmp/log")"; fi

expect_error "unknown field" "--speculative-config" "draft_model" -- \
  "$DSACP" run "${W[@]}" --speculative-config '{"method": "ngram", "num_speculative_tokens": 2, "draft_model": "x"}'
expect_error "unknown method" "--speculative-config" "method" "eagle" -- \
  "$DSACP" run "${W[@]}" --speculative-config '{"method": "eagle", "num_speculative_tokens": 2}'
expect_error "k out of range" "num_speculative_tokens" -- \
  "$DSACP" run "${W[@]}" --speculative-config '{"method": "ngram", "num_speculative_tokens": 40}'
expect_error "not JSON" "--speculative-config" "JSON" -- "$DSACP" run "${W[@]}" --speculative-config '{"method":'
"$DSACP" init-model --preset tiny --out "$tmp/nomtp" --seed 31 --no-mtp >/dev/null 2>&1 &&
  expect_error "mtp without an MTP layer" "MTP" -- \
    "$DSACP" run --model "$tmp/nomtp" --requests 1 --no-realtime --speculative-config "$MT"
finish
