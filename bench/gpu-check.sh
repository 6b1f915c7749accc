#!/usr/bin/env bash
# Run on a GPU node: checks the TorchSharp backend there and prints its speed.
#   bench/gpu-check.sh [cuda|cpu] [iters]      (default cuda, 50; cpu works anywhere)
# 1. builds the CLI and the torch tests with -p:DistGptTorch=true (the loader fix is applied by the build);
# 2. parity on the device: the PyTorch fixtures (logits, loss, every gradient, two AdamW steps) and the engine's gradient
#    sum with dropout (DISTGPT_TORCH_DEVICE=<device>);
# 3. `distgpt train --backend torch --device <device>` on the default recipe for <iters> steps: prints ms/step and tokens/s
#    (the mean of the steps after the first 5).
# On a GPU node, reference TorchSharp-cuda-linux and libtorch-cuda-12.8-linux-x64 first (README, GPU nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
iters="${2:-50}"
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
tests=tests/DistGpt.TorchTests/DistGpt.TorchTests.csproj
dotnet build "$tests" -c Release -p:DistGptTorch=true -nologo -v q -clp:ErrorsOnly
DISTGPT_TORCH_DEVICE="$device" dotnet test "$tests" -c Release -p:DistGptTorch=true --no-build -nologo \
  --filter "FullyQualifiedName~TorchParityTests|FullyQualifiedName~TorchGradientComputerTests"
echo "parity on $device: passed"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
src/Coordinator/bin-torch/Release/net10.0/distgpt train --backend torch --device "$device" --max-iters "$iters" \
  --eval-interval "$iters" --eval-iters 1 --out "$out" > "$out/log"
python3 - "$out/metrics.jsonl" "$device" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])][5:]
ms = sum(s["step_ms"] for s in steps) / len(steps)
tok = sum(s["tokens_per_s"] for s in steps) / len(steps)
print(f"torch on {sys.argv[2]}: {ms:.1f} ms/step, {tok:,.0f} tokens/s (default recipe, mean of {len(steps)} steps)")
PY
