"""Reads and writes of a session's inbound.db: the SQL of the host's side of the inbox. Rows are written as
``MessageIn`` (validated at this edge) and read back as ``InMessage``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from host.store import db
from schemas import ids
from schemas.queries import DUE
from schemas.rows import LIVE_STATUSES, InMessage
from schemas.times import to_text

if TYPE_CHECKING:  # the outbox module (its dataclasses) is not loaded by commands that only read the inbox
    from host.store.outbox import OutMessage

IN_COLUMNS = InMessage._fields  # the order of a SELECT * of messages_in

LIVE = f"({', '.join(repr(s) for s in LIVE_STATUSES)})"  # SQL: status IN {LIVE}
# The CHECK of messages_in.status allows five statuses, and the three live ones sort after the two ended ones: so
# "status >= LIVE_FROM" is "status IN LIVE", and "<" its complement. A visit's first read uses the ranges: on a fresh
# connection they cost ~35 µs less than IN lists (which SQLite prepares as lookups in a table of their own).
LIVE_FROM = min(LIVE_STATUSES)
ROUTING = ("platform_id", "channel_type", "thread_id")
DONE = "('delivered', 'stored', 'failed')"  # SQL: the statuses of a reply dealt with


def rows(conn: db.Connection, sql: str, params: Any = ()) -> list[InMessage]:
    """The ``messages_in`` rows a ``SELECT *`` of this package finds: taken by position when the columns come in
    the order of ``InMessage``'s fields (checked once a query), else by name."""
    cursor = conn.execute(sql, params)
    if tuple(column[0] for column in cursor.description) == IN_COLUMNS:
        return [InMessage(*row) for row in cursor]
    return [InMessage.of(row) for row in cursor]


# The next seq, taken in the INSERT itself (a statement less a row): messages_in.seq is even (host), messages_out.seq
# odd (runner), one order over both files.
_NEXT_SEQ = "(SELECT (COALESCE(MAX(seq), 0) / 2 + 1) * 2 FROM messages_in)"


def insert(conn: db.Connection, row: dict[str, Any], *, validated: bool = True) -> str:
    """Insert a messages_in row (caller holds the transaction), validated as ``MessageIn`` (which holds the
    defaults); ``seq`` is assigned here. ``validated=False``: a row the host builds whole from a stored row and
    values of its own (a clone), which the table's CHECKs guard too; validating it cost a clone more than its
    INSERT."""
    if validated:
        from schemas.messages import MessageIn  # pydantic: with the first write, so commands that only read go without

        row = MessageIn.model_validate(row).model_dump()
    values = {name: value for name, value in row.items() if name != "seq"}
    conn.execute(f"INSERT INTO messages_in({', '.join(values)}, seq)"
                 f" VALUES ({', '.join(':' + n for n in values)}, {_NEXT_SEQ})", values)
    return str(values["id"])


def notice(conn: db.Connection, now: datetime, kind: str, text: str) -> str:
    """A host notice (DESIGN §12.6): context for the agent's next turn, never a wake on its own."""
    content = {"text": text, "sender": "system", "notice": kind}
    return insert(conn, {"id": ids.new_id("msg", now), "kind": "chat", "timestamp": to_text(now), "trigger": 0,
                         "content": json.dumps(content)})


def noticed_since(conn: db.Connection, kind: str, since: str) -> bool:
    """Whether the session's inbox holds a notice of ``kind`` given at or after ``since``."""
    return conn.execute("SELECT 1 FROM messages_in WHERE kind = 'chat' AND trigger = 0 AND timestamp >= ?"
                        " AND json_extract(content, '$.notice') = ? LIMIT 1", (since, kind)).fetchone() is not None


def get(conn: db.Connection, message_id: str) -> InMessage | None:
    found = rows(conn, "SELECT * FROM messages_in WHERE id = ?", (message_id,))
    return found[0] if found else None


def processing(conn: db.Connection, also: list[str]) -> list[InMessage]:
    """The claimed rows, and the rows ``also`` names (whatever their status)."""
    # Only with ids: "OR id IN ()" makes SQLite scan every row the session ever had instead of two indexes.
    extra = f" OR id IN ({', '.join('?' * len(also))})" if also else ""
    return rows(conn, f"SELECT * FROM messages_in WHERE status = 'processing'{extra}", also)


def mark_processing(conn: db.Connection, message_ids: Iterable[str]) -> None:
    """Copy a runner's claims into the inbox."""
    conn.executemany("UPDATE messages_in SET status = 'processing' WHERE id = ?", [(i,) for i in message_ids])


def end(conn: db.Connection, message_id: str, status: str) -> None:
    """A row is done (completed | failed); a recurrence it carried passes to the series' next occurrence."""
    conn.execute("UPDATE messages_in SET status = ?, recurrence = NULL WHERE id = ?", (status, message_id))


class State(NamedTuple):  # not a dataclass: ncl tasks list imports it, and a NamedTuple is made 5x faster
    """What a sweep's visit leaves the session in, read in one query."""

    next_due: str | None  # the earliest process_after among rows that will wake the agent ('' = due now), or None
    processing: bool  # a row is claimed
    due_since: str | None  # when the earliest due row that wakes the agent became due, or None: nothing is due


