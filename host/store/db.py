"""Opening the SQLite files: pragmas, short explicit transactions, forward migration on open."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from host.errors import Busy as Busy
from host.errors import DbError as DbError
from host.errors import Tampered as Tampered
from host.errors import cut
from host.files import confined, lock, private
from host.settings import SESSIONS_DIR
from host.store import bounds, file_locks, sidecars
from host.store.file_locks import is_busy as is_busy
from host.store.file_locks import lock_of as lock_of  # (db.lock_of: the host's name for it)
from host.store.file_locks import retried as retried
from schemas import queries
from schemas.ddl import MIGRATIONS, DbKind, latest_version

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = int(file_locks.BUSY_TIMEOUT_S * 1000)
# Session files cross a container mount, whose shared memory WAL would need: rollback journals there. inbound.db
# keeps its journal file for good (see ``sidecars``).
# outbound.db's journal is kept too (TRUNCATE), as its runner keeps it: in a container it is a mount of the host's
# (``workspace.keep_journal``), and a host deleting that name would detach the mount, leaving the name to the runner.
JOURNAL_MODES: dict[DbKind, str] = {"central": "WAL", "inbound": "PERSIST", "outbound": "TRUNCATE"}
# What inbound.db's journal keeps after a commit: the next one writes over its blocks (docs/design.md 2).
INBOUND_JOURNAL_KEEP = 64 << 10
# A session file's commit syncs with synchronous=NORMAL, not SQLite's default FULL: in a rollback journal NORMAL
# drops one sync, the journal's pages before the header that counts them (written and synced together). A commit of
# inbound.db then syncs 4 times, not 5: the journal (and, as its first sync on a connection, the folder), inbound.db,
# the journal's zeroed header. It is as durable: PERSIST syncs that header before COMMIT returns (DELETE never syncs
# its unlink, under FULL either). What NORMAL risks is a power loss during the journal's one sync leaving the header
# on disk and a page not: that page fails its checksum and the rollback stops before it, unless stale bytes of
# another file pass the checksum, which only a filesystem that exposes them after a crash allows (SQLite: "an older
# filesystem"; not ext4 in its default data=ordered, xfs or btrfs). docs/design.md 2.
SESSION_SYNC = "NORMAL"
TASK_IDS_VERSION = 3  # the central.db version that brought the task_ids registry
# What the rest of the host may name of SQLite: an open database is an opaque handle it passes back to the store's
# named queries, and a store failure is caught as ``db.Error`` (nothing outside host.store imports sqlite3).
Connection = sqlite3.Connection
Error = sqlite3.Error
DatabaseError = sqlite3.DatabaseError  # (this class itself, not a subclass: a damaged file)
IntegrityError = sqlite3.IntegrityError


class _Opened(sqlite3.Connection):
    """The connections ``_raw`` opens: central.db's carry its file's in-process lock (``transaction`` takes it)."""

    lock: file_locks.FileLock | None = None
    # A ``reading`` connection's pragmas that only its writes need, run before its first transaction (``transaction``):
    # most visits write nothing, and each pragma took and dropped the file's lock (~7 µs each).
    for_writes: tuple[str, ...] = ()


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT first; a migration must be one transaction, so split it ourselves.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""


def _raw(path: Path, readonly: bool, any_thread: bool = False, wait_s: float | None = None) -> _Opened:
    """A connection to the regular file ``path`` that provably went through no symlink (see ``_pinned``)."""
    with _pinned(path, create=not readonly) as (target, dirfd):
        # mode=rw, never rwc: SQLite never creates a file (``_pinned`` made it, 0600), so a link it met could not
        # make it create one anywhere either. A runner's file is opened rw even to read (then query_only): SQLite opens
        # a read-only file O_RDONLY, which blocks for ever on a FIFO swapped in after the check (an operator's
        # ``ncl messages list`` hung, deaf to Ctrl-C); a read-write open does not block.
        runners = path.name == "outbound.db"
        uri = f"file://{quote_from_bytes(os.fsencode(target))}?mode={'ro' if readonly and not runners else 'rw'}"
        try:
            # ``timeout`` is SQLite's busy timeout (sqlite3_busy_timeout): PRAGMA busy_timeout reads it back.
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000 if wait_s is None else wait_s,
                                   check_same_thread=not any_thread, factory=_Opened)
        except sqlite3.OperationalError as exc:
            raise DbError(f"cannot open {path}: {cut(str(exc))}") from None
        if runners:  # (before any statement: the first parses the schema)
            bounds.bound(conn, bounds.OPERATOR_CPU_S if readonly else bounds.HOST_CPU_S)
            # Its runner may put it in WAL mode between any check and this open: a connection in EXCLUSIVE locking
            # mode reads a WAL file without the shared-memory read slots (outbound.db-shm) the runner could hold, on
            # which SQLite would retry for about 10 s whatever the busy timeout. And a hot journal the first read rolls
            # back (before any journal_mode is set) is then kept, its header zeroed, not deleted (see JOURNAL_MODES).
            # It keeps its lock until it is closed, as soon as its work is done.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            if readonly:
                conn.execute("PRAGMA query_only=ON")
        # SQLite resolves every symlink of the path itself (lstat and readlink per component), then opens the
        # result with O_NOFOLLOW, and reports that result here: the name it gives is the file it opened. Nothing
        # has been read but the 100-byte header, so a name other than the link-free one we pinned is closed unused.
        if conn.execute("PRAGMA database_list").fetchone()[2] != target or not _same_dir(target, dirfd):
            conn.close()
            raise DbError(f"{path} or its folder changed into a symlink while being opened; refusing it")
        if runners and readonly:  # (a read: after the check above) what its first read rolled back keeps its name
            with _refused(conn, path):  # at the close too, as at a writer's (``_version_and_mode``)
                conn.execute(f"PRAGMA journal_mode={JOURNAL_MODES['outbound']}")
    conn.row_factory = sqlite3.Row
    return conn


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` as it is, without migrating it (what ``ncl doctor`` inspects)."""
    return _raw(path, readonly=True)


