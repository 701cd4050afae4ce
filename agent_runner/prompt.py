"""One prompt per batch: a time header in TZ, then each message tagged with its kind and sender (DESIGN §7)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from schemas.rows import InMessage


@dataclass(frozen=True)
class Item:
    """A row as the agent sees it; ``script_output`` is a waking gate's data."""

    row: InMessage
    script_output: Any = None


def text_of(row: InMessage) -> str:
    """The words a row carries: chat text, task or queue prompt, a mail with its headers, webhook payload."""
    data = json.loads(row.content)
    if not isinstance(data, dict):
        return json.dumps(data)
    if row.kind == "mail":
        return mail_text(row.id, data)
    for key in ("text", "prompt"):
        if isinstance(data.get(key), str):
            return str(data[key]) + _data_of(row, data)
    return json.dumps(data.get("payload", data), ensure_ascii=False)


def _data_of(row: InMessage, data: dict[str, Any]) -> str:
    """A job's payload beyond its prompt and thread (an app's ticket, its ids): the agent reads it after the
    prompt (it was stored, and never shown)."""
    payload = data.get("payload") if row.kind == "queue" else None
    extra = {k: v for k, v in payload.items() if k not in ("prompt", "thread_id")} if isinstance(payload, dict) else {}
    return f"\n\nData: {json.dumps(extra, ensure_ascii=False)}" if extra else ""


def mail_text(row_id: str, data: dict[str, Any]) -> str:
    """A mail as the agent reads it: who wrote, the subject, where its attachments are, then its text."""
    name = f"{data['name']} " if data.get("name") else ""
    lines = [f"From: {name}<{data.get('from', '?')}>",
             f"Subject: {data.get('subject', '')}"]
    names = [str(name) for name in data.get("attachments") or []]
    if names:
        lines.append(f"Attachments (files in inbox/{row_id}/): {', '.join(names)}")
    if data.get("attachments_dropped"):
        lines.append(f"({data['attachments_dropped']} more attachments were not saved: over the limit)")
    return "\n".join([*lines, "", str(data.get("text") or "")])


def sender_of(row: InMessage) -> str:
    data = json.loads(row.content)
    kind = row.kind
    if kind == "chat" and isinstance(data, dict):
        # A display name is whatever its owner chose ("Alice" twice, or with an invisible character): the id is whom.
        name, who = str(data.get("sender") or "user"), data.get("sender_id")
        return f"{name} ({who})" if isinstance(who, str) and who and who != name else name
    if kind == "queue" and isinstance(data, dict):
        return f"queue:{data.get('queue', '?')}"
    if kind == "mail" and isinstance(data, dict):
        return f"mail:{data.get('from', '?')}"
    if kind == "webhook" and isinstance(data, dict):
        return f"webhook:{data.get('source', '?')}"
    return "scheduler" if kind == "task" else kind


def header(now: datetime, zone: ZoneInfo) -> str:
    local = now.astimezone(zone)
    return f"Current time: {local.strftime('%A %Y-%m-%d %H:%M')} ({zone.key}, UTC{local.strftime('%z')})"


def escape(text: str) -> str:
    """``xml.sax.saxutils.escape``, without its module: that imports urllib.request, http.client and email, a sixth of
    a runner's start-up (issue 14: the 9:00 burst starts a runner per task)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """``xml.sax.saxutils.quoteattr`` (see ``escape``): the text escaped and quoted as an XML attribute value."""
    text = escape(text).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    return '"' + text.replace('"', "&quot;") + '"'


def render(items: list[Item], now: datetime, zone: ZoneInfo) -> str:
    parts = [header(now, zone), ""]
    for item in items:
        row = item.row
        attrs = f"kind={quoteattr(row.kind)} sender={quoteattr(sender_of(row))} id={quoteattr(row.id)}"
        body = escape(text_of(row))
        if item.script_output is not None:
            output = json.dumps(item.script_output, ensure_ascii=False)
            body = f"Script output: {escape(output)}\n{body}"
        parts.append(f"<message {attrs}>\n{body}\n</message>")
    return "\n".join(parts)
