"""Issue 11 in the real engine and image. Point 5: a gate script's ``setsid`` and double-forked daemons die when
the gate ends, not when the container does (the issue's ``setsid python3 flipper.py &`` lived as long as the
container), and no zombie is left in a long-lived runner container. Point 9: runner and project task containers
have a CPU limit (NCL_CONTAINER_CPUS), no swap beyond their memory limit and ``nofile`` 1024.

Container processes are visible in the host's /proc, so the daemons are found by their argv markers from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from kit import World
from process_marks import gate_script, kill_marked, marked, new_markers

from host.project_tasks.specs import ContainerTarget
from host.project_tasks.targets import container_kwargs
from host.runtimes.docker import DockerRuntime, resource_limits
from host.runtimes.install import install_id
from host.runtimes.pool import runner_env
from host.store import db
from schemas import clock
from schemas.proctree import children_of, stat_fields

pytestmark = pytest.mark.docker
MIB = 1 << 20
NOFILE = [{"Name": "nofile", "Soft": 1024, "Hard": 1024}]


@pytest.fixture
def markers() -> Iterator[list[str]]:
    found = new_markers()
    yield found
    kill_marked(*found)


@pytest.fixture
def world(tmp_path: Path, runner_image: str, engine: Any) -> Iterator[World]:
    made = World(tmp_path, NCL_IMAGE=runner_image, NCL_IDLE_TIMEOUT_S="60", NCL_CONTAINER_CPUS="0.5",
                 NCL_CONTAINER_MEMORY="256m")
    yield made
    for item in engine.api.containers(all=True, filters={"label": f"ncl.install={install_id(made.settings)}"}):
        engine.api.remove_container(item["Id"], force=True)
    made.central.close()


def assert_limited(host_config: dict[str, Any]) -> None:
    assert host_config["NanoCpus"] == 500_000_000  # NCL_CONTAINER_CPUS=0.5
    assert host_config["Memory"] == 256 * MIB
    assert host_config["MemorySwap"] == host_config["Memory"]  # memory + swap = memory: no swap at all
    assert host_config["Ulimits"] == NOFILE
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "4m", "max-file": "1"}}


def test_a_runner_container_has_a_cpu_limit_no_swap_and_nofile_1024(world: World, engine: Any) -> None:
    runtime = DockerRuntime(world.settings)
    probe = "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE))"
    try:
        runtime.start(world.session, "gen-limits", runner_env(world.settings, world.session, "gen-limits", ""),
                      entrypoint=["/opt/ncl/bin/python", "-c", probe])
        container_id = runtime.wait_started(world.session.id)
        assert engine.api.wait(container_id, timeout=60)["StatusCode"] == 0
        assert engine.api.logs(container_id, stderr=False).decode().strip() == "(1024, 1024)"
        assert_limited(engine.api.inspect_container(container_id)["HostConfig"])
    finally:
        runtime.close(stop_runners=True)


def test_a_project_container_task_has_the_same_limits(world: World, engine: Any) -> None:
    target = ContainerTarget(image="ncl-base:bookworm", command=["true"])  # what the runner image is built on
    kwargs = container_kwargs(target, f"ncl-limits-{install_id(world.settings)}", {}, {},
                              resource_limits(world.settings))
    container = engine.containers.run(**kwargs)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert_limited(engine.api.inspect_container(container.id)["HostConfig"])
    finally:
        container.remove(force=True)


def _ack(world: World, message_id: str) -> dict[str, Any] | None:
    with closing(db.connect(world.session.folder / "outbound.db", "outbound", readonly=True)) as conn:
        row = conn.execute("SELECT * FROM processing_ack WHERE message_id = ? AND status <> 'processing'",
                           (message_id,)).fetchone()
    return dict(row) if row else None


def _zombies_below(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            fields = stat_fields(child)
            if fields and fields[0] == "Z":
                found.append(child)
            todo.append(child)
    return found


def test_a_gates_daemons_die_when_the_gate_ends_and_leave_no_zombie_in_the_living_container(
        world: World, engine: Any, markers: list[str]) -> None:
    runtime = DockerRuntime(world.settings)
    try:
        task_id = world.schedule(clock.now(), script=gate_script(markers))  # no time, no cron: due at once
        runtime.start(world.session, "gen-gate", runner_env(world.settings, world.session, "gen-gate", ""))
        container_id = runtime.wait_started(world.session.id)
        deadline = time.monotonic() + 60
        while (ack := _ack(world, task_id)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ack is not None, engine.api.logs(container_id).decode()
        # skipped: the script saw its three daemons alive before it answered; the ack comes after the gate's end.
        assert json.loads(ack["detail"])["outcome"] == "skipped", ack
        assert marked(*markers) == []
        state = engine.api.inspect_container(container_id)["State"]
        assert state["Running"], "the container ended: this test is about the gate's end"
        assert _zombies_below(state["Pid"]) == []
    finally:
        runtime.close(stop_runners=True)
