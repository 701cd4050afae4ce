"""The host's threads hand a shared SQLite file to each other through ``db.lock_of``, never through SQLite's busy
handler (which sleeps 1, 2, 5, 10 ms... between tries): a chat's arrival waits for the sweep's visit of its session,
and central.db's writers for each other, the moment the other is done.

SQLite's busy timeout is set to 0 here, so a thread that met another in SQLite's locks would fail at once with
"database is locked": each test passes only if the second thread waited on the lock instead. The first thread holds
its file until the second has asked for the lock (a recording lock says when), so no timing decides anything."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import RecordingRuntime, World, utc

from host.channels import router
from host.scheduling.sweep import Sweeper, SweepResult
from host.store import db, file_locks, inbox, sessions

NOW = utc("2026-05-18T13:00:00")
WAIT_S = 30  # only a broken build waits this long: an event that never comes


class Recording:
    """A file's real lock that also says when a thread other than the holder asks for it."""

    def __init__(self, lock: Any, holder: threading.Thread, asked: threading.Event) -> None:
        self.lock, self.holder, self.asked = lock, holder, asked

    def __enter__(self) -> None:
        if threading.current_thread() is not self.holder:
            self.asked.set()
        self.lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)

    def within(self, seconds: float) -> AbstractContextManager[None]:  # (a visit's)
        if threading.current_thread() is not self.holder:
            self.asked.set()
        return self.lock.within(seconds)


@pytest.fixture
def no_busy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 0)


def _recorded(monkeypatch: pytest.MonkeyPatch, path: Path) -> threading.Event:
    """``path``'s lock, from now on, sets the event returned when a thread other than this one asks for it."""
    holder, asked = threading.current_thread(), threading.Event()
    real = db.lock_of

    def lock_of(p: Path) -> Any:
        return Recording(real(p), holder, asked) if p == path else real(p)

    monkeypatch.setattr(db, "lock_of", lock_of)
    return asked


def _thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """A thread (not started) to run ``work``, and the list it puts what ``work`` returned or raised in."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # reported by the test, not lost in the thread
            out.append(exc)

    return threading.Thread(target=run), out


def _waits_for(asked: threading.Event, path: Path, hold: AbstractContextManager[object],
               work: Callable[[], object]) -> object:
    """Run ``work`` in a thread while this one holds ``path`` (inside ``hold``): it must ask for the file's lock
    (``asked``: see ``_recorded``), wait until this thread lets go, then finish. Returns what it returned."""
    thread, out = _thread(work)
    with hold:
        thread.start()
        assert asked.wait(WAIT_S), f"{path.name}'s lock was never asked for: {out}"
        assert not out, f"the second thread went ahead while {path.name} was held: {out}"
    thread.join(WAIT_S)
    assert len(out) == 1 and not isinstance(out[0], Exception), out
    return out[0]


@contextmanager
def _visiting(path: Path, write: bool) -> Iterator[None]:
    """The file held as a visit holds it: the lock, then a read (or write) transaction open on it."""
    with db.lock_of(path), closing(db.connect(path, "inbound")) as conn:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()
        yield
        conn.execute("COMMIT")


@pytest.mark.parametrize("write", [False, True], ids=["reading", "writing"])
def test_a_chat_arrival_waits_for_the_visit_of_its_session_instead_of_failing_busy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_busy_wait: None, write: bool) -> None:
    world = World(tmp_path)
    arrival = router.Arrival("cli", "chat", {"text": "hello", "sender": "user", "sender_id": None})
    central = db.connect(world.settings.central_db, "central", any_thread=True)
    chatted, _, _ = router.deliver_in(central, world.settings, NOW, world.group, arrival)  # the chat's session
    path = chatted.folder / "inbound.db"
    answer = _waits_for(_recorded(monkeypatch, path), path, _visiting(path, write), lambda: router.deliver_in(
        central, world.settings, NOW, world.group, arrival, answer_first=True))
    central.close()
    assert isinstance(answer, tuple)
    session, message_id, seq = answer
    assert session.id == chatted.id and seq == 4  # the second message of the chat
    with closing(world.inbound(chatted)) as conn:
        assert inbox.get(conn, message_id) is not None


def test_a_sweep_visit_holds_its_session_while_another_thread_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_busy_wait: None) -> None:
    world = World(tmp_path)
    world.schedule(NOW, at="2026-05-18T12:59:00.000Z")  # due: the visit opens the session and finds work
    sweeper = Sweeper(world.settings)

    def sweep() -> object:
        try:
            return sweeper.tick(NOW)
        finally:
            sweeper.close()  # (its central.db connection belongs to the sweep's thread)

    path = world.session.folder / "inbound.db"
    result = _waits_for(_recorded(monkeypatch, path), path, _visiting(path, write=True), sweep)
    assert isinstance(result, SweepResult) and result.errors == 0 and result.woken == 1, result


def test_central_writers_of_one_process_wait_for_each_other_instead_of_failing_busy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_busy_wait: None) -> None:
    path = World(tmp_path).settings.central_db
    asked = _recorded(monkeypatch, path)
    first = db.connect(path, "central")  # (after the recording lock is in place: a connection takes it when opened)
    second = db.connect(path, "central", any_thread=True)

    @contextmanager
    def writing() -> Iterator[None]:
        with db.transaction(first):
            first.execute("UPDATE sessions SET last_active_at = '2026-05-18T13:00:00.000Z'")
            yield

    def write() -> str:
        with db.transaction(second):
            second.execute("UPDATE sessions SET last_active_at = '2026-05-18T13:00:01.000Z'")
        return "written"

    assert _waits_for(asked, path, writing(), write) == "written"
    first.close()
    second.close()


@dataclass
class SlowStop(RecordingRuntime):
    """A runtime whose stop of a runner takes until the test lets it finish (a Docker engine removing a container,
    or waiting for a start in flight: up to minutes)."""

    stopping: threading.Event = field(default_factory=threading.Event)
    freed: threading.Event = field(default_factory=threading.Event)

    def stop(self, session_id: str) -> None:
        self.stopping.set()
        assert self.freed.wait(2 * WAIT_S), "the test never let the stop finish"  # (longer than any wait of the test)
        super().stop(session_id)


def test_an_arrival_goes_in_while_a_visit_kills_the_stuck_runner_of_its_session(
        tmp_path: Path, no_busy_wait: None) -> None:
    """A visit holds its session's inbox only while it reads and writes it: a chat (or a webhook, or a Matrix
    message on the host's loop) never waits for the runtime to stop a stuck runner."""
    world = World(tmp_path)
    arrival = router.Arrival("cli", "chat", {"text": "hello", "sender": "user", "sender_id": None})
    central = db.connect(world.settings.central_db, "central", any_thread=True)
    chatted, first, _ = router.deliver_in(central, world.settings, NOW, world.group, arrival)
    runtime = SlowStop()
    sweeper = world.sweeper(runtime)
    assert sweeper.tick(NOW).woken == 1  # the chat's runner
    sweeper.close()  # (its central.db connection belongs to this thread; the next sweep opens its own)
    generation = runtime.started[-1][2]
    world.ack(first, "processing", NOW + timedelta(seconds=1), generation=generation, session=chatted)
    swept: list[object] = []

    def sweep() -> None:  # no heartbeat 31 minutes after the start: the visit kills the runner
        try:
            swept.append(sweeper.tick(NOW + timedelta(minutes=31)))
        finally:
            sweeper.close()

    sweeping = threading.Thread(target=sweep)
    sweeping.start()
    try:
        assert runtime.stopping.wait(WAIT_S), "the visit never stopped the stuck runner"
        answered = _waits_for_nothing(
            lambda: router.deliver_in(central, world.settings, NOW, world.group, arrival, answer_first=True))
    finally:
        runtime.freed.set()
        sweeping.join(WAIT_S)
    central.close()
    assert isinstance(answered, tuple) and answered[0].id == chatted.id, answered
    assert len(swept) == 1 and isinstance(swept[0], SweepResult) and swept[0].errors == 0, swept
    assert runtime.stopped == [chatted.id]
    with closing(world.inbound(chatted)) as conn:
        assert inbox.get(conn, answered[1]) is not None


