"""Issue 14.3: a sweep that must open many sessions with no live runner has worker processes visit them
(``host.scheduling.visitors``), and what it finds, does, counts and logs is what its own thread's visits give."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World, exits_within, utc

from host.files import logs
from host.scheduling import visitors
from host.scheduling.sweep import Sweeper
from host.store import groups, sessions
from host.store.sessions import Session
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")  # 09:00 in New York
MANY = visitors.MIN_VISITS + 8


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers for any sweep of MANY sessions, whatever this machine's cores (they are what is tested)."""
    monkeypatch.setattr(visitors, "WORKERS", 2)
    monkeypatch.setattr(visitors, "FIRST_VISITS", MANY)


def _due_sessions(world: World, count: int = MANY) -> list[Session]:
    """``count`` sessions of ``world`` (its own first), each holding a one-shot task due at T0."""
    listed = [world.session] + [world.new_session() for _ in range(count - 1)]
    for session in listed:
        world.schedule(T0 - timedelta(minutes=5), at=to_text(T0), session=session)
    return listed


def _busy_world(tmp_path: Path) -> tuple[World, list[Session], dict[str, str]]:
    """MANY sessions: half finished a daily task's occurrence (cloned at the next visit), half hold a due one-shot;
    the first also holds a request to apply. Returns the world, the sessions, and each cloned session's series."""
    world = World(tmp_path)
    listed = [world.session] + [world.new_session() for _ in range(MANY - 1)]
    cloned: dict[str, str] = {}
    for n, session in enumerate(listed):
        if n % 2:
            series = world.schedule(T0 - timedelta(days=1), recurrence="0 9 * * *", session=session)
            [row] = world.rows(series, session)
            world.ack(row["id"], "completed", T0 + timedelta(minutes=1), outcome="ran", session=session)
            cloned[session.id] = series
        else:
            world.schedule(T0 - timedelta(minutes=5), at=to_text(T0 - timedelta(minutes=1)), session=session)
    world.request(T0, {"action": "schedule_task", "taskId": "task-1779105600000-vvvvvv", "prompt": "asked for",
                       "processAfter": to_text(T0 + timedelta(hours=1))}, listed[0])
    return world, listed, cloned


def _counts(sweeper: Sweeper) -> dict[str, Any]:
    result = sweeper.tick(T0 + timedelta(minutes=2)).to_json()
    result.pop("now")
    return result


