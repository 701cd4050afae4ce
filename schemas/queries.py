"""SQL shared by host and runner: both decide "due" the same way (DESIGN §6.1, §12.5), write in the same
transactions and read a file's schema version alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

# Named parameter :now is the stored UTC text of the instant. Filters apply before any LIMIT.
DUE = "status = 'pending' AND (process_after IS NULL OR process_after <= :now)"


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
