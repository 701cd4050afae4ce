"""System requests: what a runner asks the host to do, as ``messages_out`` rows of kind ``system``
(DESIGN §12.1). The runner validates before writing; the host validates again before applying."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from schemas import recurring
from schemas.ids import is_id
from schemas.rows import ContextMode
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


Request = Annotated[ScheduleTask | UpdateTask | ControlTask | ListTasks, Field(discriminator="action")]
_adapter: TypeAdapter[ScheduleTask | UpdateTask | ControlTask | ListTasks] = TypeAdapter(Request)


def parse(content: str | dict[str, Any]) -> ScheduleTask | UpdateTask | ControlTask | ListTasks:
    """A system row's content -> its request, or RequestError saying what is wrong in one line."""
    try:
        data = json.loads(content) if isinstance(content, str) else content
        return _adapter.validate_python(data)
    except json.JSONDecodeError as exc:
        raise RequestError(f"request is not JSON: {exc.msg}") from None
    except ValidationError as exc:
        raise RequestError(f"invalid request: {one_line(exc)}") from None
