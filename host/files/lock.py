"""``data/host.lock``: one host (or one-off sweep) per data directory."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host.errors import NclError
from host.files import private

log = logging.getLogger(__name__)
_held: set[str] = set()  # data dirs whose lock this process holds


@contextmanager
def host_lock(data_dir: Path) -> Iterator[None]:
    """Hold the lock for the block; a second holder gets "another host is running (pid N)"."""
    if owner := private.foreign(data_dir):  # (before it is made: in a folder of another's, it would be theirs too)
        raise NclError(f"refusing the data directory {data_dir}: {owner} (who can rename it could stand in for the "
                       "host)")
    private.make_dir(data_dir)
    fd = os.open(data_dir / "host.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, private.FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise NclError(f"another host is running (pid {pid})") from None
        _replace_stale(fd, data_dir)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held.add(os.path.realpath(data_dir))
        try:
            yield
        finally:
            _held.discard(os.path.realpath(data_dir))
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock


def _replace_stale(fd: int, data_dir: Path) -> None:
    """Clear the lock for our pid. A pid left in a lock nobody holds is a holder that was killed (any exit of its
    own empties the file): said once, as its other leftovers are (cli.sock, proxy sockets)."""
    if stale := os.pread(fd, 32, 0).decode(errors="replace").strip():
        log.warning("%s was left by pid %s, which died without stopping (SIGKILL?): taken over", data_dir /
                    "host.lock", stale, extra={"action": "stale_lock_replaced", "pid": stale})
    os.ftruncate(fd, 0)


def running_pid(data_dir: Path) -> str | None:
    """The pid (as written, maybe "?") of another process holding the lock of ``data_dir``, or None."""
    if os.path.realpath(data_dir) in _held:
        return None
    try:
        fd = os.open(data_dir / "host.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def unmade(central: Path) -> bool:
    """Whether ``central`` (central.db) is yet to be made: missing, or empty (a first use stopped before its first
    commit)."""
    try:
        return central.stat().st_size == 0
    except FileNotFoundError:
        return True


def refuse_missing_central(data_dir: Path, sessions: Path) -> None:
    """First use makes central.db, but not in place of one that was lost: one missing while a host runs was removed
    under it (an empty one would hide that, and split the install in two), and one missing beside the ``sessions``
    folder of an install would leave them orphaned (their groups, wirings and tasks are only in it). Say it instead."""
    pid = running_pid(data_dir)
    if pid is not None:
        raise NclError(f"{data_dir / 'central.db'} is missing but a host is running (pid {pid}): it was removed "
                       "while the host ran; restore it from a backup or stop the host first")
    try:
        groups = [entry.path for entry in os.scandir(sessions) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    if any(os.listdir(group) for group in groups):
        raise NclError(f"{data_dir / 'central.db'} is missing but {sessions} holds sessions, which a new one would "
                       f"leave orphaned: restore central.db from a backup (to start afresh, move {sessions} away)")
