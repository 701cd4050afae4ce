"""A hostile runner keeping its session's files locked must not stall the sweep of every other session (SECURITY.md).

It can hold outbound.db write-locked, keep a read of its inbound.db open (the mount is read-only, but a read lock
needs no write access), and make the host's other threads wait on it while they hold the session's in-process lock
(its WAL mode and planted journals: test_planted_files, with these sessions and waits).

Every wait here but a live runner's lasts ten minutes and ``RUNNER_WAIT_S`` is 0: a visit that waited on the runner
as on anybody else would hang the test (which then fails after WAIT_S) instead of passing; no timing decides."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kit import RecordingRuntime, World, utc

from host.scheduling import sweep
from host.scheduling.sweep import Sweeper, SweepResult
from host.store import db, file_locks, outbox
from host.store.sessions import Session
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
WAIT_S = 60  # only a broken build waits this long


@pytest.fixture(autouse=True)
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 600_000)
    monkeypatch.setattr(file_locks, "BUSY_TIMEOUT_S", 600.0)
    monkeypatch.setattr(outbox, "RUNNER_WAIT_S", 0.0)
    # A visit takes no time by the sweep's clock: a collector's pass of this test process (90 ms seen) made the visit
    # after a lock's end "slow", which holds the session off again (that rule has its own test, below).
    monkeypatch.setattr(sweep, "time", SimpleNamespace(monotonic=lambda: 0.0))


class Two:
    """Sessions ``hostile`` and ``other``, each with a live runner that has finished its task: what the tests look
    at is whether the other's is recorded while the hostile one holds its files."""

    def __init__(self, tmp_path: Path) -> None:
        self.world = world = World(tmp_path)
        self.runtime = RecordingRuntime()
        self.hostile, self.other = world.session, world.new_session()
        self.task = world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
        self.later = world.schedule(T0 - timedelta(minutes=1), at=to_text(T0), session=self.other)
        self.sweeper = world.sweeper(self.runtime)
        assert self.sweeper.tick(T0).woken == 2
        self.sweeper.close()  # (its central.db connection is this thread's)
        generations = {session: generation for _, session, generation in self.runtime.started}
        world.ack(self.task, "completed", T0, generation=generations[self.hostile.id], outcome="ran")
        world.ack(self.later, "completed", T0, generation=generations[self.other.id], outcome="ran",
                  session=self.other)
        self.outbound = self.hostile.folder / "outbound.db"

    def tick(self, at: datetime) -> SweepResult:
        return _tick(self.sweeper, at)

    def status(self, session: Session, task: str) -> str:
        return str(self.world.rows(task, session=session)[0]["status"])


def _tick(sweeper: Sweeper, at: datetime) -> SweepResult:
    """A tick in a thread, which must end within WAIT_S (the sweep's central.db connection is that thread's)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(sweeper.tick(at))
        except Exception as exc:  # reported below
            out.append(exc)
        finally:
            sweeper.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert len(out) == 1 and isinstance(out[0], SweepResult), f"the sweep waited on the runner, or failed: {out}"
    return out[0]


@contextmanager
def _held_by_another_thread(path: Path) -> Iterator[None]:
    """``path``'s in-process lock held by another thread meanwhile: an arrival, say, stuck in SQLite's busy wait on
    someone's lock while it holds it."""
    taken, done = threading.Event(), threading.Event()

    def arrival() -> None:
        with db.lock_of(path):
            taken.set()
            done.wait(WAIT_S)

    thread = threading.Thread(target=arrival, daemon=True)
    thread.start()
    assert taken.wait(WAIT_S)
    try:
        yield
    finally:
        done.set()
        thread.join(WAIT_S)


