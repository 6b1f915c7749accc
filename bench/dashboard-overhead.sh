#!/usr/bin/env bash
# What serving the training page costs training: `distgpt dev --workers 2` on the default recipe, runs alternating
# without --dashboard and with it and one headless Chromium showing the page the whole run (order swapped every
# round). Per run: the median step_ms of the steady-state steps, and the CPU time per step of the training processes
# (coordinator + workers) and of the browser, from /proc between step WARMUP and step STEPS - 20. Then the ratio of
# each pair and of the medians. CLIENT=curl holds the page's event stream open with curl instead of a browser: the
# server's own cost, as when the browser runs on another machine (over ssh -L).
# Settings (env): ROUNDS (3 pairs), STEPS (400 per run), WARMUP (the first 100 steps of each run are dropped),
# CLIENT (chromium), CHROMIUM (default /usr/bin/chromium). Needs python3 for the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
ROUNDS="${ROUNDS:-3}" STEPS="${STEPS:-400}" WARMUP="${WARMUP:-100}" CLIENT="${CLIENT:-chromium}" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ "$CLIENT" = curl ] || [ -x "$CHROMIUM" ] || { echo "no Chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)" >&2; exit 2; }
./distgpt --help >/dev/null # build once, outside the timed runs
tmp="$(mktemp -d)"
client=""
trap '[ -n "$client" ] && kill "$client" 2>/dev/null; rm -rf "$tmp"' EXIT

median() { python3 -c "import json,sys,statistics as s; print(round(s.median(json.loads(l)['step_ms'] for l in open(sys.argv[1]) if json.loads(l)['step']>$WARMUP),3))" "$1"; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
lines() { { wc -l <"$1"; } 2>/dev/null || echo 0; }
browser_pids() { pgrep -f "user-data-dir=$tmp/profile-$1" || true; }

run() { # run MODE ROUND
  local out="$tmp/$1-$2" log="$tmp/$1-$2.log" flags=()
  [ "$1" = on ] && flags=(--dashboard 0)
  ./distgpt dev --workers 2 --max-iters "$STEPS" --checkpoint-interval 0 --out "$out" "${flags[@]}" >"$log" 2>&1 &
  local dev=$!
  if [ "$1" = on ]; then
    until grep -q '^\[dashboard\] http' "$log"; do sleep 0.2; kill -0 $dev 2>/dev/null || break; done
    local url; url="$(grep -o '^\[dashboard\] http[^ ]*' "$log" | cut -d' ' -f2)"
    if [ "$CLIENT" = curl ]; then curl -sN "${url}api/events" >/dev/null &
    else "$CHROMIUM" --headless --no-sandbox --disable-gpu --user-data-dir="$tmp/profile-$2" "$url" >/dev/null 2>&1 &
    fi
    client=$!
  fi
  until [ "$(lines "$out/metrics.jsonl")" -ge "$WARMUP" ]; do sleep 0.1; kill -0 $dev 2>/dev/null || break; done
  local procs=("$dev" $(pgrep -P "$dev" || true)) s0 t0 b0
  s0=$(lines "$out/metrics.jsonl"); t0=$(ticks "${procs[@]}"); b0=$(ticks $(browser_pids "$2") ${client:+$([ "$CLIENT" = curl ] && echo "$client")})
  until [ "$(lines "$out/metrics.jsonl")" -ge $((STEPS - 20)) ]; do sleep 0.1; kill -0 $dev 2>/dev/null || break; done
  local s1 t1 b1
  s1=$(lines "$out/metrics.jsonl"); t1=$(ticks "${procs[@]}"); b1=$(ticks $(browser_pids "$2") ${client:+$([ "$CLIENT" = curl ] && echo "$client")})
  wait $dev
  if [ -n "$client" ]; then kill "$client" 2>/dev/null; wait "$client" 2>/dev/null || true; client=""; fi
  local m cpu browser
  m="$(median "$out/metrics.jsonl")"
  cpu=$(python3 -c "print(round(($t1 - $t0) * 10 / max(1, $s1 - $s0), 2))"); browser=$(python3 -c "print(round(($b1 - $b0) * 10 / max(1, $s1 - $s0), 2))")
  echo "round $2 dashboard $1: median step ${m} ms; CPU per step: training processes ${cpu} ms, page client ${browser} ms" >&2
  echo "$m $cpu $browser" >>"$tmp/$1.runs"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run off "$r"; run on "$r"; else run on "$r"; run off "$r"; fi
done
python3 - "$tmp/off.runs" "$tmp/on.runs" "$CLIENT" <<'PY'
import json, statistics, sys
off = [list(map(float, l.split())) for l in open(sys.argv[1])]; on = [list(map(float, l.split())) for l in open(sys.argv[2])]
med = lambda rows, i: statistics.median(r[i] for r in rows)
print(json.dumps({"client": sys.argv[3], "step_ms_off": [r[0] for r in off], "step_ms_on": [r[0] for r in on],
                  "pair_ratios": [round(b[0] / a[0], 4) for a, b in zip(off, on)],
                  "median_step_ms_off": med(off, 0), "median_step_ms_on": med(on, 0), "ratio_on_over_off": round(med(on, 0) / med(off, 0), 4),
                  "cpu_ms_per_step_training_off": med(off, 1), "cpu_ms_per_step_training_on": med(on, 1), "cpu_ms_per_step_client": med(on, 2)}))
PY
