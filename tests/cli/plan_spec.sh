#!/usr/bin/env bash
# `dsacp plan --speculative-config JSON [--spec-acceptance-rate A]`: speculative decoding priced per
# strategy (docs/planning.md, "Speculative decoding"): the section's table and its JSON, the
# round's expected tokens E = (1 - A^(k+1)) / (1 - A), n-gram drafts with no draft step, the MTP
# layer's KV in the held memory, and every bad value refused with one line naming the flag (exit 2).
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:-$(dirname "$0")/../..}
H200="$SRC/hardware/h200-nvlink8.json"
base=(plan --preset v32 --context 32768 --batch 8 --cp 8 --hardware "$H200")

if out=$("$DSACP" "${base[@]}" --speculative-config '{"method":"mtp","num_speculative_tokens":2}' --json "$tmp/s.json" 2>&1) \
   && grep -q '^speculative decoding: mtp, k = 2 drafts, acceptance 0.7 (MTP.s default' <<<"$out" \
   && python3 - "$tmp/s.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))['speculative']
assert (s['method'], s['num_speculative_tokens'], s['acceptance'], s['acceptance_default']) == ('mtp', 2, 0.7, True), s
assert len(s['strategies']) >= 5
for r in s['strategies']:
    E = 1 + 0.7 + 0.49
    assert abs(r['tokens_per_step'] - E) < 1e-9, r
    assert r['t_catchup'] > 0 and r['t_chain'] > 0 and r['t_verify'] > r['tpot'] > 0, r
    assert abs(r['tpot_spec'] - (r['t_verify'] + r['t_catchup'] + r['t_chain']) / E) < 1e-12, r
    assert r['mtp_kv_bytes_per_rank'] > 0
PY
then pass "plan --speculative-config mtp k=2: the section, E[tokens] = 2.19, verify + catch-up + chain per strategy"
else fail "plan --speculative-config mtp: $out"; fi

if "$DSACP" "${base[@]}" --speculative-config '{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":4,"prompt_lookup_min":2}' \
     --spec-acceptance-rate 1 --json "$tmp/n.json" >"$tmp/out" 2>&1 && python3 - "$tmp/n.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))['speculative']
for r in s['strategies']:
    assert r['tokens_per_step'] == 4 and r['t_catchup'] == 0 and r['t_chain'] == 0, r
    assert abs(r['tpot_spec'] - r['t_verify'] / 4) < 1e-12, r
PY
then pass "plan --speculative-config ngram k=3 at acceptance 1: 4 tokens per round, no draft step"
else fail "plan --speculative-config ngram: $(cat "$tmp/out")"; fi

# the MTP layer's KV held beside the target's 61 layers
"$DSACP" "${base[@]}" --json "$tmp/p.json" >/dev/null 2>&1
"$DSACP" "${base[@]}" --speculative-config '{"method":"mtp","num_speculative_tokens":1}' --json "$tmp/m.json" >/dev/null 2>&1
if python3 - "$tmp/p.json" "$tmp/m.json" <<'PY'
import json, sys
p, m = (json.load(open(f))['strategies'] for f in sys.argv[1:3])
for a, b in zip(p, m):
    kv = 8 * a['kv_bytes_per_rank']
    assert abs(b['held_per_rank'] - a['held_per_rank'] - kv) <= 1e-6 * kv, (a['strategy'], a['held_per_rank'], b['held_per_rank'])
PY
then pass "plan with mtp: held memory counts the MTP layer's KV (62 layers)"
else fail "plan with mtp: held memory"; fi

refuse() { # flag args...: exit 2 and one line naming the flag
  local flag=$1; shift
  local out rc=0
  out=$("$DSACP" "${base[@]}" "$@" 2>&1) || rc=$?
  if (( rc == 0 )); then fail "$flag accepted: $*"; return; fi
  if (( rc == 2 )) && (( $(wc -l <<<"$out") == 1 )) && grep -q -- "--$flag" <<<"$out"; then pass "refused: $*"
  else fail "$flag ($rc): $out"; fi
}
refuse speculative-config --speculative-config '{"method":"eagle","num_speculative_tokens":2}'
refuse speculative-config --speculative-config '{"method":"mtp","num_speculative_tokens":0}'
refuse speculative-config --speculative-config '{"method":"mtp"}'
refuse speculative-config --speculative-config '{"num_speculative_tokens":2}'
refuse speculative-config --speculative-config '{"method":"mtp","num_speculative_tokens":2,"draft_model":"x"}'
refuse speculative-config --speculative-config 'mtp'
refuse speculative-config --speculative-config '{"method":"ngram","num_speculative_tokens":2}'
refuse spec-acceptance-rate --speculative-config '{"method":"mtp","num_speculative_tokens":2}' --spec-acceptance-rate 1.5
refuse spec-acceptance-rate --spec-acceptance-rate 0.5
# a model without the MTP layer: mtp refused, ngram priced
if "$DSACP" init-model --preset tiny --no-mtp --out "$tmp/nomtp" >/dev/null 2>&1 \
   && ! out=$("$DSACP" plan --model "$tmp/nomtp" --hardware "$H200" \
               --speculative-config '{"method":"mtp","num_speculative_tokens":1}' 2>&1) \
   && grep -q "the model has no MTP layer" <<<"$out" \
   && "$DSACP" plan --model "$tmp/nomtp" --hardware "$H200" --speculative-config '{"method":"ngram","num_speculative_tokens":2}' \
        --spec-acceptance-rate 0.4 >/dev/null 2>&1; then
  pass "a model without the MTP layer: mtp refused, ngram priced"
else fail "no MTP layer: $out"; fi
finish
