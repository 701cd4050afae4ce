"""Issue 16.3, host tasks from agents: only while the operator sets NCL_ALLOW_AGENT_HOST_TASKS=1 may an admin
group's agent create host tasks (``schedule_task`` with ``taskType: "host"``, ids ``host-…``), which become project
scheduled tasks of the host kind, checked as a spec file is and run as the operator's are. Every refusal is tested
through requests written into outbound.db as a (possibly hostile) runner writes them: the host decides from the
setting and central.db, never from the request."""

from __future__ import annotations

import json
import os
import select
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok
from kit import FakeClock, World, answered

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.cli import checks
from host.project_tasks import specs
from host.project_tasks.fire import AGENTS_OFF, ScheduledTasks
from host.scheduling import host_tasks
from host.store import groups, sessions
from host.store import project_tasks as store
from host.store.sessions import Session
from schemas.times import from_text

NOW = from_text("2026-06-11T13:00:00.000Z")  # Thursday 09:00:00 EDT
OFF = ("host tasks from agents are off: the operator allows them for admin groups with "
       "NCL_ALLOW_AGENT_HOST_TASKS=1")
NOT_ADMIN = ("only an admin group's agents may create or manage host tasks, and group 'demo' is not one (the operator "
             "marks admin groups with 'ncl groups update NAME --admin')")
BACKUP = {"action": "schedule_task", "taskType": "host", "command": "sh -c 'pwd; echo $NCL_SCHEDULED_TASK_ID'",
          "recurrence": "0 3 * * *", "cwd": "work", "timeoutSeconds": 5, "prompt": "nightly backup"}


