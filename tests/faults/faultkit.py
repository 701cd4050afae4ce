"""Helpers of the fault-injection suite: killing real processes and waiting for them to die, fifo handshakes with
code that must block at a known point (a gate script, a tool), and a fake model that holds one chosen request.

Nothing here sleeps: a process's death is awaited on a pidfd, a fifo's message with select(), both with deadlines.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

from e2e_scenario import action_lines, wait_action_count
from kit import exits_within
from processes import Host


class ScenarioFailed(Exception):
    """A shared scenario (a module fixture) went wrong. Not an AssertionError, so the ``xfail(raises=
    AssertionError)`` tests that read its observations error out instead of passing as expected failures."""


@contextmanager
def scenario_step(what: str) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        raise ScenarioFailed(f"{what}: {exc}") from exc


@contextmanager
def short_root(prefix: str = "ncl-fault-") -> Iterator[Path]:
    """A short data root: a local runner reaches its session's proxy socket by path, which must fit AF_UNIX's
    107 bytes (pytest's tmp_path does not)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- processes ---


def runner_pids(host: Host, session_id: str, at_least: int = 0, timeout: float = 30) -> list[int]:
    """The local runners the host started for the session, in order (it logs each pid as it starts it); with
    ``at_least``, first block on the host's log until that many were started."""
    lines = wait_action_count(host, "runner_started", session_id, at_least, timeout) if at_least else \
        action_lines(host, "runner_started", session_id)
    found = [re.search(r"local process (\d+)", line) for line in lines]
    return [int(m.group(1)) for m in found if m]


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (a local runner: ``start_new_session``), and wait for its death."""
    os.killpg(pid, signal.SIGKILL)
    assert exits_within(pid, 10), f"process {pid} still alive 10 s after SIGKILL"


def kill_quietly(*pids: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- a fifo handshake: code that blocks at a known point tells the test, then waits to be released ---

# bash: make a private fifo and hold it open, announce "<pid> <fifo>" on the shared fifo (blocks until the test
# reads), then block until the test writes a line to the private fifo.
BASH_HOLD = """f=$(mktemp -u "{dir}/held.XXXXXX"); mkfifo "$f"; exec 3<>"$f"
echo "$$ $f" > "{announce}"; read -r _ <&3; rm -f "$f"
"""


class Handshake:
    """``announce`` is a fifo the held code writes "<pid> <private fifo>" to; ``wait`` reads one announcement,
    ``release`` lets that holder go on."""

    def __init__(self, announce: Path) -> None:
        self.announce = announce
        os.mkfifo(announce)
        self.holders: list[int] = []

    def wait(self, timeout: float) -> tuple[int, Path]:
        # Non-blocking open: a writer may come later. Until one has come, select() does not report the fifo.
        fd = os.open(self.announce, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + timeout
        try:
            data = b""
            while not data.endswith(b"\n"):
                readable, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
                assert readable, f"nothing announced on {self.announce} within {timeout} s"
                chunk = os.read(fd, 4096)
                assert chunk, f"a writer closed {self.announce} without a full line: {data!r}"
                data += chunk
        finally:
            os.close(fd)
        pid, fifo = data.decode().split()
        self.holders.append(int(pid))
        return int(pid), Path(fifo)

    @staticmethod
    def release(fifo: Path) -> None:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the holder keeps it open for reading: no wait here
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)


# --- a fake model that holds one request ---


# --- reading session files ---


def readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def answers(folder: Path) -> dict[str, list[str]]:
    """in_reply_to -> the texts of every chat row the runners wrote for it."""
    found: dict[str, list[str]] = {}
    with closing(readonly(folder / "outbound.db")) as conn:
        for row in conn.execute("SELECT in_reply_to, content FROM messages_out WHERE kind = 'chat' ORDER BY seq"):
            found.setdefault(row["in_reply_to"], []).append(json.loads(row["content"])["text"])
    return found


def inbound_rows(folder: Path, sql: str = "SELECT * FROM messages_in ORDER BY seq",
                 args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with closing(readonly(folder / "inbound.db")) as conn:
        return [dict(r) for r in conn.execute(sql, args)]


def claims(folder: Path) -> dict[str, str]:
    with closing(readonly(folder / "outbound.db")) as conn:
        return {r["message_id"]: r["status"] for r in conn.execute("SELECT message_id, status FROM processing_ack")}
