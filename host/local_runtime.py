"""The ``local`` runtime: each runner is a subprocess of the host (no isolation — said loudly at start)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from host import groups
from host.sessions import Session
from host.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LocalRuntime:
    settings: Settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env,
               "NCL_GROUP_DIR": str(groups.folder(self.settings, session.agent_group_id))}
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
