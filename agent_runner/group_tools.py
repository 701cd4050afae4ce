"""The task tools called with a ``group`` (issue 16.3): another group's tasks, for an admin group's agent.

The runner sees no other session, so such a call is a request the host answers: written at once (not staged with
the turn), then the tool waits up to ANSWER_WAIT_S for the host's answer in its inbox (``delivered``: applied with
the answer, or rejected with why) and returns it. Whether this group may is the host's decision alone, made from
central.db; the runner only checks the arguments. With no answer in time the tool says so: a host that is not
running answers when it starts, and list_tasks with the group shows what became of it.

Host tasks (``task_type: "host"``, ids ``host-…``) go the same way, with no group: the host alone decides whether
this agent may (NCL_ALLOW_AGENT_HOST_TASKS and an admin group) and checks the command as a spec file's."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agent_runner.tool_error import ToolError
from schemas import ids

if TYPE_CHECKING:
    from agent_runner.tools import Tools

ANSWER_WAIT_S = 10.0
POLL_S = 0.05
MAX_GROUP = 64
# What each tool carries to another group; anything else given with a group is refused, never dropped unsaid.
CARRIED = {
    "schedule_task": {"prompt", "processAfter", "recurrence", "script", "contextMode", "interval_ms"},
    "list_tasks": {"status"},
    "update_task": {"taskId", "prompt", "processAfter", "recurrence", "script", "interval_ms"},
    "pause_task": {"taskId"},
    "resume_task": {"taskId"},
    "cancel_task": {"taskId"},
}
HOST_FIELDS = {"task_type", "command", "cwd", "timeout_seconds"}  # a host task's own arguments
HOST_CARRIED = {"schedule_task": {"task_type", "prompt", "recurrence", "command", "cwd", "timeout_seconds"},
                "update_task": {"taskId", "task_type", "prompt", "recurrence", "command", "cwd", "timeout_seconds"},
                **{name: {"taskId", "task_type"} for name in ("pause_task", "resume_task", "cancel_task")}}


def answered_by_host(arguments: dict[str, Any]) -> bool:
    """Whether a task tool's call (or a request as written) is one the host answers: another group's tasks, or a
    host task's."""
    return arguments.get("group") is not None or _host_task(arguments)


def _host_task(arguments: dict[str, Any]) -> bool:
    from schemas.requests import HOST_ID

    return "host" in (arguments.get("task_type"), arguments.get("taskType")) or str(
        arguments.get("taskId") or "").startswith(HOST_ID)


def _known_type(arguments: dict[str, Any]) -> None:
    if arguments.get("task_type", "agent") not in ("agent", "host", None):
        raise ToolError(f"unknown task_type {arguments['task_type']!r}: 'agent' (the default) or 'host'")


