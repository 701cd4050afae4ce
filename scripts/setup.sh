#!/usr/bin/env bash
# Create .venv and install ncl with its dev tools into it. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
echo "setup: installing ncl-agent-host[dev] into .venv" >&2
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' >&2
