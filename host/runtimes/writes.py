"""A live runner's commit wakes the host loop (issue 14): its replies and requests are taken at once, not at the next
live-runner tick. The runner's SQLite keeps outbound.db's rollback journal (``journal_mode=TRUNCATE``; the host made
it with the session) and closes it at the end of each transaction it wrote: that close is the signal, and only the
runner writes that file while it lives (the host's reads open it read-only, if at all). One inotify instance for all
live runners, a watch on each one's journal; none to be had: the loop ticks as before.

The journal is the runner's to write, so what it does there is only ever a hint to look again: events are drained at
most once a loop step (the reader is off between), whatever a runner floods the queue with."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

from host.runtimes.workspace import JOURNAL
from schemas.inotify import IN_CLOSE_WRITE, IN_DONT_FOLLOW, IN_IGNORED, Inotify

log = logging.getLogger(__name__)
HEARD_BYTES = 4096  # of what came, a step reads this much: that anything did is all it needs (a flood waits queued)


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
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    raise NotADirectoryError(f"{folder} is not a directory")
                self.watches[folder] = self.inotify.watch(folder / JOURNAL, IN_CLOSE_WRITE | IN_DONT_FOLLOW)
            except OSError as exc:  # gone, or a link: that session's replies wait for the tick (tried again next step)
                log.debug("not watching %s: %s", folder, exc)
        if not self._reading:
            asyncio.get_running_loop().add_reader(self.inotify.fd, self._heard)
            self._reading = True

    def _heard(self) -> None:
        assert self.inotify is not None
        # A watch that ended (its file removed: a local runner's doing) is made again at the next step, on the file
        # made again there; lost events (one such end among them, perhaps) make every watch made again.
        events = self.inotify.drain(HEARD_BYTES)
        if any(wd < 0 for wd, _, _ in events):
            self.watches = {}
        elif ended := {wd for wd, mask, _ in events if mask & IN_IGNORED}:
            self.watches = {folder: wd for folder, wd in self.watches.items() if wd not in ended}
        asyncio.get_running_loop().remove_reader(self.inotify.fd)
        self._reading = False
        self.woken.set()

    def close(self) -> None:
        if self.inotify is not None:
            if self._reading:
                asyncio.get_running_loop().remove_reader(self.inotify.fd)
            self.inotify.close()
            self.inotify = None
