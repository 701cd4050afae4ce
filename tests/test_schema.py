"""The session DBs (DESIGN §4, §5, §12.3): columns, pragmas, constraints, forward migration."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest

from host import db, sessions
from host.db import DbError
from schemas.ddl import MIGRATIONS, DbKind, latest_version

InsertRow = Callable[[sqlite3.Connection, str, dict[str, Any]], None]
RowIn = Callable[..., dict[str, Any]]

INBOUND_COLUMNS = {
    "messages_in": {
        "id", "seq", "kind", "timestamp", "status", "process_after", "recurrence", "series_id", "tries",
        "trigger", "on_wake", "platform_id", "channel_type", "thread_id", "content",
    },
    "task_runs": {
        "id", "series_id", "message_id", "scheduled_for", "started_at", "finished_at", "duration_ms",
        "outcome", "detail",
    },
}
OUTBOUND_COLUMNS = {
    "messages_out": {
        "id", "seq", "in_reply_to", "timestamp", "kind", "platform_id", "channel_type", "thread_id", "content",
    },
    "processing_ack": {"message_id", "status", "status_changed", "detail", "generation"},
    "session_state": {"key", "value", "updated_at"},
}
DOCUMENTED_QUERY = (
    "SELECT id, status, process_after, recurrence, series_id FROM messages_in "
    "WHERE kind='task' ORDER BY process_after"
)


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    path = tmp_path / "v2-sessions" / "ag-demo" / "sess-1781168400000-aaaaaa"
    sessions.create_files(path)
    return path


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def open_plain(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# --- a new session's files -------------------------------------------------------------------------


def test_new_session_folder_layout(session_dir: Path) -> None:
    assert {p.name for p in session_dir.iterdir()} == {"inbound.db", "outbound.db", "inbox", "outbox"}
    assert (session_dir / "inbox").is_dir() and (session_dir / "outbox").is_dir()


def test_inbound_columns_are_the_documented_ones(session_dir: Path) -> None:
    with closing(open_plain(session_dir / "inbound.db")) as conn:
        for table, expected in INBOUND_COLUMNS.items():
            assert columns(conn, table) == expected, table
        assert {"messages_in", "task_runs", "destinations", "session_routing", "delivered"} <= tables(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version("inbound")


def test_outbound_columns_are_the_documented_ones(session_dir: Path) -> None:
    with closing(open_plain(session_dir / "outbound.db")) as conn:
        for table, expected in OUTBOUND_COLUMNS.items():
            assert columns(conn, table) == expected, table
        assert "container_state" in tables(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version("outbound")


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_session_files_are_never_wal(session_dir: Path, kind: DbKind) -> None:
    path = session_dir / f"{kind}.db"
    # Bytes 18-19 of the header are 1 for a rollback-journal file, 2 for WAL.
    assert path.read_bytes()[18:20] == b"\x01\x01"
    for readonly in (False, True):
        with closing(db.connect(path, kind, readonly=readonly)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert not (session_dir / f"{kind}.db-wal").exists()
    assert not (session_dir / f"{kind}.db-shm").exists()


def test_central_connections_have_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    with closing(db.connect(path, "central")) as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    with closing(db.connect(path, "central", readonly=True)) as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_readonly_connection_refuses_writes(session_dir: Path, row_in: RowIn, insert_row: InsertRow) -> None:
    with (
        closing(db.connect(session_dir / "inbound.db", "inbound", readonly=True)) as conn,
        pytest.raises(sqlite3.OperationalError, match="readonly"),
    ):
        insert_row(conn, "messages_in", row_in())


def test_readonly_open_of_a_missing_file_is_a_db_error(tmp_path: Path) -> None:
    with pytest.raises(DbError):
        db.connect(tmp_path / "nope.db", "inbound", readonly=True)
    assert not (tmp_path / "nope.db").exists()


# --- the documented sqlite3 query ------------------------------------------------------------------


def _task_series(conn: sqlite3.Connection, row_in: RowIn, insert_row: InsertRow) -> list[tuple[Any, ...]]:
    """A healthy series (one completed firing, one pending) plus a chat row the query must skip."""
    series = "task-1781168400000-aaaaaa"
    rows = [
        row_in(id="task-1781254800000-bbbbbb", seq=4, series_id=series, recurrence="0 9 * * *",
               process_after="2026-06-12T13:00:00.000Z"),
        row_in(id=series, seq=2, series_id=series, status="completed", recurrence=None,
               process_after="2026-06-11T13:00:00.000Z"),
        row_in(id="msg-1781168400000-cccccc", seq=6, kind="chat", process_after=None, series_id=None,
               content='{"text":"hi","sender":"user","sender_id":null}'),
    ]
    with db.transaction(conn):
        for row in rows:
            insert_row(conn, "messages_in", row)
    return [
        (series, "completed", "2026-06-11T13:00:00.000Z", None, series),
        ("task-1781254800000-bbbbbb", "pending", "2026-06-12T13:00:00.000Z", "0 9 * * *", series),
    ]


def test_documented_query_runs_through_python_with_the_ro_uri(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow
) -> None:
    path = session_dir / "inbound.db"
    with closing(db.connect(path, "inbound")) as conn:
        expected = _task_series(conn, row_in, insert_row)
    before = path.read_bytes()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute(DOCUMENTED_QUERY).fetchall() == expected
    assert path.read_bytes() == before


def test_documented_query_runs_through_the_sqlite3_cli(
    session_dir: Path, row_in: RowIn, insert_row: InsertRow
) -> None:
    binary = shutil.which("sqlite3")
    if binary is None:
        pytest.skip("the sqlite3 command-line binary is not installed (Debian/Ubuntu: apt-get install sqlite3)")
    path = session_dir / "inbound.db"
    with closing(db.connect(path, "inbound")) as conn:
        expected = _task_series(conn, row_in, insert_row)
    before = path.read_bytes()
    done = subprocess.run(
        [binary, f"file:{path}?mode=ro", DOCUMENTED_QUERY], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["|".join("" if v is None else str(v) for v in row) for row in expected]
    assert path.read_bytes() == before


# --- constraints -----------------------------------------------------------------------------------


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


# --- migration -------------------------------------------------------------------------------------


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
        assert columns(conn, "messages_in") == INBOUND_COLUMNS["messages_in"] - {"trigger", "on_wake"}
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
    """Tables with their columns and indexes with their keys: what code can rely on, whatever the DDL text."""
    found: dict[str, Any] = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        cols = {r[1]: (r[2].upper(), r[3], r[4], r[5]) for r in conn.execute(f"PRAGMA table_info({table})")}
        indexes = {
            r[1]: (r[2], r[4], tuple(c[2] for c in conn.execute(f"PRAGMA index_info({r[1]})")))
            for r in conn.execute(f"PRAGMA index_list({table})")
            if not r[1].startswith("sqlite_autoindex")
        }
        found[table] = {"columns": cols, "indexes": indexes}
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
