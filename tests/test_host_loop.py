"""``Host.step()`` with a fake clock: a due task is woken within a second of its time, not at the next sweep —
also when ``ncl`` wrote it while the host slept."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import FakeClock, RecordingRuntime, World, utc

from host import loop
from host.channels import nudge, router
from host.loop import Host
from host.scheduling import sweep, tasks
from host.store import db, sessions
from schemas import ids
from schemas.times import to_text

T = utc("2026-05-18T13:00:00")


class HoldingClock(FakeClock):
    """A fake clock whose sleep, while ``holding``, never ends by itself: only something else ends the loop's wait."""

    holding = True

    async def sleep(self, seconds: float) -> None:
        if not self.holding:
            return await super().sleep(seconds)
        self.slept.append(seconds)
        await asyncio.Event().wait()


async def _run_until_woken(host: Host, runtime: RecordingRuntime, limit: int = 500) -> None:
    for _ in range(limit):
        if runtime.started:
            return
        await host.step()
    raise AssertionError("never woken")


async def test_a_known_due_time_is_hit_within_a_second(tmp_path: Path) -> None:
    """With a free slot the runner starts AHEAD of the due time (it then waits on its own timer)."""
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="60")
    clock = FakeClock(T - timedelta(seconds=47.3))
    world.schedule(clock.now(), at=to_text(T))
    runtime = RecordingRuntime(clock)
    await _run_until_woken(Host(world.settings, runtime, clock), runtime)
    woken_at = runtime.started[0][0]
    assert woken_at is not None and timedelta(0) <= woken_at - (T - sweep.AHEAD) < timedelta(seconds=1)


async def test_a_row_written_by_ncl_while_the_host_sleeps_is_woken_on_time(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="600")
    clock = FakeClock(T - timedelta(minutes=5))
    runtime = RecordingRuntime(clock)
    host = Host(world.settings, runtime, clock)

    def cli_writes() -> None:  # what `ncl tasks add` does: write the inbox, touch the nudge file
        with closing(world.inbound()) as conn:
            tasks.schedule(conn, clock.now(), world.policy, ids.new_id("task", clock.now()), "standup",
                           to_text(T), enforce_interval=False)
        nudge.touch(world.settings)

    clock.at(T - timedelta(minutes=4), cli_writes)
    await _run_until_woken(host, runtime)
    woken_at = runtime.started[0][0]
    assert woken_at is not None and timedelta(0) <= woken_at - (T - sweep.AHEAD) < timedelta(seconds=1)


async def test_idle_host_sleeps_a_whole_sweep_interval_in_short_slices(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="60")
    clock = FakeClock(T)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    await host.step()
    assert clock.now() - T == timedelta(seconds=60)
    assert max(clock.slept) <= 1.0


async def test_a_stop_ends_the_sleep(tmp_path: Path) -> None:
    world = World(tmp_path)
    clock = FakeClock(T)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    clock.at(T + timedelta(seconds=3), host.stopping.set)
    await host.step()
    assert clock.now() - T <= timedelta(seconds=4)


async def test_between_full_sweeps_only_busy_sessions_are_looked_at(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="60")
    clock = FakeClock(T)
    idle = [world.new_session() for _ in range(10)]
    for session in idle:
        world.schedule(T, at=to_text(T + timedelta(days=1)), session=session)
    world.schedule(T, at=to_text(T))  # the one busy session
    runtime = RecordingRuntime(clock)
    host = Host(world.settings, runtime, clock)
    first = await host.step()
    assert (first.sessions_checked, first.woken) == (11, 1)
    second = await host.step()  # a live runner: the loop ticks again within a second
    assert clock.now() - T < timedelta(seconds=1)
    assert second.sessions_checked == 1  # the live session only, not the ten idle ones
    nudge.touch(world.settings)  # a write from outside: the next step is a full sweep again
    assert (await host.step()).sessions_checked == 11


def test_the_session_list_is_made_again_only_when_sessions_come_or_go(tmp_path: Path) -> None:
    world = World(tmp_path)
    sweeper = world.sweeper()
    listed = sweeper.active_sessions()
    sessions.touch(world.central, world.session.id, T)  # what a chat's arrival writes to central.db
    assert sweeper.active_sessions() is listed  # not made again (10,000 of them cost tens of ms)
    new = world.new_session()
    assert [s.id for s in sweeper.active_sessions()] == [s.id for s in listed] + [new.id]


