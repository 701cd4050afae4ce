"""The runner pool's state as the host last published it (``runners.json`` in the data dir): what ``ncl status``
shows and the zone every command checks its own TZ against.

A module of its own, of nothing but json and a private file, so a command that only reads it (every command, with a
host running: ``ncl chat`` always) loads none of the pool, the store or sqlite3 (issue 14.5).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from host.files import private

STATE_FILE = "runners.json"  # in the data dir: rewritten when the pool's state changes


def publish(data_dir: Path, state: dict[str, Any]) -> None:
    """Write a pool's ``state`` to STATE_FILE whole (a private temporary file renamed over it)."""
    folder = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        private.replace_file(folder, STATE_FILE, json.dumps(state).encode())
    finally:
        os.close(folder)


def published(data_dir: Path) -> dict[str, Any] | None:
    """The pool state a host last published, or None if there is none that can be read."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
