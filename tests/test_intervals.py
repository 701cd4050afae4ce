"""Interval recurrences (issue 16.1, DESIGN §13.2): ``every 90m`` and Pynchy's milliseconds, one canonical text in
``messages_in.recurrence``, a grid anchored at the first run that never drifts, elapsed time across DST, the minimum
interval, the misfire rule, a zone change (fake clock, real files, the CLI as a user types it)."""

from __future__ import annotations

import json
import subprocess
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import add, inbox_rows, one_line_error, show, sweep
from cli_tasks_kit import cli as cli
from cli_tasks_kit import session as session
from kit import World, utc

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.errors import NclError
from host.scheduling import recurrence, tasks
from host.scheduling.recurrence import Policy
from schemas import interval, recurring
from schemas.cron import CronError
from schemas.times import from_text, to_text

T0 = utc("2026-05-18T12:00:00")  # Monday 08:00 EDT
UTC_ZONE = ZoneInfo("UTC")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.mark.parametrize(("given", "stored"), [
    ("every 90m", "every 1h30m"), ("every 1h30m", "every 1h30m"), ("EVERY 1H 30M", "every 1h30m"),
    ("every 2h", "every 2h"), ("every 1d", "every 1d"), ("every 36h", "every 1d12h"), ("every 45s", "every 45s"),
    ("every 1d2h3m4s", "every 1d2h3m4s"), ("every 3600s", "every 1h"),
])
def test_an_interval_has_one_canonical_text(given: str, stored: str) -> None:
    assert recurring.validate(given) == stored
    assert interval.seconds(stored) == interval.seconds(given)


@pytest.mark.parametrize(("ms", "stored"), [(3_600_000, "every 1h"), ("5400000", "every 1h30m"),
                                            (86_400_000, "every 1d"), (1000, "every 1s")])
def test_pynchy_milliseconds_become_the_same_text(ms: object, stored: str) -> None:
    assert interval.from_ms(ms) == stored


@pytest.mark.parametrize(("given", "says"), [
    ("every 0m", "is zero"), ("every 5x", "not valid"), ("every", "has no length"), ("every 30m1h", "reorders"),
    ("every 1h1h", "repeats"), ("every 367d", "longer than 366 days"), ("everyday", "not valid"),
    ("3600000", "bare number"), ("every -5m", "not valid"),
])
def test_a_bad_interval_is_one_line_saying_what_is_valid(given: str, says: str) -> None:
    with pytest.raises(CronError) as refused:
        recurring.validate(given)
    assert says in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(("ms", "says"), [(1500, "whole number of seconds"), (0, "at least 1000"),
                                          (-1000, "at least 1000"), (3.5, "whole number"), (True, "whole number"),
                                          ("1h", "whole number"), (400 * 86_400_000, "longer than")])
def test_bad_milliseconds_are_refused(ms: object, says: str) -> None:
    with pytest.raises(CronError, match=says):
        interval.from_ms(ms)


def test_a_cron_error_names_the_interval_form_too() -> None:
    with pytest.raises(CronError, match=r"has 4 fields; .*, or an interval: 'every 90m'"):
        recurring.validate("0 9 * *")


def test_slots_count_in_closed_form_from_the_anchor() -> None:
    anchor = utc("2026-05-18T12:00:00")
    assert recurring.count_between("every 1h30m", anchor, anchor + timedelta(hours=7), UTC_ZONE) == (
        4, anchor + timedelta(hours=6))
    assert recurring.count_between("every 1h30m", anchor, anchor + timedelta(minutes=89), UTC_ZONE) == (
        0, None)
    assert list(zip(range(3), recurring.firings("every 90m", anchor, UTC_ZONE), strict=False)) == [
        (0, anchor + timedelta(minutes=90)), (1, anchor + timedelta(minutes=180)), (2, anchor + timedelta(minutes=270))]


def test_the_grid_is_anchored_at_the_first_run_and_a_late_run_does_not_drift(world: World) -> None:
    series = world.schedule(T0, recurrence="every 90m", at="2026-05-18T12:10:00.000Z")
    [first] = world.rows(series)
    assert (first["recurrence"], first["process_after"]) == ("every 1h30m", "2026-05-18T12:10:00.000Z")
    sweeper = world.sweeper()
    world.run_occurrence(sweeper, series, utc("2026-05-18T12:55:00"))  # ran 45 min late
    assert world.live(series)[0]["process_after"] == "2026-05-18T13:40:00.000Z"  # 12:10 + 90 min, not 12:55 + 90
    second = world.live(series)[0]["id"]
    world.run_occurrence(sweeper, second, utc("2026-05-18T13:40:02"))
    assert world.live(series)[0]["process_after"] == "2026-05-18T15:10:00.000Z"


