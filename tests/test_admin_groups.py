"""Issue 16.3, the admin group: the operator marks groups admin (``ncl groups create|update --admin``, central.db
``agent_groups.admin``, a central migration), and only their agents' task tools may act on another group's tasks.
The host decides from central.db, never from what a runner writes: a forged request is refused like any other."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok, one_line_error
from kit import World, answered
from schema_kit import open_plain

from agent_runner import group_tools
from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.project_tasks import specs as scheduled
from host.scheduling import tasks
from host.store import db, groups, sessions, task_ids
from host.store.sessions import Session
from schemas.ddl import MIGRATIONS, latest_version
from schemas.times import from_text

# --- the mark: central.db and the CLI ----------------------------------------------------------------------------


def test_a_central_db_of_v5_migrates_with_every_group_not_admin(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    with closing(open_plain(path)) as conn:
        for step in MIGRATIONS["central"][:5]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version=5")
        conn.execute("INSERT INTO agent_groups(id, name, created_at) VALUES ('ag-old', 'old', "
                     "'2026-01-01T00:00:00.000Z')")
    with closing(db.connect(path, "central")) as conn:
        assert db.version(conn) == latest_version("central")
        assert [tuple(r) for r in conn.execute("SELECT id, admin FROM agent_groups")] == [("ag-old", 0)]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE agent_groups SET admin = 2")


def test_groups_create_and_update_mark_admin_groups(ncl: Ncl) -> None:
    plain = ok(ncl("groups", "create", "team", "--channel", "cli", "--json")).json()
    assert plain["admin"] is False
    boss = ok(ncl("groups", "create", "ops", "--channel", "queue:ops", "--admin", "--json")).json()
    assert boss["admin"] is True
    assert "created admin group ops" in ok(ncl("groups", "create", "ops2", "--admin")).out

    listed = {g["name"]: g["admin"] for g in ok(ncl("groups", "list", "--json")).json()["groups"]}
    assert listed == {"team": False, "ops": True, "ops2": True}
    table = ok(ncl("groups", "list")).out.splitlines()
    assert table[0].split()[:5] == ["ID", "NAME", "CHANNELS", "MODE", "ADMIN"]
    assert [line.split()[4] for line in table[1:]] == ["yes", "yes", "no"]  # ops, ops2, team (by name)

    assert ok(ncl("groups", "update", "team", "--admin", "--json")).json()["admin"] is True
    assert "admin no" in ok(ncl("groups", "update", "ops", "--no-admin")).out
    assert ok(ncl("groups", "show", "ops", "--json")).json()["admin"] is False
    assert "admin" in ok(ncl("groups", "show", "team")).out
    ok(ncl("groups", "update", "team", "--no-admin"))
    ok(ncl("groups", "update", "ops2", "--no-admin"))
    assert "ADMIN" not in ok(ncl("groups", "list")).out  # the column only when a group is admin


def test_groups_update_with_nothing_names_admin(ncl: Ncl) -> None:
    """A usage error (exit 2, DESIGN §12.11), as ``tasks update`` with nothing to change (attack review: exit 1)."""
    ok(ncl("groups", "create", "team"))
    nothing = ncl("groups", "update", "team")
    assert "--admin/--no-admin" in one_line_error(nothing) and nothing.code == 2


# --- the host: requests naming a group, written as a (possibly hostile) runner writes them ---------------------------

NOW = from_text("2026-06-11T13:00:00.000Z")  # Thursday 09:00:00 EDT


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Group demo (not admin) with a session; group ops, admin, with one; group quiet, with no session."""
    world = World(tmp_path)
    world.ops_group, _ = groups.create(world.central, world.settings, NOW, "ops", ["cli"], admin=True)  # type: ignore[attr-defined]
    world.ops = sessions.create(world.central, world.settings, NOW, world.ops_group, None)  # type: ignore[attr-defined]
    groups.create(world.central, world.settings, NOW, "quiet", [])
    return world


def ops(world: World) -> Session:
    return world.ops  # type: ignore[attr-defined,no-any-return]


NOT_ADMIN = ("only an admin group's agents may act on another group's tasks, and group 'demo' is not one (the "
             "operator marks admin groups with 'ncl groups update NAME --admin')")


