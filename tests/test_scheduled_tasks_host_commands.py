"""Project-level scheduled tasks (DESIGN §9, §6.3, §12.10): host commands run for real (waited on through the firer,
never slept for). Output tail and exit code, stderr of a failure, cwd relative to the spec file with the task's
environment, a missing program, a timeout killing the process group, a stopping host failing its runs (and a restart
failing leftovers), and a slot missed while the previous run still runs.
"""

from __future__ import annotations

import os
import select
from contextlib import closing
from typing import Any

from kit import FakeClock
from scheduled_project import HEAD, NOW, Project, local
from scheduled_project import project as project

from host.project_tasks.fire import ScheduledTasks
from host.store import db


def fire_host(project: Project, command: str, extra: str = "", at: str = "2026-06-12T09:00:00",
              name: str = "t.yaml") -> tuple[dict[str, Any], ScheduledTasks]:
    text = f"{HEAD}schedule: 0 9 * * *\nhost: {{command: {command!r}{extra}}}\n"
    result = project.ncl("scheduled-task", "add", "--file", project.spec(text, name), "--now", NOW, "--json")
    assert result.code == 0, result.err
    firer = project.firer(FakeClock(local(at)))
    assert firer.tick(firer.clock()).fired == 1
    return result.json(), firer


def test_a_host_command_succeeds_with_its_output_tail_and_exit_code(project: Project) -> None:
    item, firer = fire_host(project, "echo hi")
    firer.wait(30)
    (run,) = project.runs(item["id"])
    assert (run["status"], run["exit_code"], run["output_tail"], run["error"]) == ("succeeded", 0, "hi", None)
    assert run["finished_at"] is not None and run["duration_ms"] is not None


def test_a_failing_host_command_keeps_stderr_and_its_exit_code(project: Project) -> None:
    item, firer = fire_host(project, "sh -c 'echo oops >&2; exit 3'")
    firer.wait(30)
    (run,) = project.runs(item["id"])
    assert (run["status"], run["exit_code"], run["output_tail"], run["error"]) == ("failed", 3, "oops", "exit code 3")


def test_the_host_command_runs_in_cwd_relative_to_the_spec_file_with_task_env(project: Project) -> None:
    (project.root / "ops" / "work").mkdir(parents=True)
    item, firer = fire_host(project, "sh -c 'pwd; echo $NCL_SCHEDULED_TASK_ID $TZ'", ", cwd: work",
                            name="ops/t.yaml")
    assert item["target"]["cwd"] == str((project.root / "ops" / "work").resolve())
    firer.wait(30)
    (run,) = project.runs(item["id"])
    assert run["output_tail"].splitlines() == [item["target"]["cwd"], f"{item['id']} America/New_York"]


def test_a_missing_program_is_a_failed_run(project: Project) -> None:
    item, firer = fire_host(project, "no-such-program-ncl --flag")
    firer.wait(30)
    (run,) = project.runs(item["id"])
    assert run["status"] == "failed" and "cannot start 'no-such-program-ncl'" in run["error"]


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


def test_a_host_command_past_its_timeout_is_killed_with_its_process_group(project: Project) -> None:
    item, firer = fire_host(project, "sh -c 'sleep 30 & echo $! > child.pid; wait'", ", timeout_seconds: 1")
    firer.wait(30)
    (run,) = project.runs(item["id"])
    assert run["status"] == "timeout" and run["exit_code"] is None and "killed after 1 s" in run["error"]
    assert _gone(int((project.root / "child.pid").read_text()))


def test_a_stopping_host_kills_its_runs_and_a_restart_fails_leftovers(project: Project) -> None:
    item, firer = fire_host(project, "sleep 30")
    firer.close(stop_running=True)
    (run,) = project.runs(item["id"])
    assert (run["status"], run["error"]) == ("failed", "host stopped during the run")
    # A host that died mid-run leaves the row 'running': the next host's first tick fails it.
    with closing(db.connect(project.settings().central_db, "central")) as conn:
        conn.execute("UPDATE scheduled_task_runs SET status = 'running', error = NULL")
    project.firer(FakeClock(local("2026-06-12T09:05:00"))).tick(local("2026-06-12T09:05:00"))
    (run,) = project.runs(item["id"])
    assert (run["status"], run["error"]) == ("failed", "host stopped during the run")


def test_a_slot_whose_previous_run_still_runs_is_missed(project: Project) -> None:
    text = f"{HEAD}schedule: '0,30 * * * *'\nhost: {{command: 'sleep 30'}}\n"
    item = project.add(text)
    clock = FakeClock(local("2026-06-11T09:30:00"))
    firer = project.firer(clock)
    assert firer.tick(clock.now()).fired == 1
    clock.current = local("2026-06-11T10:00:00")
    assert firer.tick(clock.now()).missed == 1
    running, missed = project.runs(item["id"])
    assert running["status"] == "running"
    assert missed["status"] == "missed" and "previous run was still running" in missed["error"]


def test_a_sweep_at_another_instant_runs_no_command_and_leaves_its_slot_due(project: Project) -> None:
    """``ncl host sweep --once --now`` starts nothing that lives in real time: as no runner, no command (one ran
    today for a slot of next year, and that slot was spent). A queue target's job still goes in (its own test)."""
    marker = project.root / "RAN"
    text = f"{HEAD}schedule: 0 9 * * *\nhost: {{command: 'touch {marker}'}}\n"
    item = project.ncl("scheduled-task", "add", "--file", project.spec(text), "--now", NOW, "--json").json()
    swept = project.ncl("host", "sweep", "--once", "--now", "2026-06-12T09:00:01", "--json")
    assert swept.code == 0, swept.err
    data = swept.json()
    assert (data["scheduled_fired"], data["scheduled_left"], data["scheduled_missed"]) == (0, 1, 0)
    assert not marker.exists() and project.runs(item["id"]) == []
    assert [t["next_run"] for t in project.listed()] == ["2026-06-12T13:00:00.000Z"]
