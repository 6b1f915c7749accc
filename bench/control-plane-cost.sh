#!/usr/bin/env bash
# What the Orleans control plane costs per step: `distgpt dev --workers 2` (default recipe) with this build next to an
# older one (before the Orleans fabric, e.g. a checkout of 4ac6bc9 built with `dotnet build src/Coordinator -c Release`),
# alternated. Prints per build the median step_ms and comm_ms after the warm-up steps, and the wall time from launch to the
# end of a 1-step run (start-up and shutdown). Usage: OLD=/path/to/old/distgpt bench/control-plane-cost.sh [steps] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
: "${OLD:?set OLD to the distgpt binary of the build to compare with}"
NEW="$(pwd)/distgpt"
steps=${1:-300}; repeats=${2:-3}; warm=50
"$NEW" --help >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { grep -o "\"$2\":[0-9.]*" "$1" | cut -d: -f2 | tail -n +$((warm + 1)) | median; }
declare -A step comm wall
for ((r = 1; r <= repeats; r++)); do
  for build in old new; do
    bin=$OLD; [ "$build" = new ] && bin=$NEW
    out="$tmp/$build$r"
    "$bin" dev --workers 2 --max-iters "$steps" --eval-interval 100000 --checkpoint-interval 0 --out "$out" >/dev/null
    step[$build]+=" $(field "$out/metrics.jsonl" step_ms)"
    comm[$build]+=" $(field "$out/metrics.jsonl" comm_ms)"
    s=$(date +%s%N)
    "$bin" dev --workers 2 --max-iters 1 --eval-interval 100000 --checkpoint-interval 0 --out "$tmp/w$build$r" >/dev/null
    wall[$build]+=" $(( ($(date +%s%N) - s) / 1000000 ))"
  done
done
for build in old new; do
  printf '%-4s step %6.2f ms  comm %5.2f ms  1-step run %6d ms (medians of %d)\n' "$build" \
    "$(echo "${step[$build]}" | tr ' ' '\n' | grep . | median)" "$(echo "${comm[$build]}" | tr ' ' '\n' | grep . | median)" \
    "$(echo "${wall[$build]}" | tr ' ' '\n' | grep . | median)" "$repeats"
done
