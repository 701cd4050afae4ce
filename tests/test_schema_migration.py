"""The session DBs (DESIGN §4, §5, §12.3): forward migration. Files the first release wrote migrate keeping every row
(read-only opens migrate first), a newer file is refused untouched, a failed migration changes nothing, a file that
is not a database is a ``DbError``, and a file from every released schema (tests/released_schemas) migrates to the
current shape.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest
from schema_kit import INBOUND_COLUMNS, InsertRow, columns, open_plain
from schema_kit import session_dir as session_dir

from host.store import db, sessions
from host.store.db import DbError
from schemas.ddl import MIGRATIONS, DbKind, latest_version


def make_v1(path: Path, kind: DbKind) -> None:
    """A file exactly as the first release wrote it: only the v1 DDL, user_version 1."""
    with closing(open_plain(path)) as conn:
        conn.executescript(MIGRATIONS[kind][0])
        conn.execute("PRAGMA user_version=1")


def test_v1_inbound_migrates_forward_keeping_every_row(tmp_path: Path, insert_row: InsertRow) -> None:
    path = tmp_path / "inbound.db"
    make_v1(path, "inbound")
    old_task = {"id": "task-1781168400000-aaaaaa", "seq": 2, "kind": "task",
                "timestamp": "2026-06-11T09:00:00.000Z", "process_after": "2026-06-11T13:00:00.000Z",
                "recurrence": "0 9 * * *", "series_id": None, "content": '{"prompt":"standup"}'}
    clone = {**old_task, "id": "task-1781168400000-bbbbbb", "seq": 4, "series_id": "task-1781000000000-zzzzzz",
             "status": "completed", "recurrence": None}
    chat = {"id": "msg-1781168400000-cccccc", "seq": 6, "kind": "chat", "timestamp": "2026-06-11T09:00:00.000Z",
            "content": '{"text":"hi"}', "platform_id": "p", "channel_type": "cli", "thread_id": "t"}
    with closing(open_plain(path)) as conn:
        for row in (old_task, clone, chat):
            insert_row(conn, "messages_in", row)
        insert_row(conn, "destinations", {"name": "home", "channel_type": "cli"})
        insert_row(conn, "session_routing", {"id": 1, "channel_type": "cli", "platform_id": "p"})
        insert_row(conn, "delivered", {"message_out_id": "msg-1", "delivered_at": "2026-06-11T09:00:01.000Z"})

    with closing(db.connect(path, "inbound")) as conn:
        assert db.version(conn) == latest_version("inbound")
        assert columns(conn, "messages_in") == INBOUND_COLUMNS["messages_in"]
        rows = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM messages_in")}
        assert conn.execute("SELECT count(*) FROM destinations").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM session_routing").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM delivered").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM task_runs").fetchone()[0] == 0

    assert set(rows) == {old_task["id"], clone["id"], chat["id"]}
    for original in (old_task, clone, chat):
        row = rows[original["id"]]
        assert {k: row[k] for k in original if k != "series_id"} == {
            k: v for k, v in original.items() if k != "series_id"
        }
        assert (row["trigger"], row["on_wake"]) == (1, 0)
    assert rows[old_task["id"]]["series_id"] == old_task["id"]  # a task's own series
    assert rows[clone["id"]]["series_id"] == clone["series_id"]  # carried forward, untouched
    assert rows[chat["id"]]["series_id"] is None  # only tasks have a series


def test_v1_outbound_migrates_forward_keeping_every_row(tmp_path: Path, insert_row: InsertRow) -> None:
    path = tmp_path / "outbound.db"
    make_v1(path, "outbound")
    with closing(open_plain(path)) as conn:
        insert_row(conn, "messages_out", {"id": "msg-1", "seq": 1, "timestamp": "2026-06-11T09:00:00.000Z",
                                          "kind": "chat", "content": '{"text":"hi","files":[]}'})
        insert_row(conn, "processing_ack", {"message_id": "task-1", "status": "completed",
                                            "status_changed": "2026-06-11T09:00:01.000Z", "detail": None})
        insert_row(conn, "session_state", {"key": "k", "value": "v", "updated_at": "2026-06-11T09:00:01.000Z"})
    with closing(db.connect(path, "outbound")) as conn:
        assert db.version(conn) == latest_version("outbound")
        assert conn.execute("SELECT count(*) FROM messages_out").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM session_state").fetchone()[0] == 1
        ack = dict(conn.execute("SELECT * FROM processing_ack").fetchone())
    assert ack == {"message_id": "task-1", "status": "completed", "status_changed": "2026-06-11T09:00:01.000Z",
                   "detail": None, "generation": None}


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_readonly_open_migrates_first(tmp_path: Path, kind: DbKind) -> None:
    path = tmp_path / f"{kind}.db"
    make_v1(path, kind)
    with closing(db.connect(path, kind, readonly=True)) as conn:
        assert db.version(conn) == latest_version(kind)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("CREATE TABLE x(y)")
    with closing(open_plain(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version(kind)


@pytest.mark.parametrize("kind", ["inbound", "outbound", "central"])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_newer_file_is_refused(tmp_path: Path, kind: DbKind, readonly: bool) -> None:
    path = tmp_path / f"{kind}.db"
    with closing(db.connect(path, kind)):
        pass
    newer = latest_version(kind) + 1
    with closing(open_plain(path)) as conn:
        conn.execute(f"PRAGMA user_version={newer}")
    with pytest.raises(DbError, match="newer"):
        db.connect(path, kind, readonly=readonly)
    with closing(open_plain(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == newer


def test_a_failed_migration_changes_nothing(tmp_path: Path, insert_row: InsertRow) -> None:
    # Two live occurrences of one series carrying the recurrence break the v2 unique index:
    # the whole migration must roll back, leaving the v1 file as it was.
    path = tmp_path / "inbound.db"
    make_v1(path, "inbound")
    base = {"kind": "task", "timestamp": "2026-06-11T09:00:00.000Z", "recurrence": "0 9 * * *",
            "series_id": "task-s", "content": "{}"}
    with closing(open_plain(path)) as conn:
        insert_row(conn, "messages_in", {**base, "id": "task-a", "seq": 2})
        insert_row(conn, "messages_in", {**base, "id": "task-b", "seq": 4})
    before = path.read_bytes()
    with pytest.raises(DbError):
        db.connect(path, "inbound")
    with closing(open_plain(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert columns(conn, "messages_in") == INBOUND_COLUMNS["messages_in"] - {"trigger", "on_wake", "zone"}
        assert conn.execute("SELECT count(*) FROM messages_in").fetchone()[0] == 2
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_a_db_error(tmp_path: Path) -> None:
    path = tmp_path / "inbound.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DbError):
        db.connect(path, "inbound")


# --- files written by an earlier release -----------------------------------------------------------

RELEASED = Path(__file__).parent / "released_schemas"


def shape(conn: sqlite3.Connection) -> dict[str, Any]:
    """Tables with their columns and indexes with their keys, and the triggers: what code can rely on, whatever the
    DDL text."""
    found: dict[str, Any] = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        cols = {r[1]: (r[2].upper(), r[3], r[4], r[5]) for r in conn.execute(f"PRAGMA table_info({table})")}
        indexes = {
            r[1]: (r[2], r[4], tuple(c[2] for c in conn.execute(f"PRAGMA index_info({r[1]})")))
            for r in conn.execute(f"PRAGMA index_list({table})")
            if not r[1].startswith("sqlite_autoindex")
        }
        found[table] = {"columns": cols, "indexes": indexes}
    found["triggers"] = conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
                                     ).fetchall()
    return found


@pytest.mark.parametrize("frozen", sorted(RELEASED.glob("*.sql")), ids=lambda p: p.stem)
def test_a_file_from_a_released_schema_migrates_to_the_current_schema(tmp_path: Path, frozen: Path) -> None:
    kind = cast(DbKind, frozen.name.split(".")[0])
    old = tmp_path / f"old-{kind}.db"
    with closing(open_plain(old)) as conn:
        conn.executescript(frozen.read_text())
    fresh = tmp_path / f"fresh-{kind}.db"
    with closing(db.connect(fresh, kind)) as conn:
        expected = shape(conn)
    with closing(db.connect(old, kind)) as conn:
        assert db.version(conn) == latest_version(kind)
        assert shape(conn) == expected


def test_a_v4_inbound_keeps_its_runs_and_gains_empty_answers(tmp_path: Path, insert_row: InsertRow) -> None:
    """Issue 16.4 (inbound v5): the runs a v4 file holds stay as they were; what v5 adds is NULL for them."""
    path = tmp_path / "inbound.db"
    with closing(open_plain(path)) as conn:
        conn.executescript((RELEASED / "inbound.v4.sql").read_text())
        insert_row(conn, "messages_in", {"id": "task-1", "seq": 2, "kind": "task", "status": "completed",
                                         "timestamp": "2026-06-11T09:00:00.000Z", "series_id": "task-1",
                                         "content": '{"prompt":"standup"}', "zone": "America/New_York"})
        runs = [{"id": f"run-{n}", "series_id": "task-1", "message_id": "task-1", "outcome": outcome,
                 "scheduled_for": "2026-06-11T13:00:00.000Z", "started_at": "2026-06-11T13:00:01.000Z",
                 "finished_at": "2026-06-11T13:00:09.000Z", "duration_ms": 8000, "detail": detail}
                for n, (outcome, detail) in enumerate([("ran", None), ("failed", "authentication failed (401)")])]
        for run in runs:
            insert_row(conn, "task_runs", run)
    with closing(db.connect(path, "inbound")) as conn:
        assert db.version(conn) == latest_version("inbound")
        assert columns(conn, "task_runs") == INBOUND_COLUMNS["task_runs"]
        kept = [dict(r) for r in conn.execute("SELECT * FROM task_runs ORDER BY id")]
        assert conn.execute("SELECT zone FROM messages_in").fetchone()[0] == "America/New_York"
    added = {"answer_id": None, "answer_excerpt": None, "input_tokens": None, "output_tokens": None}
    assert kept == [{**run, **added} for run in runs]


def test_a_v5_inbound_keeps_every_row_and_takes_mail(tmp_path: Path, insert_row: InsertRow) -> None:
    """Issue 17 (inbound v6): the table is rebuilt for the new kind; every row and column stays as it was, the
    old kinds' CHECK still holds and a ``mail`` row can be written."""
    path = tmp_path / "inbound.db"
    rows = [{"id": "task-1", "seq": 2, "kind": "task", "status": "paused", "timestamp": "2026-06-11T09:00:00.000Z",
             "process_after": "2026-06-12T13:00:00.000Z", "recurrence": "0 9 * * *", "series_id": "task-1",
             "tries": 2, "trigger": 1, "on_wake": 1, "platform_id": "p", "channel_type": "cli", "thread_id": "t",
             "content": '{"prompt":"standup"}', "zone": "America/New_York"},
            {"id": "msg-1", "seq": 4, "kind": "webhook", "status": "completed", "timestamp": "2026-06-11T09:00:01.000Z",
             "process_after": None, "recurrence": None, "series_id": None, "tries": 0, "trigger": 0, "on_wake": 0,
             "platform_id": None, "channel_type": "webhook:hook", "thread_id": None, "content": '{"source":"hook"}',
             "zone": None}]
    with closing(open_plain(path)) as conn:
        conn.executescript((RELEASED / "inbound.v5.sql").read_text())
        for row in rows:
            insert_row(conn, "messages_in", row)
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "messages_in", {**rows[1], "id": "msg-2", "seq": 6, "kind": "mail"})
    with closing(db.connect(path, "inbound")) as conn:
        assert [dict(r) for r in conn.execute("SELECT * FROM messages_in ORDER BY seq")] == rows
        insert_row(conn, "messages_in", {**rows[1], "id": "msg-2", "seq": 6, "kind": "mail"})
        with pytest.raises(sqlite3.IntegrityError):
            insert_row(conn, "messages_in", {**rows[1], "id": "msg-3", "seq": 8, "kind": "fax"})
        with pytest.raises(sqlite3.IntegrityError):  # the one-live-recurrence index came back
            insert_row(conn, "messages_in", {**rows[0], "id": "task-2", "seq": 10})


