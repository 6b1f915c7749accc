#!/usr/bin/env bash
# Prints "[LABEL: ]N passed, N failed" from the .trx file dotnet test wrote under DIR, then removes DIR.
# Usage: tests/trx-summary.sh DIR [LABEL]
dir="$1"; label="${2:+$2: }"
trx="$(find "$dir" -name '*.trx' | head -1)"
if [ -n "$trx" ]; then
  passed=$(grep -o 'passed="[0-9]*"' "$trx" | head -1 | tr -dc 0-9)
  failed=$(grep -o 'failed="[0-9]*"' "$trx" | head -1 | tr -dc 0-9)
  echo "${label}${passed:-0} passed, ${failed:-0} failed"
fi
rm -rf "$dir"
