#!/usr/bin/env bash
# Runs the whole test suite (Release) and prints a one-line summary: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
# The real-process tests run the CLI as ./distgpt builds it (ReadyToRun: each of the suite's many processes starts faster).
./distgpt --help >/dev/null || { echo "could not build the CLI (./distgpt)"; exit 1; }
export DISTGPT_TEST_CLI="$PWD/src/Coordinator/bin/Release/r2r/distgpt.dll"
results="$(mktemp -d)"
dotnet test DistGpt.sln -c Release --logger "trx;LogFileName=results.trx" --results-directory "$results" \
  --logger "console;verbosity=normal" "$@"
status=$?
bash tests/trx-summary.sh "$results"
exit $status
