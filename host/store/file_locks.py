"""The in-process locks of the SQLite files the host's threads share (``db.lock_of``, ``db.released``)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# In-process locks of the files the host's threads share, by path (see ``lock_of``); a lock lives while in use.
_locks: weakref.WeakValueDictionary[str, threading.RLock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()


def lock_of(path: Path) -> threading.RLock:
    """The lock this process's threads hold around their work on the SQLite file ``path``. Two of them meeting on a
    file in SQLite's own locks made the second sleep 1, 2, 5, 10 ms... between tries (its busy handler): a chat's
    answer took up to 35 ms when it met the sweep's visit of the same session, or a webhook's stamp of central.db
    the sweep's index save. A lock hands the file over the moment the other is done. Taken by central.db's
    transactions (``db.transaction``), and around a visit's reads and writes of a session's inbound.db (not its
    work on outbound.db or its stop of a stuck runner: ``released``), an arrival's or a reply's work on it; never
    around central.db's while a session file's is wanted, so no two threads wait on each other. Other processes
    (``ncl`` commands, runners) still meet the host in SQLite's locks."""
    with _locks_guard:
        lock = _locks.get(str(path))
        if lock is None:
            lock = _locks[str(path)] = threading.RLock()
    return lock


@contextmanager
def released(lock: threading.RLock) -> Iterator[None]:
    """``lock`` (a ``lock_of``, taken once by this thread) let go meanwhile and taken again after: for work beside
    the file, which another thread's use of the file need not wait for."""
    lock.release()
    try:
        yield
    finally:
        lock.acquire()
