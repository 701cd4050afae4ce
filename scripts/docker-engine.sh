#!/usr/bin/env bash
# Ensure a Docker engine is reachable; start a local dockerd if needed.
# The daemon runs without the default bridge (containers use --network none).
# Idempotent: exits at once when `docker info` already works.
set -euo pipefail

LOG="${NCL_DOCKERD_LOG:-${TMPDIR:-/tmp}/ncl-dockerd.log}"
WAIT_SECONDS="${NCL_DOCKERD_WAIT:-60}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { echo "docker-engine: $*" >&2; }

if docker info >/dev/null 2>&1; then
  say "engine already reachable"; exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show docker.io >/dev/null 2>&1; then
    say "apt-get update"; $SUDO apt-get update -q >&2
  fi
  say "installing docker.io"; $SUDO apt-get install -y -q docker.io >&2
fi

if pgrep -x dockerd >/dev/null 2>&1; then
  say "dockerd already running; waiting for it"
else
  say "starting dockerd (no bridge, no iptables), log: $LOG"
  $SUDO setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
    </dev/null >>"$LOG" 2>&1 &
fi

for _ in $(seq "$WAIT_SECONDS"); do
  if docker info >/dev/null 2>&1; then
    say "engine ready ($(docker info --format '{{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}'))"
    exit 0
  fi
  sleep 1
done

say "engine not reachable after ${WAIT_SECONDS}s; tail of $LOG:"
tail -n 40 "$LOG" >&2 || true
exit 1
