"""Project-level scheduled tasks (DESIGN §9, §6.3, §12.10): the ``ScheduledTask`` YAML refused or stored through
``ncl scheduled-task``. A bad spec is one line naming the file and stores nothing; firings closer than the minimum
gap are refused naming the pair (over a year of firings, DST included); add, list, update and delete show and keep
what was given, and a payload stored before a rule fails at its firing.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kit import FakeClock
from scheduled_project import DAILY_QUEUE, HEAD, NOW, SLOT, Project, local, one_line_error
from scheduled_project import project as project

from host.store import db
from schemas import ids
from schemas.times import from_text

if TYPE_CHECKING:
    from conftest import CliEnv

LIST_KEYS = {"id", "schedule", "target", "active", "next_run", "last_status"}


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
    (HEAD + "schedul: 0 9 * * *\nhost: {command: 'true'}\n",  # (said "schedule: Field required", and "origin")
     "unknown key 'schedul' (allowed: version, kind, schedule, name, description, active, queue, container, host)"),
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
    # a few hundred bytes of aliases would expand to gigabytes; a key given twice would keep its last value silently
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: hi, a: &a [x, x], b: [*a, *a]}}\n",
     "not valid YAML at line 4: aliases (*name) are not allowed in a spec"),
    (HEAD + "schedule: 30 17 * * *\nschedule: 0 0 * * *\nhost: {command: 'true'}\n",
     "not valid YAML at line 4: key 'schedule' is given twice"),
    (HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: hi, prompt: again}}\n",
     "key 'prompt' is given twice"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPECS, ids=[e for _, e in BAD_SPECS])
def test_a_bad_spec_is_one_line_and_stores_nothing(project: Project, cli_env: CliEnv, text: str,
                                                   expected: str) -> None:
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(text), "--now", NOW))
    assert line.startswith("ncl: t.yaml: ") and expected in line, line
    assert not cli_env.central_db.exists()
    assert project.listed() == []


def test_a_spec_file_over_a_mebibyte_or_not_utf8_is_refused_naming_it(project: Project, cli_env: CliEnv) -> None:
    big = project.spec(HEAD + "schedule: 0 9 * * *\nqueue: {name: q, payload: {prompt: hi}}\n" + "#" * (1 << 20))
    assert one_line_error(project.ncl("scheduled-task", "add", "--file", big)).endswith(
        "t.yaml is larger than 1048576 bytes")
    text = HEAD.encode() + b"schedule: 0 9 * * *\nhost: {command: '\xff'}\n"
    Path(path := project.spec("")).write_bytes(text)
    assert one_line_error(project.ncl("scheduled-task", "add", "--file", path)).endswith(
        f"t.yaml is not UTF-8 text (byte {text.index(0xFF)})")
    assert not cli_env.central_db.exists()


def test_a_name_is_one_tasks(project: Project) -> None:
    """A spec file added twice would fire twice: its name is refused the second time, naming the task that holds
    it, as is an update that takes another task's name; a task keeps its own name through an update."""
    project.support_group()
    named = DAILY_QUEUE + "name: nightly\n"
    first = project.add(named)
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(named), "--now", NOW))
    assert f"a scheduled task named 'nightly' exists already ({first['id']})" in line, line
    other = project.add(DAILY_QUEUE + "name: weekly\n")
    assert f"({first['id']})" in one_line_error(project.ncl("scheduled-task", "update", other["id"], "--file",
                                                            project.spec(named), "--now", NOW))
    assert project.ncl("scheduled-task", "update", first["id"], "--file", project.spec(named), "--now", NOW).code == 0
    assert sorted(t["name"] for t in project.listed()) == ["nightly", "weekly"]


def test_a_task_is_found_by_its_name_too(project: Project) -> None:
    """(update, runs and delete took only the sched-… id: a deploy script had to look it up in list --json.)"""
    project.support_group()
    named = DAILY_QUEUE + "name: nightly\n"
    first = project.add(named)
    updated = project.ncl("scheduled-task", "update", "nightly", "--file",
                          project.spec(named.replace("30 17", "45 17")), "--now", NOW, "--json")
    assert updated.code == 0 and updated.json()["id"] == first["id"] and updated.json()["schedule"] == "45 17 * * *"
    assert project.ncl("scheduled-task", "runs", "nightly", "--json").json() == {"runs": []}
    assert project.ncl("scheduled-task", "delete", "nightly", "--json").json() == {"id": first["id"], "deleted": True}
    assert one_line_error(project.ncl("scheduled-task", "runs", "nightly")).endswith(
        "unknown scheduled task 'nightly' (see 'ncl scheduled-task list')")


