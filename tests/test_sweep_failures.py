"""DESIGN §6.7 and §12.4: stuck and dead runners, retries with backoff, auto-pause; running occurrences under
pause and cancel; one broken session never stops the others."""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kit import RecordingRuntime, World, utc

from host.runtimes import pool
from host.scheduling import sweep, tasks
from host.store import db, inbox
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _running(world: World, runtime: RecordingRuntime, at=T0):  # type: ignore[no-untyped-def]
    """A due one-shot task, woken at ``at``; returns (sweeper, task id, generation of the started runner)."""
    task = world.schedule(at - timedelta(minutes=1), at=to_text(at))
    sweeper = world.sweeper(runtime)
    assert sweeper.tick(at).woken == 1
    generation = runtime.started[-1][2]
    return sweeper, task, generation


def _beat(world: World, generation: str, when) -> None:  # type: ignore[no-untyped-def]
    path = world.session.folder / ".heartbeat"
    path.write_text(generation)
    os.utime(path, (when.timestamp(), when.timestamp()))


def test_heartbeat_older_than_30_minutes_kills_and_retries(world: World) -> None:
    runtime = RecordingRuntime()
    sweeper, task, gen = _running(world, runtime)
    world.ack(task, "processing", T0 + timedelta(seconds=1), generation=gen)
    _beat(world, gen, T0 + timedelta(seconds=2))
    assert sweeper.tick(T0 + timedelta(minutes=29)).retried == 0 and runtime.stopped == []
    result = sweeper.tick(T0 + timedelta(minutes=31))
    assert runtime.stopped == [world.session.id] and result.retried == 1
    [row] = world.rows(task)
    assert (row["status"], row["tries"]) == ("pending", 1)
    assert row["process_after"] == to_text(T0 + timedelta(minutes=31, seconds=5))
    with closing(world.outbound()) as conn:  # the dead runner's claim is cleared for the next generation
        assert conn.execute("SELECT COUNT(*) FROM processing_ack").fetchone()[0] == 0


def test_a_runner_killed_as_stuck_is_not_counted_idle(world: World) -> None:
    """Else the pool would stop it again for a slot another start wants, and start one runner too many."""
    runtime = RecordingRuntime()
    sweeper, task, gen = _running(world, runtime)
    world.ack(task, "processing", T0 + timedelta(seconds=1), generation=gen)
    _beat(world, gen, T0 + timedelta(seconds=2))
    sweeper.tick(T0 + timedelta(minutes=31))
    assert runtime.stopped == [world.session.id] and sweeper.runners is not None
    assert world.session.id not in sweeper.runners.idle_since


def test_claim_with_no_heartbeat_since_is_killed_after_60_s(world: World) -> None:
    runtime = RecordingRuntime()
    sweeper, task, gen = _running(world, runtime)
    _beat(world, gen, T0 + timedelta(seconds=1))
    world.ack(task, "processing", T0 + timedelta(seconds=5), generation=gen)
    assert sweeper.tick(T0 + timedelta(seconds=60)).retried == 0
    assert world.rows(task)[0]["status"] == "processing"
    sweeper.tick(T0 + timedelta(seconds=70))
    assert runtime.stopped == [world.session.id]


def test_a_running_tools_declared_timeout_widens_the_limits(world: World) -> None:
    runtime = RecordingRuntime()
    sweeper, task, gen = _running(world, runtime)
    world.ack(task, "processing", T0 + timedelta(seconds=5), generation=gen)
    with closing(world.outbound()) as conn:
        conn.execute("INSERT INTO container_state(id, current_tool, tool_timeout_s, updated_at)"
                     " VALUES (1, 'bash', 600, ?)", (to_text(T0),))
    sweeper.tick(T0 + timedelta(seconds=300))
    assert runtime.stopped == []
    sweeper.tick(T0 + timedelta(seconds=700))
    assert runtime.stopped == [world.session.id]


