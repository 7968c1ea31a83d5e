#!/usr/bin/env bash
# dsacp run, forward, generate and make-input against bad invocations and unwritable outputs
# (issue 20 items 3, 6, 7, 10, 11, 12, 13, 15):
#  - the exit status policy: 2 for a bad invocation (flags, and files or values the user named:
#    model directory, prompts, forward input, preset, sizes), 1 for a run that failed after it
#    started; one line on stderr, nothing on stdout, no output file;
#  - outputs that cannot be created (missing directory, /dev/full, a directory, a symlink) are
#    refused before any work, quickly, with nothing printed (exit 1: an output that cannot be
#    written is a failed run, as for plan);
#  - the prompts file is read by length (a NUL byte names its line); token ids (prompt_ids,
#    stop_ids) must lie in [0, vocab); the synthetic ranges are checked against the model first;
#  - one strict number grammar for every numeric flag; conflicting flags are refused;
#  - latencies are measured from arrival on the run's clock (>= 0 under --no-realtime);
#  - the JSON report is valid JSON whatever the model path holds;
#  - --preset honours TMPDIR and leaves nothing behind (normal end, SIGTERM, under mpirun).
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny --out "$tmp/m" --seed 5 >/dev/null || { echo "init-model failed"; exit 1; }
"$DSACP" make-input --out "$tmp/in.safetensors" --requests 2 --length 12 --vocab 512 --chunk 5 --seed 4 >/dev/null \
  || { echo "make-input failed"; exit 1; }
R=("$DSACP" run --model "$tmp/m" --no-realtime)

# refused (lib/common.sh): besides its checks, no file may appear at $tmp/o.json or $tmp/o.st.
REFUSED_NO_FILES=("$tmp/o.json" "$tmp/o.st")
# A workload that takes minutes: a refusal must come before it starts.
BIG=(--requests 64 --prompt-len 3000:3500 --gen-len 200:300)

# ---- item 3: a NUL byte in the prompts file ----
printf '{"prompt_ids": [1, 2, 3]}\n{"prompt_ids": [4, 5]}\0\n{"prompt_ids": [6]}\n' >"$tmp/nul.jsonl"
refused "NUL byte in --prompts" 2 "nul.jsonl" "line 2" "NUL" -- "${R[@]}" --prompts "$tmp/nul.jsonl" --json "$tmp/o.json"

# ---- item 11: token ids and numbers ----
printf '{"prompt_ids": [1, 2, 3], "stop_ids": [4294967774]}\n' >"$tmp/stop_big.jsonl"
refused "stop_ids above INT32_MAX" 2 "stop_big.jsonl" "line 1" "stop_ids[0]" "vocabulary" -- "${R[@]}" --prompts "$tmp/stop_big.jsonl"
printf '{"prompt_ids": [1]}\n{"prompt_ids": [1, 2], "stop_ids": [3, 512]}\n' >"$tmp/stop_v.jsonl"
refused "stop_ids = vocab_size" 2 "stop_v.jsonl" "line 2" "stop_ids[1] = 512" -- "${R[@]}" --prompts "$tmp/stop_v.jsonl"
printf '{"prompt_ids": [1, -1]}\n' >"$tmp/neg.jsonl"
refused "negative prompt id" 2 "neg.jsonl" "prompt_ids[1]" -- "${R[@]}" --prompts "$tmp/neg.jsonl"
for v in nan 4abc 0x10 inf -1 " 1"; do
  refused "--arrival-rate '$v'" 2 "--arrival-rate" -- "${R[@]}" --requests 2 --arrival-rate "$v"
done
if "${R[@]}" --requests 2 --prompt-len 8 --gen-len 2 --arrival-rate 0.0 >/dev/null 2>"$tmp/err"; then
  pass "--arrival-rate 0.0 accepted"; else fail "--arrival-rate 0.0 refused: $(cat "$tmp/err")"; fi
