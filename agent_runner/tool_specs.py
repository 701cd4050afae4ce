"""Each of the agent's tools declared once (DESIGN §7): its name (the :class:`agent_runner.tools.Tools` method that
runs it), its arguments (a pydantic model; the field descriptions are what the model reads) and its description.

The MCP server lists the tools and checks each call's arguments by these; dispatch and slash commands find a tool
here by its name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agent_runner.config import RunnerConfig

TaskId = Annotated[str, Field(description="The task's id (task-…), as schedule_task or list_tasks gave it.")]
To = Annotated[str | None, Field(description="A named destination; omit to answer where the current message "
                                             "came from.")]
Group = Annotated[str | None, Field(description="Another group's name, to act on its tasks (only an admin group's "
                                                "agent may; the host refuses others); omit for this conversation.")]
# A host task's (issue 16.3): a command the host runs on a cron schedule, for an admin group's agent only.
TaskType = Annotated[Literal["agent", "host"] | None, Field(
    description="'agent' (default): a prompt for yourself. 'host': a command the host runs on a 5-field cron "
                "recurrence (prompt says what it is for); only an admin group's agent may, when the operator allows "
                "it; its id is host-…, list_tasks with a group lists it as [host].")]
Command = Annotated[str | list[str] | None, Field(description="task_type 'host': the command line (split like a "
                                                              "shell would, never run by one) or its arguments.")]
Cwd = Annotated[str | None, Field(description="task_type 'host': where the command runs (relative: to the host's "
                                              "data directory, the default).")]
TimeoutSeconds = Annotated[int | None, Field(description="task_type 'host': kill the command, with all it started, "
                                                         "after this many seconds, 1-86400 (default 600).")]
# Shared by the scheduling tools' descriptions: ``{tz}`` and ``{gap}`` come from the runner's config.
WHEN = ("Times are ISO 8601; a time without an offset (2026-06-11T09:00:00) is local time in {tz}, "
        "the user's time zone.")
CRON = ("5-field cron (minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5' = weekdays 09:00) "
        "or @hourly/@daily/@weekly/@monthly/@yearly, evaluated in {tz}; or an interval 'every 90m' (units d, h, m, "
        "s, e.g. 'every 1h30m'; elapsed time from the first run), or interval_ms in milliseconds. Runs must be at "
        "least {gap} s apart.")
IntervalMs = Annotated[int | None, Field(description="Interval in milliseconds (3600000 = every hour), instead of "
                                                     "recurrence; stored as 'every 1h'.")]
Until = Annotated[str | None, Field(description="A recurring task's end: no run after this time, ISO 8601; naive = "
                                                "local time.")]

# The argument models have no docstrings: pydantic would put them in the schemas the model reads.


class ScheduleTask(BaseModel):
    prompt: Annotated[str, Field(description="What to do when the task fires, written as an instruction to "
                                             "yourself.")]
    processAfter: Annotated[str | None, Field(description="First (or only) run time, ISO 8601; naive = local "
                                                          "time.")] = None
    recurrence: Annotated[str | None, Field(description="5-field cron in the user's time zone, or an interval "
                                                        "'every 90m'; omit for a one-shot task.")] = None
    script: Annotated[str | None, Field(description="Optional bash gate run before you are woken; its last stdout "
                                                    "line must be JSON {\"wakeAgent\": bool, \"data\": …}.")] = None
    contextMode: Annotated[Literal["group", "isolated"], Field(
        description="'group' (default): runs in this conversation; 'isolated': fresh context, no history read or "
                    "kept.")] = "group"
    until: Until = None
    count: Annotated[int | None, Field(description="A recurring task's number of runs in all, the first included "
                                                   "(missed slots count too); then it ends.")] = None
    interval_ms: IntervalMs = None
    group: Group = None
    task_type: TaskType = None
    command: Command = None
    cwd: Cwd = None
    timeout_seconds: TimeoutSeconds = None


class ListTasks(BaseModel):
    status: Annotated[Literal["pending", "processing", "paused", "requested"] | None,
                      Field(description="Only series in this state: pending, processing, paused or "
                                              "requested.")] = None
    group: Group = None


class UpdateTask(BaseModel):
    taskId: TaskId
    prompt: Annotated[str | None, Field(description="New prompt.")] = None
    processAfter: Annotated[str | None, Field(description="New next run time, ISO 8601; naive = local time.")] = None
    recurrence: Annotated[str | None, Field(description="New 5-field cron or interval 'every 90m'; \"\" makes it "
                                                        "one-shot.")] = None
    script: Annotated[str | None, Field(description="New gate script; \"\" removes it.")] = None
    until: Annotated[str | None, Field(description="New end: no run after this time; \"\" removes it.")] = None
    count: Annotated[int | Literal[""] | None, Field(
        description="Runs left, the next one included; \"\" removes the limit.")] = None
    interval_ms: IntervalMs = None
    group: Group = None
    command: Command = None
    cwd: Cwd = None
    timeout_seconds: TimeoutSeconds = None


class TaskRef(BaseModel):
    taskId: TaskId
    group: Group = None


class SendMessage(BaseModel):
    text: Annotated[str, Field(description="The message text.")]
    to: To = None


class SendFile(BaseModel):
    path: Annotated[str, Field(description="Path of the file, relative to the workspace.")]
    to: To = None


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the model sees it: its name, its arguments and its description; and for people (``/help TOOL``)
    an example of its arguments."""

    name: str
    arguments: type[BaseModel]
    description: str  # ``{when}`` and ``{cron}`` in it become WHEN and CRON for the config (see describe)
    example: dict[str, Any]

    def describe(self, config: RunnerConfig) -> str:
        tz, gap = config.tz, int(config.task_min_interval_s)
        return self.description.format(when=WHEN.format(tz=tz), cron=CRON.format(tz=tz, gap=gap))

    def signature(self) -> str:
        """``{prompt, processAfter?, …}``: the argument names, optional ones marked with ``?``."""
        fields = self.arguments.model_fields
        return "{" + ", ".join(n + ("" if f.is_required() else "?") for n, f in fields.items()) + "}"

    def misfit(self, arguments: dict[str, Any]) -> str | None:
        """What is wrong with the names of ``arguments`` (one it does not take, one it needs that is missing), said
        with the names it takes; None if nothing."""
        fields = self.arguments.model_fields
        unknown = [repr(n) for n in arguments if n not in fields]
        missing = [n for n, f in fields.items() if f.is_required() and n not in arguments]
        if unknown:
            problem = f"{self.name} has no argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
        elif missing:
            problem = f"{self.name} needs {', '.join(missing)}"
        else:
            return None
        return f"{problem}; its arguments: {self.signature()} (see /help {self.name})"

    def help(self, config: RunnerConfig) -> str:
        """``/help TOOL``: what it does, each argument with its meaning, and an example."""
        fields = self.arguments.model_fields
        width = max((len(n) for n in fields), default=0) + len(" (required)")
        lines = [f"/{self.name} {self.signature()}", self.describe(config), "Arguments:"]
        for name, info in fields.items():
            label = name + (" (required)" if info.is_required() else "")
            lines.append(f"  {label.ljust(width)}  {info.description or ''}".rstrip())
        return "\n".join([*lines, f"Example: /{self.name} {json.dumps(self.example, ensure_ascii=False)}"])

    def input_schema(self) -> dict[str, Any]:
        """The arguments' JSON schema, titled as the SDK titles a function's arguments."""
        return {**self.arguments.model_json_schema(), "title": f"{self.name}Arguments"}

    def check(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the schema reads them, those given as null left out; ValidationError if they miss it."""
        return self.arguments.model_validate(arguments).model_dump(exclude_none=True)


EXAMPLE_TASK = "task-1781168400000-abcdef"
TOOLS = {spec.name: spec for spec in (
    ToolSpec("schedule_task", ScheduleTask,
             "Schedule work for yourself: at a time (processAfter), on a recurring schedule (recurrence), or both "
             "(first run at processAfter, then on the schedule). Without either it runs as soon as possible. {when} "
             "Recurrence: {cron} A recurring task may end: after count runs, or at until. Answers with the task id "
             "and the next run times. When it fires you receive the prompt as a message.",
             {"prompt": "Post the standup summary.", "recurrence": "0 9 * * 1-5"}),
    ToolSpec("list_tasks", ListTasks,
             "List this conversation's scheduled tasks, one line per series: id, state, schedule, next runs, prompt. "
             "Includes tasks just requested and not yet applied. With group (admin groups): that group's tasks, each "
             "line labelled [agent], [project] or [host] and naming its group.", {"status": "paused"}),
    ToolSpec("update_task", UpdateTask,
             "Change a scheduled task: only the fields given change. {when} Recurrence: {cron} Pass recurrence \"\" "
             "to make it one-shot, script \"\" to drop its gate script.",
             {"taskId": EXAMPLE_TASK, "recurrence": "30 8 * * 1-5"}),
    ToolSpec("pause_task", TaskRef, "Pause a scheduled task (every future occurrence) until resume_task.",
             {"taskId": EXAMPLE_TASK}),
    ToolSpec("resume_task", TaskRef, "Resume a paused task; an overdue occurrence runs once at once if recently "
                                     "missed.", {"taskId": EXAMPLE_TASK}),
    ToolSpec("cancel_task", TaskRef, "Cancel a scheduled task for good; a run already in progress finishes.",
             {"taskId": EXAMPLE_TASK}),
    ToolSpec("send_message", SendMessage, "Send a chat message now, in addition to your final answer (e.g. progress "
                                          "on long work).", {"text": "Halfway there: 3 of 6 reports read."}),
    ToolSpec("send_file", SendFile, "Send a file from the workspace (a path relative to it; nothing outside it) as "
                                    "an attachment.", {"path": "report.txt"}),
)}
