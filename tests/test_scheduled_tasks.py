"""Project-level scheduled tasks (DESIGN §9, §6.3, §12.10): the ``ScheduledTask`` YAML refused or stored through
``ncl scheduled-task``, and firing driven by a fake clock on real SQLite files — once-only claims, the misfire
rule, queue jobs, host commands run for real (waited on through the firer, never slept for) and the host loop."""

from __future__ import annotations

import os
import select
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from kit import FakeClock, RecordingRuntime, utc

from host import db, scheduled_fire
from host import settings as settings_module
from host.loop import Host
from host.scheduled_fire import ScheduledTasks
from host.settings import Settings
from schemas import ids
from schemas.times import from_text

if TYPE_CHECKING:
    from conftest import CliEnv, Result

Ncl = Callable[..., "Result"]
NY = ZoneInfo("America/New_York")
NOW = "2026-06-11T09:00:00"  # Thursday, local (EDT, UTC-4)
SLOT = utc("2026-06-11T21:30:00")  # 17:30 EDT
LIST_KEYS = {"id", "schedule", "target", "active", "next_run", "last_status"}
RUN_KEYS = {"id", "task_id", "status", "scheduled_for", "started_at", "finished_at", "duration_ms", "exit_code",
            "queued_message_id", "output_tail", "error"}
HEAD = "version: v1\nkind: ScheduledTask\n"
DAILY_QUEUE = HEAD + (  # the seed example of DESIGN §9, comment and all
    "schedule: 30 17 * * *          # cron in TZ; runs at least 15 min apart (NCL_SCHEDULED_TASK_MIN_GAP_S)\n"
    "queue: {name: support-jobs, payload: {prompt: Generate the daily summary.}}\n")


class Project:
    """One install in America/New_York driven through ``ncl`` in-process, plus firers on a fake clock."""

    def __init__(self, ncl: Ncl, root: Path) -> None:
        self.ncl, self.root = ncl, root
        self.firers: list[ScheduledTasks] = []

    def settings(self) -> Settings:
        return settings_module.load()

    def spec(self, text: str, name: str = "t.yaml") -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def add(self, text: str, now: str = NOW) -> dict[str, Any]:
        result = self.ncl("scheduled-task", "add", "--file", self.spec(text), "--now", now, "--json")
        assert result.code == 0, result.err
        data: dict[str, Any] = result.json()
        return data

    def runs(self, task_id: str) -> list[dict[str, Any]]:
        result = self.ncl("scheduled-task", "runs", task_id, "--json")
        assert result.code == 0, result.err
        found: list[dict[str, Any]] = result.json()["runs"]
        return found

    def listed(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.ncl("scheduled-task", "list", "--json").json()["scheduled_tasks"]
        return found

    def firer(self, clock: FakeClock) -> ScheduledTasks:
        made = ScheduledTasks(self.settings(), clock.now)
        self.firers.append(made)
        return made

    def support_group(self) -> None:
        assert self.ncl("groups", "create", "support", "--channel", "queue:support-jobs").code == 0

    def queue_rows(self) -> list[dict[str, Any]]:
        rows = []
        for inbound in sorted((self.root / "data" / "v2-sessions" / "ag-support").glob("*/inbound.db")):
            with closing(sqlite3.connect(f"file:{inbound}?mode=ro", uri=True)) as conn:
                conn.row_factory = sqlite3.Row
                rows += [dict(r) for r in conn.execute("SELECT * FROM messages_in WHERE kind = 'queue'")]
        return rows


@pytest.fixture
def project(ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setenv("TZ", "America/New_York")
    made = Project(ncl, cli_env.root)
    yield made
    for firer in made.firers:
        firer.close(stop_running=True)


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.code == code, f"exit {result.code}: {result.out} {result.err}"
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert len(result.err_lines) == 1, result.err
    return result.err_lines[0]


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NY)


# --- the YAML spec -------------------------------------------------------------------------------------

BAD_SPECS = [
    ("- a list\n", "is a mapping"),
    ("just text\n", "is a mapping"),
    ("", "an empty file"),
    ("version: v1\nkind: [unclosed\n", "not valid YAML at line"),
    (HEAD + "schedule: @daily\nhost: {command: 'true'}\n", "quote a schedule that starts with * or @"),
    (HEAD + "schedule: */20 * * * *\nhost: {command: 'true'}\n", "quote a schedule that starts with * or @"),
    ("version: v2\nkind: ScheduledTask\nschedule: 0 9 * * *\nhost: {command: 'true'}\n", "version"),
    ("kind: ScheduledTask\nschedule: 0 9 * * *\nhost: {command: 'true'}\n", "version: Field required"),
    ("version: v1\nkind: CronJob\nschedule: 0 9 * * *\nhost: {command: 'true'}\n", "kind"),
    (HEAD + "schedule: 0 9 * * *\n", "exactly one target"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: 'true'}\ncontainer: {image: alpine, command: 'true'}\n",
     "got container and host"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: 'true'}\nretries: 3\n", "unknown key 'retries'"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: 'true', workdir: /tmp}\n", "unknown key 'host.workdir'"),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: hi}, priority: 1}\n", "'queue.priority'"),
    (HEAD + "schedule: 0 25 * * *\nhost: {command: 'true'}\n", "hour value '25'"),
    (HEAD + "schedule: 0 0 9 * * *\nhost: {command: 'true'}\n", "6 fields"),
    (HEAD + "host: {command: 'true'}\n", "schedule: Field required"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: ''}\n", "the command is empty"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: \"echo 'open\"}\n", "cannot split the command line"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: 'true', cwd: no-such-dir}\n", "is not a directory"),
    (HEAD + "schedule: 0 9 * * *\nhost: {command: 'true', timeout_seconds: 0}\n", "timeout_seconds"),
    (HEAD + "schedule: 0 9 * * *\ncontainer: {command: 'true'}\n", "container.image: Field required"),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {text: hi}}\n", 'needs "prompt"'),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: 'bad name', payload: {prompt: hi}}\n", "queue.name"),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: hi, at: 2026-01-01}}\n", "plain JSON"),
    # queues.send's own rules, so that what is stored can be sent when it fires
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: [1]}}\n", "queue.payload: bad prompt item 1"),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: [{type: file, url: 'room:///../x'}]}}\n",
     "queue.payload: file item room:///../x is outside the group folder"),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: hi, thread_id: ''}}\n",
     "queue.payload: thread_id must be a non-empty string"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPECS, ids=[e for _, e in BAD_SPECS])
