"""What the scheduling tools answer (issue 15.4 and 15.6): times with seconds and the zone they are in; a pause of a
paused task says it is already paused and a resume of one that is not says what it is doing, whether the earlier
request was applied by the host or is still this turn's."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from kit import World, runner_tools

from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.scheduling import tasks
from schemas.rows import MAX_REQUEST_CHARS
from schemas.times import from_text

NOW = from_text("2026-06-11T13:00:00.000Z")  # Thursday 09:00:00 EDT
NEXT = "Fri 2026-06-12 09:00:00 EDT (America/New_York)"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def tools(world: World) -> Tools:
    return runner_tools(world, NOW)


def test_schedule_and_update_answers_show_seconds_and_the_zone(tools: Tools, world: World) -> None:
    answer = tools.call("schedule_task", {"prompt": "standup", "processAfter": "2026-06-11T09:30:15"})
    assert answer.endswith("next runs: Thu 2026-06-11 09:30:15 EDT (America/New_York))"), answer
    task = world.schedule(NOW, recurrence="0 9 * * *")
    answer = tools.call("update_task", {"taskId": task, "recurrence": "30 8 * * *"})
    assert answer == (f"Task {task} updated (next runs: Fri 2026-06-12 08:30:00 EDT, Sat 2026-06-13 08:30:00 EDT, "
                      "Sun 2026-06-14 08:30:00 EDT (America/New_York))")


def test_the_first_slot_the_tool_announces_is_the_one_the_host_stores(world: World) -> None:
    """Asked at 09:59:50 for an hourly task, applied by the host at 10:00:20 when the turn ends: it runs at 10:00, as
    the tool said (the host worked the first slot out again from its own clock: 11:00)."""
    asked = from_text("2026-06-11T13:59:50.000Z")
    answer = runner_tools(world, asked).call("schedule_task", {"prompt": "check the queue", "recurrence": "0 * * * *"})
    assert "next runs: Thu 2026-06-11 10:00:00 EDT, Thu 2026-06-11 11:00:00 EDT" in answer, answer
    [request] = world.turn_ends(asked)
    assert "processAfter" not in request  # worked out by the host from when it was asked, as the tool did
    assert world.sweeper().tick(asked + timedelta(seconds=30)).applied == 1
    [row] = world.rows()
    assert row["process_after"] == "2026-06-11T14:00:00.000Z" and row["recurrence"] == "0 * * * *"


def test_the_next_slot_an_update_announces_is_the_one_the_host_stores(world: World) -> None:
    """The same for a new recurrence given by ``update_task``: asked at 09:59:50, it runs at 10:00 (the host worked
    it out again when it applied the request at 10:00:20: 11:00)."""
    asked = from_text("2026-06-11T13:59:50.000Z")
    task = world.schedule(NOW, recurrence="0 7 * * *")
    answer = runner_tools(world, asked).call("update_task", {"taskId": task, "recurrence": "0 * * * *"})
    assert "next runs: Thu 2026-06-11 10:00:00 EDT, Thu 2026-06-11 11:00:00 EDT" in answer, answer
    [request] = world.turn_ends(asked)
    assert "processAfter" not in request
    assert world.sweeper().tick(asked + timedelta(seconds=30)).applied == 1
    [row] = world.live(task)
    assert row["process_after"] == "2026-06-11T14:00:00.000Z" and row["recurrence"] == "0 * * * *"


def test_a_request_asked_longer_ago_than_the_grace_starts_from_when_it_is_applied(world: World) -> None:
    """(A first slot sent as such was refused by a host applying it past the grace: with NCL_MISFIRE_GRACE_S=0, at
    once; its time is the runner's to write, so one outside the grace, or no time at all, counts as now.)"""
    asked = from_text("2026-06-11T13:59:50.000Z")
    for stamp, suffix in (("2026-06-11T11:00:00.000Z", "aaaaaa"), ("yesterday", "bbbbbb")):
        world.request(asked, {"action": "schedule_task", "taskId": f"task-1781186390000-{suffix}",
                              "prompt": f"asked {stamp}", "recurrence": "0 * * * *"})
        with closing(world.outbound()) as conn:
            conn.execute("PRAGMA ignore_check_constraints=ON")  # (as a runner may)
            conn.execute("UPDATE messages_out SET timestamp = ? WHERE seq = (SELECT max(seq) FROM messages_out)",
                         (stamp,))
            conn.commit()
    assert world.sweeper().tick(asked + timedelta(seconds=30)).applied == 2
    assert [r["process_after"] for r in world.rows()] == ["2026-06-11T15:00:00.000Z"] * 2


def test_a_recurring_tasks_first_run_in_the_past_is_said_as_the_host_will_do_it(tools: Tools, world: World) -> None:
    """Within the misfire grace it runs at once, then from the next slot; longer ago the tool refuses it, as the host
    would (it answered "scheduled", and the host then rejected it)."""
    answer = tools.call("schedule_task", {"prompt": "water", "recurrence": "0 7 * * *",
                                          "processAfter": "2026-06-11T08:30:00"})
    assert answer.endswith("next runs: Thu 2026-06-11 09:00:00 EDT, Fri 2026-06-12 07:00:00 EDT, Sat 2026-06-13 "
                           "07:00:00 EDT (America/New_York; the time given has passed))"), answer
    with pytest.raises(ToolError, match=r"^the first run at 2026-06-11T11:59:59.000Z is more than 3600 s ago: a "
                                        r"recurring task would count every slot since as missed"):
        tools.call("schedule_task", {"prompt": "feed", "recurrence": "0 7 * * *",
                                     "processAfter": "2026-06-11T07:59:59"})
    assert [r["processAfter"] for r in world.turn_ends(NOW)] == ["2026-06-11T12:30:00.000Z"]
    assert world.sweeper().tick(NOW).applied == 1 and world.notices() == []
    [row] = world.rows()
    assert row["process_after"] == "2026-06-11T12:30:00.000Z"


@pytest.mark.parametrize(("count", "shown", "left"), [
    (None, ", Thu 2026-06-11 09:05:00 EDT, Thu 2026-06-11 09:15:00 EDT", None), (3, "", 1)])
def test_slots_between_a_past_start_and_now_are_said_as_the_host_counts_them(
        tools: Tools, world: World, count: int | None, shown: str, left: int | None) -> None:
    """Every 10 minutes from 08:25, asked at 09:00: the host runs it now and counts 08:25, 08:35 and 08:45 as missed
    (of a count of 3, the first two: the third run is now). The tool said three runs to come."""
    answer = tools.call("schedule_task", {"prompt": "poll", "interval_ms": 600_000, "count": count,
                                          "processAfter": "2026-06-11T08:25:00"} if count else
                        {"prompt": "poll", "interval_ms": 600_000, "processAfter": "2026-06-11T08:25:00"})
    missed = 2 if count else 3
    assert f"next runs: Thu 2026-06-11 09:00:00 EDT{shown} (America/New_York; the time given has passed; {missed} " \
           "slots since then counted as missed)" in answer, answer
    world.turn_ends(NOW)
    sweeper = world.sweeper()
    assert sweeper.tick(NOW).applied == 1 and sweeper.tick(NOW).missed == 1  # (applied, then due: the misfire rule)
    [run] = [r for r in world.runs(world.rows()[0]["series_id"]) if r["outcome"] == "missed"]
    assert json.loads(run["detail"])["slots"] == missed
    assert json.loads(world.rows()[0]["content"]).get("count") == left


def test_a_second_pause_in_the_same_turn_says_already_paused(tools: Tools, world: World) -> None:
    task = world.schedule(NOW, recurrence="0 9 * * *")
    assert tools.call("pause_task", {"taskId": task}) == f"Task {task}: pause requested; its next run waits: {NEXT}"
    with pytest.raises(ToolError, match=rf"^task {task} is already paused \(resume_task resumes it\)$"):
        tools.call("pause_task", {"taskId": task})
    assert tools.call("resume_task", {"taskId": task}) == f"Task {task}: resume requested; next run: {NEXT}"


def test_pause_of_a_paused_task_and_resume_of_a_waiting_one_say_so(tools: Tools, world: World) -> None:
    task = world.schedule(NOW, recurrence="0 9 * * *")
    with pytest.raises(ToolError) as refused:
        tools.call("resume_task", {"taskId": task})
    assert str(refused.value) == f"task {task} is not paused: it is waiting for its next run: {NEXT}"
    with closing(world.inbound()) as conn:  # the host applied an earlier pause
        tasks.pause(conn, task, NOW, world.policy, folder=world.session.folder)
    with pytest.raises(ToolError, match=rf"^task {task} is already paused"):
        tools.call("pause_task", {"taskId": task})


def test_the_hosts_rejection_of_a_repeated_pause_says_already_paused(world: World) -> None:
    task = world.schedule(NOW, recurrence="0 9 * * *")
    world.request(NOW, {"action": "pause_task", "taskId": task})
    world.request(NOW, {"action": "pause_task", "taskId": task})  # asked twice before the host applied either
    assert world.sweeper().tick(NOW).applied == 1
    [notice] = world.notices()
    assert notice["text"] == f"Your pause_task request was rejected: task {task} is already paused"


def test_a_request_longer_than_the_host_reads_is_refused_by_the_tool(tools: Tools) -> None:
    """The host refuses a request over ``rows.MAX_REQUEST_CHARS`` (tests/security/test_outbound_bounds.py): the tool
    says so at once."""
    with pytest.raises(ToolError, match=r"^the request is \d+ characters long, over the 65536 a request may be: "
                                        r"shorten the prompt or the script$"):
        tools.call("schedule_task", {"prompt": "p" * 70_000, "processAfter": "2026-06-11T09:30:15"})
    assert tools.call("schedule_task", {"prompt": "p" * 60_000, "processAfter": "2026-06-11T09:30:15"}).startswith(
        "Task scheduled")



def test_whatever_the_tool_takes_the_host_reads(tools: Tools, world: World) -> None:
    """Measured as stored (JSON with a space after each colon and comma, non-ASCII escaped), not as the request's
    compact text: one just under the limit there was taken by the tool and refused by the host (second attack
    review). The longest prompt the tool takes makes a stored request within the limit."""
    low, high = 60_000, MAX_REQUEST_CHARS  # taken, refused
    while high - low > 1:
        middle = (low + high) // 2
        try:
            tools.call("schedule_task", {"prompt": "p" * middle, "processAfter": "2026-06-11T09:30:15"})
            low = middle
        except ToolError:
            high = middle
    with closing(world.outbound()) as conn:
        stored = [len(row[0]) for row in conn.execute("SELECT content FROM staged_requests")]
    assert stored and max(stored) <= MAX_REQUEST_CHARS and max(stored) >= MAX_REQUEST_CHARS - 10
