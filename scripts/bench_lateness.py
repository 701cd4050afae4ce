"""Firing lateness, a benchmark of scripts/bench.py: 200 one-shot tasks due over 20 s across 50 sessions (``--quick``:
40 over 5 s across 10), the real host loop (``host.loop.Host``, real clock) with a runtime whose ``start`` records the
real time and acks what is due, as a very fast runner would; lateness = that time − the task's due time."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_kit import log, percentile, settings_for, workdir

from host.loop import Host
from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.store import db, groups, sessions
from host.store.sessions import Session
from schemas import clock, ids
from schemas.times import from_text, to_text


@dataclass
class AckingRuntime:
    """A runner that starts instantly: the real time of the start is recorded for each row it finds due, which it
    acks at once (with the heartbeat a runner writes); then it has exited. The host's loop does the rest."""

    lateness_ms: dict[str, float] = field(default_factory=dict)
    starts: int = 0
    uid = None  # the host's own user, as a local runtime's runners

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        started = datetime.now(UTC)
        self.starts += 1
        with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
            due = conn.execute("SELECT id, process_after FROM messages_in WHERE status = 'pending' AND trigger = 1"
                               " AND (process_after IS NULL OR process_after <= ?)", (to_text(started),)).fetchall()
        for row in due:
            self.lateness_ms.setdefault(row[0], (started - from_text(row[1])).total_seconds() * 1000)
        (session.folder / ".heartbeat").write_text(generation)
        detail = json.dumps({"outcome": "ran", "reason": None})
        with closing(db.connect(session.folder / "outbound.db", "outbound")) as conn, db.transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail,"
                             " generation) VALUES (?, 'completed', ?, ?, ?)",
                             [(row[0], to_text(started), detail, generation) for row in due])

    def is_running(self, session_id: str) -> bool:
        return False

    def stop(self, session_id: str) -> None:
        return None


async def _run_host(host: Host, runtime: AckingRuntime, total: int, until: float) -> None:
    while len(runtime.lateness_ms) < total and time.monotonic() < until:
        await host.step()


def bench_lateness(quick: bool) -> dict[str, Any]:
    count, spread_s, session_count = (40, 5.0, 10) if quick else (200, 20.0, 50)
    with workdir("ncl-bench-late-") as root:
        settings = settings_for(root)
        policy = Policy.of(settings)
        now = clock.now()
        with closing(db.connect(settings.central_db, "central")) as central:
            group, _ = groups.create(central, settings, now, "bench", ["cli"])
            made = [sessions.create(central, settings, now, group, None) for _ in range(session_count)]
        start = now + timedelta(seconds=3)  # the host's first tick and its settling visit come first
        rng = random.Random(7)
        due_at = sorted(rng.uniform(0, spread_s) for _ in range(count))
        for n, offset in enumerate(due_at):
            session = made[n % session_count]
            with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
                tasks.schedule(conn, now, policy, ids.new_id("task", now), f"task {n}",
                               to_text(start + timedelta(seconds=offset)), enforce_interval=False)
        runtime = AckingRuntime()
        host = Host(settings, runtime, clock)
        log(f"lateness: {count} one-shot tasks over {spread_s:g} s in {session_count} sessions …")
        try:
            asyncio.run(_run_host(host, runtime, count, time.monotonic() + 3 + spread_s + 15))
        finally:
            host.sweeper.close()
            host.scheduled.close()
            host.proxy.shutdown()
    late = list(runtime.lateness_ms.values())
    return {"tasks": count, "sessions": session_count, "spread_s": spread_s, "fired": len(late),
            "missing": count - len(late), "runner_starts": runtime.starts,
            "p50_ms": round(statistics.median(late), 1) if late else None,
            "p99_ms": round(percentile(late, 0.99), 1) if late else None,
            "max_ms": round(max(late), 1) if late else None, "min_ms": round(min(late), 1) if late else None}
