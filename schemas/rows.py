"""A ``messages_in`` row as read, and the names its columns take: no pydantic here, so a runner starts without it
(its import and model building were half of a runner's start-up); the validated models are ``schemas.messages``.
The rows are NamedTuples, not dataclasses: a frozen dataclass compiles its generated methods when its class is made,
which every command reading an inbox paid (~15M instructions of ``ncl tasks list`` for these three)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    import sqlite3

InKind = Literal["chat", "task", "queue", "webhook", "system", "mail"]
InStatus = Literal["pending", "processing", "paused", "completed", "failed"]
LIVE_STATUSES: tuple[InStatus, ...] = ("pending", "processing", "paused")
ContextMode = Literal["group", "isolated"]
RunOutcome = Literal["ran", "skipped", "gate_error", "failed", "missed", "cancelled"]


class InMessage(NamedTuple):
    """One ``messages_in`` row as read, by host and runner alike: no validation, so reading stays cheap. Fields in
    the table's column order."""

    id: str
    seq: int
    kind: str
    timestamp: str
    status: str
    process_after: str | None
    recurrence: str | None
    series_id: str | None
    tries: int
    platform_id: str | None
    channel_type: str | None
    thread_id: str | None
    content: str
    trigger: int
    on_wake: int
    zone: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> InMessage:
        return cls(row["id"], row["seq"], row["kind"], row["timestamp"], row["status"], row["process_after"],
                   row["recurrence"], row["series_id"], row["tries"], row["platform_id"], row["channel_type"],
                   row["thread_id"], row["content"], row["trigger"], row["on_wake"], row["zone"])

    @property
    def series(self) -> str:
        """The series an occurrence belongs to (its own id for a row that names none)."""
        return self.series_id or self.id

    def routing(self) -> dict[str, str | None]:
        """Where it came from, so where answers to it go: the columns a messages_out row carries."""
        return {"platform_id": self.platform_id, "channel_type": self.channel_type, "thread_id": self.thread_id}


# Characters of a runner's request as stored (its JSON, a task's prompt and script included): more is refused unread.
# Here, not in ``schemas.requests``, so the host's reads of outbound.db go without pydantic (``host.store.outbox``).
MAX_REQUEST_CHARS = 64 << 10
MODEL_WAIT = "model_wait"  # the outbound session_state key of a runner waiting to retry the model API
MODEL_WAIT_MAX_TEXT = 4096  # characters of its value read: a longer one is not a ``ModelWait``


class ModelWait(NamedTuple):
    """A runner waiting to call the model again (rate limited, overloaded, unreachable): the batch's row ids, the
    problem as the API said it and when the next try goes (UTC text). The runner writes it to its session_state;
    the interactive chat shows it. The runner may write anything there: ``parse`` takes only this shape."""

    rows: tuple[str, ...]
    problem: str
    until: str

    def text(self) -> str:
        return json.dumps({"rows": list(self.rows), "problem": self.problem, "until": self.until})

    @classmethod
    def parse(cls, text: str | None) -> ModelWait | None:
        if not text or len(text) > MODEL_WAIT_MAX_TEXT:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        rows, problem, until = (value.get(k) if isinstance(value, dict) else None for k in ("rows", "problem", "until"))
        if not (isinstance(rows, list) and all(isinstance(r, str) for r in rows) and isinstance(problem, str)
                and isinstance(until, str)):
            return None
        return cls(tuple(rows), problem, until)


class Tokens(NamedTuple):
    """Model tokens one turn used, summed over its calls, as the provider reported them (``input`` counts cached
    input too, as the credential proxy does). The runner writes ``wire()`` into its ack's detail under ``tokens``;
    the host reads it back with ``parse``, which takes a whole number from 0 up to ``TOKENS_LIMIT`` for each and leaves
    anything else unknown (None): the runner may write anything there."""

    input: int | None
    output: int | None

    def wire(self) -> dict[str, int | None]:
        return {"input": self.input, "output": self.output}

    @classmethod
    def parse(cls, value: object) -> Tokens | None:
        if not isinstance(value, dict):
            return None
        found = cls(*(_count(value.get(key)) for key in ("input", "output")))
        return None if found.input is None and found.output is None else found


TOKENS_LIMIT = 10**15  # far above any turn's tokens; SQLite's integers hold it exactly


def _count(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= TOKENS_LIMIT else None