def test_fresh_runner_is_not_killed_for_its_predecessors_artifacts(world: World) -> None:
    runtime = RecordingRuntime()
    old_task = world.schedule(T0 - timedelta(hours=2), at=to_text(T0 - timedelta(hours=1)))
    world.ack(old_task, "processing", T0 - timedelta(hours=1), generation="gen-old")
    _beat(world, "gen-old", T0 - timedelta(hours=1))
    sweeper, _task, _gen = _running(world, runtime)  # no runner alive: the old claim is released at once
    assert world.rows(old_task)[0]["tries"] == 1
    world.ack(old_task, "processing", T0 - timedelta(hours=1), generation="gen-old")  # a leftover that reappears
    result = sweeper.tick(T0 + timedelta(seconds=30))
    assert runtime.stopped == []  # an hour-old claim and heartbeat, but not this generation's
    assert result.retried == 0 and world.rows(old_task)[0]["status"] == "pending"


def test_retries_back_off_then_fail_and_the_series_goes_on(world: World) -> None:
    series = world.schedule(T0 - timedelta(minutes=1), recurrence="0 9 * * *")
    sweeper, now, delays = world.sweeper(), T0, []
    for _ in range(6):
        row = world.live(series)[0]
        world.ack(row["id"], "processing", now)
        result = sweeper.tick(now)  # no live runner (a one-off sweep): the claim is released at once
        row = world.rows(series)[0]
        if row["status"] == "failed":
            break
        delays.append(round((utc(row["process_after"][:-1]) - now).total_seconds()))
        now = utc(row["process_after"][:-1])
    assert delays == [5, 10, 20, 40, 80]
    assert (result.failed, result.cloned) == (1, 1) and row["tries"] == 6  # (the clone was not counted)
    assert [r["status"] for r in world.rows(series)] == ["failed", "pending"]
    assert world.live(series)[0]["process_after"] == "2026-05-19T13:00:00.000Z"


def test_a_message_given_up_after_its_last_try_says_why_in_its_inbox(world: World) -> None:
    """A task's run says why it failed (ncl tasks runs); a chat message or a queue job only ended 'failed', the
    reason in the host's log alone: an app reading its job's session found no why."""
    with closing(world.inbound()) as conn, db.transaction(conn):
        inbox.arrive(conn, {"id": "msg-1779109200000-abcdef", "kind": "chat", "timestamp": to_text(T0),
                            "content": '{"text": "hi", "sender": "user"}'},
                     {"channel_type": "cli", "platform_id": None, "thread_id": None})
    sweeper, now = world.sweeper(), T0
    for _ in range(6):
        world.ack("msg-1779109200000-abcdef", "processing", now)
        sweeper.tick(now)
        row = world.rows()[0]
        now = max(now, utc(row["process_after"][:-1]) if row["process_after"] else now) + timedelta(seconds=1)
    assert world.rows()[0]["status"] == "failed"
    assert world.notices() == [{"text": "The chat message msg-1779109200000-abcdef was given up: its runner died or "
                                        "stalled 6 times.", "sender": "system", "notice": "message_failed",
                                "trigger": 0}]


def test_a_one_off_sweep_leaves_a_runner_an_earlier_one_started_at_its_work(world: World) -> None:
    """A cron's ``ncl host sweep --once`` every minute released the claim of the runner the last one started (it
    outlives its sweep) as a dead runner's, and woke the session, whose next start stopped that runner: every turn
    longer than the minute was killed, and its task failed after five. The heartbeat is read by the real clock."""
    task = world.schedule(T0 - timedelta(minutes=1), at=to_text(T0 - timedelta(seconds=30)))
    world.ack(task, "processing", T0, generation="gen-earlier-sweep")
    runtime = RecordingRuntime()
    one_off = sweep.Sweeper(world.settings, world.sweeper(runtime).runners, one_off=True)
    _beat(world, "gen-earlier-sweep", utc_now := datetime.now(UTC))
    result = one_off.tick(T0 + timedelta(seconds=30))
    assert (result.retried, result.woken, runtime.started) == (0, 0, [])
    assert [(r["status"], r["tries"]) for r in world.rows(task)] == [("pending", 0)]
    _beat(world, "gen-earlier-sweep", utc_now - timedelta(seconds=61))  # silent a minute: dead, as any runner
    result = one_off.tick(T0 + timedelta(seconds=31))
    assert result.retried == 1 and world.rows(task)[0]["tries"] == 1
    _beat(world, "gen-earlier-sweep", utc_now + timedelta(days=365))  # a runner's time to come: never fresh
    assert not pool.others_at_work(world.session)
    done = world.schedule(T0, at=to_text(T0 - timedelta(seconds=30)))  # one done with its turn is visited as ever
    world.ack(done, "completed", T0, generation="gen-done", outcome="ran")
    _beat(world, "gen-done", utc_now)
    assert not pool.others_at_work(world.session)
    one_off.tick(T0 + timedelta(seconds=32))
    assert world.rows(done)[0]["status"] == "completed"


