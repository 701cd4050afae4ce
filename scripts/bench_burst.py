#!/usr/bin/env python3
"""The 9:00 burst (issue 14): N sessions each with a one-shot task due at the same instant, a real ``ncl host run``
with ``NCL_MAX_RUNNERS`` slots, mock provider, local runners (or ``--runtime docker``). Reports the time from the due
instant until every task has answered, and the lateness (answer time - due time) p50/p99/max; one JSON object.

    .venv/bin/python scripts/bench_burst.py [--sessions 1000] [--max-runners 10] [--runtime local|docker] [--log FILE]

Docker runs NCL_IMAGE, by default ncl-agent:test (built by tests/docker).

``--log FILE`` keeps the host's log (JSON lines, INFO: runner_starting/started/stopped, task_finished) for a timeline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_host import HostProcess
from bench_kit import log, percentile, settings_for, wait_until, workdir

from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.store import db, groups, sessions
from host.store.sessions import Session
from host.store.task_ids import TaskIds
from schemas import clock, ids
from schemas.times import from_text, to_text

LEAD_S = 15.0  # the host starts and sees every session before the burst (the bench fails if not)
TEST_IMAGE = "ncl-agent:test"  # --runtime docker without NCL_IMAGE: the image tests/docker builds


def build(settings: Any, count: int) -> list[Session]:
    """``count`` sessions of one group (about 9 ms each: longer than the host needs to start, so the tasks' due time
    is chosen after them)."""
    now = clock.now()
    with closing(db.connect(settings.central_db, "central")) as central:
        group, _ = groups.create(central, settings, now, "burst", ["cli"])
        return [sessions.create(central, settings, now, group, None) for _ in range(count)]


def schedule(settings: Any, made: list[Session], due: str) -> None:
    """A one-shot task due at ``due`` in each session."""
    policy, now = Policy.of(settings), clock.now()
    with closing(db.connect(settings.central_db, "central")) as central:
        for session in made:
            with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
                tasks.schedule(conn, now, policy, ids.new_id("task", now), "good morning", due,
                               registry=TaskIds(central, session.agent_group_id, session.id))


def seen_all_at(log_file: Path) -> float | None:
    """When the host had seen every session once (its ``sessions_seen`` line), as epoch seconds."""
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("action") == "sessions_seen":
            return from_text(record["time"]).timestamp()
    return None


def answered_at(folder: Path) -> float | None:
    """When the session's task was answered (its reply's time), as epoch seconds; None if not yet."""
    outbound = folder / "outbound.db"
    if not outbound.exists():
        return None
    with closing(sqlite3.connect(f"{outbound.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT MIN(timestamp) FROM messages_out WHERE kind = 'chat'").fetchone()
    return None if row[0] is None else from_text(row[0]).timestamp()


def cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the host and of its reaped children: its local runners (a container's runner
    is no child of the host)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {"host": (int(fields[11]) + int(fields[12])) / tick, "runners": (int(fields[13]) + int(fields[14])) / tick}


def measure(count: int, max_runners: int, runtime: str, keep_log: Path | None = None) -> dict[str, Any]:
    with workdir("ncl-burst-") as root:
        settings = settings_for(root)
        log(f"burst: {count} sessions …")
        began = time.monotonic()
        made = build(settings, count)
        # Scheduling takes about a third of the making (more on a loaded machine): the lead begins after both.
        due_at = clock.now() + timedelta(seconds=LEAD_S + time.monotonic() - began)
        log(f"burst: a task due at {to_text(due_at)} in each …")
        schedule(settings, made, to_text(due_at))
        folders = [session.folder for session in made]
        # (the host is given no NCL_ variable of ours: the image is passed on by name)
        image = {"NCL_IMAGE": os.environ.get("NCL_IMAGE", TEST_IMAGE)} if runtime == "docker" else {}
        host = HostProcess(root, NCL_MAX_RUNNERS=str(max_runners), NCL_RUNTIME=runtime, NCL_LOG_LEVEL="WARNING",
                           NCL_IDLE_TIMEOUT_S="600", NCL_LOG_FORMAT="json", **image)
        try:
            wait_until(lambda: host.alive() and due_at.timestamp() - time.time() < 0, LEAD_S + 60, "the due time",
                       every_s=0.05)
            answers: dict[Path, float] = {}

            def all_answered() -> bool:
                host.alive()
                for folder in folders:
                    if folder not in answers and (at := answered_at(folder)) is not None:
                        answers[folder] = at
                return len(answers) == count

            wait_until(all_answered, 1800, "every task answered", every_s=0.5)
            ready_at = seen_all_at(settings.data_dir / "host.log")
            cpu = cpu_s(host.proc.pid)
        finally:
            host.stop()
            if keep_log:
                shutil.copyfile(settings.data_dir / "host.log", keep_log)
    if ready_at is None or ready_at > due_at.timestamp():
        raise RuntimeError("the host had not seen every session by the due time: not a burst it was ready for")
    late = [at - due_at.timestamp() for at in answers.values()]
    return {"sessions": count, "max_runners": max_runners, "runtime": runtime,
            "host_ready_s_before_due": round(due_at.timestamp() - ready_at, 2),
            "all_answered_s": round(max(late), 2), "tasks_per_s": round(count / max(late), 1),
            "cpu_ms_per_task": {who: round(1000 * used / count, 1) for who, used in cpu.items()},
            "lateness_s": {"p50": round(statistics.median(late), 3), "p99": round(percentile(late, 0.99), 3),
                           "min": round(min(late), 3), "max": round(max(late), 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--max-runners", type=int, default=10)
    parser.add_argument("--runtime", choices=("local", "docker"), default="local")
    parser.add_argument("--log", type=Path, help="keep the host's log (JSON lines) here")
    args = parser.parse_args()
    print(json.dumps(measure(args.sessions, args.max_runners, args.runtime, args.log), indent=2))


if __name__ == "__main__":
    main()
