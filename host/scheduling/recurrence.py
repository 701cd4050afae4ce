"""How an occurrence ends and the next one begins (DESIGN §6.3, §6.7, §12.7).

The terminal transition, the run record and the clone happen in the caller's one transaction, so a
crash leaves either the old live row or the new one, never both or neither.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from host.settings import Settings
from host.store import db, inbox, task_series
from schemas import ids, recurring
from schemas.rows import InMessage, RunOutcome
from schemas.series_end import ENDED, Ends
from schemas.times import TimeFormatError, from_text, to_text

log = logging.getLogger(__name__)
AUTO_PAUSE_AFTER = 3
GATE_ERRORS_ALERT = 3  # gate errors in a row that raise an alert, once: until another outcome breaks the run
MS = timedelta(milliseconds=1)
DETAIL_SHOWN = 300  # characters of a run's detail (a runner's text) in its log line; task_runs keeps it whole


@dataclass(frozen=True)
class Policy:
    """The scheduling settings every rule here needs."""

    zone: ZoneInfo
    misfire_grace: timedelta
    task_min_interval_s: float
    max_tasks_per_session: int = 100  # live series (pending | processing | paused) one session may hold

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(settings.tz.zone, timedelta(seconds=settings.misfire_grace_s), settings.task_min_interval_s,
                   settings.max_tasks_per_session)


SLOT = "scheduled_for"  # task content key: the grid slot a retried occurrence runs as, while process_after waits


def scheduled(row: InMessage) -> datetime:
    """The slot an occurrence stands for: its process_after, unless a retry moved that off the grid."""
    slot = json.loads(row.content).get(SLOT) if row.kind == "task" else None
    return from_text(slot if isinstance(slot, str) else row.process_after or row.timestamp)


def _with_slot(content: str, slot: datetime | None) -> str:
    data = json.loads(content)
    if slot is None and SLOT not in data:
        return content  # untouched, byte for byte: clones copy content as it is
    if slot is None:
        data.pop(SLOT)
    else:
        data[SLOT] = to_text(slot)
    return json.dumps(data)


def _spend(content: str, slots: int) -> str:
    """The content with ``slots`` more of the series' ``count`` used (untouched when it has none)."""
    data = json.loads(content)
    if not slots or not isinstance(data.get("count"), int):
        return content
    data["count"] -= slots
    return json.dumps(data)


def _capped(row: InMessage, due: Overdue, policy: Policy) -> Overdue:
    """``due`` within the series' end (until, count): slots past it are none of the series'."""
    assert row.recurrence is not None
    ends = Ends.of(row.content)
    if not ends:
        return due
    latest, later = ends.cap(row.recurrence, due.first, due.latest, due.later, policy.zone)
    return Overdue(due.first, latest, later)


def _ended(conn: db.Connection, row: InMessage, why: str) -> None:
    """The series ends with ``row``: recorded in its content (``ended``) and logged; no clone follows."""
    task_series.set_content(conn, row.id, json.dumps({**json.loads(row.content), ENDED: why}))
    log.info("task %s ended: its %s was reached", row.series, why,
             extra={"action": "task_series_ended", **_named(row), "ended": why})


@dataclass(frozen=True)
class Overdue:
    """The misfire rule's view of a recurring slot that is due (DESIGN §6.3, §12.7): one definition for session
    tasks and project tasks alike."""

    first: datetime  # the slot that came due
    latest: datetime  # the latest slot at or before now (``first`` when no later one passed)
    later: int  # slots after ``first`` up to ``latest``

    @classmethod
    def of(cls, expr: str, first: datetime, now: datetime, policy: Policy) -> Overdue:
        # Counted in closed form, never slot by slot: a slot in year 1 must not cost 200 million steps.
        later, latest = recurring.count_between(expr, first, now, policy.zone)
        return cls(first, latest or first, later)

    def runs(self, now: datetime, policy: Policy) -> bool:
        """The latest slot is within the grace: it runs once, now, in place of the others."""
        return now - self.latest <= policy.misfire_grace


