"""``queue:NAME`` channels: background jobs (DESIGN §9). A payload's ``prompt`` is text or a list of
``{type: text, text}`` / ``{type: file, url: room:///path}`` items; files resolve inside the group folder.
``thread_id`` (with ``{YYYY}{MM}{DD}{HH}{mm}`` tokens, UTC) picks the session; without it each job gets one."""

from __future__ import annotations

import json
import posixpath
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from host.channels import router
from host.errors import NclError
from host.files import confined
from host.settings import Settings
from host.store import db, groups, sessions, views

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_FILE_BYTES = 1 << 20
# A prompt's files are inlined into its row: at most this many items, each file once, all of them together this
# big (one 512 KiB file named 200 times in a 9 KB payload made a 100 MB row, and its job could never be read).
MAX_FILE_ITEMS = 20
MAX_FILES_BYTES = 2 << 20
MAX_PAYLOAD_BYTES = 1 << 20  # a job ``ncl queue send`` takes, as a webhook's body (webhooks.MAX_BODY)
TOKENS = {"{YYYY}": "%Y", "{MM}": "%m", "{DD}": "%d", "{HH}": "%H", "{mm}": "%M"}


def thread_for(template: str, now: datetime) -> str:
    """Fill the time tokens (UTC): jobs sent in the same period share a session."""
    text = template
    for token, fmt in TOKENS.items():
        text = text.replace(token, now.strftime(fmt))
    return text


class NotJson(NclError):
    """A payload that is not strict JSON data (a YAML spec hears how to write it instead)."""


def _check_url(url: Any) -> None:
    if not isinstance(url, str) or not url.startswith("room:///"):
        raise NclError(f"file item url must be room:///<path inside the group folder>, not {url!r}")
    path = url.removeprefix("room:///")
    # Lexically out already, so a spec can be refused when added; links are refused when the file is read.
    if path.startswith("/") or posixpath.normpath(path).split("/")[0] == "..":
        raise NclError(f"file item {url} is outside the group folder")


def _check_item(item: Any) -> None:
    kind = item.get("type") if isinstance(item, dict) else None
    if kind == "text" and isinstance(item.get("text"), str):
        return
    if kind == "file" and "url" in item:
        _check_url(item["url"])
        return
    raise NclError(f"bad prompt item {item!r}: use {{type: text, text}} or {{type: file, url: room:///path}}")


def check_payload(payload: Any) -> None:
    """Refuse a payload ``send`` would refuse whatever the group's files hold: the one place that says what a
    payload and a prompt item are, for ``send`` and for a scheduled task's spec alike."""
    if not isinstance(payload, dict):
        raise NclError("the payload must be a JSON object")
    try:  # ensure_ascii=False so that an unpaired surrogate fails to encode; the round trip catches non-text keys
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False)
        text.encode()
        same = json.loads(text) == payload
    except (TypeError, ValueError, UnicodeError):
        same = False
    if not same:
        raise NotJson("the payload must be strict JSON data (no NaN or Infinity, no unpaired surrogates, "
                      "no dates or other non-JSON values, text keys only)")
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt:
        for item in prompt:
            _check_item(item)
        if (files := sum(item["type"] == "file" for item in prompt)) > MAX_FILE_ITEMS:
            raise NclError(f"payload \"prompt\" has {files} file items; at most {MAX_FILE_ITEMS}")
        if all(item["type"] == "text" and not item["text"].strip() for item in prompt):  # issue 11
            raise NclError('payload "prompt" items are only empty or whitespace text: give text or a file')
    elif not isinstance(prompt, str) or not prompt.strip():
        raise NclError('payload needs "prompt": a non-empty string or a list of {type: text|file} items')
    template = payload.get("thread_id")  # valid text already: the payload as a whole encodes
    if template is not None and (not isinstance(template, str) or not template.strip()):
        raise NclError("thread_id must be a non-empty string")
    unknown = sorted(set(re.findall(r"\{[A-Za-z]+\}", template or "")) - set(TOKENS))
    if unknown:  # ({yyyy} for {YYYY}: kept as it is, every job would have gone to one session for good)
        raise NclError(f"thread_id has unknown time token(s) {', '.join(unknown)}: the tokens are {''.join(TOKENS)}")


