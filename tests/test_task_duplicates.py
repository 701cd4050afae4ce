"""No accidental duplicates (issue 16.5): an agent's ``schedule_task`` that repeats a live series of its session (the
same prompt, recurrence and script; a one-off also at the same time) answers with the existing series' id and a note,
and asks the host for nothing; whether the series was applied by the host or only requested earlier in this turn.
An operator's ``ncl tasks add`` of such a series is refused in one line naming it, unless ``--force``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit import World, runner_tools
from processes import Env

from agent_runner.tools import Tools
from schemas.times import from_text

NOW = from_text("2026-06-11T13:00:00.000Z")  # Thursday 09:00:00 EDT


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def tools(world: World) -> Tools:
    return runner_tools(world, NOW)


def requested(tools: Tools) -> list[str]:
    return [r["taskId"] for r in tools.store.tasks_and_requests()[1] if r.get("action") == "schedule_task"]


def test_a_live_series_is_not_scheduled_twice(tools: Tools, world: World) -> None:
    task = world.schedule(NOW, prompt="standup", recurrence="0 9 * * 1-5")
    answer = tools.call("schedule_task", {"prompt": "standup", "recurrence": "0 9 * * 1-5"})
    assert answer == (f"Task already scheduled (id: {task}): a live task of this conversation has the same prompt, "
                      "recurrence and script; nothing new was scheduled (next run: Fri 2026-06-12 09:00:00 EDT "
                      "(America/New_York))")
    assert requested(tools) == []


def test_twice_in_one_turn_is_one_request(tools: Tools) -> None:
    first = tools.call("schedule_task", {"prompt": "water the plants", "recurrence": "0 18 * * *"})
    [task] = requested(tools)
    assert task in first
    again = tools.call("schedule_task", {"prompt": "water the plants", "recurrence": "0 18 * * *"})
    assert again.startswith(f"Task already scheduled (id: {task}): ") and requested(tools) == [task]


@pytest.mark.parametrize("other", [
    {"prompt": "standup!", "recurrence": "0 9 * * 1-5"},  # another prompt
    {"prompt": "standup", "recurrence": "0 10 * * 1-5"},  # another recurrence
    {"prompt": "standup", "recurrence": "0 9 * * 1-5", "script": "exit 0"},  # with a gate script
    {"prompt": "standup"},  # a one-off
])
def test_anything_different_is_a_new_series(tools: Tools, world: World, other: dict[str, str]) -> None:
    world.schedule(NOW, prompt="standup", recurrence="0 9 * * 1-5")
    assert tools.call("schedule_task", other).startswith("Task scheduled (id: ")
    assert len(requested(tools)) == 1


def test_a_one_off_repeats_only_at_the_same_time(tools: Tools) -> None:
    tools.call("schedule_task", {"prompt": "call mum", "processAfter": "2026-06-11T15:00:00"})
    assert tools.call("schedule_task", {"prompt": "call mum", "processAfter": "2026-06-11T15:00:00"}).startswith(
        "Task already scheduled")
    assert tools.call("schedule_task", {"prompt": "call mum", "processAfter": "2026-06-11T17:00:00"}).startswith(
        "Task scheduled")
    assert len(requested(tools)) == 2


def test_a_cancelled_or_ended_series_does_not_count(tools: Tools, world: World) -> None:
    task = world.schedule(NOW, prompt="standup", recurrence="0 9 * * 1-5")
    tools.call("cancel_task", {"taskId": task})  # requested this turn: the series is as good as gone
    assert tools.call("schedule_task", {"prompt": "standup", "recurrence": "0 9 * * 1-5"}).startswith(
        "Task scheduled (id: ")


def test_a_paused_duplicate_says_it_is_paused(tools: Tools, world: World) -> None:
    task = world.schedule(NOW, prompt="standup", recurrence="0 9 * * 1-5")
    tools.call("pause_task", {"taskId": task})
    assert tools.call("schedule_task", {"prompt": "standup", "recurrence": "0 9 * * 1-5"}).endswith(
        f"(id: {task}): a live task of this conversation has the same prompt, recurrence and script; nothing new was "
        "scheduled (it is paused: resume_task resumes it)")


def test_the_operators_duplicate_is_refused_unless_forced(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    add = ("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence", "0 9 * * 1-5", "--json")
    first = json.loads(env.ok(*add))["id"]
    refused = env.ncl(*add)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (f"ncl: task {first} in this session already has this prompt, recurrence and "
                              "script (--force adds another)\n")
    assert json.loads(env.ok(*add, "--force"))["id"] != first
    env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--at", "2030-01-01T09:00:00")
    env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--at", "2030-01-02T09:00:00")  # another day
    assert env.ncl("tasks", "add", "--session", session, "--prompt", "standup", "--at",
                   "2030-01-01T09:00:00").returncode == 1
    env.ok("tasks", "cancel", first)
    assert len(json.loads(env.ok("tasks", "list", "--json"))["tasks"]) == 3  # the forced one and the two one-offs
