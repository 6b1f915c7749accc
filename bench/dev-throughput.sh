#!/usr/bin/env bash
# Dev-mode throughput: median tokens/s of `distgpt train` (one process, all cores) next to `distgpt dev` with 1 and
# 2 worker processes, on the same config, alternating the three for each repeat. Usage: bench/dev-throughput.sh [steps] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-150}; repeats=${2:-2}; warm=30
./distgpt --help >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
flags=(--max-iters "$steps" --eval-interval 100000 --checkpoint-interval 0)
median_tps() { # metrics.jsonl -> median tokens_per_s after the warm-up steps
  grep -o '"tokens_per_s":[0-9.]*' "$1" | cut -d: -f2 | tail -n +$((warm + 1)) | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}
declare -A results
for ((r = 1; r <= repeats; r++)); do
  ./distgpt train "${flags[@]}" --out "$tmp/train$r" >/dev/null
  results[train]+=" $(median_tps "$tmp/train$r/metrics.jsonl")"
  for w in 1 2; do
    ./distgpt dev --workers "$w" "${flags[@]}" --out "$tmp/dev$w-$r" >/dev/null
    results[dev$w]+=" $(median_tps "$tmp/dev$w-$r/metrics.jsonl")"
  done
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
train=$(echo "${results[train]}" | med)
printf '%-26s %10s tokens/s\n' "train (1 process)" "$train"
for w in 1 2; do
  v=$(echo "${results[dev$w]}" | med)
  printf '%-26s %10s tokens/s  (%.2fx train)\n' "dev --workers $w" "$v" "$(echo "$v / $train" | bc -l)"
done
