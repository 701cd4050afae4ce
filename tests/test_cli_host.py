"""``ncl host run`` and ``ncl host sweep`` as real processes (DESIGN §10, §12.8): one host per data directory,
a clean exit 0 on SIGTERM and SIGINT, and a task written by ``ncl`` while the host sleeps is woken at once.

Waiting on a process is done by blocking reads of its stderr (with a deadline) and ``wait(timeout=…)``."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SWEEP_KEYS = {"now", "sessions_checked", "woken", "applied", "cloned", "missed", "retried", "failed"}
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
        self.vars.update({"NCL_DATA_DIR": str(self.data_dir), "TZ": "UTC", "NCL_LOG_LEVEL": "INFO"})

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


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def start_host(env: Env) -> Iterator[Callable[..., Host]]:
    started: list[Host] = []

    def start(**extra_env: str) -> Host:
        host = Host(env, **extra_env)
        started.append(host)
        host.wait_for_action("host_started")
        return host

    yield start
    for host in started:
        host.kill()


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ncl: ") and "Traceback" not in done.stderr
    return lines[0]


def test_a_second_host_and_a_one_off_sweep_are_refused_while_a_host_runs(
        env: Env, start_host: Callable[..., Host]) -> None:
    host = start_host()
    assert (env.data_dir / "host.lock").read_text().strip() == str(host.proc.pid)

    second = env.ncl("host", "run")
    assert second.returncode == 1
    assert f"another host is running (pid {host.proc.pid})" in one_line(second)
    assert second.stdout == ""

    for args in (("--now", "2026-05-18T09:00:00"), ("--now", "2026-05-18T09:00:00", "--json")):
        swept = env.ncl("host", "sweep", "--once", *args)
        assert swept.returncode == 1
        assert f"another host is running (pid {host.proc.pid})" in one_line(swept)
        assert swept.stdout == ""

    assert host.proc.poll() is None  # the refused ones did not disturb it
    assert host.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_host_with_exit_0_and_frees_the_lock(
        env: Env, start_host: Callable[..., Host], sig: signal.Signals) -> None:
    host = start_host()
    assert host.stop(sig) == 0
    host.wait_for_action("host_stopped", timeout=10)
    assert not any("Traceback" in line for line in host.seen)

    swept = env.ncl("host", "sweep", "--once", "--now", "2026-05-18T09:00:00", "--json")
    assert swept.returncode == 0, swept.stderr
    data = json.loads(swept.stdout)
    assert set(data) >= SWEEP_KEYS
    assert data["now"] == "2026-05-18T09:00:00.000Z"

    again = start_host()  # and a new host may start
    assert again.stop(signal.SIGTERM) == 0


def test_a_task_added_while_the_host_sleeps_is_woken_without_waiting_for_the_sweep(
        env: Env, start_host: Callable[..., Host]) -> None:
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    # With an hour between sweeps, only the CLI's nudge can make the host look again within the deadline.
    host = start_host(NCL_SWEEP_INTERVAL_S="3600")
    item = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "post the standup", "--json"))
    assert item["status"] == "pending"
    host.wait_for_action("runner_started", session=session, timeout=20)
    assert host.stop(signal.SIGTERM) == 0
