"""SQL shared by host and runner: both decide "due" the same way (DESIGN §6.1, §12.5), write in the same
transactions and read a file's schema version alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

# Named parameter :now is the stored UTC text of the instant. Filters apply before any LIMIT.
DUE = "status = 'pending' AND (process_after IS NULL OR process_after <= :now)"


@contextmanager
def transaction(conn: sqlite3.Connection,
                readers_gone: AbstractContextManager[object] | None = None) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, taking the write lock up front so no upgrade deadlocks.
    Inside an open transaction it nests as a savepoint, so steps compose into one atomic unit.
    ``readers_gone``: a context around the wait for every other connection's reads of the file to end. Given, the
    transaction begins EXCLUSIVE, so that wait is at BEGIN, on its own (with IMMEDIATE it is in COMMIT, with its
    syncs)."""
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
    if readers_gone is None:
        conn.execute("BEGIN IMMEDIATE")
    else:
        with readers_gone:
            conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
