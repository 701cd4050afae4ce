"""Processes a test can tell apart (issue 11, point 5): ``sleep MARKER`` with numbers of the test's own, found
through /proc wherever they were re-parented (a container's processes are visible here too), and a gate script
that leaves three kinds of daemons behind."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path


def new_markers() -> list[str]:
    """Three markers unique to one test; ``markers[0] + "1"`` is a fourth, for a holding sleep."""
    base = str(random.randrange(10**6, 10**7))
    return [f"3{base}{n}" for n in "123"]


def marked(*markers: str) -> list[int]:
    """Pids of live (not zombie) processes whose argv is ``sleep MARKER``."""
    wanted = {f"sleep\0{m}\0".encode() for m in markers}
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if cmdline in wanted and state != b"Z":
            found.append(int(name))
    return found


def kill_marked(*markers: str) -> None:
    """Cleanup for the tests' finally blocks: whatever the product failed to kill."""
    for pid in marked(*markers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gate_script(markers: list[str], hold: str | None = None) -> str:
    """Starts the issue's ``(setsid sleep … &)`` (a new session, orphaned at once), a ``setsid sleep`` child and a
    double-forked ``sh`` daemon, waits until all three run (so a skip verdict proves they were alive when the gate
    ended), then says skip or, with ``hold``, blocks."""
    one, two, three = markers
    wait = "for f in p1 p2 p3; do until [ -s $f ] && kill -0 \"$(cat $f)\" 2>/dev/null; do sleep 0.01; done; done"
    return "\n".join([
        f"(setsid sleep {one} & echo $! > p1)",
        f"setsid sleep {two} & echo $! > p2",
        f"sh -c 'sh -c \"sleep {three} & echo \\$! > p3\" &'",
        wait,
        f"sleep {hold}" if hold else "echo '{\"wakeAgent\": false}'",
    ])
