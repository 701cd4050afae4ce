"""A visit's sync step (DESIGN §6.2): a runner's acks in outbound.db brought into messages_in. A finished occurrence
is recorded (and a recurring one cloned); a row a live runner of this generation claimed is marked processing;
claims no live runner of this generation holds go back with backoff, or fail after the last retry. Everything an
ack carries was written by the runner, so its detail is read only as far as it is usable (``detail``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from host.runtimes.pool import Runner
from host.scheduling import recurrence
from host.scheduling.recurrence import Policy
from host.store import db, inbox, outbox, task_series
from host.store.outbox import MAX_DETAIL, MAX_REASON, Ack
from schemas.rows import RunOutcome
from schemas.times import from_text

OUTCOMES: dict[str, tuple[RunOutcome, ...]] = {"completed": ("ran", "skipped", "gate_error"), "failed": ("failed",)}


class Synced(NamedTuple):
    cloned: int = 0  # recurring occurrences finished and cloned
    retried: int = 0  # claims released for another try
    failed: int = 0  # rows failed: acked so (a provider's error), or claims released after their last try
    missed: int = 0  # missed runs written (slots passed while a released occurrence was claimed)


def sync(conn: db.Connection, now: datetime, policy: Policy, runner: Runner | None, found: outbox.Outbox,
         claimed: list[str], open_rows: dict[str, str]) -> Synced:
    """Acks into messages_in, inside the visit's transaction. ``claimed``: the rows outbound.db says are claimed;
    ``open_rows``: the rows open when the visit began (no claimed row, no orphan: nothing to release)."""
    answers = {reply.id: reply for reply in found.replies}  # what a 'ran' run may name as its answer
    cloned = retried = failed = 0
    for message_id, ack in found.acks.items():
        row = inbox.get(conn, message_id)
        if row is None or not inbox.is_live(row.status):
            continue
        if ack.status in ("completed", "failed"):  # a run paused under it still ran: its next one waits
            kept = detail(ack)
            allowed = OUTCOMES[ack.status]
            outcome = next((o for o in allowed if o == kept.get("outcome")), allowed[0])
            failed += ack.status == "failed"
            cloned += recurrence.finish(
                conn, row, now, policy, ack.status, outcome, kept.get("reason"),
                started_at=kept.get("started_at"), finished_at=ack.status_changed,
                next_status="paused" if row.status == "paused" else "pending",
                result=task_series.RunResult.of_ack(kept, answers) if outcome == "ran" else None)
        elif runner is not None and ack.generation == runner.generation and row.status == "pending":
            inbox.mark_processing(conn, [message_id])
    held = {mid for mid, ack in found.acks.items()
            if runner is not None and ack.status == "processing" and ack.generation == runner.generation}
    orphans = sorted(set(claimed)) if runner is None else []
    if not orphans and "processing" not in open_rows.values():  # (rows claimed by this sync are held)
        return Synced(cloned, failed=failed)
    missed = 0
    for row in inbox.processing(conn, orphans):
        if row.id in held or row.status not in ("pending", "processing"):
            continue
        done = recurrence.release(conn, row, now, policy)
        failed, retried = failed + done.failed, retried + (not done.failed)
        cloned, missed = cloned + done.cloned, missed + done.missed
    return Synced(cloned, retried, failed, missed)


def detail(ack: Ack) -> dict[str, Any]:
    """A runner's ack detail, which may hold anything, as far as it is usable: a JSON object of at most
    ``MAX_DETAIL`` characters (else its text is the reason), its ``reason`` text of at most ``MAX_REASON``
    characters, its ``started_at`` a stored time or absent. So any detail finishes its occurrence, and little of it
    is kept."""
    text = ack.detail or "{}"
    try:
        found = json.loads(text) if len(text) <= MAX_DETAIL else None
    except (ValueError, RecursionError):  # not JSON, or nested beyond reason
        found = None
    if not isinstance(found, dict):
        found = {"reason": text}
    reason, started = found.get("reason"), found.get("started_at")
    return {**found, "reason": None if reason is None else str(reason)[:MAX_REASON],
            "started_at": started if isinstance(started, str) and _is_time(started) else None}


def _is_time(text: str) -> bool:
    try:
        from_text(text)
    except ValueError:
        return False
    return True
