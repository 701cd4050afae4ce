"""Issue 15.1, what the host says about work: one line per task run and outcome (task, session, outcome, duration),
per missed slot and retry, per scheduled-task firing and outcome, per runner start (and why) and wait for a slot.
Driven by a fake clock on real SQLite files, as a host visit does (through ``Sweeper``), the lines caught with the
session filter the host puts on its handlers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from kit import FakeClock, RecordingRuntime, World, utc
from scheduled_project import DAILY_QUEUE, HEAD, SLOT, Project, local
from scheduled_project import project as project

from host.files import logs
from host.store import db
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
S = timedelta(seconds=1)


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(logs.SessionFilter())  # as ``ncl host run`` does on each of its handlers
    yield caplog


def lines(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


def fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in logs.extras(record).items() if k != "action"}


def ack(world: World, message_id: str, status: str, outcome: str, started: str, finished: str,
        reason: str | None = None) -> None:
    """The runner's ack with the time it started the row, as agent_runner.store writes it."""
    detail = json.dumps({"outcome": outcome, "reason": reason, "started_at": started})
    with closing(world.outbound()) as conn, db.transaction(conn):
        conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail, generation)"
                     " VALUES (?, ?, ?, ?, 'gen-test')", (message_id, status, finished, detail))


def test_a_task_run_is_one_line_with_its_session_outcome_and_duration(tmp_path: Path,
                                                                      said: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    task = world.schedule(T0, at=to_text(T0), recurrence="0 9 * * *")
    sweeper = world.sweeper()
    ack(world, task, "completed", "ran", to_text(T0 + S), to_text(T0 + 3.5 * S))
    sweeper.tick(T0 + 4 * S)
    [line] = lines(said, "task_finished")
    assert line.levelno == logging.INFO and line.getMessage() == f"task {task} ran in 2.5 s"
    assert fields(line) == {"task": task, "outcome": "ran", "duration_ms": 2500, "session": world.session.id}
    [following] = world.live(task)  # the next occurrence: a line about it names the series and the occurrence
    ack(world, following["id"], "failed", "failed", "not a time", to_text(T0 + 5 * S), "model unreachable")
    sweeper.tick(T0 + 6 * S)
    line = lines(said, "task_finished")[-1]
    assert line.levelno == logging.WARNING and line.getMessage() == f"task {task} failed: model unreachable"
    assert fields(line) == {"task": task, "occurrence": following["id"], "outcome": "failed",
                            "session": world.session.id}  # a start time that does not read: no duration


def test_a_run_whose_runner_died_says_each_retry_then_its_failure(tmp_path: Path,
                                                                  said: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    runtime = RecordingRuntime()
    task = world.schedule(T0, at=to_text(T0))
    sweeper = world.sweeper(runtime)
    at = T0
    for _ in range(6):  # claimed by each runner, which dies at once
        sweeper.tick(at)
        generation = runtime.started[-1][2]
        with closing(world.outbound()) as conn, db.transaction(conn):
            conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, generation)"
                         " VALUES (?, 'processing', ?, ?)", (task, to_text(at), generation))
        runtime.running.clear()
        at += timedelta(seconds=100)
    sweeper.tick(at)
    retries = lines(said, "run_retried")
    assert [fields(r)["tries"] for r in retries] == [1, 2, 3, 4, 5]
    assert all(fields(r)["task"] == task and fields(r)["session"] == world.session.id for r in retries)
    [failed] = lines(said, "task_finished")
    assert fields(failed)["outcome"] == "failed" and "runner died or stalled 6 times" in failed.getMessage()


def test_missed_slots_are_said(tmp_path: Path, said: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    task = world.schedule(T0, at=to_text(T0), recurrence="0 9 * * *")
    world.sweeper().tick(T0 + timedelta(days=3))  # the slot of day 3 runs now, the three before it were missed
    [line] = lines(said, "task_missed")
    assert line.levelno == logging.WARNING and fields(line) == {"task": task, "slots": 3, "alert": "task_missed",
                                                                 "session": world.session.id}


def test_a_runner_start_says_why_and_a_wait_for_a_slot_is_said(tmp_path: Path,
                                                              said: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, tz="Europe/Berlin", NCL_MAX_RUNNERS="1")
    runtime = RecordingRuntime(FakeClock(T0))
    first, second = world.session, world.new_session()
    world.schedule(T0, at=to_text(T0), session=first)
    world.schedule(T0, at=to_text(T0 + S), session=second)
    sweeper = world.sweeper(runtime)
    sweeper.tick(T0 + 2 * S)
    [started] = lines(said, "runner_starting")
    assert started.getMessage() == f"starting a runner for {first.id}: work due since 15:00:00 CEST (2.0 s ago)"
    assert fields(started) == {"session": first.id, "generation": runtime.started[0][2]}
    [waits] = lines(said, "runner_slot_wait")
    assert fields(waits)["session"] == second.id
    generation = runtime.started[0][2]
    (first.folder / ".heartbeat").write_text(generation)  # the first runner answers, idles and is stopped for it
    [row] = world.rows(session=first)
    world.ack(row["id"], "completed", T0 + 3 * S, generation, "ran", session=first)
    sweeper.tick(T0 + 4 * S)
    started = lines(said, "runner_starting")[-1]
    assert started.getMessage() == (f"starting a runner for {second.id}: work due since 15:00:01 CEST (3.0 s ago, "
                                    "after waiting for a slot)")


def test_a_scheduled_queue_task_says_its_firing_and_outcome(project: Project, said: pytest.LogCaptureFixture) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    assert project.firer(FakeClock(SLOT)).tick(SLOT).fired == 1
    [fired] = lines(said, "scheduled_fired")
    assert fired.levelno == logging.INFO and fields(fired)["task"] == item["id"]
    [done] = lines(said, "scheduled_run_finished")
    (run,) = project.runs(item["id"])
    assert done.levelno == logging.INFO and done.getMessage().startswith(f"scheduled task {item['id']} queued in ")
    assert fields(done) == {"task": item["id"], "run": run["id"], "outcome": "queued", "duration_ms": 0}


def test_a_scheduled_host_command_says_its_outcome_and_duration(project: Project,
                                                               said: pytest.LogCaptureFixture) -> None:
    spec = f"{HEAD}schedule: 0 9 * * *\nhost: {{command: \"sh -c 'exit 3'\"}}\n"
    item = project.add(spec)
    clock = FakeClock(local("2026-06-12T09:00:00"))
    firer = project.firer(clock)
    assert firer.tick(clock.now()).fired == 1
    firer.wait(30)
    [done] = lines(said, "scheduled_run_finished")
    (run,) = project.runs(item["id"])
    assert done.levelno == logging.WARNING and done.getMessage().endswith(" s: exit code 3")
    assert fields(done) == {"task": item["id"], "run": run["id"], "outcome": "failed", "duration_ms": 0,
                            "alert": "scheduled_task_failed"}
