#!/usr/bin/env bash
# Scaling over shaped links: a coordinator and N = 1..NMAX workers, each in its own Linux network namespace, all joined
# by a bridge in a "switch" namespace; every node's link, the coordinator's included, is limited to RATE each way (tbf on
# the node's side for what it sends, on the switch port for what it receives), as one NIC per machine. Cluster mode, a
# model big enough for the coordinator's link to matter on 2 cores (the default: 4 layers x 256 wide, 3.2M parameters,
# 12.7 MB of fp32 a tensor), weak scaling (PER_WORKER sequences of 64 tokens per worker, 4 by default; all the workers
# share this machine's 2 cores, so their compute grows with N here, as it would not on N machines: the unshaped run,
# RATE=40gbit, measures that for bench/scaling_model.py). Each --shards value in SHARDS ("1 auto": today's coordinator,
# every gradient sum up and every weight set down through its link, against parameter shards on the workers, whose
# tensors go worker to worker) runs at each N, REPEATS times, alternated within a repeat; prints per N and shards the
# median step time after the warm-up, the slowest worker's median compute (and without the forward's waits for arriving
# weights: busy_ms in the JSON), the coordinator's bytes per step (sent +
# received) and the largest node's, each way (the larger of its sent and received: a full-duplex link's load) and both
# ways (from metrics.jsonl's node_bytes: data-plane sockets plus, with shards, the peer plane). One JSON line per run
# goes to OUT (default /tmp/scaling-netns.jsonl) for bench/scaling_model.py. Needs root (ip netns, tc) and iproute2.
#
# usage: bench/scaling-netns.sh [steps] [repeats]      env: NMAX (4), RATE (1gbit), WIRE (fp32 | bf16), CAP (bucket MiB,
#        0.25), PER_WORKER (4), MODEL (the model flags), SHARDS ("1 auto"), OUT
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
steps=${1:-30}; repeats=${2:-2}; warm=8
NMAX="${NMAX:-4}"; RATE="${RATE:-1gbit}"; WIRE="${WIRE:-fp32}"; CAP="${CAP:-0.25}"; OUT="${OUT:-/tmp/scaling-netns.jsonl}"
PER_WORKER="${PER_WORKER:-4}"; SHARDS="${SHARDS:-1 auto}"; MODEL="${MODEL:---n-layer 4 --n-head 4 --n-embd 256 --block-size 64 --dropout 0}"
command -v ip >/dev/null && command -v tc >/dev/null || { echo "needs iproute2 (ip, tc)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root for network namespaces" >&2; exit 2; }
./distgpt --help >/dev/null
bin="$(realpath ./distgpt)"
source bench/lib/netns.sh
export DISTGPT_CLUSTER_TOKEN="scaling-$$-$RANDOM"

