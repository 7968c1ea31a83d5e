#!/usr/bin/env bash
# `dsacp bench` smoke test: a tiny, fast run of every kernel whose JSON must have the documented
# shape (one object: machine, config, results[] of name/value/unit/ceiling_name/ceiling_value/
# ratio), the --model path, the human table, and one-line errors for bad flags. It checks the
# shape and the presence of the results, never the timings. A figure this machine cannot measure
# (the bf16-dot rows without AVX512-BF16) is a result whose unit says "n/a: why", with a null
# value and no ceiling.
set -u
DSACP=${DSACP:?set by CTest}
tmp=$(mktemp -d /tmp/dsacp-bench-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0
ok()   { passes=$((passes+1)); echo "ok   $1"; }
fail() { fails=$((fails+1)); echo "FAIL $1"; }

# check_json FILE THREADS NAME...: FILE holds exactly one JSON object of the bench shape whose
# results include every NAME (and decode_layer_speedup_<THREADS>t when THREADS > 1).
check_json() {
  local f=$1 threads=$2; shift 2
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$f" "$threads" "$@" <<'EOF'
import json, math, sys
path, threads, want = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
text = open(path).read()
doc, end = json.JSONDecoder().raw_decode(text.lstrip())
assert text.lstrip()[end:].strip() == "", "more than one JSON value on stdout"
assert isinstance(doc, dict) and set(doc) == {"machine", "config", "results"}, sorted(doc)
m = doc["machine"]
assert isinstance(m["cpu"], str) and isinstance(m["cores"], int) and m["cores"] >= 1, m
assert m["isa"] in ("scalar", "avx2", "avx512"), m
assert doc["config"]["threads"] == threads, doc["config"]
keys = {"name", "value", "unit", "ceiling_name", "ceiling_value", "ratio"}
names = []
for r in doc["results"]:
    assert set(r) == keys, r
    assert isinstance(r["name"], str) and isinstance(r["unit"], str), r
    if r["unit"].startswith("n/a: "):
        assert r["value"] is None and r["ceiling_name"] is None and r["ceiling_value"] is None, r
        assert r["ratio"] is None and len(r["unit"]) > 5, r
        names.append(r["name"])
        continue
    assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]) and r["value"] > 0, r
    if r["ceiling_name"] is None:
        assert r["ceiling_value"] is None and r["ratio"] is None, r
    else:
        assert isinstance(r["ceiling_name"], str), r
        assert isinstance(r["ceiling_value"], (int, float)) and r["ceiling_value"] > 0, r
        assert isinstance(r["ratio"], (int, float)) and r["ratio"] > 0, r
    names.append(r["name"])
assert len(names) == len(set(names)), "duplicate result names"
if threads > 1:
    want.append("decode_layer_speedup_%dt" % threads)
    if "decode_layer_deployed_time" in want:
        want += ["decode_layer_%s_speedup_%dt" % (mode, threads) for mode in ("deployed", "exact")]
missing = [w for w in want if w not in names]
assert not missing, "missing results: %s (have %s)" % (missing, names)
units = {r["name"]: r["unit"] for r in doc["results"]}
assert units.get("decode_layer_time", "ms") == "ms", units
EOF
  elif command -v jq >/dev/null 2>&1; then
    jq -e --argjson t "$threads" '(keys == ["config","machine","results"]) and (.config.threads == $t)
      and all(.results[]; (keys == ["ceiling_name","ceiling_value","name","ratio","unit","value"])
              and ((.value | type == "number") or ((.unit | startswith("n/a: ")) and .value == null
                                                   and .ceiling_name == null))
              and ((.ceiling_name == null) == (.ratio == null)))' "$f" >/dev/null || return 1
    for n in "$@"; do jq -e --arg n "$n" 'any(.results[]; .name == $n)' "$f" >/dev/null || { echo "missing $n"; return 1; }; done
  else
    for n in '"machine"' '"config"' '"results"' "$@"; do grep -q -- "$n" "$f" || { echo "missing $n"; return 1; }; done
  fi
}

# 1. Every kernel on the tiny preset, two threads.
all_names=(peak_fma_avx512 peak_bf16dot stream_copy stream_read sgemm_indexer sgemm_mla indexer_fp8 indexer_f32
           indexer_prefill16_fp8 topk_time sparse_mla linear_q_a linear_q_b linear_kv_a linear_o_proj
           linear_wq_b linear_all decode_layer_time decode_layer_step_time sparse_mla_deployed
           decode_layer_deployed_time decode_layer_exact_time decode_layer_deployed_vs_exact)
grep -q avx512f /proc/cpuinfo 2>/dev/null || all_names=("${all_names[@]:1}")
if "$DSACP" bench --preset tiny --context 300 --reps 1 --threads 2 --json >"$tmp/all.json" 2>"$tmp/err"; then
  if check_json "$tmp/all.json" 2 "${all_names[@]}" >"$tmp/why" 2>&1; then ok "bench --kernel all --json"
  else fail "bench --kernel all --json: $(tail -3 "$tmp/why")"; fi
else
  fail "bench --kernel all exited non-zero: $(cat "$tmp/err")"
fi

