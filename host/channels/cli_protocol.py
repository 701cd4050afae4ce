"""The wire format of the CLI socket, ``data/cli.sock`` (owner-only): newline-delimited JSON objects, one a line.

A client sends ``{"op": "send", "group": G, "text": T, "thread": K|null, "channel": "cli"|"toolkit"}``, gets
``{"ok": true, "session_id", "message_id", "seq"}`` (or ``{"ok": false, "error"}``), then every reply of that
session as ``{"reply": {"id", "text", "files", "timestamp", "in_reply_to", "in_reply_to_seq", "task", "failed"}}``
while it stays connected: ``task`` is ``{"id", "prompt"}`` (the series and its prompt) when the reply answers a
scheduled task, else null; ``failed`` is true when the message it answers failed (the provider could not answer,
DESIGN §12.3). An interactive chat first sends ``{"op": "listen", "group": G, "thread": K|null}``: the host answers
``{"ok": true, "listening": SESSION_ID|null}`` (null: the chat has no session yet; its first send makes one) and
from then on pushes that session's replies, a task's answer among them, before the chat has sent anything. Having
shown the replies that came while no chat was open (it reads them from the session's files), it sends
``{"op": "shown", "session_id": S, "ids": [...]}``: the host records them delivered (no answer), so the next chat
does not show them again.

Both sides build and read their lines here: the host's channel (host.channels.cli) and the client (``ncl chat``,
``ncl agent invoke``), which imports this module alone of the channel, so a one-shot ``ncl chat`` loads none of
asyncio, the store or pydantic (issue 14.5, tests/test_cli_startup.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.validation import check_text

if TYPE_CHECKING:
    from host.settings import Settings


TASK_PROMPT = 40  # characters of a task's prompt a reply to it carries


def task_mark(series: str, content: str) -> dict[str, str]:
    """A reply's ``task``: the series it answers and the start of its prompt (``content``: the task row's)."""
    try:
        prompt = str(json.loads(content).get("prompt", ""))
    except (ValueError, AttributeError):  # (not a JSON object: no prompt to show)
        prompt = ""
    return {"id": series, "prompt": prompt if len(prompt) <= TASK_PROMPT else prompt[:TASK_PROMPT - 1] + "…"}

def socket_path(settings: Settings) -> Path:
    return settings.data_dir / "cli.sock"


def encode(message: dict[str, Any]) -> bytes:
    """One line of the socket."""
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The object a line holds (ValueError if it holds no JSON object)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object")
    try:
        check_text(message)
    except ValueError as exc:
        raise ValueError(f"the line has {exc}") from None
    return message


def send(group: str, text: str, thread: str | None, channel: str = "cli") -> dict[str, Any]:
    """What a client sends: a message for ``group``'s agent."""
    return {"op": "send", "group": group, "text": text, "thread": thread, "channel": channel}


def listen(group: str, thread: str | None) -> dict[str, Any]:
    """What an interactive client sends first: the replies of its session, as they come, before it sends anything."""
    return {"op": "listen", "group": group, "thread": thread}


def shown(session_id: str, ids: list[str]) -> dict[str, Any]:
    """What an interactive client sends once it has shown its session's replies that came while no chat was open."""
    return {"op": "shown", "session_id": session_id, "ids": ids}


def accepted(session_id: str, message_id: str, seq: int) -> dict[str, Any]:
    """The host's answer to a send it took: the session, and the row's id and seq in its inbox."""
    return {"ok": True, "session_id": session_id, "message_id": message_id, "seq": seq}


def refused(error: str) -> dict[str, Any]:
    """The host's answer to a send it did not take (one line)."""
    return {"ok": False, "error": error}


def reply(reply_id: str, content: dict[str, Any], timestamp: str, in_reply_to: str | None,
          in_reply_to_seq: int | None, task: dict[str, str] | None, failed: bool) -> dict[str, Any]:
    """A reply pushed to every client chatting with its session; ``content`` is the outbox row's."""
    return {"reply": {"id": reply_id, "text": content.get("text", ""), "files": content.get("files", []),
                      "timestamp": timestamp, "in_reply_to": in_reply_to, "in_reply_to_seq": in_reply_to_seq,
                      "task": task, "failed": failed}}
