"""An idle runner sleeps until the host writes its inbox or a row falls due, never polling (issue 13, point 2)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from kit import FakeClock
from test_runner import NOW, Recording, Session

from agent_runner.providers import MockProvider, Reply, Turn
from agent_runner.runner import IDLE_BEAT_EVERY, Runner
from agent_runner.wake import InboxWatch, Poll
from schemas import clock
from schemas.times import from_text

HOUR = 3600.0


@dataclass
class Answering(MockProvider):
    """Sets ``answered`` on its first answer."""

    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def respond(self, turn: Turn) -> Reply:
        self.answered.set()
        return await super().respond(turn)


class Watched(InboxWatch):
    """The real watch, with what each wait returned and an event set when a wait begins."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Poll(clock, HOUR))
        self.waiting, self.results = asyncio.Event(), list[bool]()

    async def wait(self, seconds: float) -> bool:
        self.waiting.set()
        self.results.append(await super().wait(seconds))
        self.waiting.clear()
        return self.results[-1]


class TestInboxWatch:
    async def test_a_write_by_another_connection_wakes_it_and_nothing_else_does(self, tmp_path: Path) -> None:
        session = Session(tmp_path)
        watch = InboxWatch(session.config.inbound, Poll(clock, HOUR))
        try:
            assert await watch.wait(0) is False
            (session.dir / ".heartbeat").write_text("gen-1")  # the runner's own files do not wake it
            (session.dir / "outbound.db").touch()
            assert await watch.wait(0) is False
            session.add(text="hello")  # what the host does: a committed write into inbound.db
            assert await watch.wait(HOUR) is True
            assert await watch.wait(0) is False  # every event of that write was drained by the one wake
        finally:
            watch.close()

    async def test_a_replaced_inbox_falls_back_to_polling(self, tmp_path: Path) -> None:
        session = Session(tmp_path)
        fake = FakeClock(NOW)
        watch = InboxWatch(session.config.inbound, Poll(fake, 0.5))
        try:
            other = session.dir / "other.db"
            other.write_bytes(session.config.inbound.read_bytes())
            os.replace(other, session.config.inbound)
            assert await watch.wait(HOUR) is True  # the replacement itself wakes it, to look at the new file
            assert watch.inotify is None
            assert await watch.wait(HOUR) is False and fake.slept == [0.5]  # from now on: the poll
        finally:
            watch.close()

    async def test_without_inotify_it_polls_and_says_so(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        fallback = Poll(clock, 0.05)
        assert InboxWatch.or_poll(tmp_path / "missing.db", fallback) is fallback
        assert "idle runner polls every 0.05 s" in caplog.text


class TestIdleRunner:
    async def test_it_blocks_until_the_host_writes_then_answers(self, tmp_path: Path) -> None:
        session = Session(tmp_path, idle_timeout_s=HOUR, poll_interval_s=HOUR)
        watch, provider = Watched(session.config.inbound), Answering()
        runner = Runner(session.config, provider, clock, wake=watch)
        task = asyncio.create_task(runner.run())
        await watch.waiting.wait()
        chat = session.add(text="wake up")
        await provider.answered.wait()
        runner.stop()
        await task
        assert watch.results[0] is True  # woken by the write, not by a timeout
        assert session.acks()[chat][0] == "completed"
        assert watch.inotify is None  # closed with the run

    async def test_stop_ends_an_idle_wait_at_once(self, tmp_path: Path) -> None:
        session = Session(tmp_path, idle_timeout_s=HOUR, poll_interval_s=HOUR)
        watch = Watched(session.config.inbound)
        runner = Runner(session.config, MockProvider(), clock, wake=watch)
        task = asyncio.create_task(runner.run())
        await watch.waiting.wait()
        runner.stop()
        await task
        assert watch.results == [True]

    async def test_idle_it_sleeps_in_heartbeat_steps_not_poll_steps(self, tmp_path: Path) -> None:
        session = Session(tmp_path, idle_timeout_s=30.0, poll_interval_s=HOUR)
        fake = FakeClock(NOW)
        await Runner(session.config, MockProvider(), fake, wake=Poll(fake, HOUR)).run()
        assert fake.slept == [IDLE_BEAT_EVERY.total_seconds()] * 6
        assert (session.dir / ".heartbeat").read_text() == "gen-1"

    async def test_it_wakes_itself_when_a_row_falls_due(self, tmp_path: Path) -> None:
        session = Session(tmp_path, idle_timeout_s=HOUR, poll_interval_s=HOUR)
        due = NOW + timedelta(seconds=92.5)  # between two heartbeats
        chat = session.add(text="later", process_after=due.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        fake, provider = FakeClock(NOW), Recording()
        runner = Runner(dataclasses.replace(session.config, idle_timeout_s=100.0), provider, fake,
                        wake=Poll(fake, HOUR))
        await runner.run()
        assert len(provider.turns) == 1
        assert from_text(session.acks()[chat][1]["started_at"]) == due  # answered at its instant, not later
        assert 92.5 - 90 in [round(s, 3) for s in fake.slept]