# 2. The layer from a model directory, a batch of 3 decode requests, one thread.
if "$DSACP" init-model --preset tiny --out "$tmp/m" --seed 3 --weights fp8 >/dev/null 2>"$tmp/err" &&
   "$DSACP" bench --model "$tmp/m" --context 100 --batch 3 --threads 1 --kernel layer --reps 1 --json \
       >"$tmp/layer.json" 2>"$tmp/err"; then
  if check_json "$tmp/layer.json" 1 decode_layer_time decode_layer_step_time >"$tmp/why" 2>&1; then
    ok "bench --model --kernel layer --batch 3"
  else fail "bench --model: $(tail -3 "$tmp/why")"; fi
else
  fail "bench --model exited non-zero: $(cat "$tmp/err")"
fi

# 3. The human table, the exact numerics and the scalar kernels.
if "$DSACP" bench --preset tiny --context 64 --reps 1 --threads 1 --kernel layer --numerics exact --isa scalar \
     >"$tmp/table" 2>"$tmp/err" && grep -q '^decode_layer_time .* ms ' "$tmp/table" && grep -q 'isa scalar' "$tmp/table"; then
  ok "bench human table (exact, scalar)"
else
  fail "bench human table: $(cat "$tmp/table" "$tmp/err")"
fi

# 4. The batched linear (blocked GEMM beside sgemm) and the layer prefill (against the roofline).
gemm_names=(sgemm_T16 gemm_f32_T16 gemm_bf16_T16 gemm_fp8_T16 sgemm_T256 gemm_fp8_T256 sgemm_T2048
            gemm_f32_T2048 gemm_bf16_T2048 gemm_fp8_T2048 peak_bf16dot gemm_bf16dot_T16 gemm_bf16dot_T256
            gemm_bf16dot_T2048 gemm_bf16fma_T16 gemm_bf16fma_T256 gemm_bf16fma_T2048
            linear_deployed_bf16_T16 linear_deployed_bf16_T2048 linear_deployed_fp8_T16 linear_deployed_fp8_T2048)
if "$DSACP" bench --preset tiny --kernel gemm --reps 1 --threads 1 --json >"$tmp/gemm.json" 2>"$tmp/err" &&
   check_json "$tmp/gemm.json" 1 "${gemm_names[@]}" >"$tmp/why" 2>&1; then
  ok "bench --kernel gemm --json"
else
  fail "bench --kernel gemm: $(cat "$tmp/err") $(tail -3 "$tmp/why" 2>/dev/null)"
fi
# ... and where the bf16-dot product cannot run (the scalar kernels, on any CPU): n/a rows.
if "$DSACP" bench --preset tiny --kernel gemm --isa scalar --reps 1 --threads 1 --json >"$tmp/gemm_s.json" 2>"$tmp/err" &&
   check_json "$tmp/gemm_s.json" 1 "${gemm_names[@]}" >"$tmp/why" 2>&1 &&
   [[ $(grep -A2 '"name": "gemm_bf16dot_T' "$tmp/gemm_s.json" | grep -c '"unit": "n/a: ') == 3 ]]; then
  ok "bench --kernel gemm --isa scalar: the bf16-dot rows say n/a"
else
  fail "bench --kernel gemm --isa scalar: $(cat "$tmp/err") $(tail -3 "$tmp/why" 2>/dev/null)"
fi
if "$DSACP" bench --preset tiny --kernel prefill --context 96 --reps 1 --threads 1 --json >"$tmp/pre.json" 2>"$tmp/err" &&
   check_json "$tmp/pre.json" 1 prefill_layer_time prefill_layer_tokens_per_s prefill_layer_gflops >"$tmp/why" 2>&1; then
  ok "bench --kernel prefill --json"
else
  fail "bench --kernel prefill: $(cat "$tmp/err") $(tail -3 "$tmp/why" 2>/dev/null)"
fi

# 5. Bad flags: one line on stderr naming the flag, exit status in 1..127, nothing on stdout.
expect_error() {
  local name=$1 pat=$2; shift 2
  "$DSACP" bench "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines; lines=$(wc -l <"$tmp/err")
  if (( rc == 0 || rc >= 128 )); then fail "$name: exit status $rc"
  elif (( lines != 1 )); then fail "$name: $lines lines on stderr"
  elif [[ -s $tmp/out ]]; then fail "$name: output on stdout"
  elif ! grep -qF -- "$pat" "$tmp/err"; then fail "$name: stderr lacks '$pat': $(cat "$tmp/err")"
  else ok "$name: $(cat "$tmp/err")"; fi
}
expect_error "unknown kernel" "--kernel" --preset tiny --kernel bogus
expect_error "zero context" "--context" --preset tiny --context 0
expect_error "non-numeric batch" "--batch" --preset tiny --batch x
expect_error "zero threads" "--threads" --preset tiny --threads 0
expect_error "zero reps" "--reps" --preset tiny --reps 0
expect_error "no preset nor model" "--preset" --context 10
expect_error "preset and model" "--model" --preset tiny --model "$tmp/m"
expect_error "unknown preset" "nope" --preset nope
expect_error "bad numerics" "--numerics" --preset tiny --numerics fast
expect_error "bad isa" "--isa" --preset tiny --isa sse9
expect_error "bad block size" "--block-size" --preset tiny --block-size 48
expect_error "unknown option" "--warmup" --preset tiny --warmup 3
expect_error "missing value" "--context" --preset tiny --context
expect_error "missing model dir" "$tmp/none" --model "$tmp/none"

echo "bench_smoke: $passes passed, $fails failed"
(( fails == 0 ))
