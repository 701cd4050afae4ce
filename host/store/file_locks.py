"""The in-process locks of the SQLite files the host's threads share (``db.lock_of``), and what a wait for a lock that
ran out looks like (``is_busy``) and how an operation is done again after one (``retried``)."""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from host.errors import Busy

T = TypeVar("T")

# One bound for any wait on a file: SQLite's busy timeout (db.BUSY_TIMEOUT_MS), and the wait for another thread of
# the host done with it (``FileLock``).
BUSY_TIMEOUT_S = 5.0


class FileLock:
    """One file's in-process lock (``lock_of``), re-entrant. Taken within ``BUSY_TIMEOUT_S``, else it fails as
    SQLite's own lock does (``database is locked``): threads queued behind one stuck in SQLite's busy wait (a runner
    holding its session's inbound.db read-locked, an ``ncl`` command central.db) never wait in turn, a timeout each."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self.take(BUSY_TIMEOUT_S)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def take(self, seconds: float) -> None:
        if not self._lock.acquire(timeout=seconds):
            raise busy()

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        """Held, taken within ``seconds`` (a bound shorter than ``BUSY_TIMEOUT_S``: a visit's)."""
        self.take(seconds)
        try:
            yield
        finally:
            self._lock.release()


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is a wait for another's lock that ran out: SQLite's SQLITE_BUSY (any of its extended codes,
    which Python gives), ``Busy``, or an in-process lock's (``busy``)."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.OperationalError) else None
    return isinstance(exc, Busy) or (code is not None and code & 0xFF == sqlite3.SQLITE_BUSY)


def retried(op: Callable[[], T], seconds: float | None = None) -> T:
    """``op()``, done again while it fails busy, within ``seconds`` (None: ``BUSY_TIMEOUT_S``): an operation SQLite
    fails at once, or whose parts wait less (for a live runner's file: ``outbox.RUNNER_WAIT_S``) to hold nothing
    long."""
    deadline = time.monotonic() + (BUSY_TIMEOUT_S if seconds is None else seconds)
    pause = 0.001
    while True:
        try:
            return op()
        except Exception as exc:
            if not is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


def busy() -> sqlite3.OperationalError:
    """The error SQLite raises when its busy wait runs out, as SQLite raises it."""
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return error


# In-process locks of the files the host's threads share, by path (see ``lock_of``); a lock lives while in use.
_locks: weakref.WeakValueDictionary[str, FileLock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def lock_of(path: Path) -> FileLock:
    """The lock this process's threads hold around their work on the SQLite file ``path``. Two of them meeting on a
    file in SQLite's own locks made the second sleep 1, 2, 5, 10 ms... between tries (its busy handler): a chat's
    answer took up to 35 ms when it met the sweep's visit of the same session, or a webhook's stamp of central.db
    the sweep's index save. A lock hands the file over the moment the other is done. Taken by central.db's
    transactions (``db.transaction``), and around a visit's reads and writes of a session's inbound.db (not its
    work on outbound.db or its stop of a stuck runner, between them), an arrival's or a reply's work on it; never
    around central.db's while a session file's is wanted, so no two threads wait on each other. Other processes
    (``ncl`` commands, runners) still meet the host in SQLite's locks."""
    with _locks_guard:
        lock = _locks.get(str(path))
        if lock is None:
            lock = _locks[str(path)] = FileLock()
    return lock