@contextmanager
def _pinned(path: Path, create: bool) -> Iterator[tuple[str, int]]:
    """The link-free path of ``path`` and a descriptor of its folder. For a session file the folder itself is
    opened without following a link (a symlinked session folder is refused); its parents are the host's, no runner
    can swap them. The file must be a regular file (lstat, no link), or is made 0600 when missing and ``create``."""
    dirfd = _open_folder(path, create)
    try:
        folder = _real_dir(dirfd, path.parent)
        _check_file(dirfd, path, create)
        if path.name in ("inbound.db", "outbound.db") and create:
            sidecars.keep(dirfd, path)
        yield os.path.join(folder, path.name), dirfd
    finally:
        os.close(dirfd)


def _real_dir(dirfd: int, folder: Path) -> str:
    """The link-free path of the folder open as ``dirfd``: the kernel's name for it (one readlink, where a realpath
    costs an lstat per component), else the resolved ``folder``."""
    try:
        return os.readlink(f"/proc/self/fd/{dirfd}")
    except OSError:
        return os.path.realpath(folder)


def _same_dir(target: str, dirfd: int) -> bool:
    """Whether the folder named in ``target`` is still the one opened as ``dirfd`` (not renamed or swapped)."""
    try:
        return os.path.samestat(os.stat(os.path.dirname(target)), os.fstat(dirfd))
    except OSError:
        return False


def _open_folder(path: Path, create: bool) -> int:
    try:
        if path.name in ("inbound.db", "outbound.db"):
            return confined.open_dir(path.parent)
        if create:  # central.db: the data dir is made here if need be, private (its parents are the operator's)
            private.make_dir(path.parent)
        return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except confined.Refused:
        raise DbError(f"{path.parent} is a symlink or not a directory; refusing to use it") from None
    except FileNotFoundError:
        raise DbError(f"no such database: {path}" if not create else f"cannot open {path}: no folder "
                      f"{path.parent}") from None


