"""Sessions made for one queue job (a job with no ``thread_id``, DESIGN §9): closed once they have nothing left to
do, so sweeps stop visiting them. An app pushing thousands of jobs a day made as many sessions, each visited by every
sweep for good. Their files stay: ``ncl messages list`` reads a closed session, ``ncl tasks list --all`` its tasks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime

from host.scheduling.seen import Seen, files_of
from host.store import db, sessions, views
from host.store.sessions import Session

log = logging.getLogger(__name__)


def close_finished(central: db.Connection, jobs: Iterable[Session], seen: Mapping[str, Seen], busy: set[str],
                   kept: dict[str, tuple[int, ...]], now: datetime) -> int:
    """Close the one-job sessions ``jobs`` whose last visit, of the files as they still are, found nothing due,
    claimed or undelivered, whose runner is gone (not in ``busy``) and whose inbox holds their job (a session is
    made before its job is written) and no paused task. ``kept``: the files of those found with one, not read again
    while they stay the same. How many were closed (none if a file could not be read: tried at the next full sweep)."""
    try:
        return _close_finished(central, jobs, seen, busy, kept, now)
    except (db.Error, db.DbError) as exc:
        log.warning("finished job sessions not closed: %s", exc, extra={"action": "job_sessions_not_closed"})
        return 0


def _close_finished(central: db.Connection, jobs: Iterable[Session], seen: Mapping[str, Seen], busy: set[str],
                    kept: dict[str, tuple[int, ...]], now: datetime) -> int:
    done = []
    for session in jobs:
        known = seen.get(session.id)
        if (known is None or not known.settled or known.busy or known.next_due is not None or session.id in busy
                or kept.get(session.id) == known.files or files_of(session.path) != known.files):
            continue
        paused, arrived = views.job_state(session.folder / "inbound.db")
        if not arrived:  # made, and its job not written yet (``router.deliver_in``): it is on its way
            continue
        if paused:
            kept[session.id] = known.files
            continue
        done.append(session.id)
    if done:
        sessions.close(central, done, now)
    for session_id in done:
        log.info("session %s, made for one queue job, has nothing left to do: closed", session_id,
                 extra={"action": "job_session_closed", "session": session_id})
    return len(done)
