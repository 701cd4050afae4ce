"""``inbox.look`` (a visit's one read of the inbox) agrees with the queries it stands for: ``inbox.state`` and the
three of task_series that a visit asks only when one finds rows."""

from __future__ import annotations

import re
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from host.store import db, inbox, sessions, task_series
from schemas.rows import LIVE_STATUSES, InStatus
from schemas.times import to_text

NOW = datetime(2030, 1, 2, 8, 0, tzinfo=UTC)


def _at(minutes: int) -> str:
    return to_text(NOW + timedelta(minutes=minutes))


ROWS: dict[str, dict[str, Any]] = {
    "chat due": {"kind": "chat", "timestamp": _at(-5)},
    "context only": {"kind": "chat", "timestamp": _at(-9), "trigger": 0},
    "task later": {"kind": "task", "timestamp": _at(-60), "process_after": _at(30)},
    "task due": {"kind": "task", "timestamp": _at(-60), "process_after": _at(-2)},
    "claimed": {"kind": "task", "timestamp": _at(-60), "process_after": _at(-20), "status": "processing"},
    "paused elsewhere": {"kind": "task", "timestamp": _at(-60), "process_after": _at(60), "status": "paused",
                         "recurrence": "0 9 * * *", "series_id": "s-paused", "zone": "Asia/Tokyo"},
    "recurring later": {"kind": "task", "timestamp": _at(-60), "process_after": _at(90),
                        "recurrence": "0 9 * * *", "series_id": "s-later", "zone": "UTC"},
    "recurring due": {"kind": "task", "timestamp": _at(-60), "process_after": _at(-1),
                      "recurrence": "0 9 * * *", "series_id": "s-due", "zone": "UTC"},
    "ended recurring": {"kind": "task", "timestamp": _at(-60), "process_after": _at(-90), "status": "completed",
                        "recurrence": "0 9 * * *", "series_id": "s-ended", "zone": "UTC"},
    "done": {"kind": "chat", "timestamp": _at(-99), "status": "completed"},
}
CASES = [[], ["done"], ["context only"], ["chat due", "task later"], ["task later", "claimed"], ["paused elsewhere"],
         ["recurring later"], ["recurring due"], ["ended recurring", "done"], list(ROWS)]


@pytest.mark.parametrize("names", CASES, ids=[",".join(c) or "empty" for c in CASES])
def test_look_agrees_with_the_queries_it_stands_for(tmp_path: Path, names: list[str]) -> None:
    sessions.create_files(tmp_path)
    with closing(db.connect(tmp_path / "inbound.db", "inbound")) as conn:
        with db.transaction(conn):
            for n, name in enumerate(names):
                inbox.insert(conn, {"id": f"msg-{n}", "content": "{}", **ROWS[name]})
        found = inbox.look(conn, NOW, "UTC")
        assert found.state == inbox.state(conn, NOW)
        assert found.open_rows == dict(conn.execute(
            "SELECT id, status FROM messages_in WHERE status IN ('pending', 'processing')"))
        asked = (task_series.ended_recurring(conn) + task_series.planned_elsewhere(conn, "UTC")
                 + task_series.due_recurring(conn, NOW))
        assert found.recurring == bool(asked)
        assert found.recurring_at == conn.execute(
            "SELECT MIN(process_after) FROM messages_in WHERE kind = 'task' AND status = 'pending'"
            " AND recurrence IS NOT NULL").fetchone()[0]


def test_the_live_range_holds_the_live_statuses_only(tmp_path: Path) -> None:
    """``look`` reads "status >= LIVE_FROM" for "status IN LIVE": every status the file's CHECK allows sorts on its
    side of LIVE_FROM."""
    sessions.create_files(tmp_path)
    with closing(db.connect(tmp_path / "inbound.db", "inbound")) as conn:
        table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages_in'").fetchone()[0]
    check = re.search(r"CHECK \(status IN \(([^)]*)\)\)", table)
    assert check is not None
    allowed = re.findall(r"'(\w+)'", check.group(1))
    assert sorted(allowed) == sorted(get_args(InStatus))
    for status in allowed:
        assert (status >= inbox.LIVE_FROM) == (status in LIVE_STATUSES), status
