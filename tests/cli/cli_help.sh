#!/usr/bin/env bash
# Every subcommand listed by `dsacp --help` answers --help and -h with its usage on stdout, exit
# status 0 and nothing on stderr (issue 7, defect 12), also after other options; `dsacp --version`
# prints the version; the usage errors still exit 2.
set -u
. "$(dirname "$0")/lib/common.sh"

# expect_usage NAME CMD -- command...: exit 0, usage of CMD on stdout, stderr empty.
expect_usage() {
  local name=$1 cmd=$2; shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if (( rc == 0 )) && [[ ! -s $tmp/err ]] && grep -q "^usage: dsacp $cmd" "$tmp/out"; then
    pass "$name"
  else
    fail "$name (rc $rc): stdout: $(head -c 300 "$tmp/out") stderr: $(cat "$tmp/err")"
  fi
}

"$DSACP" --help >"$tmp/top" 2>"$tmp/toperr"; rc=$?
if (( rc == 0 )) && [[ ! -s $tmp/toperr ]]; then pass "dsacp --help exits 0"; else fail "dsacp --help: rc $rc"; fi
# Commands: the lines of the summary indented by exactly two spaces.
mapfile -t cmds < <(sed -n 's/^  \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p' "$tmp/top")
if (( ${#cmds[@]} >= 6 )); then pass "dsacp --help lists ${#cmds[@]} commands: ${cmds[*]}"
else fail "dsacp --help lists too few commands: ${cmds[*]}"; fi
for want in init-model inspect forward generate make-input bench; do
  [[ " ${cmds[*]} " == *" $want "* ]] || fail "dsacp --help does not list $want"
done

for c in "${cmds[@]}"; do
  if [[ $c == help ]]; then
    # `dsacp help --help` is the summary; `dsacp help CMD` is CMD's usage.
    "$DSACP" help --help >"$tmp/out" 2>"$tmp/err"; rc=$?
    if (( rc == 0 )) && [[ ! -s $tmp/err ]] && grep -q "^usage: dsacp <command>" "$tmp/out"; then pass "help --help"
    else fail "help --help (rc $rc): $(cat "$tmp/err")"; fi
    expect_usage "help forward" forward -- "$DSACP" help forward
    continue
  fi
  expect_usage "$c --help" "$c" -- "$DSACP" "$c" --help
  expect_usage "$c -h" "$c" -- "$DSACP" "$c" -h
  # After other options (even an unknown one): help wins, nothing is run or written.
  expect_usage "$c --out X --help" "$c" -- "$DSACP" "$c" --out "$tmp/never" --frobnicate -h
  [[ -e $tmp/never ]] && fail "$c --help wrote $tmp/never"
done
# Each usage names the command's own options.
"$DSACP" forward --help >"$tmp/out" 2>&1
for o in --model --input --output --dump-topk --numerics --kv-dtype --block-size; do
  grep -qF -- "$o" "$tmp/out" || fail "forward --help does not mention $o"
done
"$DSACP" generate --help >"$tmp/out" 2>&1
grep -q max_position_embeddings "$tmp/out" || fail "generate --help does not state the max_position_embeddings limit"

"$DSACP" --version >"$tmp/out" 2>"$tmp/err"; rc=$?
if (( rc == 0 )) && [[ ! -s $tmp/err ]] && grep -Eq '^dsacp [0-9]+\.[0-9]+\.[0-9]+' "$tmp/out"; then
  pass "--version: $(cat "$tmp/out")"
else
  fail "--version (rc $rc): $(cat "$tmp/out" "$tmp/err")"
fi

# Usage errors are unchanged: exit 2, one line on stderr, nothing on stdout.
for args in "inspect --frobnicate" "forward --model" "generate stray" "frob"; do
  # shellcheck disable=SC2086
  "$DSACP" $args >"$tmp/out" 2>"$tmp/err"; rc=$?
  if (( rc == 2 )) && [[ ! -s $tmp/out ]] && (( $(wc -l <"$tmp/err") == 1 )); then pass "dsacp $args: exit 2"
  else fail "dsacp $args: rc $rc, stdout $(wc -c <"$tmp/out") bytes, stderr $(cat "$tmp/err")"; fi
done
"$DSACP" >"$tmp/out" 2>"$tmp/err"; rc=$?
if (( rc == 2 )) && grep -q "^usage:" "$tmp/err"; then pass "dsacp without a command: usage on stderr, exit 2"
else fail "dsacp without a command: rc $rc"; fi

finish
