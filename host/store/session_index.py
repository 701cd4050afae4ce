"""What the sweep last learned of each active session, kept in central.db ``session_index`` (issue 14): the stat
signature of its files when a visit began and the next due time that visit found. A restarted host stats every
session and opens only those whose signature differs or whose due time has come. A row is a hint, never trusted
data: it holds nothing a runner wrote, and a file changed since (any write moves its ctime, which no runner can set
back) no longer matches it."""

from __future__ import annotations

from dataclasses import dataclass, field

from host.store import db
from schemas.ddl import latest_version

SAVE_CHUNK = 200


@dataclass(frozen=True, slots=True)
class Entry:
    files: tuple[int, ...]
    next_due: str | None  # '' = due now


@dataclass
class Kept:
    """The index as this host holds it: its rows, and the changes not saved yet (None: the row goes)."""

    rows: dict[str, Entry] = field(default_factory=dict)
    unsaved: dict[str, Entry | None] = field(default_factory=dict)

    def note(self, session_id: str, entry: Entry | None) -> None:
        """What the index is to hold of the session now (None: nothing)."""
        if self.rows.get(session_id) != entry:
            self.unsaved[session_id] = entry
        else:
            self.unsaved.pop(session_id, None)

    def save(self, conn: db.Connection, valid_in: str) -> None:
        """The changes not saved yet (``save``); if that fails (``db.Error``) they stay, to be saved again."""
        save(conn, valid_in, self.unsaved)
        for sid, entry in self.unsaved.items():
            if entry is None:
                self.rows.pop(sid, None)
            else:
                self.rows[sid] = entry
        self.unsaved.clear()


def context(zone: str) -> str:
    """What a row is valid under: a host in another zone re-plans recurring tasks, and one of another release may
    migrate the files, so either opens every session once."""
    return f"{zone} inbound:{latest_version('inbound')} outbound:{latest_version('outbound')}"


def prune(conn: db.Connection) -> None:
    """Drop the rows of sessions no longer active."""
    with db.transaction(conn):
        conn.execute("DELETE FROM session_index WHERE session_id NOT IN"
                     " (SELECT id FROM sessions WHERE status = 'active')")


def load(conn: db.Connection, valid_in: str) -> list[tuple[str, str, str | None]]:
    """The rows taken under ``valid_in`` as (session id, files, next due), soonest due first (then by session id, as
    the sweep's book orders them: SQLite sorts them with the GIL released, where a sort of the book's 10,000 entries
    held it 7 ms, every answer waiting): ``entry`` makes each an ``Entry``, so a caller may pause between them."""
    found: list[tuple[str, str, str | None]] = conn.execute(
        "SELECT session_id, files, next_due FROM session_index WHERE context = ? ORDER BY next_due, session_id",
        (valid_in,)).fetchall()
    return found


def entry(files: str, next_due: str | None) -> Entry:
    return Entry(tuple(int(n) for n in files.split()), next_due)


def save(conn: db.Connection, valid_in: str, changed: dict[str, Entry | None]) -> None:
    """Rows changed (None: removed), ``SAVE_CHUNK`` to a transaction: central.db's other writers (a chat's or a
    webhook's arrival) wait for each commit, never for thousands of rows (a sweep that cloned 1,000 tasks)."""
    rows = list(changed.items())
    for start in range(0, len(rows), SAVE_CHUNK):
        chunk = rows[start:start + SAVE_CHUNK]
        with db.transaction(conn):
            conn.executemany("DELETE FROM session_index WHERE session_id = ?",
                             [(sid,) for sid, entry in chunk if entry is None])
            conn.executemany("INSERT OR REPLACE INTO session_index(session_id, files, next_due, context)"
                             " VALUES (?, ?, ?, ?)",
                             [(sid, " ".join(map(str, entry.files)), entry.next_due, valid_in)
                              for sid, entry in chunk if entry is not None])
