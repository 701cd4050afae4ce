"""The files a reply sends: the ``files`` of its content, names in the session's ``outbox/<reply id>/``. The runner
writes the reply's id and names as it likes: an id of ``../../..`` or ``/etc`` put any file of the machine into a
Matrix room, and one name listed a thousand times made a mail of a thousand copies of a sparse 25 MiB file. So a
file is read below the session folder, no link followed, neither the id nor the name leaving the reply's own folder
(``read``), and a name counts once, at most ``MAX_FILES`` of them (``names``: the runner's ``send_file`` sends one a
reply)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from host.errors import cut
from host.files import confined
from host.http.log_throttle import LogThrottle
from host.store.outbox import OutMessage

log = logging.getLogger(__name__)
MAX_FILES = 10
NAME_CHARS = 200  # of a name said in a log line or a notice (the runner's: up to a reply's length)
# Files not sent are said at most this many lines a minute, each channel's: a runner naming ten missing files in each
# of twenty replies a visit rotated the whole host.log away (attack review).
_refusals = LogThrottle(log, lines=20)


def names(reply: OutMessage) -> tuple[list[str], int]:
    """The distinct names of the files ``reply`` sends, in its order, at most ``MAX_FILES``; and how many more it
    named, which are not sent."""
    content = json.loads(reply.content)
    listed = content.get("files") if isinstance(content, dict) else None
    distinct = list(dict.fromkeys(str(name) for name in listed)) if isinstance(listed, list) else []
    return distinct[:MAX_FILES], max(0, len(distinct) - MAX_FILES)


def read(folder: Path, reply: OutMessage, name: str, max_bytes: int) -> bytes:
    """The bytes of the file ``name`` that ``reply`` of the session ``folder`` sends, at most ``max_bytes``; else
    ``confined.Refused`` (a link on the way, an id or name that leaves the reply's folder, a file too large or not
    regular) or ``OSError``."""
    relative = f"outbox/{reply.id}/{name}"
    if "/" in reply.id or "/" in name or name.startswith(".") or reply.id.startswith("."):
        raise confined.Refused(said(relative), "not a file of the reply's own folder", link=True)
    return confined.read_beneath(folder, relative, max_bytes)


def said(name: str) -> str:
    """``name`` as a log line or a notice says it: bounded."""
    return cut(name, NAME_CHARS)


def refused(action: str, session_id: str, reply: OutMessage, name: str, why: str) -> None:
    """Log that the file ``name`` of ``reply`` is not sent, and ``why`` (a few lines a minute: see ``_refusals``)."""
    _refusals.log(logging.WARNING, action, time.monotonic(), "file %s of reply %s not sent: %s", said(name),
                  said(reply.id), cut(why), session=session_id)