def _stalls_only_its_own_session(two: Two, hold: Callable[[], Iterator[None]]) -> None:
    """While ``hold`` keeps the hostile session's files locked, its visits fail at once and back off (0.5 s, then
    twice as long); the other session's finished task is recorded meanwhile. Once let go, the hostile session's is
    recorded, once."""
    hostile = two.hostile.id
    with contextmanager(hold)():
        first = two.tick(T0 + timedelta(seconds=1))
        assert first.errors == 1 and two.status(two.other, two.later) == "completed"
        assert two.sweeper.holds.held[hostile] == (T0 + timedelta(seconds=1.5), 0.5)
        assert two.tick(T0 + timedelta(seconds=1.2)).sessions_checked == 1  # only the other: this one is held off
        assert two.tick(T0 + timedelta(seconds=1.5)).errors == 1
        assert two.sweeper.holds.held[hostile] == (T0 + timedelta(seconds=2.5), 1.0)
    assert two.status(two.hostile, two.task) == "pending"  # nothing half-recorded
    done = two.tick(T0 + timedelta(seconds=2.5))
    assert done.errors == 0 and hostile not in two.sweeper.holds.held
    assert two.status(two.hostile, two.task) == "completed"
    assert [r["outcome"] for r in two.world.runs(two.world.rows(two.task)[0]["series_id"])] == ["ran"]


def test_a_runner_holding_its_outbound_db_write_locked_holds_up_only_its_own_session(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    two = Two(tmp_path)

    def hold() -> Iterator[None]:
        with closing(sqlite3.connect(two.outbound, isolation_level=None)) as runner:
            runner.execute("BEGIN EXCLUSIVE")
            yield

    with caplog.at_level(logging.DEBUG):
        _stalls_only_its_own_session(two, hold)
    # A live runner's lock (a commit in a disk stall looks the same) is said once, as info: no session failed.
    said = [(r.levelno, r.action) for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "action", None) in ("session_busy", "session_failed")]
    assert said == [(logging.INFO, "session_busy"), (logging.DEBUG, "session_busy")]


def test_a_runner_keeping_a_read_of_its_inbox_open_holds_up_only_its_own_session(tmp_path: Path) -> None:
    """The visit reads both files, then its COMMIT of the inbox waits for the runner's read to end: at most
    ``RUNNER_WAIT_S``, and the rolled-back visit is done again later, once."""
    two = Two(tmp_path)

    def hold() -> Iterator[None]:
        uri = f"file:{two.hostile.folder / 'inbound.db'}?mode=ro"  # as through its read-only mount
        with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as runner:
            runner.execute("BEGIN")
            runner.execute("SELECT COUNT(*) FROM messages_in").fetchone()
            yield

    _stalls_only_its_own_session(two, hold)


def test_a_writer_of_its_inbox_that_takes_no_in_process_lock_holds_up_only_that_session(tmp_path: Path) -> None:
    """The model proxy's notices, mail arrivals, alerts and cross-group requests write an inbox without the
    session's in-process lock: one stuck in its COMMIT's busy wait on the runner's read holds the file's PENDING
    lock, which the visit's read of the inbox waits on (found by the second attack review: 5 s a visit)."""
    two = Two(tmp_path)

    def hold() -> Iterator[None]:
        with closing(sqlite3.connect(two.hostile.folder / "inbound.db", isolation_level=None)) as writer:
            writer.execute("BEGIN EXCLUSIVE")
            yield

    _stalls_only_its_own_session(two, hold)


def test_a_host_thread_waiting_on_the_runner_with_the_sessions_lock_held_holds_up_only_that_session(
        tmp_path: Path) -> None:
    """An arrival into the session, say, stuck in SQLite's busy wait on the runner's lock while it holds the
    session's in-process lock: the visit waits for that lock at most ``RUNNER_WAIT_S`` too."""
    two = Two(tmp_path)

    def hold() -> Iterator[None]:
        with _held_by_another_thread(two.hostile.folder / "inbound.db"):
            yield

    _stalls_only_its_own_session(two, hold)


