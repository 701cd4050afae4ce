"""The session DBs (DESIGN §4, §5, §12.3): a new session's files. The folder's layout, the documented columns of
inbound.db and outbound.db, pragmas (never WAL, a busy timeout, central.db's too), read-only connections that refuse
writes and never create a missing file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from kit import FakeClock, RecordingRuntime, World, utc
from schema_kit import INBOUND_COLUMNS, InsertRow, RowIn, columns, open_plain
from schema_kit import session_dir as session_dir

from host.loop import Host
from host.store import db, file_locks, sessions
from host.store.db import DbError
from schemas.ddl import DbKind, latest_version

OUTBOUND_COLUMNS = {
    "messages_out": {
        "id", "seq", "in_reply_to", "timestamp", "kind", "platform_id", "channel_type", "thread_id", "content",
    },
    "processing_ack": {"message_id", "status", "status_changed", "detail", "generation"},
    "session_state": {"key", "value", "updated_at"},
}


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_new_session_folder_layout(session_dir: Path) -> None:
    # inbound.db-journal and the empty -wal files: the host's, kept for good so that no runner can put one of its
    # own there (sidecars.keep); outbound.db's journal, kept by whoever wrote it last (TRUNCATE: see db.JOURNAL_MODES).
    assert {p.name for p in session_dir.iterdir()} == {"inbound.db", "inbound.db-journal", "inbound.db-wal",
                                                       "outbound.db", "outbound.db-journal", "outbound.db-wal",
                                                       "inbox", "outbox"}
    assert (session_dir / "inbox").is_dir() and (session_dir / "outbox").is_dir()


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_a_new_sessions_files_are_what_migrating_a_new_file_makes(session_dir: Path, tmp_path: Path,
                                                                   kind: DbKind) -> None:
    """They are written from an image made once (``sessions._image``), not migrated one by one: the same schema,
    entry for entry, the same version, whole, private, and ready for rows."""
    with closing(db.connect(tmp_path / f"{kind}.db", kind)):  # a file migrated from nothing, as before
        pass
    schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    with closing(open_plain(tmp_path / f"{kind}.db")) as migrated, closing(open_plain(
            session_dir / f"{kind}.db")) as made:
        assert made.execute(schema).fetchall() == migrated.execute(schema).fetchall()
        assert made.execute("PRAGMA user_version").fetchone()[0] == latest_version(kind)
        assert made.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert made.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert (session_dir / f"{kind}.db").stat().st_mode & 0o777 == 0o600
    with closing(db.connect(session_dir / f"{kind}.db", kind)) as conn, db.transaction(conn):
        table = "messages_in" if kind == "inbound" else "session_state"
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0


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
            # A writer keeps the journals (sidecars.keep, workspace.keep_journal); a reader sets no mode of its own,
            # but of a runner's file, whose journal is its mount and which it opens writable (``db._raw``).
            want = "delete" if readonly and kind == "inbound" else {"inbound": "persist", "outbound": "truncate"}[kind]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == want
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
            if not readonly:  # a commit syncs once less than under FULL, as durably (db.SESSION_SYNC)
                assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert (session_dir / f"{kind}.db-wal").stat().st_size == 0  # the host's empty one, which SQLite takes for none
    assert not (session_dir / f"{kind}.db-shm").exists()


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_a_reading_connection_writes_as_any_session_writer_and_a_read_pays_for_no_write(session_dir: Path,
                                                                                       kind: DbKind) -> None:
    """A sweep's visit writes through the connection it read with: its first transaction syncs as any session
    writer's. A visit that only reads runs none of that. inbound.db's journal keeps at most
    ``db.INBOUND_JOURNAL_KEEP`` bytes after a commit (a big one's cut back to it), outbound.db's none (TRUNCATE)."""
    journal = session_dir / f"{kind}.db-journal"
    with closing(db.connect(session_dir / f"{kind}.db", kind, reading=True)) as conn:
        assert conn.in_transaction
        db.end_read(conn)
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, SQLite's default: nothing set yet
        with db.transaction(conn):
            conn.execute("CREATE TABLE t(x)")
            conn.execute("INSERT INTO t VALUES (randomblob(300000))")
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        limit = db.INBOUND_JOURNAL_KEEP if kind == "inbound" else -1
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == limit
        with db.transaction(conn):  # a later one has nothing left to set
            conn.execute("UPDATE t SET x = randomblob(300000)")  # its old pages: a journal bigger than what is kept
        if kind == "outbound":
            assert journal.stat().st_size == 0
            return
        assert journal.stat().st_size == db.INBOUND_JOURNAL_KEEP  # cut back
        with db.transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
        assert 0 < journal.stat().st_size <= db.INBOUND_JOURNAL_KEEP  # kept: the next commit writes over it
        assert journal.read_bytes()[:28] == bytes(28)  # its header zeroed: SQLite takes it for no journal
    with closing(db.connect(session_dir / f"{kind}.db", kind, reading=True)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2  # nothing rolled back


def test_central_connections_have_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    with closing(db.connect(path, "central")) as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    with closing(db.connect(path, "central", readonly=True)) as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def _held_new_central(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    """A new, empty central.db, which another connection is writing (as the host's first start had two of its threads
    switch it into WAL at once)."""
    path = tmp_path / "central.db"
    path.touch(mode=0o600)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return path, other


def test_a_new_central_db_switched_by_two_connections_at_once_waits_for_the_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, other = _held_new_central(tmp_path)
    paused: list[float] = []

    def pause(seconds: float) -> None:  # the connect waits: the other connection finishes meanwhile
        paused.append(seconds)
        if other.in_transaction:
            other.execute("COMMIT")

    monkeypatch.setattr(file_locks.time, "sleep", pause)
    with closing(db.connect(path, "central")) as conn, closing(other):
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.version(conn) == latest_version("central")
    assert paused  # it met the other's lock, and waited instead of failing


def test_a_new_central_db_held_past_the_busy_timeout_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, other = _held_new_central(tmp_path)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 0)
    with closing(other), pytest.raises(DbError, match="database is locked"):
        db.connect(path, "central")


def test_an_outbox_a_runner_keeps_in_wal_is_refused_at_once_not_waited_for(
        session_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = session_dir / "outbound.db"
    runner = sqlite3.connect(path, isolation_level=None)  # WAL, and a read kept open: no switch back can be made
    runner.execute("PRAGMA journal_mode=WAL")
    runner.execute("BEGIN")
    runner.execute("SELECT COUNT(*) FROM messages_out").fetchone()
    paused: list[float] = []
    monkeypatch.setattr(file_locks.time, "sleep", paused.append)
    with closing(runner), pytest.raises(DbError, match="locked"):
        db.connect(path, "outbound")
    assert paused == []  # (only central.db's switch into WAL is tried again: the host's own)


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


def test_a_directory_put_in_place_of_a_wal_name_is_removed_and_the_name_kept(session_dir: Path, tmp_path: Path) -> None:
    """A runner may make a directory of the name while it is free (SQLite deletes a -wal it used: second attack
    review): a rename cannot replace one, so every open failed and left a temporary file behind. The directory goes,
    nothing a link in it points to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("the host's")
    wal = session_dir / "outbound.db-wal"
    wal.unlink()
    (wal / "deep").mkdir(parents=True)
    (wal / "deep" / "link").symlink_to(outside)
    with closing(db.connect(session_dir / "outbound.db", "outbound")):
        pass
    assert wal.is_file() and wal.stat().st_size == 0 and (outside / "keep").read_text() == "the host's"
    assert not [p.name for p in session_dir.iterdir() if p.name.startswith(".")]


def test_a_host_makes_the_images_at_its_start_so_its_first_new_session_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made on the way, the images cost the first new session ~8 ms, and 45 ms while a host start swept."""
    world = World(tmp_path)
    clock = FakeClock(utc("2026-06-11T09:00:00"))
    host = Host(world.settings, RecordingRuntime(clock), clock)
    sessions._image.cache_clear()
    host.stopping.set()  # (started, then stopped at once)
    asyncio.run(host.run())
    assert sessions._image.cache_info().currsize == 2
    made = sessions._image.cache_info().misses
    sessions.create_files(tmp_path / "new")
    assert sessions._image.cache_info().misses == made
