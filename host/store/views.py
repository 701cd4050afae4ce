"""Read-only views for operator commands: what ``ncl messages``, ``ncl status``, ``ncl queue list`` and ``ncl
doctor`` read from the session files, and the empty central.db a read sees on an install that has none. Also
when a session's due work became due, which orders the wakes waiting for a runner slot."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from host.store import db, journals
from host.store.bounds import REPLY_CHARS, TEXT_CHARS


@dataclass(frozen=True, slots=True)
class Line:
    """One message of a session's transcript: an inbound row, or a reply with the status of its delivery."""

    id: str
    seq: int | None
    direction: str  # in | out
    kind: str
    timestamp: str
    content: str
    status: str
    in_reply_to: str | None = None  # a reply's: the inbound row it answers
    series_id: str | None = None  # an inbound task row's: its series


@dataclass(frozen=True, slots=True)
class Due:
    """A pending inbound row that will wake the agent, due at ``process_after`` or else when it arrived."""

    id: str
    kind: str
    due: str
    content: str


# The runner's rows as text (its SQLite stores any type in any column; a CHECK it can switch off), each a reply's
# length at most (``bounds.REPLY_CHARS``: the host sends no longer one), a seq only if an integer.
_AS_TEXT = (("id", TEXT_CHARS), ("kind", TEXT_CHARS), ("timestamp", TEXT_CHARS), ("content", REPLY_CHARS),
            ("in_reply_to", TEXT_CHARS))
RUNNER_ROWS = "SELECT " + ", ".join(f"CAST(ifnull(substr({name}, 1, {chars}), '') AS TEXT) AS {name}"
                                    for name, chars in _AS_TEXT) + \
    ", CASE WHEN typeof(seq) = 'integer' THEN seq END AS seq FROM messages_out"


def transcript(folder: Path, last: int | None = None) -> list[Line]:
    """Both directions of the session in ``folder`` (outbound.db may not exist yet); ``last``: only each side's
    latest that many (by time, then seq), among which are the conversation's latest that many."""
    tail = "" if last is None else f" ORDER BY timestamp DESC, seq DESC LIMIT {int(last)}"
    with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
        found = [Line(r["id"], r["seq"], "in", r["kind"], r["timestamp"], r["content"], r["status"],
                      series_id=r["series_id"])
                 for r in conn.execute("SELECT id, seq, kind, timestamp, status, content, series_id FROM messages_in"
                                       + tail)]
        delivered = {r[0]: r[1] for r in conn.execute("SELECT message_out_id, status FROM delivered")}
    outbound = folder / "outbound.db"
    if outbound.exists():
        journals.guard(outbound, live=True)  # (a planted journal refused, never removed: its runner may be alive)
        with db.outbound(outbound, readonly=True) as conn:
            found += [Line(r["id"], r["seq"], "out", r["kind"], r["timestamp"], r["content"],
                           delivered.get(r["id"], "pending"), r["in_reply_to"] or None)
                      for r in conn.execute(RUNNER_ROWS + tail)]
    return found


def text_of(content: str) -> str:
    """What a message says: its text (or a job's prompt), else its content as it is."""
    try:
        data = json.loads(content)
    except ValueError:  # (a runner's row that is not JSON, whatever its CHECK says: shown as it is)
        return content
    if not isinstance(data, dict):
        return json.dumps(data)
    for key in ("text", "prompt"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return json.dumps(data, ensure_ascii=False)


def next_due(inbound: Path, limit: int) -> list[Due]:
    """The first ``limit`` rows of an inbox that will wake the agent, soonest first."""
    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:
        rows = conn.execute(
            "SELECT id, kind, process_after, timestamp, content FROM messages_in"
            " WHERE status = 'pending' AND trigger = 1 ORDER BY COALESCE(process_after, timestamp) LIMIT ?",
            (limit,)).fetchall()
    return [Due(r["id"], r["kind"], r["process_after"] or r["timestamp"], r["content"]) for r in rows]


def statuses_of(inbound: Path, message_ids: list[str]) -> dict[str, str]:
    """The status of each of these rows of an inbox that it holds, in one read of it."""
    from host.store.outbox import in_chunks  # (what `ncl doctor --help` imports stays light)

    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:
        return {str(r[0]): str(r[1]) for r in in_chunks(conn, "SELECT id, status FROM messages_in WHERE id IN ({})",
                                                          message_ids)}


def live_rows(inbound: Path) -> int:
    """How many rows of an inbox are still to be done: waiting to wake the agent, running or paused."""
    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages_in WHERE status IN ('processing', 'paused')"
                                " OR (status = 'pending' AND trigger = 1)").fetchone()[0])


def job_state(inbound: Path) -> tuple[bool, bool]:
    """(whether the inbox of a session made for one queue job holds a paused task, and whether its job is in)."""
    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:
        paused, arrived = conn.execute("SELECT EXISTS (SELECT 1 FROM messages_in WHERE status = 'paused'),"
                                       " EXISTS (SELECT 1 FROM messages_in WHERE kind = 'queue')").fetchone()
    return bool(paused), bool(arrived)


def queue_jobs(inbound: Path, channel: str) -> dict[str, int]:
    """How many jobs of the queue ``channel`` an inbox holds, by status, among ``pending`` and ``processing``."""
    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:
        rows = conn.execute("SELECT status, COUNT(*) FROM messages_in WHERE kind = 'queue' AND channel_type = ?"
                            " AND status IN ('pending', 'processing') GROUP BY status", (channel,))
        return {str(status): int(count) for status, count in rows}


def file_state(path: Path) -> tuple[int | None, str]:
    """(schema version, "ok" or what quick_check found) of a file, read-only; (None, why) if it cannot be read, or
    a runner's file has a journal of an unfinished commit beside it (said, not rolled back: the host's next visit
    does)."""
    try:  # opened like any session file: no symlink followed, a symlinked session folder refused
        if path.name == "outbound.db":
            journals.guard(path, live=True)
            if journals.hot(path):
                return None, f"{path}-journal holds a commit its runner never finished (rolled back at its next visit)"
        with closing(db.open_readonly(path)) as conn:
            found = db.version(conn)
            # The version sits in the header; a corrupt table page only shows when the pages are read.
            return found, str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
    except (sqlite3.Error, db.DbError) as exc:
        return None, str(exc)


def empty_central() -> db.Connection:
    """An empty central.db at the latest schema, in memory: nothing is created on disk."""
    empty = sqlite3.connect(":memory:", isolation_level=None)
    empty.row_factory = sqlite3.Row
    db.migrate(empty, "central")
    return empty
