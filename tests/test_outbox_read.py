"""What a visit reads of outbound.db (``outbox.read``): the acks of the inbox's open rows, the requests past the last
one handled and the replies past the last one dealt with, and nothing else. A quiet outbox (every row already dealt
with) is told apart by one short statement, without the three reads, and a visit reads only the kinds of rows it
finds there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from host.store import db, outbox, sessions

OPEN, CLOSED = "msg-1779109200000-open01", "msg-1779109200000-done01"
AT = "2026-05-18T13:00:00.000Z"


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sess"
    sessions.create_files(folder)
    with closing(db.connect(folder / "outbound.db", "outbound")) as conn, db.transaction(conn):
        # Dealt with already: a request at seq 1 (handled), replies at 3 and 5 (sent), the ack of a closed row.
        conn.executemany("INSERT INTO messages_out(id, seq, timestamp, kind, content) VALUES (?, ?, ?, ?, ?)",
                         [("out-1", 1, AT, "system", json.dumps({"action": "pause_task"})),
                          ("out-3", 3, AT, "chat", json.dumps({"text": "hi"})),
                          ("out-5", 5, AT, "chat", json.dumps({"text": "again"}))])
        conn.execute("INSERT INTO processing_ack(message_id, status, status_changed) VALUES (?, 'completed', ?)",
                     (CLOSED, AT))
    return folder


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statements run on outbound.db connections after their checks (``db.connect`` returned them)."""
    seen: list[str] = []
    real = db.connect

    def traced(path: Path, kind: Any, **kwargs: Any) -> db.Connection:
        conn = real(path, kind, **kwargs)
        if kind == "outbound":
            conn.set_trace_callback(seen.append)
        return conn

    monkeypatch.setattr(db, "connect", traced)
    yield seen


def _read(folder: Path, open_ids: list[str], handled: int = 1, replied: int = 5) -> outbox.Outbox:
    return outbox.read(folder / "outbound.db", open_ids, handled, writable=True, reply_after_seq=replied)


def _add(folder: Path, sql: str, *args: Any) -> None:
    with closing(db.connect(folder / "outbound.db", "outbound")) as conn, db.transaction(conn):
        conn.execute(sql, args)


def test_a_quiet_outbox_is_read_in_one_statement(session_dir: Path, statements: list[str]) -> None:
    found = _read(session_dir, [OPEN])
    assert (found.acks, found.requests, found.replies) == ({}, [], [])
    probe, *rest = statements
    assert "messages_out" in probe and "processing_ack" in probe and rest == ["COMMIT"]


def test_an_ack_of_an_open_row_alone_is_found(session_dir: Path, statements: list[str]) -> None:
    _add(session_dir, "INSERT INTO processing_ack(message_id, status, status_changed) VALUES (?, 'processing', ?)",
         OPEN, AT)
    statements.clear()
    found = _read(session_dir, [OPEN, "msg-1779109200000-open02"])
    assert list(found.acks) == [OPEN] and found.acks[OPEN].status == "processing"
    assert (found.requests, found.replies) == ([], [])
    assert len(statements) == 3 and "FROM processing_ack" in statements[1]  # (no read of requests or replies)
    assert _read(session_dir, []).acks == {}  # (no open row: no ack is read, whatever is there)


def test_a_request_past_the_handled_one_alone_is_found(session_dir: Path) -> None:
    _add(session_dir, "INSERT INTO messages_out(id, seq, timestamp, kind, content) VALUES ('out-7', 7, ?,"
         " 'system', ?)", AT, json.dumps({"action": "cancel_task"}))
    found = _read(session_dir, [OPEN])
    assert [r.id for r in found.requests] == ["out-7"] and found.replies == [] and found.acks == {}
    assert [r.id for r in _read(session_dir, [OPEN], handled=0).requests] == ["out-1", "out-7"]
    assert _read(session_dir, [OPEN], handled=7).requests == []


def test_a_reply_past_the_last_one_dealt_with_alone_is_found(session_dir: Path) -> None:
    assert [r.id for r in _read(session_dir, [OPEN], replied=3).replies] == ["out-5"]
    # A request's watermark below the replies' reads no reply it has seen, and the other way round.
    assert _read(session_dir, [OPEN], handled=0, replied=5).replies == []
    assert _read(session_dir, [OPEN], handled=5, replied=0).requests == []


def test_more_open_rows_than_one_statement_binds_are_read_in_chunks(session_dir: Path) -> None:
    many = [f"msg-1779109200000-{n:06d}" for n in range(outbox.CHUNK * 2 + 1)]
    _add(session_dir, "INSERT INTO processing_ack(message_id, status, status_changed) VALUES (?, 'processing', ?)",
         many[-1], AT)
    assert list(_read(session_dir, many).acks) == [many[-1]]
