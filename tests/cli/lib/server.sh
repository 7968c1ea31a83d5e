# Shared by tests/cli/server*.sh (after lib/common.sh; this folder is not a test): a model with the
# committed tok_chat tokenizer (tests/data/tok_chat, 514 ids in DeepSeek-V3.2's shape), servers
# started on a free port and always stopped, plain HTTP requests with curl, JSON fields read with
# the system python3 (standard library only; the openai client has its own venv, server_openai.sh).
SRC=${DSACP_SOURCE_DIR:?set by CTest}
BUILD=${DSACP_BUILD_DIR:?set by CTest}
TOK=$SRC/tests/data/tok_chat/tokenizer.json
PYDIR=$SRC/tests/server
# The interpreter itself, not a version manager's shim in front of it (a shim costs ~100 ms a
# call, and the scripts call Python often); -S where only the standard library is needed.
PY=$(python3 -c 'import sys; print(sys.executable)')

# The model every server test serves: tiny with a vocabulary for the tokenizer (640 rows: the
# random weights also draw the 126 ids without a token); init-model --tokenizer copies
# tokenizer.json into the directory, so serve needs no --tokenizer. MODEL_ARGS: the serve
# flags naming it; MODEL_NAME: the served name, the directory's.
MODEL_NAME=tinychat
server_model() {
    "$DSACP" init-model --preset tiny --tokenizer "$TOK" --seed 3 --out "$tmp/$MODEL_NAME" >"$tmp/init.log" 2>&1 ||
        { fail "init-model --preset tiny --tokenizer: $(tail -n 3 "$tmp/init.log")"; finish; exit 1; }
    MODEL_ARGS=(--model "$tmp/$MODEL_NAME")
}

# server_start NAME CMD...: starts CMD (dsacp serve --port 0 ..., or mpirun of it) in the background
# under a 300 s ceiling (`timeout` without -k: with it, any signal it hands on would be followed
# by a SIGKILL), in its own process group, stdout in $tmp/NAME.out and stderr in $tmp/NAME.err;
# waits (60 s at most) for its "listening on http://H:P" line. Sets SERVER_PID (the
# group: the `timeout` process, which hands SIGTERM on to the server) and SERVER_URL. Returns 1
# (after a FAIL) when it never listened.
SERVER_PIDS=()
server_start() {
    local name=$1; shift
    timeout 300 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    SERVER_PID=$!
    SERVER_PIDS+=("$SERVER_PID")
    SERVER_URL=""
    local i
    for ((i = 0; i < 600; i++)); do
        SERVER_URL=$(sed -n 's#.*listening on \(http://[^ ]*\).*#\1#p' "$tmp/$name.out" 2>/dev/null | head -n 1)
        [[ -n $SERVER_URL ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    fail "$name: no 'listening on' line: $(tail -n 5 "$tmp/$name.err")"
    return 1
}
# server_main_pid PID: the server process itself under server_start's `timeout` (for /proc/PID).
server_main_pid() { pgrep -P "$1" | head -n 1; }
# server_stop PID [SECONDS]: SIGTERM, then waits (default 30 s); STOP_RC: the exit status (124:
# it did not exit in time and was killed). Not in a subshell: `wait` needs the starting shell.
server_stop() {
    local pid=$1 limit=${2:-30} i
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; STOP_RC=124; return
    fi
    wait "$pid"; STOP_RC=$?
}
server_cleanup() {
    local p
    for p in "${SERVER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${SERVER_PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap server_cleanup EXIT

# http METHOD URL [CURL ARGS...]: the response body in $tmp/body, its headers in $tmp/headers; prints
# the status (000 when no response). 20 s at most.
http() {
    local method=$1 url=$2; shift 2
    curl -s -m 20 -X "$method" -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' "$@" "$url"
}
# post URL JSON [CURL ARGS...]: http POST with a JSON body.
post() {
    local url=$1 body=$2; shift 2
    http POST "$url" -H 'Content-Type: application/json' --data-binary "$body" "$@"
}
# jget FILE EXPR: EXPR (Python, over the parsed JSON `d`) printed; empty when the file is no JSON
# or EXPR fails.
jget() {
    "$PY" -S -c 'import json, sys
try:
    d = json.load(open(sys.argv[1], encoding="utf-8"))
    v = eval(sys.argv[2])
    print(json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v)
except Exception:
    pass' "$1" "$2"
}
# metric URL NAME: the value of the first sample of NAME in /metrics (empty when absent).
metric() {
    curl -s -m 10 "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { print $NF; exit }'
}
# alive NAME URL: the server answers /health with 200.
alive() {
    local code; code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$2/health")
    [[ $code == 200 ]] && pass "$1: still serving" || fail "$1: /health gave $code afterwards"
}
# num_is VALUE WANT: VALUE is a number equal to WANT ("0", "0.0" and "0e+00" are 0).
num_is() { [[ $1 =~ ^[-+0-9.eE]+$ ]] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 == b + 0) }'; }
# py_checks LOG: prints a tests/server script's output and counts its "ok" / "FAIL" lines as ours.
py_checks() {
    cat "$1"
    passes=$((passes + $(grep -c '^ok ' "$1")))
    fails=$((fails + $(grep -c '^FAIL ' "$1")))
    grep -q '^ok \|^FAIL ' "$1" || fail "$(basename "$1"): no check ran: $(tail -n 3 "$1")"
}
