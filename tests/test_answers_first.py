"""Issue 14 point 2: while the host works out an answer someone waits for (a chat's send, a webhook's arrival), the
sweep's thread and its worker processes give way before their next session, each wait bounded, and at most half of a
waiter's time (``host.http.answers``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc
from test_sweep_visitors import MANY, _due_sessions
from test_webhooks import Hook

from host.channels import cli as cli_channel
from host.channels.cli import CliChannel, socket_path
from host.http import answers
from host.scheduling import visitors
from host.scheduling.visit import Visitor
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Owed:
    """An answer owed for good, as a waiter sees it: each wait runs out its whole timeout (on the fake clock)."""

    def __init__(self, clock: _Clock) -> None:
        self.clock, self.waits = clock, list[float]()
        self.owed = True

    def is_set(self) -> bool:
        return not self.owed

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        self.clock.now += timeout
        return False


def test_none_owed_is_known_everywhere_only_once_every_answer_is_done() -> None:
    there = answers.for_workers()
    assert answers._none_here.is_set() and there.is_set()
    with answers.owed():
        with answers.owed():
            assert not answers._none_here.is_set() and not there.is_set()
        assert not answers._none_here.is_set() and not there.is_set()  # one is still being worked out
    assert answers._none_here.is_set() and there.is_set()


def test_a_waiter_waits_only_while_an_answer_is_owed_and_never_more_than_half_its_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(answers.time, "monotonic", clock)
    monkeypatch.setattr(answers, "HOLD_S", 0.25)  # (a binary fraction: the clock's sums are exact)
    owed = _Owed(clock)
    waiter = answers.Yielding(owed)  # type: ignore[arg-type]
    owed.owed = False
    waiter.wait()
    assert owed.waits == []  # none owed: it goes on at once
    owed.owed = True
    waiter.wait()
    assert owed.waits == [answers.HOLD_S]  # at most this long
    clock.now += answers.HOLD_S / 2
    waiter.wait()  # it has not worked as long as it waited: on, without waiting
    assert owed.waits == [answers.HOLD_S]
    clock.now += answers.HOLD_S / 2
    waiter.wait()
    assert owed.waits == [answers.HOLD_S] * 2


def test_a_waiter_goes_on_as_soon_as_the_answer_is_done() -> None:
    waiter = answers.Yielding()
    went_on = threading.Event()

    def sweep() -> None:
        waiter.wait()
        went_on.set()

    with answers.owed():
        thread = threading.Thread(target=sweep)
        thread.start()
    thread.join(5)
    assert went_on.is_set()


def _owed_as_a_worker_sees_it() -> bool:
    return not visitors._yielding._none_owed.is_set()


def test_a_worker_process_sees_the_hosts_answers(tmp_path: Path) -> None:
    """The workers are processes of their own, started as the sweep starts them: what they wait on is what the host's
    answers set."""
    world = World(tmp_path)
    with ProcessPoolExecutor(1, mp_context=get_context("forkserver"), initializer=visitors._started,
                             initargs=(os.getpid(), world.settings, logging.INFO, answers.for_workers())) as pool:
        assert pool.submit(_owed_as_a_worker_sees_it).result(60) is False
        with answers.owed():
            assert pool.submit(_owed_as_a_worker_sees_it).result(60) is True
        assert pool.submit(_owed_as_a_worker_sees_it).result(60) is False


def test_the_sweeps_thread_gives_way_before_each_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    _due_sessions(world, 3)
    sweeper = world.sweeper()
    waits: list[int] = []
    monkeypatch.setattr(sweeper._yielding, "wait", lambda: waits.append(1))
    assert sweeper.tick(T0).woken == 3
    assert len(waits) == 2 * 3  # (each session: in the pass over them, then before its visit)


def test_a_sweep_with_workers_ends_while_an_answer_stays_owed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that never ends (or a flood of them) cannot stall the sweep: each wait is bounded."""
    monkeypatch.setattr(visitors, "WORKERS", 2)
    monkeypatch.setattr(visitors, "FIRST_VISITS", MANY)
    world = World(tmp_path)
    _due_sessions(world)
    world.schedule(T0 - timedelta(minutes=5), at=to_text(T0), session=world.session)
    sweeper = world.sweeper()
    try:
        with answers.owed():
            result = sweeper.tick(T0)
        assert result.woken == MANY and result.errors == 0
        assert sweeper._visitors is not None and sweeper._visitors._pool is not None, "no worker was used"
    finally:
        sweeper.close()


def test_a_worker_gives_way_before_each_session_it_visits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    listed = _due_sessions(world, 3)
    waits: list[int] = []
    spy = answers.Yielding()
    monkeypatch.setattr(spy, "wait", lambda: waits.append(1))
    monkeypatch.setattr(visitors, "_yielding", spy)
    monkeypatch.setattr(visitors, "_visitor", Visitor(world.settings))
    outcomes = visitors._visit_batch(T0, [(session, None) for session in listed])  # (as in a worker)
    assert [o.error for o in outcomes] == [None] * 3 and all(o.visit for o in outcomes)
    assert len(waits) == 3


async def test_a_chat_send_is_an_owed_answer_and_wakes_the_host_only_once_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Hook(tmp_path)  # group "ops" with the cli channel
    seen: list[tuple[str, bool]] = []  # (what, whether an answer was owed then)
    served = CliChannel(hook.settings)
    send = served.send

    def sending(*args: Any) -> Any:
        seen.append(("send", not answers._none_here.is_set()))
        return send(*args)

    monkeypatch.setattr(served, "send", sending)
    monkeypatch.setattr(cli_channel.nudge, "touch", lambda settings, session_id=None: seen.append(
        ("wake", not answers._none_here.is_set())))
    await served.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path(hook.settings)))
        for line in ({"op": "send", "group": "ops", "text": "hello"}, {"op": "listen", "group": "ops"}):
            writer.write(json.dumps(line).encode() + b"\n")  # (the second is read once the first's wake is done)
            assert json.loads(await asyncio.wait_for(reader.readline(), 5))["ok"] is True
        writer.close()
    finally:
        await served.stop()
    assert seen == [("send", True), ("wake", False)]


async def test_a_webhooks_arrival_is_an_owed_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Hook(tmp_path)
    owed: list[bool] = []
    async with hook.serving() as server:
        answer = server._answer

        def answering(*args: Any) -> bytes:
            owed.append(not answers._none_here.is_set())
            return answer(*args)

        monkeypatch.setattr(server, "_answer", answering)
        status, _ = await hook.post("/webhooks/github", b'{"number": 7}', hook.token)
    assert status == 202 and owed == [True] and answers._none_here.is_set()
