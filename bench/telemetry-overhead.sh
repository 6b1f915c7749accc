#!/usr/bin/env bash
# Telemetry overhead on the `cpu` config: `distgpt dev --workers 2` runs alternating with OTLP export off and on
# (OTLP/HTTP to an in-process receiver in the test host), median step_ms of the steady-state steps, and the ratio.
# Settings (env): DISTGPT_BENCH_ROUNDS (3 pairs of runs), DISTGPT_BENCH_STEPS (250 per run), DISTGPT_BENCH_WARMUP (the first
# 100 steps of each run are dropped: JIT warm-up, and the exporters' first export, which compiles their code, at ~5 s).
# Prints the per-run medians and a JSON summary (also left in bench/telemetry-overhead.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
export DISTGPT_BENCH_TELEMETRY=1 DISTGPT_BENCH_OUT="$PWD/bench/telemetry-overhead.json"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
rm -f "$DISTGPT_BENCH_OUT"
dotnet test tests/DistGpt.Tests -c Release --filter "FullyQualifiedName~TelemetryOverheadBenchmark" \
  --logger "console;verbosity=detailed" | grep -E "round [0-9]+ export|Passed|Failed|error" || true
cat "$DISTGPT_BENCH_OUT"
