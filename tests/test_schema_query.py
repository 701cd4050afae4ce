"""The session DBs (DESIGN §4, §5, §12.3): the documented ``sqlite3`` query of a session's task series, run read-only
through Python's ``ro`` URI and through the ``sqlite3`` command line, returns the series (and skips chats) and leaves
the file byte-identical.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from schema_kit import InsertRow, RowIn
from schema_kit import session_dir as session_dir

from host.store import db

DOCUMENTED_QUERY = (
    "SELECT id, status, process_after, recurrence, series_id FROM messages_in "
    "WHERE kind='task' ORDER BY process_after"
)


def _task_series(conn: sqlite3.Connection, row_in: RowIn, insert_row: InsertRow) -> list[tuple[Any, ...]]:
    """A healthy series (one completed firing, one pending) plus a chat row the query must skip."""
    series = "task-1781168400000-aaaaaa"
    rows = [
        row_in(id="task-1781254800000-bbbbbb", seq=4, series_id=series, recurrence="0 9 * * *",
               process_after="2026-06-12T13:00:00.000Z"),
        row_in(id=series, seq=2, series_id=series, status="completed", recurrence=None,
               process_after="2026-06-11T13:00:00.000Z"),
        row_in(id="msg-1781168400000-cccccc", seq=6, kind="chat", process_after=None, series_id=None,
               content='{"text":"hi","sender":"user","sender_id":null}'),
    ]
    with db.transaction(conn):
        for row in rows:
            insert_row(conn, "messages_in", row)
    return [
        (series, "completed", "2026-06-11T13:00:00.000Z", None, series),
        ("task-1781254800000-bbbbbb", "pending", "2026-06-12T13:00:00.000Z", "0 9 * * *", series),
    ]


def test_documented_query_runs_through_python_with_the_ro_uri(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow
) -> None:
    path = session_dir / "inbound.db"
    with closing(db.connect(path, "inbound")) as conn:
        expected = _task_series(conn, row_in, insert_row)
    before = path.read_bytes()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute(DOCUMENTED_QUERY).fetchall() == expected
    assert path.read_bytes() == before


def test_documented_query_runs_through_the_sqlite3_cli(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow
) -> None:
    binary = shutil.which("sqlite3")
    if binary is None:
        pytest.skip("the sqlite3 command-line binary is not installed (Debian/Ubuntu: apt-get install sqlite3)")
    path = session_dir / "inbound.db"
    with closing(db.connect(path, "inbound")) as conn:
        expected = _task_series(conn, row_in, insert_row)
    before = path.read_bytes()
    done = subprocess.run(
        [binary, f"file:{path}?mode=ro", DOCUMENTED_QUERY], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["|".join("" if v is None else str(v) for v in row) for row in expected]
    assert path.read_bytes() == before
