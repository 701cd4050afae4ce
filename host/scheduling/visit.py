"""One visit of a session (DESIGN §6.2), whoever makes it: the sweep's own thread, or one of its worker processes
(``visitors``). It reads the inbox, the runner's outbound.db, then writes the inbox: acks synced, requests applied,
recurrences cloned and their misfires dealt with, replies handed on."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.files import logs
from host.runtimes.pool import Runner, Runners
from host.scheduling import acks, recurrence
from host.scheduling.recurrence import Policy
from host.scheduling.seen import Visit
from host.settings import Settings
from host.store import db, inbox, outbox, task_series
from host.store.outbox import OutMessage
from host.store.sessions import Session

if TYPE_CHECKING:  # (the host loop's, with asyncio: a sweep's worker process goes without)
    from host.channels.delivery import Deliveries


@dataclass
class SweepResult:
    now: str
    sessions_checked: int = 0
    sessions_opened: int = 0
    woken: int = 0
    applied: int = 0
    cloned: int = 0
    missed: int = 0
    retried: int = 0
    failed: int = 0
    errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, done: SweepResult) -> None:
        """What a visit ``done`` (its writes, committed) adds to the sweep's counts."""
        for name in ("applied", "cloned", "missed", "retried", "failed"):
            setattr(self, name, getattr(self, name) + getattr(done, name))


class Inline(Exception):
    """A worker's visit (one with no ``Visitor.apply``) found what only the sweep's own thread can take on: requests
    to apply, replies to hand on. Raised before it wrote anything."""


Apply = Callable[[db.Connection, Session, list[OutMessage], datetime, Policy], int]


