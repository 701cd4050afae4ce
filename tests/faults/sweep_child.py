"""A host's sweep in a child process that a test can SIGKILL at an exact SQL statement.

``python sweep_child.py`` (cwd and environment as for ``ncl``) takes ``data/host.lock`` like ``ncl host run`` and
keeps one ``Sweeper`` for its whole life (a host process: its idle-session cache survives between ticks). It
reads commands from stdin, one per line, and answers each with one JSON line on stdout:

    tick ISO        one sweep at that instant (no runner is started: the test plays the runners)
    tick ISO N      the same, but the process SIGKILLs itself when its N-th SQL statement begins

Its sweeps visit every session themselves, so the statements counted are all of a sweep's; with ``--workers`` they
hand them to worker processes as a host does (``host.scheduling.visitors``), whose statements are not counted: a kill
lands in the host's own, and the workers die with it wherever they are.

Every connection the host opens goes through ``host.store.db._raw``; wrapping it installs a ``sqlite3`` trace callback
that counts statements (BEGIN, COMMIT and PRAGMAs included), so "killed at statement N" is deterministic: the
same data and the same N kill at the same point, between any two statements of the sweep, inside or outside a
transaction. The statement it dies at is written to stderr first, for the test's diagnostics.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

from host import settings as settings_module
from host.files.lock import host_lock
from host.scheduling import visitors
from host.scheduling.sweep import Sweeper
from host.store import db
from schemas.times import from_text

_count = 0
_kill_at: int | None = None


def _trace(sql: str) -> None:
    global _count
    _count += 1
    if _kill_at is not None and _count >= _kill_at:
        sys.stderr.write(f"KILLED at statement {_count}: {' '.join(sql.split())[:200]}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


_raw = db._raw


def _traced(path: Path, readonly: bool, any_thread: bool = False, wait_s: float | None = None) -> sqlite3.Connection:
    conn = _raw(path, readonly, any_thread, wait_s)
    conn.set_trace_callback(_trace)
    return conn


def main() -> None:
    global _count, _kill_at
    db._raw = _traced  # type: ignore[assignment]
    if "--workers" in sys.argv:  # (whatever this machine's cores; 50 sessions: all in sight)
        visitors.WORKERS, visitors.FIRST_VISITS = max(2, visitors.WORKERS), visitors.MIN_VISITS
    else:
        visitors.MIN_VISITS = sys.maxsize
    settings = settings_module.load()
    with host_lock(settings.data_dir):
        sweeper = Sweeper(settings)
        print(json.dumps({"ready": os.getpid()}), flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            assert command == "tick", line
            _count, _kill_at = 0, int(args[1]) if len(args) > 1 else None
            result = sweeper.tick(from_text(args[0]))
            workers = sweeper._visitors is not None and sweeper._visitors.started
            print(json.dumps({**result.to_json(), "statements": _count, "workers": workers}), flush=True)
        sweeper.close()


if __name__ == "__main__":
    main()
