#!/usr/bin/env bash
# What TLS costs a run with parameter shards: cluster mode on loopback, a coordinator and N workers (--shards auto, so
# the tensors cross the workers' peer links), plain http:// against https:// with a throwaway CA and node certificate
# made here with openssl (TLS on the data plane, between the silos and on every peer link), alternated REPEATS times;
# prints per scheme the median step time after the warm-up and the slowest worker's compute.
#
# usage: bench/peer-tls-cost.sh [steps] [repeats]      env: N (2), MODEL (the model flags), SHARDS (auto)
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTGPT_DATA="${DISTGPT_DATA:-$(realpath ../shared/data/tinyshakespeare.txt)}"
steps=${1:-30}; repeats=${2:-2}; warm=8
N="${N:-2}"; SHARDS="${SHARDS:-auto}"; MODEL="${MODEL:---n-layer 4 --n-head 4 --n-embd 256 --block-size 64 --dropout 0}"
command -v openssl >/dev/null || { echo "needs openssl" >&2; exit 2; }
./distgpt --help >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export DISTGPT_CLUSTER_TOKEN="tls-cost-$$-$RANDOM"

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days 1 -subj "/CN=DistGpt bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$tmp/node.key" -out "$tmp/node.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$tmp/ext"
openssl x509 -req -in "$tmp/node.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial -out "$tmp/node.pem" -days 1 \
  -extfile "$tmp/ext" 2>/dev/null
tls="--tls-cert $tmp/node.pem --tls-key $tmp/node.key --tls-ca $tmp/ca.pem"

run() { # scheme -> one line: scheme step_ms compute_ms
  local scheme="$1" out="$tmp/run-$1-$RANDOM" port=$((20000 + RANDOM % 20000)) flags=""
  [ "$scheme" = https ] && flags="$tls"
  # shellcheck disable=SC2086
  ./distgpt coordinator --listen "$scheme://127.0.0.1:$port" $flags --min-workers "$N" --max-iters "$steps" --eval-interval 100000 \
    --eval-iters 1 --checkpoint-interval 0 --threads 1 --shards "$SHARDS" $MODEL --batch-size $((4 * N)) --out "$out" >"$out.log" 2>&1 &
  local c=$!
  for ((i = 0; i < N; i++)); do
    # shellcheck disable=SC2086
    ./distgpt worker --coordinator "$scheme://127.0.0.1:$port" $flags --name "w$i" --threads 1 >"$out.w$i.log" 2>&1 &
  done
  wait "$c" || { cat "$out.log" >&2; exit 1; }
  wait
  python3 - "$out/metrics.jsonl" "$warm" "$scheme" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
print(sys.argv[3], statistics.median(r["step_ms"] for r in rows), statistics.median(r["compute_ms"] for r in rows))
EOF
}

for ((r = 1; r <= repeats; r++)); do for s in http https; do run "$s" >>"$tmp/all"; done; done
echo "cluster mode on loopback, $N workers, --shards $SHARDS, $steps steps x $repeats, medians after $warm"
python3 - "$tmp/all" <<'EOF'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
base = None
for scheme in ("http", "https"):
    mine = [(float(s), float(c)) for k, s, c in runs if k == scheme]
    step = statistics.median(s for s, _ in mine)
    base = base or step
    print(f"{scheme:>5}: step {step:7.1f} ms ({step / base:.2f}x)  compute {statistics.median(c for _, c in mine):7.1f} ms  runs {[round(s, 1) for s, _ in mine]}")
EOF