def test_a_host_thread_waiting_with_the_lock_of_a_session_with_no_runner_holds_up_only_that_session(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same with no runner alive (found in CI: a webhook stuck on a read lock of its session's inbox, which a
    ``sqlite3`` shell may keep as well as a runner, held the session's in-process lock while the sweep's visit of it,
    its runner not started yet, waited for that lock 5 s, and every other session's work with it): the visit waits
    for it at most ``RUNNER_WAIT_S`` too, and the session is held off as a live runner's would be."""
    world, runtime = World(tmp_path), RecordingRuntime()
    hostile, other = world.session, world.new_session()
    for session in (hostile, other):
        world.schedule(T0 - timedelta(minutes=1), at=to_text(T0), session=session)
    sweeper = world.sweeper(runtime)
    with caplog.at_level(logging.INFO), _held_by_another_thread(hostile.folder / "inbound.db"):
        first = _tick(sweeper, T0)
    assert first.errors == 1 and [session for _, session, _ in runtime.started] == [other.id]
    assert sweeper.holds.held[hostile.id] == (T0 + timedelta(seconds=0.5), 0.5)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if getattr(r, "action", None) == "session_busy"]
    assert said == [(logging.INFO, f"session {hostile.id} skipped (its files are locked): database is locked")]
    assert _tick(sweeper, T0 + timedelta(seconds=0.5)).errors == 0
    assert [session for _, session, _ in runtime.started] == [other.id, hostile.id]


def test_an_operators_read_of_an_inbox_holds_up_only_that_session(tmp_path: Path) -> None:
    """An operator may read any inbound.db with ``sqlite3`` (DESIGN §1). One left inside a read (a pager, an open
    BEGIN) held up the COMMIT of that session's visit, its runner gone, for SQLite's whole busy wait (5 s) on the
    sweep's one thread, and every other session's work with it, again at each retry (attack review). The visit
    waits at most ``RUNNER_WAIT_S``, runner or none: the other session's task is woken, this one's finished task is
    recorded once the read ends."""
    world = World(tmp_path)
    mine, other = world.session, world.new_session()
    task = world.schedule(T0 - timedelta(minutes=5), at=to_text(T0 - timedelta(minutes=1)), session=mine)
    world.schedule(T0 - timedelta(minutes=5), at=to_text(T0), session=other)
    sweeper = world.sweeper()
    assert _tick(sweeper, T0 - timedelta(minutes=2)).woken == 0
    world.ack(task, "completed", T0, outcome="ran", session=mine)  # its runner ran it and is gone
    uri = f"file:{mine.folder / 'inbound.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as operator:
        operator.execute("BEGIN")
        operator.execute("SELECT COUNT(*) FROM messages_in").fetchone()
        held = _tick(sweeper, T0)
        assert held.errors == 1 and held.woken == 1  # the other session's task, due now
        assert sweeper.holds.held[mine.id] == (T0 + timedelta(seconds=0.5), 0.5)
    assert world.rows(task, session=mine)[0]["status"] == "pending"  # nothing half-recorded
    done = _tick(sweeper, T0 + timedelta(seconds=0.5))
    assert done.errors == 0 and world.rows(task, session=mine)[0]["status"] == "completed"
    assert [r["outcome"] for r in world.runs(task)] == ["ran"]


def test_the_runners_own_requests_never_read_its_claims_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pause_task, cancel_task and update_task let a row the runner already works on finish: a sweep's visit knows
    the claims, read with its requests and copied into the inbox just before. They used to be read again once per
    request: a runner that wrote 50 of them and locked its file right after the visit's read made each wait (5 s
    each, then 0.25 s). Now they apply with the file held throughout."""
    two = Two(tmp_path)
    series = two.world.schedule(T0, recurrence="0 9 * * *", session=two.hostile)
    for _ in range(50):
        two.world.request(T0, {"action": "pause_task", "taskId": series})
    runner = sqlite3.connect(two.outbound, isolation_level=None, check_same_thread=False)
    read = outbox.read

    def read_then_lock(path: Path, *args: Any, **kwargs: Any) -> outbox.Outbox:
        found = read(path, *args, **kwargs)
        if path == two.outbound:
            runner.execute("BEGIN EXCLUSIVE")
        return found

    monkeypatch.setattr(outbox, "read", read_then_lock)
    done = two.tick(T0 + timedelta(seconds=1))
    runner.close()
    assert done.errors == 0 and done.applied == 1 and two.status(two.hostile, series) == "paused"


def test_a_runner_hung_while_holding_its_outbound_db_is_killed_when_its_heartbeat_goes_stale(tmp_path: Path) -> None:
    """Its claims cannot be read, so its heartbeat alone decides: fresh, it is left alone (held off); 30 minutes
    old, it is killed, and once its lock is gone with it the finished task is recorded."""
    two = Two(tmp_path)
    with closing(sqlite3.connect(two.outbound, isolation_level=None)) as runner:
        runner.execute("BEGIN EXCLUSIVE")
        assert two.tick(T0 + timedelta(seconds=1)).errors == 1 and two.runtime.stopped == []
        assert two.tick(T0 + timedelta(minutes=31)).errors == 1  # (started at T0, it never beat since)
        assert two.hostile.id in two.runtime.stopped  # (the other session's too, for the same reason)
    assert two.tick(T0 + timedelta(minutes=32)).errors == 0
    assert two.status(two.hostile, two.task) == "completed"


def test_a_visit_whose_writes_outgrow_sqlites_cache_never_waits_on_the_runners_read_before_its_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 requests with 60 kB prompts make a transaction of 3 MB, more than SQLite's page cache: a page written
    out before the COMMIT (a cache spill) needs the exclusive lock the runner's open read holds up, with the
    connection's full busy wait, once every few rows (found by the attack review: 40 s for one tick). The inbox's
    connections never spill: the one wait is the COMMIT's, bounded."""
    two = Two(tmp_path)
    for number in range(50):
        two.world.request(T0, {"action": "schedule_task", "taskId": f"task-1779109200000-big{number:03d}",
                               "prompt": "p" * 60_000, "processAfter": "2027-01-01T00:00:00.000Z"},
                          session=two.hostile)
    spills: list[int] = []  # each spill would wait RUNNER_WAIT_S (0 here): the visit's inbox writes have none
    transaction = db.transaction

    @contextmanager
    def watched(conn: db.Connection) -> Iterator[db.Connection]:
        with transaction(conn):
            if conn.execute("PRAGMA database_list").fetchone()[2].endswith("/inbound.db"):
                spills.append(conn.execute("PRAGMA cache_spill").fetchone()[0])
            yield conn

    monkeypatch.setattr(db, "transaction", watched)
    uri = f"file:{two.hostile.folder / 'inbound.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as runner:
        runner.execute("BEGIN")
        runner.execute("SELECT COUNT(*) FROM messages_in").fetchone()
        held = two.tick(T0 + timedelta(seconds=1))
        assert held.errors == 1 and two.hostile.id in two.sweeper.holds.held
    assert spills and set(spills) == {0}  # (both sessions have a live runner)
    done = two.tick(T0 + timedelta(seconds=2))
    assert done.errors == 0 and done.applied == 50


