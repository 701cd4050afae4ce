"""``ncl scheduled-task``: project-level scheduled tasks from ``ScheduledTask`` YAML files (DESIGN §9).

Works with the host running or stopped: the CLI writes central.db and nudges a running host, which fires the
task from its loop. A relative ``host.cwd`` is taken from the folder of the spec file and stored absolute. The
specs module (pydantic models, YAML) is imported by the commands that use it: ``--help`` took 280 ms with it.
"""

from __future__ import annotations

import shlex
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from host.channels import nudge
from host.cli.app import App, now_option, pass_app
from host.cli.output import emit, json_option, local_time, table
from host.store import db
from schemas import ids

if TYPE_CHECKING:
    from host.project_tasks.specs import Spec, Task

COLUMNS = [("id", "ID"), ("name", "NAME"), ("schedule", "SCHEDULE"), ("target_text", "TARGET"),
           ("active", "ACTIVE"), ("next", "NEXT RUN"), ("last_status", "LAST")]
BY_COLUMN = ("by", "CREATED BY")  # only when an agent created one of the tasks listed (issue 16.3)
RUN_COLUMNS = [("id", "RUN"), ("status", "STATUS"), ("scheduled", "SCHEDULED"), ("started", "STARTED"),
               ("duration_ms", "MS"), ("exit_code", "EXIT"), ("result", "MESSAGE / OUTPUT / ERROR")]
file_option = click.option("--file", "spec_file", required=True, metavar="F.yaml",
                           type=click.Path(exists=True, dir_okay=False, path_type=Path),
                           help="The ScheduledTask YAML spec.")


def _target_text(spec: Spec) -> str:
    if spec.queue is not None:
        return f"queue {spec.queue.name}"
    if spec.container is not None:
        return f"container {spec.container.image}: {shlex.join(spec.container.command)}"
    assert spec.host is not None
    return f"host: {shlex.join(spec.host.command)}"


def _row(task: Task, app: App) -> dict[str, Any]:
    origin = task.spec.origin
    return {**task.to_json(), "target_text": _target_text(task.spec),
            "next": local_time(task.next_run, app.settings.tz.zone),
            "by": f"agent of {origin.group.removeprefix('ag-')}" if origin else "operator"}


def _read(app: App, spec_file: Path, now: datetime) -> Spec:
    from host.project_tasks import specs as scheduled

    spec = scheduled.load(spec_file)
    scheduled.check_gap(spec.schedule, app.settings.tz.zone, now, app.settings.scheduled_task_min_gap_s)
    return spec


def _existing(app: App) -> db.Connection:
    """central.db for changing a task that must exist already: with no central.db there is none, and the empty
    read-only view says so without creating the file."""
    return app.central(write=app.settings.central_db.exists())


def _print_one(app: App, verb: str, task: Task, as_json: bool) -> None:
    zone = app.settings.tz.zone
    emit(as_json, task.to_json(), lambda: click.echo(
        f"{verb} {task.id} ({_target_text(task.spec)}); next run {local_time(task.next_run, zone)}"))


@click.group("scheduled-task")
def scheduled_cli() -> None:
    """Project-level scheduled tasks: a cron schedule in TZ firing a queue job, a container or a host command."""


@scheduled_cli.command("add")
@file_option
@now_option
@json_option
@pass_app
def add(app: App, spec_file: Path, now: datetime | None, as_json: bool) -> None:
    """Add a task from a YAML spec: version: v1, kind: ScheduledTask, schedule (5-field cron in TZ) and one
    target: queue: {name, payload} (a job into a wired queue, whose id 'ncl scheduled-task runs' names),
    container: {image, command, timeout_seconds} or host: {command, cwd, timeout_seconds} (a command run as the
    host's user). For example:

    \b
        version: v1
        kind: ScheduledTask
        schedule: 30 17 * * *
        queue: {name: support-jobs, payload: {prompt: Generate the daily summary.}}"""
    from host.project_tasks import specs as scheduled

    moment = now or app.now()
    spec = _read(app, spec_file, moment)
    # A queue target needs a group wired to it: an install with no central.db has none, said without making one.
    with closing(app.central(write=spec.queue is None or app.settings.central_db.exists())) as central:
        task = scheduled.add(central, spec, ids.new_id("sched", moment), moment, app.settings.tz.zone)
    nudge.touch(app.settings)
    _print_one(app, "added", task, as_json)


