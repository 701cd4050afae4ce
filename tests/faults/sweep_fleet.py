"""The fleet of the sweep-kill test (tests/faults/test_fault_sweep_kills.py): 50 sessions in 5 groups with due,
running and recurring tasks (``setup_fleet``); ``SweepHost``, the host process (``sweep_child.py``: a real
``Sweeper`` that SIGKILLs itself at the N-th SQL statement of a sweep when asked); and ``PlayedRunners``, every
session's runner played with the runner's own ``Store``, whose finishes are counted in a ledger.
"""

from __future__ import annotations

import json
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kit import utc

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tools import Tools
from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.settings import Settings
from host.store import db, groups, inbox, sessions
from host.store.sessions import Session
from schemas import ids
from schemas.times import to_text

SESSIONS = 50
GROUPS = 5
T0 = utc("2026-05-18T13:00:00")
CHILD = Path(__file__).with_name("sweep_child.py")
TERMINAL_OUTCOMES = ("ran", "skipped", "gate_error", "failed")
# Recurrences of the seeded series: every 10 min (misfire within grace), hourly, and every 2 h at :30 (a long
# jump between sweeps puts its latest slot beyond the 1 h grace: completed as missed, next slot cloned).
RECURRENCES = ("*/10 * * * *", "0 * * * *", "30 */2 * * *")


class SweepHost:
    """The host process: ``tick`` returns the sweep's result, or None when it was SIGKILLed as asked."""

    def __init__(self, root: Path, environ: dict[str, str], log: Path, workers: bool = False) -> None:
        self.log = log
        with log.open("a") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD), *(["--workers"] if workers else [])], cwd=root,
                                         env=environ, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert "ready" in json.loads(self._line() or "{}"), self._tail()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at EOF: the pipe is the pump's alone
            for line in self.proc.stdout:
                self.lines.put(line)
        self.lines.put(None)

    def _line(self) -> str | None:
        try:
            return self.lines.get(timeout=120)  # a sweep of 50 sessions takes well under a second
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"sweep child silent for 120 s; log: {self._tail()}") from None

    def _tail(self) -> str:
        return self.log.read_text()[-3000:]

    def tick(self, now: datetime, kill_at: int | None = None) -> dict[str, Any] | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"tick {to_text(now)}{f' {kill_at}' if kill_at else ''}\n")
        self.proc.stdin.flush()
        line = self._line()
        if line is None:
            code = self.proc.wait(timeout=30)
            self.proc.stdin.close()  # (the dead child's: left open, a test failing before the restart leaks it)
            assert kill_at is not None and code == -signal.SIGKILL, f"host died ({code}): {self._tail()}"
            return None
        result: dict[str, Any] = json.loads(line)
        assert result["errors"] == 0, f"a session failed in the sweep at {to_text(now)}: {self._tail()}"
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the child's cue to exit, if it still runs
        self.proc.wait(timeout=30)


