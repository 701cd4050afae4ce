"""Issue 7, fault injection: the host SIGKILLed at random points of a sweep, 20 times, while 50 sessions have due,
running and recurring tasks; after every restart each series has exactly one live row, no occurrence has run
twice, and at the end every due occurrence has run.

The host is ``sweep_child.py``: a real ``Sweeper`` in a child process holding ``data/host.lock``, driven through
fake instants, which SIGKILLs itself when the N-th SQL statement of a sweep begins (N drawn from a seeded RNG over
the statement count of the previous full sweep): the same seed kills at the same statements, and a kill can land
between any two statements, inside a transaction or between the outbound and the inbound write of one session.

The test plays every session's runner with the runner's own ``Store`` (the same fetch, claim and finish SQL as
``python -m agent_runner``): between sweeps it claims what is due, finishes most of it (ran, gate-skipped, gate
error, provider failure) and leaves the rest running; while the host is dead it may finish some of those, as a
container that outlives its host does; a restarted host's runners are a new generation, the old one is gone
(orphan cleanup). Every finish is counted in a ledger: "ran twice" is a second finish of one message, a second
terminal ``task_runs`` row for one message, or two terminal runs of one series at the same scheduled time.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faultkit import runner_pids, scenario_step
from kit import RecordingRuntime, World, exits_within, utc
from processes import Env, Host

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tools import Tools
from host import db, groups, inbox, sessions, tasks
from host import settings as settings_module
from host.recurrence import Policy
from host.sessions import Session
from host.settings import Settings
from schemas import ids
from schemas.times import to_text

SEED = 20260518
KILLS = 20
SESSIONS = 50
GROUPS = 5
T0 = utc("2026-05-18T13:00:00")
CHILD = Path(__file__).with_name("sweep_child.py")
TERMINAL_OUTCOMES = ("ran", "skipped", "gate_error", "failed")
LIVE = ("pending", "processing", "paused")
# Recurrences of the seeded series: every 10 min (misfire within grace), hourly, and every 2 h at :30 (a long
# jump between sweeps puts its latest slot beyond the 1 h grace: completed as missed, next slot cloned).
RECURRENCES = ("*/10 * * * *", "0 * * * *", "30 */2 * * *")


class SweepHost:
    """The host process: ``tick`` returns the sweep's result, or None when it was SIGKILLed as asked."""

    def __init__(self, root: Path, environ: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD)], cwd=root, env=environ, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert "ready" in json.loads(self._line() or "{}"), self._tail()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
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
            assert kill_at is not None and code == -signal.SIGKILL, f"host died ({code}): {self._tail()}"
            return None
        result: dict[str, Any] = json.loads(line)
        assert result["errors"] == 0, f"a session failed in the sweep at {to_text(now)}: {self._tail()}"
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
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
            rows = [r for r in store.fetch(now) if r["trigger"] == 1]
            store.claim(rows, now)
            claimed += len(rows)
            for row in rows:
                if self.rng.random() < finish_share or row["tries"] >= 3:
                    self._finish(session, store, row["id"], row["kind"], now)
                else:
                    held.append((row["id"], row["kind"]))  # still running when the next sweep comes
        return claimed

    def finish_held(self, now: datetime, share: float) -> None:
        """While the host is down its runners go on: finish a share of what each still holds."""
        for session in self.sessions:
            store = self.store(session)
            for message_id, kind in list(self.held.get(session.id, [])):
                if self.rng.random() < share:
                    self.held[session.id].remove((message_id, kind))
                    self._finish(session, store, message_id, kind, now)

    def _finish(self, session: Session, store: Store, message_id: str, kind: str, now: datetime) -> None:
        outcome = self.rng.choices(TERMINAL_OUTCOMES, (80, 8, 5, 7))[0] if kind == "task" else "ran"
        status = "failed" if outcome == "failed" else "completed"
        if self.rng.random() < 0.04:  # in the turn, the agent schedules something through the real tool
            tools = Tools(store.config, store, lambda: now)
            tools.turn = {"in_reply_to": message_id, "routing": {}}
            recurs = self.rng.random() < 0.5
            if recurs:
                answer = tools.schedule_task("every three hours", recurrence="15 */3 * * *")
            else:
                answer = tools.schedule_task("follow up", processAfter=to_text(now + timedelta(minutes=7)))
            task_id = answer.split("id: ", 1)[1].split(",", 1)[0]
            self.requested[task_id] = (session.id, recurs)
        store.finish([message_id], status, now, outcome, None if outcome == "ran" else f"played {outcome}",
                     now - timedelta(seconds=1))  # the request reaches the host with the turn's end
        self.ledger[message_id] += 1
        self.outcomes[message_id] = outcome


