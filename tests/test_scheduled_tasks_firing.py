"""Project-level scheduled tasks (DESIGN §9, §6.3, §12.10): firing a queue target, driven by a fake clock on real
SQLite files. The seed task enqueues its payload at 17:30 local; a queue with no group is a failed run; two ticks or
two firers at one instant fire once; after downtime the misfire rule fires the latest slot once or records one missed
run; ``host sweep --once`` and the host loop fire and wake the job in the same pass; a queue run a dead host left
``running`` is sent by the next host, exactly once.
"""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import timedelta

import pytest
from kit import FakeClock, RecordingRuntime, utc
from scheduled_project import DAILY_QUEUE, SLOT, Project
from scheduled_project import project as project

from host.channels import queues
from host.loop import Host
from host.project_tasks import fire as scheduled_fire
from host.store import db
from schemas.times import from_text, to_text

RUN_KEYS = {"id", "task_id", "status", "scheduled_for", "started_at", "finished_at", "duration_ms", "exit_code",
            "queued_message_id", "output_tail", "error"}


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
    assert set(run) == RUN_KEYS | {"missed_slots", "queued_session_id", "job_status"}
    assert run["status"] == "queued" and from_text(run["scheduled_for"]) == SLOT and run["exit_code"] is None
    (job,) = project.queue_rows()
    assert run["queued_message_id"] == job["id"] and job["channel_type"] == "queue:support-jobs"
    assert '"prompt": "Generate the daily summary."' in job["content"]
    (listed,) = project.listed()
    assert listed["last_status"] == "queued" and from_text(listed["next_run"]) == SLOT + timedelta(days=1)


def test_a_queued_run_names_its_jobs_session_and_where_the_job_stands(project: Project) -> None:
    """(``runs`` said the message id only: which session it went to was a guess, and what became of the job,
    nowhere.)"""
    project.support_group()
    item = project.add(DAILY_QUEUE)
    assert project.firer(FakeClock(SLOT)).tick(SLOT).fired == 1
    (run,) = project.runs(item["id"])
    inbound = project.root / "data" / "v2-sessions" / "ag-support" / run["queued_session_id"] / "inbound.db"
    assert (run["job_status"], inbound.exists()) == ("pending", True)
    with closing(db.connect(inbound, "inbound")) as conn, db.transaction(conn):
        conn.execute("UPDATE messages_in SET status = 'failed' WHERE id = ?", (run["queued_message_id"],))
    assert project.runs(item["id"])[0]["job_status"] == "failed"
    shown = project.ncl("scheduled-task", "runs", item["id"]).out
    assert f"{run['queued_message_id']} in {run['queued_session_id']} (failed)" in shown, shown


