"""Running a fired ``host`` or ``container`` target to its end. Both block for as long as the command runs, so
the firer calls them on its worker threads, never on the host loop.

``host``: the operator's command line, already split into arguments (no shell), in a session of its own and made
a subreaper before it execs, so whatever it orphans (``setsid … &``, a double fork) stays in its tree while it
runs: a timeout or a host stop freezes and kills that whole tree. What it leaves when it ends is re-parented to
the host (a subreaper too) and killed by the host's stray sweep right then (``schemas.proctree``). stdout and
stderr go to a temporary file, so a chatty command never fills a pipe and the tail is read at the end.
``container``: the image and command in the Docker engine with no network, no capabilities, no new privileges,
a read-only root filesystem and the runners' resource limits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Literal

from host.project_tasks.specs import ContainerTarget, HostTarget
from schemas.proctree import OWN, kill_leader, subreaper_preexec

TAIL_BYTES = 4096
STOPPED = "host stopped during the run"
RunStatus = Literal["succeeded", "failed", "timeout"]


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    exit_code: int | None = None
    output_tail: str | None = None
    error: str | None = None


def _ended(code: int, tail: str, stop: Stop) -> Outcome:
    if stop.stopped:
        return Outcome("failed", code, tail, STOPPED)
    return Outcome("succeeded" if code == 0 else "failed", code, tail, None if code == 0 else f"exit code {code}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__


def tail_of(data: bytes) -> str:
    return data[-TAIL_BYTES:].decode("utf-8", errors="replace").rstrip()


class Stop:
    """Ends a run from another thread (the host is stopping); a stop before the run started ends it at start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kill: Callable[[], None] | None = None
        self.stopped = False

    def arm(self, kill: Callable[[], None]) -> None:
        with self._lock:
            self._kill = kill
            stopped = self.stopped
        if stopped:
            kill()

    def stop(self) -> None:
        with self._lock:
            self.stopped, kill = True, self._kill
        if kill is not None:
            kill()


def _read_tail(out: IO[bytes]) -> str:
    out.seek(max(0, out.seek(0, os.SEEK_END) - TAIL_BYTES))
    return tail_of(out.read())


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    # Only while the leader is unreaped: its pid is then still its own and cannot name anyone else.
    if proc.returncode is None:
        kill_leader(proc.pid)


def run_host(target: HostTarget, env: dict[str, str], stop: Stop) -> Outcome:
    with tempfile.TemporaryFile() as out:
        try:
            # preexec_fn despite the host's threads: it is one C call on a function resolved before the fork.
            proc = OWN.spawn(lambda: subprocess.Popen(
                target.command, cwd=target.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=subreaper_preexec), lambda p: p.pid)
        except OSError as exc:
            return Outcome("failed", error=f"cannot start {target.command[0]!r} in {target.cwd}: {_first_line(exc)}")
        stop.arm(lambda: _kill_tree(proc))
        try:
            code = proc.wait(timeout=target.timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            proc.wait()
            return Outcome("timeout", None, _read_tail(out),
                           f"killed after {target.timeout_seconds} s (timeout_seconds), with all it started")
        finally:
            OWN.forget(proc.pid)
            OWN.sweep()  # what it left when it ended (re-parented to the host) goes now
        return _ended(code, _read_tail(out), stop)


def container_kwargs(target: ContainerTarget, name: str, labels: dict[str, str], env: dict[str, str],
                     limits: dict[str, Any]) -> dict[str, Any]:
    """Everything ``containers.run`` is given (tests check the isolation settings on exactly this); ``limits``
    are the runners' own (``host.runtimes.docker.resource_limits``). No network, disabled as a runner's is: the
    engine then sets up no sandbox for it (0.1 s a start)."""
    return {"image": target.image, "command": target.command, "name": name, "labels": labels, "environment": env,
            "detach": True, "network_mode": "none", "network_disabled": True, "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"], "read_only": True, "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
            "init": True, **limits}


def run_container(client: Any, target: ContainerTarget, kwargs: dict[str, Any], stop: Stop) -> Outcome:
    from requests.exceptions import RequestException  # the docker SDK's transport; imported with it, on use

    try:
        container = client.containers.run(**kwargs)
    except Exception as exc:  # no engine, no image, a refused option: the run failed, the host goes on
        return Outcome("failed", error=f"cannot start the container: {_first_line(exc)}")
    stop.arm(lambda: _quietly(container.kill))
    try:
        try:
            code = int(container.wait(timeout=target.timeout_seconds)["StatusCode"])
        except RequestException:  # the wait's own timeout: the command is still running
            _quietly(container.kill)
            return Outcome("timeout", None, _logs(container),
                           f"killed after {target.timeout_seconds} s (timeout_seconds)")
        return _ended(code, _logs(container), stop)
    finally:
        _quietly(lambda: container.remove(force=True))


def _logs(container: Any) -> str:
    try:
        return tail_of(container.logs(stdout=True, stderr=True, tail=200))
    except Exception as exc:
        return f"(output unavailable: {_first_line(exc)})"


def _quietly(action: Callable[[], Any]) -> None:
    # Killing or removing a container that already went (or an engine that did) changes nothing worth a failure.
    with contextlib.suppress(Exception):
        action()
