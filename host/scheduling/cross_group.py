"""Task requests naming a group (issue 16.3): an admin group's agent lists, schedules and controls the agent tasks
of any group. The runner writes such a request at once (not staged with its turn) and waits for the answer, which
the host records in the requester's ``delivered`` row (status ``applied`` with the answer, or ``rejected`` with why).

Who may: decided here from central.db (``agent_groups.admin``) and the session the request came from (the path of
its file), never from anything in the request. A group naming itself means the requesting conversation, for every
group; naming another group is refused unless the requester's group is admin. Where: a scheduled task goes to the
target group's most recently active session; a control finds the series among the group's active sessions."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from host.errors import NclError
from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.settings import Settings
from host.store import db, groups, inbox, project_tasks, sessions, task_ids, task_series
from host.store.groups import Group
from host.store.sessions import Session
from host.store.task_ids import TaskIds
from schemas import requests
from schemas.text import one_line
from schemas.times import from_text

log = logging.getLogger(__name__)
MAX_LINES = 200  # an answer lists at most this many tasks, and says how many more there are
PROMPT_CHARS = 80  # a prompt listed as one bounded line: the runner's text is shown, never obeyed
NOT_ADMIN = ("only an admin group's agents may act on another group's tasks, and group {own!r} is not one (the "
             "operator marks admin groups with 'ncl groups update NAME --admin')")

GroupRequest = requests.ScheduleTask | requests.UpdateTask | requests.ControlTask | requests.ListTasks


@dataclass
class Reach:
    """What a request naming a group may reach from the session it came from: central.db (the caller's
    transaction) and the settings; ``touched`` collects the other sessions whose inbox an answer changed."""

    central: db.Connection
    settings: Settings
    session: Session  # the requester's, from the path of its file
    touched: set[str] = field(default_factory=set)

    def target(self, ref: str) -> Group:
        """The group ``ref`` names, if the requester may act on it: its own always, another only from an admin
        group. A non-admin is told so before whether the group exists."""
        try:
            found: Group | None = groups.get(self.central, ref)
        except NclError:
            found = None
        own = self.session.agent_group_id
        if found is not None and found.id == own:
            return found
        if not groups.is_admin(self.central, own):
            raise NclError(NOT_ADMIN.format(own=own.removeprefix("ag-")))
        if found is None:
            raise NclError(f"unknown group {ref!r}")
        return found


def answer(conn: db.Connection, reach: Reach, request: GroupRequest, now: datetime, policy: Policy) -> str:
    """Apply or answer one request naming a group, in the requester's inbox transaction (``conn``); returns the
    answer for the agent, or raises NclError / RequestError with the refusal."""
    assert request.group is not None
    group = reach.target(request.group)
    label = f"group {group.name}"
    if isinstance(request, requests.ListTasks):
        return _listing(conn, reach, group, request.status)
    if isinstance(request, requests.ScheduleTask):
        session = _newest(reach, group)
        if (before := _scheduled_before(conn, reach, group, session, request.task_id)) is not None:
            return f"Task scheduled in {label} (id: {request.task_id}, session {before.id})"
        with _inbox(conn, reach, session) as target:
            stored = tasks.schedule(target, now, policy, request.task_id, request.prompt, request.process_after,
                                    request.recurrence, request.script, request.context_mode,
                                    inbox.session_routing(target),
                                    registry=TaskIds(reach.central, group.id, session.id), fresh_if_used=True)
            _said(target, reach, session, now, f"scheduled task {stored} here")
        return f"Task scheduled in {label} (id: {stored}, session {session.id})"
    session, series_id = _holding(conn, reach, group, request.task_id)
    with _inbox(conn, reach, session) as target:
        if isinstance(request, requests.UpdateTask):
            tasks.update(target, series_id, now, policy, request.prompt, request.process_after, request.recurrence,
                         request.script, folder=session.folder)
            verb = "updated"
        else:
            verb = {"pause_task": "paused", "resume_task": "resumed", "cancel_task": "cancelled"}[request.action]
            if verb == "paused":
                changed = tasks.pause(target, series_id, now, policy, folder=session.folder)
            elif verb == "resumed":
                changed = tasks.resume(target, series_id, now, policy)
            else:
                changed = tasks.cancel(target, series_id, now, folder=session.folder)
            if not changed:
                raise tasks.unchanged(target, series_id, verb)
        _said(target, reach, session, now, f"{verb} task {series_id}")
    return f"Task {series_id} of {label}: {verb}"


def _newest(reach: Reach, group: Group) -> Session:
    """Where a task scheduled for ``group`` goes: the requester's own session for its own group, else the group's
    most recently active session (none: refused; the operator starts one)."""
    if group.id == reach.session.agent_group_id:
        return reach.session
    active = sessions.list_all(reach.central, reach.settings, group.id, status="active")
    if not active:
        raise NclError(f"group {group.name} has no active session to schedule into (the operator starts one with "
                       f"'ncl sessions create --group {group.name}')")
    return max(active, key=lambda s: (s.last_active_at, s.created_at))


def _scheduled_before(conn: db.Connection, reach: Reach, group: Group, newest: Session,
                      task_id: str) -> Session | None:
    """The session of ``group`` already holding the series ``task_id`` (a request read again: a host stopped after
    the other session's commit, before the requester's record), which then is not scheduled a second time under a
    fresh id. Looked for where the registry says, and in the session it would go to."""
    if group.id == reach.session.agent_group_id:
        return None  # the requester's own inbox: the change and its record commit together
    owner = task_ids.lookup(reach.central, task_id)
    places = [newest]
    if owner is not None and owner[0] == group.id and owner[1] != newest.id:
        places += [s for s in sessions.list_all(reach.central, reach.settings, group.id, status="active")
                   if s.id == owner[1]]
    for session in places:
        with _inbox(conn, reach, session, readonly=True) as target:
            if task_series.series_of(target, task_id) == task_id:
                return session
    return None


def _holding(conn: db.Connection, reach: Reach, group: Group, ref: str) -> tuple[Session, str]:
    """The active session of ``group`` holding the series ``ref`` (its id or an occurrence's), and the series id."""
    if group.id == reach.session.agent_group_id:
        candidates = [reach.session]
    else:
        owner = task_ids.lookup(reach.central, ref)
        candidates = sessions.list_all(reach.central, reach.settings, group.id, status="active")
        if owner is not None:  # a series id: its session first, one read
            candidates.sort(key=lambda s: s.id != owner[1])
    for session in candidates:
        with _inbox(conn, reach, session, readonly=True) as target:
            if found := task_series.series_of(target, ref):
                return session, found
    raise NclError(f"no task {ref!r} in group {group.name} (list_tasks with group {group.name!r} lists them)")


@contextmanager
def _inbox(conn: db.Connection, reach: Reach, session: Session, readonly: bool = False) -> Iterator[db.Connection]:
    """The session's inbox: the requester's own connection (already in its transaction) for its own session, else
    the other session's file in one transaction of its own (the change and its notice together), which the sweep
    then visits."""
    if session.id == reach.session.id:
        yield conn
        return
    with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=readonly)) as other:
        if readonly:
            yield other
            return
        with db.transaction(other):
            yield other
    reach.touched.add(session.id)


