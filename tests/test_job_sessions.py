"""A session made for one queue job (no ``thread_id``) is closed once it has nothing left to do: its job answered,
its replies dealt with, its runner gone, no task of its own waiting or paused. Every such session was visited by every
sweep for good (an app's thousands of jobs a day). Sessions of a thread, and others, are never closed so."""

from __future__ import annotations

import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from kit import RecordingRuntime, World, utc

from host.channels import queues
from host.scheduling import sweep, tasks
from host.store import db, groups, sessions
from host.store.sessions import Session
from schemas import ids
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # The sweeps look an hour after the files were last written: past the coarse-ctime guard, without a sleep.
    monkeypatch.setattr(sweep.clock, "filesystem_ns", lambda: time.time_ns() + 3600 * 10**9)
    made = World(tmp_path)
    groups.create(made.central, made.settings, T0, "jobs", ["queue:jobs"])
    return made


def _job(world: World, payload: dict[str, str] | None = None) -> tuple[Session, str]:
    sent = queues.send(world.central, world.settings, T0, "jobs", payload or {"prompt": "summarise"})
    return sessions.get(world.central, world.settings, sent["session_id"]), sent["message_id"]


def _status(world: World, session: Session) -> str:
    return sessions.get(world.central, world.settings, session.id).status


def _answered(world: World, session: Session, message_id: str, runtime: RecordingRuntime) -> None:
    """What its runner does: beats, completes the job, and exits."""
    [generation] = [gen for _, sid, gen in runtime.started if sid == session.id]
    (session.folder / ".heartbeat").write_text(generation)
    world.ack(message_id, "completed", T0 + timedelta(seconds=2), session=session, outcome="ran")
    runtime.running.discard(session.id)


def test_a_jobs_own_session_is_closed_once_its_job_is_done_and_its_runner_gone(world: World) -> None:
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    session, message_id = _job(world)
    assert sweeper.tick(T0).woken == 1
    _answered(world, session, message_id, runtime)
    runtime.running.add(session.id)  # (its runner, idle, still alive)
    sweeper.tick(T0 + timedelta(seconds=3))
    assert _status(world, session) == "active"
    runtime.running.discard(session.id)
    sweeper.tick(T0 + timedelta(seconds=4))
    assert _status(world, session) == "closed"
    assert session.id not in {s.id for s in sweeper.active_sessions()}
    with closing(world.inbound(session)) as conn:  # its files stay, as they were
        assert conn.execute("SELECT status FROM messages_in WHERE id = ?", (message_id,)).fetchone()[0] == "completed"


def test_a_jobs_session_with_a_task_of_its_own_waiting_or_paused_stays_open(world: World) -> None:
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    waiting, paused = _job(world), _job(world)
    for session, _ in (waiting, paused):
        with closing(world.inbound(session)) as conn:
            task = tasks.schedule(conn, T0, world.policy, ids.new_id("task", T0), "again tomorrow",
                                  process_after=to_text(T0 + timedelta(days=1)))
            if session is paused[0]:
                tasks.pause(conn, task, T0, world.policy, folder=None)
    sweeper.tick(T0)
    for session, message_id in (waiting, paused):
        _answered(world, session, message_id, runtime)
    for later in (3, 4, 5):
        sweeper.tick(T0 + timedelta(seconds=later))
    assert (_status(world, waiting[0]), _status(world, paused[0])) == ("active", "active")


def test_sessions_of_a_thread_and_an_operators_are_never_closed_so(world: World) -> None:
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    threaded, message_id = _job(world, {"prompt": "summarise", "thread_id": "daily"})
    sweeper.tick(T0)
    _answered(world, threaded, message_id, runtime)
    for later in (3, 4):
        sweeper.tick(T0 + timedelta(seconds=later))
    assert (_status(world, threaded), _status(world, world.session)) == ("active", "active")
    with closing(db.connect(world.settings.central_db, "central")) as conn:
        assert conn.execute("SELECT one_job FROM sessions WHERE id = ?", (threaded.id,)).fetchone()[0] == 0


def test_a_jobs_session_is_not_closed_before_its_job_is_written(world: World) -> None:
    """A session is made (files, then its row) before its job goes in: a sweep between the two closed it, and the
    job landed in a closed session, never to run (diff review)."""
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    group = groups.get(world.central, "jobs")
    made = sessions.create(world.central, world.settings, T0, group, None, one_job=True)
    for later in (0, 1):
        sweeper.tick(T0 + timedelta(seconds=later))
    assert _status(world, made) == "active"


def test_a_closed_sessions_runner_is_stopped_and_the_session_forgotten(world: World) -> None:
    """(Closed by an operator with its runner alive, the runner kept its slot until the host's restart: no sweep
    looked at it again.)"""
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    session, _ = _job(world)
    assert sweeper.tick(T0).woken == 1 and session.id in sweeper.seen
    sessions.close(world.central, [session.id], T0)
    sweeper.tick(T0 + timedelta(seconds=1))
    assert runtime.stopped == [session.id] and sweeper.runners is not None and sweeper.runners.live == {}
    assert session.id not in sweeper.seen


def test_a_job_sent_again_into_its_closed_session_reopens_it_and_is_not_written_twice(world: World) -> None:
    """A stopped host's scheduled run sends its job again into the session its run id names: closed since, it
    would have taken the job and never run it."""
    def send() -> dict[str, str]:
        return queues.send(world.central, world.settings, T0, "jobs", {"prompt": "summarise"},
                           run_id="run-1779109200000-abcdef")

    sent = send()
    sessions.close(world.central, [sent["session_id"]], T0)
    again = send()
    assert again == sent
    session = sessions.get(world.central, world.settings, sent["session_id"])
    assert session.status == "active" and len(world.rows(session=session)) == 1
