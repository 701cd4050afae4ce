#!/usr/bin/env bash
# Set up (if needed), start the host with the offline defaults (mock model unless NCL_PROVIDER says otherwise,
# data in ./data, runners in Docker when the engine and image are there, else local processes) and open a chat
# with the `demo` agent. Leaving the chat (Ctrl-D) stops the host. Host log: data/host.log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ncl groups show demo >/dev/null 2>&1 || ncl groups create demo --channel cli --rules "You are a helpful assistant."
mkdir -p data
logged=$(stat -c %s data/host.log 2>/dev/null || echo 0)  # where this host's lines begin
ncl host run >>data/host.log 2>&1 &
host=$!
trap 'kill -TERM "$host" 2>/dev/null; wait "$host" 2>/dev/null || true' EXIT
# Ready when the socket answers: a host that was killed leaves data/cli.sock behind (the new one replaces it).
listening() { python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$1" 2>/dev/null; }
for _ in $(seq 300); do
  listening data/cli.sock && break
  kill -0 "$host" 2>/dev/null || { echo "the host did not start; see data/host.log:" >&2; tail -5 data/host.log >&2; exit 1; }
  sleep 0.1
done
listening data/cli.sock || { echo "the host did not open data/cli.sock; see data/host.log:" >&2; tail -5 data/host.log >&2; exit 1; }
# Runners with no isolation (the local runtime) are said on the terminal too, not only in the log.
tail -c +$((logged + 1)) data/host.log | grep -i 'no isolation' >&2 || true
# The example's time is local time in ncl's TZ (the environment's, else .env's), as the agent reads it.
soon=$(python -c 'import datetime as d; from host.settings import load
print((d.datetime.now(load().tz.zone) + d.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S"))')
cat <<MSG
The host is running (log: data/host.log). Try:
  hello
  /schedule_task {"prompt":"say hello from the future","processAfter":"$soon"}
  /list_tasks
MSG
ncl chat demo