def _said(target: db.Connection, reach: Reach, session: Session, now: datetime, what: str) -> None:
    """A change made in another session is logged, and noticed in that session (context for its agent)."""
    if session.id == reach.session.id:
        return
    by = reach.session.agent_group_id
    log.info("admin group %s %s in session %s", by, what, session.id,
             extra={"action": "admin_request", "session": session.id, "by_session": reach.session.id})
    inbox.notice(target, now, "admin_request", f"The admin group {by.removeprefix('ag-')} {what}.")


def _listing(conn: db.Connection, reach: Reach, group: Group, status: str | None) -> str:
    """One line per task: ``[agent]`` series of the group's active sessions, then the project's scheduled tasks
    that deliver to the group (a queue wired to it: ``[project]``) or to no group (``[project]`` containers,
    ``[host]`` commands)."""
    zone = reach.settings.tz.zone
    own = group.id == reach.session.agent_group_id
    lines: list[str] = []
    for session in [reach.session] if own else sessions.list_all(reach.central, reach.settings, group.id,
                                                                    status="active"):
        with _inbox(conn, reach, session, readonly=True) as target:
            for item in sorted(_series(target), key=lambda i: (i["next"] or "~", i["id"])):  # soonest first
                if status is None or item["status"] == status:
                    lines.append(f"[agent] group {group.name} {item['id']} [{item['status']}] "
                                 f"{item['recurrence'] or 'once'} next: {_local(item['next'], zone)} "
                                 f"session {session.id} :: {one_line(item['prompt'], PROMPT_CHARS)}")
    for row in project_tasks.list_all(reach.central):
        spec = json.loads(row.spec)
        delivers_to = (groups.wired_to(reach.central, f"queue:{spec['queue']['name']}")
                       if row.target_kind == "queue" else None)
        if row.target_kind == "queue" and delivers_to != group.id:
            continue
        if status is not None and status != ("pending" if row.active else "paused"):
            continue
        lines.append(f"[{'host' if row.target_kind == 'host' else 'project'}] group "
                     f"{group.name if delivers_to else '-'} {row.id} [{'active' if row.active else 'inactive'}] "
                     f"{row.schedule} {row.target_kind} next: {_local(row.next_run, zone)} :: "
                     f"{one_line(row.name or row.id, PROMPT_CHARS)}")
    more = len(lines) - MAX_LINES
    shown = "\n".join(lines[:MAX_LINES]) + (f"\n… and {more} more" if more > 0 else "")
    return shown or f"No tasks in group {group.name}."


def _series(conn: db.Connection) -> Iterator[dict[str, Any]]:
    """The live series of one inbox: id, status, recurrence, next run, prompt."""
    for series_id in task_series.live_ids(conn):
        rows = task_series.live(conn, series_id)
        if not rows:
            continue
        carrier = next((r for r in rows if r.recurrence), rows[0])
        running = any(r.status == "processing" for r in rows)
        waiting = [r.process_after or r.timestamp for r in rows if r.status == "pending"]
        yield {"id": series_id, "status": "processing" if running else carrier.status,
               "recurrence": carrier.recurrence, "next": min(waiting, default=None),
               "prompt": str(json.loads(carrier.content).get("prompt", ""))}


def _local(stored: str | None, zone: Any) -> str:
    return from_text(stored).astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z") if stored else "-"
