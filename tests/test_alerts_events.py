"""Alerts (issue 16.6): which trouble raises an alert, once per event: a series that pauses itself, a streak of gate
errors, missed slots, a runner that cannot start, a project task that fails or misses slots; and how
``alerts.reporting`` picks them up from the log records that say so.

Events are driven by the deterministic kit (real SQLite files, a fake clock, single ticks); the alerts are sent to a
real HTTP server on 127.0.0.1 in the test's loop (tests/alerts_kit.py)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alerts_kit import DAILY, T0, Receiver, run_days, sender
from kit import FakeClock, RecordingRuntime, World
from scheduled_project import HEAD, SLOT, Project
from scheduled_project import project as project  # the fixture

from host.channels import alerts
from host.channels.alerts import Alerts
from host.settings import AlertTarget, Settings
from schemas.times import from_text

# --- each event, once ----------------------------------------------------------------------------------------------

async def test_a_series_that_pauses_itself_alerts_once_with_its_task_session_and_group(tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            run_days(world, task, ["failed", "failed"])
            assert not out.pending
            run_days(world, task, ["failed"])
        assert world.live(task)[0]["status"] == "paused"
        await out.drain()
        await out.aclose()
    (body,) = receiver.bodies
    assert body["event"] == "task_auto_paused" and body["task"] == task
    assert (body["session"], body["group"]) == (world.session.id, "demo")
    assert "failed 3 times in a row" in body["text"] and from_text(body["at"])
    assert set(body) == {"event", "text", "at", "task", "run", "session", "group", "id"}
    assert re.fullmatch(r"alert-[0-9a-f]{16}", body["id"])


async def test_gate_errors_alert_when_three_come_in_a_row_and_again_only_after_a_run_broke_the_streak(
        tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            run_days(world, task, ["gate_error"] * 4)
            assert len(out.pending) == 1  # the 3rd, not the 4th
            run_days(world, task, ["ran", "gate_error", "gate_error", "gate_error"])
        await out.drain()
        await out.aclose()
    assert receiver.events == ["task_gate_errors", "task_gate_errors"]
    assert {b["task"] for b in receiver.bodies} == {task}


async def test_missed_slots_alert_once_when_recorded(tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    later = T0 + timedelta(days=3)  # 08:00 EDT: the latest slot is 23 h old, beyond the grace
    sweeper = world.sweeper()
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            assert sweeper.tick(later).missed == 1
            assert sweeper.tick(later).missed == 0
        await out.drain()
        await out.aclose()
    (body,) = receiver.bodies
    assert body["event"] == "task_missed" and body["task"] == task and body["session"] == world.session.id
    assert "missed 3 slot(s)" in body["text"]


class FailingRuntime(RecordingRuntime):
    def start(self, session: Any, generation: str, env: dict[str, str]) -> None:
        raise RuntimeError("no such image")


async def test_a_runner_that_cannot_start_alerts_once_a_streak(tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    world.schedule(T0, at="2026-06-01T12:00:00.000Z")
    sweeper = world.sweeper(FailingRuntime())
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            for seconds in (0, 1, 2, 60, 200, 600):  # failures 1-6 (back-off 0, 0, 10, 30, 120 s)
                sweeper.tick(T0 + timedelta(seconds=seconds))
        assert sweeper.runners is not None and sweeper.runners.failures[world.session.id] == 6
        await out.drain()
        await out.aclose()
    (body,) = receiver.bodies
    assert body["event"] == "runner_start_failed" and body["session"] == world.session.id
    assert "start failed: no such image (3 in a row)" in body["text"]


async def test_a_project_task_that_fails_or_misses_slots_alerts(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    receiver = Receiver()
    failing = project.add(HEAD + "schedule: 30 17 * * *\nhost: {command: 'false'}\n")
    async with receiver.running() as url:
        monkeypatch.setenv("NCL_ALERT_CHANNEL", url)
        settings = project.settings()
        out = Alerts(settings, AlertTarget("webhook", url))
        clock = FakeClock(SLOT)
        firer = project.firer(clock)
        with alerts.reporting(out):
            assert firer.tick(SLOT).fired == 1
            firer.wait()  # the command runs on a worker thread, whose line is queued from there
            later = SLOT + timedelta(days=2, hours=2)  # down across the next two slots, beyond the grace
            assert firer.tick(later).missed == 1
        await out.drain()
        await out.aclose()
    assert receiver.events == ["scheduled_task_failed", "scheduled_task_missed"]
    failed, missed = receiver.bodies
    assert failed["task"] == missed["task"] == failing["id"] and failed["run"]
    assert "failed" in failed["text"] and "exit code 1" in failed["text"]
    assert "missed 2 slot(s)" in missed["text"]  # the two after the one that fired


# --- reporting: from the log ---------------------------------------------------------------------------------------

def test_reporting_lowers_a_root_logger_set_above_warning_and_puts_it_back(tmp_path: Path) -> None:
    root = logging.getLogger()
    level, handler = root.level, logging.NullHandler()
    root.setLevel(logging.ERROR)
    root.addHandler(handler)
    try:
        out = Alerts(Settings(data_dir=tmp_path), AlertTarget("webhook", "http://127.0.0.1:9"))
        with alerts.reporting(out):
            logging.getLogger("host.scheduling.recurrence").warning("x", extra={"action": "a", "alert": "task_missed"})
            assert (root.level, handler.level) == (logging.WARNING, logging.ERROR)  # the handler shows no more
        assert (root.level, handler.level) == (logging.ERROR, logging.NOTSET)
        assert [a.event for a in out.pending] == ["task_missed"]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
