"""Visits of many sessions at once, in worker processes (``Visitors``). A sweep that must open dozens of sessions with
no live runner (a host start, the 9:00 burst, a tick after many writes) spreads them over the machine's cores. A visit
is mostly SQLite work whose Python between calls holds the GIL: threads made the sweep slower (measured), processes
scale with the cores, and their commits' syncs overlap on the disk.

A worker visits a session as the sweep's own thread would (``visit.Visitor``, no runner alive) and hands back what it
found (``Visit``), what it did (counts) and its log records, which the host logs as its own. What needs the host's
own state is left to the sweep's thread, which visits that session itself: requests to apply (through its central.db
connection) and replies to hand to the deliveries. A worker that found them wrote nothing."""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from multiprocessing import get_context
from multiprocessing.synchronize import Event as ProcessEvent
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

from host.errors import cut
from host.http import answers
from host.scheduling.recurrence import Policy
from host.scheduling.visit import Inline, SweepResult, Visitor
from host.settings import Settings
from host.store import allocations, db
from host.store.sessions import Session
from schemas.times import to_text

if TYPE_CHECKING:
    from host.scheduling.seen import Visit

log = logging.getLogger(__name__)
MIN_VISITS = 16  # a sweep with fewer sessions to open visits them itself: handing them over costs more
# Workers are first started (a forkserver, a Python importing the host: ~0.3 s) only for this many visits in sight,
# this sweep's and those of sessions left for the next (a host start's); after, new ones start in ~15 ms.
FIRST_VISITS = 1000
# Sessions a worker visits per hand-over: 8 while few were handed (a small sweep shared evenly; one each cost ~40% more,
# in the pipes), growing with the round up to 64 (each hand-over costs the host's own process about 0.3 ms of CPU in
# its pipes and futures, which at 8 a batch was a tenth of a host start's work).
BATCH, MAX_BATCH = 8, 64
IDLE_S = 60.0  # workers left unused this long stop; the next sweep that needs them starts them again (~15 ms)
# As many as the cores, at most 4; on one core none: the sweep's thread visits every session itself. (One more than
# the cores cloned 3-10% faster, a visit that commits waiting on the disk, but made cold visits 8% slower and the
# webhook answers' p99 during a host start once went from ~9 to ~11 ms on 2 cores: docs/scaling.md.)
CORES = len(os.sched_getaffinity(0))  # (the cores this host may run on, not the machine's)
WORKERS = min(4, CORES) if CORES > 1 else 0
# The host's own process comes first: its loop answers webhooks and chats. (Nice 19 measured a little better on an idle
# machine, but there a busy runner left a worker ~1.5% of a core, not ~25%, and the sweep waits for its workers.)
WORKER_NICE = 5


class Outcome(NamedTuple):
    """A worker's visit of one session: ``visit`` and ``done`` (its counts; None: it counted nothing), or the
    ``error`` it failed with (``busy``: a wait for another's lock that ran out), or neither (the sweep's thread
    visits it: see the module), and the records it logged."""

    visit: Visit | None
    done: SweepResult | None
    error: str | None
    records: list[logging.LogRecord]
    busy: bool = False


class OtherCode(Exception):
    """The workers would run code other than the host's (``Visitors._same_code``)."""


class VisitFailed(Exception):
    """A worker's visit failed: the text of its error."""


Job = tuple[Session, "frozenset[str] | None"]  # a session to visit, and its ``quiet`` rows (``Visitor.visit``)


