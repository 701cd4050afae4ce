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

from host.files import confined
from host.runtimes.base import Runtime
from host.runtimes.proxy.server import SOCKET_NAME, CredentialProxy
from host.settings import Settings
from host.store.sessions import Session
from schemas import ids
from schemas.runner_env import RunnerEnv

log = logging.getLogger(__name__)
HEARTBEAT_STALE = timedelta(minutes=30)
START_BACKOFF_S = (0, 0, 10, 30, 120, 300, 900)  # wait before the next start after the 1st, 2nd, … failure
NOTICE_AFTER = 3
CLAIM_SILENT = timedelta(seconds=60)


@dataclass(frozen=True)
class Runner:
    generation: str
    started_at: datetime


@dataclass
class Runners:
    """Runners this host process started (after a host restart it knows none, so their claims are released):
    at most NCL_MAX_RUNNERS at once, waiting wakes served in order, failed starts backed off (DESIGN §8)."""

    runtime: Runtime
    settings: Settings
    proxy: CredentialProxy | None = None  # None: no model access for runners (one-off sweeps)
    live: dict[str, Runner] = field(default_factory=dict)
    waiting: dict[str, Session] = field(default_factory=dict)  # insertion order = the order wakes came in
    failures: dict[str, int] = field(default_factory=dict)  # consecutive starts that never beat
    not_before: dict[str, datetime] = field(default_factory=dict)
    noticed: set[str] = field(default_factory=set)

    def alive(self, session: Session, now: datetime) -> Runner | None:
        runner = self.live.get(session.id)
        if runner is None or self.runtime.is_running(session.id):
            return runner
        del self.live[session.id]
        if self.proxy:
            self.proxy.close(session.folder)
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
        log.warning("runner of %s %s (%d in a row)", session_id, why, failed,
                    extra={"action": "runner_start_failed", "session": session_id, "failures": failed})

    def want(self, session: Session) -> None:
        """A due session with no runner: queue its wake."""
        self.waiting.setdefault(session.id, session)

    def drop(self, session_id: str) -> None:
        self.waiting.pop(session_id, None)

    def start_waiting(self, now: datetime, rules: Callable[[str], str]) -> int:
        """Start queued wakes oldest first while there is room and their back-off allows; how many started."""
        started = 0
        for session_id, session in list(self.waiting.items()):
            if len(self.live) >= self.settings.max_runners:
                break
            if session_id in self.live or now < self.not_before.get(session_id, now):
                continue
            del self.waiting[session_id]
            try:
                self.start(session, now, rules(session.agent_group_id))
            except Exception as exc:  # a runtime that cannot start this one must not stop the others
                self._failed(session_id, now, f"start failed: {exc}")
                continue
            started += 1
        return started

    def take_notice(self, session_id: str) -> bool:
        """True once per streak, when a session's starts have failed NOTICE_AFTER times in a row."""
        if self.failures.get(session_id, 0) < NOTICE_AFTER or session_id in self.noticed:
            return False
        self.noticed.add(session_id)
        return True

    def start(self, session: Session, now: datetime, rules: str = "") -> Runner:
        runner = Runner(f"gen-{ids.epoch_ms(now)}-{secrets.token_hex(3)}", now)
        # The proxy's socket is named relative to the session folder, where the runner resolves it.
        env = runner_env(self.settings, session, runner.generation, rules, SOCKET_NAME if self.proxy else None)
        if self.proxy:
            self.proxy.open(session.folder, uid=self.runtime.uid)
        self.runtime.start(session, runner.generation, env)
        self.live[session.id] = runner
        return runner

    def kill(self, session_id: str) -> None:
        self.runtime.stop(session_id)
        self.live.pop(session_id, None)


def runner_env(settings: Settings, session: Session, generation: str, rules: str,
               socket: str | None = None) -> dict[str, str]:
    """What every runner is told (``schemas.runner_env``): its settings, and the ``socket`` to the model. No secret."""
    return RunnerEnv(tz=settings.tz.name, generation=generation, session_id=session.id,
                     agent_group_id=session.agent_group_id, rules=rules, idle_timeout_s=settings.idle_timeout_s,
                     poll_interval_s=settings.poll_interval_s, max_batch=settings.max_batch,
                     task_min_interval_s=settings.task_min_interval_s, provider=settings.provider,
                     model=settings.model, log_level=settings.log_level, anthropic_socket=socket).to_env()


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