@pytest.fixture
def world(ncl: Ncl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Group demo (not admin) with a session; group ops, admin, with one; the setting on; ``ncl`` on the same data."""
    monkeypatch.setenv("TZ", "America/New_York")
    world = World(tmp_path, NCL_ALLOW_AGENT_HOST_TASKS="1")
    world.ops_group, _ = groups.create(world.central, world.settings, NOW, "ops", ["cli"], admin=True)  # type: ignore[attr-defined]
    world.ops = sessions.create(world.central, world.settings, NOW, world.ops_group, None)  # type: ignore[attr-defined]
    (world.settings.data_dir / "work").mkdir()
    world.firers = []  # type: ignore[attr-defined]
    yield world
    for firer in world.firers:  # type: ignore[attr-defined]
        firer.close(stop_running=True)


def ops(world: World) -> Session:
    return world.ops  # type: ignore[attr-defined,no-any-return]


def created(world: World, request: dict[str, Any] | None = None) -> str:
    status, said = answered(world, request or BACKUP, ops(world))
    assert status == "applied", said
    return said.split("id: ")[1].split(",")[0]


def held(world: World) -> list[store.TaskRow]:
    return store.list_all(world.central)


def fire(world: World, at: str) -> ScheduledTasks:
    firer = ScheduledTasks(world.settings, FakeClock(from_text(at)).now)
    world.firers.append(firer)  # type: ignore[attr-defined]
    firer.tick(firer.clock())
    firer.wait(30)
    return firer


# --- created by an admin agent, run as a spec file's host target ------------------------------------------------


def test_an_admin_agent_creates_a_host_task_that_runs_like_a_yaml_one(world: World) -> None:
    out_id = world.request(NOW, BACKUP, ops(world))
    world.sweeper().tick(NOW)
    [row] = held(world)
    work = str((world.settings.data_dir / "work").resolve())
    with closing(world.inbound(ops(world))) as conn:
        said = conn.execute("SELECT status, detail FROM delivered WHERE message_out_id = ?", (out_id,)).fetchone()
    assert tuple(said) == ("applied", f"Host task created (id: {row.id}, 0 3 * * *, next run: Fri 2026-06-12 03:00:00 "
                                      f"EDT, timeout 5 s, in {work})")
    assert row.id.startswith("host-") and row.target_kind == "host" and row.name == "nightly backup"
    task = specs.Task.of(row)
    assert task.origin_json() == {"group": "ag-ops", "session": ops(world).id, "request": out_id}
    assert task.spec.host is not None and task.spec.host.command == ["sh", "-c", "pwd; echo $NCL_SCHEDULED_TASK_ID"]

    fire(world, "2026-06-12T07:00:00.000Z")
    [run] = [r.to_json() for r in store.runs(world.central, row.id)]
    assert (run["status"], run["exit_code"]) == ("succeeded", 0)
    assert run["output_tail"].splitlines() == [work, row.id]


def _gone(pid: int) -> bool:
    """Wait (no sleep: a pidfd becomes readable when the process exits) up to 10 s for ``pid`` to end."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], 10)[0])
    finally:
        os.close(fd)


def test_its_timeout_kills_the_command_with_its_process_group(world: World) -> None:
    task = created(world, {**BACKUP, "command": "sh -c 'sleep 30 & echo $! > child.pid; wait'", "timeoutSeconds": 1})
    fire(world, "2026-06-12T07:00:00.000Z")
    [run] = [r.to_json() for r in store.runs(world.central, task)]
    assert run["status"] == "timeout" and "killed after 1 s" in run["error"]
    assert _gone(int((world.settings.data_dir / "work" / "child.pid").read_text()))


def test_with_the_setting_turned_off_an_agents_host_task_does_not_run(world: World) -> None:
    task = created(world, {**BACKUP, "command": "touch ran"})
    world.settings = world.settings.replace(allow_agent_host_tasks=False)
    fire(world, "2026-06-12T07:00:00.000Z")
    [run] = [r.to_json() for r in store.runs(world.central, task)]
    assert (run["status"], run["error"]) == ("failed", AGENTS_OFF)
    assert not (world.settings.data_dir / "work" / "ran").exists()


# --- refusals -------------------------------------------------------------------------------------------------------


def test_with_the_setting_off_an_admin_is_refused(world: World) -> None:
    world.settings = world.settings.replace(allow_agent_host_tasks=False)
    assert answered(world, BACKUP, ops(world)) == ("rejected", OFF)
    assert held(world) == []


def test_a_group_that_is_not_admin_is_refused_with_the_setting_on(world: World) -> None:
    assert answered(world, BACKUP, world.session) == ("rejected", NOT_ADMIN)
    assert held(world) == [] and world.notices() == []  # the tool that asked says it; no notice on top


def test_the_admin_mark_is_read_at_each_request(world: World) -> None:
    created(world)
    groups.update(world.central, groups.get(world.central, "ops"), admin=False)
    assert answered(world, BACKUP, ops(world)) == ("rejected", NOT_ADMIN.replace("'demo'", "'ops'"))
    assert len(held(world)) == 1


@pytest.mark.parametrize(("change", "problem"), [
    ({"command": None}, "a host task needs command and recurrence (a 5-field cron schedule in TZ)"),
    ({"recurrence": None}, "a host task needs command and recurrence (a 5-field cron schedule in TZ)"),
    ({"timeoutSeconds": 0}, "host task: host.timeout_seconds: Input should be greater than or equal to 1 (got 0)"),
    ({"timeoutSeconds": 86401}, "host task: host.timeout_seconds: Input should be less than or equal to 86400"),
    ({"timeoutSeconds": "5"}, "invalid request: schedule_task.timeoutSeconds: Input should be a valid integer"),
    ({"command": []}, "invalid request: schedule_task.command: a command is text of 1-4096 characters"),
    ({"command": "x" * 4097}, "invalid request: schedule_task.command: a command is text of 1-4096 characters"),
    ({"command": "echo 'unclosed"}, "host task: host.command: cannot split the command line"),
    ({"cwd": "no-such-dir"}, "host task: host.cwd 'no-such-dir' is not a directory"),
    ({"recurrence": "every 2h"}, "host task: schedule: "),
    ({"recurrence": "*/5 * * * *"}, "schedule '*/5 * * * *' fires at "),  # NCL_SCHEDULED_TASK_MIN_GAP_S
    ({"prompt": "x" * 501}, "invalid request: schedule_task.prompt: String should have at most 500 characters"),
    ({"group": "demo"}, "a host task belongs to no group: leave group out"),
    ({"taskType": "cron"}, "unknown taskType 'cron': 'agent' (the default) or 'host'"),
    ({"taskType": ["host"]}, "unknown taskType ['host']: 'agent' (the default) or 'host'"),
    ({"origin": {"group": "ag-root", "session": "x", "request": "y"}}, "invalid request: schedule_task.origin: Extra "),
    ({"active": True}, "invalid request: schedule_task.active: Extra inputs are not permitted"),
])
def test_a_bad_host_task_is_refused_and_nothing_is_stored(world: World, change: dict[str, Any], problem: str) -> None:
    request = {k: v for k, v in {**BACKUP, **change}.items() if v is not None}
    status, detail = answered(world, request, ops(world))
    assert status == "rejected" and detail.startswith(problem), detail
    assert held(world) == []


def test_agents_hold_a_bounded_number_of_host_tasks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_tasks, "MAX_HOST_TASKS", 2)
    created(world)
    created(world)
    assert answered(world, BACKUP, ops(world)) == (
        "rejected", "agents hold 2 host tasks already, the most there may be; cancel one first")


