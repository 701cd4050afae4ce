"""A ``container`` scheduled task in the real Docker engine (DESIGN §9 seed example): ``echo scheduled`` on
``ncl-base:bookworm`` succeeds with its output kept, in a container with no network that is removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest
from kit import FakeClock, utc

from host import settings as settings_module
from host.project_tasks import specs as scheduled
from host.project_tasks.fire import ScheduledTasks
from host.settings import Settings
from host.store import db
from schemas import ids

pytestmark = pytest.mark.docker
IMAGE = "ncl-base:bookworm"
NOW = utc("2026-06-11T13:00:00")
SLOT = utc("2026-06-11T13:30:00")  # 09:30 in America/New_York


class Spy:
    """The real client, recording what ``containers.run`` is given."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[dict[str, Any]] = []

    @property
    def containers(self) -> Spy:
        return self

    def run(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.client.containers.run(**kwargs)

    def get(self, name: str) -> Any:
        return self.client.containers.get(name)


@pytest.fixture
def base_image(engine: Any) -> str:
    import docker.errors

    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {IMAGE} missing; scripts/build-base-image.sh builds it")
    return IMAGE


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    environ = {"NCL_DATA_DIR": str(tmp_path / "data"), "TZ": "America/New_York"}
    return settings_module.load(environ=environ, cwd=tmp_path, system_tz="UTC")


@pytest.fixture
def spy(engine: Any) -> Iterator[Spy]:
    made = Spy(engine)
    yield made
    for call in made.calls:  # a failed assertion must not leave containers behind
        with suppress(Exception):
            engine.containers.get(call["name"]).remove(force=True)


def fire(settings: Settings, spy: Spy, image: str, command: str, timeout_s: int = 120) -> dict[str, Any]:
    """Add the task, fire its 09:30 slot, wait for the run, return the run row."""
    text = (f"version: v1\nkind: ScheduledTask\nschedule: 30 9 * * *\n"
            f"container: {{image: {image}, command: {command!r}, timeout_seconds: {timeout_s}}}\n")
    spec = scheduled.parse(text, "t.yaml", settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with closing(db.connect(settings.central_db, "central")) as conn:
        task = scheduled.add(conn, spec, ids.new_id("sched", NOW), NOW, settings.tz.zone)
    firer = ScheduledTasks(settings, FakeClock(SLOT).now, docker_client=lambda: spy)
    try:
        assert firer.tick(SLOT).fired == 1
        firer.wait(timeout_s + 60)
    finally:
        firer.close(stop_running=True)
    with closing(db.connect(settings.central_db, "central")) as conn:
        (run,) = scheduled.runs(conn, task.id)
    return run


def test_echo_scheduled_succeeds_in_an_isolated_container_that_is_then_removed(
        settings: Settings, spy: Spy, base_image: str, engine: Any) -> None:
    run = fire(settings, spy, base_image, "echo scheduled")
    assert (run["status"], run["exit_code"], run["output_tail"], run["error"]) == ("succeeded", 0, "scheduled", None)
    (call,) = spy.calls
    assert (call["network_mode"], call["network_disabled"]) == ("none", True)
    assert call["cap_drop"] == ["ALL"] and call["read_only"] is True
    assert call["security_opt"] == ["no-new-privileges"]
    assert "ncl.install" not in call["labels"]  # else the runner runtime would remove it as an orphan
    assert engine.containers.list(all=True, filters={"name": call["name"]}) == []


def test_the_container_has_no_network_interface_but_loopback(settings: Settings, spy: Spy, base_image: str) -> None:
    run = fire(settings, spy, base_image, "ls /sys/class/net")
    assert (run["status"], run["output_tail"]) == ("succeeded", "lo")


def test_a_failing_command_keeps_its_exit_code_and_output(settings: Settings, spy: Spy, base_image: str) -> None:
    run = fire(settings, spy, base_image, "sh -c 'echo broken >&2; exit 4'")
    assert (run["status"], run["exit_code"], run["output_tail"]) == ("failed", 4, "broken")


def test_a_container_past_its_timeout_is_killed(settings: Settings, spy: Spy, base_image: str,
                                                engine: Any) -> None:
    run = fire(settings, spy, base_image, "sh -c 'echo started; sleep 60'", timeout_s=1)
    assert run["status"] == "timeout" and "killed after 1 s" in run["error"] and run["output_tail"] == "started"
    assert engine.containers.list(all=True, filters={"name": spy.calls[0]["name"]}) == []


def test_a_missing_image_is_a_failed_run(settings: Settings, spy: Spy, engine: Any) -> None:
    run = fire(settings, spy, "ncl-no-such-image:never", "true")
    assert run["status"] == "failed" and run["error"].startswith("cannot start the container:")
