"""A runner may keep its session's files locked: outbound.db, its own, and inbound.db, which it reads (a read
transaction left open). The sweep's one thread reads the one and writes the other at every visit of the session,
four times a second while the runner lives; waiting the busy timeout (5 s) each time, every other session would wait
with it, for as long as the runner lived. So with a runner alive the sweep waits for no lock (``db.not_waiting``): a
visit that meets one is left for the next tick, and ``pool.HELD_STRIKES`` of them in a row kill the runner, whose
next start then backs off.

SQLite's busy timeout is set to a minute here: a visit that waited for a lock would hold a test for that long."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import RecordingRuntime, World
from security_kit import T0

from host.runtimes import pool
from host.scheduling.sweep import Sweeper
from host.store import db, inbox, outbox
from host.store.sessions import Session
from schemas.times import to_text

WAIT_S = 30  # only a broken build waits this long: an event that never comes


@pytest.fixture(autouse=True)
def long_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 60_000)


@dataclass
class LockingRuntime(RecordingRuntime):
    """Its runners may lock a file of their session (``lock``) until they are stopped: a dead process's locks go."""

    holders: dict[str, sqlite3.Connection] = field(default_factory=dict)

    def lock(self, session: Session, name: str = "outbound.db") -> None:
        """outbound.db written (locked for all), or inbound.db read (locked for writers) in a transaction kept open."""
        holder = sqlite3.connect(session.folder / name, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE" if name == "outbound.db" else "BEGIN")
        holder.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        self.holders[session.id] = holder

    def stop(self, session_id: str) -> None:
        super().stop(session_id)
        if session_id in self.holders:
            self.holders.pop(session_id).close()


def _live(world: World, runtime: LockingRuntime) -> tuple[Sweeper, str]:
    """A sweeper that woke a runner for a due task of the world's session; and that task."""
    task = world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    sweeper = world.sweeper(runtime)
    assert sweeper.tick(T0).woken == 1 and [s for _, s, _ in runtime.started] == [world.session.id]
    return sweeper, task


def _ticks_until_killed(sweeper: Sweeper, runtime: LockingRuntime, session: Session, start: datetime) -> datetime:
    """Ticks a quarter of a second apart (a live runner's beat) while the runner keeps its lock: each visit is left
    for the next, and is no error; the last one kills the runner. Returns the time of that tick."""
    at = start
    for n in range(1, pool.HELD_STRIKES + 1):
        at = start + timedelta(seconds=n / 4)
        result = sweeper.tick(at)
        assert result.errors == 0, result
        assert runtime.stopped == ([session.id] if n == pool.HELD_STRIKES else []), n
    return at


def _restarted_as_after_a_failed_start(world: World, sweeper: Sweeper, runtime: LockingRuntime,
                                       killed_at: datetime) -> None:
    """The killed runner counts as a failed start (its next ones back off: ``pool.START_BACKOFF_S``); the task it
    left is still due, and a tick after the back-off (0 s after a first failure) starts a new runner for it."""
    assert sweeper.runners is not None and world.session.id not in sweeper.runners.idle_since
    assert sweeper.runners.failures[world.session.id] == 1 and pool.START_BACKOFF_S[0] == 0
    starts = len(runtime.started)
    sweeper.tick(killed_at + timedelta(seconds=1))
    assert len(runtime.started) == starts + 1 and runtime.started[-1][1] == world.session.id


def test_a_runner_that_keeps_its_outbox_locked_is_never_waited_for_and_is_killed(tmp_path: Path) -> None:
    runtime = LockingRuntime()
    world = World(tmp_path)
    sweeper, _ = _live(world, runtime)
    other = world.new_session()
    world.schedule(T0, at=to_text(T0 + timedelta(seconds=1)), session=other)
    runtime.lock(world.session)
    killed_at = _ticks_until_killed(sweeper, runtime, world.session, T0 + timedelta(seconds=1))
    assert runtime.started[1][1:2] == (other.id,)  # the other session was served at the first of those ticks
    _restarted_as_after_a_failed_start(world, sweeper, runtime, killed_at)


def test_a_runner_that_keeps_reading_its_inbox_is_never_waited_for_and_is_killed(tmp_path: Path) -> None:
    runtime = LockingRuntime()
    world = World(tmp_path)
    sweeper, task = _live(world, runtime)
    world.ack(task, "processing", T0 + timedelta(seconds=1), generation=runtime.started[-1][2])  # the visit writes
    runtime.lock(world.session, "inbound.db")
    killed_at = _ticks_until_killed(sweeper, runtime, world.session, T0 + timedelta(seconds=1))
    result = sweeper.tick(killed_at + timedelta(seconds=1))  # the dead runner's claim is released for a retry
    assert result.errors == 0 and result.retried == 1


@contextmanager
def _held_by_another_thread(path: Path) -> Iterator[None]:
    """``path``'s in-process lock held by another of the host's threads (a reply's record or an arrival, waiting on
    the runner's lock of the file) until the block ends."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with db.lock_of(path):
            taken.set()
            done.wait(WAIT_S)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(WAIT_S)
    try:
        yield
    finally:
        done.set()
        thread.join(WAIT_S)


def test_a_visit_waits_for_no_other_thread_that_holds_the_session_of_a_live_runner(tmp_path: Path) -> None:
    runtime = LockingRuntime()
    world = World(tmp_path)
    sweeper, _ = _live(world, runtime)
    with _held_by_another_thread(world.session.folder / "inbound.db"):
        _ticks_until_killed(sweeper, runtime, world.session, T0 + timedelta(seconds=1))


def _when_read(monkeypatch: pytest.MonkeyPatch, then: Callable[[Path], None]) -> None:
    """``then(path)`` right after each read of a live runner's outbound.db (as the runner may act the moment the
    sweep's read lock goes)."""
    real = outbox.read

    def read(path: Path, *args: Any, **kwargs: Any) -> outbox.Outbox:
        found = real(path, *args, **kwargs)
        then(path)
        return found

    monkeypatch.setattr(outbox, "read", read)


def test_requests_that_read_the_outbox_again_are_left_for_the_next_visit_not_waited_for_or_rejected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = LockingRuntime()
    world = World(tmp_path)
    sweeper, _ = _live(world, runtime)
    later = world.schedule(T0, at=to_text(T0 + timedelta(hours=5)))
    for _ in range(3):  # each pause looks for the runner's claim of the task in outbound.db
        world.request(T0 + timedelta(seconds=1), {"action": "pause_task", "taskId": later})
    locked: list[Path] = []
    _when_read(monkeypatch, lambda path: locked or (runtime.lock(world.session), locked.append(path)))
    result = sweeper.tick(T0 + timedelta(seconds=2))
    assert result.errors == 0 and result.applied == 0 and runtime.stopped == []
    runtime.holders.pop(world.session.id).close()  # the runner lets go: the requests are applied
    result = sweeper.tick(T0 + timedelta(seconds=3))
    assert result.errors == 0 and result.applied == 1
    with closing(world.inbound()) as conn:
        done = [tuple(r) for r in conn.execute("SELECT status, detail FROM delivered ORDER BY seq")]
        assert inbox.get(conn, later).status == "paused"  # type: ignore[union-attr]
    assert done[0] == ("applied", None) and [d[0] for d in done[1:]] == ["rejected"] * 2, done
    assert not any("locked" in (detail or "") for _, detail in done), done  # none for the lock the first visit met


def test_a_visit_that_cannot_take_its_session_back_after_the_outbox_read_is_left_for_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The visit lets go of the session's lock while it reads outbound.db (``db.released``); another thread that
    takes it meanwhile keeps it: the visit does not wait to take it back."""
    runtime = LockingRuntime()
    world = World(tmp_path)
    sweeper, _ = _live(world, runtime)
    held = _held_by_another_thread(world.session.folder / "inbound.db")
    taken: list[bool] = []
    _when_read(monkeypatch, lambda _: taken or (held.__enter__(), taken.append(True)))
    try:
        result = sweeper.tick(T0 + timedelta(seconds=2))
    finally:
        if taken:
            held.__exit__(None, None, None)
    assert taken and result.errors == 0 and sweeper.runners is not None
    assert sweeper.runners.strikes == {world.session.id: 1}
    assert sweeper.tick(T0 + timedelta(seconds=3)).errors == 0 and sweeper.runners.strikes == {}
