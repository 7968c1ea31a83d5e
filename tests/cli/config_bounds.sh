#!/usr/bin/env bash
# Crafted config.json files next to a valid checkpoint (issue 7, defects 1, 3 and 8): `inspect`
# must refuse each with a one-line error naming the config file and the field, a non-zero exit
# below 128 (no crash, no abort, no sanitizer report), and quickly (nothing sized from the
# absurd value is allocated).
set -u
. "$(dirname "$0")/lib/common.sh"

EXPECT_MAX_S=20 # nothing sized from an absurd value is allocated

"$DSACP" init-model --preset tiny-moe --out "$tmp/good" --seed 1 >/dev/null || { echo "init-model failed"; exit 1; }
"$DSACP" inspect --model "$tmp/good" >/dev/null || { echo "FAIL the unmodified model does not inspect"; exit 1; }

# mk NAME SED_EXPR...: a copy of the good model whose config.json is edited by sed.
mk() {
  local d=$tmp/$1; shift
  rm -rf "$d"; cp -r "$tmp/good" "$d"
  local e; for e in "$@"; do sed -i "$e" "$d/config.json"; done
  grep -q . "$d/config.json" || { echo "mk: empty config"; exit 1; }
}
# add NAME 'KEY: VALUE': a copy with one more top-level field.
add() { mk "$1" "1a\\  $2,"; }

# Defect 1: 2000 layers with a 2000-entry mlp_layer_types (used to corrupt the heap: SIGABRT).
types=$(for i in $(seq 2000); do printf '"sparse",'; done); types=${types%,}
mk layers 's/"num_hidden_layers": 2,/"num_hidden_layers": 2000,/'
sed -i "1a\\  \"mlp_layer_types\": [$types]," "$tmp/layers/config.json"
expect_error "2000 layers + mlp_layer_types" "layers/config.json" "'num_hidden_layers'" -- "$DSACP" inspect --model "$tmp/layers"
mk layers513 's/"num_hidden_layers": 2,/"num_hidden_layers": 513,/'
expect_error "513 layers" "layers513/config.json" "'num_hidden_layers'" -- "$DSACP" inspect --model "$tmp/layers513"

# Defect 3: values beyond any real model, products that overflowed int64, experts vs checkpoint.
mk experts 's/"n_routed_experts": 8,/"n_routed_experts": 100000000,/'
expect_error "1e8 experts" "experts/config.json" "'n_routed_experts'" -- "$DSACP" inspect --model "$tmp/experts"
mk heads 's/"num_attention_heads": 4,/"num_attention_heads": 4294967296,/' 's/"qk_nope_head_dim": 32,/"qk_nope_head_dim": 4294967296,/'
expect_error "heads x head dim overflow" "heads/config.json" "'num_attention_heads'" -- "$DSACP" inspect --model "$tmp/heads"
mk topk 's/"index_topk": 32,/"index_topk": 8192,/'
expect_error "index_topk > max_position_embeddings" "topk/config.json" "'index_topk'" "max_position_embeddings" -- "$DSACP" inspect --model "$tmp/topk"
mk vocab 's/"vocab_size": 512,/"vocab_size": 1099511627776,/'
expect_error "vocab 2^40" "vocab/config.json" "'vocab_size'" -- "$DSACP" inspect --model "$tmp/vocab"
mk manyexp 's/"n_routed_experts": 8,/"n_routed_experts": 4096,/' 's/"num_hidden_layers": 2,/"num_hidden_layers": 512,/' \
  's/"num_nextn_predict_layers": 1,/"num_nextn_predict_layers": 0,/' # 512 layers leave no slot for the MTP layer
expect_error "512 layers x 4096 experts vs a 111-tensor file" "manyexp/config.json" "'n_routed_experts'" "checkpoint" -- "$DSACP" inspect --model "$tmp/manyexp"

# Defect 8: fields that change the math, with values dsacp does not implement.
add bias '"attention_bias": true'
expect_error "attention_bias true" "bias/config.json" "'attention_bias'" -- "$DSACP" inspect --model "$tmp/bias"
add mlpbias '"mlp_bias": true'
expect_error "mlp_bias true" "mlpbias/config.json" "'mlp_bias'" -- "$DSACP" inspect --model "$tmp/mlpbias"
mk kvheads 's/"num_key_value_heads": 4,/"num_key_value_heads": 1,/'
expect_error "grouped KV heads" "kvheads/config.json" "'num_key_value_heads'" -- "$DSACP" inspect --model "$tmp/kvheads"
add interleave '"rope_interleave": false'
expect_error "rope_interleave false" "interleave/config.json" "'rope_interleave'" -- "$DSACP" inspect --model "$tmp/interleave"
mk act 's/"hidden_act": "silu"/"hidden_act": "gelu"/'
expect_error "hidden_act gelu" "act/config.json" "'hidden_act'" -- "$DSACP" inspect --model "$tmp/act"
mk trunc 's/"type": "yarn",/"type": "yarn", "truncate": false,/'
expect_error "yarn truncate false" "trunc/config.json" "truncate" -- "$DSACP" inspect --model "$tmp/trunc"

# The values dsacp implements still load (transformers writes them out explicitly).
add okbias '"attention_bias": false'
if "$DSACP" inspect --model "$tmp/okbias" >/dev/null 2>"$tmp/err"; then passes=$((passes+1)); echo "ok   attention_bias false loads";
else fails=$((fails+1)); echo "FAIL attention_bias false: $(cat "$tmp/err")"; fi

finish