class _Kept(logging.Handler):
    """The records the host's log handlers get, with the session ``logs.SessionFilter`` gives them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(logs.SessionFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_workers_visit_many_sessions_as_the_sweeps_own_thread_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      workers: None) -> None:
    world, listed, cloned = _busy_world(tmp_path / "workers")
    sweeper = world.sweeper()
    kept, root = _Kept(), logging.getLogger()
    level, root.level = root.level, logging.INFO
    root.addHandler(kept)
    try:
        counts = _counts(sweeper)
    finally:
        root.removeHandler(kept)
        root.setLevel(level)
    try:
        assert sweeper._visitors is not None and sweeper._visitors._pool is not None, "no worker was used"
        # Each clone's log record was made in a worker and logged here, naming its session.
        ran = [r for r in kept.records if r.getMessage().endswith(" ran")]
        assert {r.session for r in ran} == set(cloned)  # type: ignore[attr-defined]
        assert {r.process for r in ran} - {os.getpid()}, "the clones were not visited by a worker"
        for session in listed:
            if session.id in cloned:  # the occurrence recorded, the next one planned
                with closing(world.inbound(session)) as conn:
                    runs = conn.execute("SELECT outcome FROM task_runs WHERE series_id = ?", (cloned[session.id],))
                    assert [r[0] for r in runs] == ["ran"]
                assert [r["status"] for r in world.rows(cloned[session.id], session)] == ["completed", "pending"]
        with closing(world.inbound(listed[0])) as conn:  # the request was applied by the sweep's own thread
            assert conn.execute("SELECT status FROM delivered").fetchall()[0][0] == "applied"
        assert counts["sessions_opened"] == MANY
        assert counts["cloned"] == len(cloned) and counts["applied"] == 1 and counts["errors"] == 0
    finally:
        sweeper.close()

    monkeypatch.setattr(visitors, "MIN_VISITS", 10**9)  # the same sessions, every visit by the sweep's thread
    alone_world, _, _ = _busy_world(tmp_path / "alone")
    alone = alone_world.sweeper()
    assert _counts(alone) == counts
    assert alone._visitors is not None and alone._visitors._pool is None


def test_a_sweep_with_few_sessions_to_open_starts_no_worker(tmp_path: Path, workers: None) -> None:
    world = World(tmp_path)
    _due_sessions(world, visitors.MIN_VISITS - 2)
    sweeper = world.sweeper()
    assert sweeper.tick(T0).woken == visitors.MIN_VISITS - 2
    assert sweeper._visitors is not None and sweeper._visitors._pool is None


def test_the_first_workers_start_only_for_many_visits_in_sight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting them the first time costs ~0.3 s: a host start over a few dozen sessions visits them itself; one over
    thousands (the sessions left for its next sweeps counted) starts them at its first sweep."""
    monkeypatch.setattr(visitors, "WORKERS", 2)
    monkeypatch.setattr(visitors, "FIRST_VISITS", MANY + 1)
    world = World(tmp_path)
    _due_sessions(world)
    few = world.sweeper()
    assert few.tick(T0).woken == MANY
    assert few._visitors is not None and few._visitors._pool is None  # MANY in sight: not enough
    world.schedule(T0 - timedelta(minutes=5), at=to_text(T0), session=world.new_session())
    many = world.sweeper()  # MANY + 1: this sweep's 16, and those it leaves for the next
    try:
        assert many.tick(T0, new_limit=visitors.MIN_VISITS).woken == visitors.MIN_VISITS
        assert many.unvisited == MANY + 1 - visitors.MIN_VISITS
        assert many._visitors is not None and many._visitors._pool is not None
    finally:
        many.close()


class _Handed:
    """Visitors whose workers are stood for by the batches handed to them (``Round``'s side only)."""

    started, refused = True, ""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def _submit(self, now: object, jobs: list[Any]) -> Any:
        self.batches.append(jobs)
        return jobs

    def _outcomes(self, future: Any, size: int) -> list[None]:
        assert len(future) == size
        return [None] * size


