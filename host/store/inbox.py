"""Reads and writes of a session's inbound.db: the SQL of the host's side of the inbox."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from schemas import ids
from schemas.messages import LIVE_STATUSES, RunOutcome
from schemas.queries import DUE
from schemas.times import from_text, to_text

LIVE = f"({', '.join(repr(s) for s in LIVE_STATUSES)})"  # SQL: status IN {LIVE}


def _next_seq(conn: sqlite3.Connection) -> int:
    # messages_in.seq is even (host), messages_out.seq odd (runner): one order over both files.
    (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_in").fetchone()
    return (int(top) // 2 + 1) * 2


def insert(conn: sqlite3.Connection, row: dict[str, Any]) -> str:
    """Insert a messages_in row (caller holds the transaction); ``seq`` is assigned here."""
    values = {"status": "pending", "process_after": None, "recurrence": None, "series_id": None, "tries": 0,
              "trigger": 1, "on_wake": 0, "platform_id": None, "channel_type": None, "thread_id": None, **row,
              "seq": _next_seq(conn)}
    names = ", ".join(values)
    conn.execute(f"INSERT INTO messages_in({names}) VALUES ({', '.join(':' + n for n in values)})", values)
    return str(values["id"])


def notice(conn: sqlite3.Connection, now: datetime, kind: str, text: str) -> str:
    """A host notice (DESIGN §12.6): context for the agent's next turn, never a wake on its own."""
    content = {"text": text, "sender": "system", "notice": kind}
    return insert(conn, {"id": ids.new_id("msg", now), "kind": "chat", "timestamp": to_text(now), "trigger": 0,
                         "content": json.dumps(content)})


def series_of(conn: sqlite3.Connection, ref: str) -> str | None:
    """The series id for a series id or any occurrence id, if this inbox holds it."""
    row = conn.execute(
        "SELECT COALESCE(series_id, id) FROM messages_in WHERE kind = 'task' AND (series_id = ?1 OR id = ?1)"
        " LIMIT 1", (ref,)).fetchone()
    return str(row[0]) if row else None


def occurrences(conn: sqlite3.Connection, series_id: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM messages_in WHERE series_id = ? ORDER BY seq", (series_id,)).fetchall()


def live(conn: sqlite3.Connection, series_id: str) -> list[sqlite3.Row]:
    return conn.execute(f"SELECT * FROM messages_in WHERE series_id = ? AND status IN {LIVE} ORDER BY seq",
                        (series_id,)).fetchall()


def get(conn: sqlite3.Connection, message_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM messages_in WHERE id = ?", (message_id,)).fetchone()
    return row


def record_run(conn: sqlite3.Connection, now: datetime, series_id: str, message_id: str | None,
               outcome: RunOutcome, scheduled_for: str | None = None, started_at: str | None = None,
               finished_at: str | None = None, detail: str | None = None) -> None:
    duration = None
    if started_at and finished_at:
        duration = int((from_text(finished_at) - from_text(started_at)).total_seconds() * 1000)
    conn.execute(
        "INSERT INTO task_runs(id, series_id, message_id, scheduled_for, started_at, finished_at, duration_ms,"
        " outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ids.new_id("run", now), series_id, message_id, scheduled_for, started_at, finished_at or to_text(now),
         duration, outcome, detail))


def runs(conn: sqlite3.Connection, series_id: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM task_runs WHERE series_id = ? ORDER BY finished_at, rowid",
                        (series_id,)).fetchall()


def next_due(conn: sqlite3.Connection) -> str | None:
    """Earliest process_after among rows that will wake the agent ('' = due now), None when none."""
    row = conn.execute("SELECT MIN(COALESCE(process_after, '')) FROM messages_in"
                       " WHERE status = 'pending' AND trigger = 1").fetchone()
    return None if row[0] is None else str(row[0])


def has_due(conn: sqlite3.Connection, now: datetime) -> bool:
    """Anything due that wakes the agent: the runner's own predicate, plus trigger = 1 (DESIGN §12.5)."""
    row = conn.execute(f"SELECT EXISTS(SELECT 1 FROM messages_in WHERE {DUE} AND trigger = 1)",
                       {"now": to_text(now)}).fetchone()
    return bool(row[0])


def is_live(status: str) -> bool:
    return status in LIVE_STATUSES


def arrive(conn: sqlite3.Connection, row: dict[str, Any], routing: dict[str, str | None]) -> int:
    """Insert a message arriving on a channel (caller holds the transaction) and keep its routing as the session's
    if it has none yet; returns the row's seq."""
    insert(conn, {**row, **routing})
    conn.execute("INSERT OR IGNORE INTO session_routing(id, channel_type, platform_id, thread_id)"
                 " VALUES (1, :channel_type, :platform_id, :thread_id)", routing)
    return int(conn.execute("SELECT seq FROM messages_in WHERE id = ?", (row["id"],)).fetchone()[0])