def test_a_bad_spec_is_one_line_and_stores_nothing(project: Project, cli_env: CliEnv, text: str,
                                                   expected: str) -> None:
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(text), "--now", NOW))
    assert line.startswith("ncl: t.yaml: ") and expected in line, line
    assert not cli_env.central_db.exists()
    assert project.listed() == []


@pytest.mark.parametrize(("schedule", "pair"), [("*/10 * * * *", ("09:10", "09:20")),
                                                ("*/25 * * * *", ("09:50", "10:00"))])
def test_firings_closer_than_15_minutes_are_refused_naming_the_pair(project: Project, schedule: str,
                                                                    pair: tuple[str, str]) -> None:
    text = f"{HEAD}schedule: '{schedule}'\nqueue: {{name: support-jobs, payload: {{prompt: hi}}}}\n"
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(text), "--now", NOW))
    assert f"2026-06-11 {pair[0]} EDT and again at {pair[1]} EDT, 10 min apart" in line, line
    assert "NCL_SCHEDULED_TASK_MIN_GAP_S=900" in line
    assert project.listed() == []


def test_the_gap_is_checked_over_a_year_of_firings(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hourly steps are an hour apart except across the fall-back night, where 01:xx EDT and 01:xx EST repeat.
    monkeypatch.setenv("NCL_SCHEDULED_TASK_MIN_GAP_S", "3600")
    text = f"{HEAD}schedule: '30,45 1 * * *'\nhost: {{command: 'true'}}\n"
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(text), "--now", NOW))
    assert "2026-06-11 01:30" not in line and "01:30 EDT and again at 01:45 EDT" in line, line
    assert project.add(HEAD + "schedule: 0 9 * * 1\nhost: {command: 'true'}\n")["next_run"]


def test_file_option_errors(project: Project) -> None:
    assert one_line_error(project.ncl("scheduled-task", "add"), code=2).startswith("ncl: Missing option '--file'")
    assert "does not exist" in one_line_error(project.ncl("scheduled-task", "add", "--file", "nope.yaml"))


