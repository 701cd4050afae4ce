"""Issue 11 point 2: does one hostile session stall the host? A real ``ncl host run`` (local runtime, mock
provider); while one session's runner floods 20,000 ``schedule_task`` requests into its outbound.db and another
session holds a recurring task whose slot is in year 1 (``*/5 * * * *``, once as a request and once as a stored
row), two probes measure how long the host takes to answer: a webhook POST, and an ``ncl chat`` send over the CLI
socket (the host's answer to the send). Prints JSON: p50/p99/max of both, how long the flood took to drain, and
what the flood left behind (tasks stored, notices).

    .venv/bin/python scripts/bench_flood.py [--requests 20000] [--limit-s 300]

Runs against whatever ``host`` package is importable from the current directory, so the same script measures an
older checkout too (``git worktree add /tmp/before <commit>``, then run it from there with PYTHONPATH=.).
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from bench_host import HostProcess
from bench_kit import log, percentile, settings_for, wait_until, webhook_ms, workdir

from host.channels import nudge
from host.settings import Settings
from host.store import db, groups, sessions
from schemas import clock, ids
from schemas.times import to_text

YEAR_ONE = "0001-01-03T00:00:00.000Z"


def _outbound_requests(folder: Path, contents: list[dict[str, Any]], chunk: int = 100) -> None:
    """System rows as a runner writes them (odd seq, kind 'system'), ``chunk`` rows a transaction: a runner writes
    one row per tool call, and one transaction of 20,000 rows would hold the file's lock for a long commit."""
    now = clock.now()
    with closing(sqlite3.connect(folder / "outbound.db", timeout=30)) as conn:
        for start in range(0, len(contents), chunk):
            with conn:
                (top,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM messages_out").fetchone()
                rows = [(ids.new_id("msg", now), top + 2 * (n + 1), to_text(now), json.dumps(c))
                        for n, c in enumerate(contents[start:start + chunk])]
                conn.executemany("INSERT INTO messages_out(id, seq, timestamp, kind, content)"
                                 " VALUES (?, ?, ?, 'system', ?)", rows)


def _stored_year_one(folder: Path) -> None:
    """A recurring row already in the inbox with its slot in year 1 (an install from before the input checks)."""
    now = clock.now()
    task_id = ids.new_id("task", now)
    content = json.dumps({"prompt": "every five minutes since year 1", "script": None, "context_mode": "group"})
    with closing(sqlite3.connect(folder / "inbound.db", timeout=30)) as conn, conn:
        (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages_in").fetchone()
        conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, status, process_after, recurrence, series_id,"
                     " tries, trigger, on_wake, content) VALUES (?, ?, 'task', ?, 'pending', ?, '*/5 * * * *', ?, 0,"
                     " 1, 0, ?)", (task_id, (top // 2 + 1) * 2, to_text(now), YEAR_ONE, task_id, content))


def _applied(folder: Path) -> tuple[int, int, int]:
    """(requests handled, tasks stored, notices) in a session's inbox."""
    with closing(sqlite3.connect(f"{(folder / 'inbound.db').as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        handled = conn.execute("SELECT COUNT(*) FROM delivered WHERE message_out_id LIKE 'msg-%'").fetchone()[0]
        stored = conn.execute("SELECT COUNT(DISTINCT series_id) FROM messages_in WHERE kind = 'task'").fetchone()[0]
        notices = conn.execute("SELECT COUNT(*) FROM messages_in WHERE kind = 'chat' AND trigger = 0").fetchone()[0]
    return int(handled), int(stored), int(notices)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _chat_ms(settings: Settings, group: str = "probe") -> float:
    """What ``ncl chat`` does up to the host's answer: connect to the CLI socket, send one line, read the answer."""
    started = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(600)
        sock.connect(str(settings.data_dir / "cli.sock"))
        sock.sendall(json.dumps({"op": "send", "group": group, "text": "ping", "thread": None}).encode() + b"\n")
        answer = sock.makefile("rb").readline()
    if not json.loads(answer).get("ok"):
        raise RuntimeError(f"chat probe refused: {answer!r}")
    return (time.perf_counter() - started) * 1000


class Probe(threading.Thread):
    def __init__(self, measure: Any, every_s: float) -> None:
        super().__init__(daemon=True)
        self.measure, self.every_s, self.samples, self.stop = measure, every_s, list[float](), threading.Event()
        self.at = list[float]()

    def run(self) -> None:
        while not self.stop.is_set():
            at = time.monotonic()
            self.samples.append(self.measure())
            self.at.append(at)
            self.stop.wait(self.every_s)


def _stats(samples: list[float]) -> dict[str, Any]:
    return {"n": len(samples), "p50_ms": round(percentile(samples, 0.5), 1),
            "p99_ms": round(percentile(samples, 0.99), 1), "max_ms": round(max(samples), 1)} if samples else {}


def _flood(flood: Path, old: Path, requests: int) -> None:
    far = "2099-01-01T00:00:00.000Z"
    _outbound_requests(flood, [{"action": "schedule_task", "taskId": ids.new_id("task", clock.now()),
                                "prompt": f"flood {n}", "processAfter": far} for n in range(requests)])
    _outbound_requests(old, [{"action": "schedule_task", "taskId": ids.new_id("task", clock.now()),
                              "prompt": "every five minutes since year 1", "processAfter": YEAR_ONE,
                              "recurrence": "*/5 * * * *"}])
    _stored_year_one(old)


def bench(requests: int, limit_s: float, written_before: bool = False) -> dict[str, Any]:
    log(f"host code: {Path(db.__file__).parent}; {requests} schedule_task requests and a year-1 '*/5' recurrence,"
        f" written {'before the host started' if written_before else 'while it runs'}")
    with workdir("ncl-bench-flood-") as root:
        settings = settings_for(root)
        with closing(db.connect(settings.central_db, "central")) as central:
            flood_group, _ = groups.create(central, settings, clock.now(), "flood", ["queue:flood"])
            old_group, _ = groups.create(central, settings, clock.now(), "old", ["queue:old"])
            groups.create(central, settings, clock.now(), "probe", ["cli"])
            flood = sessions.create(central, settings, clock.now(), flood_group, None).folder
            old = sessions.create(central, settings, clock.now(), old_group, None).folder
        if written_before:  # the runners wrote it all while the host was down: no writer competes with the sweep
            _flood(flood, old, requests)
        port = _free_port()
        host = HostProcess(root, NCL_LOG_LEVEL="WARNING", NCL_IDLE_TIMEOUT_S="600", NCL_HTTP_PORT=str(port))
        try:
            wait_until(lambda: host.alive() and (settings.data_dir / "cli.sock").exists(), 30, "cli socket")
            wait_until(lambda: _listening(port), 30, "webhooks listening")
            probes = [Probe(lambda: webhook_ms(port, 600), 0.02), Probe(lambda: _chat_ms(settings), 0.05)]
            for probe in probes:
                probe.start()
            time.sleep(1.0)  # a baseline before the attack
            started = time.monotonic()
            if not written_before:
                _flood(flood, old, requests)
            nudge.touch(settings)
            drained = None
            while time.monotonic() - started < limit_s:
                host.alive()
                if _applied(flood)[0] >= requests and _applied(old)[0] >= 1:
                    drained = time.monotonic() - started
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # and a little after
            for probe in probes:
                probe.stop.set()
            for probe in probes:
                probe.join(700)
            handled, stored, notices = _applied(flood)
            for probe in probes:
                slow = sorted(zip(probe.samples, probe.at, strict=True), reverse=True)[:3]
                log("slowest: " + ", ".join(f"{ms:.0f} ms at {at - started:+.2f} s" for ms, at in slow))
        finally:
            host.stop()
    return {"requests": requests, "written": "before" if written_before else "during",
            "drained_s": None if drained is None else round(drained, 1),
            "flood_handled": handled, "flood_tasks_stored": stored, "flood_notices": notices,
            "webhook": _stats(probes[0].samples), "chat": _stats(probes[1].samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--limit-s", type=float, default=300.0)
    parser.add_argument("--written-before", action="store_true",
                        help="write the flood before the host starts (no runner writing while the host reads)")
    args = parser.parse_args()
    print(json.dumps(bench(args.requests, args.limit_s, args.written_before), indent=2))


if __name__ == "__main__":
    main()
