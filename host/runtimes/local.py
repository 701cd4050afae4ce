"""The ``local`` runtime: each runner is a subprocess of the host (no isolation — said loudly at start).

Nothing a runner starts outlives it (``schemas.proctree`` has the whole design). The runner is a subreaper: what
its gate scripts and MCP servers orphan stays below it, the gate kills its own leftovers when it ends, and the
runner kills whatever is left when it ends. Here the host covers the rest:

- stopping a runner (stuck, or the host stopping) freezes and kills the runner's whole tree at once;
- a runner that died without cleaning up (SIGKILL, OOM) left orphans that were re-parented to the host, itself a
  subreaper under ``ncl host run``: they are strays, and the host's sweep kills them when it finds the runner gone;
- a runner that died with a previous host (SIGKILLed with it) could not do either: it listed its gate scripts
  and MCP servers in ``.children`` (``schemas.detached``), and those are killed before the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from host.files import confined
from host.settings import Settings
from host.store import groups
from host.store.sessions import Session
from schemas import detached
from schemas.proctree import OWN, kill_tree
from schemas.runner_env import VARIABLES

log = logging.getLogger(__name__)


@dataclass
class LocalRuntime:
    settings: Settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)  # of the sessions in ``processes``
    uid = None  # runners run as the host's own user

    def announce(self, reason: str) -> None:
        log.warning("runtime local: runners are host subprocesses with no isolation (%s)", reason,
                    extra={"action": "runtime_selected", "runtime": "local", "reason": reason})

    def prepare(self) -> None:
        """Nothing to clear now: what a previous host's runner left is killed before its session's next start."""

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        _kill_detached(session.id, session.folder)  # left by a runner that died with a previous host
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env,
               VARIABLES["group_dir"]: str(groups.folder(self.settings, session.agent_group_id))}
        self.processes[session.id] = OWN.spawn(lambda: subprocess.Popen(
            [sys.executable, "-m", "agent_runner", "--session-dir", str(session.folder)],
            env=env, cwd=session.folder, stdin=subprocess.DEVNULL, start_new_session=True), lambda p: p.pid)
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
        self._gone(session_id, process)
        return False

    def stop(self, session_id: str) -> None:
        process = self.processes.pop(session_id, None)
        if process and process.poll() is None:
            # The runner is alive, so everything it started is still below it: one frozen tree, killed at once.
            kill_tree([process.pid], spare=[process.pid])
            process.wait()
        self._gone(session_id, process)

    def close(self, stop_runners: bool) -> None:
        """Its runners are host processes: nothing is in flight, and without ``stop_runners`` they keep running."""
        if stop_runners:
            for session_id in list(self.processes):
                self.stop(session_id)

    def _gone(self, session_id: str, process: subprocess.Popen[bytes] | None) -> None:
        if process is not None:
            OWN.forget(process.pid)
        strays = OWN.sweep()
        if strays:
            log.info("killed %d process(es) a runner left behind", len(strays),
                     extra={"action": "strays_killed", "session": session_id, "processes": len(strays)})
        folder = self.folders.pop(session_id, None)
        if folder is not None:
            _kill_detached(session_id, folder)


def kill_detached(folder: Path) -> int:
    """Kill what the session's ``.children`` lists, then forget the list. The runner writes that file, so it is
    opened below the folder with no link followed in any component and read from the checked descriptor."""
    try:
        fd = confined.open_beneath(folder, detached.FILE)
    except (confined.Refused, OSError):
        data = b""  # missing, a link, a way out: nothing to read (a FIFO opens without blocking and is refused)
    else:
        try:
            data = detached.tail(fd)
        finally:
            os.close(fd)
    killed = detached.kill_listed(data)
    with contextlib.suppress(OSError, confined.Refused):  # a directory of that name stays: ignored all the same
        dirfd = confined.open_dir(folder)
        try:
            os.unlink(detached.FILE, dir_fd=dirfd)
        finally:
            os.close(dirfd)
    return killed


def _kill_detached(session_id: str, folder: Path) -> None:
    killed = kill_detached(folder)
    if killed:
        log.info("killed %d process group(s) a runner of %s left behind", killed, session_id,
                 extra={"action": "detached_killed", "session": session_id, "groups": killed})