refused "--top-p 0.5x" 2 "--top-p" -- "${R[@]}" --requests 2 --top-p 0.5x
refused "--top-p 0" 2 "--top-p" -- "${R[@]}" --requests 2 --top-p 0
refused "--temperature nan" 2 "--temperature" -- "${R[@]}" --requests 2 --temperature nan
refused "--kv-memory 0.5" 2 "--kv-memory" -- "${R[@]}" --requests 2 --kv-memory 0.5
refused "--kv-memory 1Mx" 2 "--kv-memory" -- "${R[@]}" --requests 2 --kv-memory 1Mx
refused "--kv-memory 0x100M" 2 "--kv-memory" -- "${R[@]}" --requests 2 --kv-memory 0x100M
printf '{"prompt_ids": [1, 2, 3]}\n' >"$tmp/p.jsonl"
refused "--prompts with --long-requests" 2 "--long-requests" "conflicts" -- "${R[@]}" --prompts "$tmp/p.jsonl" --long-requests 2
refused "--prompts with --long-prompt-len" 2 "--long-prompt-len" "conflicts" -- "${R[@]}" --prompts "$tmp/p.jsonl" --long-prompt-len 100:200
refused "--prompts with a --gen-len range" 2 "--gen-len" -- "${R[@]}" --prompts "$tmp/p.jsonl" --gen-len 2:9

# ---- item 10: ranges against the model before anything is generated ----
EXPECT_MAX_S=5
refused "--prompt-len beyond max_position_embeddings" 2 "max_position_embeddings" -- \
  "${R[@]}" --requests 1048576 --prompt-len 16777216
refused "workload too large in total" 2 "prompt tokens" -- "${R[@]}" --requests 1048576 --prompt-len 4000 --gen-len 1
refused "--long-prompt-len beyond max_position_embeddings" 2 "--long-prompt-len" "max_position_embeddings" -- \
  "${R[@]}" --requests 1 --long-requests 1 --long-prompt-len 5000
python3 -c "import json; print(json.dumps({'prompt_ids': [1] * 4000, 'max_new_tokens': 200}))" >"$tmp/long.jsonl"
refused "prompt + max_new_tokens beyond max_position_embeddings" 2 "long.jsonl" "line 1" "max_position_embeddings" -- \
  "${R[@]}" --prompts "$tmp/long.jsonl"

# ---- item 15: block size, same file, presets, bad files: exit 2 ----
refused "--block-size larger than any request" 2 "--block-size" "max_position_embeddings" -- \
  "${R[@]}" --requests 2 --prompt-len 8 --block-size 1048576
refused "forward --block-size larger than any request" 2 "--block-size" "max_position_embeddings" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/o.st" --block-size 1048576
refused "generate --block-size larger than any request" 2 "--block-size" "max_position_embeddings" -- \
  "$DSACP" generate --model "$tmp/m" --prompt-len 4 --new-tokens 1 --block-size 1048576
refused "--kv-blocks too few for one request" 2 "does not fit" -- \
  "${R[@]}" --requests 4 --prompt-len 8:200 --gen-len 1 --kv-blocks 1 --block-size 16
refused "--preset nope" 2 "nope" -- "$DSACP" run --preset nope
refused "missing model directory" 2 "nosuch" -- "$DSACP" run --model "$tmp/nosuch" --requests 1
refused "missing prompts file" 2 "none.jsonl" -- "${R[@]}" --prompts "$tmp/none.jsonl"
printf '{"prompt_ids": [1, 2,\n' >"$tmp/broken.jsonl"
refused "malformed prompts file" 2 "broken.jsonl" "line 1" -- "${R[@]}" --prompts "$tmp/broken.jsonl"
refused "forward: malformed input" 2 "p.jsonl" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/p.jsonl" --output "$tmp/o.st"
refused "forward: missing model" 2 "nosuch" -- \
  "$DSACP" forward --model "$tmp/nosuch" --input "$tmp/in.safetensors" --output "$tmp/o.st"
refused "forward: missing --context-hardware profile" 2 "--context-hardware" "hw.missing" "cannot open" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/o.st" \
  --context-path auto --context-hardware "$tmp/hw.missing"
refused "run: --context-hardware not a profile" 2 "--context-hardware" "broken.jsonl" -- \
  "${R[@]}" --requests 1 --prompt-len 4 --context-path auto --context-hardware "$tmp/broken.jsonl"
