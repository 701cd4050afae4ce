"""Opening the SQLite files: pragmas, short explicit transactions, forward migration on open."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from host.errors import NclError
from schemas.ddl import MIGRATIONS, DbKind, latest_version

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 5000


class DbError(NclError):
    """A DB file that cannot be opened or is newer than this release."""


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT first; a migration must be one transaction, so split it ourselves.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""


def _raw(path: Path, readonly: bool) -> sqlite3.Connection:
    target = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rwc'}"
    try:
        # ``timeout`` is SQLite's busy timeout (sqlite3_busy_timeout): PRAGMA busy_timeout reads it back.
        conn = sqlite3.connect(target, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.OperationalError as exc:
        raise DbError(f"cannot open {path}: {exc}") from None
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, taking the write lock up front so no upgrade deadlocks.
    Inside an open transaction it nests as a savepoint, so steps compose into one atomic unit."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full): keep its error, not ours
                conn.execute("ROLLBACK TO nested")
                conn.execute("RELEASE nested")
            raise
        conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, kind: DbKind) -> int:
    """Bring the file to the latest schema in one transaction; returns the version it had."""
    before = version(conn)
    if before == latest_version(kind):
        return before
    with transaction(conn):
        current = version(conn)  # another process may have migrated while we waited for the lock
        if current > latest_version(kind):
            raise DbError(f"{kind} schema version {current} is newer than this release knows")
        for step in range(current, latest_version(kind)):
            for statement in _statements(MIGRATIONS[kind][step]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={latest_version(kind)}")
    return before


def connect(path: Path, kind: DbKind, *, readonly: bool = False) -> sqlite3.Connection:
    """Open ``path`` at the latest schema. Read-only opens never write, except the migration of an
    older file, done once through a short read-write connection first (DESIGN §12.13)."""
    if readonly:
        if not path.is_file():
            raise DbError(f"no such database: {path}")
        if kind == "outbound":
            _refuse_link(path)
        conn = _raw(path, readonly=True)
        if version(conn) == latest_version(kind):
            return conn
        conn.close()
        with closing(connect(path, kind)):
            pass
        return _raw(path, readonly=True)
    if kind == "inbound":
        _drop_foreign_journal(path)
    if kind == "outbound":
        _refuse_link(path)
    conn = _raw(path, readonly=False)
    try:
        if version(conn) > latest_version(kind):
            raise DbError(f"{path}: {kind} schema version {version(conn)} is newer than this release knows")
        # Session files cross a container mount: WAL's shared memory does not, so DELETE there.
        conn.execute(f"PRAGMA journal_mode={'WAL' if kind == 'central' else 'DELETE'}")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, kind)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise DbError(f"cannot use {path}: {exc}") from None
    except DbError:
        conn.close()
        raise
    return conn


def _drop_foreign_journal(path: Path) -> None:
    """inbound.db is the host's alone, but its folder is writable by the runner (for outbound.db's journal). A
    rollback journal beside it that the host did not write would be "rolled back" into it on the next write
    open: a runner could forge host rows. Only the host's own uid writes it, so anything else is removed."""
    journal = path.with_name(path.name + "-journal")
    try:
        owner = journal.lstat().st_uid
    except FileNotFoundError:
        return
    if owner != os.geteuid():
        log.warning("removed %s: not written by the host (uid %d)", journal, owner,
                    extra={"action": "foreign_journal_removed"})
        journal.unlink()


def _refuse_link(path: Path) -> None:
    """outbound.db belongs to the runner, who could replace it with a link to any file the host may write."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise DbError(f"{path} is not a regular file (a link or special file is never opened)")
