"""The host's view of agent runners: the runtime that starts them, which generation is alive where, and
when a live one counts as stuck (DESIGN §6.7, §8)."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.files import confined
from host.runtimes.base import Runtime
from host.settings import Settings
from host.store.groups import Brief
from host.store.outbox import Outbox, at_work
from host.store.sessions import Session
from schemas import ids
from schemas.runner_env import Provider, RunnerEnv
from schemas.times import from_text, to_text

if TYPE_CHECKING:  # the proxy's module (an HTTP client, asyncio) is imported when a runner starts, not by ncl commands
    from host.runtimes.proxy.server import CredentialProxy

log = logging.getLogger(__name__)
HEARTBEAT_STALE = timedelta(minutes=30)
START_BACKOFF_S = (0, 0, 10, 30, 120, 300, 900)  # wait before the next start after the 1st, 2nd, … failure
NOTICE_AFTER = 3
CLAIM_SILENT = timedelta(seconds=60)
NO_BRIEF = Brief()  # (a runner started with no group's rules, provider or model: the tests')


@dataclass(frozen=True)
class Runner:
    generation: str
    started_at: datetime
    folder: Path  # its session's


@dataclass(frozen=True, slots=True)
class Wake:
    """A due session waiting for a runner, and when its earliest due row became due (the order wakes are served)."""

    session: Session
    due_since: str


@dataclass
class Runners:
    """Runners this host process started (after a host restart it knows none, so their claims are released):
    at most NCL_MAX_RUNNERS at once, waiting wakes served in the order their work became due, the runner idle
    longest stopped to make room for one, failed starts backed off (DESIGN §8)."""

    runtime: Runtime
    settings: Settings
    proxy: CredentialProxy | None = None  # None: no model access for runners (one-off sweeps)
    live: dict[str, Runner] = field(default_factory=dict)
    waiting: dict[str, Wake] = field(default_factory=dict)
    idle_since: dict[str, datetime] = field(default_factory=dict)  # live runners with no claim and nothing due
    said_waiting: set[str] = field(default_factory=set)  # waiting wakes whose wait for a slot was logged
    failures: dict[str, int] = field(default_factory=dict)  # consecutive starts that never beat
    not_before: dict[str, datetime] = field(default_factory=dict)
    noticed: set[str] = field(default_factory=set)
    ahead: dict[str, str] = field(default_factory=dict)  # session -> the due time its runner was started ahead of
    retiring: set[str] = field(default_factory=set)  # live runners stopped for a slot, not gone yet: slots free

    def alive(self, session: Session, now: datetime) -> Runner | None:
        runner = self.live.get(session.id)
        if runner is None or self.runtime.is_running(session.id):
            return runner
        retired = session.id in self.retiring
        self._gone(session.id)
        if retired:  # stopped by the host, for a slot
            return None
        if heartbeat(session.folder, runner.generation) is None:  # gone before its first beat: a failed start
            self._failed(session.id, now, "exited before it started working")
        else:
            self.failures.pop(session.id, None)
            self.not_before.pop(session.id, None)
            self.noticed.discard(session.id)
        return None

    def _failed(self, session_id: str, now: datetime, why: str) -> None:
        failed = self.failures[session_id] = self.failures.get(session_id, 0) + 1
        self.not_before[session_id] = now + timedelta(seconds=START_BACKOFF_S[min(failed, len(START_BACKOFF_S)) - 1])
        alert = {"alert": "runner_start_failed"} if failed == NOTICE_AFTER else {}  # once a streak, as the notice
        log.warning("runner of %s %s (%d in a row)", session_id, why, failed,
                    extra={"action": "runner_start_failed", "session": session_id, "failures": failed, **alert})

    def want(self, session: Session, due_since: str) -> None:
        """A due session with no runner: queue its wake, ordered by ``due_since`` (when its work became due)."""
        self.waiting[session.id] = Wake(session, due_since)

    def drop(self, session_id: str) -> None:
        self.waiting.pop(session_id, None)
        self.said_waiting.discard(session_id)

    def seen(self, session_id: str, now: datetime, idle: bool) -> None:
        """What a visit saw of a live runner's session: idle (no claim, nothing due) since when, or busy."""
        if idle and session_id in self.live:  # (a runner the visit killed as stuck is no idle one)
            self.idle_since.setdefault(session_id, now)
        else:
            self.idle_since.pop(session_id, None)

    def queue(self) -> list[Wake]:
        """The waiting wakes in the order they are served: earliest due first, ties in the order they came."""
        return sorted(self.waiting.values(), key=lambda w: w.due_since)

    def start_waiting(self, now: datetime, briefs: Callable[[str], Brief]) -> int:
        """Start queued wakes in order while their back-off allows and there is room, or an idle runner to stop
        for it; how many started."""
        started = 0
        queue = self.queue()
        for n, wake in enumerate(queue):
            session = wake.session
            if session.id in self.live or now < self.not_before.get(session.id, now):
                continue
            taken = len(self.live) - len(self.retiring)
            if taken >= self.settings.max_runners and not self._free_slot(session.id, now):
                self._say_waiting(queue[n:])
                break
            waited = session.id in self.said_waiting
            self.drop(session.id)
            started += self._launch(session, now, briefs(session.agent_group_id), self._why(wake, now, waited))
        return started

    def _launch(self, session: Session, now: datetime, brief: Brief, why: str) -> bool:
        """``start``, its failure logged (a runtime that cannot start this one must not stop the others)."""
        try:
            self.start(session, now, brief, why)
        except NoModel as exc:
            log.warning("work due in %s left for a running host: %s", session.id, exc,
                        extra={"action": "runner_left_for_host", "session": session.id})
            return False
        except Exception as exc:
            self._failed(session.id, now, f"start failed: {exc}")
            return False
        return True

    def keep_only(self, active: set[str]) -> None:
        """Stop the runners of sessions no longer active (closed by an operator, or with their group) and drop their
        wakes: no sweep looks at them again, to find them gone or stuck."""
        for session_id in [sid for sid in self.live if sid not in active]:
            self.kill(session_id, "its session was closed")
        for session_id in [sid for sid in self.waiting if sid not in active]:
            self.drop(session_id)

    def room(self) -> int:
        """Free slots that may go to work not due yet: none while a wake waits."""
        return 0 if self.waiting else self.settings.max_runners - len(self.live) + len(self.retiring)

    def start_ahead(self, soon: list[tuple[str, Session]], now: datetime, briefs: Callable[[str], Brief]) -> int:
        """Runners for work due soon ((due time, session), soonest first), into free slots only and never ahead of
        a waiting wake: each is up, waiting on its own timer, when its work falls due (issue 14: the 9:00 burst
        answers on the second). How many started."""
        if not soon:
            return 0
        self.ahead = {sid: due for sid, due in self.ahead.items() if due > to_text(now)}  # forget the past ones
        started = 0
        for due, session in soon:
            if self.room() <= 0:
                break
            # Once per due time: a runner that exits before its work falls due is not started ahead again.
            if (session.id in self.live or now < self.not_before.get(session.id, now)
                    or self.ahead.get(session.id) == due):
                continue
            self.ahead[session.id] = due
            at = from_text(due).astimezone(self.settings.tz.zone)
            started += self._launch(session, now, briefs(session.agent_group_id),
                                    f"work due at {at:%H:%M:%S %Z}, started ahead")
        return started

    def _why(self, wake: Wake, now: datetime, waited: bool) -> str:
        due = from_text(wake.due_since)
        return (f"work due since {due.astimezone(self.settings.tz.zone):%H:%M:%S %Z} "
                f"({(now - due).total_seconds():.1f} s ago{', after waiting for a slot' if waited else ''})")

    def _say_waiting(self, wakes: list[Wake]) -> None:
        """Log, once per wait, each wake that waits for a slot because every runner is busy."""
        for wake in wakes:
            if wake.session.id not in self.said_waiting:
                self.said_waiting.add(wake.session.id)
                log.info("wake of %s waits for a slot (%d runners, all busy)", wake.session.id, len(self.live),
                         extra={"action": "runner_slot_wait", "session": wake.session.id})

    def owes_notice(self, session_id: str) -> bool:
        """Whether the session is owed a notice: its starts have failed NOTICE_AFTER times in a row, and none was
        given in this streak (the sweep adds it to ``noticed`` once it has committed one)."""
        return self.failures.get(session_id, 0) >= NOTICE_AFTER and session_id not in self.noticed

    def start(self, session: Session, now: datetime, brief: Brief = NO_BRIEF, why: str = "") -> Runner:
        """Start the session's runner; ``NoModel`` where it would need the model proxy this process has none of."""
        from host.runtimes.proxy.server import SOCKET_NAME  # see TYPE_CHECKING above

        provider = brief.provider or self.settings.provider
        if self.proxy is None and provider != "mock":
            raise NoModel(f"under provider {provider} a runner reaches the model only through the proxy of 'ncl host "
                          "run'")
        runner = Runner(f"gen-{ids.epoch_ms(now)}-{secrets.token_hex(3)}", now, session.folder)
        log.info("starting a runner for %s%s", session.id, f": {why}" if why else "",
                 extra={"action": "runner_starting", "session": session.id, "generation": runner.generation})
        # The proxy's socket is named relative to the session folder, where the runner resolves it.
        # A one-off sweep (no proxy) leaves its runners running: they must outlive it.
        env = runner_env(self.settings, session, runner.generation, brief.rules, SOCKET_NAME if self.proxy else None,
                         outlives_host=self.proxy is None, provider=brief.provider, model=brief.model)
        if self.proxy:
            self.proxy.open(session.folder, uid=self.runtime.uid)
        self.runtime.start(session, runner.generation, env)
        self.live[session.id] = runner
        return runner

    def state(self) -> dict[str, Any]:
        """The pool as ``ncl status`` shows it: each runner (idle since when, None: busy) and the wakes in order."""
        idle = {sid: to_text(since) for sid, since in self.idle_since.items()}
        return {"runners": [{"session_id": sid, "generation": r.generation, "started_at": to_text(r.started_at),
                             "idle_since": idle.get(sid)} for sid, r in self.live.items()],
                "waiting": [{"session_id": w.session.id, "due_since": w.due_since} for w in self.queue()]}

    def _free_slot(self, for_session: str, now: datetime) -> bool:
        """Stop the runner idle longest to make room for ``for_session``; False if every runner is busy. The sweep
        goes on at once: a runner the runtime is still stopping stays live (its session's visits leave its files to
        it) until ``alive`` finds it gone, and the runtime starts no other runner before then (``Runtime.retire``)."""
        idle = min((sid for sid in self.idle_since if sid not in self.retiring), key=self.idle_since.__getitem__,
                   default=None)
        if idle is None:
            return False
        log.info("stopping the runner of %s, idle for %.1f s, to free a slot for %s", idle,
                 (now - self.idle_since[idle]).total_seconds(), for_session,
                 extra={"action": "runner_slot_freed", "session": idle, "for_session": for_session})
        self.runtime.retire(idle)
        if self.runtime.is_running(idle):
            self.retiring.add(idle)
        else:
            self._gone(idle)
        return True

    def kill(self, session_id: str, why: str | None = None) -> None:
        """Stop the session's runner now; ``why`` is logged (``runner_killed``)."""
        if why is not None:
            runner = self.live.get(session_id)
            log.warning("killing the runner of %s: %s", session_id, why, extra={
                "action": "runner_killed", "session": session_id, "generation": runner and runner.generation})
        self.runtime.stop(session_id)
        self._gone(session_id)

    def stop_all(self) -> None:
        """The host stopping: every live runner stopped, its heartbeat removed. A one-off sweep run within the minute
        after took a turn such a runner left claimed for the work of one an earlier sweep started (``others_at_work``),
        and left it undone (operations review)."""
        for session_id, runner in list(self.live.items()):
            self.kill(session_id)
            confined.discard(runner.folder, ".heartbeat")

    def kill_if_stuck(self, session: Session, now: datetime, runner: Runner, found: Outbox) -> bool:
        """Kill the session's live ``runner`` if it is stuck (``stuck_reason``), given what a visit ``found`` in its
        outbound.db: its claims and the timeout of a tool it runs."""
        claims = [from_text(a.status_changed) for a in found.acks.values()
                  if a.status == "processing" and a.generation == runner.generation]
        reason = stuck_reason(now, runner, heartbeat(session.folder, runner.generation), claims, found.tool_timeout_s)
        if reason is None:
            return False
        self.kill(session.id, f"stuck, {reason}")
        return True

    def _gone(self, session_id: str) -> None:
        runner = self.live.pop(session_id, None)
        self.idle_since.pop(session_id, None)
        self.retiring.discard(session_id)
        if runner and self.proxy:
            self.proxy.close(runner.folder)


