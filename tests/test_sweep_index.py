"""Issue 14: what a sweep learned of each session outlives the host (central.db ``session_index``), so a restarted
host opens only the sessions whose files changed or whose due time has come; an unchanged outbound.db is not read
again for a session that waits. A runner's write is never missed: the signature holds ctimes, which no runner can
set back."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc

from host.scheduling import sweep, visit
from host.settings import load
from host.store import outbox, session_index
from host.store.sessions import Session
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # The sweeps look an hour after the files were last written: past the coarse-ctime guard, without a sleep.
    monkeypatch.setattr(sweep.clock, "filesystem_ns", lambda: time.time_ns() + 3600 * 10**9)
    return World(tmp_path)


def _restarted(world: World, first: sweep.Sweeper, **settings: str) -> sweep.Sweeper:
    first.close()
    if not settings:
        return world.sweeper()
    environ = {"NCL_DATA_DIR": str(world.settings.data_dir), **settings}
    return sweep.Sweeper(load(environ=environ, cwd=world.settings.data_dir.parent, system_tz="UTC"))


def _set_back(session: Session) -> None:
    """What a runner can do to hide a write from mtimes: set them back (a ctime moves all the same)."""
    old = T0.timestamp() - 3600
    for path in (session.folder, session.folder / "outbound.db"):
        os.utime(path, (old, old))


def test_a_restarted_host_opens_only_the_sessions_that_changed_or_are_due(world: World) -> None:
    waiting = [world.new_session() for _ in range(5)]
    tasks = [world.schedule(T0, at=to_text(T0 + timedelta(days=1)), session=s) for s in waiting]
    soon = world.new_session()
    world.schedule(T0, at=to_text(T0 + timedelta(minutes=10)), session=soon)
    first = world.sweeper()
    assert first.tick(T0).sessions_opened == 7
    assert first.tick(T0 + timedelta(seconds=1)).sessions_opened == 0
    # While no host runs: the operator adds a task to one session, a runner asks to pause another's task.
    world.schedule(T0, at=to_text(T0 + timedelta(days=2)), session=waiting[0])
    world.request(T0, {"action": "pause_task", "taskId": tasks[1]}, session=waiting[1])
    _set_back(waiting[1])
    restarted = _restarted(world, first)
    result = restarted.tick(T0 + timedelta(minutes=15))
    assert (result.sessions_checked, result.sessions_opened, result.applied, result.woken) == (7, 3, 1, 1)
    assert [r["status"] for r in world.rows(tasks[1], session=waiting[1])] == ["paused"]
    again = _restarted(world, restarted)  # soon is still due; the session whose visit wrote sees its own write
    assert again.tick(T0 + timedelta(minutes=16)).sessions_opened == 2


def _rewritten(path: Path) -> None:
    """The file's first page written again as it was, its times then set back: nothing but its ctime tells."""
    before = os.stat(path)
    with open(path, "r+b") as file:
        page = file.read(4096)
        file.seek(0)
        file.write(page)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _replaced(path: Path) -> None:
    """A copy of the file, its times kept, renamed over it: same size, same mtime, another inode."""
    copy = path.with_name(path.name + ".new")
    shutil.copy2(path, copy)
    os.replace(copy, path)


@pytest.mark.parametrize(("change", "name"), [
    (_rewritten, "outbound.db"), (_rewritten, "inbound.db"), (_replaced, "outbound.db"), (_replaced, "inbound.db"),
    (lambda path: path.unlink(), "outbound.db")])
def test_any_change_to_either_file_is_seen_by_its_two_stats(world: World, change: Callable[[Path], None],
                                                            name: str) -> None:
    # The folder is not looked at: both journals are kept for good, so a commit makes or deletes no name in it.
    idle, changed = world.new_session(), world.new_session()
    sweeper = world.sweeper()
    assert [sweeper.tick(T0 + timedelta(seconds=n)).sessions_opened for n in range(2)] == [3, 0]
    change(changed.folder / name)
    assert sweeper.tick(T0 + timedelta(seconds=2)).sessions_opened == 1
    assert sweeper.tick(T0 + timedelta(seconds=3)).sessions_opened == 0
    assert idle.id in sweeper.seen and not sweeper.failing


def test_a_host_in_another_zone_opens_every_session_once(world: World) -> None:
    other = world.new_session()
    task = world.schedule(T0, recurrence="0 9 * * *", session=other)
    first = world.sweeper()
    assert first.tick(T0).sessions_opened == 2
    tokyo = _restarted(world, first, TZ="Asia/Tokyo")
    assert tokyo.tick(T0).sessions_opened == 2
    [row] = world.rows(task, session=other)
    assert row["zone"] == "Asia/Tokyo"  # re-planned in the new zone
    # Once more the session it re-planned (a visit's own write shows in the next signature), then none.
    again = _restarted(world, tokyo, TZ="Asia/Tokyo")
    assert again.tick(T0).sessions_opened == 1
    assert _restarted(world, again, TZ="Asia/Tokyo").tick(T0).sessions_opened == 0


