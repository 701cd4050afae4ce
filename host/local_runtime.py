"""The ``local`` runtime: each runner is a subprocess of the host (no isolation — said loudly at start)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from host.sessions import Session
from host.settings import Settings

log = logging.getLogger(__name__)


def runner_env(settings: Settings, session: Session, generation: str) -> dict[str, str]:
    """What every runner is told (DESIGN §12.12): its settings as NCL_* variables, and TZ."""
    return {
        "TZ": settings.tz.name,
        "NCL_RUNNER_GENERATION": generation,
        "NCL_SESSION_ID": session.id,
        "NCL_AGENT_GROUP_ID": session.agent_group_id,
        "NCL_IDLE_TIMEOUT_S": str(settings.idle_timeout_s),
        "NCL_POLL_INTERVAL_S": str(settings.poll_interval_s),
        "NCL_MAX_BATCH": str(settings.max_batch),
        "NCL_TASK_MIN_INTERVAL_S": str(settings.task_min_interval_s),
        "NCL_PROVIDER": settings.provider,
        "NCL_MODEL": settings.model,
    }


@dataclass
class LocalRuntime:
    settings: Settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, session: Session, generation: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **runner_env(self.settings, session, generation)}
        if self.settings.anthropic_api_key:
            env["ANTHROPIC_API_KEY"] = self.settings.anthropic_api_key
            env["ANTHROPIC_BASE_URL"] = self.settings.anthropic_base_url
        self.processes[session.id] = subprocess.Popen(
            [sys.executable, "-m", "agent_runner", "--session-dir", str(session.folder)],
            env=env, cwd=session.folder, stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("runner started for %s (local process %d)", session.id, self.processes[session.id].pid,
                 extra={"action": "runner_started", "session": session.id, "generation": generation})

    def is_running(self, session_id: str) -> bool:
        process = self.processes.get(session_id)
        if process is None:
            return False
        if process.poll() is None:
            return True
        del self.processes[session_id]
        return False

    def stop(self, session_id: str) -> None:
        process = self.processes.pop(session_id, None)
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
