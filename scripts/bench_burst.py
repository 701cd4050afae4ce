#!/usr/bin/env python3
"""The 9:00 burst (issue 14): N sessions each with a one-shot task due at the same instant, a real ``ncl host run``
with ``NCL_MAX_RUNNERS`` slots, mock provider, local runners (or ``--runtime docker``). Reports the time from the due
instant until every task has answered, and the lateness (answer time - due time) p50/p99/max; one JSON object.

    .venv/bin/python scripts/bench_burst.py [--sessions 1000] [--max-runners 10] [--runtime local|docker]
"""

from __future__ import annotations

import argparse
import json
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
from host.store.task_ids import TaskIds
from schemas import clock, ids
from schemas.times import from_text, to_text

LEAD_S = 15.0  # the host starts and sees every session before the burst


def build(settings: Any, count: int, due: str) -> list[Path]:
    """``count`` sessions of one group, each with a one-shot task due at ``due``."""
    policy, now = Policy.of(settings), clock.now()
    folders = []
    with closing(db.connect(settings.central_db, "central")) as central:
        group, _ = groups.create(central, settings, now, "burst", ["cli"])
        for _ in range(count):
            session = sessions.create(central, settings, now, group, None)
            with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
                tasks.schedule(conn, now, policy, ids.new_id("task", now), "good morning", due,
                               registry=TaskIds(central, session.agent_group_id, session.id))
            folders.append(session.folder)
    return folders


def answered_at(folder: Path) -> float | None:
    """When the session's task was answered (its reply's time), as epoch seconds; None if not yet."""
    outbound = folder / "outbound.db"
    if not outbound.exists():
        return None
    with closing(sqlite3.connect(f"{outbound.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT MIN(timestamp) FROM messages_out WHERE kind = 'chat'").fetchone()
    return None if row[0] is None else from_text(row[0]).timestamp()


def measure(count: int, max_runners: int, runtime: str) -> dict[str, Any]:
    with workdir("ncl-burst-") as root:
        settings = settings_for(root)
        due_at = clock.now() + timedelta(seconds=LEAD_S)
        log(f"burst: {count} sessions, each with a task due at {to_text(due_at)} …")
        folders = build(settings, count, to_text(due_at))
        host = HostProcess(root, NCL_MAX_RUNNERS=str(max_runners), NCL_RUNTIME=runtime, NCL_LOG_LEVEL="WARNING",
                           NCL_IDLE_TIMEOUT_S="600")
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
        finally:
            host.stop()
    late = [at - due_at.timestamp() for at in answers.values()]
    return {"sessions": count, "max_runners": max_runners, "runtime": runtime,
            "all_answered_s": round(max(late), 2), "tasks_per_s": round(count / max(late), 1),
            "lateness_s": {"p50": round(statistics.median(late), 3), "p99": round(percentile(late, 0.99), 3),
                           "min": round(min(late), 3), "max": round(max(late), 3)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--max-runners", type=int, default=10)
    parser.add_argument("--runtime", choices=("local", "docker"), default="local")
    args = parser.parse_args()
    print(json.dumps(measure(args.sessions, args.max_runners, args.runtime), indent=2))


if __name__ == "__main__":
    main()