@dataclass
class Visitor:
    """What a visit works with: the runners (None: it starts and stops none, sees none alive), the deliveries the
    replies it finds go to (None: they wait), and how requests are applied (``Sweeper._apply``; None: a worker's,
    which leaves a session with requests to the sweep's thread: ``Inline``)."""

    settings: Settings
    runners: Runners | None = None
    deliveries: Deliveries | None = None
    apply: Apply | None = None

    def visit(self, session: Session, now: datetime, policy: Policy, runner: Runner | None,
              result: SweepResult, quiet: frozenset[str] | None) -> Visit:
        """``quiet``: the open rows a read of the unchanged outbound.db found nothing for (None: read it). The
        inbox is read, then the runner's outbound.db, then the inbox written, each step with the session's
        in-process lock held only for the inbox's (an arrival goes in while the runner's file is read, or a stuck
        runner stopped). ``outbox.RUNNER_WAIT_S`` bounds each wait of a visit, runner or none: for SQLite's locks, which
        a live runner may keep, or an operator's ``sqlite3`` left inside a read of the inbox, and for the in-process
        lock, which another of the host's threads holds past that only while it waits on such a lock. The sweep's one
        thread must not wait with them (every other session would); the session is held off and visited again."""
        folder = session.folder
        inbound, outbound = folder / "inbound.db", folder / "outbound.db"
        limit = self.settings.max_requests_per_visit
        lock, wait = db.lock_of(inbound), outbox.RUNNER_WAIT_S
        with logs.visiting(session.id), ExitStack() as stack:
            with lock.within(wait):
                conn = stack.enter_context(closing(db.connect(inbound, "inbound", reading=True, wait_s=wait)))
                look = inbox.look(conn, now, policy.zone.key)
                open_rows = look.open_rows
                unread = runner is None and quiet is not None and quiet.issuperset(open_rows)
                handled, replied = (0, 0) if unread else inbox.watermarks(conn)
                db.end_read(conn)  # (in the one read transaction of the connection's checks)
            if unread:
                found, claimed = outbox.Outbox(), []  # what reading it again would find: no ack, request or reply
            else:
                found, runner = self._read_outbox(session, outbound, now, runner, open_rows, handled, replied, wait)
                if self.apply is None and (found.requests or found.replies):
                    raise Inline  # (before its claims are cleared: the sweep's visit finds them as this one did)
                claimed = [mid for mid, ack in found.acks.items() if ack.status == "processing"]
                if runner is None:
                    # Claims first, then the inbox: a crash between leaves 'processing' rows, released next time.
                    outbox.clear_claims(outbound, claimed, wait)
                quiet = None if found.acks or found.requests or found.replies else frozenset(open_rows)
            more = len(found.requests) > limit
            state, same = look.state, None
            # Replies are sent by the host loop, each once it has taken the inbox's in-process lock (``Deliveries``):
            # handed while this visit holds it, before the turn is recorded done, one goes out after that record (a
            # chat marks a failed turn's answer) and while Matrix sees the turn at work or its answer on the way.
            hand = self.deliveries.hand if self.deliveries and found.replies else None
            notice = bool(self.runners and self.runners.owes_notice(session.id))
            writes = bool(found.acks or claimed or found.requests or look.recurring or notice
                          or "processing" in open_rows.values())
            if hand and not writes:
                hand(session, found.replies)
            if writes:
                # (A visit with nothing of these to do writes nothing: no transaction.) What it did counts, and its
                # notice is given, once it is committed.
                done = SweepResult(result.now)
                with lock.within(wait), db.transaction(conn):
                    if hand:
                        hand(session, found.replies)
                    synced = acks.sync(conn, now, policy, runner, found, claimed, open_rows)
                    done.cloned, done.retried, done.failed, done.missed = synced
                    if found.requests and self.apply:
                        done.applied = self.apply(conn, session, found.requests[:limit], now, policy)
                    if look.recurring:
                        for row in task_series.ended_recurring(conn):
                            done.cloned += recurrence.repair(conn, row, now, policy)
                        recurrence.replan(conn, now, policy)  # TZ changed since they were planned (nearly never)
                        for row in task_series.due_recurring(conn, now):
                            misfired = recurrence.misfire(conn, row, now, policy)
                            done.missed, done.cloned = done.missed + misfired.missed, done.cloned + misfired.cloned
                    if notice:
                        inbox.notice(conn, now, "runner_start_failed", "The agent's runner failed to start several "
                                     "times in a row; the host keeps retrying with growing delays.")
                    state = inbox.state(conn, now)  # what this visit leaves, read before others may write again
                result.add(done)
                if notice and self.runners:
                    self.runners.noticed.add(session.id)
            elif (runner is None and quiet is not None and not more and not state.processing
                  and state.due_since is not None and state.due_since <= result.now):
                same = (result.now, look.recurring_at)  # see Seen.same
            # Requests left for the next visit make the session due now, so the loop comes back at once, not in 60 s.
            return Visit("" if more else state.next_due, state.processing, bool(found.replies), state.due_since,
                          quiet if runner is None else None, same)


    def _read_outbox(self, session: Session, path: Path, now: datetime, runner: Runner | None,
                     open_rows: dict[str, str], handled: int, replied: int,
                     wait: float | None) -> tuple[outbox.Outbox, Runner | None]:
        """What the visit finds in outbound.db, and the runner still alive after: one found stuck is killed, and so
        is one that tampered with the file (``db.Tampered``). A runner whose file could not be read is judged by
        its heartbeat alone (one hung holding its file's lock is killed as well). A visit that fails so is done again
        later, its runner gone if it was killed."""
        try:
            # One request more than a visit applies tells whether the rest wait for the next visit (§13.5).
            found = outbox.read(path, open_rows, handled, writable=runner is None, reply_after_seq=replied,
                                request_limit=self.settings.max_requests_per_visit + 1, wait_s=wait)
        except db.Tampered as exc:
            if self.runners and runner is not None:
                self.runners.kill(session.id, str(exc))
            raise
        except (db.Error, db.DbError) as exc:
            if db.is_busy(exc) and runner is not None and self.runners:
                self.runners.kill_if_stuck(session, now, runner, outbox.Outbox())
            raise
        if runner is not None and self.runners and self.runners.kill_if_stuck(session, now, runner, found):
            runner = None
        return found, runner