def _setup(settings: Settings, rng: random.Random) -> tuple[list[Session], dict[str, str]]:
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


@dataclass
class Snapshot:
    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    acks: list[dict[str, Any]]
    delivered: set[str]
    requests: list[str]


def _snapshot(session: Session) -> Snapshot:
    def read(path: Path, sql: str) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql)]

    inbound, outbound = session.folder / "inbound.db", session.folder / "outbound.db"
    return Snapshot(read(inbound, "SELECT * FROM messages_in ORDER BY seq"),
                    read(inbound, "SELECT * FROM task_runs ORDER BY rowid"),
                    read(outbound, "SELECT * FROM processing_ack"),
                    {r["message_out_id"] for r in read(inbound, "SELECT message_out_id FROM delivered")},
                    [r["id"] for r in read(outbound, "SELECT id FROM messages_out WHERE kind = 'system'")])


def _check(sessions_: list[Session], recurring: dict[str, str], played: PlayedRunners, when: str,
           final_at: datetime | None = None) -> Counter[str]:
    """Every invariant, right after a complete sweep (every ack synced). Returns coverage counts."""
    seen: Counter[str] = Counter()
    requested_by_session: dict[str, list[str]] = {}
    for task_id, (session_id, _) in played.requested.items():
        requested_by_session.setdefault(session_id, []).append(task_id)
    for session in sessions_:
        snap = _snapshot(session)
        by_id = {r["id"]: r for r in snap.rows}
        where = f"{when}, session {session.id}"
        # No series lost, none doubled: each recurring series has exactly one live row, and it carries the cron.
        mine = {t for t, owner in recurring.items() if owner == session.id} | {
            t for t in requested_by_session.get(session.id, []) if played.requested[t][1]}
        for series_id in {r["series_id"] for r in snap.rows if r["kind"] == "task"} | mine:
            series = [r for r in snap.rows if r["series_id"] == series_id]
            live = [r for r in series if r["status"] in LIVE]
            if series_id in mine:
                assert len(live) == 1 and live[0]["recurrence"], (where, "not one live row", series_id, series)
            else:
                assert len(live) <= 1 and not any(r["recurrence"] for r in series), (where, series_id, series)
        # Each occurrence ends once; no slot of a series runs twice.
        terminal = [r for r in snap.runs if r["outcome"] in TERMINAL_OUTCOMES]
        per_message = Counter(r["message_id"] for r in terminal)
        assert max(per_message.values(), default=0) <= 1, (where, [m for m, n in per_message.items() if n > 1])
        per_slot = Counter((r["series_id"], r["scheduled_for"]) for r in terminal)
        assert max(per_slot.values(), default=0) <= 1, (where, [s for s, n in per_slot.items() if n > 1])
        # Every finish the runners reported is synced exactly as reported, and nothing else ran.
        # A restarted host knows no live runner: every claim was released (its row back to pending, tries + 1).
        assert [a for a in snap.acks if a["status"] == "processing"] == [], (where, "claims not released")
        for ack in snap.acks:
            row = by_id[ack["message_id"]]
            assert row["status"] == ack["status"], (where, ack, row)
            if row["kind"] == "task":
                [run] = [r for r in terminal if r["message_id"] == row["id"]]
                assert run["outcome"] == json.loads(ack["detail"])["outcome"], (where, ack, run)
        for run in terminal:
            if run["detail"] and run["detail"].startswith("runner died or stalled"):
                seen["failed_after_retries"] += 1
                continue
            assert played.ledger[run["message_id"]] == 1, (where, run)
            assert played.outcomes[run["message_id"]] == run["outcome"], (where, run)
        # Requests the runners wrote were each applied once: the task id the tool announced is one series.
        assert set(snap.requests) <= snap.delivered, (where, "a system request was left unapplied")
        for task_id in requested_by_session.get(session.id, []):
            assert [r["id"] for r in snap.rows if r["id"] == task_id] == [task_id], (where, task_id)
        seen["missed_runs"] += sum(r["outcome"] == "missed" for r in snap.runs)
        seen["retried_rows"] += sum(r["tries"] > 0 for r in snap.rows)
        seen["clones"] += sum(r["series_id"] != r["id"] for r in snap.rows if r["kind"] == "task")
        seen["auto_paused"] += sum(r["status"] == "paused" for r in snap.rows)
        if final_at is None:
            continue
        # At the end: nothing due is left unrun, nothing is claimed, every chat was answered once.
        final = to_text(final_at)
        due = [r for r in snap.rows if r["status"] == "pending" and r["trigger"] == 1
               and (r["process_after"] is None or r["process_after"] <= final)]
        assert due == [], (where, "due rows left unrun")
        for row in snap.rows:
            if row["kind"] == "chat" and row["trigger"] == 1:
                assert row["status"] == "completed" and played.ledger[row["id"]] == 1, (where, row)
            if row["kind"] == "task" and row["status"] in ("completed", "failed"):
                ends = [r for r in snap.runs if r["message_id"] == row["id"]
                        and (r["outcome"] in TERMINAL_OUTCOMES or r["outcome"] == "missed")]
                assert ends, (where, "an occurrence ended with no run recorded", row)
    return seen


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Settings]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_"))}
    environ.update({"NCL_DATA_DIR": str(tmp_path / "data"), "TZ": "UTC", "NCL_RUNTIME": "local"})
    settings = settings_module.load(environ=environ, cwd=tmp_path)
    settings.data_dir.mkdir(parents=True)
    yield tmp_path, environ, settings


