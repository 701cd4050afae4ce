"""A runner's ``outbound.db-journal``, looked at before any read of its file, as any file the runner writes: below its
folder, no link followed, never blocking (``guard``); and whether it holds an unfinished commit (``hot``)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from host.errors import Tampered
from host.files import confined

log = logging.getLogger(__name__)
LIVE_JOURNAL_BYTES = 64 << 20  # a runner's transactions change a few pages, its requests' at most a few MiB
HOT = bytes.fromhex("d9d505f920a163d7")  # a rollback journal's first bytes while it holds a commit to undo


def guard(path: Path, live: bool) -> None:
    """What a runner may have left beside or in ``path`` that would stall the host's read of it, refused while its
    runner lives (``Tampered``: it is killed) and taken away once it is dead. Read as any file the runner writes
    (below its folder, no link followed, never blocking):

    - a journal that is not a regular file: SQLite's check for a hot journal opens it read-only, which blocks for
      ever on a FIFO; a dead runner's is removed.
    - a journal larger than twice the file and a MiB: one transaction's journal holds at most the pages it changed,
      as they were, and a hot one is rolled back at the open, all of it (a planted, sparse journal of gigabytes: many
      seconds); a dead runner's is removed unread, what it would have rolled back was its runner's own file. A live
      runner's is refused past ``LIVE_JOURNAL_BYTES`` too: its file may be sparse, gigabytes of nothing to be twice
      of, and a hot journal would be rolled back at each visit (its header written again before each).
    - the header in WAL mode (bytes 18 and 19, SQLite's file format versions, are 2; 1 is a rollback journal's): an
      open of it could wait about 10 s for read slots its runner holds. A dead runner's is switched back at the open.

    A live runner in a container cannot swap a FIFO in after this check: its journal is a mount point there
    (``workspace.keep_journal``)."""
    journal = path.with_name(path.name + "-journal")
    try:
        info: os.stat_result | None = os.stat(journal, follow_symlinks=False)  # (the folder is the host's)
    except OSError:
        info = None
    if not live and (info is None or (stat.S_ISREG(info.st_mode) and info.st_size == 0)):
        return  # (a dead runner's file with no journal, or the empty one it keeps: the common case, one stat)
    try:
        folder = confined.open_dir(path.parent)
    except (confined.Refused, OSError):
        return  # (the open that follows refuses it, as before)
    try:
        header = _peek(folder, path.name, 18, 2)  # (SQLite's file format versions)
        size, wal = (header[0].st_size, header[1] == b"\x02\x02") if header else (0, False)
        if wal and live:
            raise Tampered(f"{path} is in WAL mode: its runner switched it")
        limit = 2 * size + (1 << 20)
        if live:
            limit = min(limit, LIVE_JOURNAL_BYTES)
        if info is None or (stat.S_ISREG(info.st_mode) and info.st_size <= limit):
            return
        planted = "is not a regular file" if not stat.S_ISREG(info.st_mode) else \
            f"holds {info.st_size} bytes beside a file of {size}"
        if live:
            raise Tampered(f"{journal} {planted}: its runner planted it")
        log.warning("removed %s, left by the session's runner: it %s", journal, planted,
                    extra={"action": "planted_journal_removed"})
        confined.remove(folder, journal.name, info)
    finally:
        os.close(folder)


def hot(path: Path) -> bool:
    """Whether ``path``'s journal holds a commit its writer never finished (SQLite rolls it back at the next read)."""
    try:
        folder = confined.open_dir(path.parent)
    except (confined.Refused, OSError):
        return False
    try:
        found = _peek(folder, path.name + "-journal", 0, len(HOT))
    finally:
        os.close(folder)
    return found is not None and stat.S_ISREG(found[0].st_mode) and found[1] == HOT


def _peek(folder: int, name: str, offset: int, length: int) -> tuple[os.stat_result, bytes] | None:
    """What the file ``name`` (in the folder open as ``folder``, no link followed, never blocking) is, and ``length``
    of its bytes from ``offset``; None if it cannot be read (the open that follows refuses it)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    try:
        return os.fstat(fd), os.pread(fd, length, offset)
    except OSError:
        return None
    finally:
        os.close(fd)
