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

The fleet, the sweep host and the played runners: tests/faults/sweep_fleet.py. What a killed host leaves behind
(a claimed occurrence, a live local runner): tests/faults/test_fault_sweep_kills_leftovers.py.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sweep_fleet import SESSIONS, T0, TERMINAL_OUTCOMES, PlayedRunners, SweepHost, setup_fleet

from host import settings as settings_module
from host.settings import Settings
from host.store.sessions import Session
from schemas.times import to_text

SEED = 20260518
KILLS = 20
LIVE = ("pending", "processing", "paused")


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
@pytest.mark.parametrize("workers", [False, True], ids=["visits-in-the-host", "visits-in-workers"])
def test_host_sigkilled_twenty_times_mid_sweep_loses_and_doubles_nothing(
        fleet: tuple[Path, dict[str, str], Settings], workers: bool) -> None:
    """``workers``: the sweep's visits are done by its worker processes (host.scheduling.visitors), which die with
    it wherever their own visits are; else by the host itself, so a kill lands between any two of their statements."""
    root, environ, settings = fleet
    rng = random.Random(SEED)
    made, recurring = setup_fleet(settings, rng)
    played = PlayedRunners(settings, made, rng)
    log = root / "sweep-child.log"
    history: list[str] = []

    # Before the first start, the runners of a previous host left claims behind (running when it went down).
    played.new_generation("gen-before")
    played.work(T0, finish_share=0.3)

    now, generation = T0, 0
    host = SweepHost(root, environ, log, workers)
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
        history.append(f"{to_text(now)}: {[line for line in log.read_text().splitlines() if 'KILLED' in line][-1]}")
        played.finish_held(now, share=0.5)  # the old runners, still alive while no host runs
        host.close()
        host = SweepHost(root, environ, log, workers)  # the restart: runners of the old host are gone
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
    last = host.tick(end)
    assert last is not None and last["workers"] == workers, "the sweeps' visits were not made where meant"
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