def test_a_queue_with_no_group_is_a_failed_run_and_the_task_goes_on(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    deleted = project.ncl("groups", "delete", "support", "--yes")  # unwired after the task was added: said at once
    assert deleted.code == 0 and deleted.err.strip() == (
        f"ncl: warning: scheduled task {item['id']} sends its jobs to queue support-jobs, which no group is wired to "
        "now: each of its runs fails until one is (ncl groups update GROUP --channel queue:support-jobs), or the task "
        "is changed or deleted")
    firer = project.firer(FakeClock(SLOT))
    assert firer.tick(SLOT).failed == 1
    (run,) = project.runs(item["id"])
    assert run["status"] == "failed" and "no group is wired to queue:support-jobs" in run["error"]
    assert from_text(project.listed()[0]["next_run"]) == SLOT + timedelta(days=1)


def test_a_queue_unwired_by_an_update_is_said_for_the_tasks_that_send_to_it(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    removed = project.ncl("groups", "update", "support", "--remove-channel", "queue:support-jobs")
    assert removed.code == 0 and f"scheduled task {item['id']} sends its jobs to queue support-jobs" in removed.err
    added = project.ncl("groups", "update", "support", "--channel", "queue:support-jobs")
    assert added.code == 0 and added.err == ""


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


def died_claiming(project: Project, task_id: str, sent: bool) -> None:
    """A host claimed the 17:30 slot (its run 'running'), maybe sent its job, and died before recording the end."""
    dead = project.firer(FakeClock(SLOT))
    with closing(db.connect(project.settings().central_db, "central")) as conn:
        claimed = scheduled_fire.claim(conn, task_id, SLOT, dead.policy)
        assert claimed is not None and claimed.run_id is not None and claimed.task.spec.queue is not None
        if sent:
            target = claimed.task.spec.queue
            queues.send(conn, dead.settings, SLOT, target.name, target.payload, claimed.run_id)
    assert project.runs(task_id)[0]["status"] == "running"


@pytest.mark.parametrize("sent", [False, True], ids=["host-died-before-sending", "host-died-after-sending"])
@pytest.mark.parametrize("thread", [None, "daily-{YYYY}{MM}{DD}"], ids=["new-session", "thread"])
def test_a_queue_run_a_dead_host_left_running_is_sent_exactly_once_by_the_next(
        project: Project, sent: bool, thread: str | None) -> None:
    project.support_group()
    extra = "" if thread is None else f", thread_id: '{thread}'"
    item = project.add(DAILY_QUEUE.replace("summary.}", f"summary.{extra}}}"))
    died_claiming(project, item["id"], sent)
    for minutes in (5, 10):  # the next host, and the one after it
        later = SLOT + timedelta(minutes=minutes)
        assert project.firer(FakeClock(later)).tick(later).fired == 0
        (run,) = project.runs(item["id"])
        (job,) = project.queue_rows()
        assert run["status"] == "queued" and run["queued_message_id"] == job["id"] and run["error"] is None
        assert job["timestamp"] == to_text(SLOT)  # the job as it was fired
        assert job["thread_id"] == (None if thread is None else "daily-20260611")  # (UTC tokens of the slot)


@pytest.mark.parametrize("change", ["spec-updated", "made-inactive", "days-later"])
def test_a_queue_run_left_running_is_failed_not_sent_when_its_task_changed_or_its_slot_is_long_past(
        project: Project, change: str) -> None:
    """What was sent, if it was, is known only while the task is as it fired it; a day's job is not sent days late
    (review: a thread changed meanwhile sent it to a second session, a run left three days went out with that day's)."""
    project.support_group()
    item = project.add(DAILY_QUEUE)
    died_claiming(project, item["id"], sent=False)
    later = SLOT + (timedelta(days=3, minutes=1) if change == "days-later" else timedelta(minutes=15))
    if change != "days-later":
        new = DAILY_QUEUE.replace("summary.}", "summary., thread_id: b}") if change == "spec-updated" else (
            DAILY_QUEUE + "active: false\n")
        assert project.ncl("scheduled-task", "update", item["id"], "--file", project.spec(new, "new.yaml"), "--now",
                           "2026-06-11T17:40:00").code == 0
    result = project.firer(FakeClock(later)).tick(later)
    runs = project.runs(item["id"])
    assert runs[0]["status"] == "failed" and runs[0]["error"] == scheduled_fire.STOPPED
    assert (result.fired, len(project.queue_rows())) == ((1, 1) if change == "days-later" else (0, 0))  # (its own)


def test_a_recovery_that_failed_is_tried_again_at_the_next_tick(project: Project,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """(Tried once: the run stayed 'running' for the host's life, every later slot of its task recorded missed.)"""
    project.support_group()
    item = project.add(DAILY_QUEUE)
    died_claiming(project, item["id"], sent=False)
    firer, later = project.firer(FakeClock(SLOT + timedelta(minutes=5))), SLOT + timedelta(minutes=5)
    real = scheduled_fire.ScheduledTasks._enqueue
    monkeypatch.setattr(scheduled_fire.ScheduledTasks, "_enqueue", lambda *_: (_ for _ in ()).throw(
        db.DbError("database is locked")))
    with pytest.raises(db.DbError):
        firer.tick(later)
    monkeypatch.setattr(scheduled_fire.ScheduledTasks, "_enqueue", real)
    firer.tick(later)
    assert [r["status"] for r in project.runs(item["id"])] == ["queued"] and len(project.queue_rows()) == 1


def test_after_downtime_within_the_grace_the_latest_slot_fires_once(project: Project) -> None:
    project.support_group()
    item = project.add(DAILY_QUEUE)
    now = SLOT + timedelta(days=2, minutes=20)  # down across three 17:30 slots; the latest is 20 min old
    result = project.firer(FakeClock(now)).tick(now)
    assert (result.fired, result.missed) == (1, 1)  # one missed run written (DESIGN §12.7)
    missed, fired = project.runs(item["id"])
    assert missed["status"] == "missed" and from_text(missed["scheduled_for"]) == SLOT
    assert missed["missed_slots"] == 2 and missed["error"] == (
        "2 slot(s) from 2026-06-11T21:30:00.000Z before the one at 2026-06-13T21:30:00.000Z, which runs, not run: "
        "the host was not running")
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
    assert missed["status"] == "missed" and missed["missed_slots"] == 3 and missed["error"] == (
        "3 slot(s) from 2026-06-11T21:30:00.000Z to 2026-06-13T21:30:00.000Z not run: the host was not running")
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


def test_a_host_started_in_another_zone_keeps_1730_local(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13, one zone at a time: added in New York (17:30 EDT), the host now runs in Tokyo: 17:30 JST."""
    project.support_group()
    item = project.add(DAILY_QUEUE)
    assert from_text(item["next_run"]) == SLOT
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    clock = FakeClock(utc("2026-06-11T14:00:00"))  # 23:00 JST, 10:00 EDT: before both 17:30s of the day
    with caplog.at_level(logging.INFO):
        assert project.firer(clock).tick(clock.now()).fired == 0
    (listed,) = project.listed()
    assert from_text(listed["next_run"]) == utc("2026-06-12T08:30:00")  # Friday 17:30 JST
    assert f"scheduled task {item['id']} re-planned for TZ Asia/Tokyo: 2026-06-11 17:30 America/New_York -> " \
           "2026-06-12 17:30 Asia/Tokyo" in caplog.text