@pytest.mark.parametrize("request_", [
    {"action": "pause_task"}, {"action": "resume_task"}, {"action": "cancel_task"},
    {"action": "update_task", "timeoutSeconds": 9}, {"action": "update_task", "taskType": "host", "command": "true"},
])
def test_controls_on_a_host_task_from_a_group_that_is_not_admin_are_refused(world: World,
                                                                             request_: dict[str, Any]) -> None:
    task = created(world)
    before = held(world)
    assert answered(world, {**request_, "taskId": task}, world.session) == ("rejected", NOT_ADMIN)
    world.settings = world.settings.replace(allow_agent_host_tasks=False)
    assert answered(world, {**request_, "taskId": task}, ops(world)) == ("rejected", OFF)
    assert held(world) == before


def test_an_agent_never_reaches_the_operators_own_scheduled_tasks(world: World, tmp_path: Path) -> None:
    spec = specs.parse("version: v1\nkind: ScheduledTask\nschedule: '0 4 * * *'\nhost: {command: /bin/true}\n",
                       "ops.yaml", tmp_path)
    specs.add(world.central, spec, "sched-1781182800000-abcdef", NOW, world.settings.tz.zone)
    for request in [{"action": "update_task", "taskType": "host", "taskId": "sched-1781182800000-abcdef",
                     "command": "rm -rf /"},
                    {"action": "update_task", "taskId": "host-1781182800000-zzzzzz", "command": "true"}]:
        status, detail = answered(world, request, ops(world))
        assert (status, detail) == ("rejected", f"no host task {request['taskId']!r} (list_tasks with a group lists "
                                                "them, as [host])")
    status, _ = answered(world, {"action": "pause_task", "taskId": "sched-1781182800000-abcdef"}, ops(world))
    assert status == "rejected"  # not a host task: looked for among the session's own, and not found
    [row] = held(world)
    assert row.active and json.loads(row.spec)["host"]["command"] == ["/bin/true"]


def test_a_spec_file_cannot_claim_an_origin(tmp_path: Path) -> None:
    with pytest.raises(specs.SpecError, match="'origin' is set by the host on the tasks agents create"):
        specs.parse("version: v1\nkind: ScheduledTask\nschedule: '0 4 * * *'\nhost: {command: /bin/true}\n"
                    "origin: {group: ag-ops, session: s, request: r}\n", "t.yaml", tmp_path)


# --- managed by the admin agent ---------------------------------------------------------------------------------


def test_an_admin_lists_pauses_resumes_updates_and_cancels_a_host_task(world: World) -> None:
    task = created(world)
    status, listing = answered(world, {"action": "list_tasks", "group": "ops"}, ops(world))
    assert (status, listing) == ("applied", f"[host] group - {task} [active] 0 3 * * * host next: Fri 2026-06-12 "
                                            "03:00:00 EDT :: nightly backup")
    assert answered(world, {"action": "pause_task", "taskId": task}, ops(world))[1].startswith(
        f"Host task paused (id: {task}, 0 3 * * *, next run: -,")
    assert [(r.active, r.next_run) for r in held(world)] == [(False, None)]
    assert answered(world, {"action": "pause_task", "taskId": task}, ops(world)) == (
        "rejected", f"host task {task} is paused already")
    assert answered(world, {"action": "resume_task", "taskId": task}, ops(world))[0] == "applied"
    assert [r.active for r in held(world)] == [True]
    status, said = answered(world, {"action": "update_task", "taskId": task, "recurrence": "30 4 * * 1",
                                    "timeoutSeconds": 60}, ops(world))
    assert said.startswith(f"Host task updated (id: {task}, 30 4 * * 1, next run: Mon 2026-06-15 04:30:00 EDT, "
                           "timeout 60 s, in ")
    updated = specs.get(world.central, task)
    assert updated.spec.host is not None and updated.spec.host.command[0] == "sh"  # what was not given stays
    assert updated.origin_json() is not None  # and so does who created it
    assert answered(world, {"action": "update_task", "taskId": task, "timeoutSeconds": 0}, ops(world))[0] == "rejected"
    assert answered(world, {"action": "cancel_task", "taskId": task}, ops(world)) == (
        "applied", f"Host task {task} cancelled")
    assert held(world) == []


