"""Runner slots go to waiting work (issue 13): with every slot taken, the runner idle longest (no claim, nothing
due) is stopped for a due session, waiting sessions are served in the order their work became due, both are
logged, and the host publishes its pool for ``ncl status``."""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import FakeClock, RecordingRuntime, World, utc

from host.loop import Host
from host.runtimes import published as pool_state
from host.scheduling.sweep import AHEAD, Sweeper
from host.store.sessions import Session
from schemas import ids
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
S = timedelta(seconds=1)


def _generation(runtime: RecordingRuntime, session: Session) -> str:
    return next(g for _, sid, g in reversed(runtime.started) if sid == session.id)


def _answer(world: World, runtime: RecordingRuntime, session: Session, at: Any) -> None:
    """The session's runner finishes its only row and stays up, idle."""
    generation = _generation(runtime, session)
    (session.folder / ".heartbeat").write_text(generation)
    row = next(r for r in world.rows(session=session) if r["status"] in ("pending", "processing"))
    world.ack(row["id"], "completed", at, generation, "ran", session=session)


def _actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


def _busy_pair(world: World, runtime: RecordingRuntime) -> tuple[Sweeper, Session, Session]:
    first, second = world.session, world.new_session()
    for session in (first, second):
        world.schedule(T0, at=to_text(T0), session=session)
    sweeper = world.sweeper(runtime)
    sweeper.tick(T0)
    assert {sid for _, sid, _ in runtime.started} == {first.id, second.id}
    return sweeper, first, second


def test_the_runner_idle_longest_is_stopped_for_a_due_session_in_one_tick(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="host.runtimes.pool")
    world = World(tmp_path, NCL_MAX_RUNNERS="2")
    runtime = RecordingRuntime()
    sweeper, first, second = _busy_pair(world, runtime)
    _answer(world, runtime, first, T0 + S)  # idle from T0+1 s …
    sweeper.tick(T0 + S)
    _answer(world, runtime, second, T0 + 2 * S)  # … and this one from T0+2 s
    sweeper.tick(T0 + 2 * S)
    third = world.new_session()
    world.schedule(T0 + 3 * S, at=to_text(T0 + 3 * S), session=third)

    result = sweeper.tick(T0 + 3 * S)

    assert runtime.stopped == [first.id] and runtime.running == {second.id, third.id} and result.woken == 1
    assert _actions(caplog, "runner_slot_wait") == []  # a slot was freed at once: it never waited
    [freed] = _actions(caplog, "runner_slot_freed")
    assert (freed.session, freed.for_session) == (first.id, third.id)  # type: ignore[attr-defined]
    assert "idle for 2.0 s" in freed.getMessage()
    state = sweeper.runners.state() if sweeper.runners else {}
    assert [(r["session_id"], r["idle_since"]) for r in state["runners"]] == [
        (second.id, to_text(T0 + 2 * S)), (third.id, None)]


class SlowToGo(RecordingRuntime):
    """A runtime whose retired runners run on until ``gone`` (a container being removed)."""

    def retire(self, session_id: str) -> None:
        self.stopped.append(session_id)

    def gone(self, session_id: str) -> None:
        self.running.discard(session_id)


def test_a_slot_is_free_at_once_while_the_runner_stopped_for_it_goes(tmp_path: Path) -> None:
    runtime = SlowToGo()
    world = World(tmp_path, NCL_MAX_RUNNERS="2")
    sweeper, first, second = _busy_pair(world, runtime)
    runners = sweeper.runners
    assert runners is not None
    _answer(world, runtime, first, T0 + S)
    _answer(world, runtime, second, T0 + S)
    sweeper.tick(T0 + S)  # both idle
    third, fourth = world.new_session(), world.new_session()
    for session in (third, fourth):
        world.schedule(T0 + 2 * S, at=to_text(T0 + 2 * S), session=session)

    sweeper.tick(T0 + 2 * S)  # each due session gets a slot in this tick: the idle runners are stopped, not waited for

    assert runtime.stopped == [first.id, second.id] and {third.id, fourth.id} <= runtime.running
    assert runners.live.keys() == {first.id, second.id, third.id, fourth.id}
    assert runners.retiring == {first.id, second.id}
    # Work came for the first as it was being stopped, and it claimed it: its claim stands while it runs.
    world.schedule(T0 + 2 * S, at=to_text(T0 + 2 * S), session=first)
    row = next(r for r in world.rows(session=first) if r["status"] == "pending")
    world.ack(row["id"], "processing", T0 + 2 * S, _generation(runtime, first), session=first)
    sweeper.tick(T0 + 3 * S)
    assert [r["status"] for r in world.rows(session=first) if r["id"] == row["id"]] == ["processing"]
    runtime.gone(first.id)
    sweeper.tick(T0 + 4 * S)
    assert runners.live.keys() == {second.id, third.id, fourth.id} and runners.retiring == {second.id}
    assert [r["status"] for r in world.rows(session=first) if r["id"] == row["id"]] == ["pending"]  # released
    assert runners.failures == {}  # stopped, not a failed start


