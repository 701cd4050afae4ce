"""Task control (DESIGN §6.4–6.6): schedule, pause, resume, cancel, update, run-now — by series id or any
occurrence id, touching only live rows. Each function runs in one transaction of the session's inbox; pause,
cancel and update are also given the session's ``folder``, whose outbound.db holds claims no sweep has copied in
(None from a sweep's own visit, which has)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from host.errors import NclError
from host.scheduling import recurrence
from host.scheduling.recurrence import Policy
from host.store import db, inbox, outbox, task_series
from host.store.db import transaction
from host.store.task_ids import TaskIds
from schemas import ids, recurring, series_end
from schemas.rows import InMessage
from schemas.times import from_text, to_text

YEAR = timedelta(days=366)
# Content keys of the series' grid, not of one extra run (``run_now``): a retried slot, its end, how it ended.
SERIES_KEYS = (recurrence.SLOT, "count", "until", series_end.ENDED)


def check_interval(expr: str, now: datetime, policy: Policy) -> None:
    """The agent's minimum gap between runs (operators skip this with --force)."""
    clash = recurring.min_gap_violation(expr, policy.zone, now, policy.task_min_interval_s, YEAR)
    if clash:
        gap = int((clash[1] - clash[0]).total_seconds())
        at = clash[0].astimezone(policy.zone)
        raise NclError(f"recurrence {expr!r} runs {gap} s apart at {at:%Y-%m-%d %H:%M %Z}; the minimum is "
                       f"{int(policy.task_min_interval_s)} s (NCL_TASK_MIN_INTERVAL_S; an operator's 'ncl tasks add' "
                       "or 'update' allows less with --force)")


def _ends(until: str | None, count: int | str | None) -> dict[str, Any]:
    """The content keys of a series' end as given (``""`` clears one: None), checked; only the keys given."""
    ends: dict[str, Any] = {}
    try:
        if until is not None:
            ends["until"] = to_text(from_text(until)) if until else None
        if count is not None:
            ends["count"] = series_end.check_count(count) if count != "" else None
    except ValueError as exc:
        raise NclError(str(exc)) from None
    return ends


def _check_until(content: dict[str, Any], now: datetime, first: str | None) -> None:
    if content.get("until"):
        try:
            series_end.check_until(from_text(content["until"]), now, from_text(first) if first else None)
        except ValueError as exc:
            raise NclError(str(exc)) from None


def _check_start(first: str, now: datetime, policy: Policy) -> None:
    """A recurring series set to start longer than the misfire grace ago would start by recording every slot since
    as missed (and spend its ``count`` on them), never having run: refused."""
    if from_text(first) < now - policy.misfire_grace:
        raise NclError(f"the first run at {first} is more than {policy.misfire_grace.total_seconds():g} s ago "
                       "(NCL_MISFIRE_GRACE_S): a recurring series would count every slot since as missed; give a "
                       "later time, or none for the first slot after now")


def _series(conn: db.Connection, ref: str) -> str:
    series_id = task_series.series_of(conn, ref)
    if series_id is None:
        raise NclError(f"unknown task {ref!r}")
    return series_id


def schedule(conn: db.Connection, now: datetime, policy: Policy, task_id: str, prompt: str,
             process_after: str | None = None, recurrence_expr: str | None = None, script: str | None = None,
             context_mode: str = "group", routing: dict[str, Any] | None = None,
             enforce_interval: bool = True, registry: TaskIds | None = None, fresh_if_used: bool = False,
             duplicate_ok: bool = True, until: str | None = None, count: int | str | None = None,
             asked: datetime | None = None) -> str:
    """Insert a new series; its first run is ``process_after`` or the first slot after ``asked`` (when the agent
    asked, as its tool said it: applied at the turn's end, a 10:00 slot asked for at 09:59:50 became 11:00), else
    after now; a recurring one ends after ``count`` runs or at ``until``, if given (schemas/series_end.py). Returns
    the stored id: with ``fresh_if_used`` (a runner's choice) an id used anywhere is replaced by a fresh one, else
    refused.
    The id is registered install-wide (``registry``) before the row is written. Unless ``duplicate_ok``, a series
    repeating a live one (``task_series.same_live``) is refused (an operator's; an agent's tool checks itself)."""
    from schemas.messages import TaskContent  # pydantic: with the first write, so ``ncl tasks list`` goes without

    expr = recurring.validate(recurrence_expr) if recurrence_expr else None
    ends = {k: v for k, v in _ends(until, count).items() if v is not None}
    if ends and not expr:
        raise NclError("until and count end a recurring series; give a recurrence too (a one-shot runs once)")
    content = TaskContent.model_validate({"prompt": prompt, "script": script if script and script.strip() else None,
                                          "context_mode": context_mode, **ends})
    if expr and process_after:
        _check_start(process_after, now, policy)
    with transaction(conn):
        _check_room(conn, policy)  # first: a request over the cap costs one indexed count, nothing more
        if expr and enforce_interval:
            check_interval(expr, now, policy)
        first = process_after or (to_text(recurring.next_after(expr, asked or now, policy.zone)) if expr else None)
        _check_until(ends, now, first)
        if not duplicate_ok and (same := task_series.same_live(conn, prompt, expr, script, first)):
            raise NclError(f"task {same} in this session already has this prompt, {'recurrence' if expr else 'time'}"
                           " and script (--force adds another)")
        # The registry's insert is its own check: an id held anywhere in the install is not inserted again.
        while _used(conn, task_id) or (registry is not None and not registry.register(task_id)):
            if not fresh_if_used:
                raise NclError(f"task id {task_id} is already used")
            task_id = ids.new_id("task", now)
        inbox.insert(conn, {"id": task_id, "kind": "task", "timestamp": to_text(now), "process_after": first,
                            "recurrence": expr, "series_id": task_id, "content": content.to_json(),
                            "zone": policy.zone.key if expr else None, **(routing or {})})
    return task_id


