#!/usr/bin/env bash
# dsacp run on separate prefill and decode groups (issue 22): --kv-role (an MPMD launch, each group
# its own flags) and --pd P:D. Bad invocations end every rank with one line and a non-zero status,
# no hang, wherever the fault is (world rank 0 prints another rank's line).
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny --out "$tmp/m" --seed 5 >/dev/null || { echo "init-model failed"; exit 1; }
C=(--model "$tmp/m" --requests 4 --prompt-len 6:40 --gen-len 2:6 --max-batch-tokens 32 --no-realtime --seed 3)

# pd_refused NAME STATUS PATTERN -- CMD...: exit STATUS within 30 s (no hang), exactly one line of
# dsacp's on stderr holding PATTERN, no MPI abort or crash, and no --json file written.
pd_refused() {
  local name=$1 want=$2 pat=$3; shift 4
  rm -f "$tmp/bad.json"
  local t0=$SECONDS
  "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$? ok=1
  (( rc == want )) || { ok=0; echo "  exit status $rc, expected $want"; }
  (( SECONDS - t0 <= 30 )) || { ok=0; echo "  took $((SECONDS - t0)) s"; }
  [[ $(grep -c '^dsacp run' "$tmp/err") == 1 ]] || { ok=0; echo "  not one line of dsacp's"; }
  grep -qF -- "$pat" "$tmp/err" || { ok=0; echo "  stderr lacks '$pat'"; }
  grep -q 'MPI_ABORT\|[Bb]acktrace\|Signal:' "$tmp/err" && { ok=0; echo "  an abort or a crash"; }
  [[ -e $tmp/bad.json ]] && { ok=0; echo "  the report was written"; }
  if (( ok )); then pass "$name: $(grep '^dsacp run' "$tmp/err")"; else fail "$name: $(head -c 1500 "$tmp/err")"; fi
}
P=(--kv-role kv_producer)
K=(--kv-role kv_consumer)
J=(--json "$tmp/bad.json")

pd_refused "--kv-role outside mpirun" 2 "a single process has no partner group" -- \
  "$DSACP" run "${C[@]}" "${P[@]}" "${J[@]}"
pd_refused "a role without a partner group" 2 "the kv_consumer group has no partner" -- \
  mpi 2 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}"
pd_refused "--pd P + D != world size" 2 "needs P + D = 3 ranks, the run has 2" -- \
  mpi 2 "$DSACP" run "${C[@]}" --pd 2:1 "${J[@]}"
pd_refused "--pd 0:2" 2 "each at least 1" -- mpi 2 "$DSACP" run "${C[@]}" --pd 0:2 "${J[@]}"
pd_refused "--pd with --kv-role" 2 "at most one of '--kv-role' and '--pd P:D'" -- \
  mpi 2 "$DSACP" run "${C[@]}" --pd 1:1 "${P[@]}" "${J[@]}"
pd_refused "--kv-transfer-timeout without roles" 2 "applies to a disaggregated run only" -- \
  "$DSACP" run "${C[@]}" --kv-transfer-timeout 5 "${J[@]}"
pd_refused "kv_both beside a role (MPMD)" 2 "world rank 0 has no '--kv-role' (kv_both)" -- \
  mpi 1 "$DSACP" run "${C[@]}" "${J[@]}" : -np 1 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}"
pd_refused "a bad flag on a consumer rank reaches world rank 0" 2 "rank 1: option '--kv-blocks' must be an integer" -- \
  mpi 1 "$DSACP" run "${C[@]}" "${P[@]}" "${J[@]}" : -np 2 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}" --kv-blocks x
pd_refused "job-wide flags differ between the groups" 2 "give '--arrival-rate' differently" -- \
  mpi 1 "$DSACP" run "${C[@]}" "${P[@]}" "${J[@]}" : -np 1 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}" --arrival-rate 5
pd_refused "the ranks of a group with different flags" 2 "world ranks 1 and 2 (kv_consumer) were started with different flags" -- \
  mpi 1 "$DSACP" run "${C[@]}" "${P[@]}" "${J[@]}" : -np 1 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}" \
      : -np 1 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}" --block-size 32

finish