@pytest.mark.slow
def test_host_sigkilled_twenty_times_mid_sweep_loses_and_doubles_nothing(
        fleet: tuple[Path, dict[str, str], Settings]) -> None:
    root, environ, settings = fleet
    rng = random.Random(SEED)
    made, recurring = _setup(settings, rng)
    played = PlayedRunners(settings, made, rng)
    log = root / "sweep-child.log"
    history: list[str] = []

    # Before the first start, the runners of a previous host left claims behind (running when it went down).
    played.new_generation("gen-before")
    played.work(T0, finish_share=0.3)

    now, generation = T0, 0
    host = SweepHost(root, environ, log)
    full = host.tick(now)
    assert full is not None and full["sessions_checked"] == SESSIONS
    _check(made, recurring, played, "first sweep")
    played.new_generation(f"gen-{generation}")
    played.work(now)

    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"only {kills} kills landed in {attempts} sweeps: {history}"
        # Mostly a few minutes between sweeps; sometimes the host was away long enough for slots to pass.
        now += timedelta(seconds=rng.choice([120, 240, 300, 420, 600, 600, 5400]))
        kill_at = rng.randint(1, full["statements"])
        killed = host.tick(now, kill_at)
        if killed is not None:  # this sweep had fewer statements than drawn: it completed; draw again
            full = killed
            history.append(f"{to_text(now)}: no kill (sweep had {killed['statements']} < {kill_at} statements)")
            _check(made, recurring, played, f"uninterrupted sweep at {to_text(now)}")
            generation += 1  # the host released every claim: the runners it saw none of are gone
            played.new_generation(f"gen-{generation}")
            played.work(now)
            continue
        kills += 1
        history.append(f"{to_text(now)}: {log.read_text().strip().splitlines()[-1]}")
        played.finish_held(now, share=0.5)  # the old runners, still alive while no host runs
        host = SweepHost(root, environ, log)  # the restart: runners of the old host are gone
        full = host.tick(now)
        assert full is not None
        coverage = _check(made, recurring, played, f"restart after kill {kills} ({history[-1]})")
        generation += 1
        played.new_generation(f"gen-{generation}")
        played.work(now)

    # Settle: time moves on without kills; runners finish everything; then nothing due may be left unrun.
    for _ in range(4):
        now += timedelta(minutes=3)
        assert host.tick(now) is not None
        generation += 1
        played.new_generation(f"gen-{generation}")
        played.work(now, finish_share=1.0)
    end = now
    assert host.tick(end) is not None
    host.close()
    coverage = _check(made, recurring, played, f"the end ({to_text(end)})", final_at=end)

    print(f"seed {SEED}: {kills} kills in {attempts} sweeps; coverage {dict(coverage)};"
          f" {len(played.requested)} schedule_task requests", *history, sep="\n")
    # The faults hit what they were meant to: kills all over the sweep, retries, misfires, clones, requests.
    killed_at = Counter(line.split(": ", 2)[-1].split()[0] for line in history if "KILLED" in line)
    assert len(killed_at) >= 3, history
    assert coverage["missed_runs"] > 0 and coverage["retried_rows"] > 0 and coverage["clones"] > SESSIONS, coverage
    assert played.requested, "no schedule_task request was exercised"
    assert max(played.ledger.values()) == 1