@scheduled_cli.command("update")
@click.argument("task_id")
@file_option
@now_option
@json_option
@pass_app
def update(app: App, task_id: str, spec_file: Path, now: datetime | None, as_json: bool) -> None:
    """Replace a task's spec (TASK_ID: its id, or its name); a new schedule starts from the first slot after now."""
    from host.project_tasks import specs as scheduled

    moment = now or app.now()
    with closing(_existing(app)) as central:
        task_id = scheduled.get(central, task_id).id  # an unknown one is the first thing to hear about
        task = scheduled.update(central, task_id, _read(app, spec_file, moment), moment, app.settings.tz.zone)
    nudge.touch(app.settings)
    _print_one(app, "updated", task, as_json)


@scheduled_cli.command("list")
@json_option
@pass_app
def list_(app: App, as_json: bool) -> None:
    """Every project-level scheduled task with its next run and last run status (and who created it, when an admin
    group's agent created one: 'delete' removes it like any other)."""
    from host.project_tasks import specs as scheduled

    with closing(app.central()) as central:
        found = scheduled.list_all(central)
    columns = COLUMNS + [BY_COLUMN] * any(t.spec.origin for t in found)
    emit(as_json, {"scheduled_tasks": [t.to_json() for t in found]},
         lambda: table([_row(t, app) for t in found], columns, "no scheduled tasks"))


@scheduled_cli.command("runs")
@click.argument("task_id")
@json_option
@pass_app
def runs(app: App, task_id: str, as_json: bool) -> None:
    """A task's runs (TASK_ID: its id, or its name), oldest first: status, times, exit code or queued message id,
    output tail."""
    from host.project_tasks import specs as scheduled

    with closing(app.central()) as central:
        found = scheduled.runs(central, task_id)
        _job_statuses(app, central, found)
    zone = app.settings.tz.zone

    def human() -> None:
        table([{**r, "scheduled": local_time(r["scheduled_for"], zone), "started": local_time(r["started_at"], zone),
                "result": _summary(r)} for r in found], RUN_COLUMNS, "no runs yet")

    emit(as_json, {"runs": found}, human)


def _job_statuses(app: App, central: db.Connection, runs: list[dict[str, Any]]) -> None:
    """Each run's ``job_status``: where the job a queue target's run sent stands in its session's inbox (pending |
    processing | completed | failed), or None: no job, or its session or row gone or not readable. One read of
    each session's inbox (a daily task's jobs of a year may all be in one)."""
    from host.store import sessions, views

    by_session: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        run["job_status"] = None
        if run["queued_message_id"] and run["queued_session_id"]:
            by_session.setdefault(run["queued_session_id"], []).append(run)
    for session_id, sent in by_session.items():
        try:
            session = sessions.find(central, app.settings, session_id)
            found = views.statuses_of(session.folder / "inbound.db", [r["queued_message_id"] for r in sent]) \
                if session else {}
        except (db.DbError, db.Error, OSError):
            continue
        for run in sent:
            run["job_status"] = found.get(run["queued_message_id"])


def _summary(run: dict[str, Any]) -> str:
    job = run["queued_message_id"] and " ".join(
        [run["queued_message_id"], *([f"in {run['queued_session_id']}"] if run["queued_session_id"] else []),
         *([f"({run['job_status']})"] if run["job_status"] else [])])
    text = job or run["error"] or ""
    tail = (run["output_tail"] or "").strip().splitlines()
    if tail:
        text = f"{text} | {tail[-1]}" if text else tail[-1]
    return text[:100] or "-"


@scheduled_cli.command("delete")
@click.argument("task_id")
@json_option
@pass_app
def delete(app: App, task_id: str, as_json: bool) -> None:
    """Delete a task (TASK_ID: its id, or its name) and its run history (a run in flight finishes)."""
    from host.project_tasks import specs as scheduled

    with closing(_existing(app)) as central:
        task_id = scheduled.delete(central, task_id)
    nudge.touch(app.settings)
    emit(as_json, {"id": task_id, "deleted": True}, lambda: click.echo(f"deleted {task_id}"))
