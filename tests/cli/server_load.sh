#!/bin/bash
# dsacp serve under load on loopback (docs/server.md; tests/server/load.py): 64 concurrent streaming
# clients, completions and chat completions, greedy and sampled, a third of them disconnecting
# mid-stream; every other request completes with its 32 tokens and usage, and afterwards /metrics
# says 0 running, 0 waiting, KV 0 (the disconnects freed their blocks), with every request counted
# (finished_reason "length" and "abort"). Two identical rounds: the server's resident memory after
# the second is within 10 % of the first (skipped under sanitizers). SIGTERM then exits 0.
set -u
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/server.sh"
CLIENTS=64 GEN=32

server_model
# A small KV pool (the default, max-num-seqs requests of full length up to 1 GiB, is all resident)
# so that the RSS bound sees what the requests leave behind.
server_start main "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --kv-blocks 256 || { finish; exit 1; }
URL=$SERVER_URL
PID=$(server_main_pid "$SERVER_PID")
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status" 2>/dev/null; }

# round N: one round of load.py, then the gauges back to zero (the aborts are processed at the
# loop's next step: a few seconds at most). RSS_N: the server's RSS (kB) afterwards.
round() {
    PYTHONPATH=$PYDIR timeout 120 "$PY" "$PYDIR/load.py" "$URL" "$CLIENTS" "$GEN" "$1" >"$tmp/load$1.log" 2>&1
    py_checks "$tmp/load$1.log"
    local r w kv
    for _ in $(seq 100); do
        r=$(metric "$URL" vllm:num_requests_running) w=$(metric "$URL" vllm:num_requests_waiting)
        kv=$(metric "$URL" vllm:kv_cache_usage_perc)
        num_is "$r" 0 && num_is "$w" 0 && num_is "$kv" 0 && break
        sleep 0.1
    done
    num_is "$r" 0 && num_is "$w" 0 && num_is "$kv" 0 && pass "round $1: /metrics running 0, waiting 0, KV 0" ||
        fail "round $1: /metrics running '$r', waiting '$w', KV '$kv'"
    printf -v "RSS_$1" '%s' "$(rss)"
}
round 1
round 2
dropped=$((CLIENTS / 3))  # clients 2, 5, 8, ...
curl -s -m 10 "$URL/metrics" >"$tmp/metrics"
count() { awk -v r="$1" '/^vllm:request_success_total\{/ && index($0, "finished_reason=\"" r "\"") { s += $NF } END { print s + 0 }' "$tmp/metrics"; }
len=$(count length) ab=$(count abort)
((len == 2 * (CLIENTS - dropped) && ab == 2 * dropped)) &&
    pass "/metrics: $len requests finished by length, $ab aborted (the disconnects)" ||
    fail "/metrics: request_success_total length $len (expected $((2 * (CLIENTS - dropped)))), abort $ab (expected $((2 * dropped)))"
gen=$(metric "$URL" vllm:generation_tokens_total)
num_is "$gen" 0 && fail "/metrics: no generation tokens counted" || pass "/metrics: generation_tokens_total $gen"

if [[ ${DSACP_SANITIZE:-0} == 1 ]]; then
    echo "skip the RSS bound: sanitizer build (RSS $RSS_1 kB, then $RSS_2 kB)"
elif [[ -n $RSS_1 && -n $RSS_2 ]] && ((RSS_2 * 10 <= RSS_1 * 11)); then
    pass "RSS flat across rounds: $RSS_1 kB, then $RSS_2 kB"
else fail "RSS grew: $RSS_1 kB after round 1, $RSS_2 kB after round 2"; fi

server_stop "$SERVER_PID"
[[ $STOP_RC == 0 ]] && pass "SIGTERM: exit 0" || fail "SIGTERM: exit status $STOP_RC: $(tail -n 3 "$tmp/main.err")"
finish
