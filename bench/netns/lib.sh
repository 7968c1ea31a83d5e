# Two "hosts" on one machine for bench/pd_netns.sh and tests/netns: two network namespaces joined
# by a veth pair, Open MPI's TCP transport across it. Sourced (bash); every name carries the
# sourcing shell's pid, so parallel runs never collide, and netns_teardown removes only what this
# run made (and ends only the processes left inside its own namespaces).
NETNS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NS_A=dsacp-a-$$ NS_B=dsacp-b-$$            # namespaces: A holds mpirun and rank 0
VETH_A=dsva$$ VETH_B=dsvb$$                # the pair's ends (interface names: 15 bytes at most)
ADDR_A=10.77.0.1 ADDR_B=10.77.0.2 NETNS_SUBNET=10.77.0.0/24
NETNS_MADE=()                              # what this run created, for teardown

# 0: root, iproute2 and namespaces usable; 77: not here (not root -- then a missing iproute2 is
# only reported, with the one command to run -- or namespaces refused, as in most containers),
# the reason on stderr; 1: installing iproute2 as root failed.
netns_require() {
  local tool have=1
  for tool in ip tc; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool || -x /sbin/$tool ]] || have=0
  done
  if (( !have )); then
    if [[ $(id -u) -ne 0 ]]; then
      echo "netns: iproute2 (ip, tc) is missing; run: sudo apt-get install -y iproute2" >&2; return 77
    fi
    echo "netns: installing iproute2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >&2 || return 1
  fi
  [[ $(id -u) -eq 0 ]] || { echo "netns: needs root (network namespaces)" >&2; return 77; }
  export PATH=$PATH:/usr/sbin:/sbin
  local probe=dsacp-p-$$
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "netns: network namespaces are not permitted here" >&2; return 77
  fi
  ip netns del "$probe"
}

netns_setup() {
  ip netns add "$NS_A" && NETNS_MADE+=("$NS_A") || return 1
  ip netns add "$NS_B" && NETNS_MADE+=("$NS_B") || return 1
  ip link add "$VETH_A" type veth peer name "$VETH_B" || return 1
  # Moving each end into its namespace takes it out of the root namespace; deleting a namespace
  # deletes the end inside it and so the pair.
  ip link set "$VETH_A" netns "$NS_A" || { ip link del "$VETH_A"; return 1; }
  ip link set "$VETH_B" netns "$NS_B" || return 1
  local ns dev addr
  for ns in A B; do
    eval "dev=\$VETH_$ns addr=\$ADDR_$ns ns=\$NS_$ns"
    ip -n "$ns" link set lo up && ip -n "$ns" addr add "$addr/24" dev "$dev" && ip -n "$ns" link set "$dev" up || return 1
  done
}

netns_teardown() {
  local ns pid
  for ns in "${NETNS_MADE[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  for ns in "${NETNS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null; done
  NETNS_MADE=()
}

# netns_shape RATE [BURST [LATENCY]]: a tbf on both ends' egress (each direction shaped once), or
# with RATE "none" the link as it is. tbf's burst is the bucket (bytes sent at line rate before
# the rate applies); its latency bounds the queue (a packet that would wait longer is dropped).
netns_shape() {
  local rate=$1 burst=${2:-256kb} latency=${3:-50ms} ns dev
  for ns in A B; do
    eval "dev=\$VETH_$ns ns=\$NS_$ns"
    ip netns exec "$ns" tc qdisc del dev "$dev" root 2>/dev/null
    [[ $rate == none ]] && continue
    ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency "$latency" || return 1
  done
}

# Whether netem exists on this kernel (it injects latency; tbf and htb only shape bandwidth).
netns_has_netem() {
  ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root netem delay 1ms 2>/dev/null || return 1
  ip netns exec "$NS_A" tc qdisc del dev "$VETH_A" root
}

# netns_link up|down: both ends of the pair.
netns_link() { ip -n "$NS_A" link set "$VETH_A" "$1"; ip -n "$NS_B" link set "$VETH_B" "$1"; }

# netns_mpirun SECONDS NA NB ARGS...: mpirun inside namespace A under `timeout SECONDS`, NA slots
# on A's address then NB on B's (ranks fill A first), Open MPI's TCP transport on the veth
# subnet only, the remote daemon started through bench/netns/rsh.sh. ARGS: -np N PROGRAM ...
# (or an MPMD line). Status: mpirun's, 124 when the bound was passed. Under a sanitizer build the
# ranks skip leak detection (ASAN_OPTIONS, as the other MPI tests: Open MPI's own allocations).
netns_mpirun() {
  local secs=$1 na=$2 nb=$3; shift 3
  ip netns exec "$NS_A" env DSACP_NETNS_MAP="$ADDR_A=$NS_A $ADDR_B=$NS_B" \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS="${MPI_ASAN_OPTIONS:-detect_leaks=0}" \
    timeout -k 5 "$secs" mpirun --host "$ADDR_A:$na,$ADDR_B:$nb" --oversubscribe \
      --mca plm_rsh_agent "$NETNS_DIR/rsh.sh" --mca plm_rsh_no_tree_spawn 1 \
      --mca btl tcp,self --mca btl_tcp_if_include "$NETNS_SUBNET" --mca oob_tcp_if_include "$NETNS_SUBNET" \
      -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE -x ASAN_OPTIONS "$@"
}
