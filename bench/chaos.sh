#!/usr/bin/env bash
# Chaos benchmark: 4 workers train the `cpu` config for 300 steps while a random worker is SIGKILLed (and restarted)
# every ~20 steps and the coordinator is SIGKILLed once and resumed from its checkpoint. Prints the faults, the
# recovery time of each (kill -> next completed step), and the final val loss next to a fault-free run with the same seed.
# Usage: bench/chaos.sh [steps] [workers]       (needs DISTGPT_DATA or data/tinyshakespeare.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}; workers=${2:-4}
./distgpt --help >/dev/null   # build once
bin=src/Coordinator/bin/Release/net10.0/distgpt
tmp=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
export DISTGPT_CLUSTER_TOKEN=chaos-$RANDOM$RANDOM
flags=(--max-iters "$steps" --eval-interval "$steps" --checkpoint-interval 25 --heartbeat-timeout 5 --threads 1)
port() { echo $((20000 + RANDOM % 20000)); }
lines() { [ -f "$1/metrics.jsonl" ] && wc -l < "$1/metrics.jsonl" || echo 0; }
now() { date +%s.%N; }
val_loss() { tail -1 "$1/metrics.jsonl" | grep -o '"val_loss":[0-9.]*' | cut -d: -f2; }

start_worker() { # dir port name
  "$bin" worker --coordinator "http://127.0.0.1:$2" --name "$3" --threads 1 --connect-timeout 60 >>"$1/$3.log" 2>&1 &
  echo $!
}

run() { # dir chaos(0/1)
  local dir=$1 chaos=$2 p; p=$(port); mkdir -p "$dir"
  "$bin" coordinator --listen "http://127.0.0.1:$p" --min-workers "$workers" --out "$dir" "${flags[@]}" >>"$dir/coordinator.log" 2>&1 &
  local coord=$! pids=() i
  for ((i = 0; i < workers; i++)); do pids[i]=$(start_worker "$dir" "$p" "w$i"); done
  local next=20 resumed=0 faults=0
  while kill -0 "$coord" 2>/dev/null; do
    if [ "$chaos" = 1 ] && [ "$(lines "$dir")" -ge "$next" ] && [ "$next" -lt "$steps" ]; then
      local before t0 kind
      before=$(lines "$dir"); t0=$(now)
      if [ "$resumed" = 0 ] && [ "$next" -ge $((steps / 2)) ]; then
        kind="coordinator"; kill -9 "$coord"; wait "$coord" 2>/dev/null || true
        "$bin" coordinator --listen "http://127.0.0.1:$p" --min-workers 1 --out "$dir" --resume "${flags[@]}" >>"$dir/coordinator.log" 2>&1 &
        coord=$!; resumed=1
        before=$(grep -o '"step":[0-9]*' "$dir/metrics.jsonl" | tail -1 | cut -d: -f2)
      else
        i=$((RANDOM % workers)); kind="worker w$i"
        kill -9 "${pids[i]}" 2>/dev/null || true
        pids[i]=$(start_worker "$dir" "$p" "w$i")
      fi
      faults=$((faults + 1))
      # recovery: until a step beyond the one completed at the kill is logged
      until [ "$(grep -o '"step":[0-9]*' "$dir/metrics.jsonl" | tail -1 | cut -d: -f2)" -gt "$before" ] 2>/dev/null || ! kill -0 "$coord" 2>/dev/null; do sleep 0.05; done
      printf '  fault %2d at step %3d: killed %-12s recovered in %.2f s\n' "$faults" "$before" "$kind" "$(echo "$(now) - $t0" | bc)"
      next=$((next + 20))
    fi
    sleep 0.05
  done
  wait "$coord" || { echo "coordinator failed; see $dir/coordinator.log"; tail -20 "$dir/coordinator.log"; exit 1; }
  echo "  steps completed: $(lines "$dir") of $steps; faults injected: $faults"
}

echo "fault-free run ($workers workers, $steps steps):"
run "$tmp/clean" 0
echo "chaos run:"
run "$tmp/chaos" 1
clean=$(val_loss "$tmp/clean"); chaos=$(val_loss "$tmp/chaos")
contiguous=$(grep -o '"step":[0-9]*' "$tmp/chaos/metrics.jsonl" | cut -d: -f2 | awk 'BEGIN{ok=1} {if ($1 != NR) ok=0} END{print ok ? "yes" : "NO"}')
echo "step numbers contiguous in the chaos run: $contiguous"
echo "final val loss: fault-free $clean, chaos $chaos, difference $(echo "scale=4; 100 * ($chaos - $clean) / $clean" | bc)%"