def clone(conn: db.Connection, row: InMessage, now: datetime, policy: Policy, status: str = "pending",
          after: datetime | None = None, at: datetime | None = None, expr: str | None = None,
          spent: int = 1) -> str | None:
    """Insert the series' next occurrence: at ``at``, or the first slot after ``after`` (default: ``row``'s
    scheduled time), carrying ``expr`` (default: ``row``'s recurrence), once ``row`` has used ``spent`` slots of
    its count. None when the series' end (until, count: recorded on ``row``) or the calendar's comes first."""
    expr = expr or row.recurrence
    assert expr is not None, "only a recurring occurrence is cloned"
    try:
        slot = at or recurring.next_after(expr, after or scheduled(row), policy.zone)
    except recurring.CronError:  # no slot before the year 9999 ends (a clock set there): the series ends here
        return None
    if why := Ends.of(row.content).reached(slot, spent):
        _ended(conn, row, why)
        return None
    content = _spend(_with_slot(row.content, None), spent)
    return inbox.insert(conn, {
        "id": ids.new_id("task", now), "kind": row.kind, "timestamp": to_text(now), "status": status,
        "process_after": to_text(slot), "recurrence": expr, "series_id": row.series, "trigger": row.trigger,
        "on_wake": row.on_wake, **row.routing(), "content": content, "zone": policy.zone.key}, validated=False)


def _failed_streak(conn: db.Connection, series_id: str) -> bool:
    outcomes = task_series.recent_outcomes(conn, series_id, AUTO_PAUSE_AFTER)
    return len(outcomes) == AUTO_PAUSE_AFTER and all(o == "failed" for o in outcomes)


def _gate_errors(conn: db.Connection, row: InMessage) -> None:
    """Alert when the series' gate errors in a row reach GATE_ERRORS_ALERT (not at each one after)."""
    outcomes = task_series.recent_outcomes(conn, row.series, GATE_ERRORS_ALERT + 1)
    streak = ["gate_error"] * GATE_ERRORS_ALERT
    if outcomes[:GATE_ERRORS_ALERT] == streak and outcomes[GATE_ERRORS_ALERT:] != ["gate_error"]:
        log.warning("task %s: its gate script failed %d times in a row", row.series, GATE_ERRORS_ALERT,
                    extra={"action": "task_gate_errors", **_named(row), "alert": "task_gate_errors"})


def finish(conn: db.Connection, row: InMessage, now: datetime, policy: Policy, status: str,
           outcome: RunOutcome, detail: str | None = None, started_at: str | None = None,
           finished_at: str | None = None, next_status: str = "pending",
           result: task_series.RunResult | None = None) -> bool:
    """End an occurrence as ``status`` (completed | failed) and clone a recurring one (as ``next_status``, or
    paused after a failure streak); its run records ``result`` (what it produced), if any. True if cloned."""
    inbox.end(conn, row.id, status)
    if row.kind != "task":
        return False
    series_id = row.series
    _said_finished(row, outcome, detail, started_at, finished_at)
    task_series.record_run(conn, now, series_id, row.id, outcome, scheduled_for=to_text(scheduled(row)),
                           started_at=started_at, finished_at=finished_at, detail=detail, result=result)
    if outcome == "gate_error":
        _gate_errors(conn, row)
    if not row.recurrence:
        return False
    paused = outcome == "failed" and _failed_streak(conn, series_id)
    if clone(conn, row, now, policy, status="paused" if paused else next_status) is None:
        return False  # the series ended with this occurrence
    if paused:
        prompt = json.loads(row.content).get("prompt", "")
        log.warning("task %s failed %d times in a row and is paused", series_id, AUTO_PAUSE_AFTER,
                    extra={"action": "task_auto_paused", **_named(row), "alert": "task_auto_paused"})
        inbox.notice(conn, now, "task_auto_paused",
                     f"Task {series_id} ({prompt[:60]!r}) failed {AUTO_PAUSE_AFTER} times in a row and is paused; "
                     "resume it once the cause is fixed.")
    return True


def _named(row: InMessage) -> dict[str, str]:
    """How a log line names a row: a task by its series (and the occurrence, when that is another row)."""
    if row.kind != "task":
        return {"message_id": row.id}
    return {"task": row.series} if row.series == row.id else {"task": row.series, "occurrence": row.id}


