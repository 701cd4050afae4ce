"""The task tools called with a ``group`` (issue 16.3): another group's tasks, for an admin group's agent.

The runner sees no other session, so such a call is a request the host answers: written at once (not staged with
the turn), then the tool waits up to ANSWER_WAIT_S for the host's answer in its inbox (``delivered``: applied with
the answer, or rejected with why) and returns it. Whether this group may is the host's decision alone, made from
central.db; the runner only checks the arguments. With no answer in time the tool says so: a host that is not
running answers when it starts, and list_tasks with the group shows what became of it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

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


def call(tools: Tools, name: str, arguments: dict[str, Any]) -> str:
    """Run tool ``name`` for the group its arguments name; ToolError when refused here or by the host."""
    from agent_runner.tools import ToolError

    group = arguments["group"]
    if not isinstance(group, str) or not 0 < len(group) <= MAX_GROUP:
        raise ToolError(f"group must be a group's name, 1-{MAX_GROUP} characters")
    if name not in CARRIED:
        raise ToolError(f"{name} takes no group")
    if extra := sorted(set(arguments) - CARRIED[name] - {"group"}):
        raise ToolError(f"{name} with a group takes {', '.join(sorted(CARRIED[name]))}; not {', '.join(extra)}")
    request = _request(tools, name, group, {k: v for k, v in arguments.items() if k != "group"})
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
    return (f"The host has not answered within {ANSWER_WAIT_S:g} s (it may be stopped or busy): the request stays and "
            f"is checked and applied when the host reads it; list_tasks with group {group!r} shows the outcome.")


def _request(tools: Tools, name: str, group: str, args: dict[str, Any]) -> dict[str, Any]:
    """The request, checked as for this conversation's tasks (prompt, time, recurrence and its minimum interval)."""
    from agent_runner.tools import ToolError
    from schemas import requests

    made: requests.ScheduleTask | requests.UpdateTask | requests.ControlTask | requests.ListTasks
    if name == "list_tasks":
        made = requests.ListTasks(action="list_tasks", group=group, status=args.get("status"))
    elif name == "schedule_task":
        tools._prompt(args.get("prompt"))
        if args.get("contextMode", "group") not in ("group", "isolated"):
            raise ToolError("contextMode must be 'group' or 'isolated'")
        made = requests.ScheduleTask(action="schedule_task", taskId=ids.new_id("task", tools.now()),
                                     prompt=args["prompt"], processAfter=tools._when(args.get("processAfter")),
                                     recurrence=tools._recurrence(args.get("recurrence"), args.get("interval_ms")),
                                     script=args.get("script") or None, contextMode=args.get("contextMode", "group"),
                                     group=group)
    elif name == "update_task":
        if args.get("prompt") is not None:
            tools._prompt(args["prompt"])
        recurrence, interval_ms = args.get("recurrence"), args.get("interval_ms")
        expr = "" if recurrence == "" and interval_ms is None else tools._recurrence(recurrence, interval_ms)
        after = tools._when(args.get("processAfter"))
        if args.get("prompt") is None and after is None and expr is None and args.get("script") is None:
            raise ToolError("nothing to update: give prompt, processAfter, recurrence or script")
        made = requests.UpdateTask(action="update_task", taskId=args["taskId"], prompt=args.get("prompt"),
                                   processAfter=after, recurrence=expr, script=args.get("script"), group=group)
    else:
        made = requests.ControlTask(action=name, taskId=args["taskId"], group=group)  # type: ignore[arg-type]
    content: dict[str, Any] = json.loads(made.to_json())
    return content
