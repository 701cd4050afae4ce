"""A live runner's commit to outbound.db wakes the host loop (issue 14: replies taken at once, not at the next live
tick); what a runner floods its journal with is drained at most once a loop step."""

from __future__ import annotations

import asyncio
import select
from datetime import UTC, datetime
from pathlib import Path

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from host.runtimes.workspace import JOURNAL
from host.runtimes.writes import RunnerWrites
from host.store import outbox
from host.store.sessions import create_files


def commit(folder: Path) -> None:
    """What a runner's turn does, through the runner's own store: a reply written to outbound.db (its journal kept,
    ``journal_mode=TRUNCATE``: nothing in the folder is made or deleted)."""
    Store(RunnerConfig(session_dir=folder, generation="gen-test", tz="UTC")).write(
        "chat", {"text": "done"}, datetime(2026, 1, 14, 15, tzinfo=UTC))


def _sessions(tmp_path: Path) -> tuple[Path, Path]:
    live, other = tmp_path / "live", tmp_path / "other"
    create_files(live)
    create_files(other)
    return live, other


async def test_a_runners_commit_wakes_the_loop_once_a_step(tmp_path: Path) -> None:
    live, other = _sessions(tmp_path)
    woken = asyncio.Event()
    writes = RunnerWrites(woken)
    try:
        writes.sync({live})
        commit(other)  # a session with no live runner is not watched
        commit(live)
        await asyncio.wait_for(woken.wait(), 60)  # (a guard only: without the watch it would never end)
        assert writes.watches.keys() == {live}

        woken.clear()
        writes.sync({live, other})  # the next step: listening again, the other session's runner alive too
        outbox.read(live / "outbound.db", [], 0, writable=False)  # the host's own visit of its files wakes nothing
        for _ in range(10):  # (the loop goes round: anything heard would have woken it)
            await asyncio.sleep(0)
        assert not woken.is_set()
        for _ in range(1000):  # a flood: both journals opened for writing and closed again, in turns (an event
            for folder in (live, other):  # the same as the one before it is merged with it), heard once
                with open(folder / JOURNAL, "ab"):
                    pass
        await asyncio.wait_for(woken.wait(), 60)
        assert writes.inotify is not None  # read no further than it needed: the rest of the flood waits, queued
        assert select.select([writes.inotify.fd], [], [], 0)[0] == [writes.inotify.fd]
        writes.inotify.drain()
        woken.clear()
        commit(live)
        for _ in range(10):  # the reader is off until the next step: nothing is heard
            await asyncio.sleep(0)
        assert not woken.is_set()
        writes.sync({live})  # the next step: what came in between is heard now
        await asyncio.wait_for(woken.wait(), 60)

        writes.sync(set())  # its runner stopped: not watched any more
        assert writes.watches == {}
    finally:
        writes.close()


async def test_a_folder_replaced_by_a_link_is_not_watched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    create_files(target)
    (tmp_path / "sess").symlink_to(target)
    writes = RunnerWrites(asyncio.Event())
    try:
        writes.sync({tmp_path / "sess"})
        assert writes.watches == {}
    finally:
        writes.close()


async def test_a_journal_the_runner_removed_and_made_again_is_watched_anew(tmp_path: Path) -> None:
    """A local runner may remove its journal (in a container it is a mount, which it cannot): the watch ended with
    that file, and the next step watches the one its SQLite makes again."""
    live = tmp_path / "live"
    create_files(live)
    woken = asyncio.Event()
    writes = RunnerWrites(woken)
    try:
        writes.sync({live})
        (live / JOURNAL).unlink()
        await asyncio.wait_for(woken.wait(), 60)  # (its watch's end is heard)
        woken.clear()
        commit(live)  # (SQLite makes the journal again, and keeps it)
        writes.sync({live})  # the next step
        assert not woken.is_set()
        commit(live)
        await asyncio.wait_for(woken.wait(), 60)
    finally:
        writes.close()


async def test_after_lost_events_every_journal_is_watched_anew(tmp_path: Path) -> None:
    """A step reads at most ``HEARD_BYTES`` of what came; what it left counts as lost (the end of a watch among it,
    perhaps): every journal is watched again at the next step, and a commit after is heard."""
    live, other = _sessions(tmp_path)
    woken = asyncio.Event()
    writes = RunnerWrites(woken)
    try:
        writes.sync({live, other})
        for _ in range(500):  # more than a step reads (two journals in turns: no event merged with the one before)
            for folder in (live, other):
                with open(folder / JOURNAL, "ab"):
                    pass
        await asyncio.wait_for(woken.wait(), 60)
        assert writes.watches == {}
        woken.clear()
        writes.sync({live, other})
        assert writes.watches.keys() == {live, other}
        assert writes.inotify is not None
        writes.inotify.drain()  # (the rest of the flood)
        commit(live)
        await asyncio.wait_for(woken.wait(), 60)
    finally:
        writes.close()
