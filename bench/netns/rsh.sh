#!/bin/sh
# Open MPI's remote-shell agent for two network namespaces on one machine (bench/pd_netns.sh):
# mpirun calls it as `rsh.sh [ssh-style options] HOST COMMAND...`, like ssh. HOST is an address
# of the veth subnet; DSACP_NETNS_MAP ("ADDR=NAMESPACE ADDR=NAMESPACE", set by the script and
# inherited from mpirun) names the namespace holding it, and the command runs there through
# `ip netns exec` under sh, as sshd would run it.
while [ $# -gt 0 ]; do
  case $1 in
    -x|-T|-q|-n|-a|-4|-6) shift ;;            # ssh flags Open MPI may pass: nothing to do here
    -o|-p|-l) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=${1:?rsh.sh: no host}; shift
ns=
for pair in ${DSACP_NETNS_MAP:?rsh.sh: DSACP_NETNS_MAP is not set}; do
  [ "${pair%%=*}" = "$host" ] && ns=${pair#*=}
done
[ -n "$ns" ] || { echo "rsh.sh: host '$host' is not in DSACP_NETNS_MAP ($DSACP_NETNS_MAP)" >&2; exit 255; }
exec ip netns exec "$ns" sh -c "$*"
