"""Runtime selection and the docker runtime's decisions that need no engine (DESIGN §8): which runtime and why,
who the runner runs as, what it may write, what never enters its environment, and clear failures."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from kit import World

from host.cli import checks as doctor
from host.errors import NclError
from host.files.confined import Refused
from host.runtimes import factory as runtime
from host.runtimes import image, workspace
from host.runtimes.docker import CONTAINER_UID, DockerRuntime, check_env, container_user
from host.runtimes.install import install_id
from host.runtimes.local import LocalRuntime
from host.runtimes.workspace import hand_over
from host.settings import Settings


def settings(tmp_path: Path, **env: str) -> Settings:
    return World(tmp_path, **env).settings


def never(_settings: Settings) -> str | None:
    raise AssertionError("an explicit NCL_RUNTIME must not probe the engine")


def test_explicit_choices_do_not_probe(tmp_path: Path) -> None:
    assert runtime.choose(settings(tmp_path / "a", NCL_RUNTIME="local"), never) == ("local", "NCL_RUNTIME=local")
    name, reason = runtime.choose(settings(tmp_path / "b", NCL_RUNTIME="docker"), never)
    assert name == "docker" and "retried" in reason  # an engine that is down now is not a reason to refuse


def test_auto_picks_docker_when_the_engine_and_image_are_there(tmp_path: Path) -> None:
    chosen, reason = runtime.select_runtime(settings(tmp_path, NCL_IMAGE="ncl-agent:x"), lambda s: None)
    assert isinstance(chosen, DockerRuntime)
    assert reason == "NCL_RUNTIME=auto: docker engine reachable and image ncl-agent:x present"


@pytest.mark.parametrize("problem", ["docker engine not reachable (connection refused)",
                                     "image ncl-agent:latest missing (build it with 'ncl image build')"])
def test_auto_falls_back_to_local_saying_why(tmp_path: Path, problem: str) -> None:
    chosen, reason = runtime.select_runtime(settings(tmp_path), lambda s: problem)
    assert isinstance(chosen, LocalRuntime)
    assert reason == f"NCL_RUNTIME=auto: {problem}"


def test_local_is_announced_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chosen, reason = runtime.select_runtime(settings(tmp_path, NCL_RUNTIME="local"))
    with caplog.at_level(logging.INFO):
        chosen.announce(reason)
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "runtime_selected"]
    assert (record.levelno, getattr(record, "runtime", None)) == (logging.WARNING, "local")


def test_doctor_says_which_runtime_and_why(tmp_path: Path) -> None:
    check = doctor.runtime(settings(tmp_path, NCL_RUNTIME="local"))
    assert (check.name, check.ok) == ("runtime", True)
    assert check.detail.startswith("local: NCL_RUNTIME=local") and "NO isolation" in check.detail
    docker_check = doctor.runtime(settings(tmp_path / "d", NCL_RUNTIME="docker"))
    assert docker_check.detail.startswith("docker: NCL_RUNTIME=docker")


# --- the docker runtime's settings, without an engine ---------------------------------------------------


def test_the_runner_is_never_root() -> None:
    assert container_user(0, 0) == (CONTAINER_UID, CONTAINER_UID)
    assert container_user(1000, 1001) == (1000, 1001)


def test_install_id_is_stable_per_data_dir(tmp_path: Path) -> None:
    one = settings(tmp_path / "one")
    assert install_id(one) == install_id(one.replace()) != install_id(settings(tmp_path / "two"))


def test_no_credential_enters_a_container(tmp_path: Path) -> None:
    world = World(tmp_path)
    made = DockerRuntime(world.settings)
    for name in ("ANTHROPIC_API_KEY", "GITHUB_TOKEN", "my_secret", "DB_PASSWORD"):
        with pytest.raises(ValueError, match=name):
            made.start(world.session, "gen-1", {"TZ": "UTC", name: "x"})
    check_env({"TZ": "UTC", "NCL_MAX_BATCH": "20"})


def test_container_settings_follow_the_settings(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_CONTAINER_MEMORY="512m", NCL_CONTAINER_PIDS="99", NCL_IMAGE="img:1")
    kwargs = DockerRuntime(world.settings).container_kwargs(world.session, {"TZ": "America/New_York"})
    assert (kwargs["image"], kwargs["mem_limit"], kwargs["pids_limit"]) == ("img:1", "512m", 99)
    assert (kwargs["network_mode"], kwargs["network_disabled"]) == ("none", True)
    assert (kwargs["cap_drop"], kwargs["read_only"]) == (["ALL"], True)
    assert kwargs["volumes"][str(world.session.folder / "inbound.db")] == {"bind": "/workspace/inbound.db",
                                                                             "mode": "ro"}


def test_a_start_without_an_engine_fails_and_is_not_retried_at_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    calls: list[int] = []

    def no_engine() -> Any:
        calls.append(1)
        raise docker.errors.DockerException("Error while fetching server API version: connection refused")

    made = DockerRuntime(world.settings, client_factory=no_engine)
    try:
        for generation in ("gen-1", "gen-2"):
            made.start(world.session, generation, {"TZ": "UTC"})
            with pytest.raises(Exception, match="connection refused"):
                made.wait_started(world.session.id)
            assert not made.is_running(world.session.id)
        assert calls == [1]  # the second start failed fast: the engine was asked moments ago
    finally:
        made.close(stop_runners=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root")
def test_a_root_host_hands_the_runner_only_what_it_writes(tmp_path: Path) -> None:
    world = World(tmp_path)
    folder, group_dir = world.session.folder, world.settings.groups_dir / world.group.id
    (group_dir / "skills").mkdir(parents=True)
    (group_dir / "skills" / "s.md").write_text("skill")
    outside = tmp_path / "outside.txt"
    outside.write_text("host's")
    (group_dir / "link").symlink_to(outside)
    hand_over(folder, group_dir, 10001, 10001)
    for shared in (folder, folder / "outbox"):
        info = shared.stat()
        assert (info.st_uid, info.st_gid) == (0, 10001) and info.st_mode & (stat.S_ISVTX | stat.S_IWGRP)
    assert (folder / "outbound.db").stat().st_uid == 10001
    assert (folder / "inbound.db").stat().st_uid == 0 and (folder / "inbox").stat().st_uid == 0
    assert {p.lstat().st_uid for p in [group_dir, *group_dir.rglob("*")]} == {10001}
    assert outside.stat().st_uid == 0  # the link was handed over, never its target


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root")
def test_a_file_the_runner_hard_linked_is_never_handed_over(tmp_path: Path) -> None:
    """With fs.protected_hardlinks=0 a runner may link ``inbound.db`` as ``.heartbeat`` (its folder's sticky bit lets it
    make names), and a file of the host's into its group folder: a chown of either handed the runner the host's inode
    (attack review)."""
    world = World(tmp_path)
    folder, group_dir = world.session.folder, world.settings.groups_dir / world.group.id
    group_dir.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("host's")
    os.link(outside, group_dir / "linked.txt")
    (group_dir / "own.txt").write_text("the operator's skill")
    hand_over(folder, group_dir, 10001, 10001)
    assert outside.stat().st_uid == 0 and (group_dir / "own.txt").stat().st_uid == 10001
    os.link(folder / "inbound.db", folder / ".heartbeat")
    with pytest.raises(NclError, match="hard link"):
        hand_over(folder, group_dir, 10001, 10001)
    assert (folder / "inbound.db").stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root")
def test_a_group_folder_of_any_depth_or_size_is_handed_over_in_bounded_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Python's fwalk recurses: a tree 3,000 deep raised RecursionError and stopped every start of the group, and a
    tree of millions cost each start seconds (attack review)."""
    world = World(tmp_path)
    folder, group_dir = world.session.folder, world.settings.groups_dir / world.group.id
    group_dir.mkdir(parents=True, exist_ok=True)
    (group_dir / "skills" / "a").mkdir(parents=True)
    (group_dir / "skills" / "a" / "skill.md").write_text("the operator's")
    fd = os.open(group_dir, os.O_RDONLY)
    for _ in range(3000):  # (past PATH_MAX: made a level at a time)
        os.mkdir("d", dir_fd=fd)
        fd, above = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(above)
    os.close(fd)
    try:
        hand_over(folder, group_dir, 10001, 10001)
    finally:
        deeper = group_dir.joinpath(*["d"] * workspace.TREE_DEPTH).stat().st_uid
        while (group_dir / "d" / "d").exists():  # (shutil.rmtree, pytest's, recurses too) a level at a time
            (group_dir / "d" / "d").rename(group_dir / "up")
            (group_dir / "d").rmdir()
            (group_dir / "up").rename(group_dir / "d")
        (group_dir / "d").rmdir()
    assert (group_dir / "skills" / "a" / "skill.md").stat().st_uid == 10001 and deeper == 10001
    wide = group_dir / "wide"
    wide.mkdir()
    for n in range(100):
        (wide / f"f{n}").write_text("x")
    monkeypatch.setattr(workspace, "TREE_ENTRIES", 60)
    hand_over(folder, group_dir, 20002, 20002)
    assert "only the first were handed" in caplog.text
    assert sum(p.lstat().st_uid == 20002 for p in wide.iterdir()) < 100


