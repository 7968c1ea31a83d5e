# bench/pd_netns.sh's disaggregated commands (sourced after the namespaces are up; uses the
# script's $dsacp, $work, $here, RATES, PLACE, model, pingpong, link_figures and lib.sh's netns_*):
#   do_pd         producer rank in the first namespace, consumer in the second, at each rate:
#                 the transfer per request (--json) beside the planner's link rule
#   do_fault      the link set down mid-run: every rank ends within the bound, with an error
#   do_fault_mpi  what Open MPI itself does when a rank ends after the link went down (probe)
PD_WORKLOAD=(--requests "${PD_REQUESTS:-6}" --prompt-len "${PD_PROMPT:-768:1536}" --gen-len 4:8 --max-batch-tokens 512
             --arrival-rate "${PD_RATE:-2}" --seed 11)

# pd_run SECONDS JSON EXTRA...: the disaggregated run, MPMD, one rank per host, the report in
# JSON (--json is the job's: every group names it), EXTRA flags to both groups, PD_MPI (an array) to mpirun.
PD_MPI=()
pd_run() {
  local secs=$1 json=$2; shift 2
  local common=(run --model "$work/m" "${PD_WORKLOAD[@]}" --json "$json" "$@")
  netns_mpirun "$secs" 1 1 "${PLACE[@]}" "${PD_MPI[@]}" -np 1 "$dsacp" "${common[@]}" --kv-role kv_producer \
    : -np 1 "$dsacp" "${common[@]}" --kv-role kv_consumer
}

# Without PD_MCA, each rate runs twice: with Open MPI's defaults and with the TCP transport's
# progress thread (docs/netns.md: without one, the transfer moves only inside the producer's MPI
# calls).
do_pd() {
  grep -qa -- 'kv-transfer-timeout' "$dsacp" || { echo "skip: this dsacp has no 'run --kv-role'"; return 77; }
  model || return 1
  local configs=("${PD_MCA:-}") rate fig lat gbps cfg what rc=0
  [[ -n ${PD_MCA:-} ]] || configs=("" "--mca btl_tcp_progress_thread 1")
  for rate in $RATES; do
    netns_shape "$rate" || { echo "FAIL tc tbf rate $rate"; return 1; }
    fig=$(pingpong 16777216 0.3) || { echo "FAIL ping-pong at $rate"; return 1; }
    read -r lat gbps < <(link_figures <<<"$fig")
    echo "rate $rate: measured link ${lat} us per message, ${gbps} Gb/s"
    plan_line "$lat" "$gbps" || rc=1
    for cfg in "${configs[@]}"; do
      read -r -a PD_MPI <<<"$cfg"
      what=${cfg:-"Open MPI's defaults"}
      if ! pd_run 300 "$work/pd.json" --verify >"$work/pd.log" 2>&1; then
        echo "FAIL disaggregated run at $rate ($what): $(tail -n 20 "$work/pd.log")"; rc=1; continue
      fi
      echo "  run with $what:"
      python3 "$here/netns/pd_compare.py" "$work/pd.json" "$lat" "$gbps" || rc=1
    done
  done
  netns_shape none
  return $rc
}

# The planner's transfer line for the workload's longest prompt on this link: this machine's
# profile (dsacp plan --calibrate across the two hosts: compute rates, so the prefill the transfer
# hides behind is this CPU's) with the link figures the ping-pong measured.
plan_line() {
  local L=${PD_PROMPT:-768:1536}; L=${L#*:}
  netns_mpirun 300 1 1 "${PLACE[@]}" -np 2 "$dsacp" plan --calibrate "$work/profile.json" >/dev/null 2>&1 ||
    { echo "FAIL dsacp plan --calibrate across the hosts"; return 1; }
  "$dsacp" plan --model "$work/m" --numerics exact --cp 1 --context "$L" --prefill "$L" --chunk 512 \
    --hardware "$work/profile.json" --pd 1:1 --link-gbps "$2" --link-latency-us "$1" --rate 0.1 2>&1 |
    grep '^transfer per request' | sed 's/^/  planner, prompt '"$L"': /'
}

# Rank processes (dsacp) still alive in either namespace.
ranks_alive() {
  local ns pid
  for ns in "$NS_A" "$NS_B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${1:-dsacp}" ]] && echo "$pid"
    done
  done
}

# Where each rank process still running is (gdb, when installed): its frames in dsacp and MPI.
stacks() {
  command -v gdb >/dev/null || return 0
  local pid
  for pid in $(ranks_alive "$1"); do
    echo "     stack of rank process $pid:"
    timeout 30 gdb -p "$pid" -batch -ex 'bt 30' 2>/dev/null | grep -E '^#' | grep -E 'at /|Finalize|PMPI' |
      sed 's/^/       /' | cut -c1-220 | head -n 10
  done
}