def _said_finished(row: InMessage, outcome: RunOutcome, detail: str | None, started_at: str | None,
                   finished_at: str | None) -> None:
    """The line of a run's outcome. Its times are the runner's to write: one that does not read is left out."""
    try:
        took: timedelta | None = from_text(finished_at or "") - from_text(started_at or "")
    except TimeFormatError:
        took = None
    timing = {} if took is None else {"duration_ms": int(took.total_seconds() * 1000)}
    log.log(logging.INFO if outcome in ("ran", "skipped") else logging.WARNING, "task %s %s%s%s", row.series, outcome,
            "" if took is None else f" in {took.total_seconds():.1f} s", f": {detail[:DETAIL_SHOWN]}" if detail else "",
            extra={"action": "task_finished", **_named(row), "outcome": outcome, **timing})


def repair(conn: db.Connection, row: InMessage, now: datetime, policy: Policy) -> bool:
    """A terminal row still carrying its recurrence (an older writer, or a crash of one): clone it unless the
    series already has its live occurrence, then clear the recurrence. True if cloned."""
    has_live = task_series.has_live_recurrence(conn, row.series)
    task_series.drop_recurrence(conn, row.id)
    if has_live:
        return False
    clone(conn, row, now, policy)
    return True


class Done(NamedTuple):
    """What ending or retrying an occurrence did, as a sweep counts it: ``missed`` runs written, the occurrence
    ``failed``, the next one ``cloned``."""

    missed: int = 0
    failed: bool = False
    cloned: bool = False


def misfire(conn: db.Connection, row: InMessage, now: datetime, policy: Policy) -> Done:
    """Apply the misfire rule to a pending recurring occurrence that is due: what it did (``Done``).

    Runs once, at once, taking the latest passed slot as its scheduled time, if that slot is within the grace;
    otherwise completes without running and clones the next future slot. Slots not run: one ``missed`` run.
    """
    assert row.recurrence is not None
    due = _capped(row, Overdue.of(row.recurrence, scheduled(row), now, policy), policy)
    if due.runs(now, policy):
        if not due.later:
            return Done()
        content = _spend(_with_slot(row.content, None), due.later)
        task_series.move(conn, row.id, to_text(due.latest), content, policy.zone.key)
        _missed(conn, row, now, due, due.later, runs=True)  # its own slot and every later one but the latest
        return Done(missed=1)
    inbox.end(conn, row.id, "completed")
    cloned = clone(conn, row, now, policy, after=due.latest, spent=due.later + 1) is not None
    _missed(conn, row, now, due, due.later + 1, runs=False)
    return Done(missed=1, cloned=cloned)


def replan(conn: db.Connection, now: datetime, policy: Policy) -> int:
    """One zone at a time (issue 13): waiting recurring occurrences planned in another zone (TZ changed since) are
    planned again in this one (``replanned``), each change logged; returns how many moved."""
    moved = 0
    for row in task_series.planned_elsewhere(conn, policy.zone.key):
        assert row.recurrence is not None
        was = scheduled(row)
        slot = replanned(row.recurrence, was, row.zone, now, policy)
        if slot is None:
            task_series.move(conn, row.id, row.process_after, row.content, policy.zone.key)
            continue
        task_series.move(conn, row.id, to_text(slot), _with_slot(row.content, None), policy.zone.key)
        said_replanned(f"task {row.series}", was, slot, str(row.zone), policy)
        moved += 1
    return moved


