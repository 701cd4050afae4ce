"""Children a runner starts in sessions of their own (``schemas.detached``), against real processes: the host kills
what a runner listed (``host.runtimes.local.kill_detached``, which reads the list with no link followed), and
nothing else; the gate lists its script; the local runtime kills what a runner left."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import World, exits_within

from agent_runner.gate import run_gate
from host.runtimes.local import LocalRuntime, kill_detached
from schemas import detached

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or not hasattr(os, "pidfd_open"),
                                reason="/proc and pidfd_open are Linux-only")


class Detached:
    """``bash -c 'sleep 60 & wait'`` in a session of its own, as the gate and MCP servers run: the leader and the
    member of its group it started."""

    def __init__(self) -> None:
        self.leader = subprocess.Popen(["bash", "-c", "sleep 60 & echo $!; wait"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, start_new_session=True)
        assert self.leader.stdout is not None
        self.member = int(self.leader.stdout.readline())

    @property
    def pid(self) -> int:
        return self.leader.pid

    def alive(self) -> bool:
        return self.leader.poll() is None and not exits_within(self.member, 0)

    def killed(self) -> bool:
        """Both gone, the leader by SIGKILL; waits at most 10 s."""
        return self.leader.wait(timeout=10) == -signal.SIGKILL and exits_within(self.member, 10)

    def close(self) -> None:
        # The group, not the member's pid: until the leader is reaped its group id cannot be anyone else's.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.leader.pid, signal.SIGKILL)
        self.leader.wait(timeout=10)
        assert self.leader.stdout is not None
        self.leader.stdout.close()


@pytest.fixture
def child() -> Iterator[Detached]:
    started = Detached()
    yield started
    started.close()


def listed(folder: Path) -> list[str]:
    return (folder / detached.FILE).read_text().splitlines()


def test_a_listed_session_leader_and_its_group_are_killed_and_the_list_forgotten(tmp_path: Path,
                                                                               child: Detached) -> None:
    detached.note(tmp_path, [child.pid])
    assert listed(tmp_path) == [f"{child.pid} {detached.start_time(child.pid)}"]
    assert kill_detached(tmp_path) == 1
    assert child.killed()
    assert not (tmp_path / detached.FILE).exists()
    assert kill_detached(tmp_path) == 0  # nothing listed: nothing to do


def test_a_pid_whose_start_time_differs_is_someone_else(tmp_path: Path, child: Detached) -> None:
    since = detached.start_time(child.pid)
    assert since is not None
    (tmp_path / detached.FILE).write_text(f"{child.pid} {since + 1}\n")
    assert kill_detached(tmp_path) == 0
    assert child.alive()


def test_a_live_process_that_leads_no_session_is_spared(tmp_path: Path) -> None:
    plain = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)  # in our own session and group
    try:
        detached.note(tmp_path, [os.getpid(), plain.pid])
        assert len(listed(tmp_path)) == 2
        assert kill_detached(tmp_path) == 0
        assert plain.poll() is None
    finally:
        plain.kill()
        plain.wait(timeout=10)


def test_malformed_lines_are_ignored(tmp_path: Path, child: Detached) -> None:
    since = detached.start_time(child.pid)
    junk = ["", "garbage", f"{child.pid}", f"{child.pid} {since} extra", f"-{child.pid} {since}", f"{child.pid} x",
            f"{child.pid} ²", "0 0", f"1 {detached.start_time(1)}", "\x00\xff"]
    (tmp_path / detached.FILE).write_text("\n".join(junk) + "\n")
    assert kill_detached(tmp_path) == 0
    assert child.alive()
    (tmp_path / detached.FILE).write_text("\n".join([*junk, f"{child.pid} {since}"]))  # no final newline
    assert kill_detached(tmp_path) == 1
    assert child.killed()


def test_a_symlinked_list_is_neither_read_nor_written_and_is_removed(tmp_path: Path, child: Detached) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(f"{child.pid} {detached.start_time(child.pid)}\n")
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / detached.FILE).symlink_to(elsewhere)
    detached.note(folder, [child.pid])
    assert kill_detached(folder) == 0
    assert child.alive()
    assert not (folder / detached.FILE).is_symlink()
    assert elsewhere.read_text().count("\n") == 1  # note() did not append through the link


def test_a_session_folder_replaced_by_a_symlink_is_not_read(tmp_path: Path, child: Detached) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / detached.FILE).write_text(f"{child.pid} {detached.start_time(child.pid)}\n")
    (tmp_path / "session").symlink_to(real)
    assert kill_detached(tmp_path / "session") == 0
    assert child.alive()
    assert (real / detached.FILE).exists()  # nor unlinked through the link


def test_a_list_flipped_between_a_file_and_a_link_is_never_read_through_the_link(tmp_path: Path,
                                                                                 child: Detached) -> None:
    """A runner flips ``.children`` between an empty file and a link to a list (outside its folder) naming a
    process it could not list itself: 2,000 reads, and the link is never followed."""
    outside = tmp_path / "outside"
    outside.write_text(f"{child.pid} {detached.start_time(child.pid)}\n")
    folder = tmp_path / "session"
    folder.mkdir()
    stop = threading.Event()

    def flip() -> None:
        link, plain = folder / "link", folder / "plain"
        while not stop.is_set():
            with contextlib.suppress(OSError):
                link.symlink_to(outside)
                os.replace(link, folder / detached.FILE)
            time.sleep(0)  # hand the GIL over while the link is in place
            with contextlib.suppress(OSError):
                plain.write_text("")
                os.replace(plain, folder / detached.FILE)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        assert sum(kill_detached(folder) for _ in range(2000)) == 0
    finally:
        stop.set()
        flipper.join()
    assert child.alive()


def test_a_fifo_in_place_of_the_list_does_not_block_and_is_removed(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / detached.FILE)
    assert kill_detached(tmp_path) == 0
    assert not (tmp_path / detached.FILE).exists()


def test_children_and_start_times_survive_odd_command_names(tmp_path: Path) -> None:
    odd = tmp_path / "s) 1 2 (x"  # the command name (field 2 of /proc/PID/stat) holds spaces and parentheses
    odd.symlink_to("/bin/bash")
    proc = subprocess.Popen([str(odd), "-c", "echo ready; read -r _"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # exec is done: the name is set
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == odd.name
        assert proc.pid in detached.children_of(os.getpid())
        since, ours = detached.start_time(proc.pid), detached.start_time(os.getpid())
        assert since is not None and ours is not None and since >= ours
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert detached.start_time(proc.pid) is None  # reaped
    assert detached.children_of(proc.pid) == []


def test_the_gate_hands_its_scripts_pid_to_on_start(tmp_path: Path) -> None:
    seen: list[int] = []
    result = run_gate('echo "{\\"wakeAgent\\": true, \\"data\\": $$}"', task_id="task-1", tz="UTC",
                      home=str(tmp_path), on_start=seen.append)
    assert result.outcome == "wake" and seen == [result.data]


# --- the local runtime kills what its runners left ---------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[World, LocalRuntime]]:
    world = World(tmp_path)
    runtime = LocalRuntime(world.settings)
    yield world, runtime
    for session_id in list(runtime.processes):
        runtime.stop(session_id)


def start_runner(world: World, runtime: LocalRuntime) -> subprocess.Popen[bytes]:
    runtime.start(world.session, "gen-test", {"TZ": "UTC", "NCL_IDLE_TIMEOUT_S": "60"})
    return runtime.processes[world.session.id]


def test_a_stopped_local_runners_listed_children_die_with_it(local: tuple[World, LocalRuntime],
                                                             child: Detached) -> None:
    world, runtime = local
    runner = start_runner(world, runtime)
    detached.note(world.session.folder, [child.pid])
    runtime.stop(world.session.id)
    assert runner.returncode == -signal.SIGKILL
    assert child.killed()
    assert not (world.session.folder / detached.FILE).exists()


def test_a_local_runner_found_dead_takes_its_listed_children_along(local: tuple[World, LocalRuntime],
                                                                   child: Detached) -> None:
    world, runtime = local
    runner = start_runner(world, runtime)
    detached.note(world.session.folder, [child.pid])
    os.killpg(runner.pid, signal.SIGKILL)  # as the OOM killer or a test would
    runner.wait(timeout=10)
    assert child.alive()  # the runner's group did not include it
    assert runtime.is_running(world.session.id) is False
    assert child.killed()


def test_children_a_previous_hosts_runner_left_are_killed_before_a_new_start(local: tuple[World, LocalRuntime],
                                                                            child: Detached) -> None:
    world, runtime = local
    detached.note(world.session.folder, [child.pid])
    start_runner(world, runtime)
    assert child.killed()
    assert runtime.is_running(world.session.id)