def test_without_a_time_the_first_run_is_one_interval_from_now(world: World) -> None:
    series = world.schedule(T0, recurrence="every 2h")
    assert world.rows(series)[0]["process_after"] == "2026-05-18T14:00:00.000Z"
    with closing(world.inbound()) as conn:  # a new recurrence without a time: from now, like a cron
        tasks.update(conn, series, utc("2026-05-18T12:30:00"), world.policy, recurrence_expr="every 45m",
                     folder=world.session.folder)
    assert [(r["recurrence"], r["process_after"]) for r in world.rows(series)] == [
        ("every 45m", "2026-05-18T13:15:00.000Z")]


def test_an_interval_is_elapsed_time_across_dst(world: World) -> None:
    # Saturday 09:00 EST, every 1d: Sunday's spring-forward makes the next 10:00 EDT, 24 hours later.
    series = world.schedule(utc("2026-03-07T00:00:00"), recurrence="every 1d", at="2026-03-07T14:00:00.000Z")
    sweeper = world.sweeper()
    fired = []
    while (row := world.live(series)[0])["process_after"] <= "2026-03-10T00:00:00.000Z":
        fired.append(row["process_after"])
        world.run_occurrence(sweeper, row["id"], from_text(row["process_after"]))
    assert fired == ["2026-03-07T14:00:00.000Z", "2026-03-08T14:00:00.000Z", "2026-03-09T14:00:00.000Z"]
    local = [from_text(t).astimezone(world.policy.zone).strftime("%H:%M %Z") for t in fired]
    assert local == ["09:00 EST", "10:00 EDT", "10:00 EDT"]


def test_the_minimum_interval_holds_for_agents_and_operators_may_go_below(world: World) -> None:
    with closing(world.inbound()) as conn, pytest.raises(NclError, match=r"'every 4m' runs 240 s apart .* 300 s"):
        tasks.schedule(conn, T0, world.policy, "task-1779105600000-aaaaaa", "too often", recurrence_expr="every 4m")
    world.request(T0, {"action": "schedule_task", "taskId": "task-1779105600000-bbbbbb", "prompt": "too often",
                       "recurrence": "every 4m"})
    world.request(T0, {"action": "schedule_task", "taskId": "task-1779105600000-cccccc", "prompt": "often enough",
                       "recurrence": "every 5m"})
    assert world.sweeper().tick(T0).applied == 1
    assert "every 4m" in world.notices()[0]["text"] and "300 s" in world.notices()[0]["text"]
    assert world.schedule(T0, recurrence="every 1m")  # an operator's (--force)


class TestMisfire:
    """As for cron (DESIGN §7.4): the latest slot runs once if within the grace (1 h), else the next slot waits;
    the slots not run are one ``missed`` run."""

    def test_back_within_grace_runs_the_latest_slot_once(self, world: World) -> None:
        series = world.schedule(T0, recurrence="every 2h", at=to_text(T0))
        sweeper = world.sweeper()
        result = sweeper.tick(utc("2026-05-18T18:30:00"))  # slots 12, 14, 16, 18 passed; 18:00 is 30 min ago
        assert (result.woken, result.missed) == (1, 1)
        assert json.loads(world.runs(series)[0]["detail"])["slots"] == 3
        [live] = world.live(series)
        assert live["process_after"] == "2026-05-18T18:00:00.000Z"
        world.run_occurrence(sweeper, live["id"], utc("2026-05-18T18:31:00"))
        assert world.live(series)[0]["process_after"] == "2026-05-18T20:00:00.000Z"  # on the grid, not 20:31

    def test_back_after_grace_waits_for_the_next_slot_on_the_grid(self, world: World) -> None:
        series = world.schedule(T0, recurrence="every 2h", at=to_text(T0))
        result = world.sweeper().tick(utc("2026-05-18T19:30:00"))  # 18:00 is 90 min ago
        assert (result.woken, result.missed) == (0, 1)
        assert json.loads(world.runs(series)[0]["detail"])["slots"] == 4
        assert world.live(series)[0]["process_after"] == "2026-05-18T20:00:00.000Z"


def test_a_zone_change_keeps_an_interval_s_instants(world: World) -> None:
    series = world.schedule(T0, recurrence="every 1h30m", at="2026-05-18T14:10:00.000Z")
    daily = world.schedule(T0, recurrence="0 9 * * *", prompt="daily")
    paris = Policy(ZoneInfo("Europe/Paris"), world.policy.misfire_grace, world.policy.task_min_interval_s)
    with closing(world.inbound()) as conn:
        assert recurrence.replan(conn, T0, paris) == 1  # the cron moves to 09:00 in Paris; the interval stays
    [row] = world.rows(series)
    assert (row["process_after"], row["zone"]) == ("2026-05-18T14:10:00.000Z", "Europe/Paris")
    assert world.rows(daily)[0]["process_after"] == "2026-05-19T07:00:00.000Z"


