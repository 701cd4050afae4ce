"""The runner's numbering of its outbound.db rows, which the host reads past the highest seq it has handled: a real
host sweep over the files a real runner store writes."""

from __future__ import annotations

import dataclasses
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from kit import World, utc

from agent_runner.config import RunnerConfig
from agent_runner.store import Store

NOW = utc("2026-01-14T15:00:00")


def test_an_outbound_db_put_back_from_an_older_copy_is_numbered_past_what_the_host_handled(tmp_path: Path) -> None:
    """The host reads only the rows of outbound.db past the highest it has handled (``inbox.watermarks``). A file put
    back from an older copy (or made anew) had the next runner number on from its own highest, under that mark: its
    requests and replies were never read, and nothing said so (attack review). It numbers past what the host handled."""
    world = World(tmp_path)
    outbound = world.session.folder / "outbound.db"
    older = tmp_path / "older-outbound.db"
    older.write_bytes(outbound.read_bytes())  # a copy made before any row
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-1", tz="UTC")
    unknown = {"action": "pause_task", "taskId": "task-1768402800000-nosuch"}
    sent = [Store(config).write("system", unknown, NOW) for _ in range(3)]
    world.sweeper().tick(NOW)
    outbound.write_bytes(older.read_bytes())  # put back
    again = Store(dataclasses.replace(config, generation="gen-2")).write("system", unknown, NOW)
    world.sweeper().tick(NOW + timedelta(minutes=1))
    with closing(world.inbound()) as conn:
        handled = dict(conn.execute("SELECT message_out_id, seq FROM delivered").fetchall())
    assert handled == {sent[0]: 1, sent[1]: 3, sent[2]: 5, again: 7}