def test_a_waiting_sessions_unchanged_outbound_db_is_read_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    task = world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    reads: list[Path] = []
    real: Callable[..., outbox.Outbox] = outbox.read

    def counted(path: Path, *args: Any, **kwargs: Any) -> outbox.Outbox:
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(visit.outbox, "read", counted)
    sweeper = world.sweeper()  # no runners: the task stays due, and each tick visits the session
    assert [sweeper.tick(T0 + timedelta(seconds=n)).woken for n in range(3)] == [1, 1, 1]
    assert len(reads) == 1
    world.ack(task, "completed", T0 + timedelta(seconds=3), outcome="ran")
    _set_back(world.session)
    result = sweeper.tick(T0 + timedelta(seconds=4))
    assert len(reads) == 2 and result.woken == 0
    assert [r["status"] for r in world.rows(task)] == ["completed"]


def test_a_due_session_whose_files_did_not_change_is_not_opened_again_for_a_waiting_wake(world: World) -> None:
    world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    sweeper = world.sweeper()  # no runners: the task stays due, and each tick wakes it again
    ticks = [sweeper.tick(T0 + timedelta(seconds=n)) for n in range(3)]
    assert [(t.woken, t.sessions_opened) for t in ticks] == [(1, 1), (1, 0), (1, 0)]
    world.schedule(T0, at=to_text(T0 + timedelta(days=1)))  # a write: the next tick opens it again
    assert (sweeper.tick(T0 + timedelta(seconds=3)).sessions_opened, sweeper.tick(T0 + timedelta(seconds=4))
            .sessions_opened) == (1, 0)


def test_a_due_session_is_opened_again_when_a_recurring_task_falls_due(world: World) -> None:
    world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    daily = world.schedule(T0 - timedelta(minutes=1), recurrence="5 9 * * *")  # due at 13:05 UTC
    sweeper = world.sweeper()
    assert [sweeper.tick(T0 + timedelta(minutes=n)).sessions_opened for n in (0, 1, 4)] == [1, 0, 0]
    assert sweeper.tick(T0 + timedelta(minutes=5)).sessions_opened == 1  # the misfire rule judges the slot
    assert [r["process_after"] for r in world.rows(daily)] == [to_text(T0 + timedelta(minutes=5))]


def test_a_due_session_is_opened_again_when_the_clock_went_back(world: World) -> None:
    world.schedule(T0 - timedelta(minutes=1), at=to_text(T0))
    sweeper = world.sweeper()
    assert [sweeper.tick(T0 + timedelta(minutes=n)).sessions_opened for n in (5, 6, 2)] == [1, 0, 1]


def test_the_index_is_saved_a_bounded_number_of_rows_to_a_transaction(world: World) -> None:
    # central.db's other writers (an arrival's) wait for a commit of it: never one of thousands of rows.
    statements: list[str] = []
    world.central.set_trace_callback(statements.append)
    rows = 2 * session_index.SAVE_CHUNK + 1
    changed: dict[str, session_index.Entry | None] = {
        f"sess-{n}": session_index.Entry((n, 1, 2), None) for n in range(rows)}
    session_index.save(world.central, "here", changed)
    assert sum(s == "COMMIT" for s in statements) == 3
    changed = {sid: None for sid in list(changed)[:-1]}  # all but the last dropped
    session_index.save(world.central, "here", changed)
    assert sum(s == "COMMIT" for s in statements) == 5
    assert [tuple(row) for row in session_index.load(world.central, "here")] == [
        (f"sess-{rows - 1}", f"{rows - 1} 1 2", None)]


def test_the_index_comes_back_in_the_order_of_the_books_due_times(world: World) -> None:
    """Sorted by SQLite, which lets other threads run meanwhile: the book it fills is then in order already, where a
    sort of a restart's 10,000 entries held the GIL 7 ms (every answer waiting; 100,000: about 0.1 s)."""
    dues = ["2026-05-19T09:00:00.000Z", "", None, "2026-05-18T14:00:00.000Z", "2026-05-18T14:00:00.000Z"]
    session_index.save(world.central, "here", {f"sess-{n}": session_index.Entry((n,), due)
                                               for n, due in enumerate(dues)})
    loaded = [(due, sid) for sid, _, due in session_index.load(world.central, "here") if due is not None]
    assert loaded == sorted(loaded) and len(loaded) == 4


@pytest.mark.parametrize("fails", [False, True])
def test_the_index_is_saved_as_the_visits_come_in_and_after_a_failed_save_at_the_next_ticks_end(
        world: World, monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    """A big sweep's commits of its index overlap the workers' visits (issue 14.1); a save that failed (central.db
    locked past its busy timeout) is not tried again in that tick, each try a busy timeout waited out."""
    monkeypatch.setattr(session_index, "SAVE_CHUNK", 3)
    saved: list[int] = []
    save = session_index.save

    def counted(conn: Any, valid_in: str, changed: dict[str, session_index.Entry | None]) -> None:
        saved.append(len(changed))
        if fails and len(saved) == 1:
            raise sqlite3.OperationalError("database is locked")
        save(conn, valid_in, changed)

    monkeypatch.setattr(session_index, "save", counted)
    listed = [world.session] + [world.new_session() for _ in range(10)]
    sweeper = world.sweeper()
    assert sweeper.tick(T0).sessions_opened == len(listed)
    assert saved == ([3] if fails else [3, 3, 3, 2])  # (failed: not tried again in this tick, not even at its end)
    if fails:
        assert sweeper.tick(T0).sessions_opened == 0 and saved == [3, 11]  # the next tick's end saves them
    assert len(session_index.load(world.central, session_index.context(sweeper.policy.zone.key))) == len(listed)
