"""A ``messages_in`` row as read, and the names its columns take: no pydantic here, so a runner starts without it
(its import and model building were half of a runner's start-up); the validated models are ``schemas.messages``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import sqlite3

InKind = Literal["chat", "task", "queue", "webhook", "system"]
InStatus = Literal["pending", "processing", "paused", "completed", "failed"]
LIVE_STATUSES: tuple[InStatus, ...] = ("pending", "processing", "paused")
ContextMode = Literal["group", "isolated"]
RunOutcome = Literal["ran", "skipped", "gate_error", "failed", "missed", "cancelled"]


@dataclass(frozen=True, slots=True)
class InMessage:
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
