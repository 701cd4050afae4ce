"""``DockerRuntime`` with real runner containers (DESIGN §8): a runner answers, exits when idle, is labelled,
stopped, retired, replaced, and cleaned up as an orphan of this install only; an engine that is away is retried."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest
from kit import World, utc

from host.runtimes import docker as docker_runtime
from host.runtimes.docker import DockerRuntime
from host.runtimes.pool import Runners, runner_env
from host.store import db

pytestmark = pytest.mark.docker
NOW = utc("2026-01-14T15:00:00")


def chat(world: World, text: str = "hello", seq: int = 2) -> str:
    row_id = f"msg-{1768400000000 + seq}-aaaaaa"
    with closing(world.inbound()) as conn, db.transaction(conn):
        conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, trigger, platform_id, channel_type, thread_id,"
                     " content) VALUES (?, ?, 'chat', '2026-01-14T14:00:00.000Z', 1, 'p1', 'cli', 't1', ?)",
                     (row_id, seq, json.dumps({"text": text, "sender": "alice", "sender_id": "u1"})))
    return row_id


def replies(world: World) -> list[tuple[str, str]]:
    with closing(world.outbound()) as conn:
        return [(r["in_reply_to"], json.loads(r["content"])["text"])
                for r in conn.execute("SELECT * FROM messages_out WHERE kind = 'chat' ORDER BY seq")]


def containers(engine: Any, install: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = engine.api.containers(all=True, filters={"label": f"ncl.install={install}"})
    return found


@pytest.fixture
def other_install(engine: Any, runner_image: str) -> Iterator[str]:
    """A container of another install (another data directory) that must survive this one's cleanup."""
    created = engine.containers.create(runner_image, entrypoint=["sleep", "300"], command=[], network_mode="none",
                                       labels={"ncl.install": "another-install", "ncl.session": "sess-other"})
    created.start()
    yield created.id
    created.remove(force=True)


def test_a_runner_answers_a_chat_row_then_exits_when_idle(
        world: World, runtime: DockerRuntime, engine: Any, wait_for: Callable[..., Any]) -> None:
    row_id = chat(world)
    runner = Runners(runtime, world.settings).start(world.session, NOW)
    assert runtime.is_running(world.session.id)  # at once, while the container is still being created
    assert wait_for(lambda: replies(world)) == [(row_id, "mock: hello")]
    with closing(world.outbound()) as conn:
        ack = conn.execute("SELECT status, generation FROM processing_ack WHERE message_id = ?", (row_id,)).fetchone()
    assert tuple(ack) == ("completed", runner.generation)
    # NCL_IDLE_TIMEOUT_S=2: the runner exits by itself; the exited container is reaped once seen.
    wait_for(lambda: not runtime.is_running(world.session.id), timeout=30, every=0.2)
    wait_for(lambda: not containers(engine, runtime.install), timeout=10, every=0.2)


def test_the_container_is_labelled_isolated_and_limited(world: World, runtime: DockerRuntime, engine: Any) -> None:
    world.settings = world.settings.replace(idle_timeout_s=60.0, container_memory="256m", container_pids=64)
    runtime = DockerRuntime(world.settings)
    Runners(runtime, world.settings).start(world.session, NOW)
    info = engine.api.inspect_container(runtime.wait_started(world.session.id))
    try:
        assert info["Name"] == f"/ncl-{runtime.install}-{world.session.id}"
        labels = {"ncl.install": runtime.install, "ncl.session": world.session.id, "ncl.group": world.group.id}
        assert info["Config"]["Labels"].items() >= labels.items()  # and the image's own (ncl.source, ncl.base)
        assert info["Config"]["User"] == "10001:10001" and info["Config"]["NetworkDisabled"]
        host = info["HostConfig"]
        assert (host["NetworkMode"], host["CapDrop"], host["SecurityOpt"]) == ("none", ["ALL"], ["no-new-privileges"])
        assert host["ReadonlyRootfs"] and "/tmp" in host["Tmpfs"]
        assert (host["Memory"], host["PidsLimit"]) == (256 * 1024 * 1024, 64)
        mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in info["Mounts"]}
        assert mounts == {"/workspace": (str(world.session.folder), True),
                          "/workspace/inbound.db": (str(world.session.folder / "inbound.db"), False),
                          "/workspace/outbound.db-journal": (str(world.session.folder / "outbound.db-journal"), True),
                          "/workspace/agent": (str(world.settings.groups_dir / world.group.id), True)}
    finally:
        runtime.close(stop_runners=True)


def test_stop_kills_the_runner(world: World, runtime: DockerRuntime, engine: Any) -> None:
    world.settings = world.settings.replace(idle_timeout_s=600.0)
    runtime = DockerRuntime(world.settings)
    runners = Runners(runtime, world.settings)
    runners.start(world.session, NOW)
    runtime.wait_started(world.session.id)
    runners.kill(world.session.id)
    assert not runtime.is_running(world.session.id)
    assert containers(engine, runtime.install) == []


def test_a_retired_runner_counts_as_running_until_removed_and_later_starts_wait_for_that(
        world: World, engine: Any) -> None:
    world.settings = world.settings.replace(idle_timeout_s=600.0)
    runtime = DockerRuntime(world.settings)
    first, second = world.session, world.new_session()
    runtime.start(first, "gen-1", {"TZ": "UTC"})
    runtime.wait_started(first.id)
    runtime.retire(first.id)  # returns while the engine removes the container
    assert runtime.is_running(first.id)
    runtime.start(second, "gen-2", {"TZ": "UTC"})
    started = runtime.wait_started(second.id)
    assert [c["Id"] for c in containers(engine, runtime.install)] == [started]  # the first was gone before it started
    assert not runtime.is_running(first.id)
    runtime.retire(second.id)
    runtime.close(stop_runners=False)  # a one-off sweep's runners stay; one it retired does not outlive it
    assert containers(engine, runtime.install) == []


