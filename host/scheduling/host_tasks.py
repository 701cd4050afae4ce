"""Host tasks from agents (issue 16.3): an admin group's agent creates and manages commands the host runs on a
cron schedule (``schedule_task`` with ``taskType: "host"``). Each is a project scheduled task of the host kind
with an id ``host-…`` and its ``origin`` (group, session, request) recorded, so ``ncl scheduled-task list`` shows
who made it and ``delete`` removes it. Its spec passes the checks of a spec file (host/project_tasks/specs.py:
timeout_seconds 1 s to 24 h, an existing cwd, the minimum gap between firings) and the firer runs it as it runs
the operator's (no shell, a session and process group of its own, killed with all it started at its timeout).

Who may: decided here, at each request, from the settings and central.db: only while the operator sets
NCL_ALLOW_AGENT_HOST_TASKS=1, and only an admin group's agent; never from anything in the request. An agent reaches
``host-`` tasks only, never the operator's own (``sched-…``). Such a command runs as the host's user: the operator
who turns this on trusts those agents as far as their own YAML."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from host.errors import NclError
from host.project_tasks import specs
from host.project_tasks.specs import Origin, Task
from host.scheduling.cross_group import Reach
from host.store import db, groups
from host.store import project_tasks as store
from schemas import ids, requests
from schemas.text import one_line
from schemas.times import from_text

log = logging.getLogger(__name__)
MAX_HOST_TASKS = 50  # host tasks agents may hold in all; one more is refused
NAME_CHARS = 80
OFF = ("host tasks from agents are off: the operator allows them for admin groups with "
       "NCL_ALLOW_AGENT_HOST_TASKS=1")
NOT_ADMIN = ("only an admin group's agents may create or manage host tasks, and group {own!r} is not one (the "
             "operator marks admin groups with 'ncl groups update NAME --admin')")


def answer(reach: Reach, request: requests.HostRequest, out_id: str, now: datetime) -> str:
    """Create or change a host task for the session ``reach`` holds; the answer for the agent, or NclError with
    the refusal. One savepoint of central.db: a refused request leaves nothing."""
    if not reach.settings.allow_agent_host_tasks:
        raise NclError(OFF)
    own = reach.session.agent_group_id
    if not groups.is_admin(reach.central, own):
        raise NclError(NOT_ADMIN.format(own=own.removeprefix("ag-")))
    if request.group is not None:
        raise NclError("a host task belongs to no group: leave group out")
    with db.transaction(reach.central):
        if isinstance(request, requests.ScheduleHostTask):
            return _create(reach, request, out_id, now)
        task = _agents(reach.central, request.task_id)
        if isinstance(request, requests.UpdateHostTask):
            if not _asked(request):
                raise NclError("nothing to update: give command, cwd, timeout_seconds, recurrence or prompt")
            doc, asked = json.loads(task.spec.model_dump_json(exclude_none=True, exclude={"origin"})), _asked(request)
            doc = {**doc, **asked, "host": {**doc["host"], **asked.get("host", {})}}
            changed = specs.update(reach.central, task.id, _spec(reach, doc, now), now, reach.settings.tz.zone)
            return _said(reach, "updated", changed)
        if request.action == "cancel_task":
            specs.delete(reach.central, task.id)
            return _said(reach, "cancelled", task)
        active = request.action == "resume_task"
        if task.spec.active == active:
            raise NclError(f"host task {task.id} is {'active' if active else 'paused'} already")
        changed = specs.update(reach.central, task.id, task.spec.model_copy(update={"active": active}), now,
                               reach.settings.tz.zone)
        return _said(reach, "resumed" if active else "paused", changed)


def _create(reach: Reach, request: requests.ScheduleHostTask, out_id: str, now: datetime) -> str:
    if request.command is None or request.recurrence is None:
        raise NclError("a host task needs command and recurrence (a 5-field cron schedule in TZ)")
    if (before := _created_before(reach, out_id)) is not None:
        return _answer(reach, "created", before)
    held = store.count_with_prefix(reach.central, requests.HOST_ID)
    if held >= MAX_HOST_TASKS:
        raise NclError(f"agents hold {held} host tasks already, the most there may be; cancel one first")
    doc = {"version": "v1", "kind": "ScheduledTask", **_asked(request)}
    origin = Origin(group=reach.session.agent_group_id, session=reach.session.id, request=out_id)
    spec = _spec(reach, doc, now).model_copy(update={"origin": origin})
    task = specs.add(reach.central, spec, ids.new_id("host", now), now, reach.settings.tz.zone)
    return _said(reach, "created", task)


def _created_before(reach: Reach, out_id: str) -> Task | None:
    """The host task this very request created already (read again: a host stopped after central.db's commit and
    before the requester's record), so that it is not created twice."""
    for row in store.list_all(reach.central):
        task = Task.of(row) if row.id.startswith(requests.HOST_ID) and row.target_kind == "host" else None
        if task and task.spec.origin and (task.spec.origin.session, task.spec.origin.request) == (reach.session.id,
                                                                                                  out_id):
            return task
    return None


def _asked(request: requests.ScheduleHostTask | requests.UpdateHostTask) -> dict[str, Any]:
    """The spec keys a request gives (an update: only these change)."""
    host = {key: value for key, value in (("command", request.command), ("cwd", request.cwd),
                                          ("timeout_seconds", request.timeout_seconds)) if value is not None}
    doc: dict[str, Any] = {"host": host} if host else {}
    if request.recurrence is not None:
        doc["schedule"] = request.recurrence
    if request.prompt is not None:
        doc["name"] = one_line(request.prompt, NAME_CHARS)
        doc["description"] = request.prompt
    return doc


def _spec(reach: Reach, doc: dict[str, Any], now: datetime) -> specs.Spec:
    """``doc`` checked as a spec file is: a relative cwd is taken from the data directory."""
    spec = specs.of_doc(doc, "host task", reach.settings.data_dir)
    if spec.host is None:
        raise NclError("a host task runs a command on the host (no queue or container)")
    specs.check_gap(spec.schedule, reach.settings.tz.zone, now, reach.settings.scheduled_task_min_gap_s)
    return spec


def _agents(central: db.Connection, task_id: str) -> Task:
    """The host task an agent may reach: ``host-`` ids only (the operator's own tasks are not theirs to change)."""
    row = store.get(central, task_id) if task_id.startswith(requests.HOST_ID) else None
    if row is None or row.target_kind != "host":
        raise NclError(f"no host task {task_id!r} (list_tasks with a group lists them, as [host])")
    return Task.of(row)


def _said(reach: Reach, verb: str, task: Task) -> str:
    """Logged (a command the host will run, and who asked), then the agent's answer."""
    assert task.spec.host is not None
    log.warning("admin group %s %s host task %s: %s", reach.session.agent_group_id, verb, task.id,
                json.dumps(task.spec.host.command),  # as JSON: an argument's newline cannot fake a log line
                extra={"action": "agent_host_task", "task": task.id, "by_session": reach.session.id, "verb": verb})
    return _answer(reach, verb, task)


def _answer(reach: Reach, verb: str, task: Task) -> str:
    assert task.spec.host is not None
    if verb == "cancelled":
        return f"Host task {task.id} cancelled"
    zone = reach.settings.tz.zone
    when = from_text(task.next_run).astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z") if task.next_run else "-"
    return (f"Host task {verb} (id: {task.id}, {task.spec.schedule}, next run: {when}, timeout "
            f"{task.spec.host.timeout_seconds} s, in {task.spec.host.cwd})")
