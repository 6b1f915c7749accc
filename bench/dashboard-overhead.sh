#!/usr/bin/env bash
# What serving the training page costs training: `distgpt dev --workers 2` on the default recipe, runs alternating
# without --dashboard and with it and one headless Chromium showing the page the whole run (order swapped every
# round), median step_ms of the steady-state steps of each run, the ratio of each pair and of the medians of the run
# medians. CLIENT=curl holds the page's event stream open with curl instead of a browser: the server's own cost, as
# when the browser runs on another machine (over ssh -L).
# Settings (env): ROUNDS (3 pairs), STEPS (400 per run), WARMUP (the first 100 steps of each run are dropped),
# CLIENT (chromium), CHROMIUM (default /usr/bin/chromium). Needs python3 for the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
ROUNDS="${ROUNDS:-3}" STEPS="${STEPS:-400}" WARMUP="${WARMUP:-100}" CLIENT="${CLIENT:-chromium}" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ "$CLIENT" = curl ] || [ -x "$CHROMIUM" ] || { echo "no Chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)" >&2; exit 2; }
./distgpt --help >/dev/null # build once, outside the timed runs
tmp="$(mktemp -d)"
browser=""
trap '[ -n "$browser" ] && kill "$browser" 2>/dev/null; rm -rf "$tmp"' EXIT

median() { python3 -c "import json,sys,statistics as s; print(round(s.median(json.loads(l)['step_ms'] for l in open(sys.argv[1]) if json.loads(l)['step']>$WARMUP),3))" "$1"; }

run() { # run MODE ROUND
  local out="$tmp/$1-$2" log="$tmp/$1-$2.log"
  if [ "$1" = off ]; then
    ./distgpt dev --workers 2 --max-iters "$STEPS" --checkpoint-interval 0 --out "$out" >"$log" 2>&1
  else
    ./distgpt dev --workers 2 --max-iters "$STEPS" --checkpoint-interval 0 --out "$out" --dashboard 0 >"$log" 2>&1 &
    local dev=$!
    until grep -q '^\[dashboard\] http' "$log"; do sleep 0.2; kill -0 $dev 2>/dev/null || break; done
    local url; url="$(grep -o '^\[dashboard\] http[^ ]*' "$log" | cut -d' ' -f2)"
    if [ "$CLIENT" = curl ]; then curl -sN "${url}api/events" >/dev/null &
    else "$CHROMIUM" --headless --no-sandbox --disable-gpu --user-data-dir="$tmp/profile-$2" "$url" >/dev/null 2>&1 &
    fi
    browser=$!
    until grep -q '^step 1:' "$log"; do sleep 0.2; kill -0 $dev 2>/dev/null || break; done
    local port="${url##*:}"; port="${port%/}"
    echo "  (page connections to :$port during the run: $(ss -Htn state established "( sport = :$port )" | wc -l))"
    wait $dev
    kill "$browser" 2>/dev/null; wait "$browser" 2>/dev/null || true; browser=""
  fi
  local m; m="$(median "$out/metrics.jsonl")"
  echo "round $2 dashboard $1: median step ${m} ms" >&2
  echo "$m" >>"$tmp/$1.medians"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run off "$r"; run on "$r"; else run on "$r"; run off "$r"; fi
done
python3 - "$tmp/off.medians" "$tmp/on.medians" "$CLIENT" <<'PY'
import json, statistics, sys
off = [float(x) for x in open(sys.argv[1])]; on = [float(x) for x in open(sys.argv[2])]
print(json.dumps({"client": sys.argv[3], "off_ms": off, "on_ms": on, "pair_ratios": [round(b / a, 4) for a, b in zip(off, on)],
                  "median_off_ms": statistics.median(off), "median_on_ms": statistics.median(on),
                  "ratio_on_over_off": round(statistics.median(on) / statistics.median(off), 4)}))
PY
