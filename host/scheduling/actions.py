"""Applying a runner's system requests (DESIGN §12.1): re-validated here, with session and routing taken from
the inbox the request came with — never from the request. Each is recorded once in ``delivered``."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from host.scheduling import cross_group, host_tasks, tasks
from host.scheduling.recurrence import Policy
from host.store import db, inbox
from host.store.db import transaction
from host.store.outbox import OutMessage
from host.store.task_ids import TaskIds
from schemas import requests
from schemas.times import from_text

log = logging.getLogger(__name__)
MAX_FOR_GROUPS = 10  # requests naming a group answered in one visit; more are refused (the tool says to ask again)


def _routing(conn: db.Connection, in_reply_to: str | None) -> dict[str, str | None]:
    source = inbox.get(conn, in_reply_to) if in_reply_to else None
    return source.routing() if source else inbox.session_routing(conn)


def _asked(row: OutMessage, now: datetime, policy: Policy) -> datetime:
    """When the agent asked: its request's time (its runner writes it) if within the misfire grace before now."""
    try:
        asked = from_text(row.timestamp)
    except ValueError:  # (not a time: the runner writes it)
        return now
    return asked if now - policy.misfire_grace <= asked <= now else now


def _apply(conn: db.Connection, request: requests.ScheduleTask | requests.UpdateTask | requests.ControlTask,
           in_reply_to: str | None, now: datetime, policy: Policy, registry: TaskIds | None,
           asked: datetime) -> str | None:
    """Apply one request; returns a note for the agent when the host changed something it asked for. The runner's
    claims are not read again (``folder=None``): the visit applying it copied them into the inbox just before, and
    its runner may keep the file locked."""
    match request:
        case requests.ScheduleTask():
            stored = tasks.schedule(conn, now, policy, request.task_id, request.prompt, request.process_after,
                                    request.recurrence, request.script, request.context_mode,
                                    _routing(conn, in_reply_to), registry=registry, fresh_if_used=True,
                                    until=request.until, count=request.count, asked=asked)
            if stored != request.task_id:  # DESIGN §13.5: a used id is replaced, and the agent told the new one
                return (f"Task id {request.task_id} is already used in this install; your task is stored as "
                        f"{stored}: use that id to update, pause, resume or cancel it.")
        case requests.UpdateTask():
            tasks.update(conn, request.task_id, now, policy, request.prompt, request.process_after,
                         request.recurrence, request.script, until=request.until, count=request.count, folder=None,
                         asked=asked)
        case requests.ControlTask(action="pause_task"):
            _must(conn, tasks.pause(conn, request.task_id, now, policy, folder=None), request, "paused")
        case requests.ControlTask(action="resume_task"):
            _must(conn, tasks.resume(conn, request.task_id, now, policy), request, "resumed")
        case requests.ControlTask():
            _must(conn, tasks.cancel(conn, request.task_id, now, folder=None), request, "cancelled")
    return None


def _must(conn: db.Connection, changed: int, request: requests.ControlTask, verb: str) -> None:
    if not changed:
        raise tasks.unchanged(conn, request.task_id, verb)


def apply(conn: db.Connection, rows: list[OutMessage], now: datetime, policy: Policy,
          registry: TaskIds | None = None, reach: cross_group.Reach | None = None) -> int:
    """Apply ``messages_out`` system rows in order inside the caller's transaction (a sweep's visit of the session
    whose inbox ``conn`` is); returns how many were applied.
    A rejected one gets a notice saying why; identical notices of one batch are sent once, with their count, so a
    flood of refused requests does not become a flood of notices. A request naming a group (``reach``: what it may
    reach) is answered in its ``delivered`` row instead, which the runner's tool waits for."""
    applied, notes, for_groups = 0, dict[str, int](), 0
    for row in rows:
        status, detail = "applied", None
        try:
            request = requests.parse(row.content)
            with transaction(conn):  # a savepoint: a rejected request leaves no half-applied rows
                if requests.for_host_tasks(request):
                    for_groups += 1
                    detail = _for_host(reach, request, row.id, now, for_groups)
                    note = None
                elif request.group is not None:
                    assert not isinstance(request, requests.ScheduleHostTask | requests.UpdateHostTask)
                    for_groups += 1
                    detail = _for_group(conn, reach, request, now, policy, for_groups)
                    note = None
                else:
                    assert isinstance(request, requests.ScheduleTask | requests.UpdateTask | requests.ControlTask)
                    note = _apply(conn, request, row.in_reply_to, now, policy, registry, _asked(row, now, policy))
            if note:
                inbox.notice(conn, now, "task_id_replaced", note)
        except Exception as exc:  # any failure of one request rejects it with a notice; it must never wedge the session
            if db.is_busy(exc) and not _names_group(row):
                raise  # a file held locked is no fault of the request: the visit fails, and is done again later
            status, detail = "rejected", str(exc)
            if _names_group(row):  # the tool that wrote it tells the agent
                inbox.record_request(conn, row, now, status, detail)
                continue
            text = f"Your {_request(row)} was rejected: {detail}"
            notes[text] = notes.get(text, 0) + 1
        inbox.record_request(conn, row, now, status, detail)
        applied += status == "applied"
    for text, count in notes.items():
        text = text if count == 1 else f"{text} ({count} such requests)"
        inbox.notice(conn, now, "request_rejected", text)
        log.info("%s", text, extra={"action": "request_rejected", "count": count})
    return applied


def _for_group(conn: db.Connection, reach: cross_group.Reach | None, request: cross_group.GroupRequest,
               now: datetime, policy: Policy, count: int) -> str:
    """The answer to a request naming a group; at most MAX_FOR_GROUPS of them a visit (each may open every session
    of a group)."""
    if reach is None:
        raise requests.RequestError("a request naming a group is answered by the host's sweep only")
    if count > MAX_FOR_GROUPS:
        raise requests.RequestError(f"more than {MAX_FOR_GROUPS} requests naming a group at once; ask again")
    return cross_group.answer(conn, reach, request, now, policy)


def _for_host(reach: cross_group.Reach | None, request: requests.HostRequest, out_id: str, now: datetime,
              count: int) -> str:
    """The answer to a request about host tasks (host/scheduling/host_tasks.py), counted with those naming a group."""
    if reach is None:
        raise requests.RequestError("a request about host tasks is answered by the host's sweep only")
    if count > MAX_FOR_GROUPS:
        raise requests.RequestError(f"more than {MAX_FOR_GROUPS} requests naming a group or a host task at once; "
                                    "ask again")
    return host_tasks.answer(reach, request, out_id, now)


def _names_group(row: OutMessage) -> bool:
    """Whether the tool that wrote the row waits for its answer: a group named, or about host tasks."""
    try:
        content = json.loads(row.content)
    except ValueError:
        return False
    return isinstance(content, dict) and (content.get("group") is not None or content.get("taskType") not in (
        None, "agent") or str(content.get("taskId", "")).startswith(requests.HOST_ID))


def _request(row: OutMessage) -> str:
    """"schedule_task request", or "request" when the row names no action that can be read."""
    try:
        return f"{json.loads(row.content)['action']} request"
    except (ValueError, AttributeError, KeyError, TypeError, RecursionError):
        return "request"
