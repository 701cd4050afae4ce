"""A runner owns its outbound.db: it can rewrite the schema SQLite reads and runs when the host opens the file. A view
of an endless recursive query in place of ``messages_out`` hung the sweep's thread for ever (every session with it),
found by reading the host's own reads; a chain of thousands of views, which SQLite expands while it prepares a
statement, or a function of quadratic cost in one step, held it for minutes where no progress handler is called
(found by the attack review that followed). Now the host refuses a runner's file whose schema is not this release's
before any query of it runs, and bounds every connection to it (``host.store.bounds``): a live runner is killed
(``db.Tampered``), a dead one's session is held off, as any session whose visits fail, and every other session
goes on.

No timing decides: each attack is endless or far past its bound, and a build without the defence hangs the tick,
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

from host.store import bounds, db, journals, outbox
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
    _refused_and_killed(two)


def _refused_and_killed(two: Two) -> None:
    result = two.tick(T0 + timedelta(seconds=1))
    assert result.errors == 1 and two.runtime.stopped == [two.hostile.id]
    assert two.status(two.other, two.later) == "completed"
    assert two.status(two.hostile, two.task) == "pending"  # nothing recorded from a file it could not read
    assert "its schema is not the one this host made" in two.sweeper.failing[two.hostile.id]


@pytest.mark.parametrize("script", [
    # thousands of views in a chain, expanded while the host's query is prepared (115 s of CPU for 5,000)
    "CREATE VIEW v0 AS SELECT * FROM messages_out;" + "".join(
        f"CREATE VIEW v{k} AS SELECT * FROM v{k - 1};" for k in range(1, 300)),
    # a function of quadratic cost in one step, where no progress handler is called, on every row of an index
    "CREATE INDEX slow ON messages_out(instr(printf('%.*c', 800000, 'a'), printf('%.*c', 400000, 'a') || 'b'));",
    "DROP INDEX messages_out_kind_seq; ANALYZE;",  # the planner's statistics, steering the host's reads to scans
    "ALTER TABLE messages_out ADD COLUMN extra TEXT;",
    "CREATE TRIGGER quiet AFTER INSERT ON messages_out BEGIN SELECT 1; END;",
], ids=["view_chain", "expression_index", "statistics", "column", "trigger"])
def test_a_schema_other_than_the_hosts_is_refused_before_any_query_and_its_live_runner_killed(
        tmp_path: Path, script: str) -> None:
    two = Two(tmp_path)
    _rewrite(two.outbound, script)
    _refused_and_killed(two)


def test_a_trigger_on_the_claims_the_host_deletes_is_refused_and_its_session_held_off(tmp_path: Path) -> None:
    """The runner died holding a claim, which the host deletes (``outbox.clear_claims``), running the runner's
    trigger: its file is refused before, the visit fails and the session is held off; the other goes on."""
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
    with pytest.raises(db.Tampered, match="a value over 1 MiB"):
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
    with pytest.raises(db.Tampered, match="reading it was given up"):
        outbox.read(two.outbound, [], 0, writable=True)


def test_a_schema_entry_past_its_bound_is_refused_unparsed(tmp_path: Path) -> None:
    two = Two(tmp_path)
    _rewrite(two.outbound, "CREATE TABLE wide(a, b CHECK (b IN (" + ", ".join(map(str, range(20_000))) + ")));")
    with pytest.raises(db.DbError, match="string or blob too big"):
        outbox.read(two.outbound, [], 0, writable=True)
    assert len(" ".join(map(str, range(20_000)))) > bounds.SQL_BYTES


def test_an_operators_look_at_the_conversation_refuses_it_too(ncl: Any, demo_session: dict[str, Any]) -> None:
    """An endless view made ``ncl messages list`` a command that never ended, which Ctrl-C cannot stop in SQLite."""
    _endless_messages_out(Path(demo_session["path"]) / "outbound.db")
    result = ncl("messages", "list", "--session", demo_session["id"])
    assert result.code == 1 and "outbound.db: its schema is not the one this host made" in result.err


def test_a_sparse_file_gives_a_live_runners_journal_no_room(tmp_path: Path) -> None:
    """A journal is allowed twice its file and a MiB; a file made sparse, a GiB of nothing, made room for a journal
    the host rolled back at each visit (its header written again before each: seconds a visit, found by the attack
    review). A live runner's journal past ``journals.LIVE_JOURNAL_BYTES`` gets it killed, unread."""
    two = Two(tmp_path)
    with open(two.outbound, "r+b") as out:
        out.truncate(1 << 30)  # (sparse: no disk)
    journal = Path(f"{two.outbound}-journal")
    with open(journal, "wb") as planted:
        planted.truncate(journals.LIVE_JOURNAL_BYTES + 1)
    result = two.tick(T0 + timedelta(seconds=1))
    assert result.errors == 1 and two.runtime.stopped == [two.hostile.id]
    assert journal.stat().st_size == journals.LIVE_JOURNAL_BYTES + 1  # not rolled back
    assert two.status(two.other, two.later) == "completed"


