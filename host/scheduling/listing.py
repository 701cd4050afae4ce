"""The list of active sessions a sweep walks (``Listing``), in the order they were made. It is read again only when
central.db says it changed: most writes to central.db leave it as it was (each chat's arrival stamps its session's
``last_active_at``, and reading every session then held each tick at 10,000 sessions), so the DB counts the changes
that matter (``sessions.list_changes``). Sessions only made since are read alone and added at the end (a queue job's
own session, a new thread: the whole list cost 30-60 ms at 10,000 sessions); one closed, reopened or moved makes the
whole list again."""

from __future__ import annotations

from collections.abc import Generator

from host.settings import Settings
from host.store import db, sessions
from host.store.sessions import Session

CHUNK = 2000  # rows made into objects between two pauses of a sweep (about 4 ms of work)


class Listing:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: list[Session] = []
        self.position: dict[str, int] = {}  # each active session's place in ``sessions``
        self.jobs: list[Session] = []  # the active sessions made for one queue job (``jobs``)
        self._version = -1  # central.db's ``data_version`` when it was last looked at
        self._changes = sessions.ListChanges(-1, -1)  # the DB's counts when the list was read
        self._newest = 0  # the rowid of the newest session read

    def read(self, central: db.Connection) -> Generator[None, None, bool | None]:
        """The list read again if it changed, made into sessions a chunk at a time with a pause between. Returns
        None if it had not changed, False if sessions were only added at its end, True if it was read whole (some
        may have gone)."""
        version = db.data_version(central)
        if version == self._version:
            return None
        changes = sessions.list_changes(central)
        if changes == self._changes:
            self._version = version
            return None
        whole = changes.changed != self._changes.changed
        rows = sessions.active_rows(central, 0 if whole else self._newest)
        listed: list[Session] = []
        for chunk in sessions.made_in_chunks(self.settings, rows, CHUNK):
            listed += chunk
            yield
        jobs = [session for session, row in zip(listed, rows, strict=True) if row[1]]
        if whole:
            self.sessions, self.position, self.jobs = listed, {s.id: n for n, s in enumerate(listed)}, jobs
        else:  # (a read that ran meanwhile, while this one paused, may have added some of them already)
            listed = [session for session in listed if session.id not in self.position]
            self.jobs += [session for session in jobs if session.id not in self.position]
            self.position.update((session.id, n) for n, session in enumerate(listed, len(self.sessions)))
            self.sessions = self.sessions + listed  # (a new list: a sweep may be walking the old one)
        self._version, self._changes = version, changes
        newest = rows[-1][0] if rows else 0
        self._newest = newest if whole else max(self._newest, newest)
        return whole

    def changed_itself(self) -> None:
        """Its own connection wrote the list (``data_version`` moves only for others' writes): looked at again."""
        self._version = -1

    def among(self, ids: set[str]) -> list[Session]:
        """The active sessions of ``ids``, in the list's order."""
        return [self.sessions[n] for n in sorted(self.position[sid] for sid in ids if sid in self.position)]

    def get(self, session_id: str) -> Session | None:
        n = self.position.get(session_id)
        return None if n is None else self.sessions[n]
