"""The interactive chat's status line (issue 15.4): on a terminal, while a message sent waits for its answer, one
line above the prompt says what is happening to it (waiting for the agent, the agent working, a retry after its
runner died) and for how long. It is read from the session's inbox every ``EVERY_S``; a reply removes it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from host.channels import cli_protocol as protocol
from host.cli.terminal import cell, paint
from host.store import db, inbox, outbox, views
from schemas import clock
from schemas.rows import InMessage, ModelWait
from schemas.times import TimeFormatError, from_text

EVERY_S = 0.5
QUIET_S = 1.0  # an answer quicker than this shows no status at all
AWAY = 20  # replies shown at most, when a chat opens, of those that came while none was open
CLEAR_LINE = "\r\x1b[K"
UP = "\x1b[1A"


def status_text(row: InMessage | None, waited_s: float, zone: ZoneInfo, wait: ModelWait | None = None,
                now: datetime | None = None) -> str:
    """What the status line says of a message sent ``waited_s`` ago whose inbox row is ``row`` ("": nothing);
    ``wait``: what its runner said of a wait to retry the model API (shown while ``now`` is before its end)."""
    if row is None or row.status not in ("pending", "processing"):
        return ""  # answered (its reply is on its way) or gone
    if row.status == "processing" and wait and (until := _retry_at(row, wait, now or clock.now())):
        said = cell(wait.problem[:120])
        doing = f"the model API is busy ({said}); retrying at {until.astimezone(zone):%H:%M:%S %Z}"
    elif row.status == "processing":
        doing = "the agent is working on it"
    elif row.tries and row.process_after:
        at = from_text(row.process_after).astimezone(zone)
        doing = f"its run was cut short; retrying (try {row.tries + 1}) at {at:%H:%M:%S %Z}"
    else:
        doing = "waiting for the agent to start"
    return f"… {doing} ({waited_s:.0f} s)"


def _retry_at(row: InMessage, wait: ModelWait, now: datetime) -> datetime | None:
    """When the retry of ``row``'s batch goes, if its runner waits to retry the model API now."""
    if row.id not in wait.rows:
        return None
    try:
        until = from_text(wait.until)
    except TimeFormatError:
        return None  # the runner's text, not ours
    return until if until > now else None


def _line_buffer() -> str:
    """What the user has typed on the prompt line so far (redrawn after the status line is added or removed)."""
    with contextlib.suppress(ImportError):
        import readline

        return readline.get_line_buffer()
    return ""


def away(folder: Path, last: int = AWAY) -> list[dict[str, Any]]:
    """The replies that came while no chat was open, as the socket pushes them (``id``, ``timestamp``, ``text``,
    ``task``: the task they answer, if its row is among the latest ``last``): kept ('stored') after the last one a
    chat was shown ('delivered'), the latest ``last`` of them."""
    lines = views.transcript(folder, last)
    tasks = {m.id: protocol.task_mark(m.series_id or m.id, m.content)
             for m in lines if m.direction == "in" and m.kind == "task"}
    out = sorted((m for m in lines if m.direction == "out" and m.kind == "chat"),
                 key=lambda m: (m.timestamp, m.seq or 0))
    shown = max((i for i, m in enumerate(out) if m.status == "delivered"), default=-1)
    return [{"id": m.id, "timestamp": m.timestamp, "text": views.text_of(m.content),
             "task": tasks.get(m.in_reply_to or "")} for m in out[shown + 1:] if m.status == "stored"]


@dataclass
class Screen:
    """The terminal of an interactive chat: replies and errors go above the prompt, and on a TTY (``watch``) the
    status line of the oldest message still waiting. Every write goes through ``lock``."""

    zone: ZoneInfo
    folder_of: Callable[[str], Path]  # a session's folder, by id
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # message id: session, seq, sent at
    status: str = ""

    def sent(self, session_id: str, message_id: str, seq: int) -> None:
        with self.lock:
            self.waiting[message_id] = (session_id, seq, time.monotonic())

    def answered(self, seq: int | None) -> None:
        """A reply to the message of inbox ``seq`` came: it and those before it in its batch are answered."""
        with self.lock:
            for message_id, (_, sent_seq, _) in list(self.waiting.items()):
                if seq is not None and sent_seq <= seq:
                    del self.waiting[message_id]

    def above(self, text: str) -> None:
        """Print ``text`` above the prompt (the \\r is ours: back over the "> "; the text's own control characters
        are shown), in place of the status line if one is shown."""
        with self.lock:
            paint(text, CLEAR_LINE + UP + CLEAR_LINE if self.status else "\r", "\n> ")
            self.status = ""

    def watch(self, stop: threading.Event) -> None:
        """Until ``stop``: redraw the status line every ``EVERY_S``."""
        while not stop.wait(EVERY_S):
            self._draw(self._current())

    def _current(self) -> str:
        with self.lock:
            waiting = sorted(self.waiting.items(), key=lambda item: item[1][2])
        for message_id, (session_id, _, sent_at) in waiting:
            waited = time.monotonic() - sent_at
            if waited < QUIET_S:
                return ""
            try:
                folder = self.folder_of(session_id)
                with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
                    row = inbox.get(conn, message_id)
                wait = outbox.model_wait(folder / "outbound.db") if row and row.status == "processing" else None
            except (db.Error, db.DbError, OSError):  # (DbError: a runner's outbound.db the host refuses to read)
                return ""
            if text := status_text(row, waited, self.zone, wait):
                return text
            with self.lock:
                self.waiting.pop(message_id, None)  # answered: its reply is on the way
        return ""

    def _draw(self, text: str) -> None:
        with self.lock:
            if text == self.status:
                return
            if not self.status:  # a new line above the prompt
                paint(text, CLEAR_LINE, "\n> " + _line_buffer())
            elif text:  # the status line, rewritten where it is (the cursor saved and restored)
                paint(text, "\x1b7" + UP + CLEAR_LINE, "\x1b8")
            else:  # gone: the prompt line moves up into its place
                paint("", CLEAR_LINE + UP + CLEAR_LINE, "> " + _line_buffer())
            self.status = text