@pytest.mark.parametrize("request_", [
    {"action": "list_tasks", "group": "ops"},
    {"action": "schedule_task", "taskId": "task-1781182800000-abcdef", "prompt": "hi", "group": "ops"},
    {"action": "pause_task", "taskId": "task-1781182800000-abcdef", "group": "ops"},
    {"action": "list_tasks", "group": "no-such-group"},  # a non-admin learns nothing of which groups exist
])
def test_a_group_that_is_not_admin_is_refused_whatever_it_writes(world: World, request_: dict[str, Any]) -> None:
    task = world.schedule(NOW, prompt="ops standup", recurrence="0 9 * * *", session=ops(world))
    if "taskId" in request_ and request_["action"] != "schedule_task":
        request_ = {**request_, "taskId": task}
    before = world.rows(session=ops(world))
    assert answered(world, request_, world.session) == ("rejected", NOT_ADMIN)
    assert world.rows(session=ops(world)) == before  # nothing changed in the other group
    assert world.notices() == []  # the tool that asked says it; no notice on top


@pytest.mark.parametrize("forged", [
    {"action": "list_tasks", "group": "ops", "admin": True},  # a claim to be admin: not a field, refused
    {"action": "list_tasks", "group": "ops", "session": "anything"},
])
def test_a_forged_claim_in_the_request_is_refused(world: World, forged: dict[str, Any]) -> None:
    status, detail = answered(world, forged, world.session)
    assert status == "rejected" and detail.startswith("invalid request: ") and "Extra inputs" in detail


def test_the_mark_is_read_at_each_request(world: World) -> None:
    groups.update(world.central, groups.get(world.central, "demo"), admin=True)
    listed = answered(world, {"action": "list_tasks", "group": "ops"}, world.session)
    assert listed == ("applied", "No tasks in group ops.")
    groups.update(world.central, groups.get(world.central, "demo"), admin=False)
    assert answered(world, {"action": "list_tasks", "group": "ops"}, world.session) == ("rejected", NOT_ADMIN)


@pytest.mark.parametrize(("request_", "problem"), [
    ({"action": "list_tasks", "group": "nope"}, "unknown group 'nope'"),
    ({"action": "schedule_task", "taskId": "task-1781182800000-abcdef", "prompt": "hi", "group": "quiet"},
     "group quiet has no active session to schedule into (the operator starts one with 'ncl sessions create "
     "--group quiet')"),
    ({"action": "pause_task", "taskId": "task-1781182800000-zzzzzz", "group": "demo"},
     "no task 'task-1781182800000-zzzzzz' in group demo (list_tasks with group 'demo' lists them)"),
    ({"action": "list_tasks", "group": "x" * 65}, "invalid request: "),
    ({"action": "list_tasks", "group": ""}, "invalid request: "),
    ({"action": "list_tasks", "group": "demo", "status": "done"}, "invalid request: "),
    ({"action": "list_tasks"}, "invalid request: "),
    ({"action": "schedule_task", "taskId": "task-1781182800000-abcdef", "prompt": "hi", "group": "demo",
      "recurrence": "* * * * *"}, "recurrence '* * * * *' runs 60 s apart"),
])
def test_an_admin_is_refused_clearly(world: World, request_: dict[str, Any], problem: str) -> None:
    status, detail = answered(world, request_, ops(world))
    assert status == "rejected" and detail.startswith(problem), detail
    assert world.rows() == []  # nothing written in demo's session