def test_add_prints_the_list_item_and_list_shows_it_in_tz(project: Project) -> None:
    item = project.add(DAILY_QUEUE)
    assert set(item) == LIST_KEYS | {"name", "description", "created_at", "updated_at"}
    assert ids.is_id(item["id"], "sched")
    assert item["schedule"] == "30 17 * * *" and item["active"] is True and item["last_status"] is None
    assert item["target"] == {"kind": "queue", "name": "support-jobs",
                              "payload": {"prompt": "Generate the daily summary."}}
    assert from_text(item["next_run"]) == SLOT
    assert project.listed() == [item]
    table = project.ncl("scheduled-task", "list").out
    assert item["id"] in table and "2026-06-11 17:30:00 EDT" in table and "queue support-jobs" in table


def test_update_replaces_the_spec_and_recomputes_next_run_only_for_a_new_schedule(project: Project) -> None:
    item = project.add(DAILY_QUEUE)
    same = DAILY_QUEUE.replace("Generate the daily summary.", "Summarize.")
    path = project.spec(same, "u.yaml")
    updated = project.ncl("scheduled-task", "update", item["id"], "--file", path, "--now", "2026-06-11T18:00:00",
                          "--json").json()
    assert updated["target"]["payload"] == {"prompt": "Summarize."} and updated["next_run"] == item["next_run"]
    path = project.spec(same.replace("30 17", "0 8"), "u.yaml")
    updated = project.ncl("scheduled-task", "update", item["id"], "--file", path, "--now", "2026-06-11T18:00:00",
                          "--json").json()
    assert from_text(updated["next_run"]) == local("2026-06-12T08:00:00")
    path = project.spec(same.replace("queue:", "active: false\nqueue:"), "u.yaml")
    paused = project.ncl("scheduled-task", "update", item["id"], "--file", path, "--json").json()
    assert paused["active"] is False and paused["next_run"] is None
    assert "unknown scheduled task" in one_line_error(
        project.ncl("scheduled-task", "update", "sched-1781182800000-zzzzzz", "--file", path))
    bad = project.spec(HEAD + "schedule: '*/5 * * * *'\nhost: {command: 'true'}\n", "bad.yaml")
    assert "min apart" in one_line_error(project.ncl("scheduled-task", "update", item["id"], "--file", bad))
    assert project.listed() == [paused]


def test_update_refuses_a_payload_queues_would_refuse_and_keeps_the_task(project: Project) -> None:
    item = project.add(DAILY_QUEUE)
    bad = project.spec(DAILY_QUEUE.replace("prompt: Generate the daily summary.", "prompt: [{type: text}]"), "u.yaml")
    line = one_line_error(project.ncl("scheduled-task", "update", item["id"], "--file", bad))
    assert line.startswith("ncl: u.yaml: queue.payload: bad prompt item"), line
    assert project.listed() == [item]


