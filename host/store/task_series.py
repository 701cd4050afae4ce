"""The task series of a session's inbox (DESIGN §6): their occurrences (``messages_in`` rows of kind task sharing
a ``series_id``), the changes task control and the misfire rule make to them, and their run history
(``task_runs``). The caller holds the transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from host.store import db
from host.store.inbox import LIVE, rows
from schemas import ids
from schemas.rows import InMessage, RunOutcome, Tokens
from schemas.times import from_text, to_text

if TYPE_CHECKING:  # the outbox module (its dataclasses) is not loaded by commands that only read the inbox
    from host.store.outbox import OutMessage

EXCERPT = 500  # characters of a run's answer the run log keeps (task_runs.answer_excerpt)


class TaskRun(NamedTuple):  # not a dataclass: ncl tasks list imports it, and a NamedTuple is made 5x faster
    """One ``task_runs`` row: how an occurrence ended, or slots that never ran; fields in column order, the two
    token columns as one ``tokens`` ({"input", "output"}, None when the run reported none)."""

    id: str
    series_id: str
    message_id: str | None
    scheduled_for: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    outcome: str
    detail: str | None
    answer_id: str | None
    answer_excerpt: str | None
    tokens: dict[str, int | None] | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> TaskRun:
        tokens = Tokens(row["input_tokens"], row["output_tokens"])
        return cls(row["id"], row["series_id"], row["message_id"], row["scheduled_for"], row["started_at"],
                   row["finished_at"], row["duration_ms"], row["outcome"], row["detail"], row["answer_id"],
                   row["answer_excerpt"], None if tokens == Tokens(None, None) else tokens.wire())


class RunResult(NamedTuple):  # not a dataclass: ncl tasks list imports it, and a NamedTuple is made 5x faster
    """What a ``ran`` run produced (issue 16.4): the answer its turn wrote (id and first ``EXCERPT`` characters) and
    the tokens the turn used, each None when unknown. A batch's rows share one turn, so each task row of a batch
    records the same answer and the same tokens."""

    answer_id: str | None = None
    answer_excerpt: str | None = None
    tokens: Tokens | None = None

    @classmethod
    def of_ack(cls, detail: Mapping[str, Any], replies: Mapping[str, OutMessage]) -> RunResult:
        """Read from a runner's ack ``detail`` (its text: anything may be there) and the chat ``replies`` read in the
        same transaction as the ack: an answer counts only if it is one of them (the runner writes the answer and
        the ack together), its excerpt is cut from the row's own text, tokens only as ``Tokens.parse`` takes them."""
        named = detail.get("answer_id")
        reply = replies.get(named) if isinstance(named, str) else None
        return cls(None if reply is None else reply.id, None if reply is None else _excerpt(reply.content),
                   Tokens.parse(detail.get("tokens")))


def _excerpt(content: str) -> str | None:
    try:
        text = json.loads(content).get("text")
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested beyond reason
        return None
    return text[:EXCERPT] if isinstance(text, str) else None


# --- finding series and their occurrences ---------------------------------------------------------------------

def series_of(conn: db.Connection, ref: str) -> str | None:
    """The series id for a series id or any occurrence id, if this inbox holds it."""
    row = conn.execute(
        "SELECT COALESCE(series_id, id) FROM messages_in WHERE kind = 'task' AND (series_id = ?1 OR id = ?1)"
        " LIMIT 1", (ref,)).fetchone()
    return str(row[0]) if row else None


def every_series(conn: db.Connection) -> dict[str, list[InMessage]]:
    """Every series of the inbox in the order they began, with its occurrences (``occurrences`` of each; the host
    gives a series id to task rows alone): one statement, for ``ncl tasks list``, which reads every session."""
    found: dict[str, list[InMessage]] = {}
    for row in rows(conn, "SELECT * FROM messages_in WHERE kind = 'task' AND series_id IS NOT NULL ORDER BY seq"):
        found.setdefault(row.series, []).append(row)
    return found


def live_ids(conn: db.Connection) -> list[str]:
    """The series that still have a live occurrence."""
    return [r[0] for r in conn.execute(
        f"SELECT DISTINCT series_id FROM messages_in WHERE kind = 'task' AND status IN {LIVE}")]


def live_count(conn: db.Connection) -> int:
    (count,) = conn.execute(f"SELECT COUNT(DISTINCT series_id) FROM messages_in WHERE kind = 'task'"
                            f" AND status IN {LIVE}").fetchone()
    return int(count)


def same_live(conn: db.Connection, prompt: str, recurrence: str | None, script: str | None,
              process_after: str | None) -> str | None:
    """A live series with this prompt, recurrence and script (a one-off: also due at ``process_after``), if any."""
    row = conn.execute(
        f"SELECT series_id FROM messages_in WHERE kind = 'task' AND status IN {LIVE}"
        " AND json_extract(content, '$.prompt') = ? AND recurrence IS ? AND COALESCE(json_extract(content, '$.script'),"
        " '') = ? AND (recurrence IS NOT NULL OR process_after IS ?) LIMIT 1",
        (prompt, recurrence, script or "", process_after)).fetchone()
    return None if row is None else str(row[0])


def occurrences(conn: db.Connection, series_id: str) -> list[InMessage]:
    return rows(conn, "SELECT * FROM messages_in WHERE series_id = ? ORDER BY seq", (series_id,))


def live(conn: db.Connection, series_id: str) -> list[InMessage]:
    return rows(conn, f"SELECT * FROM messages_in WHERE series_id = ? AND status IN {LIVE} ORDER BY seq",
                (series_id,))


def has_live_recurrence(conn: db.Connection, series_id: str) -> bool:
    return conn.execute(
        f"SELECT 1 FROM messages_in WHERE series_id = ? AND recurrence IS NOT NULL AND status IN {LIVE}",
        (series_id,)).fetchone() is not None


