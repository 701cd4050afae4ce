"""Project-level scheduled tasks (DESIGN §9): the ``ScheduledTask`` YAML spec and its rows in central.db.

A task fires its cron slots (in TZ) into one target: a ``queue`` (the payload is enqueued), a ``container``
(image + command in the Docker engine) or the ``host`` (an operator's command line). Once-only: a slot is
claimed by moving ``next_run`` past it in the transaction that inserts its run row, so two sweeps, or a crash
and a restart, never fire one slot twice; a unique index on (task, slot) holds the same line in the DB.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from host.channels.queues import QUEUE_NAME, NotJson, check_payload
from host.errors import NclError
from host.files import confined
from host.store import db, groups
from host.store import project_tasks as store
from host.store.project_tasks import Fields, TaskRow
from schemas import cron
from schemas.times import to_text

TargetKind = Literal["queue", "container", "host"]
TARGETS: tuple[TargetKind, ...] = ("queue", "container", "host")
GAP_SPAN = timedelta(days=366)  # the min-gap rule is checked over a year of firings, DST and all
MAX_TIMEOUT_S = 24 * 3600
MAX_SPEC_BYTES = 1 << 20  # a spec file: its queue payload is bounded as ``ncl queue send``'s is
STORED = {"stored": True}  # validation context of a spec read back from its row


class SpecError(NclError):
    """A spec file that cannot be scheduled; the message is one line naming the file and the problem."""


def _argv(value: Any) -> Any:
    # A command line is written by the operator as text; it is split like a shell would, never run by one.
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command line ({exc})") from None
    if isinstance(value, list) and not value:
        raise ValueError("the command is empty")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueTarget(_Strict):
    name: str
    payload: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not QUEUE_NAME.fullmatch(value):
            raise ValueError("a queue name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.context == STORED:  # a row stored before a rule tightened still lists; its firing fails, clearly
            return value
        try:
            check_payload(value)  # queues' own rules: what is stored can be sent when it fires
        except NotJson:
            raise ValueError("must be plain JSON data (quote dates and times; no .nan or .inf; "
                             "no unpaired surrogates)") from None
        except NclError as exc:
            raise ValueError(str(exc)) from None
        return value


class ContainerTarget(_Strict):
    image: str = Field(min_length=1)
    command: list[str]
    timeout_seconds: int = Field(600, ge=1, le=MAX_TIMEOUT_S)

    _split = field_validator("command", mode="before")(_argv)


class HostTarget(_Strict):
    command: list[str]
    cwd: str = "."  # relative: to the folder of the spec file, made absolute when the spec is read
    timeout_seconds: int = Field(600, ge=1, le=MAX_TIMEOUT_S)

    _split = field_validator("command", mode="before")(_argv)


class Origin(_Strict):
    """Who created a task an agent asked for (issue 16.3): the admin group, its session and the request's
    ``messages_out`` id, all taken by the host from where the request came, never from the request; a spec file
    cannot set it."""

    group: str
    session: str
    request: str


class Spec(_Strict):
    version: Literal["v1"]
    kind: Literal["ScheduledTask"]
    schedule: str
    name: str | None = None
    description: str | None = None
    active: bool = True
    queue: QueueTarget | None = None
    container: ContainerTarget | None = None
    host: HostTarget | None = None
    origin: Origin | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return cron.validate(value)

    @model_validator(mode="after")
    def _one_target(self) -> Spec:
        given = [kind for kind in TARGETS if getattr(self, kind) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one target: queue, container or host ({found})")
        return self

    @property
    def target_kind(self) -> TargetKind:
        return next(kind for kind in TARGETS if getattr(self, kind) is not None)

    @property
    def target(self) -> QueueTarget | ContainerTarget | HostTarget:
        found: QueueTarget | ContainerTarget | HostTarget = getattr(self, self.target_kind)
        return found


_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): Spec, ("queue",): QueueTarget, ("container",): ContainerTarget, ("host",): HostTarget, ("origin",): Origin}


def _problem(exc: ValidationError) -> str:
    """The first problem, an unknown key first of all: ``schedul:`` is that, not a missing ``schedule``."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        model = _MODELS.get(tuple(str(part) for part in err["loc"][:-1]), Spec)
        allowed = [key for key in model.model_fields if model is not Spec or key != "origin"]  # (never in a file)
        return f"unknown key {where!r} (allowed: {', '.join(allowed)})"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) and len(repr(value)) <= 60 else ""
    return f"{where}: {message}{shown}" if where else message


