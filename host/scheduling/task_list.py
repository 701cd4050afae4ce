"""Read-only views of task series across sessions: one line per series, its occurrences, its runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing, suppress
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from host.errors import NclError
from host.settings import Settings
from host.store import db, inbox, sessions, short_ids, task_series
from host.store.sessions import Session
from schemas import series_end
from schemas.rows import InMessage
from schemas.times import from_text, to_text

ENDED = ("completed", "cancelled", "failed")


class Series(NamedTuple):
    """One line of ``ncl tasks list``. A NamedTuple, not a dataclass: made in a fifth of a dataclass's time at
    import (about 1 ms less start-up), and ``to_json`` takes 1.5 µs where ``asdict`` took 23."""

    id: str
    agent_group_id: str
    session_id: str
    status: str
    next_run: str | None
    recurrence: str | None
    prompt: str
    last_outcome: str | None
    session_status: str  # "closed": its group was deleted; nothing of the series runs any more
    until: str | None = None  # issue 16.2: no run after it (schemas/series_end.py)
    runs_left: int | None = None  # occurrences still to start, when an end is set
    ended: str | None = None  # "count" or "until": the series ended by reaching it

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


def _summary(session: Session, series_id: str, rows: list[InMessage], outcomes: list[str]) -> Series:
    """The list line of a series from its occurrences (``task_series.occurrences``) and its runs' outcomes."""
    live = [r for r in rows if inbox.is_live(r.status)]
    carrier = next((r for r in live if r.recurrence), live[0] if live else rows[-1])
    if live:
        status = "processing" if any(r.status == "processing" for r in live) else carrier.status
    elif "cancelled" in outcomes:
        status = "cancelled"
    else:
        status = rows[-1].status
    waiting = [r for r in live if r.status == "pending" and session.status == "active"]  # a closed one never runs
    next_run = min((r.process_after or r.timestamp for r in waiting), default=None)
    return Series(series_id, session.agent_group_id, session.id, status, next_run, carrier.recurrence,
                  json.loads(carrier.content).get("prompt", ""), outcomes[-1] if outcomes else None, session.status,
                  *_end(carrier, bool(live)))


def _end(carrier: InMessage, live: bool) -> tuple[str | None, int | None, str | None]:
    """(until, runs left, why it ended) of a series from its carrier (the live recurring row, else the last)."""
    ends = series_end.Ends.of(carrier.content)
    until = to_text(ends.until) if ends.until else None
    if not live:
        ended = json.loads(carrier.content).get(series_end.ENDED)
        return until, None, ended if ended in ("count", "until") else None
    if not (ends and carrier.recurrence and carrier.process_after):
        return until, None, None
    zone = ZoneInfo(carrier.zone) if carrier.zone else ZoneInfo("UTC")  # the zone its time was planned in
    left = ends.runs_left(carrier.recurrence, from_text(carrier.process_after), zone)
    return until, None if left is None else max(0, left - (carrier.status == "processing")), None


def series(settings: Settings, central: db.Connection, group_id: str | None = None,
           session_id: str | None = None, include_ended: bool = False,
           include_closed: bool = False) -> Iterator[Series]:
    """Every series in the active sessions, or in closed ones too (optionally of one group or session), live ones
    unless asked."""
    listed = [s for s in sessions.list_all(central, settings, group_id, status=None if include_closed else "active")
              if s.id == (session_id or s.id)]
    # One session asked for: what keeps it from being read is the answer. Over many: said, and the rest listed.
    read = ((s, _every_series(s.folder / "inbound.db")) for s in listed if (s.folder / "inbound.db").exists()) \
        if session_id else sessions.readable(listed, _every_series)
    for session, (occurrences, outcomes) in read:
        for series_id, rows in occurrences.items():
            found = _summary(session, series_id, rows, outcomes.get(series_id, []))
            if include_ended or found.status not in ENDED:
                yield found


def _every_series(inbound: Path) -> tuple[dict[str, list[InMessage]], dict[str, list[str]]]:
    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:  # two statements a session, whatever it holds
        return task_series.every_series(conn), task_series.every_outcome(conn)


