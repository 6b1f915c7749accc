#!/usr/bin/env bash
# Side-by-side training throughput: `distgpt bench` against a PyTorch nanoGPT reference (bench/reference_gpt.py) on the
# same config and corpus, run in alternation (A B A B ...) so that machine noise hits both, and compared as ratios of
# medians. PyTorch runs with 1 and 2 threads (torch.set_num_threads, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS alike, as
# OpenBLAS's pthread build otherwise starts its own pool on every core; 2 with OMP_WAIT_POLICY=PASSIVE) and its best is taken.
#
# usage: bench/compare-pytorch.sh [config ...]            (default: tiny cpu; shakespeare takes ~15 s per step)
# env:   ROUNDS (3 A/B rounds), STEPS (per config: tiny 60, cpu 40, shakespeare 3), WARMUP (3; shakespeare 1),
#        THREADS (distgpt --threads, default all cores), PYTHON (/usr/bin/python3, Debian's python3-torch 1.13),
#        DISTGPT_BIN (the distgpt executable to time; default ./distgpt, built once),
#        OPENBLAS_DIR (a directory holding OpenBLAS's libblas.so.3; default Debian's libopenblas0-pthread location).
# PyTorch 1.13 from Debian calls whatever libblas.so.3 the system links; with the netlib reference BLAS its matmuls are
# ~10x slower, so the script puts OpenBLAS first on LD_LIBRARY_PATH (`apt-get install libopenblas0-pthread`, or
# `apt-get download libopenblas0-pthread && dpkg -x *.deb DIR` and OPENBLAS_DIR=DIR/usr/lib/x86_64-linux-gnu/openblas-pthread).
# Peak RSS of every run comes from /usr/bin/time (else the scripts' own reports). The last line is a JSON summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
PYTHON="${PYTHON:-/usr/bin/python3}"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-$(nproc)}"
OPENBLAS_DIR="${OPENBLAS_DIR:-/usr/lib/x86_64-linux-gnu/openblas-pthread}"
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(tiny cpu)

if [ -e "$OPENBLAS_DIR/libblas.so.3" ]; then
  export LD_LIBRARY_PATH="$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  echo "warning: no OpenBLAS at $OPENBLAS_DIR; PyTorch will use the system libblas.so.3 (netlib's reference BLAS is ~10x slower)" >&2
fi

DISTGPT_BIN="${DISTGPT_BIN:-./distgpt}"
"$DISTGPT_BIN" --help >/dev/null  # build once, outside the timed runs
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# run NAME CMD...: runs CMD, keeps its last line (JSON) and adds peak_rss_mb from /usr/bin/time when available.
run() {
  local name="$1"; shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%M" -o "$tmp/rss" "$@" >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    local rss_kb; rss_kb="$(tail -1 "$tmp/rss")"
    tail -1 "$tmp/out" | "$PYTHON" -c "import json,sys; d=json.loads(sys.stdin.read()); d['peak_rss_mb']=round($rss_kb/1024,1); d['run']='$name'; print(json.dumps(d))"
  else
    "$@" >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    tail -1 "$tmp/out" | "$PYTHON" -c "import json,sys; d=json.loads(sys.stdin.read()); d['run']='$name'; print(json.dumps(d))"
  fi
}

results="$tmp/results.jsonl"
for config in "${configs[@]}"; do
  case "$config" in
    tiny) steps="${STEPS:-60}"; warmup="${WARMUP:-3}" ;;
    cpu) steps="${STEPS:-40}"; warmup="${WARMUP:-3}" ;;
    shakespeare) steps="${STEPS:-3}"; warmup="${WARMUP:-1}" ;;
    *) echo "unknown config $config (tiny, cpu, shakespeare)" >&2; exit 2 ;;
  esac
  for round in $(seq 1 "$ROUNDS"); do
    run distgpt "$DISTGPT_BIN" bench --config "$config" --steps "$steps" --warmup "$warmup" --threads "$THREADS" | tee -a "$results"
    run pytorch-1t env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$PYTHON" bench/reference_gpt.py --config "$config" --steps "$steps" --warmup "$warmup" \
      --threads 1 --data "$DISTGPT_DATA" | tee -a "$results"
    run pytorch-2t env OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE "$PYTHON" bench/reference_gpt.py --config "$config" --steps "$steps" \
      --warmup "$warmup" --threads 2 --data "$DISTGPT_DATA" | tee -a "$results"
  done
done

"$PYTHON" - "$results" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
machine = f"{sys.argv[2]} vCPU {sys.argv[3]}"
summary = []
print()
print("| config | DistGpt tokens/s | PyTorch 1.13 tokens/s (best of 1/2 threads) | ratio | DistGpt peak RSS | PyTorch peak RSS | machine |")
print("|---|---|---|---|---|---|---|")
for config in dict.fromkeys(r["config"] for r in rows):
    med = {}
    rss = {}
    for run in ("distgpt", "pytorch-1t", "pytorch-2t"):
        rs = [r for r in rows if r["config"] == config and r["run"] == run]
        med[run] = statistics.median(r["tokens_per_s"] for r in rs)
        rss[run] = max(r.get("peak_rss_mb", 0) for r in rs)
    best = max(("pytorch-1t", "pytorch-2t"), key=lambda k: med[k])
    ratio = med["distgpt"] / med[best]
    # Also the median of per-round ratios (each round's DistGpt run against that round's better PyTorch run): less
    # sensitive to a burst of load that hits one side of a round.
    runs = {run: [r for r in rows if r["config"] == config and r["run"] == run] for run in ("distgpt", "pytorch-1t", "pytorch-2t")}
    per_round = [d["tokens_per_s"] / max(p1["tokens_per_s"], p2["tokens_per_s"])
                 for d, p1, p2 in zip(runs["distgpt"], runs["pytorch-1t"], runs["pytorch-2t"])]
    round_ratio = statistics.median(per_round)
    print(f"| {config} | {med['distgpt']:,.0f} | {med[best]:,.0f} ({best[-2]} thread{'s' if best[-2] != '1' else ''}) | "
          f"{ratio:.2f}x (per-round median {round_ratio:.2f}x) | {rss['distgpt']:.0f} MB | {rss[best]:.0f} MB | {machine} |")
    summary.append({"config": config, "distgpt_tokens_per_s": med["distgpt"], "pytorch_1t_tokens_per_s": med["pytorch-1t"],
                    "pytorch_2t_tokens_per_s": med["pytorch-2t"], "ratio_vs_best": round(ratio, 3),
                    "median_round_ratio": round(round_ratio, 3), "rounds": len(per_round),
                    "distgpt_peak_rss_mb": rss["distgpt"], "pytorch_peak_rss_mb": rss[best], "machine": machine})
print(json.dumps(summary))
EOF
