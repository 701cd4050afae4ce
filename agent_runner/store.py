"""The runner's side of the session files, and all of its SQL: inbound.db read-only, outbound.db its own (DESIGN
§5, §7). Rows leave as typed objects (``schemas.rows.InMessage``), never ``sqlite3.Row``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent_runner.config import RunnerConfig
from schemas import ids
from schemas.ddl import DbKind, latest_version
from schemas.queries import DUE, transaction, version
from schemas.rows import InMessage, Tokens
from schemas.times import from_text, to_text

BUSY_TIMEOUT_MS = 5000
ROUTING = ("platform_id", "channel_type", "thread_id")
# The oldest triggered rows (at most a batch of them) and every context-only row older than the last of them.
_FETCH = f"""
WITH due AS (
  SELECT m.* FROM messages_in m
  WHERE {DUE} AND m.kind <> 'system'
    AND NOT EXISTS (SELECT 1 FROM ob.processing_ack a
                    WHERE a.message_id = m.id AND (a.status <> 'processing' OR a.generation = :generation))
), cut AS (
  SELECT MAX(seq) AS seq FROM (SELECT seq FROM due WHERE trigger = 1 ORDER BY seq LIMIT :batch)
)
SELECT due.* FROM due, cut WHERE due.seq <= cut.seq ORDER BY due.seq LIMIT :batch * 10
"""


# A store failure, caught without importing sqlite3 (nothing outside this module does).
DbError = sqlite3.Error
OperationalError = sqlite3.OperationalError  # e.g. a lock held too long, or a hot journal not rolled back yet


class StoreError(RuntimeError):
    """A session file the runner cannot use."""


def _open(path: Path, kind: DbKind, readonly: bool) -> sqlite3.Connection:
    # ``timeout`` is SQLite's busy timeout (sqlite3_busy_timeout): PRAGMA busy_timeout reads it back.
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}", uri=True,
                           isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    found = version(conn)
    if found != latest_version(kind):  # the host migrates session files before it wakes a runner
        conn.close()
        raise StoreError(f"{path} is at schema v{found}, this runner needs v{latest_version(kind)}")
    return conn


@dataclass
class Store:
    config: RunnerConfig
    _handled: int | None = field(default=None, init=False, repr=False)  # see ``_past``

    def _past(self) -> int:
        """What this runner's next messages_out row's seq must pass besides its file's highest: the highest the host
        has handled of the session's outbound.db (rounded up to odd; -1: none). The host reads only rows past that,
        so a file put back from an older copy, or made anew, numbers on from there: from its own highest, its next
        rows would never be read (attack review). Read once, before the first write, no outbound.db lock held."""
        if self._handled is None:
            with self._inbound() as conn:
                (top,) = conn.execute("SELECT MAX(seq) FROM delivered WHERE typeof(seq) = 'integer'").fetchone()
            self._handled = -1 if top is None else int(top) // 2 * 2 + 1
        return self._handled

    @contextmanager
    def _inbound(self, with_outbound: bool = False) -> Iterator[sqlite3.Connection]:
        """inbound.db read-only; ``with_outbound`` attaches outbound.db (read-only too) as ``ob``: one open for both."""
        with closing(_open(self.config.inbound, "inbound", readonly=True)) as conn:
            if with_outbound:
                conn.execute("ATTACH DATABASE ? AS ob", (f"{self.config.outbound.resolve().as_uri()}?mode=ro",))
            yield conn

    @contextmanager
    def _outbound(self) -> Iterator[sqlite3.Connection]:
        with closing(_open(self.config.outbound, "outbound", readonly=False)) as conn:
            # The journal is kept, emptied at each commit, never deleted: in a container it is a mount point the
            # host made (a FIFO swapped in there would block the host's reads), which cannot be removed.
            conn.execute("PRAGMA journal_mode=TRUNCATE")
            yield conn

    def fetch(self, now: datetime) -> list[InMessage]:
        """Due rows oldest first (by seq), not yet claimed by this generation nor finished by any."""
        with self._inbound(with_outbound=True) as conn:
            rows = conn.execute(_FETCH, {"now": to_text(now), "generation": self.config.generation,
                                         "batch": self.config.max_batch}).fetchall()
        return [InMessage.of(row) for row in rows]

    def next_due(self, now: datetime) -> datetime | None:
        """When the next row that wakes the agent falls due (None: none is waiting to)."""
        with self._inbound() as conn:
            (found,) = conn.execute("SELECT MIN(process_after) FROM messages_in WHERE status = 'pending'"
                                    " AND trigger = 1 AND kind <> 'system' AND process_after > ?",
                                    (to_text(now),)).fetchone()
        return None if found is None else from_text(found)

    def claim(self, messages: list[InMessage], now: datetime) -> None:
        if not messages:  # a turn with no context rows: no write lock, no open
            return
        with self._outbound() as conn, transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail,"
                             " generation) VALUES (?, 'processing', ?, NULL, ?)",
                             [(m.id, to_text(now), self.config.generation) for m in messages])

    def finish(self, message_ids: list[str], status: str, now: datetime, outcome: str, reason: str | None = None,
               started_at: datetime | None = None, reply: Reply | None = None,
               state: tuple[str, str | None] | None = None, tokens: Tokens | None = None) -> None:
        """The turn's task requests, the answer, the conversation and the acks in one transaction: a runner killed
        at any point has either answered (and asked) or not at all, so a retry never answers or asks twice. Every
        row of the batch is acked with the same detail: the answer's id (the host's run log names it for each task
        row the turn answered) and the turn's ``tokens``, if known."""
        answer_id = None if reply is None else ids.new_id("msg", now)
        detail = json.dumps({"outcome": outcome, "reason": reason,
                             **({"started_at": to_text(started_at)} if started_at else {}),
                             **({"answer_id": answer_id} if answer_id else {}),
                             **({"tokens": tokens.wire()} if tokens else {})})
        past = self._past()
        with self._outbound() as conn, transaction(conn):
            for row in conn.execute("SELECT * FROM staged_requests WHERE generation = ? ORDER BY rowid",
                                    (self.config.generation,)).fetchall():
                _insert_out(conn, past, "system", json.loads(row["content"]), from_text(row["timestamp"]),
                            row["in_reply_to"], {}, row["id"])
            conn.execute("DELETE FROM staged_requests WHERE generation = ?", (self.config.generation,))
            if reply is not None:
                _insert_out(conn, past, "chat", reply.content, now, reply.in_reply_to, reply.routing, answer_id)
            if state is not None:
                _put_state(conn, *state, now)
            conn.executemany("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail,"
                             " generation) VALUES (?, ?, ?, ?, ?)",
                             [(m, status, to_text(now), detail, self.config.generation) for m in message_ids])

    def release_stale_claims(self) -> int:
        """Claims a previous generation left 'processing' (it died): drop them so their rows are fetched again,
        with the requests its unfinished turn staged (the retried turn makes its own)."""
        with self._outbound() as conn, transaction(conn):
            conn.execute("DELETE FROM staged_requests WHERE generation IS NOT ?", (self.config.generation,))
            return conn.execute("DELETE FROM processing_ack WHERE status = 'processing' AND generation IS NOT ?",
                                (self.config.generation,)).rowcount

    def stage(self, request: dict[str, Any], now: datetime, in_reply_to: str | None) -> str:
        """A request for the host that takes effect when this turn finishes (see :meth:`finish`)."""
        request_id = ids.new_id("msg", now)
        with self._outbound() as conn, transaction(conn):
            conn.execute("INSERT INTO staged_requests(id, generation, in_reply_to, timestamp, content)"
                         " VALUES (?, ?, ?, ?, ?)",
                         (request_id, self.config.generation, in_reply_to, to_text(now), json.dumps(request)))
        return request_id

    def tasks_and_requests(self) -> tuple[list[InMessage], list[dict[str, Any]]]:
        """The inbox's task rows by seq, and the requests the host has not applied yet: those sent (not in
        ``delivered``) by seq, then this generation's staged ones, oldest first."""
        with self._inbound(with_outbound=True) as conn:
            rows = conn.execute("SELECT * FROM messages_in WHERE kind = 'task' ORDER BY seq").fetchall()
            sent = conn.execute("SELECT content FROM ob.messages_out m WHERE kind = 'system' AND NOT EXISTS"
                                " (SELECT 1 FROM delivered d WHERE d.message_out_id = m.id) ORDER BY seq").fetchall()
            staged = conn.execute("SELECT content FROM ob.staged_requests WHERE generation = ? ORDER BY rowid",
                                  (self.config.generation,)).fetchall()
        return [InMessage.of(row) for row in rows], [json.loads(row[0]) for row in [*sent, *staged]]

    def answer(self, request_id: str) -> tuple[str, str] | None:
        """The host's answer to a request naming a group (issue 16.3): (status, detail) of its ``delivered`` row,
        None while it has none."""
        with self._inbound() as conn:
            row = conn.execute("SELECT status, detail FROM delivered WHERE message_out_id = ?"
                               " AND status IN ('applied', 'rejected')", (request_id,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1] or ""))

    def destination(self, name: str) -> dict[str, Any] | None:
        """The routing of a named destination, None if there is none of that name."""
        with self._inbound() as conn:
            row = conn.execute("SELECT * FROM destinations WHERE name = ?", (name,)).fetchone()
        return None if row is None else {k: row[k] for k in ROUTING}

    def write(self, kind: str, content: dict[str, Any], now: datetime, in_reply_to: str | None = None,
              routing: dict[str, Any] | None = None, message_id: str | None = None) -> str:
        """A messages_out row (odd seq, after every earlier one)."""
        past = self._past()
        with self._outbound() as conn, transaction(conn):
            return _insert_out(conn, past, kind, content, now, in_reply_to, routing or {}, message_id)

    def state(self, key: str) -> str | None:
        with self._outbound() as conn:
            row = conn.execute("SELECT value FROM session_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None, now: datetime) -> None:
        with self._outbound() as conn, transaction(conn):
            _put_state(conn, key, value, now)

    def beat(self) -> None:
        """Touch .heartbeat, naming this generation so the host never credits a predecessor's beat."""
        path = self.config.session_dir / ".heartbeat"
        if path.exists() and path.read_text() == self.config.generation:
            path.touch()
        else:
            path.write_text(self.config.generation)


@dataclass(frozen=True)
class Reply:
    """A chat row to write back: its content, the row it answers and where it goes."""

    content: dict[str, Any]
    in_reply_to: str | None
    routing: dict[str, Any]


def _insert_out(conn: sqlite3.Connection, past: int, kind: str, content: dict[str, Any], now: datetime,
                in_reply_to: str | None, routing: dict[str, Any], message_id: str | None) -> str:
    """A messages_out row numbered past the file's rows and ``past`` (``Store._past``)."""
    message_id = message_id or ids.new_id("msg", now)
    (top,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM messages_out").fetchone()
    conn.execute("INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, platform_id, channel_type,"
                 " thread_id, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (message_id, max(int(top), past) + 2, in_reply_to, to_text(now), kind,
                  *(routing.get(k) for k in ROUTING), json.dumps(content)))
    return message_id


def _put_state(conn: sqlite3.Connection, key: str, value: str | None, now: datetime) -> None:
    if value is None:
        conn.execute("DELETE FROM session_state WHERE key = ?", (key,))
    else:
        conn.execute("INSERT OR REPLACE INTO session_state(key, value, updated_at) VALUES (?, ?, ?)",
                     (key, value, to_text(now)))
