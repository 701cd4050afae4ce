"""``data/host.lock``: one host (or one-off sweep) per data directory."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host.errors import NclError


@contextmanager
def host_lock(data_dir: Path) -> Iterator[None]:
    """Hold the lock for the block; a second holder gets "another host is running (pid N)"."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "host.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise NclError(f"another host is running (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock
