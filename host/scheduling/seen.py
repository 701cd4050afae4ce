"""What the sweep knows of a session between its visits: the stat signature of its files (``files_of``) and what
the last visit learned (``Seen``), which lets the next look skip it while the files stay the same; and which
sessions it leaves alone for a while (``Holds``)."""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, MutableMapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from host.store import session_index

# A file written within this long before we looked may be written again with the same ctime (coarse filesystem
# clock): it is not trusted as unchanged until a visit sees it older than this.
RACY_NS = 1_000_000_000

OUTBOUND_SIDE = 3  # files[:3]: outbound.db's signature; files[3:]: inbound.db's


def files_of(path: str) -> tuple[int, ...]:
    """The session's stat signature: (inode, size, ctime) of outbound.db (zeros while it is missing), then of
    inbound.db. Any write to a file, or its replacement, moves its own ctime or inode, which no runner can set back
    (both journals are kept for good, so a commit no longer makes or deletes a name in the folder: a stat of the
    folder, a third of an idle sweep's time, told nothing more). A plain os.stat on the str path: pathlib per session
    cost 5x the stat."""
    inbound = os.stat(path + "/inbound.db", follow_symlinks=False)
    try:
        outbound = os.stat(path + "/outbound.db", follow_symlinks=False)
        out = (outbound.st_ino, outbound.st_size, outbound.st_ctime_ns)
    except FileNotFoundError:
        out = (0, 0, 0)
    return (*out, inbound.st_ino, inbound.st_size, inbound.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the last visit learned about a session."""

    files: tuple[int, ...]  # ``files_of`` when the visit began
    settled: bool  # the files were last written RACY_NS before the visit began: the same signature, the same files
    next_due: str | None  # '' = due now
    busy: bool  # has claimed rows or undelivered replies
    # outbound.db held nothing for a visit that read it for these open rows: unchanged, it need not be read again
    # while the open rows stay among them.
    quiet_for: frozenset[str] | None = None
    due_since: str | None = None  # when its due work became due
    # (from, until): a due session's visit that had nothing to write and nothing new in outbound.db. The same files
    # make the same visit at any time from ``from`` (its own) until ``until`` (a waiting recurring task falls due;
    # None: no such task): rows only fall due as time passes, and one that does cannot be due earlier than those
    # already due. So it is not opened again for a wake that waits for a slot (None: it is).
    same: tuple[str, str | None] | None = None

    def same_at(self, now: str) -> bool:
        return self.same is not None and self.same[0] <= now and (self.same[1] is None or now < self.same[1])

    @property
    def kept(self) -> session_index.Entry | None:
        """What the index keeps of it: only what lets a restarted host skip the session."""
        return session_index.Entry(self.files, self.next_due) if self.settled and not self.busy else None


LAST = "\U0010ffff"  # sorts after every session id: (t, LAST) after every (t, id)


class Book(MutableMapping[str, Seen]):
    """What the sweep knows of each session (``Seen`` by session id), kept in order of due time too, with the busy
    ones and the active ones never seen apart: what a tick asks of them (which are due by a time, which are busy,
    which are new) costs as much as its answer, not a look at every session (at 10,000 sessions those looks, for
    each chat's arrival, held each tick for milliseconds)."""

    def __init__(self) -> None:
        self._seen: dict[str, Seen] = {}
        self._dues: list[tuple[str, str]] = []  # (next_due, session id) of those with a due time, in order
        # Those added since the last question, put in order at the next (``_ordered``): a host's first start adds
        # thousands at once, and each put in place at once moved the whole list (at 100,000 sessions ~50 µs each).
        self._added: list[tuple[str, str]] = []
        self.busy: set[str] = set()  # those with claimed rows or undelivered replies
        self._active: set[str] = set()
        self.unseen: set[str] = set()  # active sessions with no entry (never visited, or their visit failed)

    def __getitem__(self, session_id: str) -> Seen:
        return self._seen[session_id]

    def get(self, session_id: str, default: Seen | None = None) -> Seen | None:  # type: ignore[override]
        return self._seen.get(session_id, default)  # (the mixin's, through __getitem__, costs 3x: every tick)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._seen

    def __iter__(self) -> Iterator[str]:
        return iter(self._seen)

    def __len__(self) -> int:
        return len(self._seen)

    def __setitem__(self, session_id: str, seen: Seen) -> None:
        if (old := self._seen.get(session_id)) is not None:
            self._unlisted(session_id, old)
        self._seen[session_id] = seen
        if seen.next_due is not None:
            self._added.append((seen.next_due, session_id))
        if seen.busy:
            self.busy.add(session_id)
        self.unseen.discard(session_id)

    def __delitem__(self, session_id: str) -> None:
        self._unlisted(session_id, self._seen.pop(session_id))
        if session_id in self._active:
            self.unseen.add(session_id)

    def _unlisted(self, session_id: str, seen: Seen) -> None:
        if seen.next_due is not None:
            entry = (seen.next_due, session_id)
            dues = self._dues
            at = bisect_left(dues, entry)
            if at == len(dues) or dues[at] != entry:  # (added since the last question)
                dues = self._ordered()
                at = bisect_left(dues, entry)
            del dues[at]
        self.busy.discard(session_id)

    def _ordered(self) -> list[tuple[str, str]]:
        """The due times in order, those added since put in place: each where it goes if they are few, else all
        sorted at once (one sort costs about as much as 80 moves of the list)."""
        if self._added:
            if len(self._added) * 80 > len(self._dues):
                self._dues += self._added
                self._dues.sort()
            else:
                for entry in self._added:
                    insort(self._dues, entry)
            self._added = []
        return self._dues

    def load(self, entries: Iterable[tuple[str, Seen]]) -> None:
        """Entries for sessions it has none of (a host's start), put in order at once at the next question."""
        for session_id, seen in entries:
            if session_id not in self._seen:
                self._seen[session_id] = seen
                if seen.next_due is not None:
                    self._added.append((seen.next_due, session_id))
                if seen.busy:
                    self.busy.add(session_id)
        self.unseen = set(self._active - self._seen.keys())

    def activate(self, active: AbstractSet[str], more: bool = False) -> None:
        """The active sessions now (those of others are dropped by the caller, which keeps the index), or ``more``
        of them."""
        if not more:
            self._active, self.unseen = set(), set()
        self._active |= active
        self.unseen |= active - self._seen.keys()

    def due_by(self, until: str) -> list[tuple[str, str]]:
        """(next_due, session id) of the sessions due by ``until``, soonest first."""
        dues = self._ordered()
        return dues[:bisect_right(dues, (until, LAST))]

    def due_between(self, after: str, until: str) -> list[tuple[str, str]]:
        """Those due after ``after`` and by ``until``, soonest first."""
        dues = self._ordered()
        return dues[bisect_right(dues, (after, LAST)):bisect_right(dues, (until, LAST))]

    def first_due(self, leaving: set[str]) -> str | None:
        """The earliest due time of a session not in ``leaving``."""
        return next((due for due, session_id in self._ordered() if session_id not in leaving), None)


class Visit(NamedTuple):
    """What one visit of a session found (``Sweeper._visit``), which ``Seen`` keeps. (Not a dataclass: a worker's
    visit crosses a pipe, and a slotted dataclass pickles through Python code, ~4x slower each way.)"""

    next_due: str | None  # '' = due now
    processing: bool  # a row is claimed
    undelivered: bool  # replies were handed on for delivery
    due_since: str | None  # when its due work became due, or None
    quiet_for: frozenset[str] | None  # see Seen
    same: tuple[str, str | None] | None  # see Seen


# A session whose visit failed (say on files its live runner held locked, each wait bounded by
# ``outbox.RUNNER_WAIT_S``) is not visited again for HELD_FIRST_S, doubling up to HELD_MAX_S while that goes on.
HELD_FIRST_S, HELD_MAX_S = 0.5, 8.0
# So is one with a live runner whose visits took longer than SLOW_VISIT_S this many times in a row (a runner that
# lets go of its files just before each wait would end: none fails, each is slow). A visit takes about a millisecond.
SLOW_VISIT_S, SLOW_VISITS = 0.1, 3


@dataclass
class Holds:
    """The sessions the sweep leaves alone for a while: a runner keeping its files locked, or anything else that
    makes a session's visits fail or drag, never takes more than a few percent of the one sweep thread's time."""

    held: dict[str, tuple[datetime, float]] = field(default_factory=dict)  # session id -> (until, the pause)
    slow: dict[str, int] = field(default_factory=dict)  # session id -> its slow visits in a row

    def tracks(self, session_id: str) -> bool:
        return session_id in self.held or session_id in self.slow

    def __bool__(self) -> bool:
        """Whether it tracks any session."""
        return bool(self.held or self.slow)

    def failed(self, session_id: str, now: datetime) -> None:
        """Held off twice as long as the last time, ``HELD_FIRST_S`` the first, at most ``HELD_MAX_S``."""
        pause = min(2 * self.held[session_id][1], HELD_MAX_S) if session_id in self.held else HELD_FIRST_S
        self.held[session_id] = (now + timedelta(seconds=pause), pause)

    def went_through(self, session_id: str, seconds: float, now: datetime) -> None:
        """A visit that took ``seconds``: the session's hold ends, unless its visits keep being slow."""
        if seconds <= SLOW_VISIT_S:
            self.slow.pop(session_id, None)
            self.held.pop(session_id, None)
            return
        self.slow[session_id] = self.slow.get(session_id, 0) + 1
        if self.slow[session_id] >= SLOW_VISITS:
            self.failed(session_id, now)

    def ends(self) -> list[datetime]:
        return [until for until, _ in self.held.values()]

    def keep_only(self, active: set[str]) -> None:
        self.held = {sid: held for sid, held in self.held.items() if sid in active}
        self.slow = {sid: slow for sid, slow in self.slow.items() if sid in active}