def test_a_seq_of_another_type_is_never_read_as_new(tmp_path: Path) -> None:
    """SQLite stores text in an INTEGER column: a reply whose seq was 'zzz' became the session's watermark in the
    host's inbox, which every later visit failed to read (found by the attack review), for good."""
    two = Two(tmp_path)
    with closing(sqlite3.connect(two.outbound)) as conn, conn:
        conn.execute("PRAGMA ignore_check_constraints=ON")
        conn.executemany("INSERT INTO messages_out(id, seq, timestamp, kind, content) VALUES (?, ?, ?, 'chat', ?)",
                         [(f"m{seq}", seq, to_text(T0), json.dumps({"text": "hi"})) for seq in ("zzz", 2.5, 1)])
    assert [reply.seq for reply in outbox.read(two.outbound, [], 0, writable=True).replies] == [1]
    for seconds in (1, 2):
        assert two.tick(T0 + timedelta(seconds=seconds)).errors == 0


def test_a_live_runner_setting_its_schema_version_back_gets_no_migration_of_its_file(tmp_path: Path) -> None:
    """The host's reads of a live runner's file are query-only; an older version made them migrate it, writing the
    file under its runner (found by the attack review). The host migrated it before starting the runner."""
    two = Two(tmp_path)
    _rewrite(two.outbound, "PRAGMA user_version = 3;")
    before = two.outbound.read_bytes()
    with pytest.raises(db.Tampered, match="its runner set its schema back to v3"):
        outbox.read(two.outbound, [], 0, writable=False)
    assert two.outbound.read_bytes() == before


def test_a_runners_rows_of_any_type_are_shown_not_a_failure_of_the_whole_conversation(
        ncl: Any, demo_session: dict[str, Any]) -> None:
    """A reply that was not JSON made ``ncl messages list`` fail as a whole (found by the attack review); one whose
    time or seq was of another type would have failed its sort. Each is shown, the others with it."""
    folder = Path(demo_session["path"])
    with closing(sqlite3.connect(folder / "outbound.db")) as conn, conn:
        conn.execute("PRAGMA ignore_check_constraints=ON")
        conn.executemany("INSERT INTO messages_out(id, seq, timestamp, kind, content) VALUES (?, ?, ?, 'chat', ?)",
                         [("m1", 1, "2026-06-11T13:00:00.000Z", json.dumps({"text": "fine"})),
                          ("m2", "zzz", 12345, "not json"), ("m3", 3, "2026-06-11T13:01:00.000Z", b"\x00bytes")])
    result = ncl("messages", "list", "--session", demo_session["id"], "--json")
    assert result.code == 0, result.err
    assert {m["id"]: m["text"] for m in result.json()["messages"]} == {"m1": "fine", "m2": "not json",
                                                                       "m3": "\x00bytes"}


def _written() -> int:
    """Bytes this process has handed to write calls so far."""
    return int(Path("/proc/self/io").read_text().split("wchar:")[1].split()[0])


def test_a_dead_runners_huge_claims_are_freed_not_overwritten(tmp_path: Path) -> None:
    """Debian's SQLite overwrites the pages it frees (secure_delete): claims of 15 MiB values a dead runner left made
    the host's one write to its file, clearing them, write all of them twice (file and journal: 0.5 s for 120 MiB),
    in steps no CPU bound sees. Now the host writes a few pages however large the claims."""
    two = Two(tmp_path)
    with closing(sqlite3.connect(two.outbound)) as conn, conn:
        conn.executemany("INSERT INTO processing_ack(message_id, status, status_changed, detail, generation)"
                         " VALUES (?, 'processing', ?, ?, 'g')",
                         [(f"m{n}", to_text(T0), "x" * (15 << 20)) for n in range(4)])
    before = _written()
    outbox.clear_claims(two.outbound, [f"m{n}" for n in range(4)])
    assert _written() - before < 1 << 20
    with closing(sqlite3.connect(two.outbound)) as conn:
        assert conn.execute("SELECT count(*) FROM processing_ack WHERE message_id LIKE 'm_'").fetchone() == (0,)