def test_a_start_replaces_a_runner_a_previous_host_left_running(
        world: World, engine: Any, wait_for: Callable[..., Any]) -> None:
    world.settings = world.settings.replace(idle_timeout_s=600.0)
    previous = DockerRuntime(world.settings)
    previous.start(world.session, "gen-old", {"TZ": "UTC", "NCL_IDLE_TIMEOUT_S": "600"})
    old_id = previous.wait_started(world.session.id)
    previous.close(stop_runners=False)
    current = DockerRuntime(world.settings)  # a new host process: it knows nothing of the old container
    try:
        row_id = chat(world, "again")
        Runners(current, world.settings).start(world.session, NOW)
        new_id = current.wait_started(world.session.id)
        assert [c["Id"] for c in containers(engine, current.install)] == [new_id] != [old_id]
        assert wait_for(lambda: replies(world)) == [(row_id, "mock: again")]
    finally:
        current.close(stop_runners=True)


def test_cleanup_removes_this_installs_orphans_only(
        world: World, engine: Any, other_install: str, runner_image: str) -> None:
    world.settings = world.settings.replace(idle_timeout_s=600.0)
    gone = DockerRuntime(world.settings)  # the host that crashed
    gone.start(world.session, "gen-old", {"TZ": "UTC"})
    gone.wait_started(world.session.id)
    gone.close(stop_runners=False)
    assert DockerRuntime(world.settings).cleanup_orphans() == 1
    assert containers(engine, gone.install) == []
    assert engine.api.inspect_container(other_install)["State"]["Running"]


def test_an_engine_that_is_away_is_retried_without_a_restart(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    monkeypatch.setattr(docker_runtime, "RETRY_S", 0.5)
    connects: list[int] = []

    def factory() -> Any:  # the first connection finds no engine; later ones find the real one
        connects.append(1)
        if len(connects) == 1:
            return docker.DockerClient(base_url=f"unix://{world.settings.data_dir}/no-engine.sock", timeout=2)
        return docker.from_env()

    runtime = DockerRuntime(world.settings, client_factory=factory)
    try:
        runtime.start(world.session, "gen-1", {"TZ": "UTC"})
        with pytest.raises(Exception, match=r"no-engine\.sock|Connection|No such file"):
            runtime.wait_started(world.session.id)
        assert not runtime.is_running(world.session.id)
        runtime.start(world.session, "gen-2", {"TZ": "UTC"})  # within RETRY_S: fails at once, the engine not asked
        with pytest.raises(ConnectionError, match="docker engine not reachable"):
            runtime.wait_started(world.session.id)
        assert len(connects) == 1
        time.sleep(0.6)
        runtime.start(world.session, "gen-3", {"TZ": "UTC"})
        runtime.wait_started(world.session.id)
        assert runtime.is_running(world.session.id) and len(connects) == 2
    finally:
        runtime.close(stop_runners=True)


def test_a_non_root_host_runs_the_runner_as_its_own_uid(
        world: World, monkeypatch: pytest.MonkeyPatch, engine: Any, wait_for: Callable[..., Any]) -> None:
    """Files owned by the host's uid, no hand-over: the runner runs as that uid and can write them."""
    for root, dirs, files in os.walk(world.settings.data_dir):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, 4242, 4242)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getegid", lambda: 4242)
    runtime = DockerRuntime(world.settings)
    try:
        row_id = chat(world, "as you")
        Runners(runtime, world.settings).start(world.session, NOW)
        assert engine.api.inspect_container(runtime.wait_started(world.session.id))["Config"]["User"] == "4242:4242"
        assert wait_for(lambda: replies(world)) == [(row_id, "mock: as you")]
        assert (world.session.folder / "outbound.db").stat().st_uid == 4242
        assert oct(world.session.folder.stat().st_mode & 0o7777) == "0o700"  # as made (private): nothing handed over
    finally:
        runtime.close(stop_runners=True)


WAKE_PROBE = r"""
import asyncio
from pathlib import Path
from agent_runner.wake import InboxWatch, Poll
from schemas import clock

async def main():
    watch = InboxWatch(Path("/workspace/inbound.db"), Poll(clock, 3600))
    print("watching", flush=True)
    print("woken" if await watch.wait(120) else "timed out", flush=True)

asyncio.run(main())
"""


def test_an_idle_runner_in_a_container_is_woken_by_the_hosts_write(
        world: World, runtime: DockerRuntime, engine: Any, wait_for: Callable[..., Any]) -> None:
    """Issue 13: the idle wait is inotify on the mounted inbound.db; the host writes it outside the container."""
    runtime.start(world.session, "gen-wake", runner_env(world.settings, world.session, "gen-wake", ""),
                  entrypoint=["/opt/ncl/bin/python", "-c", WAKE_PROBE])
    container_id = runtime.wait_started(world.session.id)
    wait_for(lambda: b"watching" in engine.api.logs(container_id), timeout=60, every=0.1)
    chat(world)
    assert engine.api.wait(container_id, timeout=150)["StatusCode"] == 0, engine.api.logs(container_id).decode()
    assert engine.api.logs(container_id).decode().split() == ["watching", "woken"]