# wait_ranks N COMM: until N rank processes named COMM run (60 s at most): the link must go down
# mid-run, not before the far host's ranks have started.
wait_ranks() {
  local t0=$SECONDS
  while (( $(ranks_alive "$2" | wc -l) < $1 )); do
    (( SECONDS - t0 > 60 )) && { echo "FAIL the $1 ranks did not start within 60 s"; return 1; }
    sleep 0.2
  done
}

# fault_watch NAME BOUND_S MPIRUN_PID COMM: after the link went down, wait until no rank process
# (named COMM) is left in either namespace (ok within BOUND_S), then put the link back up (mpirun
# cannot end while its daemon on the other host is unreachable) and give mpirun 30 s to end.
fault_watch() {
  local name=$1 bound=$2 mp=$3 t0=$SECONDS ok=0
  while (( SECONDS - t0 <= bound )); do
    [[ -z $(ranks_alive "$4") ]] && { ok=1; break; }
    sleep 0.2
  done
  local dt=$((SECONDS - t0))
  if (( ok )); then echo "ok   $name: every rank ended ${dt} s after the link went down (bound $bound s)"
  else
    echo "FAIL $name: ranks $(ranks_alive "$4" | tr '\n' ' ')still running $bound s after the link went down"
    stacks "$4"
  fi
  netns_link up
  t0=$SECONDS
  while kill -0 "$mp" 2>/dev/null && (( SECONDS - t0 < 30 )); do sleep 0.2; done
  kill -0 "$mp" 2>/dev/null && echo "     mpirun still running 30 s after the link came back up"
  return $((1 - ok))
}

do_fault() {
  grep -qa -- 'kv-transfer-timeout' "$dsacp" || { echo "skip: this dsacp has no 'run --kv-transfer-timeout'"; return 77; }
  model || return 1
  local to=${FAULT_TIMEOUT:-3} rc=0
  rm -rf "$work/fault"
  # Requests arriving over ~20 s on the wall clock, so the link goes down in the middle.
  PD_WORKLOAD=(--requests 40 --prompt-len 64:256 --gen-len 16:32 --arrival-rate 2 --seed 12)
  PD_MPI=(--output-filename "$work/fault")
  pd_run $((to * 4 + 60)) "$work/fault.json" --kv-transfer-timeout "$to" >"$work/fault.log" 2>&1 &
  local mp=$!
  wait_ranks 2 dsacp || return 1
  sleep "${FAULT_AFTER:-4}"
  netns_link down
  fault_watch "link down at ${FAULT_AFTER:-4} s, --kv-transfer-timeout $to" $((to * 3 + 10)) "$mp" dsacp || rc=1
  wait "$mp"; local st=$?
  if (( st == 0 || st == 124 || st == 137 )); then echo "FAIL mpirun's status $st (a failure must be non-zero, within the bound)"; rc=1
  else echo "ok   mpirun ended with status $st"; fi
  local f
  for f in "$work"/fault/1/rank.*/stderr; do
    echo "     ${f#"$work"/fault/1/}: $(tr '\n' '|' <"$f")"
    grep -qE 'Signal:|[Bb]acktrace|Segmentation' "$f" && { echo "FAIL a crash in ${f#"$work"/}"; rc=1; }
  done
  grep -q '^dsacp run: ' "$work"/fault/1/rank.*/stderr 2>/dev/null || { echo "FAIL no rank printed a 'dsacp run:' error"; rc=1; }
  echo "     mpirun printed: $(grep -v '^dsacp run: ' "$work/fault.log" | tr '\n' '|' | cut -c1-1500)"
  return $rc
}

# What Open MPI does when both ranks find the link dead and end by MODE (bench/netns/link_down.c):
# the link stays down; the ranks' own bound is 3 s; mpirun is given 20 s.
do_fault_mpi() {
  mpicc -O2 -o "$work/link_down" "$here/netns/link_down.c" || return 1
  local mode mp
  for mode in ${MODES:-exit abort finalize}; do
    rm -rf "$work/ld"
    netns_mpirun 20 1 1 "${PLACE[@]}" --output-filename "$work/ld" -np 2 "$work/link_down" "$mode" 3 >"$work/ld.log" 2>&1 &
    mp=$!
    wait_ranks 2 link_down || return 1
    sleep 2; netns_link down
    sleep 8
    echo "== $mode: 8 s after the link went down, rank processes left: $(ranks_alive link_down | wc -l)"
    sed 's/^/     rank file: /' "$work"/ld/1/rank.*/stderr
    wait "$mp"; echo "     mpirun's status: $? (124: ended by timeout's SIGTERM at 20 s, 137: SIGKILL 5 s later)"
    sed 's/^/     mpirun: /' "$work/ld.log" | grep -v setpgid | head -n 12
    for pid in $(ip netns pids "$NS_A") $(ip netns pids "$NS_B"); do kill -9 "$pid" 2>/dev/null; done
    netns_link up; sleep 1
  done
}
