#!/bin/bash
# dsacp serve's refusals with curl (docs/server.md, "Errors"), after its default address (loopback
# only): malformed JSON, wrong types, unknown and repeated fields, negative / zero / huge /
# fractional max_tokens, prompts past the model's max positions, empty prompts, invalid UTF-8,
# n = 2, ids out of range, chat turns out of order, unsupported features -> 400 with an OpenAI
# error object naming the field, and a completion served right after each; 404 (path, model),
# 405, 413 (Content-Length and chunked bodies), 401 with --api-key (/health without it),
# /metrics' names; a prompt that fits no KV pool (400, streamed too); three stalled clients closed
# after --timeout while others are served; 429 with --max-num-seqs 1 --max-waiting 1 (the gauges
# say 1 running, 1 waiting; disconnecting clients free them and count as aborts); SIGTERM while a
# request runs -> it finishes, new requests are not served, exit 0.
set -u
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/server.sh"

server_model
server_start main "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --max-body-bytes 65536 --timeout 2 || { finish; exit 1; }
URL=$SERVER_URL
# Loopback by default: the port is not reachable at the machine's other addresses.
[[ $URL == http://127.0.0.1:* ]] && pass "bound to 127.0.0.1 by default" || fail "default address: $URL"
other=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -m 1 '^[0-9.]*$' | grep -v '^127\.')
if [[ -n $other ]]; then
    code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$other:${URL##*:}/health")
    [[ $code == 000 ]] && pass "not reachable at $other" || fail "reachable at $other: $code"
fi
MAX=$(curl -s -m 10 "$URL/v1/models" | "$PY" -S -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["max_model_len"])')
[[ $MAX =~ ^[0-9]+$ ]] && pass "/v1/models: max_model_len $MAX" || { fail "/v1/models has no max_model_len"; MAX=4096; }

# check_error NAME CODE WANT FIELD: the last response ($tmp/body) is status WANT with a JSON error
# object (message, type) naming FIELD in "param" or the message (FIELD "-": none to name).
check_error() {
    local name=$1 code=$2 want=$3 field=$4 msg type param ok=1
    IFS=$'\t' read -r type param msg < <(jget "$tmp/body" '"\t".join([d["error"]["type"], d["error"].get("param") or "-", d["error"]["message"]])')
    [[ $param == - ]] && param=""
    [[ $code == "$want" ]] || ok=0
    [[ -n $msg && -n $type ]] || ok=0
    grep -qi '^content-type: *application/json' "$tmp/headers" || ok=0
    [[ $field == - || $param == "$field"* || $msg == *"$field"* ]] || ok=0
    if ((ok)); then pass "$name: $code ${param:+param=$param }$msg"
    else fail "$name: status $code (expected $want, naming '$field'): $(head -c 400 "$tmp/body")"; fi
}
served=0 unserved=0
# still_serving NAME: a small completion is answered with 200 after a refusal.
still_serving() {
    local code; code=$(post "$URL/v1/completions" '{"prompt": "a", "max_tokens": 2, "ignore_eos": true}')
    if [[ $code == 200 ]]; then served=$((served + 1)); else unserved=$((unserved + 1)); fail "after $1: a completion gave $code"; fi
}
# bad NAME WANT FIELD PATH BODY: POST BODY (@FILE: the file's bytes) to PATH is refused.
bad() {
    local code; code=$(post "$URL$4" "$5")
    check_error "$1" "$code" "$2" "$3"
    still_serving "$1"
}
C=/v1/completions H=/v1/chat/completions
ids() { "$PY" -S -c 'import sys; print(",".join(["5"] * int(sys.argv[1])))' "$1"; }
bad "malformed JSON" 400 - $C '{"prompt": "Hello", "max_tokens": '
bad "body not an object" 400 - $C '[1, 2, 3]'
bad "empty body" 400 - $C ''
bad "prompt of the wrong type" 400 prompt $C '{"prompt": 5}'
bad "max_tokens a string" 400 max_tokens $C '{"prompt": "a", "max_tokens": "5"}'
bad "temperature a string" 400 temperature $C '{"prompt": "a", "temperature": "hot"}'
bad "stream a string" 400 stream $C '{"prompt": "a", "stream": "yes"}'
bad "stop a number" 400 stop $C '{"prompt": "a", "stop": 5}'
bad "seed a float" 400 seed $C '{"prompt": "a", "seed": 1.5}'
bad "unknown field" 400 frobnicate $C '{"prompt": "a", "frobnicate": 1}'
bad "max_tokens -1" 400 max_tokens $C '{"prompt": "a", "max_tokens": -1}'
bad "max_tokens 0" 400 max_tokens $C '{"prompt": "a", "max_tokens": 0}'
bad "max_tokens 10^12" 400 max_tokens $C '{"prompt": "a", "max_tokens": 1000000000000}'
bad "max_tokens 1e300" 400 max_tokens $C '{"prompt": "a", "max_tokens": 1e300}'
bad "max_tokens 2.5" 400 max_tokens $C '{"prompt": "a", "max_tokens": 2.5}'
bad "max_tokens past the positions with the prompt" 400 max_tokens $C "{\"prompt\": [$(ids 100)], \"max_tokens\": $((MAX - 99))}"
bad "prompt past max positions" 400 prompt $C "{\"prompt\": [$(ids $((MAX + 1)))], \"max_tokens\": 1}"
bad "empty prompt" 400 prompt $C '{"prompt": "", "max_tokens": 2}'
bad "empty ids prompt" 400 prompt $C '{"prompt": [], "max_tokens": 2}'
bad "prompt as an array of strings" 400 prompt $C '{"prompt": ["a", "b"], "max_tokens": 2}'
bad "id out of range" 400 prompt $C '{"prompt": [5, 1000000], "max_tokens": 2}'
bad "negative id" 400 prompt $C '{"prompt": [5, -1], "max_tokens": 2}'
printf '{"prompt": "ab\xff\xfecd", "max_tokens": 2}' >"$tmp/utf8.json"
code=$(post "$URL$C" "@$tmp/utf8.json"); check_error "invalid UTF-8 in the prompt" "$code" 400 prompt
grep -qi 'utf-8' "$tmp/body" && pass "invalid UTF-8: the message says so" || fail "invalid UTF-8: $(head -c 300 "$tmp/body")"
still_serving "invalid UTF-8"
bad "duplicate field" 400 prompt $C '{"prompt": "a", "prompt": "b", "max_tokens": 2}'
bad "max_tokens past 64 bits" 400 max_tokens $C '{"prompt": "a", "max_tokens": 123456789012345678901234567890}'
bad "stream_options without stream" 400 stream_options $C '{"prompt": "a", "stream_options": {"include_usage": true}}'
bad "stop_token_ids out of range" 400 stop_token_ids $C '{"prompt": "a", "stop_token_ids": [1000000]}'
bad "lone surrogate escape" 400 - $C '{"prompt": "a\ud800b", "max_tokens": 2}'
bad "n 2" 400 n $C '{"prompt": "a", "n": 2}'
bad "temperature 3" 400 temperature $C '{"prompt": "a", "temperature": 3}'
bad "top_p 0" 400 top_p $C '{"prompt": "a", "top_p": 0}'
bad "logprobs" 400 logprobs $C '{"prompt": "a", "logprobs": 1}'
bad "chat without messages" 400 messages $H '{"max_tokens": 2}'
bad "chat messages a string" 400 messages $H '{"messages": "hi"}'
bad "chat unknown role" 400 messages $H '{"messages": [{"role": "robot", "content": "x"}]}'
bad "chat content a number" 400 messages $H '{"messages": [{"role": "user", "content": 5}]}'
bad "chat invalid UTF-8 content" 400 messages $H "$(printf '{"messages": [{"role": "user", "content": "\xc3"}]}')"
bad "chat two user turns in a row" 400 'messages[1]' $H '{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}'
bad "chat ending with the assistant" 400 messages $H '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}'
bad "chat tool role" 400 'messages[0]' $H '{"messages": [{"role": "tool", "content": "x"}]}'
bad "chat tools" 400 tools $H '{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}'
bad "chat thinking a string" 400 thinking $H '{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"thinking": "yes"}}'
bad "chat max_tokens -5" 400 max_tokens $H '{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}'
code=$(post "$URL$C" '{"model": "gpt-4", "prompt": "a", "max_tokens": 2}'); check_error "another model" "$code" 404 -
[[ $(jget "$tmp/body" 'd["error"].get("code")') == model_not_found ]] && pass "another model: code model_not_found" ||
    fail "another model: $(head -c 300 "$tmp/body")"
code=$(post "$URL$C" "{\"model\": \"$MODEL_NAME\", \"prompt\": \"a\", \"max_tokens\": 2}")
[[ $code == 200 ]] && pass "the served model's name is accepted" || fail "model $MODEL_NAME: $code"
((unserved == 0 && served > 30)) && pass "a completion was served after each of $served refusals" ||
    fail "served after $served refusals, not after $unserved"

# Routes and methods.
code=$(http GET "$URL/v1/nothing"); check_error "GET an unknown path" "$code" 404 -
code=$(http POST "$URL/v2/completions" -d '{}'); check_error "POST an unknown path" "$code" 404 -
code=$(http GET "$URL$C"); check_error "GET /v1/completions" "$code" 405 -
code=$(http POST "$URL/v1/models" -d '{}'); check_error "POST /v1/models" "$code" 405 -
code=$(http DELETE "$URL/health"); check_error "DELETE /health" "$code" 405 -
code=$(http GET "$URL/health"); [[ $code == 200 ]] && pass "GET /health: 200" || fail "GET /health: $code"
code=$(http GET "$URL/metrics")
if [[ $code == 200 ]] && grep -qi '^content-type: *text/plain' "$tmp/headers"; then pass "GET /metrics: 200 text/plain"
else fail "GET /metrics: $code $(grep -i content-type "$tmp/headers")"; fi
for m in vllm:num_requests_running vllm:num_requests_waiting vllm:kv_cache_usage_perc vllm:num_preemptions_total \
         vllm:prompt_tokens_total vllm:generation_tokens_total vllm:request_success_total \
         vllm:time_to_first_token_seconds_bucket vllm:inter_token_latency_seconds_bucket \
         vllm:time_per_output_token_seconds_bucket vllm:e2e_request_latency_seconds_count; do
    grep -q "^$m{.*model_name=\"$MODEL_NAME\"" "$tmp/body" || fail "/metrics lacks $m{model_name=\"$MODEL_NAME\"}"
done
grep -q '^vllm:request_success_total{.*finished_reason="length"' "$tmp/body" && pass "/metrics: vLLM's names, model_name label" ||
    fail "/metrics: no request_success_total{finished_reason=\"length\"}"

# Bodies past --max-body-bytes (65536): announced by Content-Length, and chunked without one.
"$PY" -S -c 'print("{\"prompt\": \"" + "a" * 100000 + "\"}")' >"$tmp/big.json"
code=$(post "$URL$C" "@$tmp/big.json"); check_error "body over --max-body-bytes" "$code" 413 -
code=$(post "$URL$C" "@$tmp/big.json" -H 'Transfer-Encoding: chunked'); check_error "chunked body over --max-body-bytes" "$code" 413 -
still_serving "413"
((unserved == 0)) && pass "served after the 413s"

# Stalled clients (--timeout 2).
PYTHONPATH=$PYDIR "$PY" "$PYDIR/stall.py" "$URL" 2 "$MODEL_NAME" >"$tmp/stall.log" 2>&1
py_checks "$tmp/stall.log"
server_stop "$SERVER_PID"
[[ $STOP_RC == 0 ]] && pass "main server: SIGTERM, exit 0" || fail "main server: exit status $STOP_RC"

# --api-key: every route but /health. (Its pool, 4 blocks of 64 tokens, also refuses what fits no
# pool: a 400 after submission, streamed or not.)
server_start auth "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --api-key s3cret --kv-blocks 4 --block-size 64 ||
    { finish; exit 1; }
AU=$SERVER_URL
KEY=(-H 'Authorization: Bearer s3cret')
code=$(post "$AU$C" "{\"prompt\": [$(ids 300)], \"max_tokens\": 2}" "${KEY[@]}"); check_error "a prompt larger than the KV pool" "$code" 400 -
code=$(post "$AU$C" "{\"prompt\": [$(ids 300)], \"max_tokens\": 2, \"stream\": true}" "${KEY[@]}")
check_error "a streamed prompt larger than the KV pool" "$code" 400 -
code=$(post "$AU$C" '{"prompt": "a", "max_tokens": 2}'); check_error "no key" "$code" 401 -
code=$(post "$AU$C" '{"prompt": "a", "max_tokens": 2}' -H 'Authorization: Bearer wrong'); check_error "wrong key" "$code" 401 -
code=$(post "$AU$C" '{"prompt": "a", "max_tokens": 2}' "${KEY[@]}")
[[ $code == 200 ]] && pass "the right key: 200" || fail "the right key: $code"
code=$(http GET "$AU/v1/models"); check_error "/v1/models without the key" "$code" 401 -
code=$(http GET "$AU/metrics"); check_error "/metrics without the key" "$code" 401 -
code=$(http GET "$AU/health"); [[ $code == 200 ]] && pass "/health without the key: 200" || fail "/health without the key: $code"
server_stop "$SERVER_PID"

# 429: one running, one waiting, the next ones refused; disconnecting clients free their places.
server_start busy "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --max-num-seqs 1 --max-waiting 1 --shutdown-timeout 20 ||
    { finish; exit 1; }
BU=$SERVER_URL BUSY_PID=$SERVER_PID
long='{"prompt": "a", "max_tokens": 4000, "ignore_eos": true, "stream": true}'
# gauge NAME VALUE: waits (10 s at most) until /metrics' NAME is VALUE.
gauge() { for _ in $(seq 200); do num_is "$(metric "$BU" "$1")" "$2" && return 0; sleep 0.05; done; return 1; }
# start I: a long streamed request in the background (curl's pid in qpids, its status in $tmp/qI.code).
qpids=()
start() {
    curl -s -N -m 60 -o "$tmp/q$1.body" -w '%{http_code}' -H 'Content-Type: application/json' -d "$long" "$BU$C" >"$tmp/q$1.code" &
    qpids+=($!)
}
start 1
gauge vllm:num_requests_running 1 && pass "/metrics: the first request runs" || fail "/metrics: running $(metric "$BU" vllm:num_requests_running)"
start 2
gauge vllm:num_requests_waiting 1 && pass "/metrics: the second one waits (--max-num-seqs 1)" ||
    fail "/metrics: waiting $(metric "$BU" vllm:num_requests_waiting)"
for i in 3 4; do
    code=$(post "$BU$C" "$long"); check_error "request $i with one running and one waiting (--max-waiting 1)" "$code" 429 -
done
for p in "${qpids[@]}"; do kill "$p" 2>/dev/null; done
wait "${qpids[@]}" 2>/dev/null
gauge vllm:num_requests_running 0 && gauge vllm:num_requests_waiting 0 && gauge vllm:kv_cache_usage_perc 0 &&
    pass "disconnected clients: running 0, waiting 0, KV 0" ||
    fail "after the disconnects: $(curl -s "$BU/metrics" | grep -E '^vllm:(num_requests|kv_cache)')"
curl -s -m 10 "$BU/metrics" | grep -q '^vllm:request_success_total{.*finished_reason="abort".* 2' &&
    pass "/metrics: the two disconnects counted as aborts" || fail "/metrics: $(curl -s "$BU/metrics" | grep success_total)"

# SIGTERM while a request runs: it finishes; later requests are not served; exit 0.
curl -s -m 60 -o "$tmp/term.body" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"prompt": "a", "max_tokens": 300, "ignore_eos": true}' "$BU$C" >"$tmp/term.code" &
tpid=$!
gauge vllm:num_requests_running 1 || fail "SIGTERM: the request never ran"
kill -TERM "$BUSY_PID"
sleep 0.3
late=$(curl -s -m 3 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d '{"prompt": "a", "max_tokens": 2}' "$BU$C")
[[ $late != 200 ]] && pass "after SIGTERM a new request is not served ($late)" || fail "after SIGTERM a new request got 200"
wait "$tpid"
[[ $(cat "$tmp/term.code") == 200 && $(jget "$tmp/term.body" 'd["usage"]["completion_tokens"]') == 300 ]] &&
    pass "SIGTERM: the request in flight finished (300 tokens)" ||
    fail "SIGTERM: in flight got $(cat "$tmp/term.code") $(head -c 300 "$tmp/term.body" 2>/dev/null)"
server_stop "$BUSY_PID" 40
[[ $STOP_RC == 0 ]] && pass "SIGTERM: exit 0" || fail "SIGTERM: exit status $STOP_RC: $(tail -n 3 "$tmp/busy.err")"
finish
