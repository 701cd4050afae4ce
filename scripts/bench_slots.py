"""Runner slots under load (issue 13): a real ``ncl host run`` (local runners, mock provider, ``NCL_MAX_RUNNERS=5``,
a 30-minute idle timeout) gets N queue jobs at once, each in a session of its own (no ``thread_id``), so every job
needs a runner of its own and each slot passes from an idle runner to the next job. Prints JSON: jobs/s from the
first send to the last answer, and the wait of each job from its send to its answer (the reply's own timestamp),
p50/p99/max; with a 1800 s idle timeout, a wait that contained one would show as 30 minutes.

    .venv/bin/python scripts/bench_slots.py [--jobs 200] [--max-runners 5]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_host import HostProcess
from bench_kit import log, percentile, settings_for, wait_until, workdir

from host.channels import queues
from host.store import db, groups
from schemas import clock
from schemas.times import from_text


def _answered_at(outbound: Path, message_id: str) -> datetime | None:
    """When the runner wrote its answer to ``message_id``, None if not yet."""
    if not outbound.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{outbound.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
            row = conn.execute("SELECT MIN(timestamp) FROM messages_out WHERE in_reply_to = ? AND kind = 'chat'",
                               (message_id,)).fetchone()
    except sqlite3.OperationalError:  # the runner is creating the file
        return None
    return from_text(row[0]) if row and row[0] else None


def bench_slots(jobs: int, max_runners: int) -> dict[str, Any]:
    with workdir("ncl-bench-slots-") as root:
        settings = settings_for(root)
        with closing(db.connect(settings.central_db, "central")) as central:
            groups.create(central, settings, clock.now(), "bench", ["queue:bench"])
        host = HostProcess(root, NCL_MAX_RUNNERS=str(max_runners), NCL_IDLE_TIMEOUT_S="1800", NCL_LOG_LEVEL="INFO")
        try:
            wait_until(lambda: host.alive() and (settings.data_dir / "cli.sock").exists(), 30, "host start")
            log(f"slots: {jobs} queue jobs, each in a new session, {max_runners} runner slots …")
            sent: dict[str, tuple[Path, datetime]] = {}
            started = time.perf_counter()
            with closing(db.connect(settings.central_db, "central")) as central:
                for n in range(jobs):  # what `ncl queue send` does
                    now = clock.now()
                    job = queues.send(central, settings, now, "bench", {"prompt": f"job {n}"})
                    sent[job["message_id"]] = (settings.sessions_dir / "ag-bench" / job["session_id"], now)
            send_s = time.perf_counter() - started
            answers: dict[str, datetime] = {}

            def all_answered() -> bool:
                host.alive()
                for message_id, (folder, _) in sent.items():
                    if message_id not in answers and (at := _answered_at(folder / "outbound.db", message_id)):
                        answers[message_id] = at
                return len(answers) == jobs

            wait_until(all_answered, 600, "every job answered", every_s=0.1)
            answered_s = time.perf_counter() - started
        finally:
            host.stop()
    waits = [(answers[m] - at).total_seconds() for m, (_, at) in sent.items()]
    count = sum("to free a slot" in line for line in host.lines)
    return {"jobs": jobs, "max_runners": max_runners, "idle_timeout_s": 1800, "send_s": round(send_s, 2),
            "answered_s": round(answered_s, 2), "jobs_per_s": round(jobs / answered_s, 2),
            "wait_s": {"p50": round(percentile(waits, 0.5), 2), "p99": round(percentile(waits, 0.99), 2),
                       "max": round(max(waits), 2)},
            "idle_runners_stopped_for_a_slot": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--max-runners", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(bench_slots(args.jobs, args.max_runners), indent=2))


if __name__ == "__main__":
    main()
