#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
# tests/docker need a Docker engine (scripts/docker-engine.sh starts one) and are skipped, saying why, without it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/pytest "$@"
