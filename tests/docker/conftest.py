"""tests/docker: the real Docker engine and the real runner image (DESIGN §8 acceptance).

Without an engine every test here is skipped, saying why; with ``NCL_REQUIRE_DOCKER=1`` (set by ``.ci/run``)
that is a failure instead, so CI can never pass by skipping them. The image is ``NCL_TEST_IMAGE`` (default
``ncl-agent:test``) built on ``ncl-base:bookworm``: reused when its ``ncl.source`` label matches this checkout
(``.ci/run`` builds it with ``ncl image build``), rebuilt otherwise, so a test never runs stale runner code.
Only here may tests sleep: they poll real containers with a deadline.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import World

from host.runtimes import image
from host.runtimes.docker import DockerRuntime
from host.runtimes.install import install_id

TEST_IMAGE = os.environ.get("NCL_TEST_IMAGE", "ncl-agent:test")
BASE = "ncl-base:bookworm"


def _unavailable(reason: str) -> None:
    if os.environ.get("NCL_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (NCL_REQUIRE_DOCKER=1: tests/docker must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # the SDK raises many kinds; any of them means "no engine here"
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        _unavailable(f"no Docker engine answers ({reason}); scripts/docker-engine.sh starts one")
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _needs_engine(engine: Any) -> None:
    """Every test in this folder needs the engine, whether or not it asks for it."""


@pytest.fixture(scope="session")
def runner_image(engine: Any) -> str:
    import docker.errors

    if image.is_current(engine, TEST_IMAGE, BASE):
        return TEST_IMAGE
    try:
        engine.images.get(BASE)
    except docker.errors.ImageNotFound:
        _unavailable(f"base image {BASE} missing; run scripts/build-base-image.sh")
    image.build(TEST_IMAGE, BASE, progress=lambda line: print(line, file=sys.stderr))
    return TEST_IMAGE


@pytest.fixture
def world(tmp_path: Path, runner_image: str, engine: Any) -> Iterator[World]:
    """One group and session on real files, runners from the test image, idle exit after 2 s. Every container
    of this test's install (its data directory) is removed afterwards, whatever the test left."""
    made = World(tmp_path, NCL_IMAGE=runner_image, NCL_IDLE_TIMEOUT_S="2")
    yield made
    for item in engine.api.containers(all=True, filters={"label": f"ncl.install={install_id(made.settings)}"}):
        engine.api.remove_container(item["Id"], force=True)


@pytest.fixture
def runtime(world: World) -> Iterator[DockerRuntime]:
    made = DockerRuntime(world.settings)
    yield made
    made.close(stop_runners=True)


def _wait_for(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"still nothing after {timeout}s from {getattr(check, '__name__', check)}")


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(check, timeout=30)`` polls ``check`` until it returns something truthy, which it returns."""
    return _wait_for
