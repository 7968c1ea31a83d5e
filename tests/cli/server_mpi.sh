#!/bin/bash
# dsacp serve under mpirun (docs/server.md, "Under mpirun"): rank 0 serves, every rank steps. The
# same requests (tests/server/tokens.py: greedy and seeded completions of text and ids, streamed
# and not, chat in both thinking modes, eight at once) give the same tokens and text on one process
# and on two ranks, with the default decode strategy and with others (lean, DSA-CP); a disconnect
# frees KV on every rank (the next requests still match); SIGTERM to rank 0 lets the request in
# flight finish and every rank exit 0 (SIGTERM to mpirun itself makes Open MPI kill the job).
set -u
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/server.sh"
command -v "$MPIEXEC" >/dev/null 2>&1 || { echo "SKIP: no mpirun"; exit 77; }

server_model
# tokens NAME URL: tokens.py's output in $tmp/NAME.json; each request answered with 200 and its
# max_tokens ids.
tokens() {
    PYTHONPATH=$PYDIR timeout 120 "$PY" "$PYDIR/tokens.py" "$2" >"$tmp/$1.json" 2>"$tmp/$1.pyerr" ||
        { fail "$1: tokens.py: $(tail -n 3 "$tmp/$1.pyerr")"; return 1; }
    local bad
    bad=$("$PY" -S -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(k for k, v in d.items() if v.get("status") != 200 or not v.get("ids")))' "$tmp/$1.json")
    [[ -z $bad ]] || { fail "$1: failed requests: $bad $(head -c 300 "$tmp/$1.json")"; return 1; }
}

server_start single "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --block-size 16 || { finish; exit 1; }
tokens single "$SERVER_URL" && pass "one process: $(grep -c '"ids"' "$tmp/single.json") requests answered"
server_stop "$SERVER_PID"

# rank0 PID: the pid of world rank 0 among the processes under server_start's timeout (mpirun's children).
rank0() {
    local m p
    for m in $(pgrep -P "$1"); do
        for p in $(pgrep -P "$m"); do
            tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0' && { echo "$p"; return; }
        done
    done
}

cfgs=("" "--decode-strategy lean" "--cp-mode dsa-cp")
for cfg in "${cfgs[@]}"; do
    label="np 2${cfg:+ $cfg}"
    # shellcheck disable=SC2086
    server_start mpi env OMP_NUM_THREADS=1 ASAN_OPTIONS="${MPI_ASAN_OPTIONS:-detect_leaks=0}" "$MPIEXEC" -np 2 \
        --oversubscribe "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 --block-size 16 $cfg || continue
    URL=$SERVER_URL
    if tokens mpi "$URL"; then
        if cmp -s "$tmp/single.json" "$tmp/mpi.json"; then pass "$label: the same tokens and text as one process"
        else fail "$label: tokens differ: $(diff "$tmp/single.json" "$tmp/mpi.json" | head -n 6)"; fi
    fi
    if [[ -z $cfg ]]; then
        # A client that goes away mid-stream: KV back to 0 on every rank, then the same tokens again.
        PYTHONPATH=$PYDIR timeout 60 "$PY" -c 'import sys
from oaitest import Stream
s = Stream(sys.argv[1], "/v1/completions", {"prompt": "a", "max_tokens": 3000, "ignore_eos": True, "stream": True})
events = iter(s)
for _ in range(5):
    next(events)
s.close()' "$URL" || fail "$label: the disconnecting client got no 5 chunks"
        for _ in $(seq 100); do num_is "$(metric "$URL" vllm:kv_cache_usage_perc)" 0 && break; sleep 0.1; done
        num_is "$(metric "$URL" vllm:kv_cache_usage_perc)" 0 && pass "$label: a disconnect frees its KV" ||
            fail "$label: KV $(metric "$URL" vllm:kv_cache_usage_perc) after a disconnect"
        tokens mpi2 "$URL" && cmp -s "$tmp/single.json" "$tmp/mpi2.json" && pass "$label: the same tokens after it" ||
            fail "$label: tokens after the disconnect differ"
        # SIGTERM to rank 0 while a request runs: it finishes, every rank exits, mpirun exits 0.
        curl -s -m 60 -o "$tmp/term.body" -H 'Content-Type: application/json' "$URL/v1/completions" \
            -d '{"prompt": "a", "max_tokens": 200, "ignore_eos": true}' &
        cpid=$!
        for _ in $(seq 100); do num_is "$(metric "$URL" vllm:num_requests_running)" 1 && break; sleep 0.05; done
        r0=$(rank0 "$SERVER_PID")
        [[ -n $r0 ]] && kill -TERM "$r0"
        wait "$cpid"
        [[ $(jget "$tmp/term.body" 'd["usage"]["completion_tokens"]') == 200 ]] &&
            pass "$label: SIGTERM to rank 0: the request in flight finished" || fail "$label: in flight: $(head -c 300 "$tmp/term.body")"
        for _ in $(seq 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    server_stop "$SERVER_PID" 30
    if [[ -z $cfg ]]; then
        [[ $STOP_RC == 0 ]] && pass "$label: every rank exits 0 after SIGTERM to rank 0" ||
            fail "$label: exit status $STOP_RC: $(tail -n 3 "$tmp/mpi.err")"
    else
        [[ $STOP_RC != 124 ]] && pass "$label: SIGTERM to mpirun ends the job" || fail "$label: still running 30 s after SIGTERM"
    fi
done
finish
