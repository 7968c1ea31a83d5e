#!/usr/bin/env bash
# Two hosts on one machine (issue 22, "Two hosts, really"): two network namespaces joined by a
# veth pair (10.77.0.1 and 10.77.0.2), Open MPI over its TCP transport across them, mpirun in the
# first namespace and the second one's daemon started through bench/netns/rsh.sh. The link is
# shaped with tc (tbf; this kernel has no netem, so no latency is injected: the link's own is
# measured). Everything the run made is removed on exit, also on failure or a signal.
#
#   bench/pd_netns.sh [--dsacp BIN] [--out DIR] COMMAND
#     check   dsacp generate with CP over the two hosts gives the tokens of one process
#     link    per rate in RATES: ping-pong latency and bandwidth (bench/netns/pingpong.c), and
#             generate's time per decode token with Open MPI's default binding and with ours
#     pd      the disaggregated dsacp run (producer in the first namespace, consumer in the
#             second) at each rate: transfer bytes and time per request beside the prediction
#     fault   the link set down mid-run: every rank ends with an error within a bound, no hang
#     fault-mpi   what Open MPI does when ranks end after the link went down (exit, MPI_Abort,
#             MPI_Finalize; bench/netns/link_down.c)
#     exec NA NB ARGS...   any mpirun line across the two (NA slots on the first host, NB on the
#             second), e.g. exec 1 1 -np 2 build/dsacp generate --model M
#   RATES: tc rates (default "none 1gbit 200mbit"; none = the link as it is).
# Exit status: 0 ok, 1 a failed check, 2 bad usage, 77 not possible here (not root, or network
# namespaces not permitted, as in most containers). Results go to stdout and, with --out, to
# DIR/*.txt. docs/netns.md says what was measured and why it looks as it does.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
. "$here/netns/lib.sh"

dsacp=${DSACP:-$root/build/dsacp}
out=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dsacp) dsacp=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
cmd=${1:-}
[[ -n $cmd ]] || { echo "pd_netns: no command (check, link, pd, fault, fault-mpi, exec); --help" >&2; exit 2; }
shift
RATES=${RATES:-none 1gbit 200mbit}
# Where the ranks run. Each "host" binds its first rank to core 0 by default (both believe they
# own the machine's cores), so two busy-polling ranks share one core and every message waits for
# the scheduler's tick: no binding, and yield while idle (what Open MPI does oversubscribed).
PLACE=(--bind-to none --mca mpi_yield_when_idle 1)

