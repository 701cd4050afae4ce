"""What the in-process ``ncl`` CLI tests share (tests/test_cli_*.py): the type of the ``ncl`` fixture, the check
that a command succeeded, the one-line-error check of the foundation commands, the keys of a group object, and a
DB's logical content (to show a command wrote nothing)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Result

Ncl = Callable[..., "Result"]

GROUP_KEYS = {"id", "name", "channels", "session_mode", "provider", "model", "created_at", "allow_server_tools",
              "active_sessions", "admin"}  # active_sessions: issue 15.5; admin: issue 16.3


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}: {result.err}"
    return result


def one_line_error(result: Result) -> str:
    assert result.code != 0
    assert "Traceback" not in result.err and "Traceback" not in result.out
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("ncl: ")
    return result.err_lines[0]


def dump(path: Path) -> list[str]:
    """The logical content of a DB, independent of WAL files and page layout."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return list(conn.iterdump())
