#!/bin/bash
# dsacp serve against the official openai Python client (docs/server.md; tests/server/openai_client.py):
# /v1/models, completions of text and of token ids with their usage counts, streamed completions
# and chat completions equal to the non-streamed ones for greedy requests (with the include_usage
# chunk), thinking mode's reasoning_content, stop strings across token boundaries, stop_token_ids,
# max_tokens -> "length", seeded sampling, errors as the client's exceptions. The model: tiny with
# the committed tok_chat tokenizer (tests/data/tok_chat). openai goes into a venv cached in the
# build tree (the first run installs it, ~10-30 s); without PyPI the test is skipped (77), except
# under CI (CI=true), where it fails.
set -u
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/server.sh"
. "$(dirname "$0")/lib/venv.sh"
cached_venv "$BUILD/server-cache" openai openai
pass "openai $("$VENV_PY" -c 'import openai; print(openai.__version__)') in $BUILD/server-cache/venv"

server_model
server_start main "$DSACP" serve "${MODEL_ARGS[@]}" --port 0 || { finish; exit 1; }
pass "listening on $SERVER_URL"
prompt='Hello world, this is a test.'
n=$("$DSACP" tokenize --tokenizer "$TOK" --text "$prompt" | tr ',' '\n' | wc -l)
PYTHONPATH=$PYDIR "$VENV_PY" "$PYDIR/openai_client.py" "$SERVER_URL" "$MODEL_NAME" "$DSACP" "$TOK" \
    "$prompt" "$n" >"$tmp/client.log" 2>&1
py_checks "$tmp/client.log"

server_stop "$SERVER_PID"
[[ $STOP_RC == 0 ]] && pass "SIGTERM: exit 0" || fail "SIGTERM: exit status $STOP_RC: $(tail -n 3 "$tmp/main.err")"
grep -q 'POST /v1/completions 200' "$tmp/main.err" && pass "access log on stderr" ||
    fail "no access log line 'POST /v1/completions 200' on stderr: $(head -n 3 "$tmp/main.err")"
finish