def ended_recurring(conn: db.Connection) -> list[InMessage]:
    """Ended rows still carrying a recurrence (an older writer, or a crash of one): the series to repair."""
    return rows(conn, "SELECT * FROM messages_in WHERE status IN ('completed', 'failed') AND recurrence IS NOT NULL")


def due_recurring(conn: db.Connection, now: datetime) -> list[InMessage]:
    """Waiting recurring occurrences whose time has come: the misfire rule's to judge."""
    return rows(conn, "SELECT * FROM messages_in WHERE kind = 'task' AND status = 'pending'"
                      " AND recurrence IS NOT NULL AND process_after <= ?", (to_text(now),))


# --- changing occurrences ---------------------------------------------------------------------------------------

def drop_recurrence(conn: db.Connection, message_id: str) -> None:
    """The row no longer carries the series on: its next occurrence does, or none."""
    conn.execute("UPDATE messages_in SET recurrence = NULL WHERE id = ?", (message_id,))


def move(conn: db.Connection, message_id: str, process_after: str | None, content: str, zone: str | None) -> None:
    """A waiting occurrence's new time, planned in ``zone``."""
    conn.execute("UPDATE messages_in SET process_after = ?, content = ?, zone = ? WHERE id = ?",
                 (process_after, content, zone, message_id))


def planned_elsewhere(conn: db.Connection, zone: str) -> list[InMessage]:
    """Waiting recurring occurrences whose time was planned in another zone than ``zone``, or in none recorded."""
    return rows(conn, "SELECT * FROM messages_in WHERE recurrence IS NOT NULL AND status IN ('pending', 'paused')"
                      " AND zone IS NOT ?", (zone,))


def set_content(conn: db.Connection, message_id: str, content: str) -> None:
    conn.execute("UPDATE messages_in SET content = ? WHERE id = ?", (content, message_id))


def count_try(conn: db.Connection, message_id: str, tries: int) -> None:
    conn.execute("UPDATE messages_in SET tries = ? WHERE id = ?", (tries, message_id))


def retry(conn: db.Connection, message_id: str, tries: int, process_after: str, content: str) -> None:
    """Give a claimed row back to the queue, to run again at ``process_after``."""
    conn.execute("UPDATE messages_in SET status = 'pending', tries = ?, process_after = ?, content = ? WHERE id = ?",
                 (tries, process_after, content, message_id))


def revise(conn: db.Connection, message_id: str, content: str, recurrence: str | None,
           process_after: str | None, zone: str | None) -> None:
    conn.execute("UPDATE messages_in SET content = ?, recurrence = ?, process_after = ?, zone = ? WHERE id = ?",
                 (content, recurrence, process_after, zone, message_id))


def pause(conn: db.Connection, series_id: str) -> int:
    """Waiting occurrences -> paused; returns how many."""
    return int(conn.execute("UPDATE messages_in SET status = 'paused' WHERE series_id = ? AND status = 'pending'",
                            (series_id,)).rowcount)


def resume(conn: db.Connection, series_id: str) -> None:
    conn.execute("UPDATE messages_in SET status = 'pending' WHERE series_id = ? AND status = 'paused'", (series_id,))


def cancel(conn: db.Connection, series_id: str) -> None:
    """Waiting and paused occurrences end; a running one finishes, but the series ends with it."""
    conn.execute("UPDATE messages_in SET recurrence = NULL WHERE series_id = ? AND status = 'processing'",
                 (series_id,))
    conn.execute("UPDATE messages_in SET status = 'completed', recurrence = NULL"
                 " WHERE series_id = ? AND status IN ('pending', 'paused')", (series_id,))


# --- run history ------------------------------------------------------------------------------------------------

def record_run(conn: db.Connection, now: datetime, series_id: str, message_id: str | None,
               outcome: RunOutcome, scheduled_for: str | None = None, started_at: str | None = None,
               finished_at: str | None = None, detail: str | None = None, result: RunResult | None = None) -> None:
    duration = None
    if started_at and finished_at:
        duration = int((from_text(finished_at) - from_text(started_at)).total_seconds() * 1000)
    result = result or RunResult()
    tokens = result.tokens or Tokens(None, None)
    conn.execute(
        "INSERT INTO task_runs(id, series_id, message_id, scheduled_for, started_at, finished_at, duration_ms,"
        " outcome, detail, answer_id, answer_excerpt, input_tokens, output_tokens)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ids.new_id("run", now), series_id, message_id, scheduled_for, started_at, finished_at or to_text(now),
         duration, outcome, detail, result.answer_id, result.answer_excerpt, tokens.input, tokens.output))


def runs(conn: db.Connection, series_id: str) -> list[TaskRun]:
    return [TaskRun.of(row) for row in conn.execute(
        "SELECT * FROM task_runs WHERE series_id = ? ORDER BY finished_at, rowid", (series_id,))]


def every_outcome(conn: db.Connection) -> dict[str, list[str]]:
    """The outcomes of every series' runs, oldest first (as ``runs`` orders them): one statement."""
    found: dict[str, list[str]] = {}
    for series_id, outcome in conn.execute("SELECT series_id, outcome FROM task_runs ORDER BY finished_at, rowid"):
        found.setdefault(series_id, []).append(outcome)
    return found


def recent_outcomes(conn: db.Connection, series_id: str, count: int) -> list[str]:
    """The series' last ``count`` outcomes of runs that ran or tried to (newest first)."""
    return [r[0] for r in conn.execute(
        "SELECT outcome FROM task_runs WHERE series_id = ? AND outcome IN ('ran', 'skipped', 'gate_error', 'failed')"
        " ORDER BY finished_at DESC, rowid DESC LIMIT ?", (series_id, count))]
