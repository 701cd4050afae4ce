"""A live runner's commit wakes the host loop (issue 14): its replies and requests are taken at once, not at the next
live-runner tick. The runner's outbound.db keeps a rollback journal that it deletes at every commit, so a deletion in
its session folder is the signal. One inotify instance for all live runners; none to be had: the loop ticks as before.

The folder is the runner's to write, so what it does there is only ever a hint to look again: events are drained at
most once a loop step (the reader is off between), whatever a runner floods the queue with."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from schemas.inotify import IN_DELETE, IN_DONT_FOLLOW, IN_ONLYDIR, Inotify

log = logging.getLogger(__name__)


class RunnerWrites:
    def __init__(self, woken: asyncio.Event) -> None:
        self.woken = woken
        self.watches: dict[Path, int] = {}
        self._reading = False
        try:
            self.inotify: Inotify | None = Inotify()
        except (OSError, AttributeError) as exc:
            log.info("replies wait for the next tick (no inotify: %s)", exc, extra={"action": "no_inotify"})
            self.inotify = None

    def sync(self, folders: set[Path]) -> None:
        """Watch exactly these folders (the live runners' sessions), and listen again."""
        if self.inotify is None:
            return
        for gone in self.watches.keys() - folders:
            self.inotify.unwatch(self.watches.pop(gone))
        for folder in folders - self.watches.keys():
            try:
                self.watches[folder] = self.inotify.watch(folder, IN_DELETE | IN_ONLYDIR | IN_DONT_FOLLOW)
            except OSError as exc:  # gone, or replaced by a link: that session's replies wait for the tick
                log.debug("not watching %s: %s", folder, exc)
        if not self._reading:
            asyncio.get_running_loop().add_reader(self.inotify.fd, self._heard)
            self._reading = True

    def _heard(self) -> None:
        assert self.inotify is not None
        self.inotify.drain()
        asyncio.get_running_loop().remove_reader(self.inotify.fd)
        self._reading = False
        self.woken.set()

    def close(self) -> None:
        if self.inotify is not None:
            if self._reading:
                asyncio.get_running_loop().remove_reader(self.inotify.fd)
            self.inotify.close()
            self.inotify = None