def test_a_row_stored_before_a_payload_rule_still_lists_and_fails_at_its_firing(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    with closing(db.connect(project.settings().central_db, "central")) as conn, conn:
        conn.execute("UPDATE scheduled_tasks SET spec = replace(spec, '\"Generate the daily summary.\"', '[1]')")
    assert project.listed()[0]["target"]["payload"] == {"prompt": [1]}
    assert project.firer(FakeClock(SLOT)).tick(SLOT).failed == 1
    (run,) = project.runs(item["id"])
    assert run["status"] == "failed" and "bad prompt item 1" in run["error"]


def test_delete_removes_the_task_and_its_runs(project: Project) -> None:
    item = project.add(HEAD + "schedule: 0 9 * * *\nhost: {command: 'true'}\n")
    firer = project.firer(FakeClock(local("2026-06-12T09:00:00")))
    firer.tick(firer.clock())
    firer.wait(30)
    assert len(project.runs(item["id"])) == 1
    assert project.ncl("scheduled-task", "delete", item["id"], "--json").json() == {"id": item["id"],
                                                                                   "deleted": True}
    assert project.listed() == []
    assert "unknown scheduled task" in one_line_error(project.ncl("scheduled-task", "runs", item["id"]))
    assert "unknown scheduled task" in one_line_error(project.ncl("scheduled-task", "delete", item["id"]))
    with closing(db.connect(project.settings().central_db, "central")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM scheduled_task_runs").fetchone()[0] == 0


# --- firing: queue target, once-only, misfire -------------------------------------------------------------


def test_the_seed_queue_task_enqueues_its_payload_at_1730_local(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    clock = FakeClock(SLOT - timedelta(seconds=1))
    firer = project.firer(clock)
    assert firer.tick(clock.now()).fired == 0 and project.runs(item["id"]) == []
    assert firer.earliest_due() == SLOT
    clock.current = SLOT
    assert firer.tick(SLOT).fired == 1
    (run,) = project.runs(item["id"])
    assert set(run) == RUN_KEYS | {"missed_slots"}
    assert run["status"] == "queued" and from_text(run["scheduled_for"]) == SLOT and run["exit_code"] is None
    (job,) = project.queue_rows()
    assert run["queued_message_id"] == job["id"] and job["channel_type"] == "queue:support-jobs"
    assert '"prompt": "Generate the daily summary."' in job["content"]
    (listed,) = project.listed()
    assert listed["last_status"] == "queued" and from_text(listed["next_run"]) == SLOT + timedelta(days=1)


def test_a_queue_with_no_group_is_a_failed_run_and_the_task_goes_on(project: Project) -> None:
    item = project.add(DAILY_QUEUE)
    firer = project.firer(FakeClock(SLOT))
    assert firer.tick(SLOT).failed == 1
    (run,) = project.runs(item["id"])
    assert run["status"] == "failed" and "no group is wired to queue:support-jobs" in run["error"]
    assert from_text(project.listed()[0]["next_run"]) == SLOT + timedelta(days=1)


def test_two_ticks_and_two_firers_at_one_instant_fire_once(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    clock = FakeClock(SLOT)
    first, second = project.firer(clock), project.firer(clock)
    assert [first.tick(SLOT).fired, first.tick(SLOT).fired, second.tick(SLOT).fired] == [1, 0, 0]
    with closing(db.connect(project.settings().central_db, "central")) as conn:
        assert scheduled_fire.claim(conn, item["id"], SLOT, first.policy) is None
    assert [r["status"] for r in project.runs(item["id"])] == ["queued"]
    assert len(project.queue_rows()) == 1


def test_after_downtime_within_the_grace_the_latest_slot_fires_once(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    now = SLOT + timedelta(days=2, minutes=20)  # down across three 17:30 slots; the latest is 20 min old
    result = project.firer(FakeClock(now)).tick(now)
    assert (result.fired, result.missed) == (1, 0)
    missed, fired = project.runs(item["id"])
    assert missed["status"] == "missed" and from_text(missed["scheduled_for"]) == SLOT
    assert missed["missed_slots"] == 2 and "not run: the host was not running" in missed["error"]
    assert fired["status"] == "queued" and from_text(fired["scheduled_for"]) == SLOT + timedelta(days=2)
    assert len(project.queue_rows()) == 1
    assert from_text(project.listed()[0]["next_run"]) == SLOT + timedelta(days=3)


def test_after_downtime_beyond_the_grace_nothing_fires_and_one_missed_run_counts_the_slots(
        project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    now = SLOT + timedelta(days=2, hours=2)
    result = project.firer(FakeClock(now)).tick(now)
    assert (result.fired, result.missed) == (0, 1)
    (missed,) = project.runs(item["id"])
    assert missed["status"] == "missed" and missed["missed_slots"] == 3
    assert project.queue_rows() == []
    assert from_text(project.listed()[0]["next_run"]) == SLOT + timedelta(days=3)


def test_sweep_once_fires_due_tasks_and_wakes_the_queue_session(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    data = project.ncl("host", "sweep", "--once", "--now", "2026-06-11T17:30:00", "--json").json()
    assert (data["scheduled_fired"], data["scheduled_missed"], data["woken"]) == (1, 0, 1)
    assert project.runs(item["id"])[0]["status"] == "queued"


async def test_the_host_loop_fires_within_a_second_and_wakes_the_job_in_the_same_pass(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    clock = FakeClock(SLOT - timedelta(seconds=47.3))
    runtime = RecordingRuntime(clock)
    host = Host(project.settings(), runtime, clock)
    try:
        for _ in range(200):
            await host.step()
            if runtime.started:
                break
        woken_at = runtime.started[0][0]
        assert woken_at is not None and timedelta(0) <= woken_at - SLOT < timedelta(seconds=1)
        (run,) = project.runs(item["id"])
        assert from_text(run["started_at"]) == woken_at
    finally:
        host.scheduled.close()
        host.sweeper.close()


# --- firing: host target ----------------------------------------------------------------------------------


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