def _file(group_dir: Path, url: str) -> tuple[str, str]:
    """The name and text of a file item, read without following any link: the folder is the runners' to write,
    so a name may become a link between any check and a read (confined.read_beneath reads what it checked)."""
    name = posixpath.normpath(url.removeprefix("room:///"))
    if name.startswith("/") or name in (".", "..") or name.startswith("../"):
        raise NclError(f"file item {url} is outside the group folder")
    try:
        data = confined.read_beneath(group_dir, name, MAX_FILE_BYTES)
    except confined.Refused as refused:
        if refused.name == str(group_dir):
            raise NclError(f"group folder {group_dir} is {refused.why}; refusing to read {url} from it") from None
        where = "is outside the group folder" if refused.link else "is refused"
        raise NclError(f"file item {url} {where} ({refused.why})") from None
    except FileNotFoundError:
        raise NclError(f"file item {url}: no such file in the group folder") from None
    try:
        return name, data.decode()
    except UnicodeDecodeError:
        raise NclError(f"file item {url} is not text") from None


def prompt_of(payload: dict[str, Any], group_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """The prompt text (files inlined) and the items as given (files kept as files) of a payload that passed
    ``check_payload``: only the files are left to resolve."""
    prompt = payload["prompt"]
    if isinstance(prompt, str):
        return prompt, [{"type": "text", "text": prompt}]
    parts, items, inlined, size = [], [], set(), 0
    for item in prompt:
        if item["type"] == "text":
            parts.append(item["text"])
            items.append({"type": "text", "text": item["text"]})
            continue
        name = posixpath.normpath(item["url"].removeprefix("room:///"))
        if name not in inlined:  # (a file named again is in the prompt once)
            name, text = _file(group_dir, item["url"])
            inlined.add(name)
            size += len(text.encode())
            if size > MAX_FILES_BYTES:
                raise NclError(f"the prompt's files are more than {MAX_FILES_BYTES >> 20} MiB together")
            parts.append(f'<file name="{name}">\n{text}\n</file>')
        items.append({"type": "file", "url": item["url"], "name": name})
    return "\n\n".join(parts), items


def send(central: db.Connection, settings: Settings, now: datetime, queue: str,
         payload: Any, run_id: str | None = None) -> dict[str, str]:
    """Enqueue a job at ``now``. ``run_id``: the scheduled run sending it, whose id fixes the job's (and a new
    session's): sent again with the same ``now`` (its host stopped before the run's end was recorded), it is
    found where it went, not sent twice."""
    if not QUEUE_NAME.fullmatch(queue):
        raise NclError(f"invalid queue name {queue!r}")
    check_payload(payload)  # everything checked before a session is made: a refused job leaves nothing behind
    group = router.group_for(central, f"queue:{queue}")
    try:
        text, items = prompt_of(payload, groups.folder(settings, group.id))
    except (ValueError, OSError, RuntimeError) as exc:  # NUL bytes, over-long names, link loops in a file url
        raise NclError(f"bad file item: {str(exc).splitlines()[0]}") from None
    template = payload.get("thread_id")
    thread = thread_for(template, now) if template else None
    fixed = run_id.split("-", 1)[1] if run_id else None  # (<epoch ms>-<suffix>: an id of the same form)
    arrival = router.Arrival(f"queue:{queue}", "queue",
                             {"queue": queue, "prompt": text, "content": items, "payload": payload},
                             thread=thread, new_session=thread is None, message_id=fixed and f"msg-{fixed}",
                             session_id=fixed and f"sess-{fixed}")
    session, message_id, _ = router.deliver_in(central, settings, now, group, arrival)
    return {"queue": queue, "message_id": message_id, "session_id": session.id}


def summary(central: db.Connection, settings: Settings) -> list[dict[str, Any]]:
    """Each queue with its group and counts of jobs waiting and running, over the group's active sessions."""
    found = []
    for channel, group_id in groups.queues(central):
        counts = {"pending": 0, "processing": 0}
        active = sessions.list_all(central, settings, group_id, status="active")
        for _, jobs in sessions.readable(active, lambda path: views.queue_jobs(path, channel)):  # noqa: B023
            for status, count in jobs.items():
                counts[status] += count
        found.append({"name": channel.split(":", 1)[1], "agent_group_id": group_id, "pending": counts["pending"],
                      "in_flight": counts["processing"]})
    return found
