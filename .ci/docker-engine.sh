#!/usr/bin/env bash
# Gets a Docker engine for the container tests: uses one that answers, else installs Debian's docker.io (dockerd
# 20.10) and docker-compose (v1, the compose Debian offers) and starts dockerd. The daemon gets a proxy that refuses at
# once, so an accidental pull fails in a second instead of hanging (no registry is reachable here). Exit 0 when
# `docker info` answers; otherwise one line saying why, and a non-zero exit (the container tests then skip, saying why).
set -uo pipefail
log=/tmp/distgpt-dockerd.log

if docker info >/dev/null 2>&1; then
  echo "docker engine: using the running one ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" != 0 ]; then echo "docker engine: dockerd is not installed and this is not root"; exit 1; fi
  { apt-get update -q && apt-get install -y -q --no-install-recommends docker.io docker-compose; } >/tmp/distgpt-apt-docker.log 2>&1 \
    || { echo "docker engine: apt-get install docker.io docker-compose failed (see /tmp/distgpt-apt-docker.log)"; exit 1; }
fi
if ! command -v dockerd >/dev/null; then echo "docker engine: no dockerd after the install"; exit 1; fi
if [ "$(id -u)" != 0 ]; then echo "docker engine: dockerd must be started as root"; exit 1; fi
start=$(date +%s%N)
HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker engine: started dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null) in $(( ($(date +%s%N) - start) / 1000000 )) ms (log: $log)"
    exit 0
  fi
  sleep 0.5
done
echo "docker engine: dockerd did not answer within 30 s (last lines of $log: $(tail -3 "$log" | tr '\n' ' '))"
exit 1