refused "generate: missing model" 2 "nosuch" -- "$DSACP" generate --model "$tmp/nosuch"
cp "$tmp/in.safetensors" "$tmp/keep.safetensors"
refused "forward --input X --output X" 2 "same file" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/keep.safetensors" --output "$tmp/keep.safetensors"
refused "forward --output X over ./X" 2 "same file" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/keep.safetensors" --output "$tmp/./keep.safetensors"
ln "$tmp/keep.safetensors" "$tmp/hard.safetensors"
refused "forward --output a hard link of the input" 2 "same file" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/keep.safetensors" --output "$tmp/hard.safetensors"
cmp -s "$tmp/in.safetensors" "$tmp/keep.safetensors" && pass "the input is intact" || fail "forward replaced its input"
refused "run --json over --prompts" 2 "same file" -- "${R[@]}" --prompts "$tmp/p.jsonl" --json "$tmp/p.jsonl"
refused "run --json and --comm-report the same file" 2 "same file" -- "${R[@]}" --requests 1 --json "$tmp/o.json" --comm-report "$tmp/o.json"
unset EXPECT_MAX_S

# ---- item 6: outputs that cannot be created, refused before any work with nothing printed ----
mkdir "$tmp/adir"; ln -s "$tmp/victim" "$tmp/alink"; echo precious >"$tmp/victim"
for target in "$tmp/nodir/o.json" /dev/full "$tmp/adir" "$tmp/alink"; do
  refused "run --json $target" 1 "--json" "$target" -- "${R[@]}" "${BIG[@]}" --json "$target"
  refused "run --comm-report $target" 1 "--comm-report" "$target" -- "${R[@]}" "${BIG[@]}" --comm-report "$target"
  refused "forward --output $target" 1 "--output" "$target" -- \
    "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$target"
  refused "forward --comm-report $target" 1 "--comm-report" "$target" -- \
    "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/o.st" --comm-report "$target"
  refused "generate --comm-report $target" 1 "--comm-report" "$target" -- \
    "$DSACP" generate --model "$tmp/m" --prompt-len 2000 --new-tokens 2000 --comm-report "$target"
  refused "make-input --out $target" 1 "--out" "$target" -- "$DSACP" make-input --out "$target"
  refused "bench --kernel cp --comm-report $target" 1 "--comm-report" "$target" -- \
    "$DSACP" bench --kernel cp --model "$tmp/m" --context 3000 --batch 8 --reps 50 --comm-report "$target"
done
refused "bench --comm-report without --kernel cp" 2 "--comm-report" "--kernel cp" -- \
  "$DSACP" bench --preset tiny --kernel mla --comm-report "$tmp/o.json"
[[ -d $tmp/adir && -L $tmp/alink && $(cat "$tmp/victim") == precious && ! -e $tmp/nodir ]] \
  && pass "the refused targets are as they were" || fail "a refused target changed"
# Under mpirun (Open MPI adds its own lines about the exit status): status 1, nothing on stdout,
# one line from dsacp, quickly.
t0=$SECONDS
mpi 2 "${R[@]}" "${BIG[@]}" --json /dev/full >"$tmp/out" 2>"$tmp/err"; st=$?
if (( st == 1 && SECONDS - t0 <= 20 )) && [[ ! -s $tmp/out ]] && (( $(grep -c '^dsacp run' "$tmp/err") == 1 )) &&
   grep -q -- '--json: /dev/full' "$tmp/err" && ! grep -q 'MPI_ABORT\|[Bb]acktrace\|Signal:' "$tmp/err"; then
  pass "run --json /dev/full under mpirun: refused at once on every rank"
else fail "run --json /dev/full under mpirun (status $st, $((SECONDS - t0)) s): $(head -c 600 "$tmp/err")"; fi
left=$(find "$tmp" -name '*.tmp.*' | head -n3)
[[ -z $left ]] && pass "no temporaries left" || fail "temporaries left: $left"

# ---- item 7: latencies from the arrival on the run's clock ----
printf '{"prompt_ids": [1, 2, 3], "arrival_s": 100, "max_new_tokens": 3}\n{"prompt_ids": [4, 5], "arrival_s": 50}\n' \
  >"$tmp/late.jsonl"
if timeout 60 "${R[@]}" --prompts "$tmp/late.jsonl" --gen-len 2 --json "$tmp/late.json" >/dev/null 2>"$tmp/err" &&
   python3 - "$tmp/late.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