async def test_a_start_with_many_sessions_opens_them_in_chunks_and_yields_between(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(loop, "NEW_SESSIONS_PER_TICK", 2)
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="60")
    # Listed first (oldest): a session that fails every visit must not take a new session's turn each tick.
    broken = sessions.create(world.central, world.settings, utc("2025-12-31T00:00:00"), world.group, None)
    (broken.folder / "inbound.db").write_bytes(b"not a database" * 100)
    others = [world.new_session() for _ in range(3)]
    world.schedule(T, at=to_text(T), session=others[-1])  # due, in one of the sessions
    clock = FakeClock(T)
    runtime = RecordingRuntime(clock)
    host = Host(world.settings, runtime, clock)
    left, said, frozen = [], [], []
    for _ in range(3):
        with caplog.at_level(logging.INFO, logger="host.loop"):
            await host.step()
        left.append(host.sweeper.unvisited)
        said.append(sum(getattr(r, "action", None) == "sessions_seen" for r in caplog.records))
        frozen.append(gc.get_freeze_count() > 0)
        gc.unfreeze()
    assert left == [3, 1, 0]  # five sessions two at a time
    assert said == [0, 0, 1]  # the operator hears when the start is over
    assert frozen == [True, True, True]  # what it keeps is left out of the collector's full passes, step by step
    await host.step()
    assert gc.get_freeze_count() == 0  # (once the start is over, never again)
    assert clock.slept[:2] == [loop.BETWEEN_CHUNKS_S] * 2 and clock.slept[2] > loop.BETWEEN_CHUNKS_S  # then a wait
    assert [started[1] for started in runtime.started] == [others[-1].id]


def _arrive(world: World) -> None:
    """What the CLI socket and the webhook server do with a message."""
    router.deliver_in(world.central, world.settings, T, world.group,
                      router.Arrival("cli", "chat", {"text": "hi", "sender": "user"}))


async def test_an_arrival_in_the_host_process_wakes_the_loop_at_once(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="600")
    clock = HoldingClock(T)
    runtime = RecordingRuntime(clock)
    host = Host(world.settings, runtime, clock)
    with nudge.heard(world.settings, host.arrived):
        sleeping = asyncio.create_task(host.step())
        while not clock.slept:  # asleep, with no end in sight
            await asyncio.sleep(0)
        _arrive(world)
        await asyncio.wait_for(sleeping, 10)  # (a guard only: without the wake it would never end)
        sweeping = asyncio.create_task(host.step())
        while not runtime.started:
            await asyncio.sleep(0)
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
    assert clock.now() == T and runtime.started  # not a moment slept: woken at once, the runner started
    assert nudge.stamp(world.settings) == 0  # and no file touched: that is for other processes


async def test_an_arrival_in_the_host_process_looks_at_its_session_not_at_every_one(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="600")
    for session in [world.new_session() for _ in range(10)]:
        world.schedule(T, at=to_text(T + timedelta(days=1)), session=session)
    key = router.thread_key(world.group, router.Arrival("cli", "chat", {}))
    chats = router.session_for(world.central, world.settings, T, world.group, key)  # where a chat arrives, idle
    clock = HoldingClock(T)
    runtime = RecordingRuntime(clock)
    host = Host(world.settings, runtime, clock)
    with nudge.heard(world.settings, host.arrived):
        sleeping = asyncio.create_task(host.step())
        while not clock.slept:
            await asyncio.sleep(0)
        _arrive(world)  # a chat, into the group's own session
        first = await asyncio.wait_for(sleeping, 10)
        clock.holding = False
        second = await host.step()
    assert first.sessions_checked == 12  # the start: every session
    assert (second.sessions_checked, second.woken) == (1, 1)  # the chat's session only, and its runner started
    assert [started[1] for started in runtime.started] == [chats.id]
    host.arrived(None)  # an arrival whose session is unknown (a mail): every session
    assert (await host.step()).sessions_checked == 12


async def test_a_flood_of_arrivals_is_swept_at_most_every_gap(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="600")
    clock = HoldingClock(T)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    with nudge.heard(world.settings, host.arrived):
        _arrive(world)
        sleeping = asyncio.create_task(host.step())  # a sweep for that arrival
        while not clock.slept:
            await asyncio.sleep(0)
        clock.holding = False
        _arrive(world)  # and another at once
        await asyncio.wait_for(sleeping, 10)
    assert clock.now() == T + timedelta(seconds=loop.ARRIVALS_GAP_S)  # swept again, but not before the gap


