#!/usr/bin/env bash
# Dev-mode throughput: median tokens/s of `distgpt train` (one process, all cores) next to `distgpt dev` with 1 and
# 2 worker processes and PyTorch DDP (gloo, 2 processes x 1 thread, bench/reference_ddp.py), on the `cpu` config (the
# default recipe), alternating all four for each repeat; dev's ratio to train also per repeat (against the train run
# just before it) and their median. Usage: bench/dev-throughput.sh [steps] [repeats]
# env: PYTHON (/usr/bin/python3 with Debian's python3-torch; without torch the DDP row is skipped), OPENBLAS_DIR (as in
# compare-pytorch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
PYTHON="${PYTHON:-/usr/bin/python3}"
OPENBLAS_DIR="${OPENBLAS_DIR:-/usr/lib/x86_64-linux-gnu/openblas-pthread}"
[ -e "$OPENBLAS_DIR/libblas.so.3" ] && export LD_LIBRARY_PATH="$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ddp=0; "$PYTHON" -c 'import torch' 2>/dev/null && ddp=1
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
  if [ "$ddp" = 1 ]; then
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$PYTHON" bench/reference_ddp.py --config cpu --world 2 --steps "$steps" \
      --warmup "$warm" --data "$DISTGPT_DATA" >"$tmp/ddp$r" 2>&1
    results[ddp]+=" $(tail -1 "$tmp/ddp$r" | grep -o '"tokens_per_s": [0-9.]*' | cut -d' ' -f2)"
  fi
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
train=$(echo "${results[train]}" | med)
printf '%-26s %10s tokens/s\n' "train (1 process)" "$train"
for w in 1 2; do
  v=$(echo "${results[dev$w]}" | med)
  # Each repeat's dev run against the train run just before it: drifts in machine speed between repeats cancel out.
  paired=$(paste <(echo "${results[dev$w]}" | tr ' ' '\n' | grep .) <(echo "${results[train]}" | tr ' ' '\n' | grep .) | awk '{printf "%.4f ", $1 / $2}')
  printf '%-26s %10s tokens/s  (%.2fx train; per repeat %s-> median %.2fx)\n' "dev --workers $w" "$v" "$(echo "$v / $train" | bc -l)" \
    "$(echo "$paired" | awk '{for (i = 1; i <= NF; i++) printf "%.2f ", $i}')" "$(echo "$paired" | med)"
done
if [ "$ddp" = 1 ]; then
  d=$(echo "${results[ddp]}" | med); v=$(echo "${results[dev2]}" | med)
  printf '%-26s %10s tokens/s  (dev --workers 2 = %.2fx DDP)\n' "PyTorch DDP gloo 2x1" "$d" "$(echo "$v / $d" | bc -l)"
fi
