"""Gate scripts (DESIGN §6.8): a task's bash pre-check that decides whether the agent wakes at all.

The gate is the one place the runner runs arbitrary bash, so the hard limits live here and nowhere
else: one deadline that kills the whole process group, one output cap, one stripped environment.

Notes a caller may need:
- The output cap counts stdout and stderr together (a script must not be able to make us buffer
  without bound on either pipe). Crossing it is ``bad_output`` with reason "output over 1 MiB": the
  script produced something we refuse to read, which is a property of its output, not its exit.
- bash itself exports ``PWD``, ``SHLVL`` and ``_`` on top of the four variables we pass; nothing of
  the runner's own environment (API keys, proxy settings) is inherited.
- The end of the script, by exit or by timeout, kills everything it started: its process group, its
  tree (frozen, then killed: ``schemas.proctree.kill_tree``) and, in a runner (a subreaper), every stray
  re-parented to it, which is how a ``setsid cmd &`` or a double fork ends. After the exit we read the
  pipes for at most ``_DRAIN_S`` more, so nothing left holding them can hang the call either.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from schemas.proctree import OWN, kill_leader, subreaper_preexec

log = logging.getLogger(__name__)

GateOutcome = Literal["wake", "skip", "error", "timeout", "bad_output"]
AckOutcome = Literal["ran", "skipped", "gate_error"]

_TICK_S = 0.05  # how often we look for the script's exit while its pipes are still held open
_DRAIN_S = 1.0  # after the script exits: how long output already in the pipes may take to arrive
_STDERR_TAIL = 4096  # bytes of stderr kept; only the tail is useful in a reason
_REASON_TAIL = 300  # characters of that tail put into a reason (acks and logs stay one short line)


@dataclass(frozen=True)
class GateResult:
    outcome: GateOutcome
    data: Any = None  # the JSON "data" when outcome == "wake"
    reason: str | None = None  # why, for every outcome except wake

    @property
    def wake(self) -> bool:
        return self.outcome == "wake"

    @property
    def ack_outcome(self) -> AckOutcome:
        """The ``processing_ack.detail`` outcome (DESIGN §12.3) this gate result is recorded as."""
        if self.outcome == "wake":
            return "ran"
        return "skipped" if self.outcome == "skip" else "gate_error"


@dataclass
class _Capture:
    stdout: bytes
    stderr_tail: str
    timed_out: bool
    capped: bool


def run_gate(script: str, *, task_id: str, tz: str, home: str, path: str = "/usr/local/bin:/usr/bin:/bin",
             timeout_s: float = 30.0, max_output: int = 1 << 20, cwd: str | None = None,
             on_start: Callable[[int], None] | None = None) -> GateResult:
    """Run ``script`` with bash and judge its last stdout line; never raises for anything the script does.

    ``on_start`` gets bash's pid as soon as it runs (the runner lists it, so a host that kills the runner can
    kill the script's session too); it must not raise."""
    env = {"PATH": path, "HOME": home, "TZ": tz, "NCL_TASK_ID": task_id}
    try:
        # A new session makes the script's pid its process-group id, so one killpg reaches
        # everything it started, including `cmd &` children that still hold our pipes.
        # Started through OWN: the stray sweep at its end must not take the script itself for a stray.
        # A subreaper itself: what the script orphans stays below bash while it runs, so one kill_tree of bash
        # takes it, here at a timeout or from a later host (schemas.detached) if we die with ours.
        with OWN.spawn(lambda: subprocess.Popen(["bash", "-c", script], stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                                start_new_session=True, preexec_fn=subreaper_preexec),
                       lambda p: p.pid) as proc, OWN.owning(proc.pid):
            if on_start is not None:
                on_start(proc.pid)
            capture = _collect(proc, timeout_s, max_output)
            returncode = proc.returncode
    except (OSError, ValueError) as exc:  # ValueError: a NUL or lone surrogate the OS cannot take
        result = GateResult("error", reason=f"could not start bash: {exc}")
    else:
        result = _judge(capture, returncode, timeout_s, max_output)
    log.info("gate %s", result.outcome,
             extra={"action": "gate_run", "task": task_id, "outcome": result.outcome, "reason": result.reason})
    return result