def test_a_released_claim_never_runs_its_row_before_it_was_due(world: World) -> None:
    task = world.schedule(T0, at="2027-01-01T00:00:00.000Z")
    world.ack(task, "processing", T0)  # a claim on a row not yet due, whose runner is gone
    world.sweeper().tick(T0)
    [row] = world.rows(task)
    assert (row["status"], row["tries"], row["process_after"]) == ("pending", 1, "2027-01-01T00:00:00.000Z")


def test_three_consecutive_failures_pause_the_series_with_one_notice(world: World) -> None:
    series = world.schedule(T0 - timedelta(minutes=1), recurrence="0 9 * * *")
    sweeper = world.sweeper()
    for day in range(3):
        row = world.live(series)[0]
        assert row["status"] == "pending"
        world.run_occurrence(sweeper, row["id"], utc(row["process_after"][:-1]) + timedelta(seconds=1),
                             outcome="failed")
        assert day < 2 or world.live(series)[0]["status"] == "paused"
    notices = [n for n in world.notices() if n["notice"] == "task_auto_paused"]
    assert len(notices) == 1 and notices[0]["trigger"] == 0


def test_pause_while_running_lets_the_run_finish_and_next_waits_paused(world: World) -> None:
    runtime = RecordingRuntime()
    series = world.schedule(T0 - timedelta(minutes=1), recurrence="0 9 * * *")
    sweeper = world.sweeper(runtime)
    sweeper.tick(T0)
    gen = runtime.started[-1][2]
    world.ack(series, "processing", T0, generation=gen)
    _beat(world, gen, T0)
    sweeper.tick(T0 + timedelta(seconds=1))
    with closing(world.inbound()) as conn:
        assert tasks.pause(conn, series, T0 + timedelta(seconds=2), world.policy, folder=world.session.folder) == 1
    assert [r["status"] for r in world.rows(series)] == ["processing", "paused"]
    world.ack(series, "completed", T0 + timedelta(seconds=3), generation=gen, outcome="ran")
    assert sweeper.tick(T0 + timedelta(seconds=3)).cloned == 0
    assert [r["status"] for r in world.rows(series)] == ["completed", "paused"]


def test_cancel_while_running_lets_it_finish_and_nothing_follows(world: World) -> None:
    runtime = RecordingRuntime()
    series = world.schedule(T0 - timedelta(minutes=1), recurrence="0 9 * * *")
    sweeper = world.sweeper(runtime)
    sweeper.tick(T0)
    gen = runtime.started[-1][2]
    world.ack(series, "processing", T0, generation=gen)
    sweeper.tick(T0)
    with closing(world.inbound()) as conn:
        assert tasks.cancel(conn, series, T0, folder=world.session.folder) == 1
    world.ack(series, "completed", T0 + timedelta(seconds=3), generation=gen, outcome="ran")
    sweeper.tick(T0 + timedelta(seconds=3))
    assert [r["status"] for r in world.rows(series)] == ["completed"]
    assert world.live(series) == []
    assert [r["outcome"] for r in world.runs(series)] == ["cancelled", "ran"]


