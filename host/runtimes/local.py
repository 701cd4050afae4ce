"""The ``local`` runtime: each runner is a subprocess of the host (no isolation — said loudly at start).

Nothing a runner starts outlives it (``schemas.proctree`` has the whole design). The runner is a subreaper: what
its gate scripts and MCP servers orphan stays below it, the gate kills its own leftovers when it ends, and the
runner kills whatever is left when it ends. Here the host covers the rest:

- stopping a runner (stuck, or the host stopping) freezes and kills the runner's whole tree at once;
- a runner that died without cleaning up (SIGKILL, OOM) left orphans that were re-parented to the host, itself a
  subreaper under ``ncl host run``: they are strays, and the host's sweep kills them when it finds the runner gone;
- a runner that died with a previous host (SIGKILLed with it) could not do either: it listed its gate scripts
  and MCP servers in ``.children`` (``schemas.detached``), and those are killed before the next start;
- a runner a one-off ``ncl host sweep`` started outlives it, to its idle timeout at most: the sweep lists it in
  ``runners.left`` of the data dir, and the next ``ncl host run`` stops what that file names as it starts. Each
  runner is also listed in its session's ``.children``, so the next start of that session (by another one-off
  sweep too) stops it first: never two runners on one session.

A runner's stdout and stderr go to ``runner.log`` in its session folder, never to the caller's terminal or pipes
(``ncl host sweep --once | jq`` ends with the sweep). The runner can write that folder, so the log is opened with
no link followed and only if it is a regular file; one grown past ``LOG_CAP`` is cut to its newest half when the
runner starts and whenever the host checks on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
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
LOG = "runner.log"
LOG_CAP = 4 << 20  # bytes of a runner's output kept in its log
LEFT = "runners.left"  # in the data dir: the runners a one-off sweep left running


@dataclass
class LocalRuntime:
    settings: Settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)  # of the sessions in ``processes``
    logs: dict[str, int] = field(default_factory=dict)  # descriptors of their logs, kept under LOG_CAP
    uid = None  # runners run as the host's own user

    def announce(self, reason: str) -> None:
        log.warning("runtime local: runners are host subprocesses with no isolation (%s)", reason,
                    extra={"action": "runtime_selected", "runtime": "local", "reason": reason})

    def prepare(self) -> None:
        """Stop the runners one-off sweeps left; what a previous host's runner left is killed before its session's
        next start."""
        if stopped := kill_detached(self.settings.data_dir.resolve(), LEFT):
            log.warning("stopped %d runner(s) a one-off sweep left running", stopped,
                        extra={"action": "leftover_runners_stopped", "runners": stopped})

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        _kill_detached(session.id, session.folder)  # left by a runner that died with a previous host
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env,
               VARIABLES["group_dir"]: str(groups.folder(self.settings, session.agent_group_id)),
               VARIABLES["host_pid"]: str(os.getpid())}
        output = open_log(session.folder)
        try:
            process = self.processes[session.id] = OWN.spawn(lambda: subprocess.Popen(
                [sys.executable, "-m", "agent_runner", "--session-dir", str(session.folder)],
                env=env, cwd=session.folder, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                start_new_session=True), lambda p: p.pid)
        except BaseException:
            os.close(output)
            raise
        self.folders[session.id], self.logs[session.id] = session.folder, output
        _note(session.folder, detached.FILE, process.pid)
        log.info("runner started for %s (local process %d)", session.id, self.processes[session.id].pid,
                 extra={"action": "runner_started", "session": session.id, "generation": generation})

    def is_running(self, session_id: str) -> bool:
        process = self.processes.get(session_id)
        if process is None:
            return False
        if process.poll() is None:
            trim(self.logs[session_id])
            return True
        del self.processes[session_id]
        code = process.returncode
        log.log(logging.WARNING if code else logging.INFO, "runner of %s exited with code %d", session_id, code,
                extra={"action": "runner_exited", "session": session_id, "exit_code": code})
        self._gone(session_id, process)
        return False

    def stop(self, session_id: str) -> None:
        process = self.processes.pop(session_id, None)
        if process and process.poll() is None:
            # The runner is alive, so everything it started is still below it: one frozen tree, killed at once.
            kill_tree([process.pid], spare=[process.pid])
            process.wait()
            log.info("runner of %s stopped", session_id, extra={"action": "runner_stopped", "session": session_id})
        self._gone(session_id, process)

    def retire(self, session_id: str) -> None:
        self.stop(session_id)  # a runner's process tree is killed in milliseconds: done at once

    def close(self, stop_runners: bool) -> None:
        """Its runners are host processes: nothing is in flight, and without ``stop_runners`` they keep running
        (listed for the next host to stop)."""
        for session_id, process in list(self.processes.items()):
            if stop_runners:
                self.stop(session_id)
            elif process.poll() is None:
                _note(self.settings.data_dir.resolve(), LEFT, process.pid)  # the operator may link it
        for output in self.logs.values():
            os.close(output)  # a runner left running writes its own copy
        self.logs.clear()

    def _gone(self, session_id: str, process: subprocess.Popen[bytes] | None) -> None:
        if process is not None:
            OWN.forget(process.pid)
        strays = OWN.sweep()
        if strays:
            log.info("killed %d process(es) a runner left behind", len(strays),
                     extra={"action": "strays_killed", "session": session_id, "processes": len(strays)})
        if (output := self.logs.pop(session_id, None)) is not None:
            os.close(output)
        folder = self.folders.pop(session_id, None)
        if folder is not None:
            _kill_detached(session_id, folder)


def open_log(folder: Path) -> int:
    """``runner.log`` of the session ``folder``, open for appending (cut to size), or /dev/null, with a warning, if
    the runner put something other than a regular file there."""
    try:
        fd = confined.open_beneath(folder, LOG, os.O_RDWR | os.O_APPEND | os.O_CREAT)  # read too: to be cut
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise confined.Refused(LOG, "not a regular file")
    except (confined.Refused, OSError) as exc:
        log.warning("runner output of %s goes nowhere: %s", folder.name, exc,
                    extra={"action": "runner_log_refused", "session": folder.name})
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    trim(fd)
    return fd


def trim(fd: int) -> None:
    """Cut a log grown past ``LOG_CAP`` to its newest half; the runner appends, so it goes on at the new end."""
    size = os.fstat(fd).st_size
    if size > LOG_CAP:
        tail = os.pread(fd, LOG_CAP // 2, size - LOG_CAP // 2)
        os.ftruncate(fd, 0)
        os.write(fd, tail)


def _note(folder: Path, name: str, pid: int) -> None:
    """Append the runner ``pid`` to the list ``folder/name`` as a runner lists its own children (a session leader
    and its start time, so a later process with its pid is spared), for ``kill_detached`` to stop."""
    if (since := detached.start_time(pid)) is None:
        return
    with contextlib.suppress(confined.Refused, OSError):
        fd = confined.open_beneath(folder, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{pid} {since}\n".encode())
        finally:
            os.close(fd)


def kill_detached(folder: Path, name: str = detached.FILE) -> int:
    """Kill what the session's ``.children`` (or another list ``name``) names, then forget the list. The runner
    writes that file, so it is opened below the folder with no link followed in any component and read from the
    checked descriptor."""
    try:
        fd = confined.open_beneath(folder, name)
    except (confined.Refused, OSError):
        data = b""  # missing, a link, a way out: nothing to read (a FIFO opens without blocking and is refused)
    else:
        try:
            data = detached.tail(fd)
        finally:
            os.close(fd)
    killed = detached.kill_listed(data)
    confined.discard(folder, name)  # (a directory of that name stays: ignored all the same)
    return killed


def _kill_detached(session_id: str, folder: Path) -> None:
    killed = kill_detached(folder)
    if killed:
        log.info("killed %d process group(s) a runner of %s left behind (or the runner itself)", killed, session_id,
                 extra={"action": "detached_killed", "session": session_id, "groups": killed})
