"""``ncl host run``: repeat sweeps; between them sleep only until the earliest known due time (DESIGN §6.2)."""

from __future__ import annotations

import asyncio
import errno
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from host.channels import alerts, nudge, registry
from host.channels.delivery import Deliveries
from host.errors import NclError
from host.http.listener import OUT_OF_FDS
from host.project_tasks.fire import ScheduledTasks
from host.runtimes import published
from host.runtimes.base import Runtime
from host.runtimes.pool import Runners
from host.runtimes.proxy.server import CredentialProxy
from host.runtimes.writes import RunnerWrites
from host.scheduling import sweep
from host.scheduling.sweep import Sweeper, SweepResult
from host.settings import Settings
from host.store import db, sessions
from schemas.clock import Clock

log = logging.getLogger(__name__)
T = TypeVar("T")
SLICE_S = 1.0  # longest uninterrupted sleep: bounds how late a nudge or a stop is noticed
FLOOR_S = 0.05  # shortest sleep, so a wake that cannot start never spins the loop
# Opening a session never seen takes 1-3 ms (all of them, at a host's start): in chunks, between which the loop
# serves webhooks, chats and the model proxy.
NEW_SESSIONS_PER_TICK = 64
BETWEEN_CHUNKS_S = 0.01  # long enough for a request to be read and answered whole, not one step of it a chunk
LIVE_RUNNER_TICK_S = 0.25  # with runners alive, acks, requests and replies are synced at least this often
# An arrival, or a live runner's commit (``RunnerWrites``), wakes the loop at once, yet the sweeps they cause come at
# most this often: a flood of either costs a bounded number of partial sweeps.
ARRIVALS_GAP_S = 0.02
# While the sweep's thread runs Python, a thread back from a system call (the loop from epoll, a socket's send, each
# SQLite call) waits this long for the GIL before the sweep must hand it over: Python's 5 ms made an answer that
# makes 20 such calls wait up to 100 ms. The sweep is interrupted only when another thread asks for the GIL.
SWITCH_INTERVAL_S = 0.0005
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
SHORT = {"fds": "file descriptors", "disk": "disk space"}  # what a step may run out of, and live on (``short_of``)