def _collect(proc: subprocess.Popen[bytes], timeout_s: float, max_output: int) -> _Capture:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    total, timed_out, capped = 0, False, False
    deadline = time.monotonic() + timeout_s
    drain_until: float | None = None
    exit_fd = _open_pidfd(proc.pid)
    # With a pidfd the script's exit wakes select() itself; without one we look every tick.
    tick = None if exit_fd is not None else _TICK_S
    with selectors.DefaultSelector() as sel:
        for fd in [*buffers, *([exit_fd] if exit_fd is not None else [])]:
            sel.register(fd, selectors.EVENT_READ)
        try:
            while not capped:
                if drain_until is None and _has_exited(proc):
                    _kill_everything(proc)  # the script is done; whatever it left behind is not
                    drain_until = time.monotonic() + _DRAIN_S
                    if exit_fd is not None:
                        sel.unregister(exit_fd)  # stays readable from now on
                if drain_until is not None and not sel.get_map():
                    break
                remaining = (drain_until if drain_until is not None else deadline) - time.monotonic()
                if remaining <= 0:
                    timed_out = drain_until is None
                    break
                for key, _ in sel.select(remaining if tick is None else min(remaining, tick)):
                    if key.fd not in buffers:
                        continue  # the pidfd: the exit is handled at the top of the loop
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    total += len(chunk)
                    if total > max_output:
                        capped = True
                        break
                    buffers[key.fd] += chunk
                    del err[:-_STDERR_TAIL]
        finally:
            _kill_everything(proc)  # before wait(): an unreaped leader keeps its pid from being reused
            proc.wait()
            if exit_fd is not None:
                os.close(exit_fd)
    tail = " ".join(err.decode("utf-8", "replace").split())[-_REASON_TAIL:]
    return _Capture(bytes(out), tail, timed_out, capped)


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # not Linux >= 5.3, or a seccomp profile that refuses it: fall back to ticks


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    # WNOWAIT leaves the leader a zombie, so its pid (= the group id we kill) cannot be recycled
    # between noticing the exit and the killpg that follows.
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None  # pragma: no cover - platforms without waitid (macOS)


def _kill_everything(proc: subprocess.Popen[bytes]) -> None:
    kill_leader(proc.pid)  # bash, its tree (a setsid'd child too) and its group
    OWN.sweep()  # what bash or its children orphaned: re-parented to the runner, and killed here


def _judge(capture: _Capture, returncode: int, timeout_s: float, max_output: int) -> GateResult:
    def failed(outcome: GateOutcome, why: str) -> GateResult:
        return GateResult(outcome, reason=f"{why}; stderr: {capture.stderr_tail}" if capture.stderr_tail else why)

    if capture.timed_out:
        return failed("timeout", f"timed out after {timeout_s:g} s")
    if capture.capped:
        size = f"{max_output >> 20} MiB" if max_output % (1 << 20) == 0 else f"{max_output} bytes"
        return failed("bad_output", f"output over {size}")
    if returncode < 0:
        return failed("error", f"killed by signal {-returncode}")
    if returncode != 0:
        return failed("error", f"exit code {returncode}")
    lines = [line for line in capture.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return failed("bad_output", "no output")
    try:
        verdict = json.loads(lines[-1])
    except ValueError:
        return failed("bad_output", "last line is not JSON")
    if not isinstance(verdict, dict):
        return failed("bad_output", "last line is not a JSON object")
    wake = verdict.get("wakeAgent")
    if not isinstance(wake, bool):
        return failed("bad_output", "wakeAgent must be a boolean")
    if not wake:
        return GateResult("skip", reason="wakeAgent is false")
    return GateResult("wake", data=verdict.get("data"))
