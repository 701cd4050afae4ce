"""End conditions of a series (issue 16.2, DESIGN §13.3): ``until`` and ``count`` in the task content, no clone
after the last allowed occurrence and the end recorded on it, missed slots counted, update_task changing them, the
tool's and the CLI's forms and refusals, and what ``tasks show`` says is left (fake clock, real files)."""

from __future__ import annotations

import json
import logging
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import ack, add, inbox_rows, one_line_error, show, sweep
from cli_tasks_kit import cli as cli
from cli_tasks_kit import session as session
from kit import World, utc

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.errors import NclError
from host.scheduling import task_list, tasks
from schemas.times import to_text

T0 = utc("2026-05-18T12:00:00")  # Monday 08:00 EDT
DAILY = "0 9 * * *"  # 13:00Z in May


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _fire_all(world: World, series: str, limit: int = 10) -> list[str]:
    """Run each live occurrence the moment it is due until the series has none; the times they ran."""
    sweeper, fired = world.sweeper(), []
    while (live := world.live(series)) and len(fired) < limit:
        fired.append(live[0]["process_after"])
        world.run_occurrence(sweeper, live[0]["id"], utc(live[0]["process_after"][:-1]))
    return fired


def _content(row: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(row["content"]))


def test_count_ends_the_series_after_its_last_run_with_no_clone(world: World,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    series = world.schedule(T0, recurrence=DAILY, count=3)
    with caplog.at_level(logging.INFO):
        fired = _fire_all(world, series)
    assert fired == ["2026-05-18T13:00:00.000Z", "2026-05-19T13:00:00.000Z", "2026-05-20T13:00:00.000Z"]
    rows = world.rows(series)
    assert [r["status"] for r in rows] == ["completed"] * 3 and all(r["recurrence"] is None for r in rows)
    assert [_content(r)["count"] for r in rows] == [3, 2, 1]  # what is left on each live row, itself included
    assert _content(rows[-1])["ended"] == "count" and "ended" not in _content(rows[1])
    assert [r["outcome"] for r in world.runs(series)] == ["ran"] * 3
    assert [r.__dict__.get("ended") for r in caplog.records if getattr(r, "action", "") == "task_series_ended"] == [
        "count"]
    item = task_list.summary(world.session, series)
    assert (item.status, item.ended, item.runs_left, item.last_outcome) == ("completed", "count", None, "ran")


def test_until_ends_the_series_at_the_last_slot_before_it(world: World) -> None:
    series = world.schedule(T0, recurrence="every 2h", at=to_text(T0), until="2026-05-18T17:00:00.000Z")
    assert _fire_all(world, series) == ["2026-05-18T12:00:00.000Z", "2026-05-18T14:00:00.000Z",
                                        "2026-05-18T16:00:00.000Z"]
    assert _content(world.rows(series)[-1])["ended"] == "until"
    exactly = world.schedule(T0, recurrence="every 2h", at=to_text(T0), until="2026-05-18T16:00:00.000Z",
                             prompt="a slot at until runs")
    assert len(_fire_all(world, exactly)) == 3


def test_a_failed_or_skipped_run_counts_and_a_run_now_does_not(world: World) -> None:
    series = world.schedule(T0, recurrence=DAILY, count=2)
    sweeper = world.sweeper()
    with closing(world.inbound()) as conn:
        extra = tasks.run_now(conn, series, T0)
    world.run_occurrence(sweeper, extra, utc("2026-05-18T12:00:01"))
    assert _content(world.live(series)[0])["count"] == 2
    world.run_occurrence(sweeper, series, utc("2026-05-18T13:00:01"), outcome="failed")
    last = world.live(series)[0]
    world.run_occurrence(sweeper, last["id"], utc("2026-05-19T13:00:01"), outcome="skipped")
    assert world.live(series) == [] and _content(world.rows(series)[-1])["ended"] == "count"


class TestMissedSlotsCount:
    """Every hour, count 3 from 12:00 (slots 12:00, 13:00, 14:00); the host was down, grace 1 h."""

    def test_back_within_grace_of_the_last_allowed_slot_runs_it_as_the_last(self, world: World) -> None:
        series = world.schedule(T0, recurrence="every 1h", at=to_text(T0), count=3)
        sweeper = world.sweeper()
        result = sweeper.tick(utc("2026-05-18T14:40:00"))
        assert (result.woken, result.missed) == (1, 1)
        [live] = world.live(series)
        assert live["process_after"] == "2026-05-18T14:00:00.000Z" and _content(live)["count"] == 1
        assert json.loads(world.runs(series)[0]["detail"])["slots"] == 2
        world.run_occurrence(sweeper, live["id"], utc("2026-05-18T14:41:00"))
        assert world.live(series) == [] and _content(world.rows(series)[-1])["ended"] == "count"

    def test_back_long_after_ends_the_series_with_its_slots_missed(self, world: World) -> None:
        series = world.schedule(T0, recurrence="every 1h", at=to_text(T0), count=3)
        result = world.sweeper().tick(utc("2026-05-18T19:30:00"))  # slots up to 19:00 passed, the last allowed 14:00
        assert (result.woken, result.missed, result.cloned) == (0, 1, 0)
        assert json.loads(world.runs(series)[0]["detail"])["slots"] == 3  # the series' three, not the six passed
        assert world.live(series) == [] and _content(world.rows(series)[-1])["ended"] == "count"

    def test_until_passed_while_down_ends_it_too(self, world: World) -> None:
        series = world.schedule(T0, recurrence="every 1h", at=to_text(T0), until="2026-05-18T13:30:00.000Z")
        world.sweeper().tick(utc("2026-05-18T18:00:00"))
        assert json.loads(world.runs(series)[0]["detail"])["slots"] == 2
        assert world.live(series) == [] and _content(world.rows(series)[-1])["ended"] == "until"


def test_update_sets_changes_and_clears_the_end(world: World) -> None:
    series = world.schedule(T0, recurrence=DAILY)
    folder = world.session.folder
    with closing(world.inbound()) as conn:
        tasks.update(conn, series, T0, world.policy, count=2, until="2026-06-01T00:00:00.000Z", folder=folder)
        assert task_list.summary(world.session, series).runs_left == 2
        tasks.update(conn, series, T0, world.policy, count="", folder=folder)
        item = task_list.summary(world.session, series)
        assert (item.runs_left, item.until) == (14, "2026-06-01T00:00:00.000Z")  # May 18 to 31, by until
        tasks.update(conn, series, T0, world.policy, until="", count=1, folder=folder)
    assert {k: v for k, v in _content(world.rows(series)[0]).items() if k in ("until", "count")} == {"count": 1}
    assert len(_fire_all(world, series)) == 1


def test_count_given_while_a_run_is_under_way_counts_from_the_next(world: World) -> None:
    series = world.schedule(T0, recurrence=DAILY)
    with closing(world.inbound()) as conn:
        conn.execute("UPDATE messages_in SET status = 'processing' WHERE id = ?", (series,))
        tasks.update(conn, series, T0, world.policy, count=2, folder=world.session.folder)
    world.run_occurrence(world.sweeper(), series, utc("2026-05-18T13:00:05"))
    assert _content(world.live(series)[0])["count"] == 2
    assert len(_fire_all(world, series)) == 2


def test_pausing_the_last_run_while_it_runs_makes_no_paused_clone(world: World) -> None:
    series = world.schedule(T0, recurrence=DAILY, count=1)
    with closing(world.inbound()) as conn:
        conn.execute("UPDATE messages_in SET status = 'processing' WHERE id = ?", (series,))
        assert tasks.pause(conn, series, T0, world.policy, folder=world.session.folder) == 0
    world.run_occurrence(world.sweeper(), series, utc("2026-05-18T13:00:05"))
    assert [r["status"] for r in world.rows(series)] == ["completed"]


@pytest.mark.parametrize(("kw", "says"), [
    ({"count": 0}, "from 1 to"), ({"count": "x"}, "whole number"), ({"count": True}, "whole number"),
    ({"until": "2026-05-18T11:00:00.000Z"}, "already passed"),
    ({"until": "2026-05-18T12:30:00.000Z"}, "before the next run at 2026-05-18T13:00:00Z"),
    ({"count": 2, "recurrence": None}, "recurring"),
])
def test_a_bad_end_is_refused_in_one_line(world: World, kw: dict[str, Any], says: str) -> None:
    recurrence = kw.pop("recurrence", DAILY)
    with pytest.raises(NclError) as refused:
        world.schedule(T0, recurrence=recurrence, **kw)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert world.rows() == []


def test_sqlite3_reads_what_is_left_on_the_live_row(world: World) -> None:
    series = world.schedule(T0, recurrence=DAILY, count=3, until="2026-12-31T00:00:00.000Z")
    _fire_all(world, series, limit=1)
    with closing(world.inbound()) as conn:
        found = conn.execute("SELECT json_extract(content, '$.count'), json_extract(content, '$.until')"
                             " FROM messages_in WHERE series_id = ? AND recurrence IS NOT NULL", (series,)).fetchone()
    assert tuple(found) == (2, "2026-12-31T00:00:00.000Z")


# --- the agent's tools ------------------------------------------------------------------------------------------

@pytest.fixture
def tools(world: World) -> Tools:
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    return Tools(config, Store(config), lambda: T0)


def test_the_tool_takes_count_and_until_and_the_host_applies_them(tools: Tools, world: World) -> None:
    answer = tools.call("schedule_task", {"prompt": "water the plants", "recurrence": DAILY, "count": 2})
    assert answer.endswith("next runs: Mon 2026-05-18 09:00:00 EDT, Tue 2026-05-19 09:00:00 EDT (America/New_York)"
                           "; ends: 2 runs in all)"), answer
    answer = tools.call("schedule_task", {"prompt": "launch countdown", "recurrence": DAILY,
                                          "until": "2026-05-19T10:00:00"})
    assert "ends: none after Tue 2026-05-19 10:00:00 EDT" in answer
    staged = world.turn_ends(T0)
    assert (staged[0]["count"], staged[1]["until"]) == (2, "2026-05-19T14:00:00.000Z")
    assert world.sweeper().tick(T0).applied == 2
    assert [(_content(r).get("count"), _content(r).get("until")) for r in world.rows()] == [
        (2, None), (None, "2026-05-19T14:00:00.000Z")]


def test_update_task_changes_the_end(tools: Tools, world: World) -> None:
    task = world.schedule(T0, recurrence=DAILY)
    assert tools.call("update_task", {"taskId": task, "count": 5}) == f"Task {task} updated; ends: 5 runs in all"
    tools.call("update_task", {"taskId": task, "until": "", "count": ""})
    with closing(world.outbound()) as conn:
        staged = [json.loads(r[0]) for r in conn.execute("SELECT content FROM staged_requests ORDER BY rowid")]
    assert staged == [{"action": "update_task", "taskId": task, "count": 5},
                      {"action": "update_task", "taskId": task, "until": "", "count": ""}]


@pytest.mark.parametrize(("arguments", "says"), [
    ({"recurrence": DAILY, "count": 0}, "from 1 to"), ({"recurrence": DAILY, "count": "many"}, "whole number"),
    ({"recurrence": DAILY, "until": "2026-05-18T07:00:00"}, "already passed"),
    ({"recurrence": DAILY, "until": "2026-05-18T08:30:00"}, "before the next run"),
    ({"count": 3}, "give recurrence too"), ({"recurrence": DAILY, "until": "soon"}, "soon"),
])
def test_the_tool_refuses_a_bad_end_in_one_line(tools: Tools, arguments: dict[str, Any], says: str) -> None:
    with pytest.raises(ToolError) as refused:
        tools.call("schedule_task", {"prompt": "x", **arguments})
    assert says in str(refused.value) and "\n" not in str(refused.value)


# --- the CLI ----------------------------------------------------------------------------------------------------

def test_cli_adds_with_an_end_and_show_says_what_is_left(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--recurrence", DAILY, "--count", "2", "--until", "2027-01-01T09:00:00",
               "--now", "2026-05-18T08:00:00")
    assert (item["runs_left"], item["until"], item["ended"]) == (2, "2027-01-01T14:00:00.000Z", None)
    assert show(cli, item["id"])["next_runs"] == ["2026-05-18T13:00:00.000Z", "2026-05-19T13:00:00.000Z"]
    shown = ok(cli("tasks", "show", item["id"])).out
    assert "ends:       2 runs left, until 2027-01-01 09:00:00 EST" in shown, shown
    for local, at in (("2026-05-18T09:00:01", "2026-05-18T13:00:01.000Z"),
                      ("2026-05-19T09:00:01", "2026-05-19T13:00:01.000Z")):
        live = next(r for r in inbox_rows(session) if r["status"] == "pending")
        ack(session, live["id"], "completed", at)
        sweep(cli, local)
    ended = show(cli, item["id"])
    assert (ended["task"]["status"], ended["task"]["ended"], ended["next_runs"]) == ("completed", "count", [])
    assert "ends:       ended: its count was reached" in ok(cli("tasks", "show", item["id"])).out
    ok(cli("tasks", "update", add(cli, session, "--recurrence", DAILY, "--now", "2026-05-18T08:00:00",
                                  prompt="other")["id"], "--count", "4", "--now", "2026-05-18T08:00:00"))
    assert [r["runs_left"] for r in ok(cli("tasks", "list", "--json")).json()["tasks"]] == [4]


@pytest.mark.parametrize(("args", "says"), [
    (("--recurrence", DAILY, "--count", "0"), "from 1 to"), (("--recurrence", DAILY, "--count", "two"), "whole"),
    (("--recurrence", DAILY, "--until", "2026-05-17T09:00:00"), "already passed"),
    (("--count", "2",), "recurring"), (("--recurrence", DAILY, "--count", ""), "take a value"),
])
def test_cli_refuses_a_bad_end_in_one_line(cli: Ncl, session: dict[str, Any], args: tuple[str, ...],
                                            says: str) -> None:
    error = one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", "--now",
                               "2026-05-18T08:00:00", *args))
    assert says in error, error