@dataclass
class PlayedRunners:
    """Every session's runner, played with the runner's own Store. A generation lives from one complete sweep to
    the next: this host, like ``ncl host sweep``, starts no runner, so it takes every claim it finds for one of a
    runner that is gone and releases it; the played runners then are gone (as a restart's orphan cleanup makes
    them), except in the window of a kill, where the old generation goes on until the restarted host sweeps."""

    settings: Settings
    sessions: list[Session]
    rng: random.Random
    generation: str = ""
    ledger: Counter[str] = field(default_factory=Counter)  # finishes per message id (all generations)
    outcomes: dict[str, str] = field(default_factory=dict)  # message id -> the outcome its finish reported
    held: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # session -> (id, kind) still running
    requested: dict[str, tuple[str, bool]] = field(default_factory=dict)  # task id -> (session id, recurring)

    def store(self, session: Session) -> Store:
        return Store(RunnerConfig(session.folder, self.generation, "UTC", task_min_interval_s=300))

    def new_generation(self, name: str) -> None:
        """The previous runners are gone; each new one drops stale claims on start, as the real runner does."""
        self.generation, self.held = name, {}
        for session in self.sessions:
            self.store(session).release_stale_claims()

    def work(self, now: datetime, finish_share: float = 0.75) -> int:
        """Claim what is due in every session, finish a share of it (all of it with ``finish_share=1``), and
        sometimes ask for a new task through the real ``schedule_task`` tool. Returns how many were claimed."""
        claimed = 0
        for session in self.sessions:
            store = self.store(session)
            held = self.held.setdefault(session.id, [])
            rows = [r for r in store.fetch(now) if r.trigger == 1]
            store.claim(rows, now)
            claimed += len(rows)
            for row in rows:
                if self.rng.random() < finish_share or row.tries >= 3:
                    self._finish(session, store, row.id, row.kind, now)
                else:
                    held.append((row.id, row.kind))  # still running when the next sweep comes
        return claimed

    def finish_held(self, now: datetime, share: float) -> None:
        """While the host is down its runners go on: finish a share of what each still holds. The host saw no runner
        alive (it starts none here), so it may have been killed clearing their claims: the hot journal that leaves
        in outbound.db is rolled back first, as any writer's open does (a real host clears the claims of no live
        runner, and a runner's read-only attach of the file could not)."""
        for session in self.sessions:
            with closing(sqlite3.connect(session.folder / "outbound.db")) as conn:
                conn.execute("SELECT 1 FROM sqlite_master").fetchall()
            store = self.store(session)
            for message_id, kind in list(self.held.get(session.id, [])):
                if self.rng.random() < share:
                    try:
                        self._finish(session, store, message_id, kind, now)
                    except sqlite3.OperationalError as exc:
                        # The host was killed committing this inbox (a worker's visit dies with it): the runner's
                        # read-only reads meet the hot journal until the host rolls it back, and, as a real runner
                        # does (agent_runner.runner), it waits: the row stays held.
                        assert "readonly database" in str(exc), exc
                        break
                    self.held[session.id].remove((message_id, kind))

    def _finish(self, session: Session, store: Store, message_id: str, kind: str, now: datetime) -> None:
        outcome = self.rng.choices(TERMINAL_OUTCOMES, (80, 8, 5, 7))[0] if kind == "task" else "ran"
        status = "failed" if outcome == "failed" else "completed"
        if self.rng.random() < 0.04:  # in the turn, the agent schedules something through the real tool
            tools = Tools(store.config, store, lambda: now)
            tools.turn = {"in_reply_to": message_id, "routing": {}}
            recurs = self.rng.random() < 0.5
            # Each a series of its own (the tool answers a repeat of a live one with its id and asks nothing).
            if recurs:
                answer = tools.schedule_task(f"every three hours, for {message_id}", recurrence="15 */3 * * *")
            else:
                answer = tools.schedule_task(f"follow up {message_id}", to_text(now + timedelta(minutes=7)))
            task_id = answer.split("id: ", 1)[1].split(",", 1)[0]
            self.requested[task_id] = (session.id, recurs)
        store.finish([message_id], status, now, outcome, None if outcome == "ran" else f"played {outcome}",
                     now - timedelta(seconds=1))  # the request reaches the host with the turn's end
        self.ledger[message_id] += 1
        self.outcomes[message_id] = outcome


def setup_fleet(settings: Settings, rng: random.Random) -> tuple[list[Session], dict[str, str]]:
    """50 sessions, each with three recurring series (one already overdue), a one-shot due now, a one-shot due
    later in the run and a chat due now. Returns the sessions and {series id: session id} of recurring ones."""
    created = T0 - timedelta(minutes=30)
    policy = Policy.of(settings)
    recurring: dict[str, str] = {}
    made: list[Session] = []
    with closing(db.connect(settings.central_db, "central")) as central:
        for g in range(GROUPS):
            group, _ = groups.create(central, settings, created, f"fleet{g}", ["cli"])
            for _ in range(SESSIONS // GROUPS):
                # Distinct creation instants: the sweep visits sessions in this order, so a seed kills at one point.
                made.append(sessions.create(central, settings, created + timedelta(milliseconds=len(made)), group,
                                            None))
    for session in made:
        with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
            for expr in RECURRENCES:
                task_id = ids.new_id("task", created)
                # The */10 series starts 20 min in the past: the first sweep finds it overdue (misfire rule).
                first = to_text(created + timedelta(minutes=10)) if expr.startswith("*/10") else None
                tasks.schedule(conn, created, policy, task_id, f"every {expr}", first, expr, enforce_interval=False)
                recurring[task_id] = session.id
            tasks.schedule(conn, created, policy, ids.new_id("task", created), "once, overdue",
                           to_text(T0 - timedelta(minutes=1)), enforce_interval=False)
            later = T0 + timedelta(minutes=rng.randrange(1, 90))
            tasks.schedule(conn, created, policy, ids.new_id("task", created), "once, later", to_text(later),
                           enforce_interval=False)
            with db.transaction(conn):
                inbox.insert(conn, {"id": ids.new_id("msg", created), "kind": "chat", "timestamp": to_text(created),
                                    "content": json.dumps({"text": "hi", "sender": "u", "sender_id": "u"})})
    return made, recurring