def test_an_unnamed_spec_added_again_is_refused_naming_the_task_it_repeats(project: Project) -> None:
    """(Added twice with no name, the same job went into the queue twice at every slot.) Another schedule or
    payload is another task; so is the same spec given a name; a task updated with its own spec stays."""
    project.support_group()
    first = project.add(DAILY_QUEUE)
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(DAILY_QUEUE), "--now", NOW))
    assert line.endswith(f"scheduled task {first['id']} has this very spec already: added again, it would run twice "
                         "at each slot (to have two, give each a name)"), line
    project.add(DAILY_QUEUE.replace("30 17", "45 17"))
    project.add(DAILY_QUEUE + "name: second\n")
    assert project.ncl("scheduled-task", "update", first["id"], "--file", project.spec(DAILY_QUEUE), "--now",
                       NOW).code == 0
    assert len(project.listed()) == 3


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


def test_the_gap_across_the_spring_forward_night_is_said_in_elapsed_minutes(project: Project) -> None:
    """01:50 EST and 03:00 EDT are 10 minutes apart, not the 70 the wall clocks show."""
    text = f"{HEAD}schedule: '50 1,2 * * *'\nhost: {{command: 'true'}}\n"
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(text), "--now",
                                      "2026-03-01T09:00"))
    assert "fires at 2026-03-08 01:50 EST and again at 03:00 EDT, 10 min apart" in line, line


def test_file_option_errors(project: Project) -> None:
    assert one_line_error(project.ncl("scheduled-task", "add"), code=2).startswith("ncl: Missing option '--file'")
    assert "does not exist" in one_line_error(project.ncl("scheduled-task", "add", "--file", "nope.yaml"))


def test_add_prints_the_list_item_and_list_shows_it_in_tz(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    assert set(item) == LIST_KEYS | {"name", "description", "origin", "created_at", "updated_at"}
    assert item["origin"] is None  # the operator's (an agent's host task names its group: issue 16.3)
    assert ids.is_id(item["id"], "sched")
    assert item["schedule"] == "30 17 * * *" and item["active"] is True and item["last_status"] is None
    assert item["target"] == {"kind": "queue", "name": "support-jobs",
                              "payload": {"prompt": "Generate the daily summary."}}
    assert from_text(item["next_run"]) == SLOT
    assert project.listed() == [item]
    table = project.ncl("scheduled-task", "list").out
    assert item["id"] in table and "2026-06-11 17:30:00 EDT" in table and "queue support-jobs" in table


def test_update_replaces_the_spec_and_recomputes_next_run_only_for_a_new_schedule(project: Project) -> None:
    project.support_group()
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
    project.support_group()
    item = project.add(DAILY_QUEUE)
    bad = project.spec(DAILY_QUEUE.replace("prompt: Generate the daily summary.", "prompt: [{type: text}]"), "u.yaml")
    line = one_line_error(project.ncl("scheduled-task", "update", item["id"], "--file", bad))
    assert line.startswith("ncl: u.yaml: queue.payload: bad prompt item"), line
    assert project.listed() == [item]


def test_a_queue_no_group_has_wired_is_refused_at_add_and_update(project: Project) -> None:
    line = one_line_error(project.ncl("scheduled-task", "add", "--file", project.spec(DAILY_QUEUE), "--now", NOW))
    assert line == ("ncl: queue 'support-jobs' is wired to no group (wired queues: none); wire it first: ncl groups "
                    "update GROUP --channel queue:support-jobs (or groups create)")
    assert not project.settings().central_db.exists()  # (a refused add made no install where none was)
    assert project.listed() == []
    project.support_group()
    item = project.add(DAILY_QUEUE)
    other = project.spec(DAILY_QUEUE.replace("support-jobs", "suport-jobs"), "u.yaml")
    line = one_line_error(project.ncl("scheduled-task", "update", item["id"], "--file", other))
    assert line.startswith("ncl: queue 'suport-jobs' is wired to no group (wired queues: support-jobs); "), line
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