def test_a_v9_central_db_counts_changes_to_its_list_of_sessions_from_the_migration_on(tmp_path: Path) -> None:
    """Central v10 (issue 14): the host learns that the list of sessions changed from one counter the DB keeps."""
    path = tmp_path / "central.db"
    with closing(open_plain(path)) as conn:
        conn.executescript((RELEASED / "central.v9.sql").read_text())
        conn.execute("INSERT INTO sessions(id, agent_group_id, created_at, last_active_at) VALUES"
                     " ('sess-1', 'ag-a', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')")
    with closing(db.connect(path, "central")) as conn:
        assert sessions.list_changes(conn) == (0, 0)
        conn.execute("UPDATE sessions SET last_active_at = '2026-01-02T00:00:00.000Z'")
        assert sessions.list_changes(conn) == (0, 0)
        conn.execute("INSERT INTO sessions(id, agent_group_id, created_at, last_active_at) VALUES"
                     " ('sess-2', 'ag-a', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')")
        assert sessions.list_changes(conn) == (1, 0)
        conn.execute("UPDATE sessions SET status = 'closed' WHERE id = 'sess-1'")
        conn.execute("DELETE FROM sessions WHERE id = 'sess-1'")  # (a closed one: the list is as it was)
        assert sessions.list_changes(conn) == (1, 1)
