"""System requests: what a runner asks the host to do, as ``messages_out`` rows of kind ``system``
(DESIGN §12.1). The runner validates before writing; the host validates again before applying."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from schemas import recurring
from schemas.ids import is_id
from schemas.rows import MAX_REQUEST_CHARS, ContextMode
from schemas.series_end import MAX_COUNT
from schemas.times import accept_text
from schemas.validation import not_blank, one_line


class RequestError(ValueError):
    """A request that cannot be applied; the message is shown to the agent as a notice."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # Another group whose tasks the request is for (issue 16.3): its name or id, bounded. Whether the session may is
    # the host's decision (host/scheduling/cross_group.py), never the request's.
    group: str | None = Field(default=None, min_length=1, max_length=64)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))


class _Request(_Base):
    task_id: str = Field(alias="taskId", min_length=1, max_length=100)


def _time(value: str | None) -> str | None:
    if value:
        accept_text(value)
    return value or None


def _until(value: str | None) -> str | None:
    """A series' end time as UTC text; ``""`` (clear it) kept for an update."""
    if value:
        accept_text(value)
    return value


def _prompt_text(value: str | None) -> str | None:
    return value if value is None else not_blank(value)


def _cron(value: str | None) -> str | None:
    return recurring.validate(value) if value else value


class ScheduleTask(_Request):
    action: Literal["schedule_task"]
    prompt: str = Field(min_length=1)
    process_after: str | None = Field(None, alias="processAfter")
    recurrence: str | None = None
    script: str | None = None
    context_mode: ContextMode = Field("group", alias="contextMode")
    until: Annotated[str, Field(min_length=1)] | None = None  # issue 16.2: the series' end (schemas/series_end.py)
    count: Annotated[int, Field(ge=1, le=MAX_COUNT, strict=True)] | None = None

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, value: str) -> str:
        if not is_id(value, "task"):
            raise ValueError(f"malformed task id {value!r} (expected task-<epoch_ms>-<6 chars>)")
        return value

    _after = field_validator("process_after")(_time)
    _until = field_validator("until")(_until)
    _recurrence = field_validator("recurrence")(_cron)
    _prompt = field_validator("prompt")(_prompt_text)


class UpdateTask(_Request):
    """Only the fields to change; ``""`` clears recurrence, script, until or count."""

    action: Literal["update_task"]
    prompt: str | None = Field(None, min_length=1)
    process_after: str | None = Field(None, alias="processAfter")
    recurrence: str | None = None
    script: str | None = None
    until: str | None = None
    count: Annotated[int, Field(ge=1, le=MAX_COUNT, strict=True)] | Literal[""] | None = None

    _after = field_validator("process_after")(_time)
    _until = field_validator("until")(_until)
    _recurrence = field_validator("recurrence")(_cron)
    _prompt = field_validator("prompt")(_prompt_text)


class ControlTask(_Request):
    action: Literal["pause_task", "resume_task", "cancel_task"]


class ListTasks(_Base):
    """A group's task list (issue 16.3), answered in ``delivered``: only ever sent with a group."""

    action: Literal["list_tasks"]
    group: str = Field(min_length=1, max_length=64)
    status: Literal["pending", "processing", "paused"] | None = None


class _HostFields(_Base):
    """What a host task is (``taskType: "host"``): a command the host runs on a cron schedule as a ScheduledTask's
    host target runs, only ever for an admin group's agent while the operator allows it (host/scheduling/
    host_tasks.py, which checks the rest as a spec file is checked). Bounded here."""

    task_type: Literal["host"] = Field("host", alias="taskType")
    command: str | list[str] | None = None  # text split like a shell would (never run by one), or the arguments
    recurrence: str | None = Field(None, min_length=1, max_length=200)  # 5-field cron, in TZ
    cwd: str | None = Field(None, min_length=1, max_length=1024)
    timeout_seconds: Annotated[int, Field(strict=True)] | None = Field(None, alias="timeoutSeconds")
    prompt: str | None = Field(None, min_length=1, max_length=500)  # what it is for: the task's description

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        bounded = (0 < len(value) <= 4096 if isinstance(value, str) else isinstance(value, list)
                   and 0 < len(value) <= 64 and all(isinstance(a, str) and len(a) <= 1024 for a in value))
        if value is not None and not bounded:
            raise ValueError("a command is text of 1-4096 characters or a list of 1-64 arguments of at most 1024 "
                             "characters each")
        return value


class ScheduleHostTask(_HostFields):
    action: Literal["schedule_task"]


class UpdateHostTask(_HostFields):
    """Only the fields to change."""

    action: Literal["update_task"]
    task_id: str = Field(alias="taskId", min_length=1, max_length=100)


HostRequest = ScheduleHostTask | UpdateHostTask | ControlTask
HOST_ID = "host-"


def for_host_tasks(request: object) -> TypeGuard[HostRequest]:
    """Whether ``request`` is about host tasks: answered by host/scheduling/host_tasks.py, never as a session's."""
    return isinstance(request, ScheduleHostTask | UpdateHostTask) or (
        isinstance(request, ControlTask) and request.task_id.startswith(HOST_ID))


Request = Annotated[ScheduleTask | UpdateTask | ControlTask | ListTasks, Field(discriminator="action")]
_adapter: TypeAdapter[ScheduleTask | UpdateTask | ControlTask | ListTasks] = TypeAdapter(Request)
_host_adapter: TypeAdapter[ScheduleHostTask | UpdateHostTask] = TypeAdapter(
    Annotated[ScheduleHostTask | UpdateHostTask, Field(discriminator="action")])


def parse(content: str | dict[str, Any]) -> ScheduleTask | UpdateTask | ControlTask | ListTasks | ScheduleHostTask \
        | UpdateHostTask:
    """A system row's content -> its request, or RequestError saying what is wrong in one line. ``taskType``
    "host" (or an update of a ``host-`` id) is a host task's; "agent" is the default, anything else refused."""
    if isinstance(content, str) and len(content) > MAX_REQUEST_CHARS:
        raise RequestError(f"request longer than {MAX_REQUEST_CHARS} characters")
    try:
        data = json.loads(content) if isinstance(content, str) else content
        if isinstance(data, dict) and data.get("action") in ("schedule_task", "update_task"):
            kind = data.get("taskType", "host" if str(data.get("taskId", "")).startswith(HOST_ID) else "agent")
            if kind == "host":
                return _host_adapter.validate_python(data)
            if kind != "agent":
                raise RequestError(f"unknown taskType {repr(kind)[:60]}: 'agent' (the default) or 'host'")
            data = {k: v for k, v in data.items() if k != "taskType"}
        return _adapter.validate_python(data)
    except json.JSONDecodeError as exc:
        raise RequestError(f"request is not JSON: {exc.msg}") from None
    except ValidationError as exc:
        raise RequestError(f"invalid request: {one_line(exc)}") from None
