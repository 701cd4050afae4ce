"""central.db's project-level scheduled tasks (DESIGN §9): ``scheduled_tasks`` rows and their
``scheduled_task_runs``. The spec itself is stored as JSON; ``host.project_tasks.specs`` reads it."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from host.store import db

_SELECT = """SELECT t.*, (SELECT r.status FROM scheduled_task_runs r WHERE r.task_id = t.id
                         ORDER BY r.scheduled_for DESC, r.rowid DESC LIMIT 1) AS last_status
             FROM scheduled_tasks t"""
_DUE = "SELECT id, name, target_kind, next_run, updated_at FROM scheduled_tasks"


@dataclass(frozen=True, slots=True)
class Fields:
    """The columns a spec determines (``next_run`` aside)."""

    name: str | None
    schedule: str
    target_kind: str
    spec: str  # the spec as JSON
    active: bool


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One ``scheduled_tasks`` row, with the status of its latest run (None: no run yet, or not asked for)."""

    id: str
    name: str | None
    schedule: str
    target_kind: str
    spec: str  # the spec as JSON
    active: bool
    next_run: str | None
    created_at: str
    updated_at: str
    last_status: str | None
    zone: str | None  # the TZ next_run was planned in

    @classmethod
    def of(cls, row: sqlite3.Row) -> TaskRow:
        return cls(row["id"], row["name"], row["schedule"], row["target_kind"], row["spec"], bool(row["active"]),
                   row["next_run"], row["created_at"], row["updated_at"], row["last_status"], row["zone"])


@dataclass(frozen=True, slots=True)
class Due:
    """An active task with a next run: when it is due, and what it is."""

    id: str
    name: str | None
    target_kind: str
    next_run: str
    updated_at: str



@dataclass(frozen=True, slots=True)
class Run:
    """One ``scheduled_task_runs`` row: a fired slot, or slots recorded as missed."""

    id: str
    task_id: str
    status: str
    scheduled_for: str
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    exit_code: int | None
    queued_message_id: str | None
    output_tail: str | None
    error: str | None
    missed_slots: int | None
    queued_session_id: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def named(conn: db.Connection, name: str) -> str | None:
    """The id of a task of this name, if any."""
    row = conn.execute("SELECT id FROM scheduled_tasks WHERE name = ? LIMIT 1", (name,)).fetchone()
    return None if row is None else str(row[0])


def same_spec(conn: db.Connection, spec: str) -> str | None:
    """The id of a task of this very spec (as JSON), if any."""
    row = conn.execute("SELECT id FROM scheduled_tasks WHERE spec = ? LIMIT 1", (spec,)).fetchone()
    return None if row is None else str(row[0])


