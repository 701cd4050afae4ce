"""The host's view of agent runners: the runtime that starts them, which generation is alive where, and
when a live one counts as stuck (DESIGN §6.7, §8)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from host.sessions import Session
from host.settings import Settings
from schemas import ids

HEARTBEAT_STALE = timedelta(minutes=30)
CLAIM_SILENT = timedelta(seconds=60)


class Runtime(Protocol):
    """Starts and stops runner processes; the docker and local runtimes implement it."""

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None: ...

    def is_running(self, session_id: str) -> bool: ...

    def stop(self, session_id: str) -> None: ...


@dataclass(frozen=True)
class Runner:
    generation: str
    started_at: datetime


@dataclass
class Runners:
    """Runners this host process started. After a host restart it knows none, so their claims are released."""

    runtime: Runtime
    settings: Settings
    live: dict[str, Runner] = field(default_factory=dict)

    def alive(self, session_id: str) -> Runner | None:
        runner = self.live.get(session_id)
        if runner and not self.runtime.is_running(session_id):
            del self.live[session_id]
            return None
        return runner

    def start(self, session: Session, now: datetime, rules: str = "") -> Runner:
        runner = Runner(f"gen-{ids.epoch_ms(now)}-{secrets.token_hex(3)}", now)
        self.runtime.start(session, runner.generation, runner_env(self.settings, session, runner.generation, rules))
        self.live[session.id] = runner
        return runner

    def kill(self, session_id: str) -> None:
        self.runtime.stop(session_id)
        self.live.pop(session_id, None)


def runner_env(settings: Settings, session: Session, generation: str, rules: str) -> dict[str, str]:
    """What every runner is told (DESIGN §12.12): its settings as NCL_* variables, and TZ. No secret."""
    return {
        "TZ": settings.tz.name,
        "NCL_RUNNER_GENERATION": generation,
        "NCL_SESSION_ID": session.id,
        "NCL_AGENT_GROUP_ID": session.agent_group_id,
        "NCL_RULES": rules,
        "NCL_IDLE_TIMEOUT_S": str(settings.idle_timeout_s),
        "NCL_POLL_INTERVAL_S": str(settings.poll_interval_s),
        "NCL_MAX_BATCH": str(settings.max_batch),
        "NCL_TASK_MIN_INTERVAL_S": str(settings.task_min_interval_s),
        "NCL_PROVIDER": settings.provider,
        "NCL_MODEL": settings.model,
        "NCL_LOG_LEVEL": settings.log_level,
    }


def heartbeat(folder: Path, generation: str) -> datetime | None:
    """When this generation last beat: ``.heartbeat`` holds the generation that wrote it; another's is ignored."""
    path = folder / ".heartbeat"
    try:
        if path.read_text().strip() != generation:
            return None
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


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