def _used(conn: db.Connection, task_id: str) -> bool:
    return bool(inbox.get(conn, task_id) or task_series.series_of(conn, task_id))


def _check_room(conn: db.Connection, policy: Policy) -> None:
    live = task_series.live_count(conn)
    if live >= policy.max_tasks_per_session:
        raise NclError(f"this session already has {live} live tasks, the limit (NCL_MAX_TASKS_PER_SESSION="
                       f"{policy.max_tasks_per_session}); cancel one first")


def _live(conn: db.Connection, folder: Path | None, series_id: str) -> list[InMessage]:
    """The series' live rows, with a runner's claim (in the session ``folder``'s outbound.db) that no sweep has
    copied in yet counted as running: a row the runner already works on must be treated as running, never paused
    or cancelled as if it waited. ``folder`` None: the claims are in the inbox already (a sweep's visit of the
    session copied them in, in this transaction)."""
    rows = task_series.live(conn, series_id)
    if folder is None:
        return rows
    waiting = [r.id for r in rows if r.status == "pending"]
    running = outbox.claimed(folder / "outbound.db", waiting)
    if not running:
        return rows
    inbox.mark_processing(conn, running)
    return task_series.live(conn, series_id)


def pause(conn: db.Connection, ref: str, now: datetime, policy: Policy, *, folder: Path | None) -> int:
    """pending -> paused. A running occurrence finishes; the series' next one is created paused now."""
    with transaction(conn):
        series_id = _series(conn, ref)
        rows = _live(conn, folder, series_id)
        changed = task_series.pause(conn, series_id)
        for row in rows:
            if row.status == "processing" and row.recurrence:
                task_series.drop_recurrence(conn, row.id)
                # None: this run is the series' last (its count or until), so nothing is left to pause
                changed += recurrence.clone(conn, row, now, policy, status="paused") is not None
    return changed


def pause_all(conn: db.Connection, now: datetime, policy: Policy, *, folder: Path | None) -> int:
    """Pause every live series of the inbox (its group is going away); returns how many series. Each is paused
    again while its runner holds outbound.db past the short wait for it (``db.retried``: an operator's command)."""
    def paused(series_id: str) -> int:
        return db.retried(lambda: pause(conn, series_id, now, policy, folder=folder))

    return sum(1 for series_id in task_series.live_ids(conn) if paused(series_id))


def resume(conn: db.Connection, ref: str, now: datetime, policy: Policy) -> int:
    """paused -> pending; an overdue recurring occurrence then follows the misfire rule at once."""
    with transaction(conn):
        series_id = _series(conn, ref)
        paused = [r for r in task_series.live(conn, series_id) if r.status == "paused"]
        task_series.resume(conn, series_id)
        for row in paused:
            if row.recurrence and recurrence.scheduled(row) <= now:
                recurrence.misfire(conn, row, now, policy)
    return len(paused)


def cancel(conn: db.Connection, ref: str, now: datetime, *, folder: Path | None) -> int:
    """Live rows end (completed, recurrence cleared) with one ``cancelled`` run; a running one finishes."""
    with transaction(conn):
        series_id = _series(conn, ref)
        rows = _live(conn, folder, series_id)
        if not rows:
            return 0
        task_series.cancel(conn, series_id)
        task_series.record_run(conn, now, series_id, rows[0].id, "cancelled", scheduled_for=rows[0].process_after)
    return len(rows)


def unchanged(conn: db.Connection, ref: str, verb: str) -> NclError:
    """Why pausing, resuming or cancelling (``verb``: paused | resumed | cancelled) the series changed nothing, in
    the user's terms."""
    series_id = _series(conn, ref)
    statuses = {row.status for row in task_series.live(conn, series_id)}
    if not statuses:
        why = "has ended (see its runs)"
    elif verb == "paused" and "paused" in statuses:
        why = "is already paused"
    elif verb == "paused":  # a one-shot that runs now: no later occurrence to hold back
        why = "is running its only occurrence now: there is nothing left to pause (cancel stops it for good)"
    else:
        why = "is not paused: it is " + ("running now" if "processing" in statuses else "waiting for its next run")
    return NclError(f"task {series_id} {why}")


