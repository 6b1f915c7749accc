#!/usr/bin/env bash
# The TorchSharp backend's tests (issue 19), apart from the main run: build with -p:DistGptTorch=true (into bin-torch/ and
# obj-torch/; the build applies and checks the loader fix, src/TorchBackend/weak-glibcxx.py), then run
# tests/DistGpt.TorchTests. Prints "N passed, N failed"; skips (exit 0, with the reason) only when the packages cannot restore.
set -uo pipefail
cd "$(dirname "$0")/.."
project=tests/DistGpt.TorchTests/DistGpt.TorchTests.csproj
if ! dotnet restore "$project" -p:DistGptTorch=true -nologo -v q; then
  echo "torch backend tests SKIPPED: TorchSharp 0.107.0 and libtorch-cpu-linux-x64 2.10.0 do not restore here (see above)"
  exit 0
fi
dotnet build "$project" -c Release -p:DistGptTorch=true --no-restore -nologo -v q -clp:ErrorsOnly || exit 1
results="$(mktemp -d)"
dotnet test "$project" -c Release -p:DistGptTorch=true --no-build --logger "trx;LogFileName=results.trx" \
  --results-directory "$results" --logger "console;verbosity=normal" "$@"
status=$?
bash tests/trx-summary.sh "$results" "torch backend"
exit $status
