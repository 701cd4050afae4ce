"""Connections to central.db kept open for the threads that serve a channel."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host.store import db


class Pool:
    """Connections to central.db kept open for the short work of the threads that serve a channel (opening one, with
    its checks, costs ~0.5 ms and a dozen calls that each give up the GIL): each use takes an idle one or opens
    another, and gives it back after. A connection left inside a transaction is closed, never given back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = db.connect(self.path, "central", any_thread=True)
        try:
            yield conn
        finally:
            with self._lock:
                kept = not self._closed and not conn.in_transaction
                if kept:
                    self._idle.append(conn)
            if not kept:
                conn.close()

    def close(self) -> None:
        """Close the idle connections; one in use is closed when given back."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.close()
