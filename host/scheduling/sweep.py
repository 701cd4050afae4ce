"""One sweep over every active session (DESIGN §6.2): sync acks, apply requests, clone, misfire, release stuck or
orphaned claims, wake. Idle sessions are not opened: two stats (inbound.db, outbound.db), made only if the folder
changed since (``changes``), tell whether anything was written since the last visit; nor are due sessions unchanged
since a visit that had nothing to write (``Seen.same``). Their signature holds ctimes, which any write, rename or
``utime`` moves and no runner can set back. What a visit learned is kept in central.db too (``session_index``), so a
restarted host opens only the sessions that changed or are due. A session is opened for a visit (``visit``): at once
if its runner is alive, else after the pass, by worker processes when there are many to open (``visitors``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from host.channels.delivery import Deliveries
from host.errors import cut
from host.files import logs
from host.http import answers
from host.runtimes.pool import Runner, Runners, others_at_work
from host.scheduling import actions, cross_group, jobs
from host.scheduling.changes import Changes
from host.scheduling.listing import CHUNK, Listing
from host.scheduling.recurrence import Policy
from host.scheduling.seen import OUTBOUND_SIDE, RACY_NS, Book, Holds, Seen, Visit, files_of
from host.scheduling.visit import SweepResult as SweepResult  # (the sweep's result: ``tick``)
from host.scheduling.visit import Visitor
from host.scheduling.visitors import Outcome, VisitFailed, Visitors
from host.settings import Settings
from host.store import db, groups, session_index
from host.store.outbox import OutMessage
from host.store.sessions import Session
from host.store.task_ids import TaskIds
from schemas import clock
from schemas.times import from_text, to_text

log = logging.getLogger(__name__)
AHEAD = timedelta(seconds=3)  # a runner for work due this soon starts ahead, in a free slot (Runners.start_ahead)
YIELD_AFTER_S = 0.005  # a sweep pauses between sessions after this much work, to let the host loop serve


def advance(steps: Generator[None, None, SweepResult]) -> SweepResult | None:
    """Run ``steps`` (a ``Sweeper.steps`` sweep) to its next pause: None if it paused, its result once it is done."""
    try:
        next(steps)
    except StopIteration as done:
        result: SweepResult = done.value
        return result
    return None


# What the sweep knows of a session whose inbox a request of another session's changed: nothing it can trust (no
# signature matches), and that it is due now.
AGAIN = Seen(files=(), settled=False, next_due="", busy=False)


class _Plan(NamedTuple):
    """A session with no live runner, to be visited after the sweep's pass (``Sweeper._visit_waiting``)."""

    session: Session
    files: tuple[int, ...]  # its ``files_of`` before the visit
    seen_at: int
    quiet: frozenset[str] | None


