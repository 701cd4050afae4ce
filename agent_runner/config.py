"""What a runner is told by the host: NCL_* variables and TZ (DESIGN §12.12), read once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from schemas import zone as zones


@dataclass(frozen=True)
class RunnerConfig:
    session_dir: Path
    generation: str
    tz: str
    idle_timeout_s: float = 1800.0
    poll_interval_s: float = 0.05
    max_batch: int = 20
    task_min_interval_s: float = 300.0
    provider: str = "mock"
    model: str = "claude-sonnet-5"
    group_dir: Path | None = None

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
        env = os.environ if environ is None else environ
        agent = session_dir / "agent"  # in a container the group folder is mounted here
        group_dir = Path(env["NCL_GROUP_DIR"]) if env.get("NCL_GROUP_DIR") else (agent if agent.is_dir() else None)
        return cls(
            session_dir=session_dir,
            generation=env.get("NCL_RUNNER_GENERATION", "gen-local"),
            tz=zones.resolve([("env", env.get("TZ"))]).name,
            idle_timeout_s=float(env.get("NCL_IDLE_TIMEOUT_S", 1800)),
            poll_interval_s=float(env.get("NCL_POLL_INTERVAL_S", 0.05)),
            max_batch=int(env.get("NCL_MAX_BATCH", 20)),
            task_min_interval_s=float(env.get("NCL_TASK_MIN_INTERVAL_S", 300)),
            provider=env.get("NCL_PROVIDER", "mock"),
            model=env.get("NCL_MODEL", "claude-sonnet-5"),
            group_dir=group_dir,
        )
