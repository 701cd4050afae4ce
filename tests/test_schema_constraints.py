"""The session DBs (DESIGN §4, §5, §12.3): constraints. CHECKs refuse bad rows in messages_in, messages_out,
processing_ack and task_runs (times not in the stored format, even seqs, unknown kinds, statuses and outcomes); a
canonical row gets its defaults; one live recurring occurrence per series, with finished and one-shot occurrences
sharing it.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from schema_kit import InsertRow, RowIn
from schema_kit import session_dir as session_dir

from host.store import db


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": "2026-06-11T09:00:00Z"},
        {"timestamp": "2026-06-11 09:00:00.000"},
        {"timestamp": "2026-06-11T09:00:00.000+00:00"},
        {"process_after": "2026-06-11T09:00:00"},
        {"process_after": "tomorrow"},
        {"seq": 3},
        {"status": "done"},
        {"kind": "email"},
        {"trigger": 2},
        {"content": "not json"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_inbound_checks_refuse_bad_rows(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow, overrides: dict[str, Any]
) -> None:
    with closing(db.connect(session_dir / "inbound.db", "inbound")) as conn:
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "messages_in", row_in(**overrides))
        assert conn.execute("SELECT count(*) FROM messages_in").fetchone()[0] == 0


def test_inbound_accepts_a_canonical_row_with_defaults(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow
) -> None:
    with closing(db.connect(session_dir / "inbound.db", "inbound")) as conn:
        insert_row(conn, "messages_in", row_in(process_after=None))
        row = conn.execute("SELECT status, tries, trigger, on_wake FROM messages_in").fetchone()
    assert tuple(row) == ("pending", 0, 1, 0)


@pytest.mark.parametrize(
    "overrides", [{"seq": 2}, {"timestamp": "2026-06-11T09:00:00Z"}, {"kind": "task"}],
    ids=["even seq", "no ms", "bad kind"],
)
def test_outbound_checks_refuse_bad_rows(session_dir: Path, insert_row: InsertRow, overrides: dict[str, Any]) -> None:
    row = {"id": "msg-1781168400000-dddddd", "seq": 1, "timestamp": "2026-06-11T09:00:00.000Z",
           "kind": "chat", "content": '{"text":"hi","files":[]}'}
    with closing(db.connect(session_dir / "outbound.db", "outbound")) as conn:
        insert_row(conn, "messages_out", row)  # the valid row goes in
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "messages_out", {**row, "id": "msg-1781168400000-eeeeee", "seq": 3, **overrides})


def test_processing_ack_refuses_unknown_status(session_dir: Path, insert_row: InsertRow) -> None:
    with closing(db.connect(session_dir / "outbound.db", "outbound")) as conn:
        ack = {"message_id": "task-1", "status": "processing", "status_changed": "2026-06-11T09:00:00.000Z",
               "generation": "gen-1"}
        insert_row(conn, "processing_ack", ack)
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "processing_ack", {**ack, "message_id": "task-2", "status": "paused"})


def test_task_runs_refuses_unknown_outcome(session_dir: Path, insert_row: InsertRow) -> None:
    with closing(db.connect(session_dir / "inbound.db", "inbound")) as conn:
        run = {"id": "run-1", "series_id": "task-1", "outcome": "ran", "finished_at": "2026-06-11T09:00:01.000Z"}
        insert_row(conn, "task_runs", run)
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "task_runs", {**run, "id": "run-2", "outcome": "exploded"})
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "task_runs", {**run, "id": "run-3", "finished_at": "2026-06-11T09:00:01Z"})


@pytest.mark.parametrize("overrides", [
    {"answer_excerpt": "x" * 501}, {"input_tokens": -1}, {"output_tokens": -5}, {"input_tokens": "twelve"},
    {"output_tokens": 1.5}], ids=["excerpt-501", "input-negative", "output-negative", "input-text", "output-real"])
def test_task_runs_keeps_answers_and_tokens_bounded(session_dir: Path, insert_row: InsertRow,
                                                   overrides: dict[str, Any]) -> None:
    """Issue 16.4: 500 characters of an answer, tokens whole numbers from 0 up, whoever writes."""
    with closing(db.connect(session_dir / "inbound.db", "inbound")) as conn:
        run = {"id": "run-1", "series_id": "task-1", "outcome": "ran", "finished_at": "2026-06-11T09:00:01.000Z",
               "answer_id": "msg-1", "answer_excerpt": "é" * 500, "input_tokens": 0, "output_tokens": 10**15}
        insert_row(conn, "task_runs", run)  # 500 characters (1,000 bytes) and the widest counts go in
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "task_runs", {**run, "id": "run-2", **overrides})


SERIES = "task-1781168400000-aaaaaa"


def _occurrence(row_in: RowIn, n: int, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"recurrence": "0 9 * * *", **overrides}
    return row_in(id=f"task-178116840000{n}-occ00{n}", seq=2 * n, series_id=SERIES, **fields)


@pytest.mark.parametrize("second_status", ["pending", "processing", "paused"])
def test_one_live_recurring_occurrence_per_series(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow, second_status: str
) -> None:
    with closing(db.connect(session_dir / "inbound.db", "inbound")) as conn:
        insert_row(conn, "messages_in", _occurrence(row_in, 1))
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "messages_in", _occurrence(row_in, 2, status=second_status))


def test_finished_and_one_shot_occurrences_share_the_series(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow
) -> None:
    with closing(db.connect(session_dir / "inbound.db", "inbound")) as conn:
        insert_row(conn, "messages_in", _occurrence(row_in, 1, status="completed"))
        insert_row(conn, "messages_in", _occurrence(row_in, 2, status="failed"))
        insert_row(conn, "messages_in", _occurrence(row_in, 3))  # the live one
        insert_row(conn, "messages_in", _occurrence(row_in, 4, recurrence=None))  # run-now: a one-shot
        count = conn.execute("SELECT count(*) FROM messages_in WHERE series_id = ?", (SERIES,)).fetchone()[0]
    assert count == 4
