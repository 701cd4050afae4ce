"""What a runner writes from inside its container reaches the host's inotify watches through the mounts: the idle
sweep's watch on the session folder (``changes``: the session is looked at again) and the live runner's journal watch
(``writes``: the host loop is woken at its commit). Written by the runner's own store, as a real turn writes."""

from __future__ import annotations

import asyncio
from contextlib import closing
from typing import Any

import pytest
from kit import World

from host.runtimes.docker import DockerRuntime
from host.runtimes.pool import runner_env
from host.runtimes.writes import RunnerWrites
from host.scheduling.changes import Changes

pytestmark = pytest.mark.docker

WRITE = r"""
from datetime import datetime, UTC
from pathlib import Path
from agent_runner.config import RunnerConfig
from agent_runner.store import Store
Store(RunnerConfig(session_dir=Path("/workspace"), generation="gen-write", tz="UTC")).write(
    "chat", {"text": "written in the container"}, datetime.now(UTC))
"""


async def test_a_write_in_the_container_is_heard_by_both_watches(world: World, runtime: DockerRuntime,
                                                                  engine: Any) -> None:
    session = world.session
    changes, woken = Changes(), asyncio.Event()
    writes = RunnerWrites(woken)
    try:
        for _ in range(2):
            changes.begin(full=False)
            seen = changes.unchanged(session.id, session.path)
        assert seen is True  # watched, and nothing changed since
        writes.sync({session.folder})
        env = runner_env(world.settings, session, "gen-write", "rules")
        runtime.start(session, "gen-write", env, entrypoint=["/opt/ncl/bin/python", "-c", WRITE])
        container = await asyncio.to_thread(runtime.wait_started, session.id)
        status = await asyncio.to_thread(engine.api.wait, container, timeout=60)
        assert status["StatusCode"] == 0, engine.api.logs(container).decode()
        await asyncio.wait_for(woken.wait(), 30)  # (a guard only: unheard, it would never end)
        changes.begin(full=False)
        assert changes.unchanged(session.id, session.path) is False
        with closing(world.outbound()) as conn:
            assert [tuple(row) for row in conn.execute("SELECT content FROM messages_out")] == [
                ('{"text": "written in the container"}',)]
    finally:
        writes.close()
        changes.close()
