"""The Matrix channel's rules on plain data (no client here): which events are taken and how, what the bot
remembers between runs, and how a reply is written. Every event is hostile input: sizes are bounded and only
the fields read here are looked at."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from host.files import confined, private

MAX_TEXT = 16_000  # characters of a message body kept; a longer one is cut, saying so
MAX_NAME = 100  # characters of a display name or a file name kept
MAX_DECLINED = 1000  # rooms remembered as declined (each logged once)
CHUNK = 12_000  # characters of a reply per event, at most
MAX_PART_BYTES = 48_000  # of one part's content as JSON: an event is at most 64 KiB, room kept for its envelope
THREAD = "m.thread"
ENCRYPTED = "This agent does not support end-to-end encrypted rooms, so it left this one. Invite it to a room " \
            "with encryption off."
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def allowed(user_id: str, allow: tuple[str, ...]) -> bool:
    """Whether ``user_id`` matches the allow-list: a full user id, or ``@*:server`` for every user of a server."""
    if not isinstance(user_id, str) or ":" not in user_id:
        return False
    server = user_id.split(":", 1)[1]
    return user_id in allow or f"@*:{server}" in allow


def message_id(event_id: str, origin_ms: object) -> str:
    """The ``messages_in`` id of an event, the same each time it is seen: a replayed sync writes nothing twice.
    The time part is the server's timestamp held to the 13 digits ids have; the rest a hash of the event id."""
    ms = origin_ms if isinstance(origin_ms, int) and not isinstance(origin_ms, bool) else 0
    ms = min(max(ms, 10**12), 10**13 - 1)
    digest = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big")
    suffix = "".join(_ID_ALPHABET[(digest // 36**i) % 36] for i in range(6))
    return f"msg-{ms}-{suffix}"


def txn_id(reply_id: str, part: int = 0) -> str:
    """A send's transaction id, from the reply's id: a reply sent again after a crash is not doubled."""
    return f"ncl-{reply_id}-{part}"


def cut(text: object, limit: int) -> str:
    text = text if isinstance(text, str) else ""
    return text if len(text) <= limit else text[:limit] + f"… [cut at {limit} characters]"


def thread_of(content: dict[str, Any]) -> str | None:
    """The root event id of the thread a message is in (``m.thread``), if any."""
    relates = content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == THREAD and isinstance(relates.get("event_id"), str):
        return str(relates["event_id"])[:255]
    return None


def mentions(content: dict[str, Any], user_id: str, display_name: str | None) -> bool:
    """Whether a message names the bot: ``m.mentions``, its user id or a matrix.to link, or its display name."""
    listed = content.get("m.mentions")
    if isinstance(listed, dict) and isinstance(listed.get("user_ids"), list) and user_id in listed["user_ids"]:
        return True
    text = " ".join(str(content.get(key, ""))[:MAX_TEXT] for key in ("body", "formatted_body"))
    if user_id in text or f"matrix.to/#/{user_id}" in text:
        return True
    name = display_name or user_id[1:].split(":", 1)[0]
    return bool(name) and re.search(rf"(?<![\w@]){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None


def safe_file_name(name: object) -> str:
    """A file name an upload may be stored under: no path, no dot files, ASCII letters, digits and ``._ -``."""
    text = _UNSAFE_NAME.sub("_", os.path.basename(name if isinstance(name, str) else ""))[-MAX_NAME:].lstrip(". ")
    return text or "file"


def html_of(markdown: str) -> str:
    """A reply's ``formatted_body``: its Markdown as HTML, raw HTML in it shown as text, and no images (a client
    would fetch one from wherever the agent's words point: the agent may quote anyone)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough").disable("image")
    return str(md.render(markdown))


def text_content(text: str) -> dict[str, Any]:
    """One part of a reply. ``m.mentions`` empty: the text pings nobody (without it, names and ``@room`` in the
    body would, by the homeserver's older push rules)."""
    return {"msgtype": "m.text", "body": text, "format": "org.matrix.custom.html", "formatted_body": html_of(text),
            "m.mentions": {}}


def text_parts(text: str) -> list[dict[str, Any]]:
    """The reply's text in parts of at most ``CHUNK`` characters whose content, HTML and JSON escapes included,
    stays within ``MAX_PART_BYTES`` (an event is at most 64 KiB: 12,000 ``&`` or CJK characters made 72–144 KB)."""
    parts, start = [], 0
    while start < len(text):
        size = CHUNK
        while len(json.dumps(part := text_content(text[start:start + size]))) > MAX_PART_BYTES and size > 1:
            size //= 2
        parts.append(part)
        start += size
    return parts


def in_thread(content: dict[str, Any], thread: str | None) -> dict[str, Any]:
    """The message placed in the thread ``thread`` (a root event id), if any."""
    if thread:
        content["m.relates_to"] = {"rel_type": THREAD, "event_id": thread, "is_falling_back": True,
                                   "m.in_reply_to": {"event_id": thread}}
    return content


@dataclass
class State:
    """What the bot keeps between runs, in one file written whole (a crash leaves the old one or the new one):
    the sync token (advanced only after every message of that sync is committed), the last event handled, the
    login it made with a password (its device keeps transaction ids meaning the same after a restart), and the
    rooms it declined (each logged once)."""

    user_id: str
    next_batch: str | None = None
    last_event_id: str | None = None
    access_token: str | None = None
    device_id: str | None = None
    declined: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, user_id: str) -> State:
        """The state of ``user_id`` (a file of another user, unreadable or damaged: a fresh start)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(user_id)
        if not isinstance(data, dict) or data.get("user_id") != user_id:
            return cls(user_id)
        def text(key: str) -> str | None:
            return data[key] if isinstance(data.get(key), str) else None

        declined = data.get("declined")
        return cls(user_id, text("next_batch"), text("last_event_id"), text("access_token"), text("device_id"),
                   [r for r in declined if isinstance(r, str)] if isinstance(declined, list) else [])

    def decline(self, room_id: str) -> bool:
        """Remember a declined room; False if it was already (its decline was logged then)."""
        if room_id in self.declined:
            return False
        self.declined = [*self.declined[-(MAX_DECLINED - 1):], room_id]
        return True

    def save(self, path: Path) -> None:
        """Write the file whole and durably (it holds the login: 0600), never through a link."""
        private.make_dir(path.parent)
        folder = confined.open_dir(path.parent)
        try:
            private.replace_file(folder, path.name, json.dumps(asdict(self)).encode(), durable=True)
        finally:
            os.close(folder)