def test_sqlite3_shows_the_canonical_text(world: World) -> None:
    world.schedule(T0, recurrence="every 90m")
    world.schedule(T0, recurrence="0 9 * * *")
    query = "SELECT recurrence FROM messages_in WHERE kind='task' AND recurrence LIKE 'every %'"
    shown = subprocess.run(["sqlite3", f"file:{world.session.folder / 'inbound.db'}?mode=ro", query],
                           capture_output=True, text=True, check=True).stdout
    assert shown == "every 1h30m\n"


# --- the agent's tools ------------------------------------------------------------------------------------------

@pytest.fixture
def tools(world: World) -> Tools:
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    return Tools(config, Store(config), lambda: T0)


def _staged(world: World) -> list[dict[str, Any]]:
    with closing(world.outbound()) as conn:
        return [json.loads(r[0]) for r in conn.execute("SELECT content FROM staged_requests ORDER BY rowid")]


def test_the_tool_takes_an_interval_or_milliseconds_and_asks_for_the_canonical_text(tools: Tools,
                                                                                      world: World) -> None:
    answer = tools.call("schedule_task", {"prompt": "stretch", "recurrence": "every 90m"})
    assert "next runs: Mon 2026-05-18 09:30:00 EDT, Mon 2026-05-18 11:00:00 EDT, Mon 2026-05-18 12:30:00 EDT" \
        in answer, answer
    tools.call("schedule_task", {"prompt": "drink water", "interval_ms": 3_600_000})
    assert [(r["prompt"], r["recurrence"]) for r in _staged(world)] == [
        ("stretch", "every 1h30m"), ("drink water", "every 1h")]
    task = world.schedule(T0, recurrence="0 9 * * *")
    assert "next runs: Mon 2026-05-18 10:00:00 EDT" in tools.call("update_task", {"taskId": task,
                                                                                  "interval_ms": 7_200_000})
    assert _staged(world)[-1] == {"action": "update_task", "taskId": task, "recurrence": "every 2h"}


@pytest.mark.parametrize(("arguments", "says"), [
    ({"recurrence": "every 0m"}, "is zero"), ({"recurrence": "every 5x"}, "not valid"),
    ({"recurrence": "every 2m"}, "would run 120 s apart"), ({"interval_ms": 1500}, "whole number of seconds"),
    ({"interval_ms": 3_600_000, "recurrence": "every 1h"}, "not both"), ({"recurrence": "3600000"}, "interval_ms"),
])
def test_the_tool_refuses_a_bad_interval_in_one_line(tools: Tools, arguments: dict[str, Any], says: str) -> None:
    with pytest.raises(ToolError) as refused:
        tools.call("schedule_task", {"prompt": "x", **arguments})
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_the_host_rechecks_an_interval_request(world: World) -> None:
    world.request(T0, {"action": "schedule_task", "taskId": "task-1779105600000-dddddd", "prompt": "x",
                       "recurrence": "every 0m"})
    assert world.sweeper().tick(T0).applied == 0
    assert "is zero" in world.notices()[0]["text"]


# --- the CLI ----------------------------------------------------------------------------------------------------

def test_cli_adds_shows_and_updates_an_interval(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--recurrence", "every 90m", "--at", "2026-05-18T09:00:00", "--now", "2026-05-18T08:00:00")
    assert item["recurrence"] == "every 1h30m" and item["next_run"] == "2026-05-18T13:00:00.000Z"
    assert show(cli, item["id"])["next_runs"] == ["2026-05-18T13:00:00.000Z", "2026-05-18T14:30:00.000Z",
                                                  "2026-05-18T16:00:00.000Z", "2026-05-18T17:30:00.000Z",
                                                  "2026-05-18T19:00:00.000Z"]
    by_ms = add(cli, session, "--interval-ms", "3600000", "--now", "2026-05-18T08:00:00", prompt="hourly")
    assert by_ms["recurrence"] == "every 1h" and by_ms["next_run"] == "2026-05-18T13:00:00.000Z"
    ok(cli("tasks", "update", by_ms["id"], "--interval-ms", "7200000", "--now", "2026-05-18T08:30:00"))
    assert show(cli, by_ms["id"])["task"]["recurrence"] == "every 2h"
    assert [r["recurrence"] for r in inbox_rows(session)] == ["every 1h30m", "every 2h"]
    # It runs on the grid through a sweep, as a user's host would.
    assert sweep(cli, "2026-05-18T09:00:00")["woken"] == 1


@pytest.mark.parametrize(("args", "says"), [
    (("--recurrence", "every 0m"), "is zero"), (("--recurrence", "every 5x"), "not valid"),
    (("--interval-ms", "1500"), "whole number of seconds"), (("--interval-ms", "abc"), "whole number"),
    (("--interval-ms", "3600000", "--recurrence", "every 1h"), "not both"),
    (("--recurrence", "every 1m"), "60 s apart"),
])
def test_cli_refuses_a_bad_interval_in_one_line(cli: Ncl, session: dict[str, Any], args: tuple[str, ...],
                                                 says: str) -> None:
    error = one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", *args))
    assert says in error, error