work=$(mktemp -d /tmp/dsacp-netns-XXXXXX)
job=
cleanup() { [[ -n $job ]] && kill "$job" 2>/dev/null; netns_teardown; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

netns_require; st=$?
[[ $st -eq 0 ]] || exit "$st"
netns_setup || { echo "pd_netns: setting up the namespaces failed" >&2; exit 1; }
echo "pd_netns: hosts $ADDR_A ($NS_A) and $ADDR_B ($NS_B) over $VETH_A <-> $VETH_B" >&2

# The tool and a model (created once per run, in the scratch directory).
if [[ ! -x $dsacp ]]; then
  echo "pd_netns: building dsacp in $root/build (no binary at $dsacp)" >&2
  { cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
    cmake --build "$root/build" -j "$(nproc)" --target dsacp_cli >/dev/null; } || exit 1
  dsacp=$root/build/dsacp
fi
model() { [[ -f $work/m/config.json ]] || "$dsacp" init-model --preset "${PRESET:-tiny}" --out "$work/m" --seed 3 >/dev/null; }
save() { [[ -z $out ]] && cat || { mkdir -p "$out" && tee "$out/$1"; }; }

# generate's "generated:" and "decode:" lines, one process or across the hosts (ARGS before -np).
gen_args=(generate --prompt-len 48 --new-tokens 16 --chunk 16 --seed 4)
gen_one() { OMP_NUM_THREADS=1 "$dsacp" "${gen_args[@]}" --model "$work/m"; }
gen_two() { netns_mpirun 120 1 1 "$@" -np 2 "$dsacp" "${gen_args[@]}" --model "$work/m"; }

do_check() {
  model || return 1
  local one two
  one=$(gen_one | grep '^generated:') || { echo "FAIL one process: generate failed"; return 1; }
  two=$(gen_two "${PLACE[@]}" 2>&1) || { echo "FAIL two hosts: generate failed: $two"; return 1; }
  if [[ $(grep '^generated:' <<<"$two") == "$one" ]]; then
    echo "ok   two hosts (W = 2 over $VETH_A <-> $VETH_B): the tokens of one process ($one)"
  else
    echo "FAIL two hosts: $two; one process: $one"; return 1
  fi
}

# One ping-pong sweep: "bytes one_way_us MB/s reps" lines.
pingpong() {
  [[ -x $work/pingpong ]] || mpicc -O2 -o "$work/pingpong" "$here/netns/pingpong.c" || return 1
  netns_mpirun 120 1 1 "${PLACE[@]}" -np 2 "$work/pingpong" "${1:-16777216}" "${2:-0.5}"
}

# The planner's two link figures from a ping-pong sweep on stdin: "latency_us gbps" -- the mean
# one-way time of messages up to 64 bytes, and the slope between the two largest sizes (the rate
# once tbf's bucket is spent).
link_figures() {
  awk '$1 <= 64 {s += $2; n++} {b2 = b1; t2 = t1; b1 = $1; t1 = $2}
       END {printf "%.1f %.3f\n", s / n, (b1 - b2) * 8 / (t1 - t2) / 1000}'
}

do_link() {
  model || return 1
  if netns_has_netem; then echo "netem: present (latency could be injected; not used)"
  else echo "netem: absent on this kernel (tc qdisc add ... netem delay 1ms fails): the link's own latency is measured"; fi
  local rate pp lat bw d0 d1
  for rate in $RATES; do
    netns_shape "$rate" || { echo "FAIL tc tbf rate $rate"; return 1; }
    pp=$(pingpong) || { echo "FAIL ping-pong at $rate: $pp"; return 1; }
    read -r lat bw < <(link_figures <<<"$pp")
    d0=$(gen_two 2>&1 | sed -n 's/.*(\(.*\) ms\/token).*/\1/p')
    d1=$(gen_two "${PLACE[@]}" 2>&1 | sed -n 's/.*(\(.*\) ms\/token).*/\1/p')
    echo "rate $rate: link_latency_us $lat (one way, messages <= 64 B)  link_gbps $bw (4 -> 16 MiB messages)" \
         " generate W=2 ms/token: Open MPI's binding ${d0:-?}, unbound + yield ${d1:-?}"
    sed 's/^/  pingpong /' <<<"$pp"
  done
  netns_shape none
  echo "one process: $(gen_one | sed -n 's/.*(\(.*\) ms\/token).*/\1/p') ms/token"
}

main() {
  case $cmd in
    check) do_check | save check.txt ;;
    link) do_link | save link.txt ;;
    pd|fault|fault-mpi) . "$here/netns/pd.sh" && "do_${cmd/-/_}" | save "$cmd.txt" ;;
    exec) [[ $# -ge 3 ]] || { echo "pd_netns: exec NA NB MPIRUN_ARGS..." >&2; return 2; }
          local na=$1 nb=$2; shift 2; netns_mpirun "${TIMEOUT:-600}" "$na" "$nb" "${PLACE[@]}" "$@" ;;
    *) echo "pd_netns: unknown command '$cmd' (check, link, pd, fault, fault-mpi, exec)" >&2; return 2 ;;
  esac
}
# The work runs as a background job the shell waits for, so that a signal interrupts the wait at
# once and the teardown runs now, not when the current mpirun ends.
set -o pipefail
main "$@" &
job=$!
wait "$job"; st=$?
job=
exit "$st"
