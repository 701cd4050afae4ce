"""Issue 14 (the event loop is never held): what a running host asks of its sessions at every tick — which are due
by a time, which are busy, which are new, has the list of sessions changed — costs as much as the answer, not a look
at every session. At 10,000 sessions those looks, made for each chat's arrival, held every tick for milliseconds
(``scripts/bench_loop.py``'s idle phase: chat p99 25 ms). The answers must stay exactly those of the looks."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc

from host.scheduling import listing, sweep
from host.scheduling.seen import Book, Seen
from host.store import db, groups, sessions

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


@pytest.mark.parametrize("asked", [1.0, 0.2, 0.02])
def test_the_books_answers_are_those_of_a_look_at_every_session(asked: float) -> None:
    """``asked``: how often a question comes between changes (entries added since the last are put in order at the
    next: changed again before it, or many at once, they must answer the same)."""
    rng = random.Random(14)
    book, plain = Book(), dict[str, Seen]()
    ids = [f"s{n}" for n in range(12 if asked == 1.0 else 400)]
    book.activate(set(ids[:10]))
    for _ in range(3000):
        sid = rng.choice(ids)
        if rng.random() < 0.25:
            book.pop(sid, None)
            plain.pop(sid, None)
        else:
            seen = sweep.AGAIN if rng.random() < 0.1 else Seen((), True, rng.choice(TIMES), rng.random() < 0.3)
            book[sid] = plain[sid] = seen
        if rng.random() >= asked:
            continue
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
    """The rowid each read of the list started after (0: the whole list)."""
    reads: list[int] = []
    active_rows = sessions.active_rows

    def counted(conn: db.Connection, after: int = 0) -> list[Any]:
        reads.append(after)
        return active_rows(conn, after)

    monkeypatch.setattr(listing.sessions, "active_rows", counted)
    return reads


def test_the_list_of_sessions_is_read_again_only_when_it_changed_and_only_what_was_made_since(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _reads_of_the_list(monkeypatch)
    sweeper = world.sweeper()
    sweeper.tick(T0)
    assert reads == [0]
    sessions.touch(world.central, world.session.id, T0)  # (each chat's arrival: the list is as it was)
    sweeper.tick(T0 + timedelta(seconds=1), only={world.session.id})
    assert reads == [0]
    made = [world.new_session(), world.new_session()]
    sweeper.tick(T0 + timedelta(seconds=2), only={world.session.id})
    assert len(reads) == 2 and reads[1] > 0  # only the sessions made since
    assert [s.id for s in sweeper.active_sessions()] == [world.session.id] + [s.id for s in made]
    assert all(s.id in sweeper.seen for s in made)  # a new session is looked at by a partial tick too
    sessions.close(world.central, [made[0].id], T0)
    sweeper.tick(T0 + timedelta(seconds=3))
    assert reads[2:] == [0] and made[0].id not in sweeper.seen  # the whole list
    another = world.new_session()
    sessions.reopen(world.central, world.settings, made[0].id)  # (made and changed: the whole list)
    sweeper.tick(T0 + timedelta(seconds=4))
    assert reads[3:] == [0] and {made[0].id, another.id} <= set(sweeper.seen)
    assert [s.id for s in sweeper.active_sessions()] == [world.session.id] + [s.id for s in made] + [another.id]
    groups.delete(world.central, world.group, T0)
    sweeper.tick(T0 + timedelta(seconds=5))
    assert reads[4:] == [0] and len(sweeper.seen) == 0 and sweeper.active_sessions() == []


def test_sessions_made_one_after_another_are_added_once_each_and_job_sessions_known_as_such(world: World) -> None:
    sweeper = world.sweeper()
    sweeper.tick(T0)
    group = groups.get(world.central, "demo")
    made = []
    for n in (1, 2):
        made.append(sessions.create(world.central, world.settings, T0, group, None, one_job=n == 2))
        sweeper.tick(T0 + timedelta(seconds=n), only=set())
    assert [s.id for s in sweeper.active_sessions()] == [world.session.id] + [s.id for s in made]
    assert [s.id for s in sweeper.listing.jobs] == [made[1].id]
    assert sweeper.listing.among({made[1].id, world.session.id}) == [world.session, made[1]]


def test_one_session_closed_and_another_reopened_between_two_ticks_is_seen(world: World) -> None:
    """The same number of active sessions, another list: a count of rows could not tell."""
    sweeper = world.sweeper()
    other = world.new_session()
    sessions.close(world.central, [other.id], T0)
    sweeper.tick(T0)
    assert set(sweeper.seen) == {world.session.id}
    sessions.close(world.central, [world.session.id], T0)
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


def test_two_reads_of_the_list_one_paused_while_the_other_ran_add_a_new_session_once(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review: a read that only adds pauses between chunks; another that ran meanwhile added them already.)"""
    monkeypatch.setattr(listing, "CHUNK", 1)
    sweeper = world.sweeper()
    sweeper.tick(T0)
    made = [world.new_session(), world.new_session()]
    paused = sweeper._listed()
    next(paused)  # one chunk made, then a pause
    assert [s.id for s in sweeper.active_sessions()] == [world.session.id] + [s.id for s in made]
    for _ in paused:
        pass
    assert [s.id for s in sweeper.active_sessions()] == [world.session.id] + [s.id for s in made]
