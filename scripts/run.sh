#!/usr/bin/env bash
# Set up (if needed), start the host with the offline defaults (mock model unless NCL_PROVIDER says otherwise,
# data in NCL_DATA_DIR, ./data by default, runners in Docker when the engine and image are there, else local
# processes) and open a chat with the `demo` agent. Leaving the chat (Ctrl-D) stops the host. The host writes its log,
# host.log in the data dir, itself (`ncl logs -f` follows it); its stderr, host.stderr there, gets only an error that
# stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ncl groups show demo >/dev/null 2>&1 || ncl groups create demo --channel cli --rules "You are a helpful assistant."
# The data dir as ncl reads it (NCL_DATA_DIR from the environment or .env; relative to this folder).
data=$(python -c 'from host.settings import load; print(load().data_dir)')
mkdir -p "$data"
logged=$(stat -c %s "$data/host.log" 2>/dev/null || echo 0)  # where this host's lines begin
install -m 600 /dev/null "$data/host.stderr"  # private, as everything in the data dir
ncl host run --quiet 2>"$data/host.stderr" &
host=$!
trap 'kill -TERM "$host" 2>/dev/null; wait "$host" 2>/dev/null || true' EXIT
# Ready when the socket answers: a host that was killed leaves cli.sock behind (the new one replaces it).
listening() { python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$1" 2>/dev/null; }
failed() { echo "$1 ($data/host.stderr, then ncl logs -n 5):" >&2; tail -5 "$data/host.stderr" >&2; ncl logs -n 5 >&2 || true; exit 1; }
for _ in $(seq 300); do
  listening "$data/cli.sock" && break
  kill -0 "$host" 2>/dev/null || failed "the host did not start"
  sleep 0.1
done
listening "$data/cli.sock" || failed "the host did not open $data/cli.sock"
# Runners with no isolation (the local runtime) are said on the terminal too, not only in the log.
tail -c +$((logged + 1)) "$data/host.log" | grep -i 'no isolation' >&2 || true
# The example's time is local time in ncl's TZ (the environment's, else .env's), as the agent reads it.
soon=$(python -c 'import datetime as d; from host.settings import load
print((d.datetime.now(load().tz.zone) + d.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S"))')
cat <<MSG
The host is running (its log: $data/host.log; in another terminal, .venv/bin/ncl logs -f follows it). Try:
  hello
  /schedule_task {"prompt":"say hello from the future","processAfter":"$soon"}
  /list_tasks
MSG
ncl chat demo