tag="dgsc$$"; switch="$tag-s"; coord="$tag-c"
hosts=(); for ((i = 0; i < NMAX; i++)); do hosts+=("$tag-w$i"); done
tmp=$(mktemp -d)
cleanup() {
  netns_remove "$coord" "${hosts[@]}" "$switch"
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$switch"
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up
netns_attach "$coord" 10.78.0.1 "$tag-pc" "$switch" "$RATE"
for ((i = 0; i < NMAX; i++)); do netns_attach "${hosts[$i]}" "10.78.0.$((i + 2))" "$tag-p$i" "$switch" "$RATE"; done

run() { # workers shards -> one JSON line of medians
  local n="$1" shards="$2" out="$tmp/run-$1-$RANDOM" port=$((20000 + RANDOM % 20000))
  # shellcheck disable=SC2086
  ip netns exec "$coord" "$bin" coordinator --listen "http://10.78.0.1:$port" --min-workers "$n" --max-iters "$steps" \
    --eval-interval 100000 --eval-iters 1 --checkpoint-interval 0 --threads 2 --wire-dtype "$WIRE" --bucket-cap-mb "$CAP" \
    --shards "$shards" $MODEL --batch-size $((PER_WORKER * n)) --out "$out" >"$out.log" 2>&1 &
  local c=$!
  for ((i = 0; i < n; i++)); do
    ip netns exec "${hosts[$i]}" "$bin" worker --coordinator "http://10.78.0.1:$port" --name "w$i" --threads 1 \
      --data "$DISTGPT_DATA" >"$out.w$i.log" 2>&1 &
  done
  wait "$c" || { cat "$out.log" >&2; exit 1; }
  wait
  python3 - "$out/metrics.jsonl" "$n" "$warm" "$RATE" "$WIRE" "$shards" <<'EOF'
import json, statistics, sys
path, n, warm, rate, wire, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
rows = [json.loads(l) for l in open(path)][warm:]
med = lambda xs: statistics.median(xs)
def directions(r, name):
    node = r["node_bytes"][name]
    parts = [node["socket"]] + ([node["peer"]] if "peer" in node else [])
    return sum(p["sent"] for p in parts), sum(p["received"] for p in parts)
def node_bytes(r, name):
    return sum(directions(r, name))
def each_way(r, name):
    return max(directions(r, name))
names = rows[0]["node_bytes"].keys()
import re
number, unit = re.fullmatch(r"([0-9.]+)([kmg]?)bit", rate.lower()).groups()
bps = float(number) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[unit]
print(json.dumps({
    "workers": n, "shards": shards, "rate_bps": bps, "wire": wire, "steps": len(rows),
    "step_ms": med([r["step_ms"] for r in rows]),
    "compute_ms": med([r["compute_ms"] for r in rows]),
    "busy_ms": med([r["compute_busy_ms"] for r in rows]),
    "coordinator_bytes": med([node_bytes(r, "coordinator") for r in rows]),
    "max_node_bytes": med([max(node_bytes(r, k) for k in names) for r in rows]),
    "max_node_bytes_each_way": med([max(each_way(r, k) for k in names) for r in rows]),
    "worker_bytes": med([max(node_bytes(r, k) for k in names if k != "coordinator") for r in rows]),
}))
EOF
}

for ((r = 1; r <= repeats; r++)); do
  for ((n = 1; n <= NMAX; n++)); do for s in $SHARDS; do run "$n" "$s" >>"$tmp/all.jsonl"; done; done
done
cp "$tmp/all.jsonl" "$OUT"
params=$(grep -o '[0-9,]* parameters' "$(ls "$tmp"/run-1-*.log | head -1)" | head -1 | tr -d ,)
echo "cluster mode over $RATE links (coordinator's too), $WIRE gradients in $CAP MiB buckets, $params; $steps steps x $repeats, medians after $warm"
python3 - "$OUT" "$params" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
tensor = 4 * int(sys.argv[2].split()[0])  # 4P: one fp32 copy of the weights
print(f'{"N":>3} {"shards":>6} {"step ms":>9} {"vs 1":>6} {"compute ms":>10} {"coord MB":>9} {"largest node MB, each way":>26} {"(x 4P)":>7} {"both ways":>10}')
for n in sorted({r["workers"] for r in runs}):
    base = None
    for shards in dict.fromkeys(r["shards"] for r in runs):
        mine = [r for r in runs if r["workers"] == n and r["shards"] == shards]
        if not mine: continue
        med = lambda k: statistics.median(r[k] for r in mine)
        base = base or med("step_ms")
        print(f'{n:3d} {shards:>6} {med("step_ms"):9.1f} {med("step_ms") / base:6.2f} {med("compute_ms"):10.1f} {med("coordinator_bytes") / 1e6:9.1f} '
              f'{med("max_node_bytes_each_way") / 1e6:26.1f} {med("max_node_bytes_each_way") / tensor:7.2f} {med("max_node_bytes") / 1e6:10.1f}')
EOF
echo "per-run lines: $OUT"