# --- ncl image build, failing clearly -----------------------------------------------------------------------


def test_image_build_without_an_engine_is_one_clear_line(ncl: Any, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    done = ncl("image", "build", "--base", "ncl-base:bookworm")
    assert done.code == 1 and done.out == ""
    assert len(done.err_lines) == 1 and done.err_lines[0].startswith("ncl: docker engine not reachable")


def test_a_missing_base_image_says_how_to_get_it() -> None:
    class Images:
        def get(self, name: str) -> None:
            raise docker.errors.ImageNotFound(name)

        def pull(self, name: str) -> None:
            raise docker.errors.APIError("pull access denied")

    client = type("Client", (), {"images": Images()})()
    with pytest.raises(image.ImageError) as failed:
        image._ensure_base(client, "ncl-base:bookworm", lambda line: None)
    assert str(failed.value) == ("base image ncl-base:bookworm not found; run scripts/build-base-image.sh"
                                 " or docker pull ncl-base:bookworm")


@pytest.mark.parametrize("which", ["session", "group"])
def test_a_folder_swapped_for_a_symlink_is_never_mounted(tmp_path: Path, which: str) -> None:
    world = World(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = world.session.folder if which == "session" else world.settings.groups_dir / world.session.agent_group_id
    folder.mkdir(parents=True, exist_ok=True)
    folder.rename(tmp_path / "moved")
    folder.symlink_to(elsewhere)
    with pytest.raises(Refused, match="symlink"):
        DockerRuntime(world.settings).container_kwargs(world.session, {"TZ": "UTC"})