def replanned(expr: str, slot: datetime, planned_in: str | None, now: datetime, policy: Policy) -> datetime | None:
    """The time a recurring ``slot`` planned in zone ``planned_in`` gets in this zone, or None: it keeps its
    instant. A time on the old zone's grid becomes the first slot, in this zone, after the old grid's slot before
    it (or now, if that passed): a 09:00 task stays at 09:00 local and no day is run twice or skipped. A time off
    the grid (an instant someone chose), or already due (the misfire rule judges it, in this zone), is kept; so is
    one planned before zones were recorded (taken as planned in this one)."""
    try:
        old = ZoneInfo(planned_in) if planned_in else None
    except (ZoneInfoNotFoundError, ValueError):
        old = None
    if old is None or old == policy.zone or slot <= now or not recurring.follows_zone(expr):
        return None  # an interval is elapsed time: its instants stay whatever the zone
    if recurring.next_after(expr, slot - MS, old) != slot:
        return None
    _, before = recurring.count_between(expr, now, slot - MS, old)
    try:
        return recurring.next_after(expr, before or now, policy.zone)
    except recurring.CronError:  # no slot left in this zone's calendar: keep it where it is
        return None


def said_replanned(what: str, was: datetime, slot: datetime, planned_in: str, policy: Policy) -> None:
    log.info("%s re-planned for TZ %s: %s %s -> %s %s", what, policy.zone.key,
             was.astimezone(ZoneInfo(planned_in)).strftime("%Y-%m-%d %H:%M"), planned_in,
             slot.astimezone(policy.zone).strftime("%Y-%m-%d %H:%M"), policy.zone.key,
             extra={"action": "task_replanned", "task": what.split()[-1], "was": to_text(was), "now": to_text(slot)})


def _missed(conn: db.Connection, row: InMessage, now: datetime, due: Overdue, slots: int, runs: bool) -> None:
    """The ``slots`` from ``due.first`` not run, as one ``missed`` run. ``runs``: ``due.latest`` runs in their place
    (they end before it), not one of them (they end with it)."""
    first, latest = to_text(due.first), to_text(due.latest)
    detail = json.dumps({"slots": slots, "first": first, "latest_slot": latest, "runs": runs})
    log.warning("task %s missed %d slot(s) from %s %s", row.series, slots, first,
                f"before the one at {latest}, which runs" if runs else f"to {latest}",
                extra={"action": "task_missed", **_named(row), "slots": slots, "alert": "task_missed"})
    task_series.record_run(conn, now, row.series, row.id, "missed", scheduled_for=first, detail=detail)


MAX_TRIES = 5


def release(conn: db.Connection, row: InMessage, now: datetime, policy: Policy) -> Done:
    """Give a claimed occurrence whose runner died or stalled back to the queue (DESIGN §12.4): retried at +5,
    +10, +20, +40, +80 s, or when it is due if that is later; the release after the fifth retry fails it (a
    recurring series still goes on: its next occurrence cloned). What it did (``Done``)."""
    tries = row.tries + 1
    if tries > MAX_TRIES:
        task_series.count_try(conn, row.id, tries)
        why = f"runner died or stalled {tries} times"
        cloned = finish(conn, row, now, policy, "failed", "failed", detail=why)
        if row.kind != "task":  # (a task's run says why: ncl tasks runs) where a failed job or message is read
            inbox.notice(conn, now, "message_failed", f"The {row.kind} message {row.id} was given up: its {why}.")
        return Done(failed=True, cloned=cloned)
    # Never earlier than it was due: a claim on a row not yet due (a runner that took it early) only waits longer.
    retry_at = now + timedelta(seconds=5 * 2 ** (tries - 1))
    if row.process_after:
        retry_at = max(retry_at, from_text(row.process_after))
    content, missed = row.content, 0
    if row.recurrence:
        # The retry keeps the grid slot it stands for, so its run and the next clone stay on the grid: the latest
        # slot passed while it was claimed if within the grace (the others recorded as missed), else its own.
        # It is never ended here: its runner may yet report that it ran.
        due = _capped(row, Overdue.of(row.recurrence, scheduled(row), now, policy), policy)
        slot = due.first
        if due.later and due.runs(now, policy):
            _missed(conn, row, now, due, due.later, runs=True)
            slot = due.latest
            content = _spend(content, due.later)
            missed = 1
        content = _with_slot(content, slot)
    task_series.retry(conn, row.id, tries, to_text(retry_at), content)
    log.warning("%s %s: its runner died or stalled; retry %d of %d at %s", row.kind, row.series, tries, MAX_TRIES,
                to_text(retry_at), extra={"action": "run_retried", **_named(row), "tries": tries})
    return Done(missed=missed)