# --- the runner's tools ----------------------------------------------------------------------------------------------


def tools_of(world: World, session: Session) -> Tools:
    config = RunnerConfig(session_dir=session.folder, generation="gen-test", tz="America/New_York")
    return Tools(config, Store(config), lambda: NOW, pause=lambda _: world.sweeper().tick(NOW))


def test_the_tools_create_and_cancel_a_host_task_for_an_admin(world: World) -> None:
    tools = tools_of(world, ops(world))
    said = tools.call("schedule_task", {"prompt": "disk report", "task_type": "host", "command": ["df", "-h"],
                                        "recurrence": "0 6 * * *"})
    [row] = held(world)
    assert said.startswith(f"Host task created (id: {row.id}, 0 6 * * *, next run: Fri 2026-06-12 06:00:00 EDT, "
                           "timeout 600 s, in ")
    assert tools.call("list_tasks", {}) == "No tasks."  # not this conversation's task
    assert tools.call("cancel_task", {"taskId": row.id}) == f"Host task {row.id} cancelled"
    with pytest.raises(ToolError, match=f"refused by the host: no host task '{row.id}'"):
        tools.call("pause_task", {"taskId": row.id})


def test_the_tools_say_the_hosts_refusal_to_a_group_that_is_not_admin(world: World) -> None:
    with pytest.raises(ToolError) as refused:
        tools_of(world, world.session).call("schedule_task", {"prompt": "x", "task_type": "host", "command": "true",
                                                              "recurrence": "0 6 * * *"})
    assert str(refused.value) == f"refused by the host: {NOT_ADMIN}"


@pytest.mark.parametrize(("name", "arguments", "problem"), [
    ("schedule_task", {"prompt": "x", "task_type": "cron"},
     "unknown task_type 'cron': 'agent' (the default) or 'host'"),
    ("schedule_task", {"prompt": "x", "command": "true"}, "command: only for a host task (task_type 'host')"),
    ("schedule_task", {"prompt": "x", "task_type": "host", "recurrence": "0 6 * * *"},
     "a host task needs command and recurrence"),
    ("schedule_task", {"prompt": "x", "task_type": "host", "command": "true", "recurrence": "0 6 * * *",
                       "group": "demo"}, "a host task belongs to no group: leave group out"),
    ("schedule_task", {"prompt": "x", "task_type": "host", "command": "true", "recurrence": "0 6 * * *",
                       "script": "exit 0"}, "schedule_task of a host task takes "),
    ("schedule_task", {"prompt": "x", "task_type": "host", "command": [], "recurrence": "0 6 * * *"},
     "a command is text of 1-4096 characters"),
    ("update_task", {"taskId": "host-1781182800000-abcdef"}, "nothing to update"),
])
def test_bad_host_task_arguments_are_refused_before_anything_is_asked(world: World, name: str,
                                                                      arguments: dict[str, Any], problem: str) -> None:
    with pytest.raises(ToolError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        tools_of(world, ops(world)).call(name, arguments)
    with closing(world.outbound(ops(world))) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages_out").fetchone()[0] == 0


# --- what the operator sees -------------------------------------------------------------------------------------------


def test_the_operator_sees_who_created_a_host_task_and_deletes_it(world: World, ncl: Ncl) -> None:
    task = created(world)
    listed = ok(ncl("scheduled-task", "list", "--json")).json()["scheduled_tasks"]
    assert [(t["id"], t["origin"]["group"], t["target"]["kind"]) for t in listed] == [(task, "ag-ops", "host")]
    table = ok(ncl("scheduled-task", "list")).out.splitlines()
    assert table[0].split()[-2:] == ["CREATED", "BY"] and table[1].split()[-3:] == ["agent", "of", "ops"]
    ok(ncl("scheduled-task", "delete", task))
    assert held(world) == []


def test_doctor_warns_while_the_setting_is_on_and_of_tasks_left_when_off(world: World) -> None:
    check = checks.agent_host_tasks(world.settings)
    assert check.level == "warn" and check.detail.startswith("NCL_ALLOW_AGENT_HOST_TASKS is on: admin groups' agents")
    off = world.settings.replace(allow_agent_host_tasks=False)
    assert (checks.agent_host_tasks(off).level, checks.agent_host_tasks(off).detail) == ("ok", "off")
    created(world)
    left = checks.agent_host_tasks(off)
    assert left.level == "warn" and left.detail == (
        "off; 1 host task(s) created by agents ('ncl scheduled-task list' shows them, 'delete' removes one), which do "
        "not run while it is off")
