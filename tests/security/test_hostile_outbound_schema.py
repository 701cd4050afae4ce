"""A runner owns its outbound.db: it can rewrite the schema SQLite reads and runs when the host opens the file. A view
of an endless recursive query in place of ``messages_out`` hung the sweep's thread for ever (every session with it),
found by reading the host's own reads. Now every connection to a runner's file is given up past its bounds
(``host.store.bounds``): a live runner is killed (``outbox.Tampered``), a dead one's session is held off, as any
session whose visits fail, and every other session goes on.

No timing decides: each attack is endless or far past its bound, and a build without the bound hangs the tick,
which then fails after ``WAIT_S`` (``Two.tick``)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_locked_files import T0, Two

from host.store import bounds, db, outbox
from schemas.times import to_text

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"


def _rewrite(path: Path, script: str) -> None:
    """What a runner can do to its own file, with any SQLite (here Python's, as a runner's shell would)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(script)


def _endless_messages_out(path: Path) -> None:
    """``messages_out`` as a view of endless rows, none of which any query of the host matches (a constant it could
    fold away would not do: each row's kind is computed)."""
    with closing(sqlite3.connect(path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages_out)")]
    picked = {"seq": "x", "kind": "CASE WHEN x < 0 THEN 'chat' ELSE 'none' END"}
    _rewrite(path, "DROP TABLE messages_out; CREATE VIEW messages_out AS SELECT "
             + ", ".join(f"{picked.get(name, repr('x'))} AS {name}" for name in columns) + f" FROM ({ENDLESS});")


def test_a_view_of_an_endless_query_in_place_of_a_table_is_given_up_and_its_live_runner_killed(
        tmp_path: Path) -> None:
    two = Two(tmp_path)
    _endless_messages_out(two.outbound)
    result = two.tick(T0 + timedelta(seconds=1))
    assert result.errors == 1 and two.runtime.stopped == [two.hostile.id]
    assert two.status(two.other, two.later) == "completed"
    assert two.status(two.hostile, two.task) == "pending"  # nothing recorded from a file it could not read


def test_a_trigger_on_the_claims_the_host_deletes_is_given_up_and_its_session_held_off(tmp_path: Path) -> None:
    """The runner died holding a claim: the host deletes it (``outbox.clear_claims``), which runs the runner's
    trigger. The delete is rolled back, the visit fails and the session is held off; the other goes on."""
    two = Two(tmp_path)
    two.runtime.running.discard(two.hostile.id)  # (its runner is gone)
    two.world.ack(two.task, "processing", T0, session=two.hostile)
    _rewrite(two.outbound, f"CREATE VIEW endless AS {ENDLESS}; CREATE TRIGGER stall AFTER DELETE ON processing_ack"
                           " BEGIN SELECT count(*) FROM endless WHERE x < 0; END;")
    result = two.tick(T0 + timedelta(seconds=1))
    assert result.errors == 1 and two.hostile.id in two.sweeper.holds.held
    assert two.status(two.other, two.later) == "completed"
    with closing(sqlite3.connect(two.outbound)) as conn:
        assert conn.execute("SELECT status FROM processing_ack").fetchall() == [("processing",)]  # rolled back


def test_a_value_past_its_bound_is_refused_before_it_is_loaded(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite loads a whole value before ``substr`` cuts it: a reply of gigabytes was loaded into the host's memory
    at each visit. (The bound made small here, as a runner's 16 MiB and one byte would be refused.)"""
    two = Two(tmp_path)
    monkeypatch.setattr(bounds, "VALUE_BYTES", 1 << 20)
    within = json.dumps({"text": "x" * ((1 << 20) - 4096)})  # (the bound is also a whole row's)
    with closing(sqlite3.connect(two.outbound)) as conn, conn:
        conn.execute("INSERT INTO messages_out(id, seq, timestamp, kind, content) VALUES ('m1', 1, ?, 'chat', ?)",
                     (to_text(T0), within))
    assert outbox.read(two.outbound, [], 0, writable=True).replies[0].content == within
    with closing(sqlite3.connect(two.outbound)) as conn, conn:
        conn.execute("UPDATE messages_out SET content = ?", (json.dumps({"text": "x" * (1 << 20)}),))
    with pytest.raises(outbox.Tampered, match="a value over 1 MiB"):
        outbox.read(two.outbound, [], 0, writable=True)


def test_a_schema_of_thousands_of_tables_is_given_up_while_sqlite_parses_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite parses the whole schema at a connection's first statement, between the steps of its read of
    sqlite_master: the progress handler stops it there too. Made 20 times cheaper here than the parse takes."""
    two = Two(tmp_path)
    _rewrite(two.outbound, "BEGIN;" + "".join(f"CREATE TABLE t{i}(a INTEGER PRIMARY KEY, b TEXT CHECK (b IN "
                                              "('x', 'y', 'z')));" for i in range(3000)) + "COMMIT;")
    with closing(sqlite3.connect(two.outbound)) as conn:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # (its pages in the OS's cache: only the parse is left)
    monkeypatch.setattr(bounds, "HOST_CPU_S", 0.001)
    with pytest.raises(outbox.Tampered, match="reading it was given up"):
        outbox.read(two.outbound, [], 0, writable=True)


def test_a_schema_entry_past_its_bound_is_refused_unparsed(tmp_path: Path) -> None:
    two = Two(tmp_path)
    _rewrite(two.outbound, "CREATE TABLE wide(a, b CHECK (b IN (" + ", ".join(map(str, range(20_000))) + ")));")
    with pytest.raises(db.DbError, match="string or blob too big"):
        outbox.read(two.outbound, [], 0, writable=True)
    assert len(" ".join(map(str, range(20_000)))) > bounds.SQL_BYTES


def test_an_operators_look_at_the_conversation_is_bounded_too(ncl: Any, demo_session: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``ncl messages list`` reads the whole of outbound.db, so its bound is larger (``bounds.OPERATOR_CPU_S``, made
    small here); an endless view was a command that never ended, which Ctrl-C cannot stop inside SQLite."""
    _endless_messages_out(Path(demo_session["path"]) / "outbound.db")
    monkeypatch.setattr(bounds, "OPERATOR_CPU_S", 0.05)
    result = ncl("messages", "list", "--session", demo_session["id"])
    assert result.code == 1 and "outbound.db: reading it was given up" in result.err