@dataclass
class Sweeper:
    settings: Settings
    runners: Runners | None = None  # None: count wakes, start nothing (sweep --now)
    deliveries: Deliveries | None = None  # None: replies wait for a host that serves channels
    # A one-off sweep: a runner an earlier one started may be at work still (they outlive it; ``others_at_work``).
    one_off: bool = False
    seen: Book = field(default_factory=Book)
    failing: dict[str, str] = field(default_factory=dict)  # session id -> the problem last logged for it
    holds: Holds = field(default_factory=Holds)  # sessions not visited for a while: their visits failed, or were slow
    unvisited: int = 0  # sessions never seen that the last tick left for the next (its new_limit)
    _central: db.Connection | None = None
    _index_loaded: bool = False
    _index: session_index.Kept = field(default_factory=session_index.Kept)
    listing: Listing = field(init=False)  # the active sessions
    _visitors: Visitors | None = None
    _touched: set[str] = field(default_factory=set)  # sessions this tick's requests wrote (``_apply``)
    _kept_open: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _yielding: answers.Yielding = field(default_factory=answers.Yielding)  # to the host's answers, between sessions
    _changes: Changes = field(init=False)  # which folders changed since looked at (a one-off sweep: none watched)

    def __post_init__(self) -> None:
        self.listing = Listing(self.settings)
        self._changes = Changes(watching=not self.one_off)

    @property
    def policy(self) -> Policy:
        return Policy.of(self.settings)

    def active_sessions(self) -> list[Session]:
        """The active sessions, read again only when the list changed."""
        for _ in self._listed():
            pass
        return self.listing.sessions

    def _listed(self) -> Generator[None, None, None]:
        """The list read again if it changed (``Listing``), what is kept of sessions gone since dropped with them;
        the first time, the index loaded too. Pauses between chunks of the work."""
        if self._central is None:
            self._central = db.connect(self.settings.central_db, "central")
        listing, before = self.listing, len(self.listing.sessions)
        whole = yield from listing.read(self._central)
        if whole is False:
            self.seen.activate({session.id for session in listing.sessions[before:]}, more=True)
        elif whole:
            jobs = {session.id for session in listing.jobs}
            self._kept_open = {sid: files for sid, files in self._kept_open.items() if sid in jobs}
            active = set(listing.position)  # (what is kept of sessions gone since goes with them, runners too)
            for gone in [sid for sid in self.seen if sid not in active]:
                self._remember(gone, None)
            self.seen.activate(active)
            if self.runners:
                self.runners.keep_only(active)
            self.holds.keep_only(active)
            self._changes.keep_only({session.id: session.path for session in listing.sessions})
            self.failing = {sid: problem for sid, problem in self.failing.items() if sid in active}
        if not self._index_loaded:
            yield from self._load_index()

    def _apply(self, conn: db.Connection, session: Session, requests: list[OutMessage], now: datetime,
               policy: Policy) -> int:
        """The visit's requests; the task ids they register are committed to central.db once, not one by one (each
        commit is a sync to disk, which the loop would wait for 50 times)."""
        assert self._central is not None
        registry = TaskIds(self._central, session.agent_group_id, session.id)
        reach = cross_group.Reach(self._central, self.settings, session)
        with db.transaction(self._central):
            applied = actions.apply(conn, requests, now, policy, registry, reach)
        for other in reach.touched:  # a request changed its inbox: this tick visits it (if still to come), or the next
            if other in self.holds.held:
                self.seen.pop(other, None)  # (held off after a failed visit: visited when the hold ends)
            else:
                self.seen[other] = AGAIN  # (due now: the loop ticks again at once, not at the next full sweep)
        self._touched |= reach.touched
        return applied

    def _brief(self, group_id: str) -> groups.Brief:
        assert self._central is not None
        return groups.brief(self._central, group_id)

    def close(self) -> None:
        if self._visitors is not None:
            self._visitors.close()
        self._changes.close()  # (a tick after stats every session)
        if self._central is not None:
            self._save_index()
            self._central.close()
            self._central = None

    def _load_index(self) -> Generator[None, None, None]:
        """What a host before this one learned of the sessions, as if this one had seen it (a chunk at a time)."""
        assert self._central is not None
        self._index_loaded = True
        session_index.prune(self._central)
        yield
        rows = session_index.load(self._central, session_index.context(self.policy.zone.key))
        loaded = []
        for start in range(0, len(rows), CHUNK):
            for sid, files, next_due in rows[start:start + CHUNK]:
                entry = self._index.rows[sid] = session_index.entry(files, next_due)
                loaded.append((sid, Seen(entry.files, True, entry.next_due, False)))
            yield
        self.seen.load(loaded)

    def _remember(self, session_id: str, seen: Seen | None) -> None:
        if seen is None:
            self.seen.pop(session_id, None)
        else:
            self.seen[session_id] = seen
        self._index.note(session_id, None if seen is None else seen.kept)

    def _save_index(self) -> bool:
        """The index's changed rows (a few hundred to a transaction); on a failure (False) they are tried again after
        the next tick. Through the sweep's own connection: a commit of another would make ``active_sessions`` read
        the list again. Rows change rarely (a busy session has none), so the commits' syncs cost little."""
        if not self._index.unsaved or self._central is None:
            return True
        try:
            self._index.save(self._central, session_index.context(self.policy.zone.key))
        except db.Error as exc:
            log.warning("the session index was not saved: %s", exc, extra={"action": "session_index_failed"})
            return False
        return True

    def earliest_due(self) -> datetime | None:
        """When the next session needs a wake: the earliest due time among sessions with no live runner and no
        queued wake (a live runner fetches for itself), or a queued wake's back-off end. Wakes queued for room
        are retried whenever a runner is alive (the loop then ticks often)."""
        runners = self.runners
        first = self.seen.first_due({*runners.live, *runners.waiting} if runners else set())
        ahead = AHEAD if runners and runners.room() > 0 else timedelta(0)  # to start its runner ahead
        dues = [] if first is None else [from_text(first) - ahead if first else datetime.min.replace(tzinfo=UTC)]
        if runners:
            dues += [runners.not_before[sid] for sid in runners.waiting if sid in runners.not_before]
        dues += self.holds.ends()  # (a failed visit's session is not in ``seen``)
        return min(dues, default=None)

    def _soon(self, now: datetime, runners: Runners) -> list[tuple[str, Session]]:
        """Sessions with no runner whose work falls due within AHEAD, soonest first, as many as there is room for."""
        room = runners.room()
        if room <= 0:
            return []
        soon = [(due, session) for due, sid in self.seen.due_between(to_text(now), to_text(now + AHEAD))
                if sid not in runners.live and (session := self.listing.get(sid)) is not None]
        return soon[:room]

    def hot(self, now: datetime) -> set[str]:
        """Sessions a partial tick must look at: live or waiting runners, undelivered or claimed rows, due rows.
        Anything else can only change by a write from outside, which nudges, or at the next full sweep."""
        found = self.seen.busy | {sid for _, sid in self.seen.due_by(to_text(now))}
        found |= self.holds.held.keys()  # (the loop comes back when a hold ends: see ``earliest_due``)
        if self.runners:
            found |= {*self.runners.live, *self.runners.waiting}
        return found

    def tick(self, now: datetime, only: set[str] | None = None, new_limit: int | None = None) -> SweepResult:
        """One pass over every active session, or over ``only`` those (a partial tick between full sweeps).
        ``new_limit``: open at most this many sessions never seen before; the rest wait for the next tick
        (``unvisited`` counts them), so a host starting with thousands of sessions keeps serving between ticks."""
        steps = self.steps(now, only, new_limit)
        while (result := advance(steps)) is None:
            pass
        return result

    def steps(self, now: datetime, only: set[str] | None = None,
              new_limit: int | None = None) -> Generator[None, None, SweepResult]:
        """``tick`` as a generator that pauses between sessions once it has worked ``YIELD_AFTER_S``: the host
        loop resumes it after serving whatever came in, so a sweep over many busy sessions never holds the loop."""
        result = SweepResult(now=to_text(now))
        policy = self.policy
        self.unvisited = 0
        self._touched.clear()
        yield from self._listed()
        self._changes.begin(full=only is None)
        held, runners = self.holds.held, self.runners
        waiting: list[_Plan] = []
        self._visitors = self._visitors or Visitors(self.settings)
        handing = self._visitors.round(now)
        mark = time.monotonic()
        for session in self.listing.sessions if only is None else self.listing.among(only | self.seen.unseen):
            self._yielding.wait()
            if time.monotonic() - mark > YIELD_AFTER_S:
                yield
                mark = time.monotonic()
            if only is not None and session.id not in only and session.id in self.seen:
                continue  # (a session never seen yet, e.g. one a queue job just made, is always looked at)
            if new_limit is not None and session.id not in self.seen and session.id not in self.failing:
                if new_limit <= 0:
                    self.unvisited += 1
                    continue
                new_limit -= 1
            if session.id in held and now < held[session.id][0]:
                continue
            result.sessions_checked += 1
            live = runners is not None and session.id in runners.live  # (only its visit is timed: the idle path)
            started = time.monotonic() if live else 0.0
            try:
                plan = self._sweep_one(session, now, policy, result)
            except Exception as exc:  # one broken session never stops the others
                self._went_wrong(session, now, result, exc)
            else:
                if plan is not None:
                    waiting.append(plan)
                    handing.add((session, plan.quiet))
                elif live or self.failing or self.holds:  # (else nothing to note: an idle pass's common case)
                    self._went_well(session, now, time.monotonic() - started if live else 0.0)
        saving = True
        if waiting:
            saving = yield from self._visit_waiting(waiting, handing.outcomes(self.unvisited), now, policy, result)
        if saving:  # (not again in a tick whose save failed: central.db locked, its busy timeout waited out once)
            self._save_index()
        if self.runners and only is None and self.listing.jobs and self._central is not None:
            busy = {*self.runners.live, *self.runners.waiting}
            if jobs.close_finished(self._central, self.listing.jobs, self.seen, busy, self._kept_open, now):
                self.listing.changed_itself()
        if self.runners:
            result.woken += self.runners.start_waiting(now, self._brief)
            result.woken += self.runners.start_ahead(self._soon(now, self.runners), now, self._brief)
        return result

    def _went_well(self, session: Session, now: datetime, took_s: float) -> None:
        if took_s or self.holds.tracks(session.id):
            self.holds.went_through(session.id, took_s, now)
        if self.failing.pop(session.id, None) is not None:
            log.info("session %s works again", session.id, extra={"action": "session_recovered", "session": session.id})

    def _went_wrong(self, session: Session, now: datetime, result: SweepResult, exc: Exception) -> None:
        self._remember(session.id, None)
        result.errors += 1
        self.holds.failed(session.id, now)
        # Files locked past the visit's bounded waits (a live runner's, or another of the host's threads' waiting on
        # someone's lock; a commit in a disk stall, or a runner at it on purpose) are no broken session: the hold
        # retries it. Said once per distinct problem either way: one broken for good must not fill every sweep's log.
        busy = db.is_busy(exc)
        text = cut(str(exc))  # (kept while the session fails, and logged: it may carry what a runner wrote)
        level = logging.DEBUG if self.failing.get(session.id) == text else logging.INFO if busy else logging.WARNING
        self.failing[session.id] = text
        live = self.runners is not None and session.id in self.runners.live
        why = (" (its runner holds its files)" if live else " (its files are locked)") if busy else ""
        log.log(level, "session %s skipped%s: %s", session.id, why, text,
                extra={"action": "session_busy" if busy else "session_failed", "session": session.id})

    def _visit_waiting(self, waiting: list[_Plan], outcomes: Iterator[Outcome | None], now: datetime,
                       policy: Policy, result: SweepResult) -> Generator[None, None, bool]:
        """The visits the pass left (sessions with no live runner), in its order: each by a worker process (its
        ``outcomes``: see ``visitors``) or, where none did, by this thread. False: a save of the index failed."""
        mark, saving = time.monotonic(), True
        for plan, outcome in zip(waiting, outcomes, strict=True):
            self._yielding.wait()
            if time.monotonic() - mark > YIELD_AFTER_S:
                yield
                mark = time.monotonic()
            # The index is saved as it fills, while the workers visit on: in a sweep that opens thousands of sessions
            # (a one-off sweep's, a burst's) its commits' syncs (10,000 rows: 0.15 s) no longer follow the last
            # visit. Once a save failed, the rest waits for the next tick.
            if saving and len(self._index.unsaved) >= session_index.SAVE_CHUNK:
                saving = self._save_index()
            try:
                visit = None
                if outcome is not None:
                    visit, done, error, records, busy = outcome
                    if records:
                        logs.replay(plan.session.id, records)
                    if error is not None:
                        raise (db.Busy if busy else VisitFailed)(error)  # (said as the sweep's thread would)
                    if done is not None:
                        result.add(done)
                if visit is None or plan.session.id in self._touched:  # (a worker's, from before a request's write)
                    visit = self._visit(plan.session, now, policy, None, result, plan.quiet)
                self._visited(plan.session, now, plan.files, plan.seen_at, None, visit, result)
            except Exception as exc:
                self._went_wrong(plan.session, now, result, exc)
            else:
                self._went_well(plan.session, now, 0.0)
        return saving

    def _sweep_one(self, session: Session, now: datetime, policy: Policy, result: SweepResult) -> _Plan | None:
        """The session looked at: left alone if nothing changed, else visited now if its runner is alive (or a notice
        is owed), else planned for after the pass."""
        runner = self.runners.alive(session, now) if self.runners else None
        if self.one_off and runner is None and others_at_work(session):
            return None
        # The idle path runs for every session every tick: no stat unless its folder changed (``changes``), and the
        # tick's own text of `now` (strftime per session cost more than a stat at 10,000 sessions).
        seen = self.seen.get(session.id)
        if runner is not None:
            self._changes.live(session.id)
        files = seen.files if seen and runner is None and seen.settled and self._changes.unchanged(
            session.id, session.path) else files_of(session.path)
        if seen and runner is None and seen.settled and files == seen.files:
            if not seen.busy and (seen.next_due is None or seen.next_due > result.now):
                return None
            if seen.same_at(result.now) and not (self.runners and self.runners.owes_notice(session.id)):
                self._wake(session, now, None, False, seen.due_since, result)  # as a visit would find it again
                return None
        result.sessions_opened += 1
        seen_at = clock.filesystem_ns()
        quiet = seen.quiet_for if seen and seen.settled and seen.files[:OUTBOUND_SIDE] == files[:OUTBOUND_SIDE] \
            else None
        if runner is None and not (self.runners and self.runners.owes_notice(session.id)):
            return _Plan(session, files, seen_at, quiet)
        self._visited(session, now, files, seen_at, runner, self._visit(session, now, policy, runner, result, quiet),
                      result)
        return None

    def _visit(self, session: Session, now: datetime, policy: Policy, runner: Runner | None, result: SweepResult,
               quiet: frozenset[str] | None) -> Visit:
        return Visitor(self.settings, self.runners, self.deliveries, self._apply).visit(session, now, policy, runner,
                                                                                       result, quiet)

    def _visited(self, session: Session, now: datetime, files: tuple[int, ...], seen_at: int, runner: Runner | None,
                 visit: Visit, result: SweepResult) -> None:
        newest = max(files[2], files[5])
        self._remember(session.id, Seen(files, seen_at - newest > RACY_NS, visit.next_due,
                                         visit.processing or visit.undelivered, visit.quiet_for, visit.due_since,
                                         visit.same))
        self._wake(session, now, runner, visit.processing, visit.due_since, result)

    def _wake(self, session: Session, now: datetime, runner: Runner | None, claimed: bool, due_since: str | None,
              result: SweepResult) -> None:
        """What a visit's findings ask of the runners: a wake for due work, or none."""
        if self.runners is None:
            result.woken += runner is None and due_since is not None
        elif runner is None and due_since is not None:
            self.runners.want(session, due_since)
        else:
            self.runners.drop(session.id)
            if runner is not None:
                self.runners.seen(session.id, now, idle=not claimed and due_since is None)