def _series_of(inbound: Path, ref: str) -> str | None:
    with closing(db.connect(inbound, "inbound", readonly=True)) as conn:
        return task_series.series_of(conn, ref)


def _one(conn: db.Connection, session: Session, series_id: str) -> tuple[Series, list[InMessage]]:
    """A series' list line, and its occurrences."""
    rows = task_series.occurrences(conn, series_id)
    return _summary(session, series_id, rows, [r.outcome for r in task_series.runs(conn, series_id)]), rows


def summary(session: Session, series_id: str) -> Series:
    with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
        return _one(conn, session, series_id)[0]


def locate(settings: Settings, central: db.Connection, ref: str) -> tuple[Session, str]:
    """The session holding a series (by series id or any occurrence id), and the series id.

    A series id is found in the install-wide registry (DESIGN §13.5): one indexed read, and never two sessions.
    Anything else (an occurrence id, a series from before the registry) is looked for in every session, and an
    id found in two of them is refused rather than acted on in the wrong one. A short series id (``task-ab12cd``,
    as tables show it) is looked up in the registry."""
    from host.store import task_ids  # imported here: ``tasks list`` needs no registry

    ref = short_ids.expand(central, "task_ids", "task", ref)
    owner = task_ids.lookup(central, ref)
    if owner is not None:
        session = sessions.get(central, settings, owner[1])
        path = session.folder / "inbound.db"
        if path.exists() and (found := _series_of(path, ref)):
            return session, found
    every = sessions.readable(sessions.list_all(central, settings), lambda path: _series_of(path, ref))
    hits = [(session, found) for session, found in every if found]
    if not hits:
        raise NclError(f"unknown task {ref!r} (see 'ncl tasks list --all')")
    if len(hits) > 1:
        raise NclError(f"task id {ref!r} exists in {len(hits)} sessions ({', '.join(s.id for s, _ in hits)}); "
                       "refusing to guess which one is meant")
    return hits[0]


def detail(session: Session, series_id: str, zone: ZoneInfo) -> dict[str, Any]:
    """``tasks show``: the list item, every occurrence row, and the next 5 runs."""
    with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
        found, occurrences = _one(conn, session, series_id)
    return {"task": found.to_json(), "occurrences": [r._asdict() for r in occurrences],
            "next_runs": _next_runs(occurrences, zone) if session.status == "active" else []}


def refuse_closed(session: Session, series_id: str, command: str) -> None:
    """Controls that would plan runs (resume, update, run-now) are refused in a closed session: none would fire."""
    if session.status != "active":
        raise NclError(f"task {series_id} belongs to session {session.id}, which is {session.status}: its runs would "
                       f"never fire, so '{command}' is refused (cancel it instead)")


def _next_runs(rows: list[InMessage], zone: ZoneInfo, count: int = 5) -> list[str]:
    """Waiting one-shots, then the recurring occurrence and the grid after it (a paused one waits), up to the
    series' end (until, count: the carrier's own run is one of its count)."""
    from schemas import recurring  # imported here: croniter is ``tasks show``'s, ``tasks list`` goes without it

    times = {r.process_after or r.timestamp for r in rows if r.status == "pending"}
    carrier = next((r for r in rows if r.recurrence and r.status in ("pending", "processing")), None)
    if carrier and carrier.recurrence:
        ends = series_end.Ends.of(carrier.content)
        slots = recurring.firings(carrier.recurrence, from_text(carrier.process_after or carrier.timestamp), zone)
        later: list[datetime] = []
        # The calendar's end (the year 9999) may come first: a cron's slots end with CronError, an interval's end.
        with suppress(recurring.CronError):
            for slot in islice(slots, count if ends.count is None else min(count, ends.count - 1)):
                later.append(slot)
        times.update(to_text(t) for t in later if ends.until is None or t <= ends.until)
    return sorted(times)[:count]


def runs(session: Session, series_id: str) -> list[dict[str, Any]]:
    with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
        return [r._asdict() for r in task_series.runs(conn, series_id)]
