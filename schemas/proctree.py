"""Process trees on Linux: nothing a gate script, an MCP server, a runner or a host task starts outlives it
(DESIGN §8, issue 11).

The design, in three rules:

- **Subreapers.** The host (``ncl host run``) and every runner make themselves child subreapers
  (``PR_SET_CHILD_SUBREAPER``), and every gate script and operator host task is made one before it execs
  (:func:`subreaper_preexec`). An orphan — the child of a ``setsid … &`` or of a double fork whose parent
  exited — is then re-parented to the nearest living subreaper above it instead of pid 1, so it stays findable
  by a ``/proc`` walk of ppids, below its owner while the owner runs and below the owner's owner after.
- **Killing a live owner kills its tree.** :func:`kill_tree` freezes the owner and every descendant with SIGSTOP,
  rescans until no new process appears (a frozen process cannot fork, so a daemon forking while we kill cannot
  escape), then SIGKILLs them all and reaps what was re-parented to us.
- **When an owner ends, strays die.** A *stray* is a child of this process that sits in another session and that
  this process did not start through :data:`OWN` (or did not declare with :meth:`Brood.adopt`): it can only be an
  orphan re-parented to us. :meth:`Brood.sweep` kills every stray with its tree when an owner ends. A library's
  plain subprocess stays in our session and is never touched; our own children are reaped only by their
  ``Popen``: we reap only pids we killed that were re-parented to us, so no caller's exit status is stolen.

Who kills what: a gate's end kills its tree and the runner's strays (``agent_runner.gate``); an MCP server's
orphans are the runner's strays, killed at the next gate's end or the runner's end at the latest; a runner's
end kills everything it still has (``agent_runner.__main__``); a stopped runner's tree is killed whole and a
runner found dead leaves strays the host sweeps (``host.runtimes.local``); a host task's timeout kills its tree,
its end sweeps the host's strays (``host.project_tasks.targets``). In a container the runner, below docker-init
(which reaps), is the subreaper. Only a host that was SIGKILLed escapes all this: ``schemas.detached`` covers it.

A process that is not a subreaper never sweeps: its orphans went to someone else. Where /proc is missing (not
Linux) nothing is found and nothing killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
_PROC = Path("/proc")
_FREEZE_ROUNDS = 1000  # rescans at most; each round freezes at least one new process, so a pids limit ends it
_REAP_WAIT_S = 5.0  # how long SIGKILLed processes get to exit before we stop waiting for them
T = TypeVar("T")


def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved once: a forked child (preexec) must not load libraries


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where the OS cannot."""
    return _PRCTL is not None and _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@contextlib.contextmanager
