"""Runner lifecycle on the host (issue 5): one runner per session, the NCL_MAX_RUNNERS cap with wakes served in
order, the start-failure back-off ladder with one notice, and a forged inbound journal refused."""

from __future__ import annotations

import itertools
import os
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from kit import RecordingRuntime, World, utc

from host.runtimes.pool import NOTICE_AFTER
from host.store import db
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


def _beat(session_folder: Path, generation: str) -> None:
    (session_folder / ".heartbeat").write_text(generation)


def test_many_wakes_of_one_session_start_one_runner(tmp_path: Path) -> None:
    world = World(tmp_path)
    for n in range(10):
        world.schedule(T0, at=to_text(T0), prompt=f"job {n}")
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    for step in range(10):
        sweeper.tick(T0 + timedelta(milliseconds=100 * step))
    assert len(runtime.started) == 1


def test_the_cap_holds_and_every_due_session_is_served_in_order(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_MAX_RUNNERS="2")
    sessions = {s.id: s for s in [world.session, *(world.new_session() for _ in range(4))]}
    for session in sessions.values():
        world.schedule(T0, at=to_text(T0), session=session)
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    now = T0
    while len(runtime.started) < 5 and now < T0 + timedelta(seconds=10):
        sweeper.tick(now)
        assert len(runtime.running) <= 2
        for _, session_id, generation in runtime.started:
            if session_id in runtime.running:  # it answers its task and exits
                session = sessions[session_id]
                _beat(session.folder, generation)
                world.ack(world.rows(session=session)[0]["id"], "completed", now, generation, "ran", session=session)
                runtime.running.discard(session_id)
        now += timedelta(seconds=1)
    woken_in = [s.id for s in sweeper.active_sessions()]  # all due at once: wakes queue in sweep order
    assert [session_id for _, session_id, _ in runtime.started] == woken_in and set(woken_in) == set(sessions)


def test_failed_starts_back_off_and_notify_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.schedule(T0, at=to_text(T0))
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    starts = []
    now = T0
    while len(starts) < 6 and now < T0 + timedelta(hours=1):
        before = len(runtime.started)
        sweeper.tick(now)
        if len(runtime.started) > before:
            starts.append(now)
            runtime.running.clear()  # it dies at once, never beating
        now += timedelta(seconds=1)
    gaps = [round((b - a).total_seconds()) for a, b in itertools.pairwise(starts)]
    # Each failure is seen one 1 s tick after its start; the next start waits 0, 0, 10, 30, 120 s from there.
    assert gaps == [1 + delay for delay in (0, 0, 10, 30, 120)]
    notices = [n for n in world.notices() if n["notice"] == "runner_start_failed"]
    assert len(notices) == 1 and notices[0]["trigger"] == 0


def test_a_visit_whose_commit_fails_neither_loses_the_notice_nor_counts_what_it_undid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notice of failed starts is given once its row is committed: a visit rolled back (here its COMMIT meets a
    reader of the inbox, with no busy wait) gives it at the next visit; and the clone it made is counted once."""
    world = World(tmp_path)
    series = world.schedule(T0 - timedelta(minutes=1), recurrence="0 9 * * *")
    world.ack(series, "completed", T0, outcome="ran")
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    sweeper.runners.failures[world.session.id] = NOTICE_AFTER  # (its starts failed so many times in a row)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 0)
    with closing(sqlite3.connect(world.session.folder / "inbound.db", isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages_in").fetchone()
        failed = sweeper.tick(T0)
    assert (failed.errors, failed.cloned) == (1, 0) and sweeper.runners.owes_notice(world.session.id)
    assert world.notices() == []
    done = sweeper.tick(T0 + timedelta(seconds=1))
    assert (done.errors, done.cloned) == (0, 1) and not sweeper.runners.owes_notice(world.session.id)
    assert [n["notice"] for n in world.notices()] == ["runner_start_failed"]


def test_a_runtime_that_raises_on_start_backs_off_and_spares_other_sessions(tmp_path: Path) -> None:
    world = World(tmp_path)
    other = world.new_session()
    world.schedule(T0, at=to_text(T0))
    world.schedule(T0, at=to_text(T0), session=other)

    class Picky(RecordingRuntime):
        def start(self, session, generation, env):  # type: ignore[no-untyped-def]
            if session.id == world.session.id:
                raise RuntimeError("image missing")
            super().start(session, generation, env)

    runtime = Picky()
    result = world.sweeper(runtime).tick(T0)
    assert result.woken == 1 and [sid for _, sid, _ in runtime.started] == [other.id]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file owned by another uid")
def test_a_journal_the_host_did_not_write_is_replaced_before_a_write_open(tmp_path: Path) -> None:
    world = World(tmp_path)
    inbound = world.session.folder / "inbound.db"
    journal = inbound.with_name("inbound.db-journal")
    journal.unlink(missing_ok=True)
    journal.write_bytes(b"forged" * 100)
    os.chown(journal, 10001, 10001)
    with closing(db.connect(inbound, "inbound")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0] == 0
    assert journal.stat().st_uid == os.geteuid() and journal.read_bytes()[:1] in (b"", b"\0")


def test_the_hosts_own_hot_journal_is_rolled_back_not_removed(tmp_path: Path) -> None:
    world = World(tmp_path)
    inbound = world.session.folder / "inbound.db"
    world.schedule(T0, at=to_text(T0))
    # Leave a hot journal as a host killed mid-write would: a second connection keeps it by writing then dying.
    keeper = sqlite3.connect(inbound, isolation_level=None)
    keeper.execute("PRAGMA journal_mode=DELETE")
    keeper.execute("BEGIN IMMEDIATE")
    keeper.execute("DELETE FROM messages_in")
    keeper.execute("PRAGMA cache_size=0")
    copy = inbound.read_bytes(), inbound.with_name("inbound.db-journal").read_bytes()
    keeper.execute("ROLLBACK")
    keeper.close()
    inbound.write_bytes(copy[0])
    inbound.with_name("inbound.db-journal").write_bytes(copy[1])
    with closing(db.connect(inbound, "inbound")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0] == 1
