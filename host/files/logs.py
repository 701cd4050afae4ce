"""The host's log file, ``data/host.log``: one record a line, rotated by size, private like every data file, and read
back by ``ncl logs``.

A line is text in TZ (``NCL_LOG_FORMAT=text``)::

    2026-06-11 09:00:00.123+02:00 CEST INFO task task-… ran in 2.3 s [action=task_finished session=sess-… task=task-…]

or one JSON object (``json``): ``{"time": UTC text as stored everywhere, "local": ISO 8601 in TZ, "level",
"message", …the record's extras}``. The extras are a record's ``extra=`` keys (``action`` always, ``session``,
``task``, …), written last in brackets: a bare value when it reads back as the same text, JSON otherwise, so the
text parses back (``parse``) into what the JSON line holds. The message is kept on its one line (line breaks and
other controls escaped); terminals get ``ncl logs``' own escaping.

A record logged while the host visits a session (``visiting``) carries that session unless it names one itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import logging.handlers
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from host.errors import cut
from host.files import private
from schemas.times import from_text, to_text

FILE = "host.log"
MAX_BYTES = 10 << 20  # then host.log becomes host.log.1, .1 becomes .2, …
BACKUPS = 3
MAX_MESSAGE_CHARS = 64 << 10  # a record's message and traceback: more is cut, saying so
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_CONTROLS = {code: "\\n" if code == 10 else "\\r" if code == 13 else f"\\x{code:02x}"
             for code in [*range(0x20), 0x7F] if code != 9}
_BARE = re.compile(r"[^\x00-\x20\"\[\]{}\\\x7f]+")
_KEY = re.compile(r"(\w+)=")
_RAW = re.compile(r"[^ \]]*")
_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) (\S+) ([A-Z]+) (.*)")
_DECODER = json.JSONDecoder()
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_CONSTANTS = {"true": True, "false": False, "null": None, "NaN": float("nan"), "Infinity": float("inf"),
              "-Infinity": float("-inf")}
_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("ncl_log_session", default=None)


@contextlib.contextmanager
def visiting(session_id: str) -> Iterator[None]:
    """Records logged inside name ``session_id`` (see ``SessionFilter``)."""
    token = _session.set(session_id)
    try:
        yield
    finally:
        _session.reset(token)


def replay(session_id: str, records: list[logging.LogRecord]) -> None:
    """Records another process logged while it visited ``session_id`` (a sweep's worker), logged here as if this
    process had."""
    with visiting(session_id):
        for record in records:
            logging.getLogger(record.name).handle(record)


class SessionFilter(logging.Filter):
    """On a handler: gives a record logged inside ``visiting`` its session, unless it names one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (session := _session.get()) is not None and not hasattr(record, "session"):
            record.session = session
        return True


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The keys a record was logged with (``extra=``), in their order."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


def _message(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """The record's message and traceback, at most MAX_MESSAGE_CHARS: one line never rotates the log away."""
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + formatter.formatException(record.exc_info)
    return cut(message, MAX_MESSAGE_CHARS)


def _value(value: Any) -> str:
    if isinstance(value, str) and _BARE.fullmatch(value) and _literal(value) == value:
        return value
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _literal(token: str) -> Any:
    """What a bare token reads back as: a JSON number or constant, else the text itself."""
    if token in _CONSTANTS:
        return _CONSTANTS[token]
    return json.loads(token) if _NUMBER.fullmatch(token) else token


def text_line(when: datetime, level: str, message: str, fields: dict[str, Any], zone: ZoneInfo) -> str:
    """One text line: the instant in ``zone`` (with its offset, so it reads back as an instant), the level, the
    message on one line, the extras."""
    local = when.astimezone(zone)
    pairs = " ".join(f"{key}={_value(value)}" for key, value in fields.items())
    return (f"{local.isoformat(sep=' ', timespec='milliseconds')} {local.tzname()} {level} "
            f"{message.translate(_CONTROLS)} [{pairs}]")


class TextFormatter(logging.Formatter):
    def __init__(self, zone: ZoneInfo, shown: Callable[[str], str] = str) -> None:
        super().__init__()
        self.zone, self.shown = zone, shown  # ``shown``: how the line is made safe for where it goes

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        return self.shown(text_line(when, record.levelname, _message(record, self), extras(record), self.zone))


class JsonFormatter(logging.Formatter):
    def __init__(self, zone: ZoneInfo) -> None:
        super().__init__()
        self.zone = zone

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        data = {"time": to_text(when), "local": when.astimezone(self.zone).isoformat(timespec="milliseconds"),
                "level": record.levelname, "message": _message(record, self)}
        data.update((key, value) for key, value in extras(record).items() if key not in data)
        return json.dumps(data, ensure_ascii=False, default=str)


def formatter(kind: str, zone: ZoneInfo, shown: Callable[[str], str] = str) -> logging.Formatter:
    """The formatter of ``NCL_LOG_FORMAT`` (text | json); ``shown`` makes a text line safe where it goes."""
    return JsonFormatter(zone) if kind == "json" else TextFormatter(zone, shown)


class _PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    def _open(self) -> io.TextIOWrapper:
        # 0600 whatever the umask, and an existing file (an older host's, a shell redirect's) made so too.
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     private.FILE_MODE)
        os.fchmod(fd, private.FILE_MODE)
        return os.fdopen(fd, "a", encoding="utf-8")


def file_handler(data_dir: Path, form: logging.Formatter) -> logging.Handler:
    """``data_dir/host.log``, rotated past MAX_BYTES with BACKUPS older files kept."""
    private.make_dir(data_dir)
    handler = _PrivateRotatingHandler(data_dir / FILE, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(form)
    return handler


def rotated(data_dir: Path) -> list[Path]:
    """The rotated files that exist, oldest first: host.log.3 … host.log.1."""
    return [path for n in range(BACKUPS, 0, -1) if (path := data_dir / f"{FILE}.{n}").is_file()]


def _pairs(text: str) -> dict[str, Any] | None:
    """``k=v k=v`` as written by ``text_line``, or None if ``text`` is not that."""
    found: dict[str, Any] = {}
    at = 0
    while at < len(text):
        key = _KEY.match(text, at)
        if key is None:
            return None
        at = key.end()
        if text[at:at + 1] in ('"', "[", "{"):
            try:
                value, at = _DECODER.raw_decode(text, at)
            except ValueError:
                return None
        else:
            raw = _RAW.match(text, at)
            assert raw is not None  # it matches the empty text too
            value, at = _literal(raw.group()), raw.end()
        found[key.group(1)] = value
        if at < len(text):
            if text[at] != " ":
                return None
            at += 1
    return found


def parse(line: str) -> dict[str, Any] | None:
    """A line of either format back as the JSON object; None for anything else (a torn or foreign line)."""
    if line.startswith("{"):
        try:
            data = json.loads(line)
        except ValueError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("time"), str) else None
    matched = _LINE.fullmatch(line)
    if matched is None or not line.endswith("]"):
        return None
    stamp, _, level, rest = matched.groups()
    local = datetime.fromisoformat(stamp)
    found: dict[str, Any] = {"time": to_text(local), "local": local.isoformat(timespec="milliseconds"),
                             "level": level, "message": rest}
    # The extras are the last bracket that parses to the end of the line: the message before it may hold brackets.
    at = len(rest)
    while (at := rest.rfind("[", 0, at)) >= 0:
        if (at == 0 or rest[at - 1] == " ") and (fields := _pairs(rest[at + 1:-1])) is not None:
            found["message"] = rest[:max(at - 1, 0)]
            found.update((key, value) for key, value in fields.items() if key not in found)
            break
    return found


def line_of(record: dict[str, Any], zone: ZoneInfo) -> str:
    """A record read back (``parse``), as a text line in ``zone``."""
    fields = {key: value for key, value in record.items() if key not in ("time", "local", "level", "message")}
    return text_line(from_text(record["time"]), str(record.get("level")), str(record.get("message")), fields, zone)