def test_a_busy_runner_is_never_stopped_and_the_wake_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="host.runtimes.pool")
    world = World(tmp_path, NCL_MAX_RUNNERS="2")
    runtime = RecordingRuntime()
    sweeper, first, second = _busy_pair(world, runtime)
    for session in (first, second):  # each runner claims its row: busy
        row = world.rows(session=session)[0]
        world.ack(row["id"], "processing", T0 + S, _generation(runtime, session), session=session)
    third = world.new_session()
    world.schedule(T0, at=to_text(T0), session=third)
    for step in range(1, 4):
        sweeper.tick(T0 + step * S)
    assert runtime.stopped == [] and third.id not in runtime.running
    assert [r.session for r in _actions(caplog, "runner_slot_wait")] == [third.id]  # type: ignore[attr-defined]
    assert sweeper.runners and [w["session_id"] for w in sweeper.runners.state()["waiting"]] == [third.id]


def test_waiting_sessions_are_served_in_the_order_their_work_became_due(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_MAX_RUNNERS="1")
    # Created (and so swept) in the order a, b, c; due in the order c, a, b.
    a, b, c = world.session, world.new_session(), world.new_session()
    for session, minutes_ago in ((a, 2), (b, 1), (c, 3)):
        world.schedule(T0 - timedelta(minutes=5), at=to_text(T0 - timedelta(minutes=minutes_ago)), session=session)
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    now = T0
    sweeper.tick(now)
    assert sweeper.runners and [w["session_id"] for w in sweeper.runners.state()["waiting"]] == [a.id, b.id]
    by_id = {s.id: s for s in (a, b, c)}
    for _ in range(2):
        now += S
        _answer(world, runtime, by_id[runtime.started[-1][1]], now)
        sweeper.tick(now)  # seen idle, stopped, the next one started: one tick
    assert [sid for _, sid, _ in runtime.started] == [c.id, a.id, b.id]
    assert runtime.stopped == [c.id, a.id]


def test_a_chat_with_no_due_time_is_ordered_by_its_arrival(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_MAX_RUNNERS="1")
    late, early = world.session, world.new_session()
    for session, at in ((late, T0), (early, T0 - timedelta(minutes=1))):
        with world.inbound(session) as conn:
            conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, content) VALUES (?, 2, 'chat', ?, ?)",
                         (f"msg-{session.id}", to_text(at), json.dumps({"text": "hi"})))
        conn.close()
    runtime = RecordingRuntime()
    world.sweeper(runtime).tick(T0)
    assert [sid for _, sid, _ in runtime.started] == [early.id]


async def test_a_host_step_publishes_its_pool_privately_when_it_changes(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_MAX_RUNNERS="1")
    other = world.new_session()
    for session in (world.session, other):
        world.schedule(T0, at=to_text(T0), session=session)
    clock = FakeClock(T0)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    try:
        await host.step()
    finally:
        host.proxy.shutdown()
        host.sweeper.close()
        host.scheduled.close(stop_running=False)
    path = world.settings.data_dir / pool_state.STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = pool_state.published(world.settings.data_dir)
    assert state is not None
    [running], [waiting] = state["runners"], state["waiting"]
    assert {running["session_id"], waiting["session_id"]} == {world.session.id, other.id}
    assert (running["idle_since"], waiting["due_since"]) == (None, to_text(T0))
    assert [p.name for p in world.settings.data_dir.iterdir() if "runners" in p.name] == [pool_state.STATE_FILE]


