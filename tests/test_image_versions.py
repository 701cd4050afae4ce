"""Issue 13, point 5: a runner image must match the host (DESIGN §8, §12.9). ``ncl image build`` labels it with
ncl's version and the inbound and outbound schema versions; ``auto`` falls back to local from an image whose
schema labels differ (or that has none), ``docker`` fails the start with one line naming ``ncl image build``, and
``ncl doctor`` shows the image's versions next to the host's. The engine is a fake holding label dicts."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
from kit import World

from host.cli import checks as doctor
from host.runtimes import factory, image
from host.runtimes.docker import DockerRuntime
from host.runtimes.local import LocalRuntime
from schemas.ddl import latest_version

INBOUND, OUTBOUND = latest_version("inbound"), latest_version("outbound")
MATCHING = {"ncl.version": "0.0.1-other", "ncl.schema.inbound": str(INBOUND), "ncl.schema.outbound": str(OUTBOUND)}
MISMATCHED = [
    pytest.param({**MATCHING, "ncl.schema.inbound": str(INBOUND + 1)}, id="newer-inbound"),
    pytest.param({**MATCHING, "ncl.schema.outbound": str(OUTBOUND - 1)}, id="older-outbound"),
    pytest.param({"ncl.schema.inbound": str(INBOUND)}, id="outbound-missing"),
    pytest.param({**MATCHING, "ncl.schema.inbound": "three"}, id="not-a-number"),
    pytest.param({}, id="no-labels"),
]


class Engine:
    """A docker client with one image of ``labels`` under every tag but ``missing``; creating a container fails
    the test (a refused image must never get that far)."""

    def __init__(self, labels: dict[str, str] | None, missing: str = "") -> None:
        self.labels, self.missing = labels, missing
        self.images = self
        self.containers = self
        self.api = SimpleNamespace(remove_container=lambda *a, **k: None, containers=lambda **k: [])

    def get(self, tag: str) -> Any:
        if tag == self.missing:
            raise docker.errors.ImageNotFound(tag)
        return SimpleNamespace(id="sha256:feed", labels=self.labels)

    def create(self, **kwargs: Any) -> None:
        raise AssertionError("a container was created from a refused image")

    def ping(self) -> bool:
        return True

    def version(self) -> dict[str, str]:
        return {"Version": "fake"}

    def close(self) -> None:
        pass


def engine_with(monkeypatch: pytest.MonkeyPatch, labels: dict[str, str] | None, missing: str = "") -> None:
    """The probe and doctor connect to this fake engine."""
    made = Engine(labels, missing)
    for module in (factory, doctor):
        monkeypatch.setattr(module, "connect_engine", lambda timeout: made)


# --- the labels and the decision ----------------------------------------------------------------------------


def test_an_image_built_here_carries_the_hosts_versions_and_matches() -> None:
    host = image.host_versions()
    labels = host.labels()
    assert labels == {"ncl.version": host.ncl, "ncl.schema.inbound": str(INBOUND),
                      "ncl.schema.outbound": str(OUTBOUND)}
    assert image.Versions.of(labels) == host and image.mismatch("img", host) is None


def test_only_the_schema_versions_must_match() -> None:
    assert image.mismatch("img", image.Versions.of(MATCHING)) is None  # another ncl version, same schemas


@pytest.mark.parametrize("labels", MISMATCHED)
def test_other_schema_versions_or_no_labels_never_match(labels: dict[str, str]) -> None:
    problem = image.mismatch("ncl-agent:x", image.Versions.of(labels))
    assert problem is not None and "\n" not in problem
    assert problem.startswith("ncl-agent:x was built for ")
    assert problem.endswith(f"but this host is ncl {image.host_versions().ncl}, schemas inbound v{INBOUND}/outbound "
                            f"v{OUTBOUND}; rebuild it with 'ncl image build'")


def test_an_image_without_labels_says_so() -> None:
    problem = image.mismatch("other:1", image.Versions.of({}))
    assert problem is not None and problem.startswith("other:1 was built for unknown versions (no ncl labels) but")


def test_inspect_tells_missing_from_mismatched() -> None:
    assert image.inspect(Engine(MATCHING), "img") == (image.Versions.of(MATCHING), None)
    assert image.inspect(Engine(MATCHING, missing="img"), "img") == (
        None, "img missing (build it with 'ncl image build')")
    versions, problem = image.inspect(Engine({}), "img")
    assert versions == image.Versions(None, None, None) and problem is not None


# --- auto: falls back to local, saying why -------------------------------------------------------------------


@pytest.mark.parametrize("labels", MISMATCHED)
def test_auto_falls_back_to_local_from_a_mismatched_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture,
                                                           labels: dict[str, str]) -> None:
    engine_with(monkeypatch, labels)
    chosen, reason = factory.select_runtime(World(tmp_path, NCL_IMAGE="ncl-agent:x").settings)
    assert isinstance(chosen, LocalRuntime)
    assert reason.startswith("NCL_RUNTIME=auto: image ncl-agent:x was built for ")
    assert reason.endswith("rebuild it with 'ncl image build'")
    with caplog.at_level(logging.INFO):
        chosen.announce(reason)
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "runtime_selected"]
    assert record.levelno == logging.WARNING and reason in record.getMessage()


def test_auto_picks_docker_from_a_matching_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine_with(monkeypatch, MATCHING)
    chosen, _ = factory.select_runtime(World(tmp_path).settings)
    assert isinstance(chosen, DockerRuntime)
    chosen.close(stop_runners=False)


# --- docker: the start fails with one line ------------------------------------------------------------------


@pytest.mark.parametrize("labels", [MISMATCHED[0], MISMATCHED[-1]])
def test_docker_refuses_to_start_a_runner_from_a_mismatched_image(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                   labels: dict[str, str]) -> None:
    world = World(tmp_path, NCL_RUNTIME="docker", NCL_IMAGE="ncl-agent:x")
    runtime = DockerRuntime(world.settings, client_factory=lambda: Engine(labels))
    try:
        with caplog.at_level(logging.INFO):
            runtime.start(world.session, "gen-1", {"TZ": "UTC"})
            with pytest.raises(image.ImageRefused, match=r"^image ncl-agent:x was built for .*'ncl image build'$"):
                runtime.wait_started(world.session.id)
        assert not runtime.is_running(world.session.id)
    finally:
        runtime.close(stop_runners=False)
    [line] = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "runner_start_failed"]
    assert "\n" not in line and line.endswith("rebuild it with 'ncl image build'")


def test_docker_names_the_build_command_for_a_missing_image(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_RUNTIME="docker", NCL_IMAGE="ncl-agent:gone")
    runtime = DockerRuntime(world.settings, client_factory=lambda: Engine(MATCHING, missing="ncl-agent:gone"))
    try:
        runtime.start(world.session, "gen-1", {"TZ": "UTC"})
        with pytest.raises(image.ImageRefused, match=r"^image ncl-agent:gone missing \(build it with 'ncl image"):
            runtime.wait_started(world.session.id)
    finally:
        runtime.close(stop_runners=False)


# --- doctor: the image's versions next to the host's ---------------------------------------------------------


def test_doctor_shows_a_matching_images_versions_next_to_the_hosts(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine_with(monkeypatch, MATCHING)
    _, check, problem = doctor.docker_engine(World(tmp_path, NCL_IMAGE="img:1").settings)
    host = image.host_versions()
    assert (check.level, problem) == ("ok", None)
    assert check.detail == (f"img:1 present (image: ncl 0.0.1-other, schemas inbound v{INBOUND}/outbound v{OUTBOUND};"
                            f" host: {host.describe()})")
    extra = check.to_json()
    assert extra["image_versions"] == {"ncl": "0.0.1-other", "inbound": INBOUND, "outbound": OUTBOUND}
    assert extra["host_versions"] == {"ncl": host.ncl, "inbound": INBOUND, "outbound": OUTBOUND}


@pytest.mark.parametrize(("runtime", "level"), [("auto", "warn"), ("docker", "fail")])
def test_doctor_flags_a_mismatched_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str,
                                         level: str) -> None:
    engine_with(monkeypatch, {**MATCHING, "ncl.schema.inbound": "1"})
    settings = World(tmp_path, NCL_IMAGE="img:1", NCL_RUNTIME=runtime).settings
    _, check, problem = doctor.docker_engine(settings)
    assert check.level == level and "img:1 was built for ncl 0.0.1-other, schemas inbound v1/" in check.detail
    assert check.to_json()["image_versions"]["inbound"] == 1
    if runtime == "auto":
        assert doctor.runtime(settings, lambda _: problem).detail.startswith(
            "local: NCL_RUNTIME=auto: image img:1 was built for ")


@pytest.mark.parametrize(("runtime", "level"), [("auto", "warn"), ("docker", "fail"), ("local", "ok")])
def test_doctor_without_an_image_still_shows_the_hosts_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 runtime: str, level: str) -> None:
    engine_with(monkeypatch, MATCHING, missing="img:1")
    _, check, _ = doctor.docker_engine(World(tmp_path, NCL_IMAGE="img:1", NCL_RUNTIME=runtime).settings)
    assert check.level == level and check.detail.startswith("img:1 missing")
    assert check.to_json()["image_versions"] is None
    assert check.detail.endswith(f"(host: {image.host_versions().describe()})")
