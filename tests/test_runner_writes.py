"""A live runner's commit to outbound.db wakes the host loop at once (issue 14: replies taken at once, not at the next
live tick); what a runner floods its folder with is drained at most once a loop step."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from host.runtimes.writes import RunnerWrites
from host.store.sessions import create_files


def commit(folder: Path) -> None:
    """What a runner's turn does: a transaction on outbound.db (DELETE journal: the journal is removed at commit)."""
    with closing(sqlite3.connect(folder / "outbound.db")) as conn, conn:
        conn.execute("INSERT INTO session_state(key, value, updated_at) VALUES ('k', 'v', '2026-01-14T15:00:00.000Z')")


async def test_a_commit_in_a_live_runners_folder_wakes_the_loop_once_a_step(tmp_path: Path) -> None:
    live, other = tmp_path / "live", tmp_path / "other"
    create_files(live)
    create_files(other)
    woken = asyncio.Event()
    writes = RunnerWrites(woken)
    try:
        writes.sync({live})
        commit(other)  # a session with no live runner is not watched
        commit(live)
        await asyncio.wait_for(woken.wait(), 60)  # (a guard only: without the watch it would never end)
        assert writes.watches.keys() == {live}

        woken.clear()
        (live / "flood").touch()
        (live / "flood").unlink()
        for _ in range(10):  # the loop goes round: the reader is off until the next step, nothing is heard
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