def test_a_recurring_occurrence_retried_after_its_runner_died_keeps_the_grid_and_records_missed_slots(
        tmp_path: Path) -> None:
    """Seen while building the kill loop above (runs recorded at retry times, off the grid). A */10 occurrence is
    claimed at 10:00 by a runner that dies with its host; the host is back at 10:25 and the retry runs at 10:26.
    By DESIGN §6.3 and §12.7 the overdue occurrence runs as the latest passed slot (10:20), the slots not run are
    one ``missed`` run, and the grid goes on at 10:30. Deterministic: one session, real files, a fake clock."""
    with scenario_step("a claimed occurrence, its runner and host dead, released and run by the next"):
        world = World(tmp_path, tz="UTC")
        slot = utc("2026-05-18T10:00:00")
        task = world.schedule(slot - timedelta(minutes=5), recurrence="*/10 * * * *")
        runtime = RecordingRuntime()
        sweeper = world.sweeper(runtime)
        assert sweeper.tick(slot).woken == 1
        world.ack(task, "processing", slot + timedelta(seconds=1), generation=runtime.started[-1][2])
        restarted = world.sweeper(RecordingRuntime())  # the host died with its runner; a new one knows no runner
        assert restarted.tick(slot + timedelta(minutes=25)).retried == 1
        world.ack(task, "completed", slot + timedelta(minutes=26), generation="gen-next", outcome="ran")
        restarted.tick(slot + timedelta(minutes=26))

    runs = world.runs(task)
    [ran] = [r for r in runs if r["outcome"] == "ran"]
    missed = sum(json.loads(r["detail"])["slots"] for r in runs if r["outcome"] == "missed")
    [live] = world.live(task)
    assert live["process_after"] == to_text(slot + timedelta(minutes=30))
    assert ran["scheduled_for"] == to_text(slot + timedelta(minutes=20)), runs  # a slot of the grid, the latest
    assert missed == 2, runs  # 10:00 and 10:10 did not run as themselves


@pytest.mark.slow
def test_a_sigkilled_hosts_local_runners_are_stopped_by_the_next_host(tmp_path: Path) -> None:
    """Real processes: a host with a live local runner is SIGKILLed; the next host starts. DESIGN §8: orphan
    runners of this install are removed at start (for containers they are), else two runners serve one session
    and a message claimed by both can be answered twice."""
    env = Env(tmp_path)
    with scenario_step("a group to chat with"):
        env.ok("groups", "create", "demo", "--channel", "cli")
    first = Host(env, NCL_IDLE_TIMEOUT_S="600")
    second: Host | None = None
    orphans: list[int] = []
    try:
        with scenario_step("a host with a live runner SIGKILLed, and the next one started"):
            first.wait_for_action("host_started")
            session_id = json.loads(env.ok("chat", "demo", "hello", "--json", "--timeout", "60"))["session_id"]
            orphans = runner_pids(first, session_id, at_least=1)
            first.proc.kill()  # SIGKILL: no chance to stop its runners itself
            first.proc.wait(timeout=10)
            second = Host(env, NCL_IDLE_TIMEOUT_S="600")
            second.wait_for_action("host_started")
        # A local runner dies with the host that started it (PR_SET_PDEATHSIG), so it never serves beside the next.
        assert exits_within(orphans[0], 5), "the dead host's runner still serves the session beside the new host"
    finally:
        for host in (first, second):
            if host is not None:
                host.kill()
        for pid in orphans:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