class NoModel(Exception):
    """A runner that would reach the model through the host's proxy, wanted where none runs (a one-off sweep: its
    runners would call the API with no key and die; their work is left due for a running host)."""


def runner_env(settings: Settings, session: Session, generation: str, rules: str,
               socket: str | None = None, outlives_host: bool = False, provider: Provider | None = None,
               model: str | None = None) -> dict[str, str]:
    """What every runner is told (``schemas.runner_env``): its settings, its group's ``provider`` and ``model`` if
    it names them, the ``socket`` to the model, and whether it outlives the process that starts it. No secret."""
    return RunnerEnv(tz=settings.tz.name, generation=generation, session_id=session.id,
                     agent_group_id=session.agent_group_id, rules=rules, idle_timeout_s=settings.idle_timeout_s,
                     poll_interval_s=settings.poll_interval_s, max_batch=settings.max_batch,
                     task_min_interval_s=settings.task_min_interval_s, misfire_grace_s=settings.misfire_grace_s,
                     provider=provider or settings.provider, model=model or settings.model,
                     log_level=settings.log_level,
                     anthropic_socket=socket,
                     outlives_host="1" if outlives_host else None).to_env()


def read_heartbeat(folder: Path) -> tuple[str, datetime] | None:
    """(generation, time) of ``.heartbeat``. The runner writes that file, so it may be anything: it is opened
    below the folder with no link followed in any component and without blocking on a FIFO, must be a regular
    file, and only 64 bytes are read from the checked descriptor."""
    try:
        fd = confined.open_beneath(folder, ".heartbeat")
    except (confined.Refused, OSError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        return os.read(fd, 64).decode(errors="replace").strip(), datetime.fromtimestamp(info.st_mtime, UTC)
    finally:
        os.close(fd)


def heartbeat(folder: Path, generation: str) -> datetime | None:
    """When this generation last beat: ``.heartbeat`` holds the generation that wrote it; another's is ignored."""
    found = read_heartbeat(folder)
    return found[1] if found and found[0] == generation else None


def stuck_reason(now: datetime, runner: Runner, beat: datetime | None, claims: list[datetime],
                 tool_timeout_s: float | None) -> str | None:
    """Why a live runner must be killed, or None. A running tool's declared timeout widens both limits."""
    widen = timedelta(seconds=tool_timeout_s or 0)
    last = beat or runner.started_at
    if now - last > max(HEARTBEAT_STALE, widen):
        return f"no heartbeat since {last.isoformat()}"
    for claimed in claims:
        if now - claimed > max(CLAIM_SILENT, widen) and last < claimed:
            return f"claim from {claimed.isoformat()} with no heartbeat since"
    return None


def others_at_work(session: Session) -> bool:
    """Whether a runner this process did not start is at work on a turn: it beat within ``CLAIM_SILENT`` (by the
    real clock) and holds a claim. One an earlier one-off sweep started: its claims are its own, not released as a
    dead runner's, and no second runner is started (which would stop it first): a cron's sweep every minute killed
    every turn longer than a minute, its task failed after five. (One done with its turn is visited as ever.)"""
    beat = read_heartbeat(session.folder)
    if beat is None or not timedelta(0) <= datetime.now(UTC) - beat[1] < CLAIM_SILENT:  # (a time to come: set)
        return False
    if not at_work(session.folder / "outbound.db", beat[0]):
        return False
    log.info("a runner an earlier sweep started is at work in session %s: left to it", session.id,
             extra={"action": "runner_of_another_sweep", "session": session.id})
    return True
