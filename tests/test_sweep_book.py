"""Issue 14 (the event loop is never held): what a running host asks of its sessions at every tick — which are due
by a time, which are busy, which are new, has the list of sessions changed — costs as much as the answer, not a look
at every session. At 10,000 sessions those looks, made for each chat's arrival, held every tick for milliseconds
(``scripts/bench_loop.py``'s idle phase: chat p99 25 ms). The answers must stay exactly those of the looks."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest
from kit import World, utc

from host.scheduling import sweep
from host.scheduling.seen import Book, Seen
from host.store import groups, sessions

T0 = utc("2026-05-18T13:00:00")
TIMES = ["", "2026-05-18T13:00:00.000Z", "2026-05-18T13:00:01.000Z", "2026-05-18T13:00:01.000Z",
         "2026-05-18T14:00:00.000Z", None]


def _looked_at(book: dict[str, Seen]) -> dict[str, object]:
    """The answers as a look at every session gives them."""
    dues = sorted((s.next_due, sid) for sid, s in book.items() if s.next_due is not None)
    return {"due_by": [d for d in dues if d[0] <= TIMES[2]],
            "due_between": [d for d in dues if TIMES[1] < d[0] <= TIMES[4]],
            "first_due": next((due for due, sid in dues if sid not in {"s1", "s2"}), None),
            "busy": {sid for sid, s in book.items() if s.busy}}


def test_the_books_answers_are_those_of_a_look_at_every_session() -> None:
    rng = random.Random(14)
    book, plain = Book(), dict[str, Seen]()
    ids = [f"s{n}" for n in range(12)]
    book.activate(set(ids[:10]))
    for _ in range(3000):
        sid = rng.choice(ids)
        if rng.random() < 0.25:
            book.pop(sid, None)
            plain.pop(sid, None)
        else:
            seen = sweep.AGAIN if rng.random() < 0.1 else Seen((), True, rng.choice(TIMES), rng.random() < 0.3)
            book[sid] = plain[sid] = seen
        assert {"due_by": book.due_by(TIMES[2]), "due_between": book.due_between(TIMES[1], TIMES[4]),
                "first_due": book.first_due({"s1", "s2"}), "busy": book.busy} == _looked_at(plain)
        assert book.unseen == set(ids[:10]) - plain.keys() and dict(book) == plain


def test_a_book_loaded_at_once_answers_as_one_filled_entry_by_entry() -> None:
    entries = [(f"s{n}", Seen((), True, TIMES[n % len(TIMES)], n % 4 == 0)) for n in range(40)]
    loaded, filled = Book(), Book()
    loaded.activate({f"s{n}" for n in range(45)})
    loaded["s3"] = Seen((), True, "", True)  # (an entry it has already stays as it is)
    loaded.load(entries)
    filled["s3"] = Seen((), True, "", True)
    for sid, seen in entries:
        filled.setdefault(sid, seen)
    assert loaded.due_by(TIMES[4]) == filled.due_by(TIMES[4]) and loaded.busy == filled.busy
    assert dict(loaded) == dict(filled) and loaded.unseen == {f"s{n}" for n in range(40, 45)}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _reads_of_the_list(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    active_rows = sessions.active_rows

    def counted(conn: object) -> object:
        reads.append(1)
        return active_rows(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep.sessions, "active_rows", counted)
    return reads


def test_the_list_of_sessions_is_read_again_only_when_it_changed(world: World,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _reads_of_the_list(monkeypatch)
    sweeper = world.sweeper()
    sweeper.tick(T0)
    assert len(reads) == 1
    sessions.touch(world.central, world.session.id, T0)  # (each chat's arrival: the list is as it was)
    sweeper.tick(T0 + timedelta(seconds=1), only={world.session.id})
    assert len(reads) == 1
    other = world.new_session()
    sweeper.tick(T0 + timedelta(seconds=2), only={world.session.id})
    assert len(reads) == 2 and other.id in sweeper.seen  # a new session is looked at by a partial tick too
    sessions.close(world.central, [other.id])
    sweeper.tick(T0 + timedelta(seconds=3))
    assert len(reads) == 3 and other.id not in sweeper.seen
    sessions.reopen(world.central, world.settings, other.id)
    sweeper.tick(T0 + timedelta(seconds=4))
    assert len(reads) == 4 and other.id in sweeper.seen
    groups.delete(world.central, world.group)
    sweeper.tick(T0 + timedelta(seconds=5))
    assert len(reads) == 5 and len(sweeper.seen) == 0


def test_one_session_closed_and_another_reopened_between_two_ticks_is_seen(world: World) -> None:
    """The same number of active sessions, another list: a count of rows could not tell."""
    sweeper = world.sweeper()
    other = world.new_session()
    sessions.close(world.central, [other.id])
    sweeper.tick(T0)
    assert set(sweeper.seen) == {world.session.id}
    sessions.close(world.central, [world.session.id])
    sessions.reopen(world.central, world.settings, other.id)
    sweeper.tick(T0 + timedelta(seconds=1), only=set())
    assert set(sweeper.seen) == {other.id}


def test_a_partial_tick_looks_only_at_the_sessions_it_names_and_those_never_seen(world: World,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    more = [world.new_session() for _ in range(5)]
    sweeper = world.sweeper()
    sweeper.tick(T0)
    looked: list[str] = []
    sweep_one = sweeper._sweep_one
    monkeypatch.setattr(sweeper, "_sweep_one", lambda session, *a: looked.append(session.id) or sweep_one(session, *a))
    new = world.new_session()
    sweeper.tick(T0 + timedelta(seconds=1), only={more[3].id, more[1].id, "sess-gone"})
    assert looked == [more[1].id, more[3].id, new.id]  # in the list's order
