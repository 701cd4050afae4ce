"""Real ``ncl`` processes for tests: a CLI runner and a running host whose log lines can be awaited.

Waiting on a process is done by blocking reads of its stderr (with a deadline) and ``wait(timeout=…)``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# The host under test, with one extra handler: each log record's `action` (and session) is appended to the
# usual "ncl: LEVEL: message" line, so the test waits on actions, not on message text.
HOST_PRELUDE = """
import logging
class ActionFormatter(logging.Formatter):
    def format(self, record):
        return (f"ncl: {record.levelname}: {record.getMessage()}"
                f" [action={getattr(record, 'action', '-')} session={getattr(record, 'session', '-')}]")
handler = logging.StreamHandler()
handler.setFormatter(ActionFormatter())
logging.getLogger().addHandler(handler)
from host.cli import main
main()
"""


def ncl_command() -> list[str]:
    script = Path(sys.executable).with_name("ncl")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from host.cli import main; main()"]


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.vars = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
        # Webhooks on any free loopback port (hosts never collide); runners as local processes whatever images
        # this machine has (tests/docker covers the docker runtime).
        self.vars.update({"NCL_DATA_DIR": str(self.data_dir), "TZ": "UTC", "NCL_LOG_LEVEL": "INFO",
                          "NCL_HTTP_PORT": "0", "NCL_RUNTIME": "local"})

    def ncl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ncl_command(), *args], cwd=self.root, env=self.vars, capture_output=True, text=True,
                              timeout=120, check=False)

    def ok(self, *args: str) -> str:
        done = self.ncl(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


class Host:
    """A running ``ncl host run``; a reader thread hands its stderr lines to the test as they come."""

    def __init__(self, env: Env, **extra_env: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOST_PRELUDE, "host", "run"], cwd=env.root,
                                     env={**env.vars, **extra_env}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        # Daemon: a runner started by the host inherits this pipe, so EOF may come later than the host's exit.
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:  # closed at EOF: the pipe is the pump's alone
            for line in self.proc.stderr:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Block on stderr until a line matches; fail with everything seen after ``timeout`` or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout} s; stderr so far: {self.seen}") from None
            if line is None:
                raise AssertionError(f"host stderr ended (exit {self.proc.poll()}); stderr: {self.seen}")
            self.seen.append(line)
            if wanted(line):
                return line

    def wait_for_action(self, action: str, timeout: float = 30.0, session: str | None = None) -> str:
        return self.wait_for(lambda line: f"[action={action} " in line
                             and (session is None or f" session={session}]" in line), timeout)

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