@pytest.mark.parametrize("count", [visitors.MIN_VISITS, 70, 1000, 10_000])
def test_batches_grow_with_the_round_and_hand_every_session_once_in_order(count: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """8 sessions a hand-over while few were handed (a small sweep shared evenly), up to 64 in a big one (each costs
    the host ~0.3 ms): every session handed once, in the pass's order, as many outcomes as sessions."""
    monkeypatch.setattr(visitors, "WORKERS", 2)
    handed = _Handed()
    round_ = visitors.Round(handed, T0)  # type: ignore[arg-type]
    jobs = [(n, None) for n in range(count)]
    for job in jobs:
        round_.add(job)  # type: ignore[arg-type]
    assert len(list(round_.outcomes())) == count
    assert [job for batch in handed.batches for job in batch] == jobs
    sizes = [len(batch) for batch in handed.batches]
    assert max(sizes) <= visitors.MAX_BATCH and all(size == visitors.BATCH for size in sizes[:8])
    assert max(sizes) == (visitors.MAX_BATCH if count >= 1000 else visitors.BATCH)


def test_a_worker_imports_neither_pydantic_nor_asyncio() -> None:
    """What the forkserver imports for the workers (this module): a worker validates no request (it leaves them to
    the sweep's thread) and hands no reply; with pydantic's models and asyncio the first workers took 0.1 s longer
    to start (the forkserver they come from imports it first)."""
    found = subprocess.run([sys.executable, "-c", "import sys, host.scheduling.visitors; "
                            "print(sorted(m for m in ('pydantic', 'asyncio') if m in sys.modules))"],
                           capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_workers_that_died_leave_their_sessions_to_the_sweeps_thread(tmp_path: Path, workers: None,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    listed = _due_sessions(world)
    sweeper = world.sweeper()
    try:
        assert sweeper.tick(T0).woken == MANY
        assert sweeper._visitors is not None
        pool = sweeper._visitors._pool
        assert pool is not None
        for process in list(pool._processes.values()):
            process.kill()
            process.join()
        for session in listed:  # every session written again: the next sweep opens each
            world.schedule(T0 - timedelta(minutes=4), at=to_text(T0), session=session)
        with caplog.at_level(logging.WARNING):
            result = sweeper.tick(T0 + timedelta(seconds=1))
        assert (result.woken, result.errors, result.sessions_opened) == (MANY, 0, MANY)
        failed = [r for r in caplog.records if getattr(r, "action", None) == "sweep_worker_failed"]
        assert len(failed) == 1, "said once a sweep"
        for session in listed:
            world.schedule(T0 - timedelta(minutes=3), at=to_text(T0), session=session)
        assert sweeper.tick(T0 + timedelta(seconds=2)).woken == MANY
        assert sweeper._visitors._pool is not None and sweeper._visitors._pool is not pool  # new workers
    finally:
        sweeper.close()


def test_a_workers_failed_visit_is_the_failure_the_sweeps_thread_reports(tmp_path: Path, workers: None,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    listed = _due_sessions(world)
    broken = listed[3]
    (broken.folder / "inbound.db").write_bytes(b"not a database, " * 512)
    sweeper = world.sweeper()
    try:
        result = sweeper.tick(T0)
        assert sweeper._visitors is not None and sweeper._visitors._pool is not None
        assert (result.errors, result.woken) == (1, MANY - 1)
        by_worker = sweeper.failing[broken.id]
    finally:
        sweeper.close()
    monkeypatch.setattr(visitors, "MIN_VISITS", 10**9)  # every visit by the sweep's thread
    alone = world.sweeper()
    assert alone.tick(T0).errors == 1
    assert alone.failing[broken.id] == by_worker and "not a database" in by_worker


def test_a_workers_visit_that_met_a_lock_is_held_off_as_busy(tmp_path: Path, workers: None,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A lock held past the visit's bounded wait (another process's write, an operator's read) is no broken session:
    said once at INFO, as by the sweep's own thread, not as a failure (review: a worker's said WARNING)."""
    world = World(tmp_path)
    locked = _due_sessions(world)[3]
    sweeper = world.sweeper()
    with closing(sqlite3.connect(locked.folder / "inbound.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            with caplog.at_level(logging.INFO):
                result = sweeper.tick(T0)
            assert sweeper._visitors is not None and sweeper._visitors._pool is not None
        finally:
            sweeper.close()
    assert (result.errors, result.woken) == (1, MANY - 1) and locked.id in sweeper.holds.held
    said = [(r.levelno, r.getMessage()) for r in caplog.records if getattr(r, "session", None) == locked.id]
    assert len(said) == 1 and said[0][0] == logging.INFO, said
    assert said[0][1].startswith(f"session {locked.id} skipped (its files are locked): ") and "locked" in said[0][1]


_HOST = """
import json, sys
from multiprocessing import forkserver
from host import settings
from host.scheduling import visitors
from host.scheduling.sweep import Sweeper
from host.store import groups, sessions
from schemas.times import from_text

visitors.WORKERS, visitors.FIRST_VISITS = 2, visitors.MIN_VISITS
sweeper = Sweeper(settings.load(environ={"NCL_DATA_DIR": sys.argv[1], "TZ": "America/New_York"}, system_tz="UTC"))
assert sweeper.tick(from_text(sys.argv[2])).woken == int(sys.argv[3])
pids = [process.pid for process in sweeper._visitors._pool._processes.values()]
print(json.dumps(pids + [forkserver._forkserver._forkserver_pid]), flush=True)
sys.stdin.read()
"""


def test_the_workers_end_with_a_host_killed_with_sigkill(tmp_path: Path) -> None:
    """Their parent, the forkserver, lives as long as any of them does: each watches the host itself. Nothing holds
    the host's stdout after it (someone may wait for that pipe to close)."""
    world = World(tmp_path)
    _due_sessions(world)
    with subprocess.Popen([sys.executable, "-c", _HOST, str(world.settings.data_dir), to_text(T0), str(MANY)],
                          cwd=Path(__file__).parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as host:
        assert host.stdout is not None
        try:
            helpers = json.loads(host.stdout.readline())
            assert len(helpers) == 3 and not any(exits_within(pid, 0) for pid in helpers)
        finally:
            host.kill()
            host.wait()
        assert all(exits_within(pid, 10) for pid in helpers)
        assert host.stdout.read() == ""  # (at once: no helper left holding the pipe)


def test_a_held_session_a_request_changed_waits_for_its_hold(tmp_path: Path) -> None:
    """A session held off after a failed visit is left out of what is due at once: marked so, the loop would tick
    every 50 ms until the hold ended (fourth attack review). It is visited when its hold ends, as any held one."""
    world = World(tmp_path)
    ops_group, _ = groups.create(world.central, world.settings, T0, "ops", ["cli"], admin=True)
    ops = sessions.create(world.central, world.settings, T0, ops_group, None)
    sweeper = world.sweeper()
    try:
        sweeper.tick(T0)
        sweeper.holds.failed(world.session.id, T0 + timedelta(seconds=2))  # (held until T0 + 2.5 s)
        world.request(T0, {"action": "schedule_task", "taskId": "task-1779105600000-abcdef", "prompt": "backups",
                           "processAfter": to_text(T0 + timedelta(seconds=30)), "group": "demo"}, ops)
        assert sweeper.tick(T0 + timedelta(seconds=2)).applied == 1
        [(until, _)] = sweeper.holds.held.values()
        assert sweeper.earliest_due() == until > T0 + timedelta(seconds=2)
    finally:
        sweeper.close()


@pytest.mark.parametrize("in_workers", [True, False], ids=["visits-by-workers", "visits-by-the-thread"])
@pytest.mark.parametrize("first", [False, True], ids=["target-after-the-requester", "target-before-it"])
def test_a_session_a_request_changed_after_its_visit_is_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_workers: bool, first: bool) -> None:
    """An admin group's request (applied by the sweep's thread) schedules a task in session B of another group,
    which this sweep had visited before (a worker, or the thread itself, when B comes first): what that visit found
    of B is out of date, so B is visited again and the new task's time is what the host waits for, not the next
    full sweep a minute later (third attack review: B first was forgotten until then)."""
    monkeypatch.setattr(visitors, "WORKERS", 2 if in_workers else 0)
    monkeypatch.setattr(visitors, "FIRST_VISITS", MANY)
    world = World(tmp_path)
    listed = [world.new_session() for _ in range(MANY)] if first else []
    ops_group, _ = groups.create(world.central, world.settings, T0, "ops", ["cli"], admin=True)
    ops = sessions.create(world.central, world.settings, T0, ops_group, None)
    listed = listed or [world.new_session() for _ in range(MANY)]
    target = listed[7]  # (a batch after the one ops is in, or one before it)
    sessions.touch(world.central, target.id, T0)  # demo's most recently active session: where "group" demo goes
    sweeper = world.sweeper()
    try:
        sweeper.tick(T0)  # every session seen, the workers started
        for session in [world.session, ops, *listed]:  # every session written again: the next sweep opens each
            world.schedule(T0, at=to_text(T0 + timedelta(hours=5)), session=session)
        world.request(T0, {"action": "schedule_task", "taskId": "task-1779105600000-abcdef", "prompt": "backups",
                           "processAfter": to_text(T0 + timedelta(seconds=30)), "group": "demo"}, ops)
        assert sweeper.tick(T0 + timedelta(seconds=2)).applied == 1
        assert (sweeper._visitors is not None and sweeper._visitors._pool is not None) == in_workers
        if first:  # B is left to the next tick, which the loop makes at once
            assert sweeper.earliest_due() <= T0 + timedelta(seconds=2)
            assert target.id in sweeper.hot(T0 + timedelta(seconds=2))
            sweeper.tick(T0 + timedelta(seconds=2), only=sweeper.hot(T0 + timedelta(seconds=2)))
        assert sweeper.earliest_due() == T0 + timedelta(seconds=30)
        assert target.id in sweeper.hot(T0 + timedelta(seconds=31))
    finally:
        sweeper.close()
