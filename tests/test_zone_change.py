"""One zone at a time (issue 13, point 8): a recurring occurrence records the zone it was planned in; a host in
another zone re-plans the waiting ones (a 09:00 task stays at 09:00 local, no day run twice or skipped), logging
each; a command or ``doctor`` run in another zone than the running host's says so."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kit import World, utc
from processes import Env, Host

from host.scheduling import recurrence
from host.scheduling.recurrence import Policy
from host.store import task_series

NY, TOKYO = "America/New_York", "Asia/Tokyo"


def in_zone(world: World, zone: str) -> Policy:
    return dataclasses.replace(world.policy, zone=ZoneInfo(zone))


def replan(world: World, now: datetime, zone: str) -> int:
    with closing(world.inbound()) as conn, conn:
        return recurrence.replan(conn, now, in_zone(world, zone))


def live(world: World, series: str) -> dict[str, Any]:
    [row] = world.live(series)
    return row


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, tz=NY)


class TestReplan:
    def test_a_new_series_records_its_zone_and_a_clone_the_zone_it_was_planned_in(self, world: World) -> None:
        now = utc("2026-01-14T15:00:00")  # 10:00 in New York
        series = world.schedule(now, recurrence="0 9 * * *")
        assert live(world, series)["zone"] == NY
        with closing(world.inbound()) as conn, conn:
            [row] = task_series.planned_elsewhere(conn, TOKYO)
            recurrence.finish(conn, row, now, in_zone(world, TOKYO), "completed", "ran")
        assert live(world, series)["zone"] == TOKYO

    def test_new_york_to_tokyo_keeps_nine_local(self, world: World, caplog: pytest.LogCaptureFixture) -> None:
        now = utc("2026-01-14T15:00:00")  # Wed 10:00 New York = Thu 00:00 Tokyo
        series = world.schedule(now, recurrence="0 9 * * *")
        assert live(world, series)["process_after"] == "2026-01-15T14:00:00.000Z"  # Thu 09:00 New York
        with caplog.at_level(logging.INFO):
            assert replan(world, now, TOKYO) == 1
        row = live(world, series)
        assert (row["process_after"], row["zone"]) == ("2026-01-15T00:00:00.000Z", TOKYO)  # Thu 09:00 Tokyo
        assert f"task {series} re-planned for TZ {TOKYO}: 2026-01-15 09:00 {NY} -> 2026-01-15 09:00 {TOKYO}" \
            in caplog.text
        assert replan(world, now, TOKYO) == 0  # done once: nothing left planned elsewhere

    def test_tokyo_to_new_york_skips_no_day(self, tmp_path: Path) -> None:
        world = World(tmp_path, tz=TOKYO)
        ran = utc("2026-01-14T00:00:00")  # Wed 09:00 Tokyo: that day's run
        series = world.schedule(ran, recurrence="0 9 * * *")
        assert live(world, series)["process_after"] == "2026-01-15T00:00:00.000Z"  # Thu 09:00 Tokyo
        now = utc("2026-01-14T01:00:00")  # Wed 10:00 Tokyo = Tue 20:00 New York
        replan(world, now, NY)
        # Wed 09:00 New York, the next 09:00 there: Thu 09:00 New York (the same local reading) would skip Wed.
        assert live(world, series)["process_after"] == "2026-01-14T14:00:00.000Z"

    def test_a_later_start_on_the_grid_keeps_its_local_date(self, world: World) -> None:
        now = utc("2026-01-14T15:00:00")
        series = world.schedule(now, recurrence="0 9 * * *", at="2026-03-02T14:00:00.000Z")  # Mon 09:00 NY
        replan(world, now, TOKYO)
        assert live(world, series)["process_after"] == "2026-03-02T00:00:00.000Z"  # Mon 09:00 Tokyo, not Thursday

    def test_hourly_slots_keep_their_instants_across_whole_hour_zones(self, world: World) -> None:
        now = utc("2026-01-14T15:20:00")
        series = world.schedule(now, recurrence="0 * * * *")
        replan(world, now, TOKYO)
        assert live(world, series)["process_after"] == "2026-01-14T16:00:00.000Z"

    def test_paused_occurrences_are_re_planned_too(self, world: World) -> None:
        now = utc("2026-01-14T15:00:00")
        series = world.schedule(now, recurrence="0 9 * * *")
        with closing(world.inbound()) as conn, conn:
            task_series.pause(conn, series)
        replan(world, now, TOKYO)
        row = live(world, series)
        assert (row["status"], row["process_after"]) == ("paused", "2026-01-15T00:00:00.000Z")

    @pytest.mark.parametrize(("at", "why"), [("2026-01-20T14:07:00.000Z", "off the grid: an instant someone chose"),
                                             ("2026-01-14T14:00:00.000Z", "due already: the misfire rule's")])
    def test_an_instant_off_the_grid_or_already_due_is_kept_and_stamped(self, world: World, at: str,
                                                                        why: str) -> None:
        now = utc("2026-01-14T15:00:00")
        series = world.schedule(now, recurrence="0 9 * * *", at=at)
        assert replan(world, now, TOKYO) == 0, why
        row = live(world, series)
        assert (row["process_after"], row["zone"]) == (at, TOKYO)

    def test_a_row_planned_before_zones_were_recorded_is_taken_as_this_zones(self, world: World) -> None:
        now = utc("2026-01-14T15:00:00")
        series = world.schedule(now, recurrence="0 9 * * *")
        with closing(world.inbound()) as conn, conn:
            conn.execute("UPDATE messages_in SET zone = NULL")
        assert replan(world, now, TOKYO) == 0
        row = live(world, series)
        assert (row["process_after"], row["zone"]) == ("2026-01-15T14:00:00.000Z", TOKYO)

    def test_the_sweep_re_plans_what_it_visits(self, tmp_path: Path) -> None:
        now = utc("2026-01-14T15:00:00")
        before = World(tmp_path / "a", tz=NY)
        series = before.schedule(now, recurrence="0 9 * * *")
        after = dataclasses.replace(before.policy, zone=ZoneInfo(TOKYO))
        before.settings = before.settings.replace(tz=before.settings.tz._replace(name=TOKYO))
        assert Policy.of(before.settings).zone == after.zone
        before.sweeper().tick(now)
        assert live(before, series)["process_after"] == "2026-01-15T00:00:00.000Z"


def chat(env: Env, text: str) -> str:
    reply: str = json.loads(env.ok("chat", "demo", text, "--json", "--timeout", "60"))["replies"][0]["text"]
    return reply


def tasks(env: Env) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(env.ok("tasks", "list", "--json"))["tasks"]
    return found


def applied(env: Env) -> list[dict[str, Any]]:
    """The task series once the host applied the agent's request (its next sweep of the session)."""
    deadline = time.monotonic() + 30
    while not (found := tasks(env)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


class TestRunningHostInAnotherZone:
    """The repro: a host running in New York, then ``.env`` changed to Tokyo."""

    @pytest.mark.slow
    def test_commands_and_doctor_warn_and_the_restarted_host_and_its_agent_use_the_new_zone(
            self, tmp_path: Path) -> None:
        env = Env(tmp_path)
        del env.vars["TZ"]  # the zone comes from .env, as the user sets it
        (tmp_path / ".env").write_text(f"TZ={NY}\n")
        env.ok("groups", "create", "demo", "--channel", "cli")
        host = Host(env, NCL_IDLE_TIMEOUT_S="60")
        try:
            host.wait_for_action("host_started")
            asked = chat(env, "/schedule_task " + json.dumps({"prompt": "standup", "recurrence": "0 9 * * *"}))
            assert "Task scheduled" in asked and "09:00:00 E" in asked, asked  # EST or EDT
            [task] = applied(env)
            assert env.ncl("tasks", "list").stderr == ""  # same zone: nothing to say
            (tmp_path / ".env").write_text(f"TZ={TOKYO}\n")
            listed = env.ncl("tasks", "list")
            assert listed.returncode == 0
            assert f"the running host (pid {host.proc.pid}) uses TZ={NY}, this command TZ={TOKYO}" in listed.stderr
            doctor = json.loads(env.ncl("doctor", "--json").stdout)
            [zone] = [c for c in doctor["checks"] if c["name"] == "timezone"]
            assert zone["level"] == "warn" and f"uses TZ={NY}" in zone["detail"]
        finally:
            host.kill()
        restarted = Host(env, NCL_IDLE_TIMEOUT_S="60")
        try:
            line = restarted.wait_for_action("task_replanned")
            assert f"task {task['id']} re-planned for TZ {TOKYO}" in line and f"09:00 {TOKYO}" in line
            [after] = tasks(env)
            assert after["next_run"] != task["next_run"]
            assert env.ncl("tasks", "list").stderr == ""
            shown = chat(env, "/list_tasks")  # a runner of the restarted host: Tokyo time, still nine o'clock
            assert f"{task['id']} [pending] 0 9 * * * next: " in shown and " 09:00:00 JST" in shown, shown
        finally:
            restarted.kill()
