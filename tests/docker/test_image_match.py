"""Issue 13, point 5 with the real engine (DESIGN §8, §12.9): the image ``ncl image build`` makes carries the host's
versions; an image re-labelled with another schema version, or one with no ncl labels, makes ``auto`` fall back to
local saying why, fails a ``docker`` start with one line naming ``ncl image build``, and shows in ``ncl doctor``."""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from cli_kit import Ncl, ok
from kit import World, utc

from host.runtimes import factory, image
from host.runtimes.docker import DockerRuntime
from host.runtimes.install import install_id
from host.runtimes.local import LocalRuntime
from host.runtimes.pool import Runners
from schemas.ddl import latest_version

pytestmark = pytest.mark.docker
UNLABELLED = "ncl-base:bookworm"  # what the runner image is built on: it has no ncl labels
NOW = utc("2026-01-14T15:00:00")


@pytest.fixture(scope="module")
def relabelled(engine: Any, runner_image: str) -> Iterator[str]:
    """The runner image with another inbound schema version on its label (a tiny build, no network)."""
    tag = f"ncl-agent:mismatch-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {runner_image}\nLABEL ncl.schema.inbound={latest_version('inbound') + 1}\n"
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none", pull=False, rm=True)
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture(params=["relabelled", "unlabelled"])
def foreign(request: pytest.FixtureRequest) -> str:
    """An image runners must not start from: built for another schema version, or not by ``ncl image build``."""
    return str(request.getfixturevalue("relabelled")) if request.param == "relabelled" else UNLABELLED


def test_the_built_image_carries_the_hosts_versions_and_is_chosen(engine: Any, runner_image: str,
                                                                   tmp_path: Path) -> None:
    assert engine.images.get(runner_image).labels.items() >= image.host_versions().labels().items()
    name, reason = factory.choose(World(tmp_path, NCL_IMAGE=runner_image).settings)
    assert (name, reason) == ("docker", f"NCL_RUNTIME=auto: docker engine reachable and image {runner_image} present")


def test_auto_falls_back_to_local_from_a_foreign_image(foreign: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    chosen, reason = factory.select_runtime(World(tmp_path, NCL_IMAGE=foreign).settings)
    assert isinstance(chosen, LocalRuntime)
    assert reason.startswith(f"NCL_RUNTIME=auto: image {foreign} was built for ")
    assert reason.endswith("; rebuild it with 'ncl image build'")
    with caplog.at_level(logging.INFO):
        chosen.announce(reason)
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "runtime_selected"]
    assert record.levelno == logging.WARNING and reason in record.getMessage()


def test_docker_fails_the_start_with_one_line(foreign: str, tmp_path: Path, engine: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, NCL_RUNTIME="docker", NCL_IMAGE=foreign)
    runtime = DockerRuntime(world.settings)
    try:
        with caplog.at_level(logging.INFO):
            Runners(runtime, world.settings).start(world.session, NOW)
            with pytest.raises(image.ImageRefused):
                runtime.wait_started(world.session.id)
    finally:
        runtime.close(stop_runners=True)
    [line] = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "runner_start_failed"]
    assert line.startswith(f"runner of {world.session.id} failed to start: image {foreign} was built for ")
    assert "\n" not in line and line.endswith("; rebuild it with 'ncl image build'")
    assert engine.api.containers(all=True, filters={"label": f"ncl.install={install_id(world.settings)}"}) == []


def test_doctor_shows_both_versions(ncl: Ncl, monkeypatch: pytest.MonkeyPatch, relabelled: str,
                                    runner_image: str) -> None:
    host = image.host_versions()
    monkeypatch.setenv("NCL_IMAGE", runner_image)
    report = ok(ncl("doctor", "--json")).json()
    [matching] = [c for c in report["checks"] if c["name"] == "image"]
    assert matching["level"] == "ok" and matching["image_versions"] == matching["host_versions"] == host.to_json()
    assert f"(image: {host.describe()}; host: {host.describe()})" in matching["detail"]
    monkeypatch.setenv("NCL_IMAGE", relabelled)
    monkeypatch.setenv("NCL_RUNTIME", "docker")
    done = ncl("doctor")
    assert done.code == 1
    [line] = [x for x in done.out.splitlines() if x.split()[1:2] == ["image"]]
    assert line.split()[0] == "FAIL" and f"{relabelled} was built for ncl {host.ncl}, schemas inbound " \
        f"v{latest_version('inbound') + 1}/outbound v{latest_version('outbound')} but this host is " \
        f"{host.describe()}; rebuild it with 'ncl image build'" in line


def test_ncl_image_build_labels_the_image_and_says_so(ncl: Ncl, engine: Any, runner_image: str) -> None:
    tag = f"ncl-agent:labels-{uuid.uuid4().hex[:8]}"
    try:
        built = ok(ncl("image", "build", "--base", "ncl-base:bookworm", "--tag", tag, "--json")).json()
        host = image.host_versions()
        assert (built["image"], built["versions"]) == (tag, host.to_json())
        assert engine.images.get(tag).labels.items() >= host.labels().items()
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):  # the build failed: the test says why
            engine.images.remove(tag, force=True)