async def test_a_running_hosts_steps_open_no_database_on_its_loop(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.2: with the sweep's worker thread (as ``run`` makes it), a step's SQLite work, the sweep's and the
    project tasks' tick and next due time alike, happens there: the loop only serves."""
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="60")
    clock = FakeClock(T)
    world.schedule(T, at=to_text(T - timedelta(minutes=1)))  # due: the sweep opens the session
    runtime = RecordingRuntime(clock)
    host = Host(world.settings, runtime, clock)
    opened_in: list[tuple[str, str]] = []
    connect = db.connect

    def recorded(path: Path, *args: Any, **kwargs: Any) -> Any:
        opened_in.append((path.name, threading.current_thread().name))
        return connect(path, *args, **kwargs)

    monkeypatch.setattr(db, "connect", recorded)
    host._worker = ThreadPoolExecutor(1, thread_name_prefix="ncl-sweep")
    try:
        for _ in range(2):
            await host.step()
    finally:
        await host._off_loop(host.sweeper.close)
        host._worker.shutdown()
        host.scheduled.close()
    assert runtime.started and {"central.db", "inbound.db"} <= {name for name, _ in opened_in}
    assert [o for o in opened_in if not o[1].startswith("ncl-sweep")] == []


@pytest.mark.parametrize(("short", "failures"), [
    # The first open fails in Python, the second in SQLite (no errno: the host sees none left when it looks).
    ("fds", [OSError(errno.EMFILE, "Too many open files", "central.db"),
             db.DbError("cannot use central.db: unable to open database file")]),
    ("disk", [OSError(errno.ENOSPC, "No space left on device", "runners.json"),
              db.DbError("cannot use inbound.db: database or disk is full")]),
], ids=["file-descriptors", "disk-space"])
async def test_a_step_out_of_descriptors_or_disk_is_said_once_and_the_host_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, short: str,
        failures: list[Exception]) -> None:
    """A flood of connections can take every descriptor while a step opens a file (the new central.db of a first
    start, in the CI run that found it), and a full disk failed the step that published the pool's state (crash
    review: 10 of 10): the host lived no longer, every runner ending with it. Now the step is tried again, a full
    sweep."""
    world = World(tmp_path)
    world.schedule(T, at=to_text(T - timedelta(minutes=1)))
    clock, runtime = FakeClock(T), RecordingRuntime()
    host = Host(world.settings, runtime, clock)
    failing = list(failures)
    monkeypatch.setattr(loop, "no_descriptor_left", lambda: short == "fds")
    tick = host.scheduled.tick

    def tick_or_fail(now: Any) -> Any:
        if failing:
            raise failing.pop(0)
        return tick(now)

    monkeypatch.setattr(host.scheduled, "tick", tick_or_fail)
    try:
        with caplog.at_level(logging.DEBUG, logger="host.loop"):
            for _ in range(3):
                await host._surviving_step()
    finally:
        host.sweeper.close()
        host.scheduled.close()
    said = [r.levelno for r in caplog.records if getattr(r, "action", None) == f"sweep_out_of_{short}"]
    assert said == [logging.ERROR, logging.DEBUG] and runtime.started  # the third step swept, and woke the task
    assert f"ran out of {loop.SHORT[short]}" in caplog.text


async def test_a_step_that_fails_with_descriptors_left_still_stops_the_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    host = Host(world.settings, RecordingRuntime(), FakeClock(T))

    def broken(now: Any) -> Any:
        raise db.DbError("cannot use central.db: unable to open database file")  # (permissions, say: for good)

    monkeypatch.setattr(host.scheduled, "tick", broken)
    try:
        with pytest.raises(db.DbError):
            await host._surviving_step()
    finally:
        host.sweeper.close()
        host.scheduled.close()
    assert not loop.no_descriptor_left()


async def test_what_the_first_answers_and_runner_would_make_is_made_before_the_host_listens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.2: made at the first runner's start, the model proxy's HTTP client (its imports and TLS setup: ~0.4 s,
    43 ms of it in one call holding the GIL) held every chat's and webhook's answer then, up to 93 ms; the first
    chat or webhook imported the message models it validates (9 ms, 40 under a start's load). Both are made before
    the first channel listens."""
    world = World(tmp_path)
    host = Host(world.settings, RecordingRuntime(), FakeClock(T))
    monkeypatch.delitem(sys.modules, "schemas.messages", raising=False)  # (put back as it was after)
    found: dict[str, bool] = {}

    class Listening:
        async def start(self) -> None:
            found["proxy"] = host.proxy.thread is not None and host.proxy.thread.is_alive()
            found["client"] = hasattr(host.proxy, "_client")
            found["models"] = "schemas.messages" in sys.modules
            host.stopping.set()

        async def stop(self) -> None:
            pass

    host.channels = [Listening()]  # type: ignore[list-item]
    await host.run()
    assert found == {"proxy": True, "client": True, "models": True}
    assert host.proxy.thread is None  # (stopped with the host)