def insert(conn: db.Connection, task_id: str, fields: Fields, next_run: str | None, now: str, zone: str) -> None:
    with db.transaction(conn):
        conn.execute("INSERT INTO scheduled_tasks(name, schedule, target_kind, spec, active, id, next_run, created_at,"
                     " updated_at, zone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (*_values(fields), task_id, next_run, now, now, zone))


def update(conn: db.Connection, task_id: str, fields: Fields, next_run: str | None, now: str,
           zone: str | None) -> None:
    """Replace the task's spec and next run, planned in ``zone`` (caller holds the transaction)."""
    conn.execute("UPDATE scheduled_tasks SET name = ?, schedule = ?, target_kind = ?, spec = ?, active = ?,"
                 " next_run = ?, updated_at = ?, zone = ? WHERE id = ?",
                 (*_values(fields), next_run, now, zone, task_id))


def _values(fields: Fields) -> tuple[Any, ...]:
    return fields.name, fields.schedule, fields.target_kind, fields.spec, int(fields.active)


def delete(conn: db.Connection, task_id: str) -> None:
    """Remove the task and its run history (caller holds the transaction)."""
    conn.execute("DELETE FROM scheduled_task_runs WHERE task_id = ?", (task_id,))
    conn.execute("DELETE FROM scheduled_tasks WHERE id = ?", (task_id,))


def get(conn: db.Connection, task_id: str) -> TaskRow | None:
    row = conn.execute(f"{_SELECT} WHERE t.id = ?", (task_id,)).fetchone()
    return None if row is None else TaskRow.of(row)


def count_with_prefix(conn: db.Connection, prefix: str) -> int:
    """How many tasks have an id starting with ``prefix`` (``host-``: those agents created)."""
    (count,) = conn.execute("SELECT COUNT(*) FROM scheduled_tasks WHERE substr(id, 1, length(?)) = ?",
                            (prefix, prefix)).fetchone()
    return int(count)


def list_all(conn: db.Connection) -> list[TaskRow]:
    return [TaskRow.of(row) for row in conn.execute(f"{_SELECT} ORDER BY t.created_at, t.id")]


def runs(conn: db.Connection, task_id: str) -> list[Run]:
    """The task's runs, oldest slot first."""
    rows = conn.execute("SELECT id, task_id, status, scheduled_for, started_at, finished_at, duration_ms, exit_code,"
                        " queued_message_id, output_tail, error, missed_slots, queued_session_id"
                        " FROM scheduled_task_runs"
                        " WHERE task_id = ? ORDER BY scheduled_for, rowid", (task_id,))
    return [Run(*row) for row in rows]


# --- firing ----------------------------------------------------------------------------------------

def upcoming(conn: db.Connection, limit: int) -> list[Due]:
    """The first ``limit`` active tasks by next run."""
    rows = conn.execute(f"{_DUE} WHERE active = 1 AND next_run IS NOT NULL ORDER BY next_run LIMIT ?", (limit,))
    return [Due(*row) for row in rows]


def due(conn: db.Connection, now: str) -> list[Due]:
    """The active tasks whose next run is at or before ``now``, soonest first."""
    rows = conn.execute(f"{_DUE} WHERE active = 1 AND next_run <= ? ORDER BY next_run", (now,))
    return [Due(*row) for row in rows]


def due_row(conn: db.Connection, task_id: str, now: str) -> TaskRow | None:
    """The task if it is active and due at ``now`` (its latest run's status is not read: None)."""
    row = conn.execute("SELECT *, NULL AS last_status FROM scheduled_tasks WHERE id = ? AND active = 1"
                       " AND next_run <= ?", (task_id, now)).fetchone()
    return None if row is None else TaskRow.of(row)


def set_next_run(conn: db.Connection, task_id: str, next_run: str | None, zone: str | None) -> None:
    """The task's next run, planned in ``zone``."""
    conn.execute("UPDATE scheduled_tasks SET next_run = ?, zone = ? WHERE id = ?", (next_run, zone, task_id))


def planned_elsewhere(conn: db.Connection, zone: str) -> list[TaskRow]:
    """Active tasks whose next run was planned in another zone than ``zone``, or in none recorded."""
    return [TaskRow.of(row) for row in conn.execute("SELECT *, NULL AS last_status FROM scheduled_tasks WHERE"
                                                    " active = 1 AND next_run IS NOT NULL AND zone IS NOT ?", (zone,))]


def is_running(conn: db.Connection, task_id: str) -> bool:
    """Whether a run of the task is still ``running``."""
    return conn.execute("SELECT 1 FROM scheduled_task_runs WHERE task_id = ? AND status = 'running'",
                        (task_id,)).fetchone() is not None


def add_missed(conn: db.Connection, run_id: str, task_id: str, first: str, now: str, error: str,
               slots: int) -> None:
    """One ``missed`` run standing for ``slots`` slots not run, the first of them at ``first``."""
    conn.execute("INSERT INTO scheduled_task_runs(id, task_id, status, scheduled_for, finished_at, error,"
                 " missed_slots) VALUES (?, ?, 'missed', ?, ?, ?, ?)", (run_id, task_id, first, now, error, slots))


def add_running(conn: db.Connection, run_id: str, task_id: str, slot: str, now: str) -> bool:
    """Start a run of ``slot``; False if that slot has a run already (a slot never fires twice)."""
    try:
        conn.execute("INSERT INTO scheduled_task_runs(id, task_id, status, scheduled_for, started_at)"
                     " VALUES (?, ?, 'running', ?, ?)", (run_id, task_id, slot, now))
    except sqlite3.IntegrityError:
        return False
    return True


def end_run(conn: db.Connection, run_id: str, *, status: str, started_at: str, finished_at: str, duration_ms: int,
            exit_code: int | None, queued: tuple[str, str] | None, output_tail: str | None,
            error: str | None) -> None:
    """Record how a run ended; ``queued``: the message id and session of the job it sent."""
    message_id, session_id = queued or (None, None)
    with db.transaction(conn):
        conn.execute("UPDATE scheduled_task_runs SET status = ?, started_at = ?, finished_at = ?, duration_ms = ?,"
                     " exit_code = ?, queued_message_id = ?, queued_session_id = ?, output_tail = ?, error = ?"
                     " WHERE id = ?", (status, started_at, finished_at, duration_ms, exit_code, message_id,
                                      session_id, output_tail, error, run_id))


class Interrupted(NamedTuple):
    """A run a stopped host left ``running``."""

    id: str
    task_id: str
    started_at: str  # (a running run's is always set: ``add_running``)


def running(conn: db.Connection) -> list[Interrupted]:
    """Every ``running`` run, oldest first."""
    return [Interrupted(*row) for row in conn.execute(
        "SELECT id, task_id, started_at FROM scheduled_task_runs WHERE status = 'running' ORDER BY started_at, rowid")]


def fail_runs(conn: db.Connection, run_ids: list[str], now: str, error: str) -> None:
    """Mark these ``running`` runs failed with ``error``."""
    with db.transaction(conn):
        conn.executemany("UPDATE scheduled_task_runs SET status = 'failed', finished_at = ?, error = ?"
                         " WHERE id = ? AND status = 'running'", [(now, error, run_id) for run_id in run_ids])
