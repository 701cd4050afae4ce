"""What the tests of the idle sweep's watches (``host.scheduling.changes``) share."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from kit import utc

from host.scheduling import sweep
from host.scheduling.changes import Changes
from host.store.sessions import create_files

T0 = utc("2026-05-18T13:00:00")


def written(path: Path) -> None:
    """A write into the file (its first 100 bytes written again as they are)."""
    with open(path, "r+b") as file:
        head = file.read(100)
        file.seek(0)
        file.write(head)


def flood(folder: Path) -> None:
    """More distinct events than the kernel's queue holds."""
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for _ in range(queued // 2 + 10):
        os.utime(folder / "inbound.db")
        os.utime(folder / "outbound.db")


def passes(watch: Changes, session_id: str, folder: Path, count: int) -> list[bool]:
    """What ``count`` full passes are told of the session: True, trusted unchanged."""
    found = []
    for _ in range(count):
        watch.begin(full=True)
        found.append(watch.unchanged(session_id, str(folder)))
    return found


def trusted(folder: Path, session_id: str = "sess-1") -> Changes:
    """The session made at ``folder``, and a ``Changes`` that has looked at it twice: watched, and trusted."""
    create_files(folder)
    watch = Changes()
    assert passes(watch, session_id, folder, 2) == [False, True]
    return watch


def settled(sweeper: sweep.Sweeper, start: int) -> int:
    """Ticks until every session is visited, watched and trusted."""
    opened = [sweeper.tick(T0 + timedelta(seconds=start + n)).sessions_opened for n in range(3)]
    assert opened[-1] == 0
    return start + 3