def test_an_admin_lists_another_groups_tasks_with_labels(world: World, tmp_path: Path) -> None:
    task = world.schedule(NOW, prompt="post the\nstandup " + "x" * 100, recurrence="0 9 * * 1-5")
    paused = world.schedule(NOW, prompt="weekly report", recurrence="0 17 * * 5")
    with closing(world.inbound()) as conn:
        tasks.pause(conn, paused, NOW, world.policy, folder=world.session.folder)
    world.schedule(NOW, prompt="ops own", session=ops(world))
    groups.create(world.central, world.settings, NOW, "jobs", ["queue:jobs"])
    zone = world.settings.tz.zone
    for name, target in [("to-demo", "queue:\n  name: demo-q\n  payload: {prompt: go}"),
                         ("to-jobs", "queue:\n  name: jobs\n  payload: {prompt: go}"),
                         ("backup", "host:\n  command: /bin/true")]:
        if name == "to-demo":
            world.central.execute("INSERT INTO wirings(channel, agent_group_id, position, created_at)"
                                  " VALUES ('queue:demo-q', 'ag-demo', 1, '2026-01-01T00:00:00.000Z')")
        spec = scheduled.parse(f"version: v1\nkind: ScheduledTask\nname: {name}\nschedule: '0 3 * * *'\n{target}\n",
                               name, tmp_path)
        scheduled.add(world.central, spec, f"sched-{name}", NOW, zone)
    status, listing = answered(world, {"action": "list_tasks", "group": "demo"}, ops(world))
    assert status == "applied"
    lines = listing.splitlines()
    assert lines[0] == (f"[agent] group demo {task} [pending] 0 9 * * 1-5 next: Fri 2026-06-12 09:00:00 EDT session "
                        f"{world.session.id} :: post the standup {'x' * 62}…")
    assert lines[1].startswith(f"[agent] group demo {paused} [paused] 0 17 * * 5 next: - session")
    assert lines[2:] == [  # project tasks as 'scheduled-task list' orders them; to-jobs goes to another group
        "[host] group - sched-backup [active] 0 3 * * * host next: Fri 2026-06-12 03:00:00 EDT :: backup",
        "[project] group demo sched-to-demo [active] 0 3 * * * queue next: Fri 2026-06-12 03:00:00 EDT :: to-demo"]
    paused_only = answered(world, {"action": "list_tasks", "group": "demo", "status": "paused"}, ops(world))[1]
    assert [line.split()[3] for line in paused_only.splitlines()] == [paused]
    own = answered(world, {"action": "list_tasks", "group": "ops"}, ops(world))[1]  # its own: this conversation
    assert own.startswith("[agent] group ops ") and "ops own" in own


def test_an_admin_schedules_and_controls_another_groups_tasks(world: World) -> None:
    newer = world.new_session()
    sessions.touch(world.central, newer.id, NOW)  # the group's most recently active session
    wanted = "task-1781182800000-abcdef"
    status, said = answered(world, {"action": "schedule_task", "taskId": wanted, "prompt": "check the backups",
                                    "recurrence": "0 8 * * *", "group": "demo"}, ops(world))
    assert (status, said) == ("applied", f"Task scheduled in group demo (id: {wanted}, session {newer.id})")
    [row] = world.rows(session=newer)[:1]
    assert (row["id"], row["recurrence"], json.loads(row["content"])["prompt"]) == (wanted, "0 8 * * *",
                                                                                   "check the backups")
    assert task_ids.lookup(world.central, wanted) == ("ag-demo", newer.id)
    notices = [json.loads(r["content"]) for r in world.rows(session=newer) if r["kind"] == "chat"]
    assert [(n["notice"], n["text"]) for n in notices] == [("admin_request",
                                                            f"The admin group ops scheduled task {wanted} here.")]

    for action, verb, state in [("pause_task", "paused", "paused"), ("resume_task", "resumed", "pending")]:
        assert answered(world, {"action": action, "taskId": wanted, "group": "ag-demo"}, ops(world)) == (
            "applied", f"Task {wanted} of group demo: {verb}")
        assert [r["status"] for r in world.rows(wanted, newer)] == [state]
    assert answered(world, {"action": "resume_task", "taskId": wanted, "group": "demo"}, ops(world)) == (
        "rejected", f"task {wanted} is not paused: it is waiting for its next run")
    assert answered(world, {"action": "update_task", "taskId": wanted, "prompt": "check twice", "group": "demo"},
                    ops(world))[0] == "applied"
    assert json.loads(world.rows(wanted, newer)[0]["content"])["prompt"] == "check twice"
    assert answered(world, {"action": "cancel_task", "taskId": wanted, "group": "demo"}, ops(world)) == (
        "applied", f"Task {wanted} of group demo: cancelled")
    assert world.rows(wanted, newer)[0]["status"] == "completed"
    # A task of group demo is not found under another group's name.
    assert answered(world, {"action": "cancel_task", "taskId": wanted, "group": "ops"}, ops(world))[1].startswith(
        f"no task {wanted!r} in group ops")


