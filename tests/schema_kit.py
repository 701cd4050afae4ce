"""What the session-DB tests (tests/test_schema_*.py) share: a new session's folder (the ``session_dir`` fixture;
test modules import it by name: ``from schema_kit import session_dir as session_dir``), the documented columns of
inbound.db, a table's columns, a plain connection that neither migrates nor checks, and the types of the
``row_in`` and ``insert_row`` fixtures of conftest.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from host.store import sessions

InsertRow = Callable[[sqlite3.Connection, str, dict[str, Any]], None]
RowIn = Callable[..., dict[str, Any]]

INBOUND_COLUMNS = {
    "messages_in": {
        "id", "seq", "kind", "timestamp", "status", "process_after", "recurrence", "series_id", "tries",
        "trigger", "on_wake", "platform_id", "channel_type", "thread_id", "content", "zone",
    },
    "task_runs": {
        "id", "series_id", "message_id", "scheduled_for", "started_at", "finished_at", "duration_ms",
        "outcome", "detail", "answer_id", "answer_excerpt", "input_tokens", "output_tokens",
    },
}


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    path = tmp_path / "v2-sessions" / "ag-demo" / "sess-1781168400000-aaaaaa"
    sessions.create_files(path)
    return path


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def open_plain(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)
