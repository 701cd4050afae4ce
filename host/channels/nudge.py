"""A file the CLI touches after it writes, so a sleeping host looks again at once instead of at its next sweep.
A touch in the host's own process (an arrival on a channel it serves) sets an event instead, heard at once.

A ``.nudge`` a killed host leaves is a plain file whose time means nothing to the next host (it starts with a full
sweep anyway); anything else found there (a link, an empty folder, a FIFO) is removed when a host starts, and said."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from host.settings import Settings

log = logging.getLogger(__name__)
_heard: dict[Path, Callable[[str | None], object]] = {}  # data dir -> what a touch in this process does instead


def touch(settings: Settings, session_id: str | None = None) -> None:
    """``session_id``: the one session written, when known; a host in this process then looks at that session (and
    those already busy), not at every one."""
    if wake := _heard.get(settings.data_dir):
        wake(session_id)  # the host runs in this process: the file is for the others
    elif settings.data_dir.is_dir():
        (settings.data_dir / ".nudge").touch()


def stamp(settings: Settings) -> int:
    try:
        return (settings.data_dir / ".nudge").stat().st_mtime_ns
    except OSError:
        return 0


@contextmanager
def heard(settings: Settings, wake: Callable[[str | None], object]) -> Iterator[None]:
    """While inside, a touch of this data dir from this process (any thread) calls ``wake`` with the session written
    (None: unknown) on the running loop, and touches no file."""
    _clear_odd(settings.data_dir / ".nudge")
    loop = asyncio.get_running_loop()
    _heard[settings.data_dir] = lambda session_id: loop.call_soon_threadsafe(wake, session_id)
    try:
        yield
    finally:
        _heard.pop(settings.data_dir, None)


def _clear_odd(path: Path) -> None:
    """Remove what is at ``path`` unless it is a plain file (a touch would follow a link)."""
    with contextlib.suppress(OSError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            (os.rmdir if stat.S_ISDIR(mode) else os.unlink)(path)
            log.warning("removed %s, which was not a plain file", path, extra={"action": "stale_nudge_replaced"})
