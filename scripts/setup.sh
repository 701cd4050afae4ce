#!/usr/bin/env bash
# Create .venv and install ncl into it: what running needs (scripts/run.sh), or with --dev also the test and lint
# tools (scripts/test.sh, CI). Idempotent: skips the install when pyproject.toml has not changed since the last one
# of that kind (a --dev install serves both). pip's own progress shows as it goes. --matrix makes .venv-synapse
# instead: the Synapse homeserver tests/matrix start (a virtualenv of its own: it pins libraries of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ "${1:-}" = "--matrix" ]; then
  [ -x .venv-synapse/bin/python ] || "$PYTHON" -m venv .venv-synapse
  if ! .venv-synapse/bin/python -c 'import synapse' 2>/dev/null; then
    echo "setup: installing Synapse into .venv-synapse for tests/matrix (about 150 MB, 2-3 min on first run) …" >&2
    .venv-synapse/bin/python -m pip install --disable-pip-version-check --progress-bar on 'matrix-synapse>=1.100' >&2
  fi
  exit 0
fi
target=.
[ "${1:-}" = "--dev" ] && target='.[dev]'
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (Python: $("$PYTHON" --version 2>&1))" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.ncl-installed
hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$hash dev" ] && [ "$have" != "$hash $target" ]; then
  if [ "$target" = . ]; then
    echo "setup: installing ncl and what running it needs into .venv (about 170 MB, 40 s here on first run) …" >&2
  else
    echo "setup: installing ncl with its test and lint tools into .venv (about 280 MB, 55 s here on first run) …" >&2
  fi
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar on -e "$target" >&2
  [ "$target" = . ] && echo "$hash ." >"$stamp" || echo "$hash dev" >"$stamp"
  echo "setup: done" >&2
fi