def test_a_runner_letting_go_just_before_each_wait_would_end_is_held_off_after_three_slow_visits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Then no visit fails, but each takes up to two bounded waits (found by the attack review). A visit takes about
    a millisecond: three in a row over 0.1 s hold the session off as a failure does; a quick one ends that."""
    two = Two(tmp_path)
    clock = [0.0]
    monkeypatch.setattr(sweep, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    visit, slow = Sweeper._sweep_one, [True]

    def timed(sweeper: Sweeper, session: Session, *args: Any) -> None:
        if session.id == two.hostile.id and slow[0]:
            clock[0] += 0.2  # (two waits its runner ended just in time)
        visit(sweeper, session, *args)

    monkeypatch.setattr(Sweeper, "_sweep_one", timed)
    for at in (1, 2):
        assert two.tick(T0 + timedelta(seconds=at)).errors == 0 and two.sweeper.holds.held == {}
    assert two.tick(T0 + timedelta(seconds=3)).errors == 0
    assert two.sweeper.holds.held == {two.hostile.id: (T0 + timedelta(seconds=3.5), 0.5)}
    assert two.tick(T0 + timedelta(seconds=3.2)).sessions_checked == 1  # the other session only
    two.tick(T0 + timedelta(seconds=3.5))
    assert two.sweeper.holds.held == {two.hostile.id: (T0 + timedelta(seconds=4.5), 1.0)}
    slow[0] = False
    two.tick(T0 + timedelta(seconds=4.5))
    assert two.sweeper.holds.held == {} and two.sweeper.holds.slow == {}
