"""Bounds on every connection to a runner's outbound.db. Its runner may rewrite what SQLite reads and runs there: a
view of an endless recursive query in place of a table, a trigger on the rows the host deletes, thousands of tables
whose schema SQLite parses at the first statement, a value of gigabytes (loaded whole before ``substr`` cuts it).
A connection is given up past CPU seconds of its thread (SQLite's progress handler, called between its steps, the
parse of the schema included), a value or row over ``VALUE_BYTES`` and a statement or schema entry over
``SQL_BYTES``: SQLite refuses those before reading them."""

from __future__ import annotations

import sqlite3
import time

HOST_CPU_S = 0.2  # the host's reads of a visit take about a millisecond
OPERATOR_CPU_S = 10.0  # an operator's command may read all of a long conversation (``ncl messages``)
VALUE_BYTES, SQL_BYTES = 16 << 20, 64 << 10  # (a runner's replies are cut at 4 MiB of text: outbox.REPLY_CHARS)
STEPS = 1000  # SQLite steps between two looks at the clock


def bound(conn: sqlite3.Connection, cpu_s: float) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, SQL_BYTES)
    until = time.thread_time() + cpu_s
    conn.set_progress_handler(lambda: time.thread_time() > until, STEPS)


def overran(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's giving up a statement past these bounds."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_TOOBIG)