def _waits_for_nothing(work: Callable[[], object]) -> object:
    """What ``work`` returned, run in a thread that must finish while this one waits (WAIT_S at most)."""
    thread, out = _thread(work)
    thread.start()
    thread.join(WAIT_S)
    assert len(out) == 1 and not isinstance(out[0], Exception), f"the work was still waiting, or failed: {out}"
    return out[0]


def test_a_wait_for_a_file_another_thread_holds_ends_as_a_busy_wait_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads queued behind one stuck in SQLite's busy wait (a runner keeping its inbox read-locked) must not wait a
    busy timeout each in turn: the lock's wait is bounded as SQLite's is, and fails with SQLite's error."""
    monkeypatch.setattr(file_locks, "BUSY_TIMEOUT_S", 0)  # (the bound itself; 0: a held lock fails at once)
    world = World(tmp_path)
    arrival = router.Arrival("cli", "chat", {"text": "hello", "sender": "user", "sender_id": None})
    central = db.connect(world.settings.central_db, "central", any_thread=True)
    chatted, _, _ = router.deliver_in(central, world.settings, NOW, world.group, arrival)
    with db.lock_of(chatted.folder / "inbound.db"):
        refused = _waits_for_nothing(
            lambda: _raised(lambda: router.deliver_in(central, world.settings, NOW, world.group, arrival)))
    with db.transaction(central):  # central.db's lock, held by this thread
        other = db.connect(world.settings.central_db, "central", any_thread=True)
        blocked = _waits_for_nothing(lambda: _raised(lambda: sessions.touch(other, chatted.id, NOW)))
    other.close()
    central.close()
    assert refused == blocked == "database is locked"
    assert [row["seq"] for row in world.rows(session=chatted)] == [2]  # the refused arrival wrote nothing


def _raised(work: Callable[[], object]) -> str:
    try:
        work()
    except db.Error as exc:
        return str(exc)
    raise AssertionError("it went ahead while another thread held the file")