def subreaping() -> Iterator[None]:
    """A subreaper for the block only (a one-off ``ncl host sweep``, which may run in-process under a test)."""
    was = is_subreaper()
    become_subreaper()
    try:
        yield
    finally:
        if not was and _PRCTL is not None:
            _PRCTL(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def is_subreaper() -> bool:
    if _PRCTL is None:
        return False
    flag = ctypes.c_int(0)
    return _PRCTL(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on. The command name, field 2, may hold spaces and parentheses of
    its own, so the split starts after the last ')'."""
    try:  # os-level calls on a str path: through pathlib a /proc scan took 5x as long (issue 14: a host stopping
        # and starting runners for a burst scans /proc three times a runner, in the sweep)
        fd = os.open(f"{_PROC}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 4096).decode(errors="replace")  # about 300 bytes: the name in it is 15 at most
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = text.rpartition(")")[2].split()
    return fields if len(fields) >= 20 else None


def start_time(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def _table() -> dict[int, tuple[int, int]]:
    """pid → (ppid, session id) of every process we can see."""
    try:
        names = os.listdir(_PROC)
    except OSError:
        return {}
    table = {}
    for name in names:
        if name.isdigit() and (fields := stat_fields(int(name))):
            table[int(name)] = (int(fields[1]), int(fields[3]))
    return table


def children_of(pid: int) -> list[int]:
    return sorted(child for child, (ppid, _) in _table().items() if ppid == pid)


def _tree(roots: set[int]) -> set[int]:
    """``roots`` still alive, and all their descendants (one /proc scan)."""
    table = _table()
    below: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        below.setdefault(ppid, []).append(pid)
    found, todo = set(), [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(below.get(pid, ()))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_tree(roots: Iterable[int], spare: Iterable[int] = (),
              more: Callable[[], Iterable[int]] = tuple) -> set[int]:
    """SIGKILL ``roots`` and every descendant, frozen first so none can fork away; then reap those of them that
    were re-parented to us, except ``spare`` (children whose ``Popen`` will wait for them). The pids killed.

    ``more`` names further roots, asked again at every round: a daemon that forks and exits at once hands its child
    to us (the subreaper) between two scans, outside the tree being frozen; asking for our strays each round finds
    it, and the rounds end only when one finds nothing new (what is frozen cannot fork)."""
    frozen: set[int] = set()
    wanted = set(roots) - {os.getpid()}
    for _ in range(_FREEZE_ROUNDS):
        new = _tree(wanted | frozen | set(more())) - frozen - {os.getpid()}
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    _reap(frozen, set(spare))
    return frozen


def kill_leader(pid: int) -> None:
    """SIGKILL a session leader (a child started with ``start_new_session``), its tree and its process group. The
    caller has not reaped it, so ``pid`` still names it; it is not reaped here either: its exit status is for
    whoever waits for it. The tree first: killing the leader first would orphan what is below it out of reach."""
    kill_tree([pid], spare=[pid])
    # An empty group is fine: ESRCH, or EPERM on macOS when only zombies remain.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _reap(pids: set[int], spare: set[int]) -> None:
    """Wait (bounded, on pidfds) until all the killed have exited, so what they held was re-parented, then
    collect those that are now our zombies, except ``spare``."""
    fds = []
    for pid in pids:
        with contextlib.suppress(OSError, AttributeError):
            fds.append(os.pidfd_open(pid))
    deadline = time.monotonic() + _REAP_WAIT_S
    poller = select.poll()  # not select(): the host may hold descriptors above FD_SETSIZE
    for fd in fds:
        poller.register(fd, select.POLLIN)
    try:
        pending = len(fds)
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending -= 1
    finally:
        for fd in fds:
            os.close(fd)
    me = os.getpid()
    for pid in pids - spare:
        fields = stat_fields(pid)
        if fields and int(fields[1]) == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


class Brood:
    """The children this process started in sessions of their own; every other such child is a stray."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._own: set[int] = set()

    def spawn(self, start: Callable[[], T], pid_of: Callable[[T], int]) -> T:
        """Start a child and record it as ours, atomically with respect to :meth:`sweep` in other threads
        (between fork and the record, a sweep would take the new child for a stray)."""
        with self._lock:
            child = start()
            self._own.add(pid_of(child))
            return child

    def adopt(self, pids: Iterable[int]) -> None:
        """Declare children started elsewhere (the MCP SDK's servers) as ours."""
        with self._lock:
            self._own.update(pids)

    def forget(self, pid: int) -> None:
        with self._lock:
            self._own.discard(pid)

    @contextlib.contextmanager
    def owning(self, pid: int) -> Iterator[None]:
        try:
            yield
        finally:
            self.forget(pid)

    def strays(self) -> list[int]:
        me = os.getpid()
        ours = os.getsid(0)
        with self._lock:
            return sorted(pid for pid, (ppid, sid) in _table().items()
                          if ppid == me and sid != ours and pid not in self._own)

    def sweep(self, everything: bool = False) -> set[int]:
        """Kill every stray with its tree (with ``everything``, every child in another session: at our own end).
        Does nothing unless this process is a subreaper: otherwise orphans never come here."""
        if not is_subreaper():
            return set()
        with self._lock:
            spare = set(self._own)

        def roots() -> list[int]:
            if not everything:
                return self.strays()
            me, ours = os.getpid(), os.getsid(0)
            return [pid for pid, (ppid, sid) in _table().items() if ppid == me and sid != ours]

        first = roots()
        return kill_tree(first, spare=spare, more=roots) if first else set()


OWN = Brood()  # this process's children: one per process, like the children themselves


def subreaper_preexec() -> None:
    """A ``Popen`` ``preexec_fn``: the child becomes a subreaper before it execs (the flag survives execve), so
    what it orphans stays in its tree while it lives. Only a C call, on a function resolved before the fork."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