class Round:
    """The sessions one sweep's pass leaves to visit (``add``), in batches handed to the workers as they fill once
    there are ``MIN_VISITS`` of them and workers were started before: they visit while the pass goes on.
    ``outcomes``: each job's, in order, None for those the sweep's thread visits (all of them in a sweep with fewer,
    or with fewer than ``FIRST_VISITS`` in sight before the first workers start)."""

    def __init__(self, visitors: Visitors, now: datetime) -> None:
        self.visitors, self.now = visitors, now
        self.jobs: list[Job] = []
        self._batches: list[tuple[Future[list[Outcome]], int]] = []
        self._handed = 0
        self._stopped = False

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        if self.visitors.started and len(self.jobs) >= MIN_VISITS and len(self.jobs) - self._handed >= self._size():
            self._hand()

    def _size(self) -> int:
        return min(MAX_BATCH, max(BATCH, self._handed // 8))

    def _hand(self) -> None:
        while WORKERS > 1 and not self._stopped and not self.visitors.refused and self._handed < len(self.jobs):
            batch = self.jobs[self._handed:self._handed + self._size()]
            try:
                self._batches.append((self.visitors._submit(self.now, batch), len(batch)))
            except Exception as exc:  # workers that died since the last sweep (a broken pool takes no more work)
                self.visitors._failed(exc)
                self._stopped = True  # (the rest of this sweep is the sweep thread's; the next starts new workers)
                return
            self._handed += len(batch)

    def outcomes(self, ahead: int = 0) -> Iterator[Outcome | None]:
        """``ahead``: sessions left for the next sweeps, which will be visited too."""
        if len(self.jobs) >= MIN_VISITS and (self.visitors.started or len(self.jobs) + ahead >= FIRST_VISITS):
            self._hand()
        for future, size in self._batches:
            yield from self.visitors._outcomes(future, size)
        yield from [None] * (len(self.jobs) - self._handed)


class Visitors:
    """The sweep's worker processes, started when a sweep first needs them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._used = 0.0
        self.started = False  # workers were started once: the forkserver they come from runs (until the host ends)
        self.refused = ""  # why no worker is used while the host runs (``_same_code``)

    def round(self, now: datetime) -> Round:
        """One sweep's hand-over to the workers (``Round``)."""
        self.tidy()
        return Round(self, now)

    def _submit(self, now: datetime, jobs: list[Job]) -> Future[list[Outcome]]:
        if self._pool is None:
            allocations.tune_forkserver()
            context = get_context("forkserver")  # (fork: the host's threads hold locks a child would inherit)
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(WORKERS, mp_context=context, initializer=_started, initargs=(
                os.getpid(), self.settings, logging.getLogger().getEffectiveLevel(), answers.for_workers()))
            self._same_code()
        self._used, self.started = time.monotonic(), True
        return self._pool.submit(_visit_batch, now, jobs)

    def _outcomes(self, future: Future[list[Outcome]], size: int) -> list[Outcome] | list[None]:
        try:
            return future.result()
        except Exception as exc:  # a worker killed (out of memory), or a result that could not cross the pipe
            self._failed(exc)
            return [None] * size

    def _same_code(self) -> None:
        """Workers visit with the host's own code, or never. Python 3.11's forkserver imports with the host's working
        directory first on its path: a ``host`` package there (another checkout or release of ncl) would have
        visited every session with other code. Asked before their first batch, of the code they would run."""
        assert self._pool is not None
        source = attrgetter("__code__.co_filename")
        theirs, ours = self._pool.submit(source, _visit_batch).result(), source(_visit_batch)
        if os.path.realpath(theirs) != os.path.realpath(ours):
            self.refused = (f"they would run {os.path.dirname(os.path.dirname(theirs))}, not the host's "
                            f"{os.path.dirname(os.path.dirname(ours))} (a package in the host's working directory "
                            "shadows it: start the host from another one)")
            raise OtherCode(self.refused)

    def _failed(self, exc: Exception) -> None:
        if self._pool is not None:  # (said once: the batches after it fail with it)
            log.warning("a sweep worker failed (%s): its sessions are visited by the sweep's own thread", exc,
                        extra={"action": "sweep_worker_failed"})
        self.close()

    def tidy(self) -> None:
        """The workers stopped if no sweep has needed them for ``IDLE_S``."""
        if self._pool is not None and time.monotonic() - self._used > IDLE_S:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


# --- in the worker process ---------------------------------------------------------------------------------------

_visitor: Visitor | None = None
_yielding = answers.Yielding()


class _Kept(logging.Handler):
    """A worker's records, kept for the host: their text made (arguments may not cross a pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self.records.append(record)


_kept = _Kept()


def _started(host: int, settings: Settings, level: int, none_owed: ProcessEvent) -> None:
    global _visitor, _yielding
    allocations.stop_counting()  # (before the worker's first connection)
    threading.Thread(target=_end_with, args=(host,), daemon=True, name="ncl-visit-watch").start()
    null = os.open(os.devnull, os.O_RDWR)  # none of the host's stdio (a pipe someone waits to see closed) is held
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host stops its workers itself (a ^C reaches the whole group)
    os.nice(WORKER_NICE)
    root = logging.getLogger()
    root.handlers = [_kept]
    root.setLevel(level)
    _visitor = Visitor(settings)
    _yielding = answers.Yielding(none_owed)  # (the host's answers come first: see answers)


def _end_with(host: int) -> None:
    """The worker ends when the host does, SIGKILL included (its parent, the forkserver, lives while any worker
    does): at once where the kernel tells (a pidfd), else within a second."""
    try:
        select.select([os.pidfd_open(host)], [], [])
    except (OSError, AttributeError):  # gone already, or no pidfd here
        while _alive(host):
            time.sleep(1)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _visit_batch(now: datetime, jobs: list[Job]) -> list[Outcome]:
    assert _visitor is not None
    policy, outcomes, stamp = Policy.of(_visitor.settings), [], to_text(now)
    nothing = SweepResult(stamp)
    for session, quiet in jobs:
        _yielding.wait()
        _kept.records = []
        done = SweepResult(stamp)
        try:
            visit = _visitor.visit(session, now, policy, None, done, quiet)
            outcome = Outcome(visit, None if done == nothing else done, None, _kept.records)
        except Inline:
            outcome = Outcome(None, None, None, _kept.records)
        except Exception as exc:
            outcome = Outcome(None, None, cut(str(exc) or type(exc).__name__), _kept.records, db.is_busy(exc))
        outcomes.append(outcome)
    return outcomes
