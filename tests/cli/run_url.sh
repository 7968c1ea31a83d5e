#!/usr/bin/env bash
# dsacp run --url (issue 24): the benchmark client against `dsacp serve` on loopback. The same
# workload (synthetic, same --seed; a JSONL file with stop ids and a text prompt) generates, per
# request, the same greedy tokens over HTTP as in-process `dsacp run`; requests are sent at the
# workload's arrival times; the report has run's lines and --json fields, the server-side ones
# null; requests the server refuses are counted as failed (exit 0, as vllm bench serve); an
# unreachable server exits 1 naming the URL, a malformed --url or an engine flag exits 2;
# $OPENAI_API_KEY reaches a server started with --api-key; sampled tokens (a seed per request) agree too.
set -u
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/server.sh"

server_model
M=$tmp/$MODEL_NAME
server_start serve "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 || { finish; exit 1; }
URL=$SERVER_URL SERVE_PID=$SERVER_PID
# requests[i][FIELD] of every request of a --json report, as one JSON line.
field() { jget "$1" "[r['$2'] for r in d['requests']]"; }

# Synthetic, Poisson arrivals: identical tokens per request, each sent at its arrival time.
W=(--requests 8 --prompt-len 5:40 --gen-len 2:9 --seed 5 --arrival-rate 40)
"$DSACP" run --model "$M" "${W[@]}" --json "$tmp/ref.json" >/dev/null 2>"$tmp/ref.err" ||
    fail "in-process run: $(tail -n 3 "$tmp/ref.err")"
if "$DSACP" run --url "$URL" --model "$M" "${W[@]}" --json "$tmp/url.json" >"$tmp/url.txt" 2>"$tmp/url.err"; then
    pass "run --url: exit 0"
