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
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc

from host.channels import router
from host.scheduling.sweep import Sweeper, SweepResult
from host.store import db, inbox

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


def _waits_for(asked: threading.Event, path: Path, hold: AbstractContextManager[object],
               work: Callable[[], object]) -> object:
    """Run ``work`` in a thread while this one holds ``path`` (inside ``hold``): it must ask for the file's lock
    (``asked``: see ``_recorded``), wait until this thread lets go, then finish. Returns what it returned."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # reported by the test, not lost in the thread
            out.append(exc)

    thread = threading.Thread(target=run)
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
    answer = _waits_for(_recorded(monkeypatch, path), path, _visiting(path, write),
                        lambda: router.deliver_in(central, world.settings, NOW, world.group, arrival, stamp=False))
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
