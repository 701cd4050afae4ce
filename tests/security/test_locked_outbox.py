"""A runner may keep its outbound.db locked (its own file: nothing stops it taking SQLite's locks). The sweep's one
thread reads that file at every visit of the session, four times a second while the runner lives, and waits up to
the busy timeout each time: every other session would wait with it, for as long as the runner lived. A read that
waited past a share of the busy timeout (``pool.HELD_SHARE``) kills the runner, as a stuck one: its session held up
the sweep once."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from kit import RecordingRuntime, World
from security_kit import T0

from host.runtimes import pool
from host.store import db
from host.store.sessions import Session
from schemas.times import to_text


@dataclass
class LockingRuntime(RecordingRuntime):
    """Its runners lock their outbound.db (``lock``) until they are stopped: a dead process's locks are gone."""

    holders: dict[str, sqlite3.Connection] | None = None

    def lock(self, session: Session) -> None:
        holder = sqlite3.connect(session.folder / "outbound.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        self.holders = {**(self.holders or {}), session.id: holder}

    def stop(self, session_id: str) -> None:
        super().stop(session_id)
        if self.holders and session_id in self.holders:
            self.holders.pop(session_id).close()


def _live(world: World, runtime: LockingRuntime) -> tuple[World, object]:
    """A runner woken for a due task in the world's session."""
    world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    sweeper = world.sweeper(runtime)
    assert sweeper.tick(T0).woken == 1 and [s for _, s, _ in runtime.started] == [world.session.id]
    return world, sweeper


def test_a_runner_that_keeps_its_outbox_locked_holds_up_one_visit_and_is_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)  # the wait a held file costs (5 s in a host)
    runtime = LockingRuntime()
    world, sweeper = _live(World(tmp_path), runtime)
    other = world.new_session()
    world.schedule(T0, at=to_text(T0 + timedelta(seconds=1)), session=other)
    runtime.lock(world.session)
    with caplog.at_level(logging.WARNING):
        result = sweeper.tick(T0 + timedelta(seconds=2))  # type: ignore[attr-defined]
    # The held session's visit failed after the busy timeout; its runner was killed; the other session was served.
    assert result.errors == 1 and runtime.stopped == [world.session.id]
    assert [s for _, s, _ in runtime.started] == [world.session.id, other.id]
    [killed] = [r for r in caplog.records if getattr(r, "action", None) == "runner_killed"]
    assert "a read of its outbound.db waited" in killed.getMessage()
    # The next visit reads the file the dead runner let go of, and wakes a runner for the task it left.
    result = sweeper.tick(T0 + timedelta(seconds=3))  # type: ignore[attr-defined]
    assert result.errors == 0 and [s for _, s, _ in runtime.started][-1] == world.session.id


def test_a_runner_that_lets_go_of_its_outbox_just_before_the_timeout_is_killed_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = LockingRuntime()
    world, sweeper = _live(World(tmp_path), runtime)
    # The read gets the file 4.9 s after it asked (5 s: the host's busy timeout): the visit goes on, read whole.
    waits = iter([0.0, 4.9])
    monkeypatch.setattr(pool, "time", SimpleNamespace(monotonic=lambda: next(waits)))
    result = sweeper.tick(T0 + timedelta(seconds=2))  # type: ignore[attr-defined]
    assert result.errors == 0 and runtime.stopped == [world.session.id]


def test_a_read_that_waits_less_kills_no_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = LockingRuntime()
    world, sweeper = _live(World(tmp_path), runtime)
    waits = iter([0.0, 1.9])  # a runner's commit on a stalled disk: under 2 s
    monkeypatch.setattr(pool, "time", SimpleNamespace(monotonic=lambda: next(waits)))
    result = sweeper.tick(T0 + timedelta(seconds=2))  # type: ignore[attr-defined]
    assert result.errors == 0 and runtime.stopped == []