vals = [r[k] for k in r if k.endswith("_ms")] + [q[k] for q in r["requests"] for k in ("ttft_ms", "e2el_ms", "tpot_ms") if q[k] is not None]
assert all(v >= 0 for v in vals), vals
assert all(q["arrival_s"] == 0 for q in r["requests"]), r["requests"]
PY
then pass "--no-realtime with arrival_s 100: every latency >= 0"
else fail "--no-realtime latencies: $(cat "$tmp/err")"; fi

# ---- the report's attention line adds up; each step's phases add up to the step ----
if timeout 60 "${R[@]}" --requests 6 --prompt-len 20:200 --gen-len 4:8 --json "$tmp/ph.json" >"$tmp/out" 2>"$tmp/err" &&
   python3 - "$tmp/out" "$tmp/ph.json" <<'PY'
import json, re, sys
t = open(sys.argv[1]).read()
m = re.search(r"attention layer: ([0-9.]+) s .*projections ([0-9.]+) .*sparse MLA ([0-9.]+) \+ o_proj ([0-9.]+)\s+\+ set-up, staging and exchange waits ([0-9.]+)", t)
assert m, t
v = [float(x) for x in m.groups()]
assert abs(v[0] - sum(v[1:])) <= 0.021, v
for s in json.load(open(sys.argv[2]))["steps"]:
    assert abs(sum(s["phases_ms"].values()) - s["dur_ms"]) <= 1e-6 * max(1, s["dur_ms"]) + 1e-9, s
PY
then pass "the attention line and every step's phases add up"
else fail "phases do not add up: $(cat "$tmp/err")"; fi

# ---- item 12: the JSON report is valid whatever the model path holds ----
q="$tmp/we\"ird\\dir"
cp -r "$tmp/m" "$q"
if timeout 60 "$DSACP" run --model "$q" --requests 1 --prompt-len 4 --gen-len 2 --no-realtime --json "$tmp/w.json" >/dev/null 2>"$tmp/err" &&
   python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['config']['model'] == sys.argv[2]" "$tmp/w.json" "$q"; then
  pass "model path with a quote and a backslash: valid JSON naming it"
else fail "model path with a quote: $(cat "$tmp/err"; head -c 300 "$tmp/w.json" 2>/dev/null)"; fi

# ---- item 13: --preset honours TMPDIR and leaves nothing behind ----
mkdir "$tmp/td"
leftover() { find "$tmp/td" -maxdepth 1 -name 'dsacp-run-*' | head -n3; }
if TMPDIR=$tmp/td timeout 120 "$DSACP" run --preset tiny --requests 1 --prompt-len 4 --gen-len 1 --no-realtime >/dev/null 2>"$tmp/err" &&
   [[ -z $(leftover) ]]; then pass "--preset: nothing left in TMPDIR after a normal run"
else fail "--preset normal run: left $(leftover): $(cat "$tmp/err")"; fi
refused "--preset with TMPDIR missing: names it" 1 "$tmp/td/missing" -- env TMPDIR="$tmp/td/missing" "$DSACP" run --preset tiny --requests 1
if TMPDIR=$tmp/td mpi 2 "$DSACP" run --preset tiny --requests 2 --prompt-len 4 --gen-len 1 --no-realtime >/dev/null 2>"$tmp/err" &&
   [[ -z $(leftover) ]]; then pass "--preset under mpirun: nothing left"
else fail "--preset under mpirun: left $(leftover): $(tail -n 3 "$tmp/err")"; fi
# SIGTERM while the preset is being written (small: ~330 MB) or served: nothing left.
TMPDIR=$tmp/td "$DSACP" run --preset small --requests 50 --prompt-len 1000 --gen-len 100 --no-realtime >/dev/null 2>&1 &
pid=$!
seen=0
for _ in $(seq 1 100); do [[ -n $(leftover) ]] && { seen=1; break; }; sleep 0.05; done
kill -TERM "$pid" 2>/dev/null; wait "$pid"; st=$?
if (( seen && st == 143 )) && [[ -z $(leftover) ]]; then pass "--preset: SIGTERM leaves nothing in TMPDIR"
else fail "--preset SIGTERM: directory seen $seen, status $st, left $(leftover) $(ls "$(leftover)" 2>/dev/null | tr '\n' ' ')"; fi

