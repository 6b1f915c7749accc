# Network-namespace helpers for the bench scripts (sourced; needs root and iproute2).

# netns_attach NS ADDR PORT BRIDGE_NS RATE: creates namespace NS with eth0 at ADDR/24, its peer PORT on BRIDGE_NS's br0,
# and the link limited to RATE each way (tbf on eth0 for what NS sends, on PORT for what it receives).
netns_attach() {
  local ns="$1" addr="$2" port="$3" bridge="$4" rate="$5"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$port" type veth peer name eth0 netns "$ns"
  ip link set "$port" netns "$bridge"
  ip -n "$bridge" link set "$port" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 1mb latency 100ms
  ip netns exec "$bridge" tc qdisc add dev "$port" root tbf rate "$rate" burst 1mb latency 100ms
}

# netns_remove NS...: kills what runs in each namespace and deletes it.
netns_remove() {
  for ns in "$@"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
