#!/usr/bin/env bash
# Set up (if needed) and run the host with the offline defaults: mock provider, data in ./data,
# a demo group with a cli channel. Ctrl-C stops it. Extra arguments go to `ncl host run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ncl groups show demo >/dev/null 2>&1 || ncl groups create demo --channel cli --rules "You are a helpful assistant."
ncl doctor || true
exec ncl host run "$@"