# --- the runner's tools: a call naming a group is answered by the host within a bounded wait ------------------------


def tools_of(world: World, session: Session, host: bool = True) -> tuple[Tools, list[float]]:
    """Tools of ``session``'s runner whose waits for an answer run one sweep (``host``) or nothing (no host)."""
    config = RunnerConfig(session_dir=session.folder, generation="gen-test", tz="America/New_York")
    waits: list[float] = []

    def pause(seconds: float) -> None:
        waits.append(seconds)
        if host:
            world.sweeper().tick(NOW)

    return Tools(config, Store(config), lambda: NOW, pause=pause), waits


def test_an_admin_agent_lists_schedules_and_pauses_in_another_group(world: World) -> None:
    tools, waits = tools_of(world, ops(world))
    assert tools.call("list_tasks", {"group": "demo"}) == "No tasks in group demo."
    said = tools.call("schedule_task", {"prompt": "rotate the logs", "interval_ms": 3_600_000, "group": "demo"})
    task = said.split("id: ")[1].split(",")[0]
    assert said == f"Task scheduled in group demo (id: {task}, session {world.session.id})"
    assert world.live(task)[0]["recurrence"] == "every 1h"
    assert tools.call("list_tasks", {"group": "demo"}).startswith(f"[agent] group demo {task} [pending] every 1h ")
    assert tools.call("pause_task", {"taskId": task, "group": "demo"}) == f"Task {task} of group demo: paused"
    assert tools.call("list_tasks", {}) == "No tasks."  # its own conversation: none of demo's
    assert len(waits) == 4  # one sweep answered each call


def test_a_plain_agent_is_refused_by_the_host(world: World) -> None:
    tools, _ = tools_of(world, world.session)
    with pytest.raises(ToolError) as refused:
        tools.call("list_tasks", {"group": "ops"})
    assert str(refused.value) == f"refused by the host: {NOT_ADMIN}"
    with pytest.raises(ToolError, match="refused by the host: only an admin group"):
        tools.call("cancel_task", {"taskId": "task-1781182800000-abcdef", "group": "ops"})


@pytest.mark.parametrize(("name", "arguments", "problem"), [
    ("list_tasks", {"group": ""}, "group must be a group's name, 1-64 characters"),
    ("list_tasks", {"group": "x" * 65}, "group must be a group's name, 1-64 characters"),
    ("list_tasks", {"group": 7}, "group must be a group's name, 1-64 characters"),
    ("send_message", {"text": "hi", "group": "demo"}, "send_message has no argument 'group'"),
    ("schedule_task", {"prompt": "x", "recurrence": "* * * * *", "group": "demo"}, "would run 60 s apart"),
    ("schedule_task", {"prompt": " ", "group": "demo"}, "prompt"),
    ("update_task", {"taskId": "task-1781182800000-abcdef", "group": "demo"}, "nothing to update"),
])
def test_bad_arguments_are_refused_before_anything_is_asked(world: World, name: str, arguments: dict[str, Any],
                                                            problem: str) -> None:
    tools, waits = tools_of(world, ops(world))
    with pytest.raises(ToolError, match=re.escape(problem)):
        tools.call(name, arguments)
    assert waits == [] and world.rows(session=ops(world)) == []
    with closing(world.outbound(ops(world))) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages_out").fetchone()[0] == 0


def test_with_no_host_the_tool_stops_waiting_and_says_so(world: World) -> None:
    tools, waits = tools_of(world, ops(world), host=False)
    said = tools.call("pause_task", {"taskId": "task-1781182800000-abcdef", "group": "demo"})
    assert said.startswith("The host has not answered within 10 s (it may be stopped or busy): the request stays")
    assert sum(waits) == pytest.approx(group_tools.ANSWER_WAIT_S, abs=0.1)
    assert "ask again later" in tools.call("list_tasks", {"group": "demo"})
