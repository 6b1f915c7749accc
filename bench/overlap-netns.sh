#!/usr/bin/env bash
# Gradient-upload overlap over a real (shaped) network: a coordinator and two workers, each in its own Linux network
# namespace, the workers' links limited to RATE in both directions with tbf (the coordinator's side of the bridge is not
# a bottleneck, as for a parameter server on a fatter pipe). Trains the default `cpu` recipe with the gradient sums sent
# whole after the backward (--bucket-cap-mb 0) and streamed in buckets during it (--bucket-cap-mb CAP), alternating,
# and prints the median step time of each after a warm-up. Needs root (ip netns, tc) and iproute2.
#
# usage: bench/overlap-netns.sh [steps] [repeats]        env: RATE (1gbit), CAP (0.25, MiB), WIRE (fp32 | bf16)
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
steps=${1:-120}; repeats=${2:-2}; warm=20
RATE="${RATE:-1gbit}"; CAP="${CAP:-0.25}"; WIRE="${WIRE:-fp32}"
command -v ip >/dev/null && command -v tc >/dev/null || { echo "needs iproute2 (ip, tc)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root for network namespaces" >&2; exit 2; }
./distgpt --help >/dev/null
bin="$(realpath ./distgpt)"
source bench/lib/netns.sh
export DISTGPT_CLUSTER_TOKEN="overlap-$$-$RANDOM" # the coordinator listens beyond loopback: members only

tag="dgov$$"; coord="$tag-c"; hosts=("$tag-w0" "$tag-w1")
tmp=$(mktemp -d)
cleanup() {
  netns_remove "${hosts[@]}" "$coord"
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$coord"
ip -n "$coord" link set lo up
ip -n "$coord" link add br0 type bridge
ip -n "$coord" addr add 10.77.0.1/24 dev br0
ip -n "$coord" link set br0 up
# RATE each way on the workers' links: their uploads and their downloads
for i in 0 1; do netns_attach "${hosts[$i]}" "10.77.0.$((i + 2))" "$tag-p$i" "$coord" "$RATE"; done

median_ms() { # metrics.jsonl -> median step_ms after the warm-up steps
  grep -o '"step_ms":[0-9.]*' "$1" | cut -d: -f2 | tail -n +$((warm + 1)) | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

run() { # cap -> median step ms
  local cap="$1" out="$tmp/run-$1-$RANDOM" port=$((20000 + RANDOM % 20000))
  ip netns exec "$coord" "$bin" coordinator --listen "http://10.77.0.1:$port" --min-workers 2 --max-iters "$steps" \
    --eval-interval 100000 --checkpoint-interval 0 --threads 2 --wire-dtype "$WIRE" --bucket-cap-mb "$cap" --out "$out" \
    >"$out.log" 2>&1 &
  local c=$!
  for i in 0 1; do
    ip netns exec "${hosts[$i]}" "$bin" worker --coordinator "http://10.77.0.1:$port" --name "w$i" --threads 1 \
      --data "$DISTGPT_DATA" >"$out.w$i.log" 2>&1 &
  done
  wait "$c" || { cat "$out.log" >&2; exit 1; }
  wait
  median_ms "$out/metrics.jsonl"
}

declare -A ms
for ((r = 1; r <= repeats; r++)); do
  ms[whole]+=" $(run 0)"
  ms[streamed]+=" $(run "$CAP")"
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
whole=$(echo "${ms[whole]}" | med); streamed=$(echo "${ms[streamed]}" | med)
echo "cpu recipe, 2 workers x 1 thread, links $RATE each way, gradients $WIRE, $steps steps x $repeats (median step after $warm)"
printf '%-40s %8.2f ms/step\n' "whole sum after the backward (cap 0)" "$whole"
printf '%-40s %8.2f ms/step  (%.2fx faster)\n' "streamed in ${CAP} MiB buckets" "$streamed" "$(echo "$whole / $streamed" | bc -l)"
