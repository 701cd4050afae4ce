"""A file the CLI touches after it writes, so a sleeping host looks again at once instead of at its next sweep.
A host hears a touch made in its own process (an arrival on a channel it serves) at once, by an event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from host.settings import Settings

_heard: dict[Path, Callable[[], object]] = {}  # data dir -> what a touch in this process also does


def touch(settings: Settings) -> None:
    path = settings.data_dir / ".nudge"
    if settings.data_dir.is_dir():
        path.touch()
    if wake := _heard.get(settings.data_dir):
        wake()


def stamp(settings: Settings) -> int:
    try:
        return (settings.data_dir / ".nudge").stat().st_mtime_ns
    except OSError:
        return 0


@contextmanager
def heard(settings: Settings, event: asyncio.Event) -> Iterator[None]:
    """While inside, a touch of this data dir from this process (any thread) also sets ``event``."""
    _heard[settings.data_dir] = partial(asyncio.get_running_loop().call_soon_threadsafe, event.set)
    try:
        yield
    finally:
        _heard.pop(settings.data_dir, None)
