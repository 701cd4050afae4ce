"""What a runner is told by the host (``schemas.runner_env``), read once at start, and where it runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from schemas.runner_env import DEFAULTS, RunnerEnv


@dataclass(frozen=True)
class RunnerConfig:
    session_dir: Path
    generation: str
    tz: str
    idle_timeout_s: float = DEFAULTS.idle_timeout_s
    poll_interval_s: float = DEFAULTS.poll_interval_s
    max_batch: int = DEFAULTS.max_batch
    task_min_interval_s: float = DEFAULTS.task_min_interval_s
    misfire_grace_s: float = DEFAULTS.misfire_grace_s
    provider: str = DEFAULTS.provider
    model: str = DEFAULTS.model
    group_dir: Path | None = None
    rules: str = DEFAULTS.rules
    log_level: str = DEFAULTS.log_level
    anthropic_socket: str | None = DEFAULTS.anthropic_socket
    session_id: str = DEFAULTS.session_id
    agent_group_id: str = DEFAULTS.agent_group_id
    outlives_host: str | None = DEFAULTS.outlives_host
    host_pid: str | None = DEFAULTS.host_pid

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def inbound(self) -> Path:
        return self.session_dir / "inbound.db"

    @property
    def outbound(self) -> Path:
        return self.session_dir / "outbound.db"

    @classmethod
    def from_env(cls, session_dir: Path, environ: Mapping[str, str] | None = None) -> RunnerConfig:
        told = RunnerEnv.from_env(os.environ if environ is None else environ)
        agent = session_dir / "agent"  # in a container the group folder is mounted here
        group_dir = Path(told.group_dir) if told.group_dir else (agent if agent.is_dir() else None)
        return cls(session_dir=session_dir, **{**told._asdict(), "group_dir": group_dir})

    def told(self, *only: str) -> dict[str, str]:
        """What this runner was told, as variables (``RunnerEnv.to_env``): all, or those of the fields named."""
        told = {name: getattr(self, name) for name in RunnerEnv._fields}
        return RunnerEnv(**{**told, "group_dir": None if self.group_dir is None else str(self.group_dir)}).to_env(*only)