def _check_file(dirfd: int, path: Path, create: bool) -> None:
    # An lstat, never an open: closing any descriptor of a file drops every POSIX lock this process holds on it,
    # SQLite's own (the WAL read locks of a long-lived connection) included.
    try:
        info = os.stat(path.name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        if not create:
            raise DbError(f"no such database: {path}") from None
        try:
            os.close(private.create_file(dirfd, path.name))  # brand new: no lock on it to lose
        except FileExistsError:  # made by another writer meanwhile, or something planted: check what is there
            _check_file(dirfd, path, create=False)
        return
    if not stat.S_ISREG(info.st_mode):
        raise DbError(f"{path} is not a regular file (a link or special file is never opened)")


version = queries.version


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``queries.transaction``, inside the connection's in-process lock if it has one (``lock_of``), after the
    pragmas a ``reading`` connection left for its writes (SQLite refuses them inside a transaction)."""
    if pragmas := getattr(conn, "for_writes", ()):
        for pragma in pragmas:
            conn.execute(pragma)
        conn.for_writes = ()  # type: ignore[attr-defined]
    with getattr(conn, "lock", None) or nullcontext(), queries.transaction(conn):
        yield conn


def data_version(conn: sqlite3.Connection) -> int:
    """A number that changes whenever another connection has committed to the file since the last call."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, kind: DbKind, path: Path | None = None) -> int:
    """Bring the file to the latest schema in one transaction; returns the version it had. ``path`` (central.db's)
    lets central v3 register the task ids of the install's existing sessions in the same transaction."""
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
        if kind == "central" and current < TASK_IDS_VERSION and path is not None:
            _register_existing_task_ids(conn, path.parent / SESSIONS_DIR)
        conn.execute(f"PRAGMA user_version={latest_version(kind)}")
    return before


def _register_existing_task_ids(central: sqlite3.Connection, sessions_dir: Path) -> None:
    """Central v3 makes task ids unique in the install (DESIGN §13.5). The series an install already has are
    registered once, by the migration, so a runner can never claim an old id for its decoy. An id already found in
    two sessions stays unregistered: the CLI then refuses to guess, as it always did."""
    owners: dict[str, list[tuple[str, str]]] = {}
    for group_id, session_id in central.execute("SELECT agent_group_id, id FROM sessions").fetchall():
        try:
            with closing(open_readonly(sessions_dir / group_id / session_id / "inbound.db")) as inbox:
                found = inbox.execute("SELECT DISTINCT series_id FROM messages_in"
                                      " WHERE kind = 'task' AND series_id IS NOT NULL").fetchall()
        except (DbError, sqlite3.DatabaseError):
            continue  # a missing or broken inbox (doctor names it): its ids stay unregistered
        for (series_id,) in found:
            owners.setdefault(series_id, []).append((group_id, session_id))
    central.executemany("INSERT OR IGNORE INTO task_ids(id, agent_group_id, session_id) VALUES (?, ?, ?)",
                        [(series_id, *held[0]) for series_id, held in owners.items() if len(held) == 1])


def connect(path: Path, kind: DbKind, *, readonly: bool = False, query_only: bool = False,
            reading: bool = False, any_thread: bool = False, wait_s: float | None = None) -> sqlite3.Connection:
    """Open ``path`` at the latest schema. Read-only opens never write, except the migration of an
    older file, done once through a short read-write connection first (DESIGN §12.13). No symlink is ever
    followed to or in a session's files, and a missing file is created 0600 (``_pinned``).

    ``query_only``: the host's reads of a runner's outbound.db. SQLite opens a read-only file O_RDONLY, which
    blocks for ever on a FIFO the runner could swap in after the check; a read-write open does not block (and
    reading a FIFO fails at once), and SQL writes are refused. It may roll back a hot journal, as any writer
    would: only a writer that died leaves one. A file of an older schema is ``Tampered``, never migrated under its
    live runner: the host migrated it before starting that runner.

    ``reading`` (a session file): the connection comes inside the read transaction its checks took, for the
    caller's first reads, which ``end_read`` ends: a transaction less, and its lock taken and dropped once.

    ``any_thread``: usable from any thread, one at a time (``Pool``); sqlite3 binds a connection to its thread.

    ``wait_s``: the busy timeout (SQLite's wait for another's lock), if not ``BUSY_TIMEOUT_MS``; one that runs out
    while the connection is made raises ``Busy``. Given by a sweep's visit, which must not wait long for a lock a
    runner or an operator's read may keep (``outbox.RUNNER_WAIT_S``): then inbound.db never spills a page early."""
    if readonly:
        conn = _raw(path, readonly=True)
        with _refused(conn, path):  # (not a database at all: said with the file's name)
            current = version(conn) == latest_version(kind)
        if not current:
            conn.close()
            with closing(connect(path, kind)):
                pass
            conn = _raw(path, readonly=True)
        if kind == "outbound":
            with _refused(conn, path):
                bounds.check(conn, path)
        return conn
    if kind == "central" and lock.unmade(path):
        lock.refuse_missing_central(path.parent, path.parent / SESSIONS_DIR)
    conn = _raw(path, readonly=False, any_thread=any_thread, wait_s=wait_s)
    with _refused(conn, path):
        found = _version_and_mode(conn, kind, path, keep=reading)
        if kind != "central":
            writes: tuple[str, ...] = (f"PRAGMA synchronous={SESSION_SYNC}",)
            if kind == "inbound":
                writes += (f"PRAGMA journal_size_limit={INBOUND_JOURNAL_KEEP}",)
                if wait_s is not None:
                    # No dirty page is written before the COMMIT: a write of one needs the file's exclusive lock,
                    # which a live runner's open read (its mount is read-only, but a read lock needs no more) or an
                    # operator's holds up; the visit bounds that wait for its COMMIT only (``Visitor.visit``). Its
                    # transactions are small.
                    writes += ("PRAGMA cache_spill=OFF",)
            if reading:
                conn.for_writes = writes
            else:
                for pragma in writes:
                    conn.execute(pragma)
        if kind == "central":  # the session files declare no foreign keys (never changed inside a transaction)
            assert not reading, "central.db is never opened for reading"
            conn.execute("PRAGMA foreign_keys=ON")
            conn.lock = lock_of(path)
        if found < latest_version(kind):
            if query_only:
                raise Tampered(f"{path}: its runner set its schema back to v{found}")
            end_read(conn)
            migrate(conn, kind, path)
            if reading:
                conn.execute("BEGIN")
        if kind == "outbound":
            bounds.check(conn, path)
        if query_only:
            conn.execute("PRAGMA query_only=ON")
    return conn


@contextmanager
def _refused(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """The checks of a connection just made: one that fails closes it, SQLite's error said with the file's name."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        conn.close()
        if bounds.overran(exc):
            raise bounds.given_up(path) from None
        raise (Busy if is_busy(exc) else DbError)(f"cannot use {path}: {cut(str(exc))}") from None
    except DbError:
        conn.close()
        raise


@contextmanager
def outbound(path: Path, **options: Any) -> Iterator[sqlite3.Connection]:
    """A runner's outbound.db opened (``connect``'s ``options``), closed after; SQLite's giving up work on it past its
    bounds raises ``Tampered`` (``bounds``)."""
    with bounds.bounded(path), closing(connect(path, "outbound", **options)) as conn:
        yield conn


def end_read(conn: sqlite3.Connection) -> None:
    """End the read transaction a ``reading`` connection came in (if it is still open). Its writes after it go
    through ``transaction``, which sets what they need first: a write inside it would sync as SQLite's default,
    FULL (as durably, once more)."""
    if conn.in_transaction:
        conn.execute("COMMIT")


def _version_and_mode(conn: sqlite3.Connection, kind: DbKind, path: Path, keep: bool) -> int:
    """The file's schema version (refused if newer than this release), then the connection's journal mode set.
    Every connection sets it: only WAL is kept in the file, and a runner could switch outbound.db to it. (The first
    statement that needs the schema reads it; this is that statement.) Both in one read transaction: a statement
    outside one takes and drops the file's lock by itself, which cost a visit ~15 µs a file. A file in WAL mode
    cannot leave it inside a transaction: then the mode is set on its own, as any file's was before. ``keep``:
    the transaction stays open (a new one, after that)."""
    mode = f"PRAGMA journal_mode={JOURNAL_MODES[kind]}"
    conn.execute("BEGIN")
    try:
        found = _checked_version(conn, kind, path)
        try:
            conn.execute(mode)
        except sqlite3.OperationalError:  # "cannot change out of wal mode from within a transaction"
            conn.execute("ROLLBACK")
            if kind == "central":
                _into_wal(conn, mode)
            else:  # a session file's switch (out of WAL: a runner's doing) is never waited for, as it never was
                conn.execute(mode)
            if keep:
                conn.execute("BEGIN")
            return found
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not keep:
        conn.execute("COMMIT")
    return found


def _into_wal(conn: sqlite3.Connection, mode: str) -> None:
    """central.db's first switch into WAL, outside a transaction. It writes the file's header in a write transaction
    that SQLite starts from a read one, and so fails at once, with no busy wait (which could deadlock), when another
    connection is switching it too: the host's first start, whose mail channel and project tasks each open the new
    central.db, failed so. Tried again within the busy timeout; the other's switch makes it a no-op."""
    retried(lambda: conn.execute(mode))


def _checked_version(conn: sqlite3.Connection, kind: DbKind, path: Path) -> int:
    found = version(conn)
    if found > latest_version(kind):
        raise DbError(f"{path}: {kind} schema version {found} is newer than this release knows")
    return found