def update(conn: db.Connection, ref: str, now: datetime, policy: Policy, prompt: str | None = None,
           process_after: str | None = None, recurrence_expr: str | None = None, script: str | None = None,
           enforce_interval: bool = True, until: str | None = None, count: int | str | None = None, *,
           folder: Path | None, asked: datetime | None = None) -> int:
    """Change live rows: content keys are merged (unknown ones kept); ``""`` clears recurrence, script, until or
    count. A new recurrence without a new time recomputes the next run from ``asked`` (when the agent asked, as its
    tool said it; see ``schedule``), else now. ``count`` is the runs left from the next one to start (so a running
    occurrence, which uses one as it ends, stores one more)."""
    from schemas.messages import TaskContent

    expr = recurring.validate(recurrence_expr) if recurrence_expr else recurrence_expr
    if expr and enforce_interval:
        check_interval(expr, now, policy)
    changes: dict[str, Any] = {k: v for k, v in (("prompt", prompt), ("script", script)) if v is not None}
    ends = _ends(until, count)
    with transaction(conn):
        series_id = _series(conn, ref)
        rows = _live(conn, folder, series_id)
        if not rows:
            raise NclError(f"task {ref} has no live occurrence to update")
        carrier = _carrier(rows, series_id)
        for row in rows:
            content = {**json.loads(row.content), **changes}
            if isinstance(content.get("script"), str) and not content["script"].strip():  # "" (or blanks): none
                content["script"] = None
            TaskContent.model_validate(content)
            waiting = row.status != "processing"
            carries = row is carrier
            new_expr = (expr or None) if expr is not None and carries else row.recurrence
            if ends and carries:
                _set_ends(content, ends, waiting, new_expr, ref)
            if process_after and carries and new_expr:
                _check_start(process_after, now, policy)
            if not waiting and carries and process_after:
                # It runs now: it finishes as it is; the new time is the next occurrence's, made here.
                if not new_expr:
                    raise NclError(f"task {ref} is running now; a one-shot that has started cannot be moved")
                _check_until(content, now, process_after)
                task_series.revise(conn, row.id, json.dumps(content), None, row.process_after, None)
                recurrence.clone(conn, inbox.get(conn, row.id) or row, now, policy, at=from_text(process_after),
                                 expr=new_expr)
                continue
            after = row.process_after
            if waiting and carries and process_after:
                after = process_after
            elif waiting and carries and expr:
                after = to_text(recurring.next_after(expr, asked or now, policy.zone))
            if waiting and new_expr and ("until" in ends or after != row.process_after):
                _check_until(content, now, after)
            if after != row.process_after:  # a time given anew: no longer a retry of its old slot, nor counted as one
                content.pop(recurrence.SLOT, None)
                task_series.count_try(conn, row.id, 0)
            # A time worked out now is planned in this zone; one kept stays in the zone it was planned in.
            zone = (policy.zone.key if after != row.process_after else row.zone) if new_expr else None
            task_series.revise(conn, row.id, json.dumps(content), new_expr, after, zone)
    return len(rows)


def _carrier(rows: list[InMessage], series_id: str) -> InMessage:
    """The live row a series' time, recurrence and end belong to: the one with the recurrence, else the only one, else
    (a one-shot with a ``run_now`` waiting beside it) the series' own row, else its latest."""
    return next((r for r in rows if r.recurrence is not None), None) or next(
        (r for r in rows if r.id == series_id), rows[-1])


def _set_ends(content: dict[str, Any], ends: dict[str, Any], waiting: bool, expr: str | None, ref: str) -> None:
    """Merge a series' new end into its carrier's ``content``: a running carrier's count counts itself too."""
    if not expr:
        raise NclError(f"task {ref} runs once: until and count end a recurring series")
    for key, value in ends.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value + 1 if key == "count" and not waiting else value


def run_now(conn: db.Connection, ref: str, now: datetime) -> str:
    """An extra one-shot occurrence of the series, due now; the series' grid does not move."""
    with transaction(conn):
        series_id = _series(conn, ref)
        last = task_series.occurrences(conn, series_id)[-1]
        data = json.loads(last.content)
        content = json.dumps({k: v for k, v in data.items() if k not in SERIES_KEYS}) if any(
            k in data for k in SERIES_KEYS) else last.content  # (else as it is, byte for byte)
        return inbox.insert(conn, {
            "id": ids.new_id("task", now), "kind": "task", "timestamp": to_text(now), "process_after": to_text(now),
            "series_id": series_id, **last.routing(), "content": content})