def test_a_broken_session_is_logged_and_the_others_are_swept(world: World,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    broken = world.new_session()
    (broken.folder / "inbound.db").write_bytes(b"this is not a database" * 100)
    healthy = world.new_session()
    world.schedule(T0 - timedelta(minutes=1), at=to_text(T0), session=healthy)
    with caplog.at_level(logging.WARNING):
        result = world.sweeper().tick(T0)
    assert (result.errors, result.woken) == (1, 1)
    assert [r.session for r in caplog.records if getattr(r, "action", None) == "session_failed"] == [broken.id]


def test_a_session_broken_for_good_is_warned_about_once_and_its_recovery_said(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    broken = world.new_session()
    good = (broken.folder / "inbound.db").read_bytes()
    (broken.folder / "inbound.db").write_bytes(b"this is not a database" * 100)
    sweeper = world.sweeper()

    def said(action: str, level: int) -> int:
        return sum(getattr(r, "action", None) == action and r.levelno == level for r in caplog.records)

    with caplog.at_level(logging.DEBUG):
        for n in range(3):
            assert sweeper.tick(T0 + timedelta(minutes=n)).errors == 1
        assert (said("session_failed", logging.WARNING), said("session_failed", logging.DEBUG)) == (1, 2)
        (broken.folder / "inbound.db").write_bytes(good)
        assert sweeper.tick(T0 + timedelta(minutes=3)).errors == 0
        assert said("session_recovered", logging.INFO) == 1
        shutil.rmtree(broken.folder)  # a new problem is news again
        assert sweeper.tick(T0 + timedelta(minutes=4)).errors == 1
        assert said("session_failed", logging.WARNING) == 2


def test_a_failing_session_is_held_off_for_longer_each_time_and_the_loop_comes_back_for_it(world: World) -> None:
    """Whatever made its visit fail (a runner that keeps its files locked, see tests/security/test_locked_files.py,
    or a broken file), it is not visited again for 0.5 s, then 1, 2... up to 8 s: the loop wakes when that ends.
    Its hold goes with the session."""
    broken = world.new_session()
    good = (broken.folder / "inbound.db").read_bytes()
    (broken.folder / "inbound.db").write_bytes(b"this is not a database" * 100)
    sweeper = world.sweeper()
    assert sweeper.tick(T0).errors == 1
    assert sweeper.holds.held[broken.id] == (T0 + timedelta(seconds=0.5), 0.5)
    assert sweeper.earliest_due() == T0 + timedelta(seconds=0.5)  # (nothing else is due)
    assert broken.id in sweeper.hot(T0)  # a partial tick then looks at it (else a past end woke the loop for ever)
    assert sweeper.tick(T0 + timedelta(seconds=0.4)).sessions_checked == 1  # the other session only
    for at, pause in [(0.5, 1.0), (1.5, 2.0), (3.5, 4.0), (7.5, 8.0), (15.5, 8.0)]:
        assert sweeper.tick(T0 + timedelta(seconds=at)).errors == 1
        assert sweeper.holds.held[broken.id] == (T0 + timedelta(seconds=at + pause), pause)
    (broken.folder / "inbound.db").write_bytes(good)
    assert sweeper.tick(T0 + timedelta(seconds=23.5)).errors == 0 and sweeper.holds.held == {}
    (broken.folder / "inbound.db").write_bytes(b"this is not a database" * 100)
    assert sweeper.tick(T0 + timedelta(seconds=24)).errors == 1 and broken.id in sweeper.holds.held
    with closing(world.central) as central:
        central.execute("UPDATE sessions SET status = 'closed' WHERE id = ?", (broken.id,))
    assert sweeper.tick(T0 + timedelta(seconds=30)).errors == 0
    assert sweeper.holds.held == {} and sweeper.failing == {}


def test_slow_visits_hold_off_only_a_session_whose_runner_is_alive(world: World,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Slowness is held against a live runner only (one may let go of its files just before each wait ends): a
    session with none is slow only by the host's own work (a disk stall), and its next arrival must not wait."""
    clock = [0.0]
    monkeypatch.setattr(sweep, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    visit = sweep.Sweeper._sweep_one

    def slow(sweeper: sweep.Sweeper, *args: Any) -> None:
        clock[0] += 1.0
        visit(sweeper, *args)

    monkeypatch.setattr(sweep.Sweeper, "_sweep_one", slow)
    world.schedule(T0, at=to_text(T0 + timedelta(days=1)))
    sweeper = world.sweeper()
    for n in range(5):
        assert sweeper.tick(T0 + timedelta(seconds=n)).sessions_checked == 1
    assert sweeper.holds.held == {} and sweeper.holds.slow == {}


def test_deleted_session_folder_does_not_stop_the_sweep(world: World) -> None:
    gone = world.new_session()
    world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    shutil.rmtree(gone.folder)
    result = world.sweeper().tick(T0)
    assert (result.errors, result.woken) == (1, 1)


def test_idle_sessions_are_not_opened(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    others = [world.new_session() for _ in range(9)]
    for session in others:
        world.schedule(T0, at=to_text(T0 + timedelta(days=1)), session=session)
    # The sweep looks an hour after the files were written (past the coarse-ctime guard; a ctime cannot be set back).
    monkeypatch.setattr(sweep.clock, "filesystem_ns", lambda: time.time_ns() + 3600 * 10**9)
    sweeper = world.sweeper()
    assert sweeper.tick(T0).sessions_opened == 10
    assert sweeper.tick(T0 + timedelta(seconds=1)).sessions_opened == 0
    world.schedule(T0, at=to_text(T0 + timedelta(seconds=5)), session=others[3])  # a write moves its ctime
    second = sweeper.tick(T0 + timedelta(seconds=2))
    assert (second.sessions_checked, second.sessions_opened) == (10, 1)
    assert sweeper.earliest_due() == T0 + timedelta(seconds=5)
    assert sweeper.tick(T0 + timedelta(seconds=5)).woken == 1  # due by the cached time, without a write


class TestAgentRequests:
    def _reject(self, world: World, content: dict[str, object]) -> str:
        world.request(T0, content)
        result = world.sweeper().tick(T0)
        assert result.applied == 0
        assert [r for r in world.rows() if r["kind"] == "task"] == []
        [notice] = world.notices()
        assert notice["notice"] == "request_rejected" and notice["trigger"] == 0
        with closing(world.inbound()) as conn:
            assert conn.execute("SELECT status FROM delivered").fetchone()[0] == "rejected"
        return str(notice["text"])

    def test_too_frequent_recurrence_is_refused(self, world: World) -> None:
        text = self._reject(world, {"action": "schedule_task", "taskId": "task-1779109200000-aaaaaa",
                                    "prompt": "spam", "recurrence": "*/1 * * * *"})
        assert "300" in text

    @pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 9 * * *", "every morning"])
    def test_invalid_cron_is_refused_saying_what_is_valid(self, world: World, expr: str) -> None:
        text = self._reject(world, {"action": "schedule_task", "taskId": "task-1779109200000-aaaaaa",
                                    "prompt": "x", "recurrence": expr})
        assert "5" in text or "never" in text

    def test_unparseable_time_is_refused(self, world: World) -> None:
        self._reject(world, {"action": "schedule_task", "taskId": "task-1779109200000-aaaaaa", "prompt": "x",
                             "processAfter": "tomorrow-ish"})

    def test_malformed_or_used_task_id_is_refused(self, world: World) -> None:
        self._reject(world, {"action": "schedule_task", "taskId": "../../etc", "prompt": "x"})

    def test_requests_cannot_touch_another_sessions_task(self, world: World) -> None:
        other = world.new_session()
        theirs = world.schedule(T0, recurrence="0 9 * * *", session=other)
        world.request(T0, {"action": "cancel_task", "taskId": theirs})
        world.sweeper().tick(T0)
        assert [r["status"] for r in world.rows(theirs, session=other)] == ["pending"]
        assert [n["notice"] for n in world.notices()] == ["request_rejected"]

    def test_each_request_is_applied_exactly_once(self, world: World) -> None:
        world.request(T0, {"action": "schedule_task", "taskId": "task-1779109200000-aaaaaa", "prompt": "x",
                           "recurrence": "0 9 * * *"})
        sweeper = world.sweeper()
        assert sweeper.tick(T0).applied == 1
        assert sweeper.tick(T0 + timedelta(seconds=1)).applied == 0
        assert len(world.rows()) == 1


def test_a_run_lasting_three_sweep_intervals_executes_once(world: World) -> None:
    runtime = RecordingRuntime()
    series = world.schedule(T0 - timedelta(minutes=1), recurrence="0 9 * * *")
    sweeper = world.sweeper(runtime)
    sweeper.tick(T0)
    gen = runtime.started[-1][2]
    world.ack(series, "processing", T0 + timedelta(seconds=1), generation=gen)
    for minute in (1, 2, 3):
        _beat(world, gen, T0 + timedelta(minutes=minute, seconds=-5))
        result = sweeper.tick(T0 + timedelta(minutes=minute))
        assert (result.woken, result.retried, result.cloned, result.missed) == (0, 0, 0, 0)
        assert [r["status"] for r in world.rows(series)] == ["processing"]
    world.ack(series, "completed", T0 + timedelta(minutes=3, seconds=10), generation=gen, outcome="ran")
    assert sweeper.tick(T0 + timedelta(minutes=3, seconds=11)).cloned == 1
    assert len(runtime.started) == 1 and runtime.stopped == []
    assert [r["outcome"] for r in world.runs(series)] == ["ran"]
