"""Rows of inbound.db and the JSON ``content`` of messages in and out, by kind (DESIGN §4, §12.2)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The row as read and its column types live in schemas.rows (no pydantic, for the runner); named here too.
from schemas.rows import LIVE_STATUSES as LIVE_STATUSES
from schemas.rows import ContextMode, InKind, InStatus
from schemas.rows import InMessage as InMessage
from schemas.rows import RunOutcome as RunOutcome
from schemas.times import from_text
from schemas.validation import not_blank


class _Content(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=False), separators=(",", ":"))


class ChatContent(_Content):
    text: str
    sender: str = "user"
    sender_id: str | None = None
    notice: str | None = None  # set on host notices (sender "system")


class TaskContent(_Content):
    # Unknown keys are kept: an update merges into them and never drops what it does not know.
    model_config = ConfigDict(extra="allow")
    prompt: str = Field(min_length=1)
    script: str | None = None
    context_mode: ContextMode = "group"

    _prompt = field_validator("prompt")(not_blank)


class QueueContent(_Content):
    queue: str
    prompt: str
    content: list[dict[str, Any]] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)


class WebhookContent(_Content):
    source: str
    payload: Any = None


class MailContent(_Content):
    """A mail taken from a ``mail:ADDRESS`` mailbox (issue 17): its headers, its text (HTML made text) and the names
    of its attachments, saved in the session's ``inbox/<row id>/``. ``from`` is a Python keyword: held as
    ``sender``, stored and read as ``from``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    sender: str = Field(alias="from")
    name: str = ""
    to: list[str] = Field(default_factory=list)
    subject: str = ""
    message_id: str
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    text: str = ""
    attachments: list[str] = Field(default_factory=list)
    attachments_dropped: int = 0  # over NCL_MAIL_MAX_ATTACHMENTS: not saved


class OutChatContent(_Content):
    text: str
    files: list[str] = Field(default_factory=list)


CONTENT_BY_KIND: dict[str, type[_Content]] = {
    "chat": ChatContent,
    "task": TaskContent,
    "queue": QueueContent,
    "webhook": WebhookContent,
    "mail": MailContent,
}


def _instant(value: str | None) -> str | None:
    if value is not None:
        from_text(value)
    return value


class MessageIn(BaseModel):
    """One ``messages_in`` row as the host writes it, validated at the DB edge (``InMessage`` is the row read)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    seq: int | None = None
    kind: InKind
    timestamp: str
    status: InStatus = "pending"
    process_after: str | None = None
    recurrence: str | None = None
    series_id: str | None = None
    tries: int = 0
    trigger: int = 1
    on_wake: int = 0
    platform_id: str | None = None
    channel_type: str | None = None
    thread_id: str | None = None
    content: str
    zone: str | None = None  # a recurring row's: the TZ its process_after was planned in

    @field_validator("timestamp", "process_after")
    @classmethod
    def _stored_time(cls, value: str | None) -> str | None:
        return _instant(value)

    @field_validator("content")
    @classmethod
    def _json(cls, value: str) -> str:
        json.loads(value)
        return value