# ---- an output never replaces an input (item 15): the model's files, the hardware profiles ----
cp -r "$tmp/m" "$tmp/mi"; cp "${DSACP_SOURCE_DIR:-$(dirname "$0")/../..}/hardware/h200-nvlink8.json" "$tmp/hw.json"
snap() { cat "$tmp/mi"/* "$tmp/hw.json" | md5sum; }
before=$(snap)
refused "run --json names the model's config" 2 "--json" "mi/config.json" "--model" -- \
  "$DSACP" run --model "$tmp/mi" --requests 1 --prompt-len 4 --gen-len 1 --no-realtime --json "$tmp/mi/config.json"
refused "forward --output names the model's weights" 2 "--output" "model.safetensors" -- \
  "$DSACP" forward --model "$tmp/mi" --input "$tmp/in.safetensors" --output "$tmp/mi/model.safetensors"
refused "generate --comm-report names the model's config (hard link)" 2 "--comm-report" "--model" -- \
  bash -c 'ln -f "$1/config.json" "$2/cfg.link" && exec "${@:3}"' _ "$tmp/mi" "$tmp" \
  "$DSACP" generate --model "$tmp/mi" --prompt-len 4 --new-tokens 1 --comm-report "$tmp/cfg.link"
refused "forward --comm-report names the --context-hardware profile" 2 "--comm-report" "--context-hardware" -- \
  "$DSACP" forward --model "$tmp/mi" --input "$tmp/in.safetensors" --output "$tmp/o.st" \
  --context-path auto --context-hardware "$tmp/hw.json" --comm-report "$tmp/hw.json"
refused "plan --json names the --hardware profile" 2 "--json" "--hardware" -- \
  "$DSACP" plan --model "$tmp/mi" --context 4096 --cp 4 --hardware "$tmp/hw.json" --json "$tmp/hw.json"
ln -f "$tmp/hw.json" "$tmp/hw-link.png"
refused "plan --plot names the --hardware profile (a hard link)" 2 "--plot" "--hardware" -- \
  "$DSACP" plan --model "$tmp/mi" --context 4096 --cp 4 --hardware "$tmp/hw.json" --plot "$tmp/hw-link.png"
if [ "$(snap)" = "$before" ]; then pass "the inputs are untouched"; else fail "an input was replaced"; fi
if mpi 2 "$DSACP" run --model "$tmp/mi" --requests 1 --prompt-len 4 --gen-len 1 --no-realtime \
     --comm-report "$tmp/mi/config.json" >"$tmp/out" 2>"$tmp/err"; then fail "W=2 run --comm-report over the config accepted"
elif grep -q "refusing to replace an input" "$tmp/err" && [ "$(snap)" = "$before" ]; then pass "W=2: an output over an input refused on every rank"
else fail "W=2 output over an input: $(head -c 600 "$tmp/err")"; fi

# ---- every command: an unknown preset or a bad model directory is the invocation (exit 2) ----
refused "bench --preset nope" 2 "nope" -- "$DSACP" bench --preset nope
refused "init-model --preset nope" 2 "nope" -- "$DSACP" init-model --preset nope --out "$tmp/o.st"
refused "bench --model missing" 2 "nosuch" -- "$DSACP" bench --model "$tmp/nosuch" --kernel layer
refused "bench --block-size larger than any request" 2 "--block-size" "max_position_embeddings" -- \
  "$DSACP" bench --model "$tmp/m" --kernel layer --context 64 --block-size 1048576 --reps 1

# ---- flags the chosen configuration would ignore are refused (item 11) ----
for f in "--lean-candidates 3" "--lean-merge values" "--partials fp32"; do
  # shellcheck disable=SC2086
  refused "$f without lean" 2 "${f%% *}" "lean" -- "${R[@]}" --requests 1 --prompt-len 4 --gen-len 1 $f
done
refused "--prefetch without a layer-shard plan" 2 "--prefetch" "layer-shard" -- "${R[@]}" --requests 1 --prefetch 3
refused "--top-p with greedy decoding" 2 "--top-p" "--temperature" -- "${R[@]}" --requests 1 --top-p 0.5
refused "--arrival-rate 1e-320 (its gaps overflow)" 2 "--arrival-rate" -- "${R[@]}" --requests 2 --arrival-rate 1e-320

# ---- second review: two outputs spelled differently, JSONL keys, the verify check's scope ----
refused "run --json ./X --comm-report X" 2 "names the same file" -- \
  bash -c 'cd "$1" && exec "${@:2}"' _ "$tmp" "${R[@]}" --requests 1 --prompt-len 4 --gen-len 1 --json ./o.json --comm-report o.json
refused "forward --output ./X --comm-report X" 2 "names the same file" -- \
  bash -c 'cd "$1" && exec "${@:2}"' _ "$tmp" "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" \
  --output ./o.st --comm-report o.st
refused "plan --json ./X.svg --plot X.svg" 2 "same file" -- \
  bash -c 'cd "$1" && exec "${@:2}"' _ "$tmp" "$DSACP" plan --model "$tmp/m" --context 1024 --cp 2 \
  --hardware "$tmp/hw.json" --json ./o.svg --plot o.svg
[ -e "$tmp/o.svg" ] && fail "plan left o.svg" || pass "plan wrote neither output"
printf '{"prompt_ids": [1, 2, 3], "max_new_tokens": 2, "max_new_tokens": 5}\n' >"$tmp/dup.jsonl"
refused "JSONL: a repeated key" 2 "dup.jsonl" "line 1" "duplicate" -- "${R[@]}" --prompts "$tmp/dup.jsonl"
printf '{"prompt_ids": [1, 2, 3]}\n{"prompt_ids": [1, 2, 3], "max_new_token": 5}\n' >"$tmp/typo.jsonl"
refused "JSONL: an unknown field (a typo)" 2 "typo.jsonl" "line 2" "max_new_token" -- "${R[@]}" --prompts "$tmp/typo.jsonl"
printf '{"prompt_ids": [1, 2, 3], "arrival_s": 1e300}\n' >"$tmp/far.jsonl"
refused "JSONL: arrival_s beyond 1e7 s (a silent wait)" 2 "far.jsonl" "arrival_s" -- "$DSACP" run --model "$tmp/m" --prompts "$tmp/far.jsonl"
refused "--verify with sampling in deployed numerics" 2 "--verify" "--temperature" -- \
  "${R[@]}" --requests 1 --numerics deployed --verify --temperature 1
refused "--kv-blocks below the shortest request, before generating" 2 "--kv-blocks" "shortest" -- \
  "${R[@]}" --requests 262144 --prompt-len 4000 --gen-len 1 --kv-blocks 1
refused "generate: a CP option the engine refuses" 2 "dsa-cp" -- "$DSACP" generate --model "$tmp/m" --prompt-len 4 --new-tokens 1 --o-proj tp
refused "forward: a CP option the engine refuses" 2 "dsa-cp" -- \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/o.st" --o-proj tp
for c in "inspect --model $tmp/m" "init-model --preset tiny --out $tmp/fullout" "make-input --out $tmp/fullin.st --requests 1 --length 4 --vocab 512"; do
  # shellcheck disable=SC2086
  "$DSACP" $c >/dev/full 2>"$tmp/err"; st=$?
  if [ $st = 1 ] && grep -q "stdout" "$tmp/err"; then pass "${c%% *} with stdout on /dev/full: exit 1"
  else fail "${c%% *} with stdout on /dev/full: status $st, $(head -c 300 "$tmp/err")"; fi
done

refused "--dcp-comm-backend under DSA-CP with replicated caches" 2 "--dcp-comm-backend" "no effect" -- \
  "${R[@]}" --requests 1 --cp-mode dsa-cp --kv-layout replicated --index-layout replicated --dcp-comm-backend a2a
refused "--decode-strategy under DSA-CP with replicated caches" 2 "--decode-strategy" "no effect" -- \
  "${R[@]}" --requests 1 --cp-mode dsa-cp --kv-layout replicated --index-layout replicated --decode-strategy lean
refused "--context-path with both caches replicated" 2 "--context-path" "no context is sharded" -- \
  "${R[@]}" --requests 1 --kv-layout replicated --index-layout replicated --decode-strategy replicated-index --context-path distributed

finish
