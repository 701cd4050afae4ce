"""Children a runner starts in sessions of their own, and how the local runtime kills them (DESIGN §8).

The gate script (so its timeout can kill its whole tree) and every MCP server (the mcp SDK's choice, not ours)
run in a new session. In a container they die with the container. Under the local runtime the subreapers of
``schemas.proctree`` catch them in every case but one: a host that was SIGKILLed takes its runners along
(PDEATHSIG), and their children go to pid 1, out of any sweep's reach. For that case the runner lists them in
``<session folder>/.children``, one "pid start_time" line each, and the next host kills what the file names
before it starts a runner there (and forgets the list). The host reads it as it reads every file of a session
folder: opened with no link followed in any component, checked on the open descriptor and read from it
(``host.runtimes.local.kill_detached``).

The start time (field 22 of /proc/PID/stat) tells a child from a later process that got its pid. Linux only:
where /proc is missing nothing is recorded and nothing killed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from schemas.proctree import OWN, children_of, kill_leader, start_time, stat_fields

__all__ = ["FILE", "children_of", "kill_listed", "note", "start_time", "tail"]
FILE = ".children"
_READ_CAP = 1 << 20  # the runner writes this file: the host reads at most its last MiB (the newest children)


def _leader_since(pid: int) -> int | None:
    """The start time of ``pid`` if it leads its own session (field 6, the session id, is its pid), else None."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields and fields[3] == str(pid) else None


def note(session_dir: Path, pids: Iterable[int]) -> None:
    """``pids`` are this runner's own children: spared by its stray sweeps (``schemas.proctree``), and appended to
    the session's list. Never raises: a child left unlisted only outlives a runner killed with its host."""
    pids = list(pids)
    OWN.adopt(pids)
    lines = "".join(f"{pid} {since}\n" for pid in pids if (since := start_time(pid)) is not None)
    if not lines:
        return
    with contextlib.suppress(OSError):
        # No following a link: the agent can write this folder, and must not make us append elsewhere.
        fd = os.open(session_dir / FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)


def tail(fd: int) -> bytes:
    """The list's tail from an open descriptor, or nothing if it is not a regular file (the host opens it, with
    no link followed: ``host.runtimes.local``; this package cannot reach ``host.files.confined``)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return b""
    start = max(0, info.st_size - _READ_CAP)
    data = os.pread(fd, _READ_CAP, start)
    return data.partition(b"\n")[2] if start else data  # a cut first line is not a line


def _listed(data: bytes) -> dict[int, int]:
    listed = {}
    for line in data.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts) and int(parts[0]) > 1:
            listed[int(parts[0])] = int(parts[1])
    return listed


def kill_listed(data: bytes) -> int:
    """SIGKILL the tree and process group of every child listed in ``data`` still alive as itself. Called by the local
    runtime only, when the runner is gone: a container's pids mean nothing out here. Only a session leader is
    killed (as both kinds of child are), so a runner that writes anything into its own folder cannot make the
    host kill an unrelated process that is not one."""
    ours = {os.getpgrp(), os.getsid(0)}  # never the caller's own group or session, whatever the file says
    killed = 0
    for pid, since in _listed(data).items():
        if pid in ours or _leader_since(pid) != since:
            continue  # gone, or its pid now belongs to someone else
        # Its whole tree: a gate script is a subreaper holding what it orphaned. If the leader is our child, a later
        # sweep reaps it.
        kill_leader(pid)
        killed += 1
    return killed
