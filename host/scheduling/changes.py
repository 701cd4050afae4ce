"""Which session folders may have changed since the sweep last looked at them (``Changes``), so that a full sweep
stats only those: an idle session costs no system call (two stats each held an idle sweep over 10,000 sessions at
50-80 ms, issue 3's target 50). Linux inotify on each session folder tells of a write to either file, a change of
its times or mode, a name made, removed or renamed in it, whoever made it (a runner in a container writes the same
files, through its mount). A hint to look again, never trusted data: what a look finds is decided by the stats
(``seen.files_of``) as before. Where it cannot tell, the session is looked at: no inotify here, no room for one
more watch, a queue that overflowed (every session once), and every ``FULL_LOOK_EVERY``-th pass, whatever it says.

A runner can hide a write from it (through a shared memory map, which makes no event) only to have its own session
looked at later: at the next full look at most."""

from __future__ import annotations

import logging

from schemas.inotify import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)

log = logging.getLogger(__name__)
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
           | IN_ONLYDIR | IN_DONT_FOLLOW)
FULL_LOOK_EVERY = 10  # passes: at the default sweep interval, every session is looked at every 10 minutes
# Of the watches this user may have (all its processes together), at most this share: the rest stay for the runners
# (a local runner waits on one for its inbox) and for the live runners' journals (``writes``).
SHARE = 0.5
LIMIT = "/proc/sys/fs/inotify/max_user_watches"


class Changes:
    """``watching`` False: it tells of none, every session is looked at (a one-off sweep's single pass)."""

    def __init__(self, watching: bool = True) -> None:
        self._inotify: Inotify | None = None
        try:
            self._inotify = Inotify() if watching else None
        except (OSError, AttributeError) as exc:
            log.info("every session is looked at in every sweep (no inotify: %s)", exc,
                     extra={"action": "no_inotify"})
        self._watches: dict[str, int] = {}  # session id -> its folder's watch
        self._sessions: dict[int, str] = {}  # the other way
        self._unchanged: set[str] = set()  # watched, and no event since its last look
        self._passes = 0
        self._all = False  # this pass looks at every session
        self._room = _room()
        self._refused = False  # a watch was not made (no room, or the folder not one): said once

    def begin(self, full: bool) -> None:
        """A pass begins (``full``: over every session, else a partial sweep's): what was heard since the last one
        taken in."""
        if full:
            self._passes += 1
        self._all = full and self._passes % FULL_LOOK_EVERY == 0
        if self._inotify is None:
            return
        for wd, mask in self._inotify.drain():
            if wd < 0:  # the queue overflowed: events were lost
                self._unchanged.clear()
                continue
            session_id = self._sessions.get(wd)
            if session_id is not None:
                self._unchanged.discard(session_id)
                if mask & (IN_IGNORED | IN_MOVE_SELF):  # the watch is gone with its folder, or went with it elsewhere
                    self._forget(session_id)

    def unchanged(self, session_id: str, folder: str) -> bool:
        """True: nothing in the folder changed since the caller last looked (it needs no stat). False: look now;
        what changes from now on will be heard (a watch is added first, if there was none)."""
        if not self._all and session_id in self._unchanged:
            return True
        if session_id in self._watches:
            self._unchanged.add(session_id)
        elif self._inotify is not None:
            try:
                if len(self._watches) >= self._room:
                    raise OSError(f"{len(self._watches)} sessions watched, {SHARE:.0%} of what {LIMIT} allows")
                wd = self._watches[session_id] = self._inotify.watch(folder, WATCHED)
            except OSError as exc:  # no room for one more watch (or the folder gone): looked at every pass
                if not self._refused:
                    log.warning("session folders not watched (%s): those are looked at in every sweep", exc,
                                extra={"action": "sessions_not_watched"})
                    self._refused = True
            else:
                self._sessions[wd] = session_id
                self._unchanged.add(session_id)
        return False

    def keep_only(self, active: set[str]) -> None:
        """The watches of sessions no longer active removed."""
        for session_id in [sid for sid in self._watches if sid not in active]:
            self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        """The session's watch removed: the folder at its name is watched anew when it is next looked at."""
        wd = self._watches.pop(session_id)
        del self._sessions[wd]
        self._unchanged.discard(session_id)
        if self._inotify is not None:
            self._inotify.unwatch(wd)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._watches.clear()
        self._sessions.clear()
        self._unchanged.clear()


def _room() -> float:
    """How many session folders may be watched (no bound where the kernel's limit cannot be read)."""
    try:
        with open(LIMIT) as limit:
            return int(limit.read()) * SHARE
    except (OSError, ValueError):
        return float("inf")
