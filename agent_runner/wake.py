"""How an idle runner waits for work (issue 13): blocked until the host writes ``inbound.db`` (it does for every
new row, retry and change; Linux inotify on the file, which sees writes made outside the container too), or until
the time the runner asked for (the next row falling due, its next heartbeat, its idle timeout). Where inotify is
missing (another kernel, or the per-user limit of instances reached) it polls every ``NCL_POLL_INTERVAL_S``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.clock import Clock

log = logging.getLogger(__name__)
IN_MODIFY, IN_ATTRIB, IN_MOVE_SELF, IN_DELETE_SELF, IN_IGNORED = 0x2, 0x4, 0x800, 0x400, 0x8000
WATCHED = IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF
GONE = IN_MOVE_SELF | IN_DELETE_SELF | IN_IGNORED
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)


class Wake(Protocol):
    async def wait(self, seconds: float) -> bool:
        """Return when there may be new work (True), or after ``seconds`` at the latest (False)."""

    def wake(self) -> None:
        """End a wait now (the runner is stopping)."""

    def close(self) -> None: ...


@dataclass
class Poll:
    """No signal to wait for: look again every ``interval_s``."""

    clock: Clock
    interval_s: float

    async def wait(self, seconds: float) -> bool:
        await self.clock.sleep(min(seconds, self.interval_s))
        return False

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


class InboxWatch:
    """Waits on inotify for a write to one file. If the file is replaced or removed, the watch is gone: from then
    on it polls (``fallback``), and says so once."""

    def __init__(self, path: Path, fallback: Poll) -> None:
        self.fallback = fallback
        self.woken = asyncio.Event()
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(fd, os.fsencode(path), WATCHED) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch {path}: {os.strerror(error)}")
        self.fd: int | None = fd
        asyncio.get_running_loop().add_reader(fd, self._read)

    @classmethod
    def or_poll(cls, path: Path, fallback: Poll) -> Wake:
        """A watch on ``path``, or the fallback where inotify cannot be had (logged)."""
        try:
            watch: Wake = cls(path, fallback)
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            log.warning("idle runner polls every %s s (no inotify: %s)", fallback.interval_s, exc,
                        extra={"action": "runner_polls"})
            return fallback
        log.debug("idle runner waits for writes to %s", path, extra={"action": "runner_waits"})
        return watch

    def _read(self) -> None:
        """Drain every queued event (the reader is level-triggered: left unread it would spin) and wake the wait."""
        assert self.fd is not None
        gone = False
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 4096):
                for offset in _offsets(chunk):
                    gone |= bool(EVENT.unpack_from(chunk, offset)[1] & GONE)
        if gone:
            log.warning("inbound.db was replaced: the idle runner polls from now on", extra={"action": "runner_polls"})
            self.close()
        self.woken.set()

    async def wait(self, seconds: float) -> bool:
        if self.fd is None and not self.woken.is_set():
            return await self.fallback.wait(seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), max(0.0, seconds))
        woken = self.woken.is_set()
        self.woken.clear()  # before the runner looks: a write from now on wakes the next wait
        return woken

    def wake(self) -> None:
        self.woken.set()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None


def _offsets(chunk: bytes) -> list[int]:
    found, offset = [], 0
    while offset + EVENT.size <= len(chunk):
        found.append(offset)
        offset += EVENT.size + EVENT.unpack_from(chunk, offset)[3]
    return found
