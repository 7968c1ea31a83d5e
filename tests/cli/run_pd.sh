#!/usr/bin/env bash
# dsacp run on separate prefill and decode groups (issue 22): --kv-role (an MPMD launch, each group
# its own flags) and --pd P:D. Bad invocations end every rank with one line and a non-zero status,
# no hang, wherever the fault is (world rank 0 prints another rank's line).
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny --out "$tmp/m" --seed 5 >/dev/null || { echo "init-model failed"; exit 1; }
C=(--model "$tmp/m" --requests 4 --prompt-len 6:40 --gen-len 2:6 --max-batch-tokens 24 --no-realtime --seed 3)

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
# After the split: each group's plan against its own size, and the link's refusals.
pd_refused "a consumer strategy its layout cannot run" 2 "'--decode-strategy exact-topk' needs '--index-layout sharded'" -- \
  mpi 3 "$DSACP" run "${C[@]}" --pd 1:2 --index-layout replicated --decode-strategy exact-topk "${J[@]}"
pd_refused "mismatched cache dtypes (the link)" 2 "the groups must use the same cache dtype" -- \
  mpi 1 "$DSACP" run "${C[@]}" "${P[@]}" "${J[@]}" --numerics deployed --kv-dtype fp8 \
    : -np 1 "$DSACP" run "${C[@]}" "${K[@]}" "${J[@]}" --numerics deployed --kv-dtype bf16
"$DSACP" init-model --preset tiny-moe --out "$tmp/m2" --seed 5 >/dev/null || fail "init-model tiny-moe"
M2=("${C[@]}"); M2[1]="$tmp/m2"
pd_refused "mismatched models (the link)" 2 "both groups must serve the same model" -- \
  mpi 1 "$DSACP" run "${C[@]}" "${P[@]}" "${J[@]}" : -np 1 "$DSACP" run "${M2[@]}" "${K[@]}" "${J[@]}"

# A failure on one rank of either group ends every rank with one line (injected faults,
# src/core/core.h): the producer's engine at setup, a consumer's step mid-run.
pd_refused "a producer rank fails at setup" 1 "injected: DSACP_FAULT=engine" -- \
  mpi 3 -x DSACP_FAULT=engine:0 "$DSACP" run "${C[@]}" --pd 1:2 --kv-transfer-timeout 10 "${J[@]}"
pd_refused "a consumer rank fails mid-run" 1 "the kv_consumer group failed: rank 1: the step's buffers: out of memory (injected: DSACP_FAULT=step)" -- \
  mpi 3 -x DSACP_FAULT=step:2:3 "$DSACP" run "${C[@]}" --pd 1:2 --kv-transfer-timeout 10 "${J[@]}"

# A consumer that stops answering (SIGSTOP: as a dead link) mid-run: world rank 0 says so within
# the link's timeout and every rank exits 1 without waiting on the other group (no agreement
# crosses the world, no MPI_Finalize), no report written.
cat >"$tmp/pidwrap.sh" <<'W'
#!/usr/bin/env bash
echo $$ >"$PID_DIR/pid.${OMPI_COMM_WORLD_RANK:-0}"
exec "$@"
W
chmod +x "$tmp/pidwrap.sh"
rm -f "$tmp/pid.1" "$tmp/bad.json"
t0=$SECONDS
PID_DIR=$tmp mpi 2 -x PID_DIR "$tmp/pidwrap.sh" "$DSACP" run --model "$tmp/m" --requests 60 --prompt-len 6:40 \
  --gen-len 20:40 --max-batch-tokens 24 --arrival-rate 5 --seed 3 --pd 1:1 --kv-transfer-timeout 3 "${J[@]}" \
  >"$tmp/out" 2>"$tmp/err" &
runner=$!
for _ in $(seq 50); do [ -s "$tmp/pid.1" ] && break; sleep 0.1; done
sleep 3
stopped=$(cat "$tmp/pid.1" 2>/dev/null)
[ -n "$stopped" ] && kill -STOP "$stopped"
wait $runner; st=$?
took=$((SECONDS - t0))
if [ -n "$stopped" ]; then # mpirun's SIGTERM waits for it: let it go, end it if it is still ours
  kill -CONT "$stopped" 2>/dev/null; sleep 0.5
  [ "$(cat "/proc/$stopped/comm" 2>/dev/null)" = dsacp ] && kill -9 "$stopped" 2>/dev/null
fi
if [ $st -ne 0 ] && [ $st -ne 124 ] && [ $took -le 25 ] && grep -q "no word from the kv_consumer group" "$tmp/err" &&
   [ "$(grep -c '^dsacp run' "$tmp/err")" = 1 ] && [ ! -e "$tmp/bad.json" ]; then
  pass "a consumer that stops answering: status $st in $took s: $(grep '^dsacp run' "$tmp/err")"
else fail "a stopped consumer (status $st, $took s): $(grep -v '^\[run' "$tmp/err" | head -c 1500)"; fi

# The runs: tokens identical to one process (--verify, exact numerics), the report's members, the
# link's counters equal to the relayout's formula, the counters' report of both groups and the link.
pd_report() { # REPORT.json COMM.json WP WD
  python3 - "$@" <<'PY'
import json, sys
r, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
wp, wd = int(sys.argv[3]), int(sys.argv[4])
d = r["disaggregated"]
assert r["verify"]["passed"] and r["completed"] == len(r["requests"]), r["verify"]
assert d["producer"]["world"] == wp and d["consumer"]["world"] == wd and r["config"]["world"] == wp + wd, d
t = d["transfer"]
assert t["counters_equal_formula"] and t["bytes"] > 0 and t["messages"] > 0, t
assert len(t["link_counters"]) == wp + wd and sum(x["kv_transfer"]["bytes_sent"] for x in t["link_counters"]) \
    == sum(x["kv_transfer"]["bytes_recv"] for x in t["link_counters"]), t["link_counters"]
for k in ["mean_ttft_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms", "mean_transfer_ms", "p99_kv_bytes"]:
    assert k in r or k in t, k
for q in r["requests"]:  # the transfer may end before the first token is sampled (transfer_ms < 0)
    assert q["kv_bytes"] > 0 and q["kv_messages"] > 0 and q["prefill_done_s"] > 0 and q["kv_ready_s"] > 0, q
assert {s["group"] for s in r["steps"]} == {"kv_producer", "kv_consumer"}
assert [m["role"] for m in r["memory_per_rank"]].count("kv_consumer") == wd
assert list(c) == ["producer", "consumer", "link"] and c["link"]["world"] == wp + wd
assert c["producer"]["world"] == wp and c["consumer"]["world"] == wd
for g in ["producer", "consumer"]:
    json.dump(c[g], open("%s.%s" % (sys.argv[2], g), "w"))
print("%d requests, %d transfer bytes in %d messages" % (len(r["requests"]), t["bytes"], t["messages"]))
PY
  [ $? -eq 0 ] || return 1
  # Each group's counters equal the planner's prediction of its steps (its own report).
  python3 "$PLAN_MATCHES" "$2.producer" "$3" >/dev/null && python3 "$PLAN_MATCHES" "$2.consumer" "$4" >/dev/null
}
rm -f "$tmp/o.json" "$tmp/rep.json"*
if mpi 1 "$DSACP" run "${C[@]}" "${P[@]}" --block-size 16 --verify --json "$tmp/o.json" --comm-report "$tmp/rep.json" \
     : -np 2 "$DSACP" run "${C[@]}" "${K[@]}" --block-size 32 --cp-interleave 3 --verify --json "$tmp/o.json" \
       --comm-report "$tmp/rep.json" >"$tmp/log" 2>&1 && out=$(pd_report "$tmp/o.json" "$tmp/rep.json" 1 2) &&
   grep -q 'Verify.*4 of 4' "$tmp/log" && grep -q 'equal on every rank' "$tmp/log"; then
  pass "MPMD 1 producer (block 16) + 2 consumers (block 32, interleave 3): verified, planner = counters per group, $out"
else fail "MPMD 1 + 2: ${out:-} $(tail -n 12 "$tmp/log")"; fi
rm -f "$tmp/o.json" "$tmp/rep.json"*
if mpi 5 "$DSACP" run "${C[@]}" --pd 3:2 --verify --json "$tmp/o.json" --comm-report "$tmp/rep.json" >"$tmp/log" 2>&1 &&
   out=$(pd_report "$tmp/o.json" "$tmp/rep.json" 3 2) && grep -q 'Verify.*4 of 4' "$tmp/log"; then
  pass "--pd 3:2 (5 ranks): verified, planner = counters per group, $out"
else fail "--pd 3:2: ${out:-} $(tail -n 12 "$tmp/log")"; fi

finish
