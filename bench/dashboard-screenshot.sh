#!/usr/bin/env bash
# The README's screenshot of the training page, taken by Chromium during a real `distgpt dev --workers 2` run of the
# default recipe: bash bench/dashboard-screenshot.sh [docs/dashboard.png]. It uses the playwright-core that the test
# project's Microsoft.Playwright package ships (built with the tests) and Debian's chromium; nothing is downloaded.
# Settings (env): STEPS (600; the picture is taken after SHOT_AT = 550 steps, while the run goes on), CHROMIUM.
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
png="$(realpath -m "${1:-docs/dashboard.png}")"
STEPS="${STEPS:-600}" SHOT_AT="${SHOT_AT:-550}" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
dotnet build tests/DistGpt.Tests -c Release -nologo -v quiet -clp:ErrorsOnly >&2
pw="$PWD/tests/DistGpt.Tests/bin/Release/net10.0/.playwright/package"
tmp="$(mktemp -d)"
trap 'kill $dev 2>/dev/null; rm -rf "$tmp"' EXIT
./distgpt dev --workers 2 --max-iters "$STEPS" --eval-interval 100 --out "$tmp/out" --dashboard 0 >"$tmp/log" 2>&1 &
dev=$!
until grep -q '^\[dashboard\] http' "$tmp/log"; do sleep 0.2; kill -0 $dev || { cat "$tmp/log"; exit 1; }; done
url="$(grep -o '^\[dashboard\] http[^ ]*' "$tmp/log" | cut -d' ' -f2)"
until [ "$({ wc -l <"$tmp/out/metrics.jsonl"; } 2>/dev/null || echo 0)" -ge "$SHOT_AT" ]; do sleep 0.5; kill -0 $dev || { cat "$tmp/log"; exit 1; }; done
node - "$pw" "$CHROMIUM" "$url" "$png" <<'JS'
const [pw, executablePath, url, png] = process.argv.slice(2);
const { chromium } = require(pw);
(async () => {
  const browser = await chromium.launch({ executablePath });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#worker-table .worker-name").length === 2 && document.querySelector("#samples pre"));
  await page.waitForTimeout(1500);
  await page.screenshot({ path: png, fullPage: true });
  await browser.close();
  console.log(`screenshot of ${url} at ${png}`);
})().catch(e => { console.error(e); process.exit(1); });
JS
wait $dev
