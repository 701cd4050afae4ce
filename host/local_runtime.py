"""The ``local`` runtime: each runner is a subprocess of the host (no isolation — said loudly at start).

A runner's gate script and MCP servers run in sessions of their own, which a killpg of the runner's group does
not reach; in a container they would die with it. Here the runner lists them (``schemas.detached``) and they
are killed whenever a runner is found gone: stopped, exited, or left by a previous host before a new start.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from host import groups
from host.sessions import Session
from host.settings import Settings
from schemas import detached

log = logging.getLogger(__name__)


@dataclass
class LocalRuntime:
    settings: Settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)  # of the sessions in ``processes``

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        _kill_detached(session.id, session.folder)  # left by a runner that died with a previous host
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env,
               "NCL_GROUP_DIR": str(groups.folder(self.settings, session.agent_group_id))}
        self.processes[session.id] = subprocess.Popen(
            [sys.executable, "-m", "agent_runner", "--session-dir", str(session.folder)],
            env=env, cwd=session.folder, stdin=subprocess.DEVNULL, start_new_session=True)
        self.folders[session.id] = session.folder
        log.info("runner started for %s (local process %d)", session.id, self.processes[session.id].pid,
                 extra={"action": "runner_started", "session": session.id, "generation": generation})

    def is_running(self, session_id: str) -> bool:
        process = self.processes.get(session_id)
        if process is None:
            return False
        if process.poll() is None:
            return True
        del self.processes[session_id]
        self._gone(session_id)
        return False

    def stop(self, session_id: str) -> None:
        process = self.processes.pop(session_id, None)
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._gone(session_id)

    def _gone(self, session_id: str) -> None:
        folder = self.folders.pop(session_id, None)
        if folder is not None:
            _kill_detached(session_id, folder)


def _kill_detached(session_id: str, folder: Path) -> None:
    killed = detached.kill_all(folder)
    if killed:
        log.info("killed %d process group(s) a runner of %s left behind", killed, session_id,
                 extra={"action": "detached_killed", "session": session_id, "groups": killed})
