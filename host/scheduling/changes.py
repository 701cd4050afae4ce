"""Which session folders may have changed since the sweep last looked at them (``Changes``), so that a full sweep
stats only those: an idle session costs no system call (two stats each held an idle sweep over 10,000 sessions at
50-80 ms, issue 3's target 50). Linux inotify on each session folder tells of a write to either file, a change of
its times or mode, a name made, removed or renamed in it, whoever made it through that folder (a runner in a container
writes the same files, through its mount). A write through another name of the same file (a hard link elsewhere, a
descriptor opened through one) or from another machine (a network filesystem) makes no event here: such a write is
seen at the next full look, up to ``FULL_LOOK_EVERY`` passes later (10 minutes by default, where DESIGN's sweep
would see it within one; every session stat'ed at each pass cost an idle sweep over 10,000 sessions 57-94 ms, issue
3's target 50). A hint to look again, never trusted data: what a look finds is decided by the stats
(``seen.files_of``) as before. Where it cannot tell, the session is looked at: no inotify here, no room for one
more watch, a queue that overflowed (every session once), and every ``FULL_LOOK_EVERY``-th pass, whatever it says.

A session whose runner is alive is looked at every pass and not watched (``live``): what a runner writes, or floods
its folder with, is none of the sweep's events. Between its start and the next pass it can fill the queue once: lost
events drop every watch, and every session is looked at once. A runner can hide a write from it (through a shared
memory map, which makes no event) only to have its own session looked at later: at the next full look at most."""

from __future__ import annotations

import errno
import logging
import os

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
# A folder above session folders (a group's, the sessions' root): names made, removed or renamed in it, and its own end.
# (A link to a folder is followed: where the sessions or a group's are kept is the operator's choice.)
ABOVE = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
FULL_LOOK_EVERY = 10  # passes: at the default sweep interval, every session is looked at every 10 minutes
# Of the watches this user may have (all its processes together), at most this share: the rest stay for the runners
# (a local runner waits on one for its inbox) and for the live runners' journals (``writes``).
SHARE = 0.5
LIMIT = "/proc/sys/fs/inotify/max_user_watches"


