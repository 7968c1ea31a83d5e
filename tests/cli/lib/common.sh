# Shared by the CLI test scripts that source it (tests/cli/*.sh; this folder is not a test):
# a scratch directory removed on exit, pass/fail counters, and mpi N CMD... (mpirun under a
# timeout, oversubscribed, root-safe, one OpenMP thread per rank, leak detection off because
# Open MPI leaks internally), expect_error. End a script with `finish`.
DSACP=${DSACP:?set by CTest}
# The Python helpers beside this file: python3 "$PLAN_MATCHES" REPORT W (the run report's plan
# section equals the counters), patch_f32 FILE TENSOR INDEX VALUE (one F32 element overwritten).
CLI_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLAN_MATCHES="$CLI_LIB/plan_matches.py"
patch_f32() { python3 "$CLI_LIB/patch_f32.py" "$@"; }
MPIEXEC=${MPIEXEC:-mpirun}
command -v "$MPIEXEC" >/dev/null 2>&1 || MPIEXEC=mpirun
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d /tmp/dsacp-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0
pass() { passes=$((passes+1)); echo "ok   $*"; }
fail() { fails=$((fails+1)); echo "FAIL $*"; }
mpi() { local n=$1; shift; OMP_NUM_THREADS=1 ASAN_OPTIONS=${MPI_ASAN_OPTIONS:-detect_leaks=0} timeout "${MPI_TIMEOUT:-180}" "$MPIEXEC" -np "$n" --oversubscribe "$@"; }
# expect_error NAME EXPECTED_SUBSTRING... -- command: the command must fail with a status below
# 128 (no crash), exactly one line on stderr containing every substring, and, when EXPECT_MAX_S
# is set, within that many seconds.
expect_error() {
  local name=$1; shift
  local pats=()
  while [[ $1 != -- ]]; do pats+=("$1"); shift; done
  shift
  local t0=$SECONDS
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? dt=$((SECONDS - t0))
  local lines; lines=$(wc -l <"$tmp/err")
  local ok=1
  if (( rc == 0 || rc >= 128 )); then ok=0; echo "FAIL $name: exit status $rc"; fi
  if (( lines != 1 )); then ok=0; echo "FAIL $name: expected one line on stderr, got $lines"; fi
  if [[ -n ${EXPECT_MAX_S:-} ]] && (( dt > EXPECT_MAX_S )); then ok=0; echo "FAIL $name: took $dt s"; fi
  for p in "${pats[@]}"; do
    grep -qF -- "$p" "$tmp/err" || { ok=0; echo "FAIL $name: stderr lacks '$p'"; }
  done
  if (( ok )); then passes=$((passes+1)); echo "ok   $name: $(cat "$tmp/err")"; else fails=$((fails+1)); head -c 2000 "$tmp/err"; fi
}
finish() { echo "$passes passed, $fails failed"; [ "$fails" -eq 0 ]; }
# refused NAME STATUS PATTERN... -- CMD: exactly STATUS within 10 s (a refusal comes before any
# work), nothing on stdout, one line on stderr holding every pattern, and none of the files named
# in the array REFUSED_NO_FILES (removed before the command) written.
REFUSED_NO_FILES=()
refused() {
  local name=$1 want=$2; shift 2
  local pats=()
  while [[ $1 != -- ]]; do pats+=("$1"); shift; done
  shift
  local f; for f in "${REFUSED_NO_FILES[@]}"; do rm -f "$f"; done
  local t0=$SECONDS
  timeout 60 "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$? ok=1
  (( rc == want )) || { ok=0; echo "  exit status $rc, expected $want"; }
  (( SECONDS - t0 <= 10 )) || { ok=0; echo "  took $((SECONDS - t0)) s"; }
  [[ -s $tmp/out ]] && { ok=0; echo "  stdout: $(head -c 300 "$tmp/out")"; }
  (( $(wc -l <"$tmp/err") == 1 )) || { ok=0; echo "  stderr is not one line"; }
  for p in "${pats[@]}"; do grep -qF -- "$p" "$tmp/err" || { ok=0; echo "  stderr lacks '$p'"; }; done
  for f in "${REFUSED_NO_FILES[@]}"; do [[ -e $f ]] && { ok=0; echo "  an output was written: $f"; }; done
  if (( ok )); then pass "$name: $(cat "$tmp/err")"; else fail "$name: $(head -c 1000 "$tmp/err")"; fi
}