@dataclass
class Host:
    settings: Settings
    runtime: Runtime
    clock: Clock
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    woken: asyncio.Event = field(default_factory=asyncio.Event)  # set by an arrival here, or a runner's write

    def __post_init__(self) -> None:
        self._full_stamp: int | None = None  # the nudge stamp the last full sweep saw; None: none yet
        # Sessions an arrival in this process wrote since the last sweep (``arrived``), and whether one came whose
        # session is unknown: the next sweep looks at those (and the busy ones), or at every session.
        self._arrived: set[str] = set()
        self._arrived_somewhere = False
        self._next_full = self._next_live = self._woken_at = datetime.min.replace(tzinfo=UTC)
        self._started_at: datetime | None = self.clock.now()  # until every session has been seen once
        self.channels = registry.channels(self.settings)
        self.deliveries = Deliveries(self.channels, self.clock.now, self.settings.central_db, drained=self.arrived)
        self.proxy = CredentialProxy(self.settings)
        self.runners = Runners(self.runtime, self.settings, self.proxy)
        self.sweeper = Sweeper(self.settings, self.runners, self.deliveries)
        self._published: dict[str, Any] | None = None  # the pool state last written for ``ncl status``
        self.scheduled = ScheduledTasks(self.settings, self.clock.now)  # project-level tasks (DESIGN §9)
        self.writes = RunnerWrites(self.woken)  # a live runner's commit wakes the loop
        self.alerts = alerts.alerts_of(self.settings, now=self.clock.now, sleep=self.clock.sleep)  # NCL_ALERT_CHANNEL
        # The running host sweeps in this one thread (``run``), so the loop answers while SQLite works; without it
        # (a test's ``step``) the sweep runs on the loop, between pauses.
        self._worker: ThreadPoolExecutor | None = None
        self._starved = False  # the last step ran out of file descriptors (``_surviving_step``)

    def wake_at(self, now: datetime) -> datetime:
        """When the loop must sweep again (asked in the sweep's thread: it reads the sweeper's state, over every
        session, and central.db for the project tasks)."""
        candidates = [self._next_full]
        if due := self.sweeper.earliest_due():
            candidates.append(due)
        if due := self.scheduled.earliest_due():
            candidates.append(due)
        if self.sweeper.runners and self.sweeper.runners.live:
            # A beat of its own: a sweep an arrival woke in between never puts the next one off.
            if self._next_live <= now:
                self._next_live = now + timedelta(seconds=LIVE_RUNNER_TICK_S)
            candidates.append(self._next_live)
        return max(min(candidates), now + timedelta(seconds=FLOOR_S))

    async def step(self) -> SweepResult:
        """One sweep, then sleep until the next thing to do, an arrival, a nudge from the CLI, or a stop."""
        now = self.clock.now()
        # Read the nudge before the sweep: a write during it then still ends the sleep that follows.
        stamp, woken = nudge.stamp(self.settings), self.woken.is_set()
        arrived, somewhere = self._arrived, self._arrived_somewhere
        self.woken.clear()
        self._arrived, self._arrived_somewhere = set(), False
        full = somewhere or stamp != self._full_stamp or now >= self._next_full
        if woken:
            self._woken_at = now
        if full:
            self._full_stamp, self._next_full = stamp, now + timedelta(seconds=self.settings.sweep_interval_s)
        # Project tasks first: a job one enqueues is then woken by this same sweep, not the next one.
        fired = await self._off_loop(self.scheduled.tick, now)
        # Between full sweeps only the sessions with something going on are looked at: a live runner makes the
        # loop tick four times a second, and a chat or webhook may arrive as often, which must not stat every idle
        # session each time (80 ms at 10,000 sessions).
        result = await self._sweep(now, None if full else arrived)
        self.writes.sync({runner.folder for runner in self.runners.live.values()})
        await self._off_loop(self._publish)  # (a file replaced: up to 3 ms measured, off the loop)
        if fired.fired or fired.missed or fired.failed:
            log.debug("scheduled tasks", extra={"action": "scheduled_tick", **fired.to_json()})
        if result.sessions_opened:
            log.debug("sweep", extra={"action": "sweep", **result.to_json()})
        if self.sweeper.unvisited:  # a start with many sessions: let the channels and the proxy in, then go on
            _kept_out()
            await self.clock.sleep(BETWEEN_CHUNKS_S)
            return result
        if self._started_at is not None:
            active = await self._off_loop(self.sweeper.active_sessions)
            log.info("every session seen once, %.1f s after the start (%d active)",
                     (self.clock.now() - self._started_at).total_seconds(), len(active),
                     extra={"action": "sessions_seen"})
            self._started_at = None
            _kept_out()
        wake_at = await self._off_loop(self.wake_at, now)
        while not self.stopping.is_set():
            if self.woken.is_set():
                wake_at = min(wake_at, self._woken_at + timedelta(seconds=ARRIVALS_GAP_S))
            left = (wake_at - self.clock.now()).total_seconds()
            if left <= 0:
                break
            await self._nap(min(left, SLICE_S))
            if nudge.stamp(self.settings) != stamp:
                break
        return result

    async def _surviving_step(self) -> None:
        """A step. One that ran out of file descriptors (a flood of connections took them all: the webhooks answer
        busy meanwhile) or of disk space (a full disk ended the host, every runner with it: crash review) is said
        once and tried again in a second, as a full sweep: the host lives on."""
        try:
            await self.step()
        except (OSError, db.Error, NclError) as exc:  # (SQLite says "unable to open database file", no errno)
            if (short := short_of(exc)) is None:
                raise
            log.log(logging.DEBUG if self._starved else logging.ERROR, "a sweep ran out of %s (%s): tried again "
                    "every second until there is some", SHORT[short], exc, extra={"action": f"sweep_out_of_{short}"})
            self._starved = self._arrived_somewhere = True  # (the arrivals it had taken: the next sweep is full)
            await self._nap(1.0)
        else:
            self._starved = False

    def arrived(self, session_id: str | None) -> None:
        """An arrival in this process wrote ``session_id``'s inbox (None: some session's): sweep at once
        (``nudge.heard``)."""
        if session_id is None:
            self._arrived_somewhere = True
        else:
            self._arrived.add(session_id)
        self.woken.set()

    def _publish(self) -> None:
        """Tell ``ncl status`` about the runners and the waiting wakes, when they changed, and every command
        about the host's zone (a command run in another zone warns)."""
        state = {**self.runners.state(), "zone": self.settings.tz.name}
        if state != self._published:
            published.publish(self.settings.data_dir, state)
            self._published = state

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if an arrival in this process wakes the loop (one that did already: not)."""
        if self.woken.is_set():
            return await self.clock.sleep(seconds)
        naps = [asyncio.create_task(self.clock.sleep(seconds)), asyncio.create_task(self.woken.wait())]
        try:
            await asyncio.wait(naps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for nap in naps:
                nap.cancel()

    async def _sweep(self, now: datetime, arrived: set[str] | None) -> SweepResult:
        """The sweep, in the worker thread: the loop serves webhooks, chats and the model proxy meanwhile (a visit's
        SQLite work, its commits' syncs above all, releases the GIL). Without the worker, on the loop, handing it
        back between sessions whenever it has worked a few ms. The sweep touches the runner pool and the sweeper's
        own state, which nothing else on the loop does until it returns; the replies it finds are handed to the
        deliveries on the loop (``Deliveries.hand``). ``arrived``: a partial sweep, of these sessions and the busy ones
        (``Sweeper.hot``); None: of every session."""
        only = None if arrived is None else arrived | await self._off_loop(self.sweeper.hot, now)
        steps = self.sweeper.steps(now, only, new_limit=NEW_SESSIONS_PER_TICK)
        self.deliveries.sweep_begins()
        while (result := await self._off_loop(sweep.advance, steps)) is None:
            if self._worker is None:
                await asyncio.sleep(0)
        return result

    async def _off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in the sweep's worker thread (every use of the sweeper's connections is there), or on the
        loop if there is none."""
        if self._worker is None:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self._worker, work, *args)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        sessions.prepare()
        # What the answers and the first runner would make or import on first use, made before the host listens: the
        # proxy's client (see ``CredentialProxy.start``), the message models a chat's or webhook's arrival validates
        # (imported on use so that ``ncl`` commands go without pydantic: 9 ms, 40 under a start's load).
        self.proxy.start()
        importlib.import_module("schemas.messages")
        for channel in self.channels:
            await channel.start()
        log.info("host running, data in %s, TZ %s", self.settings.data_dir, self.settings.tz.name,
                 extra={"action": "host_started"})
        for source, value in self.settings.tz.rejected:  # (said when the settings were read, before host.log was)
            log.warning("TZ from %s is not an IANA zone name: %r; ignored, TZ is %s", source, value,
                        self.settings.tz.name, extra={"action": "tz_rejected", "source": source, "value": value})
        worker = self._worker = ThreadPoolExecutor(1, thread_name_prefix="ncl-sweep")
        self.deliveries.loop = loop  # replies the sweep hands from the worker are queued on it
        switch_s = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        delivering = asyncio.create_task(self.deliveries.serve(), name="deliveries")
        # Sent beside the sweeps, never inside one: a slow receiver holds up no session.
        alerting = [asyncio.create_task(self.alerts.serve(), name="alerts")] if self.alerts else []
        try:
            with nudge.heard(self.settings, self.arrived), alerts.reporting(self.alerts):
                while not self.stopping.is_set():
                    await self._surviving_step()
        finally:
            await self._off_loop(self.sweeper.close)  # after a sweep still in the worker (a cancelled step)
            worker.shutdown()
            self._worker = None
            sys.setswitchinterval(switch_s)
            for task in (delivering, *alerting):
                task.cancel()
            await asyncio.gather(delivering, *alerting, return_exceptions=True)
            for channel in self.channels:
                await channel.stop()
            self.proxy.shutdown()
            await self._off_loop(self.runners.stop_all)
            self.writes.close()
            self.scheduled.close(stop_running=True)
            if self.alerts:
                await self.alerts.flush()  # what the last moments raised, within a bounded time
            log.info("host stopped", extra={"action": "host_stopped"})


def _kept_out() -> None:
    """What the host keeps for as long as it runs (every session's state), made through a start, is left out of the
    collector's full passes, each of which walked all of it while holding the GIL (30-56 ms at 10,000 sessions,
    150-210 ms at 100,000: a webhook's or chat's answer waiting). Done at each step of a start and at its end; the
    young generations are collected first, so what is left out has lived a while. Cycles among it are never
    collected. (10,000 sessions, a first start: the webhooks' max 31-38 ms before, 12-22 ms after.)"""
    gc.collect(1)
    gc.freeze()


def short_of(exc: BaseException) -> str | None:
    """What the machine ran out of, if that is why ``exc`` was raised (a key of ``SHORT``), or None."""
    if (isinstance(exc, OSError) and exc.errno in DISK_FULL) or "database or disk is full" in str(exc):
        return "disk"
    if exc.errno in OUT_OF_FDS if isinstance(exc, OSError) else no_descriptor_left():
        return "fds"
    return None


def no_descriptor_left() -> bool:
    """Whether this process can open no file now (it ran out of descriptors, or the system did)."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        return exc.errno in OUT_OF_FDS
    return False