class Changes:
    """``watching`` False: it tells of none, every session is looked at (a one-off sweep's single pass).

    A watch is on a folder's inode, not its name: a session folder moved away (or removed while some process still
    holds it) takes its watch with it, and one put at its name is not watched. So the two folders above each
    session folder (its group's, and the sessions' root) are watched too, for names made, removed or renamed in
    them: any such change of a session's folder, or of a folder above it, drops the watches at and under that name,
    and the folder now there is watched anew at its next look. Lost events (an overflow) drop every watch."""

    def __init__(self, watching: bool = True) -> None:
        self._watching = watching
        self._inotify: Inotify | None = None
        self._said = False  # that there is no inotify instance to be had: said once
        self._reset()
        self._passes = 0
        self._all = False  # this pass looks at every session
        self._room = _room()
        self._full = False  # no room for one more watch: said once

    def _reset(self) -> None:
        """Every watch dropped at once (a new inotify instance: one call, not one a watch)."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._watching:
            try:
                self._inotify = Inotify()
            except (OSError, AttributeError) as exc:  # (tried again at the next pass: EMFILE may be for a moment)
                if not self._said:
                    log.info("every session is looked at in every sweep (no inotify: %s)", exc,
                             extra={"action": "no_inotify"})
                    self._said = True
        self._watches: dict[str, tuple[int, str]] = {}  # session id -> its folder's watch, and that folder
        self._sessions: dict[int, str] = {}  # a session folder's watch -> its session
        self._at: dict[str, str] = {}  # a session folder -> its session
        self._above: dict[str, int] = {}  # a folder above session folders -> its watch, and the other way
        self._above_at: dict[int, str] = {}
        self._unchanged: set[str] = set()  # watched, and no event since its last look

    def begin(self, full: bool) -> None:
        """A pass begins (``full``: over every session, else a partial sweep's): what was heard since the last one
        taken in."""
        if full:
            self._passes += 1
        self._all = full and self._passes % FULL_LOOK_EVERY == 0
        if self._inotify is None and self._watching:
            self._reset()
        if self._inotify is None:
            return
        for wd, mask, name in self._inotify.drain():
            if wd < 0:  # the queue overflowed: events were lost, a folder's move or removal among them perhaps
                self._reset()
                return
            if (session_id := self._sessions.get(wd)) is not None:
                self._unchanged.discard(session_id)
                if mask & (IN_IGNORED | IN_MOVE_SELF):  # the watch is gone with its folder, or went with it elsewhere
                    self._forget(session_id, ended=bool(mask & IN_IGNORED))
            elif (above := self._above_at.get(wd)) is not None:
                self._drop(above if mask & (IN_IGNORED | IN_MOVE_SELF | IN_DELETE_SELF) else os.path.join(above, name))

    def unchanged(self, session_id: str, folder: str) -> bool:
        """True: nothing in the folder changed since the caller last looked (it needs no stat). False: look now;
        what changes from now on will be heard (watches are added first, if there were none)."""
        if not self._all and session_id in self._unchanged:
            return True
        if session_id in self._watches:
            self._unchanged.add(session_id)
        elif self._inotify is not None:
            try:
                group = folder.rpartition(os.sep)[0]
                if group not in self._above:  # (its root is watched whenever it is: dropped with it, made before it)
                    for above in (os.path.dirname(group), group):  # (first: a move of either after this is heard)
                        if above not in self._above:
                            self._above[above] = wd = self._watch(above, ABOVE)
                            self._above_at[wd] = above
                wd = self._watch(folder, WATCHED)
                self._watches[session_id] = wd, folder
                self._sessions[wd], self._at[folder] = session_id, session_id
            except OSError as exc:  # no room for one more watch, or the folder gone: looked at every pass
                if exc.errno == errno.ENOSPC and not self._full:
                    log.warning("session folders not watched (%s): those are looked at in every sweep", exc,
                                extra={"action": "sessions_not_watched"})
                    self._full = True
            else:
                self._unchanged.add(session_id)
        return False

    def _watch(self, path: str, mask: int) -> int:
        assert self._inotify is not None
        if len(self._watches) + len(self._above) >= self._room:
            raise OSError(errno.ENOSPC, f"{len(self._watches) + len(self._above)} folders watched, {SHARE:.0%} of "
                                        f"what {LIMIT} allows")
        return self._inotify.watch(path, mask)

    def live(self, session_id: str) -> None:
        """The session's runner is alive: it is looked at every pass, and what it writes is none of the sweep's
        events (a runner writing at will, or flooding its folder, would fill the queue). Its watch is dropped, and
        made again at its first look once the runner is gone."""
        if session_id in self._watches:
            self._forget(session_id)

    def keep_only(self, active: dict[str, str]) -> None:
        """Only the watches of these sessions (id: its folder) kept: one no longer active, or whose folder is another
        now (an operator moved it to another group), is watched anew at its next look."""
        for session_id in [sid for sid, (_, folder) in self._watches.items() if active.get(sid) != folder]:
            self._forget(session_id)

    def _drop(self, path: str) -> None:
        """The watches of the folder ``path`` and of those under it removed: the folders at those names are watched
        anew when next looked at."""
        inside = path + os.sep
        if path in self._at:
            self._forget(self._at[path])
        if any(above == path or above.startswith(inside) for above in self._above):  # (few: the groups)
            for session_id in [sid for sid, (_, folder) in self._watches.items() if folder.startswith(inside)]:
                self._forget(session_id)
            for above in [a for a in self._above if a == path or a.startswith(inside)]:
                wd = self._above.pop(above)
                del self._above_at[wd]
                self._unwatch(wd)

    def _forget(self, session_id: str, ended: bool = False) -> None:
        wd, folder = self._watches.pop(session_id)
        del self._sessions[wd], self._at[folder]
        self._unchanged.discard(session_id)
        if not ended:
            self._unwatch(wd)

    def _unwatch(self, wd: int) -> None:
        if self._inotify is not None:
            self._inotify.unwatch(wd)

    def close(self) -> None:
        self._watching = False
        self._reset()


def _room() -> float:
    """How many session folders may be watched (no bound where the kernel's limit cannot be read)."""
    try:
        with open(LIMIT) as limit:
            return int(limit.read()) * SHARE
    except (OSError, ValueError):
        return float("inf")