def state(conn: db.Connection, now: datetime) -> State:
    """Due is the runner's own predicate, plus trigger = 1 (DESIGN §12.5); a row became due at its
    ``process_after``, else at its arrival."""
    next_due, processing, due_since = conn.execute(
        "SELECT (SELECT MIN(COALESCE(process_after, '')) FROM messages_in WHERE status = 'pending' AND trigger = 1),"
        " EXISTS (SELECT 1 FROM messages_in WHERE status = 'processing'),"
        f" (SELECT MIN(COALESCE(process_after, timestamp)) FROM messages_in WHERE {DUE} AND trigger = 1)",
        {"now": to_text(now)}).fetchone()
    return State(None if next_due is None else str(next_due), bool(processing),
                 None if due_since is None else str(due_since))


class Look(NamedTuple):  # not a dataclass: ncl tasks list imports it, and a NamedTuple is made 5x faster
    """What a sweep's visit first reads of the inbox, in one query (one prepared statement of a fresh connection
    in place of three: preparing them was most of an idle visit's SQL)."""

    open_rows: dict[str, str]  # the rows waiting or claimed (those whose acks a sweep reads): id -> status
    state: State  # ``state``, as the visit found it
    # a row is for task_series.ended_recurring, planned_elsewhere or due_recurring (nearly never: a visit asks
    # them only then)
    recurring: bool
    recurring_at: str | None  # when the first waiting recurring task falls due (due_recurring's time)


# The live rows and the ended rows still carrying a recurrence (each through an index), with DUE as SQL decides it.
_LOOK = ("SELECT id, status, kind, trigger, process_after, timestamp, recurrence IS NOT NULL, zone, "
         f"{DUE} FROM messages_in WHERE status >= '{LIVE_FROM}' OR (status < '{LIVE_FROM}'"
         " AND recurrence IS NOT NULL)")


def look(conn: db.Connection, now: datetime, zone: str) -> Look:
    """The visit's ``Look``, aggregated here as ``state`` and the three task_series queries do in SQL (text order
    is time order; ``zone``: the one recurring rows are planned in)."""
    open_ids: dict[str, str] = {}
    next_due: str | None = None
    due_since: str | None = None
    processing = recurring = False
    recurring_at: str | None = None
    for message_id, status, kind, trigger, after, timestamp, recurs, planned_in, due in conn.execute(
            _LOOK, {"now": to_text(now)}):
        if status in ("pending", "processing"):
            open_ids[message_id] = status
        processing = processing or status == "processing"
        if status == "pending" and trigger == 1:
            wake = after or ""
            next_due = wake if next_due is None or wake < next_due else next_due
            since = timestamp if after is None else after
            if due and (due_since is None or since < due_since):
                due_since = since
        if recurs and (status in ("completed", "failed") or (status in ("pending", "paused") and planned_in != zone)
                       or (due and kind == "task" and after is not None)):
            recurring = True
        if recurs and kind == "task" and status == "pending" and after is not None:
            recurring_at = after if recurring_at is None or after < recurring_at else recurring_at
    return Look(open_ids, State(next_due, processing, due_since), recurring, recurring_at)


def working(conn: db.Connection, now: datetime) -> bool:
    """Whether a row that wakes the agent is claimed or due: the session's runner is at work, or about to be."""
    return conn.execute(f"SELECT 1 FROM messages_in WHERE trigger = 1 AND (status = 'processing' OR {DUE}) LIMIT 1",
                        {"now": to_text(now)}).fetchone() is not None


def is_live(status: str) -> bool:
    return status in LIVE_STATUSES


def session_routing(conn: db.Connection) -> dict[str, str | None]:
    """Where the session's answers go when a message names no route of its own (empty: nowhere known)."""
    row = conn.execute("SELECT platform_id, channel_type, thread_id FROM session_routing WHERE id = 1").fetchone()
    return dict(zip(ROUTING, row, strict=True)) if row else {}


def watermarks(conn: db.Connection) -> tuple[int, int]:
    """The highest outbound seq of a system request already handled (applied or rejected), and of a reply already
    dealt with (replies are delivered in order)."""
    handled, replied = conn.execute(
        "SELECT (SELECT MAX(seq) FROM delivered WHERE status IN ('applied', 'rejected')),"
        f" (SELECT MAX(seq) FROM delivered WHERE status IN {DONE})").fetchone()
    return int(handled or 0), int(replied or 0)


def record_request(conn: db.Connection, request: OutMessage, now: datetime, status: str, detail: str | None) -> None:
    """What became of a runner's system request (applied | rejected), recorded once in ``delivered``."""
    conn.execute("INSERT OR IGNORE INTO delivered(message_out_id, seq, delivered_at, status, detail)"
                 " VALUES (?, ?, ?, ?, ?)", (request.id, request.seq, to_text(now), status, detail))


def arrive(conn: db.Connection, row: dict[str, Any], routing: dict[str, str | None]) -> int:
    """Insert a message arriving on a channel (caller holds the transaction) and keep its routing as the session's
    if it has none yet; returns the row's seq."""
    insert(conn, {**row, **routing})
    conn.execute("INSERT OR IGNORE INTO session_routing(id, channel_type, platform_id, thread_id)"
                 " VALUES (1, :channel_type, :platform_id, :thread_id)", routing)
    return int(conn.execute("SELECT seq FROM messages_in WHERE id = ?", (row["id"],)).fetchone()[0])


def seq_of(conn: db.Connection, message_id: str) -> int | None:
    """The seq of the row ``message_id``, None if the inbox has none (a channel's arrival seen before)."""
    row = conn.execute("SELECT seq FROM messages_in WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else int(row[0])