else fail "run --url: $(tail -n 3 "$tmp/url.err")"; fi
ref=$(field "$tmp/ref.json" tokens)
if [[ -n $ref && $ref == "$(field "$tmp/url.json" tokens)" ]]; then pass "synthetic: the same greedy tokens per request"
else fail "synthetic tokens differ: in-process $ref, client $(field "$tmp/url.json" tokens)"; fi
# Sent at the workload's times: each no earlier than in-process arrival_s, at most 0.5 s later.
late=$(python3 -c 'import json, sys
a = [r["arrival_s"] for r in json.load(open(sys.argv[1]))["requests"]]
b = [r["arrival_s"] for r in json.load(open(sys.argv[2]))["requests"]]
print(max(y - x for x, y in zip(a, b)) if min(y - x for x, y in zip(a, b)) >= -1e-3 else "early")' "$tmp/ref.json" "$tmp/url.json")
if [[ $late != early ]] && awk -v l="$late" 'BEGIN { exit !(l >= 0 && l < 0.5) }'; then
    pass "realtime: every request sent at its arrival time (at most ${late} s late)"
else fail "realtime arrivals: $late"; fi

# The report: run's lines and fields; what only the server sees is null.
for line in "Model: *$MODEL_NAME" "Server: *$URL" "Successful requests: *8" "Failed requests: *0" \
            "Total generated tokens:" "Mean / Median / P90 / P99 TTFT (ms):" "Mean / Median / P90 / P99 ITL (ms):" \
            "Mean / Median / P90 / P99 E2EL (ms):"; do
    grep -q "^ *$line" "$tmp/url.txt" || fail "the client's report lacks '$line'"
done
got=$(jget "$tmp/url.json" "[d['completed'], d['failed'], d['config'], d['preemptions'], d['kv_utilization_peak'],
      d['mean_ttft_ms'] > 0, d['total_output_tokens'] == $(jget "$tmp/ref.json" "d['total_output_tokens']"),
      'steps' in d, 'memory_per_rank' in d]")
want="[8, 0, {\"model\": \"$MODEL_NAME\", \"url\": \"$URL\"}, null, null, true, true, false, false]"
[[ $got == "$want" ]] && pass "--json: vllm bench serve's fields, server-side ones null or absent" ||
    fail "--json fields: $got, expected $want"

# All at once, two in flight at most: still the same tokens.
if "$DSACP" run --url "$URL" --model "$M" "${W[@]}" --no-realtime --max-concurrency 2 --model-name "$MODEL_NAME" \
       --json "$tmp/c2.json" >/dev/null 2>"$tmp/c2.err" && [[ $(field "$tmp/c2.json" tokens) == "$ref" ]]; then
    pass "--no-realtime --max-concurrency 2: the same tokens"
else fail "--no-realtime --max-concurrency 2: $(tail -n 3 "$tmp/c2.err")"; fi

# Sampled (temperature 0.8, top-p 0.9): request i draws as (--seed + i, token index) in-process and
# online (the client sends seed = --seed + i), so the tokens agree too.
S=(--temperature 0.8 --top-p 0.9 --no-realtime)
"$DSACP" run --model "$M" "${W[@]}" "${S[@]}" --json "$tmp/sref.json" >/dev/null 2>"$tmp/sref.err" ||
    fail "in-process sampled run: $(tail -n 3 "$tmp/sref.err")"
sref=$(field "$tmp/sref.json" tokens)
if "$DSACP" run --url "$URL" --model "$M" "${W[@]}" "${S[@]}" --json "$tmp/surl.json" >/dev/null 2>"$tmp/surl.err" &&
   [[ -n $sref && $(field "$tmp/surl.json" tokens) == "$sref" && $sref != "$ref" ]]; then
    pass "sampled: the same tokens per request as in-process (and not the greedy ones)"
else fail "sampled tokens: in-process $sref, client $(field "$tmp/surl.json" tokens) $(tail -n 2 "$tmp/surl.err")"; fi

# JSONL: stop ids (generation ends at the first one, kept), a text prompt (the server tokenizes it)
# against the same ids in-process.
text="Hello there, world"
ids=$("$DSACP" tokenize --tokenizer "$TOK" --text "$text" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["ids"])')
P='"prompt_ids": [5, 9, 200, 31], "max_new_tokens": 6'
printf '{%s}\n' "$P" >"$tmp/nostop.jsonl"
"$DSACP" run --model "$M" --prompts "$tmp/nostop.jsonl" --json "$tmp/nostop.json" >/dev/null 2>&1
stop=$(jget "$tmp/nostop.json" "d['requests'][0]['tokens'][2]")
printf '{%s, "stop_ids": [%s]}\n{"prompt_ids": %s, "max_new_tokens": 5}\n' "$P" "$stop" "$ids" >"$tmp/ids.jsonl"
printf '{%s, "stop_ids": [%s]}\n{"prompt": "%s", "max_new_tokens": 5}\n' "$P" "$stop" "$text" >"$tmp/text.jsonl"
"$DSACP" run --model "$M" --prompts "$tmp/ids.jsonl" --json "$tmp/jref.json" >/dev/null 2>&1
if "$DSACP" run --url "$URL" --prompts "$tmp/text.jsonl" --json "$tmp/jurl.json" >/dev/null 2>"$tmp/j.err" &&
   [[ -n $(field "$tmp/jref.json" tokens) && $(field "$tmp/jurl.json" tokens) == "$(field "$tmp/jref.json" tokens)" ]] &&
   [[ $(field "$tmp/jurl.json" prompt_len) == "$(field "$tmp/jref.json" prompt_len)" ]] &&
   [[ $(jget "$tmp/jurl.json" "len(d['requests'][0]['tokens']) <= 3 and d['requests'][0]['tokens'][-1] == $stop") == true ]]; then
    pass "JSONL: stop ids and a text prompt, the same tokens and prompt lengths ($(field "$tmp/jurl.json" tokens))"
else fail "JSONL: client $(field "$tmp/jurl.json" tokens) $(tail -n 2 "$tmp/j.err"), in-process $(field "$tmp/jref.json" tokens)"; fi

# Requests the server refuses (a model it does not serve: 404) are failed requests, reported.
if "$DSACP" run --url "$URL" --model "$M" --requests 3 --prompt-len 4 --gen-len 2 --model-name nosuch \
       --json "$tmp/bad.json" >"$tmp/bad.txt" 2>"$tmp/bad.err" &&
   [[ $(jget "$tmp/bad.json" "[d['completed'], d['failed']]") == "[0, 3]" ]] &&
   grep -q "^Failed requests: *3" "$tmp/bad.txt" && grep -q "request 0 failed: HTTP 404" "$tmp/bad.txt" &&
   [[ $(jget "$tmp/bad.json" "d['requests'][0]['error'].startswith('HTTP 404')") == true ]]; then
    pass "refused requests: counted as failed with the server's answer, exit 0"
else fail "refused requests: $(head -c 600 "$tmp/bad.txt") $(tail -n 2 "$tmp/bad.err")"; fi

# Invocation errors: exit 2 before anything is sent; no report file.
REFUSED_NO_FILES=("$tmp/never.json")
refused "malformed --url" 2 "--url" "not a server's URL" -- "$DSACP" run --url "localhost:8000" --model "$M" --json "$tmp/never.json"
refused "--url with a bad port" 2 "--url" -- "$DSACP" run --url "http://127.0.0.1:99999" --model "$M" --json "$tmp/never.json"
refused "--url with an engine flag" 2 "--kv-blocks" "--url" -- "$DSACP" run --url "$URL" --model "$M" --kv-blocks 8
refused "--url with a CP flag" 2 "--decode-strategy" -- "$DSACP" run --url "$URL" --model "$M" --decode-strategy lean
refused "--model-name without --url" 2 "--model-name" "--url" -- "$DSACP" run --model "$M" --model-name x
refused "--url, synthetic, no vocabulary" 2 "--model DIR" "--tokenizer FILE" -- "$DSACP" run --url "$URL"
printf '{"prompt": "hi"}\n' >"$tmp/t1.jsonl"
refused "a text prompt in-process" 2 "t1.jsonl" "line 1" "prompt_ids" -- "$DSACP" run --model "$M" --prompts "$tmp/t1.jsonl"

# A server with --api-key: the client sends $OPENAI_API_KEY as the bearer token (as vllm bench serve).
if server_start keyed "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --api-key sekrit; then
    refused "--api-key server, no OPENAI_API_KEY: exit 1" 1 "HTTP 401" -- \
        env -u OPENAI_API_KEY "$DSACP" run --url "$SERVER_URL" --model "$M" --requests 2 --prompt-len 4 --gen-len 2
    if OPENAI_API_KEY=sekrit "$DSACP" run --url "$SERVER_URL" --model "$M" --requests 2 --prompt-len 4 --gen-len 2 \
           --json "$tmp/key.json" >/dev/null 2>"$tmp/key.err" && [[ $(jget "$tmp/key.json" "d['completed']") == 2 ]]; then
        pass "OPENAI_API_KEY: the keyed server answers"
    else fail "OPENAI_API_KEY: $(tail -n 2 "$tmp/key.err")"; fi
    server_stop "$SERVER_PID"
fi

# The server stops on SIGTERM (exit 0); its URL is then unreachable: exit 1 naming it.
server_stop "$SERVE_PID"
(( STOP_RC == 0 )) && pass "server: SIGTERM, exit 0" || fail "server exit status $STOP_RC"
refused "unreachable server: exit 1 naming the URL" 1 "$URL" "cannot reach" -- \
    "$DSACP" run --url "$URL" --model "$M" --requests 2 --json "$tmp/never.json"
finish