def test_status_lists_runners_with_their_state_and_the_waiting_sessions(
        ncl: Any, demo_session: dict[str, Any], cli_env: Any) -> None:
    (cli_env.data_dir / "host.lock").write_text(f"{os.getpid()}\n")
    waiting = ncl("sessions", "create", "--group", "demo", "--json").json()
    idle_since = to_text(T0)
    pool_state.publish(cli_env.data_dir, {
        "runners": [{"session_id": demo_session["id"], "generation": "gen-a", "started_at": idle_since,
                     "idle_since": idle_since}],
        "waiting": [{"session_id": waiting["id"], "due_since": idle_since}]})
    data = ncl("status", "--json").json()
    [runner] = data["runners"]
    assert (runner["session_id"], runner["agent_group_id"], runner["generation"], runner["state"]) == (
        demo_session["id"], demo_session["agent_group_id"], "gen-a", "idle")
    assert runner["idle_for_s"] > 0 and runner["last_beat"] is None
    [wait] = data["waiting"]
    assert (wait["session_id"], wait["due_since"]) == (waiting["id"], idle_since)
    table = ncl("status").out
    assert "idle" in table and ids.short(waiting["id"]) in table and "waiting for a slot  1" in table  # ids short


class TestStartedAhead:
    """Issue 14, the 9:00 burst: runners for work due within ``AHEAD`` start ahead, into free slots only."""

    def test_free_slots_go_to_the_soonest_work_and_no_further(self, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="host.runtimes.pool")
        world = World(tmp_path, NCL_MAX_RUNNERS="2")
        sessions = [world.session, world.new_session(), world.new_session(), world.new_session()]
        for session, due_in in zip(sessions, (2.5, 1.0, 2.0, 10.0), strict=True):
            world.schedule(T0, at=to_text(T0 + due_in * S), session=session)
        runtime = RecordingRuntime()
        sweeper = world.sweeper(runtime)
        assert sweeper.tick(T0).woken == 2
        assert [sid for _, sid, _ in runtime.started] == [sessions[1].id, sessions[2].id]  # soonest first
        assert "work due at 09:00:01 EDT, started ahead" in caplog.text  # World is in New York
        assert sweeper.earliest_due() == T0 + 2.5 * S  # no room left: the next wake is when work is due

    def test_work_beyond_the_window_wakes_the_loop_ahead_of_it(self, tmp_path: Path) -> None:
        world = World(tmp_path)
        world.schedule(T0, at=to_text(T0 + 10 * S))
        runtime = RecordingRuntime()
        sweeper = world.sweeper(runtime)
        assert sweeper.tick(T0).woken == 0 and runtime.started == []
        assert sweeper.earliest_due() == T0 + 10 * S - AHEAD

    def test_never_ahead_of_a_waiting_wake_nor_twice_for_one_due_time(self, tmp_path: Path) -> None:
        world = World(tmp_path, NCL_MAX_RUNNERS="1")
        now_due, waiting, soon = world.session, world.new_session(), world.new_session()
        world.schedule(T0, at=to_text(T0), session=now_due)
        world.schedule(T0, at=to_text(T0), session=waiting)
        world.schedule(T0, at=to_text(T0 + 2 * S), session=soon)
        runtime = RecordingRuntime()
        sweeper = world.sweeper(runtime)
        sweeper.tick(T0)
        assert [sid for _, sid, _ in runtime.started] == [now_due.id]  # `waiting` waits: `soon` gets nothing

        ahead = World(tmp_path / "b")
        ahead.schedule(T0, at=to_text(T0 + 2 * S))
        gone = RecordingRuntime()
        sweeper = ahead.sweeper(gone)
        sweeper.tick(T0)
        (ahead.session.folder / ".heartbeat").write_text(gone.started[0][2])
        gone.running.clear()  # a runner that exits before its work is due (it beat: not a failed start)
        sweeper.tick(T0 + 0.1 * S)
        assert len(gone.started) == 1  # not started ahead again for the same due time