class _Loader(yaml.SafeLoader):
    """YAML as a spec may be written: no aliases (a few hundred bytes of them expand to gigabytes), no key given
    twice (YAML 1.2 forbids it; PyYAML would keep the last one silently)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a spec; write the "
                                              "value out", self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key.value!r} is given twice",
                                                            key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep)


def parse(text: str, source: str, base: Path) -> Spec:
    """The validated spec of a YAML document; a relative host ``cwd`` resolves against ``base``."""
    try:
        doc = yaml.load(text, _Loader)
    except RecursionError:
        raise NclError(f"{source}: nested too deeply to read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or type(exc).__name__
        lines = text.splitlines()
        if (isinstance(exc, yaml.scanner.ScannerError) and mark is not None and mark.line < len(lines)
                and lines[mark.line].lstrip().startswith("schedule:")):
            # YAML reads a leading '*' as an alias and refuses a leading '@': such schedules need quotes.
            reason += " (quote a schedule that starts with * or @, e.g. schedule: '*/15 * * * *')"
        raise SpecError(f"{source}: not valid YAML{where}: {reason}") from None
    if not isinstance(doc, dict):
        got = "an empty file" if doc is None else f"a {type(doc).__name__}"
        raise SpecError(f"{source}: a ScheduledTask spec is a mapping (version, kind, schedule, target), not {got}")
    if "origin" in doc:
        raise SpecError(f"{source}: 'origin' is set by the host on the tasks agents create, never in a spec file")
    return of_doc(doc, source, base)


def of_doc(doc: dict[str, Any], source: str, base: Path) -> Spec:
    """The validated spec of a document read from YAML or asked for by an agent (host/scheduling/host_tasks.py):
    the same rules for both; a relative host ``cwd`` resolves against ``base``."""
    try:
        spec = Spec.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(f"{source}: {_problem(exc)}") from None
    if spec.host is not None:
        cwd = (base / spec.host.cwd).resolve()
        if not cwd.is_dir():
            raise SpecError(f"{source}: host.cwd {spec.host.cwd!r} is not a directory ({cwd})")
        spec = spec.model_copy(update={"host": spec.host.model_copy(update={"cwd": str(cwd)})})
    return spec


def load(path: Path) -> Spec:
    try:
        text = confined.read_input(path, MAX_SPEC_BYTES)
    except NclError as exc:
        raise SpecError(str(exc)) from None
    return parse(text, path.name, path.parent)


def check_gap(schedule: str, zone: ZoneInfo, now: datetime, min_gap_s: float) -> None:
    """Refuse a schedule with two consecutive firings closer than ``min_gap_s`` within a year from ``now``."""
    pair = cron.min_gap_violation(schedule, zone, now, min_gap_s, GAP_SPAN)
    if pair is None:
        return
    apart = (pair[1] - pair[0]).total_seconds()  # (before the zone: one zone's times subtract as wall clocks)
    first, second = (t.astimezone(zone) for t in pair)
    raise SpecError(
        f"schedule {schedule!r} fires at {first:%Y-%m-%d %H:%M %Z} and again at {second:%H:%M %Z}, "
        f"{apart / 60:g} min apart; project scheduled tasks run at least {min_gap_s / 60:g} min apart "
        f"(NCL_SCHEDULED_TASK_MIN_GAP_S={min_gap_s:g})")


@dataclass(frozen=True)
class Task:
    """One ``scheduled_tasks`` row with its spec and the status of its latest run."""

    id: str
    spec: Spec
    active: bool
    next_run: str | None
    created_at: str
    updated_at: str
    last_status: str | None

    @classmethod
    def of(cls, row: TaskRow) -> Task:
        spec = Spec.model_validate_json(row.spec, context=STORED)
        return cls(row.id, spec, row.active, row.next_run, row.created_at, row.updated_at, row.last_status)

    def target_json(self) -> dict[str, Any]:
        return {"kind": self.spec.target_kind, **self.spec.target.model_dump(mode="json")}

    def origin_json(self) -> dict[str, str] | None:
        return None if self.spec.origin is None else self.spec.origin.model_dump()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "schedule": self.spec.schedule, "target": self.target_json(), "active": self.active,
                "next_run": self.next_run, "last_status": self.last_status, "name": self.spec.name,
                "description": self.spec.description, "origin": self.origin_json(), "created_at": self.created_at,
                "updated_at": self.updated_at}


def to_row(spec: Spec) -> Fields:
    """The columns a spec determines (``next_run`` aside)."""
    return Fields(spec.name, spec.schedule, spec.target_kind, spec.model_dump_json(exclude_none=True), spec.active)


def first_run(spec: Spec, now: datetime, zone: ZoneInfo) -> str | None:
    return to_text(cron.next_after(spec.schedule, now, zone)) if spec.active else None


# --- storage ---------------------------------------------------------------------------------------

def _check_wired(conn: db.Connection, spec: Spec) -> None:
    """A queue target must name a queue some group has wired: else every firing would fail."""
    if spec.queue is None or groups.wired_to(conn, f"queue:{spec.queue.name}") is not None:
        return
    wired = ", ".join(channel.removeprefix("queue:") for channel, _ in groups.queues(conn)) or "none"
    raise SpecError(f"queue {spec.queue.name!r} is wired to no group (wired queues: {wired}); wire it first: "
                    f"ncl groups update GROUP --channel queue:{spec.queue.name} (or groups create)")


def add(conn: db.Connection, spec: Spec, task_id: str, now: datetime, zone: ZoneInfo) -> Task:
    with db.transaction(conn):
        _check_wired(conn, spec)
        _check_name(conn, spec, task_id)
        store.insert(conn, task_id, to_row(spec), first_run(spec, now, zone), to_text(now), zone.key)
    return get(conn, task_id)


def _check_name(conn: db.Connection, spec: Spec, task_id: str) -> None:
    """An operator's spec file names one task: added twice, it would fire twice; an unnamed one is the same task
    as another of the very same spec. (An agent's tasks, ``origin`` set, are named by its words: held to a count
    instead, ``host_tasks.MAX_HOST_TASKS``.)"""
    if spec.origin is not None:
        return
    if spec.name and (other := store.named(conn, spec.name)) not in (None, task_id):
        raise SpecError(f"a scheduled task named {spec.name!r} exists already ({other}): change it with "
                        f"'ncl scheduled-task update {other} --file …', or give this one another name")
    if not spec.name and (other := store.same_spec(conn, to_row(spec).spec)) not in (None, task_id):
        raise SpecError(f"scheduled task {other} has this very spec already: added again, it would run twice at "
                        f"each slot (to have two, give each a name)")


def update(conn: db.Connection, task_id: str, spec: Spec, now: datetime, zone: ZoneInfo) -> Task:
    """Replace the spec. A new schedule, or a task made active again, starts from the first slot after ``now``;
    otherwise ``next_run`` stays, so an overdue slot still follows the misfire rule. A run in flight finishes."""
    with db.transaction(conn):
        row = _row(conn, task_id)
        task_id = row.id  # (given by its name, maybe)
        _check_wired(conn, spec)
        _check_name(conn, spec, task_id)
        if spec.origin is None and (origin := Task.of(row).spec.origin) is not None:  # who created it, kept
            spec = spec.model_copy(update={"origin": origin})
        keep = row.active and spec.active and row.schedule == spec.schedule
        next_run, planned_in = (row.next_run, row.zone) if keep else (first_run(spec, now, zone), zone.key)
        store.update(conn, task_id, to_row(spec), next_run, to_text(now), planned_in)
    return get(conn, task_id)


def delete(conn: db.Connection, ref: str) -> str:
    """Remove the task (of id or name ``ref``) and its run history (a run in flight finishes and records nothing);
    its id."""
    with db.transaction(conn):
        task_id = _row(conn, ref).id
        store.delete(conn, task_id)
    return task_id


def get(conn: db.Connection, task_id: str) -> Task:
    return Task.of(_row(conn, task_id))


def _row(conn: db.Connection, ref: str) -> TaskRow:
    """The task of id or name ``ref``."""
    row = store.get(conn, ref) or ((named := store.named(conn, ref)) and store.get(conn, named))
    if not row:
        raise NclError(f"unknown scheduled task {ref!r} (see 'ncl scheduled-task list')")
    return row


def list_all(conn: db.Connection) -> list[Task]:
    return [Task.of(row) for row in store.list_all(conn)]


def runs(conn: db.Connection, ref: str) -> list[dict[str, Any]]:
    """The task's runs (of id or name ``ref``), oldest slot first."""
    return [run.to_json() for run in store.runs(conn, _row(conn, ref).id)]
