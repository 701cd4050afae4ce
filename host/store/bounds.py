"""Bounds on every connection to a runner's outbound.db. Its runner may rewrite what SQLite reads and runs there: a
view of an endless recursive query (or a chain of thousands of views, which SQLite expands while it prepares a
statement, where nothing can stop it) in place of a table, a trigger on the rows the host deletes, a function of
quadratic cost in one step, thousands of tables whose schema SQLite parses at the first statement, a value of
gigabytes (loaded whole before ``substr`` cuts it). So its schema must be this release's, entry for entry
(``same_schema``), before any query of it runs; and a connection is given up past CPU seconds of its thread
(SQLite's progress handler, called between its steps, the parse of the schema included), a value or row over
``VALUE_BYTES`` and a statement or schema entry over ``SQL_BYTES``: SQLite refuses those before reading them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import cache
from pathlib import Path

from host.errors import Tampered
from schemas.ddl import MIGRATIONS

HOST_CPU_S = 0.2  # the host's reads of a visit take about a millisecond
OPERATOR_CPU_S = 10.0  # an operator's command may read all of a long conversation (``ncl messages``)
VALUE_BYTES, SQL_BYTES = 16 << 20, 64 << 10  # (a reply's REPLY_CHARS are at most 4 MiB)
# What the host reads of a runner's text: a reply's characters (a longer one is not sent), any other value's.
REPLY_CHARS, TEXT_CHARS = 1 << 20, 4096
STEPS = 100  # SQLite steps between two looks at the clock (a visit's reads take a few hundred)


def bound(conn: sqlite3.Connection, cpu_s: float) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, SQL_BYTES)
    until = time.thread_time() + cpu_s
    conn.set_progress_handler(lambda: time.thread_time() > until, STEPS)


def overran(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's giving up a statement past these bounds."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_TOOBIG)


@contextmanager
def bounded(path: Path) -> Iterator[None]:
    """Work on a runner's ``path`` that SQLite gave up past these bounds raises ``Tampered``, naming it."""
    try:
        yield
    except sqlite3.Error as exc:
        if overran(exc):
            raise given_up(path) from None
        raise


def given_up(path: Path) -> Tampered:
    return Tampered(f"{path}: reading it was given up (too much CPU, or a value over {VALUE_BYTES >> 20} MiB): its "
                    "runner rewrote its schema or rows")


def check(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse the file if its schema is not this release's (``same_schema``), before any query of it runs."""
    if not same_schema(conn):
        raise Tampered(f"{path}: its schema is not the one this host made: its runner rewrote it")


SCHEMA = "SELECT type, name, tbl_name, sql FROM sqlite_master"


def same_schema(conn: sqlite3.Connection) -> bool:
    """Whether the file's schema is this release's outbound.db's, entry for entry: no view, trigger or index of the
    runner's, no table of other columns. (Reading sqlite_master parses the schema, which expands no view.)"""
    cursor = conn.cursor()
    cursor.row_factory = None  # (plain tuples)
    return frozenset(cursor.execute(SCHEMA)) == _made()


@cache
def _made() -> frozenset[tuple[str, ...]]:
    """The schema a host of this release makes (``db.migrate``: each version's statements, in order)."""
    with closing(sqlite3.connect(":memory:")) as conn:
        for script in MIGRATIONS["outbound"]:
            conn.executescript(script)
        return frozenset(map(tuple, conn.execute(SCHEMA)))