def own(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call on this conversation's own tasks, for its method: a host task's arguments (or an
    unknown task_type) refused, the routing ones (group, task_type "agent") left out."""
    _known_type(arguments)
    if given := sorted(k for k in HOST_FIELDS - {"task_type"} if arguments.get(k) is not None):
        raise ToolError(f"{', '.join(given)}: only for a host task (task_type 'host')")
    return {k: v for k, v in arguments.items() if k not in HOST_FIELDS | {"group"}}


def call(tools: Tools, name: str, arguments: dict[str, Any]) -> str:
    """Run tool ``name`` for the group its arguments name; ToolError when refused here or by the host."""
    _known_type(arguments)
    group = arguments.get("group")
    host = _host_task(arguments)
    if host and group is not None:
        raise ToolError("a host task belongs to no group: leave group out")
    if not host and (not isinstance(group, str) or not 0 < len(group) <= MAX_GROUP):
        raise ToolError(f"group must be a group's name, 1-{MAX_GROUP} characters")
    carried = (HOST_CARRIED if host else CARRIED).get(name)
    if carried is None:
        raise ToolError(f"{name} takes no {'task_type' if host else 'group'}")
    given = {k: v for k, v in arguments.items() if k != "group" and (k, v) not in (("task_type", "agent"),
                                                                                     ("task_type", None))}
    if extra := sorted(set(given) - carried):
        raise ToolError(f"{name} {'of a host task' if host else 'with a group'} takes {', '.join(sorted(carried))}; "
                        f"not {', '.join(extra)}")
    request = _host_request(name, given) if host else _request(tools, name, str(group), given)
    request_id = tools.store.write("system", request, tools.now(), tools.turn.get("in_reply_to"))
    for _ in range(int(ANSWER_WAIT_S / POLL_S) + 1):
        if (found := tools.store.answer(request_id)) is not None:
            status, detail = found
            if status != "applied":
                raise ToolError(f"refused by the host: {detail}")
            return detail
        tools.pause(POLL_S)
    if name == "list_tasks":
        return f"The host has not answered within {ANSWER_WAIT_S:g} s (it may be stopped or busy); ask again later."
    where = "a group" if host else f"group {group!r}"
    return (f"The host has not answered within {ANSWER_WAIT_S:g} s (it may be stopped or busy): the request stays and "
            f"is checked and applied when the host reads it; list_tasks with {where} shows the outcome.")


def _request(tools: Tools, name: str, group: str, args: dict[str, Any]) -> dict[str, Any]:
    """The request, checked as for this conversation's tasks (prompt, time, recurrence and its minimum interval)."""
    from schemas import requests

    made: requests.ScheduleTask | requests.UpdateTask | requests.ControlTask | requests.ListTasks
    if name == "list_tasks":
        made = requests.ListTasks(action="list_tasks", group=group, status=args.get("status"))
    elif name == "schedule_task":
        tools.check_prompt(args.get("prompt"))
        if args.get("contextMode", "group") not in ("group", "isolated"):
            raise ToolError("contextMode must be 'group' or 'isolated'")
        after = tools.checked_when(args.get("processAfter"))
        expr = tools.checked_recurrence(args.get("recurrence"), args.get("interval_ms"))
        made = requests.ScheduleTask(action="schedule_task", taskId=ids.new_id("task", tools.now()),
                                     prompt=args["prompt"], processAfter=after, recurrence=expr,
                                     script=args.get("script") or None, contextMode=args.get("contextMode", "group"),
                                     group=group)
    elif name == "update_task":
        if args.get("prompt") is not None:
            tools.check_prompt(args["prompt"])
        recurrence, interval_ms = args.get("recurrence"), args.get("interval_ms")
        expr = "" if recurrence == "" and interval_ms is None else tools.checked_recurrence(recurrence, interval_ms)
        after = tools.checked_when(args.get("processAfter"))
        if args.get("prompt") is None and after is None and expr is None and args.get("script") is None:
            raise ToolError("nothing to update: give prompt, processAfter, recurrence or script")
        made = requests.UpdateTask(action="update_task", taskId=args["taskId"], prompt=args.get("prompt"),
                                   processAfter=after, recurrence=expr, script=args.get("script"), group=group)
    else:
        made = requests.ControlTask(action=name, taskId=args["taskId"], group=group)  # type: ignore[arg-type]
    content: dict[str, Any] = json.loads(made.to_json())
    return content


def _host_request(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A host task's request: its bounds checked here (ValidationError: the tool says which), the rest by the host."""
    from schemas import requests

    fields = {"command": args.get("command"), "recurrence": args.get("recurrence"), "cwd": args.get("cwd"),
              "timeoutSeconds": args.get("timeout_seconds"), "prompt": args.get("prompt")}
    made: requests.ScheduleHostTask | requests.UpdateHostTask | requests.ControlTask
    if name == "schedule_task":
        if fields["command"] is None or fields["recurrence"] is None:
            raise ToolError("a host task needs command and recurrence (a 5-field cron schedule)")
        made = requests.ScheduleHostTask.model_validate({"action": "schedule_task", **fields})
    elif name == "update_task":
        if all(value is None for value in fields.values()):
            raise ToolError("nothing to update: give command, cwd, timeout_seconds, recurrence or prompt")
        made = requests.UpdateHostTask.model_validate({"action": "update_task", "taskId": args["taskId"], **fields})
    else:
        made = requests.ControlTask(action=name, taskId=args["taskId"])  # type: ignore[arg-type]
    content: dict[str, Any] = json.loads(made.to_json())
    return content
