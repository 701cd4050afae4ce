"""How an idle runner waits for work (issue 13): blocked until the host writes ``inbound.db`` (it does for every
new row, retry and change; Linux inotify on the file, which sees writes made outside the container too), or until
the time the runner asked for (the next row falling due, its next heartbeat, its idle timeout). Where inotify is
missing (another kernel, or the per-user limit of instances reached) it polls every ``NCL_POLL_INTERVAL_S``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.clock import Clock
from schemas.inotify import IN_ATTRIB, IN_DELETE_SELF, IN_IGNORED, IN_MODIFY, IN_MOVE_SELF, Inotify

log = logging.getLogger(__name__)
WATCHED = IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF
GONE = IN_MOVE_SELF | IN_DELETE_SELF | IN_IGNORED


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
        inotify = Inotify()
        try:
            inotify.watch(path, WATCHED)
        except OSError:
            inotify.close()
            raise
        self.inotify: Inotify | None = inotify
        asyncio.get_running_loop().add_reader(inotify.fd, self._read)

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
        assert self.inotify is not None
        if any(mask & GONE for _, mask, _ in self.inotify.drain()):
            log.warning("inbound.db was replaced: the idle runner polls from now on", extra={"action": "runner_polls"})
            self.close()
        self.woken.set()

    async def wait(self, seconds: float) -> bool:
        if self.inotify is None and not self.woken.is_set():
            return await self.fallback.wait(seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), max(0.0, seconds))
        woken = self.woken.is_set()
        self.woken.clear()  # before the runner looks: a write from now on wakes the next wait
        return woken

    def wake(self) -> None:
        self.woken.set()

    def close(self) -> None:
        if self.inotify is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                asyncio.get_running_loop().remove_reader(self.inotify.fd)
            self.inotify.close()
            self.inotify = None
