"""Issue 11, point 5: nothing a gate script, a runner or a host task starts outlives it, ``setsid`` daemons and
double forks included (``schemas.proctree``). Real processes only; each test marks its ``sleep`` processes with
numbers of its own, finds them through /proc, and kills any the product missed in a finally block.

The attacks: a gate script starts ``setsid sleep … &`` (the issue's ``setsid python3 flipper.py &``), a subshell's
orphan and a double-forked ``sh``; the issue's YAML host task ``sh -c "setsid sh -c 'exec sleep 611' &"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import fake_anthropic as api
import pytest
from e2e_scenario import running_host
from fake_anthropic import FakeAnthropic
from kit import FakeClock, World, exits_within
from process_marks import gate_script, kill_marked, marked, new_markers
from processes import Env
from scheduled_project import HEAD, NOW, Project, local
from scheduled_project import project as project
from security_kit import ROOT

from host.project_tasks.specs import HostTarget
from host.project_tasks.targets import Outcome, Stop, run_host
from host.runtimes.local import LocalRuntime, kill_detached
from host.runtimes.pool import runner_env
from schemas import clock, proctree

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or not hasattr(os, "pidfd_open"),
                                reason="/proc, pidfds and subreapers are Linux-only")
HARNESS = Path(__file__).with_name("reaper_harness.py")
WAIT_S = 30.0


@pytest.fixture
def markers() -> Iterator[list[str]]:
    """Three argv markers unique to this test (and a fourth for a holding sleep); killed whatever happens."""
    found = new_markers()
    yield found
    kill_marked(*found, found[0] + "1")


def harness(case: str, markers: list[str], folder: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(HARNESS), case, markers[0][:-1], str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def wait_for(pid_files: list[Path], runner: subprocess.Popen[bytes]) -> list[int]:
    """The daemons' pids once the gate has written all three; fails if the runner exits first."""
    while not all(p.exists() and p.read_text().strip() for p in pid_files):
        assert not exits_within(runner.pid, 0.05), "the runner exited before its gate started its daemons"
    return [int(p.read_text()) for p in pid_files]


# --- the primitives ---------------------------------------------------------------------------------------------


def test_kill_tree_takes_a_forking_tree_whole_and_spares_the_callers_popen(markers: list[str]) -> None:
    script = f"setsid sleep {markers[0]} & (sleep {markers[1]} &) ; sh -c 'sleep {markers[2]} & wait' & wait"
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True, preexec_fn=proctree.subreaper_preexec)
    try:
        while len(marked(*markers)) < 3:
            assert not exits_within(proc.pid, 0.01)
        killed = proctree.kill_tree([proc.pid], spare=[proc.pid])
        assert proc.pid in killed and len(killed) >= 4
        assert marked(*markers) == []
        assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL  # the exit status is still the Popen's to collect
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_is_not_a_subreaper_never_sweeps() -> None:
    assert not proctree.is_subreaper()  # pytest: every orphan of the suite would otherwise come here
    plain = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert proctree.OWN.sweep() == set()
        assert plain.poll() is None
    finally:
        plain.kill()
        plain.wait()


def test_a_sweep_kills_strays_only_and_steals_no_exit_status(tmp_path: Path, markers: list[str]) -> None:
    report = harness("spare", markers, tmp_path)
    assert report["swept"] == 1 and sorted(report["alive"]) == sorted(report["expected"]), report
    assert report["codes"] == [-signal.SIGKILL, -signal.SIGKILL]  # each Popen still got its own child's status


# --- gate scripts -----------------------------------------------------------------------------------------------


def test_a_gates_setsid_and_double_forked_daemons_die_when_the_gate_ends(tmp_path: Path,
                                                                         markers: list[str]) -> None:
    report = harness("gate", markers, tmp_path)
    assert report["outcome"] == "skip", report  # the script saw all three daemons alive before it answered
    assert report["alive"] == []


@pytest.fixture
def local_runtime(tmp_path: Path) -> Iterator[tuple[World, LocalRuntime]]:
    """A session and the local runtime; every runner it started is stopped afterwards."""
    world = World(tmp_path)
    runtime = LocalRuntime(world.settings)
    try:
        yield world, runtime
    finally:
        for session_id in list(runtime.processes):
            runtime.stop(session_id)
        world.central.close()


def test_a_local_runners_gate_daemons_die_when_the_gate_ends_while_the_runner_lives(
        local_runtime: tuple[World, LocalRuntime], markers: list[str]) -> None:
    world, runtime = local_runtime
    world.schedule(clock.now() - timedelta(minutes=1), script=gate_script(markers))
    runtime.start(world.session, "gen-test", {"TZ": "UTC", "NCL_IDLE_TIMEOUT_S": "60"})
    runner = runtime.processes[world.session.id]
    pids = wait_for([world.session.folder / f"p{n}" for n in (1, 2, 3)], runner)
    for pid in pids:  # the gate ends right after it wrote them, and takes them along
        assert exits_within(pid, WAIT_S), f"daemon {pid} outlived its gate"
    assert marked(*markers) == []
    assert runner.poll() is None  # the runner itself goes on: it was the gate's end that killed them


def test_stopping_a_local_runner_kills_its_running_gate_and_the_gates_daemons(
        local_runtime: tuple[World, LocalRuntime], markers: list[str]) -> None:
    world, runtime = local_runtime
    hold = markers[0] + "1"
    world.schedule(clock.now() - timedelta(minutes=1), script=gate_script(markers, hold=hold))
    runtime.start(world.session, "gen-test", {"TZ": "UTC", "NCL_IDLE_TIMEOUT_S": "60"})
    runner = runtime.processes[world.session.id]
    wait_for([world.session.folder / f"p{n}" for n in (1, 2, 3)], runner)
    while len(marked(*markers, hold)) < 4:
        assert not exits_within(runner.pid, 0.01)
    runtime.stop(world.session.id)
    assert runner.returncode == -signal.SIGKILL
    assert marked(*markers, hold) == []


def test_a_local_runner_killed_alone_leaves_nothing_once_the_host_finds_it_gone(tmp_path: Path,
                                                                                markers: list[str]) -> None:
    report = harness("runner-killed", markers, tmp_path)
    assert len(report["before"]) == 4, report  # three daemons and the gate's own holding sleep were running
    assert report["outcome"] == "running=False" and report["alive"] == []


def test_under_ncl_host_run_a_runner_killed_alone_leaves_nothing(tmp_path: Path, markers: list[str]) -> None:
    """The real host (a subreaper) with a local runner whose gate holds three daemons; the runner alone is
    SIGKILLed (as the OOM killer would): the host finds it gone and kills what it left (strays_killed)."""
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    hold = markers[0] + "1"
    env.ok("tasks", "add", "--session", session, "--prompt", "p", "--script", gate_script(markers, hold=hold))
    with running_host(env) as host:
        while len(marked(*markers, hold)) < 4:
            assert not exits_within(host.proc.pid, 0.05), "the host ended"
        [runner] = [pid for pid in proctree.children_of(host.proc.pid)
                    if b"agent_runner" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(runner, signal.SIGKILL)
        host.wait_for_action("strays_killed", session=session)
        assert marked(*markers, hold) == []


# --- MCP servers ------------------------------------------------------------------------------------------------


def test_a_daemon_an_mcp_server_double_forked_dies_when_the_runner_ends(tmp_path: Path, markers: list[str]) -> None:
    """The group's mcp.json server forks off ``setsid sleep`` from a subshell, then serves MCP; a real runner
    (``--once``, the anthropic provider against a fake API) starts it for a task and exits: nothing is left."""
    world = World(tmp_path)
    group = tmp_path / "group"
    group.mkdir()
    serve = f"(setsid sleep {markers[0]} &); exec {sys.executable} -m agent_runner.mcp_server --session-dir " \
            f"{world.session.folder}"
    (group / "mcp.json").write_text(json.dumps({"servers": {"forker": {"command": "sh", "args": ["-c", serve],
                                                                       "env": {"PYTHONPATH": str(ROOT)}}}}))
    world.schedule(clock.now() - timedelta(minutes=1))
    try:
        with FakeAnthropic() as fake:
            fake.queue(api.text("done"))
            env = {**runner_env(world.settings, world.session, "gen-mcp", ""), "NCL_PROVIDER": "anthropic",
                   "NCL_GROUP_DIR": str(group), "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "test-key",
                   "PATH": os.environ["PATH"]}
            # Output to a file: a daemon left holding a pipe would make the test hang instead of fail.
            with (tmp_path / "runner.log").open("w+") as log:
                code = subprocess.call([sys.executable, "-m", "agent_runner", "--once", "--session-dir",
                                        str(world.session.folder)], env=env, cwd=ROOT, stdout=log, stderr=log,
                                       timeout=120)
        assert code == 0, (tmp_path / "runner.log").read_text()
        assert len(fake.requests) == 1 and any(t["name"].startswith("forker__") for t in fake.requests[0].body["tools"])
        assert marked(markers[0]) == []
    finally:
        world.central.close()


# --- host tasks -------------------------------------------------------------------------------------------------


def test_the_issues_yaml_host_task_leaves_no_daemon_when_it_ends(tmp_path: Path, markers: list[str]) -> None:
    report = harness("host-task", markers, tmp_path)
    assert report["outcome"] == "succeeded" and report["alive"] == []


def test_a_host_task_killed_at_its_timeout_takes_its_setsid_daemon_along(tmp_path: Path,
                                                                         markers: list[str]) -> None:
    target = HostTarget(command=f"sh -c \"setsid sh -c 'exec sleep {markers[0]}' & exec sleep {markers[1]}\"",
                        cwd=str(tmp_path), timeout_seconds=1)
    result: list[Outcome] = []
    worker = threading.Thread(target=lambda: result.append(run_host(target, {"PATH": os.environ["PATH"]}, Stop())))
    worker.start()
    try:
        while len(marked(*markers[:2])) < 2:  # both run before the timeout: the kill is what ends them
            assert worker.is_alive(), result
            worker.join(0.01)
        worker.join(WAIT_S)
        assert result and result[0].status == "timeout", result
        assert marked(*markers[:2]) == []  # no subreaper here (pytest): the task's own tree held the daemon
    finally:
        worker.join(WAIT_S)


def test_a_gate_left_running_by_a_runner_that_died_with_its_host_is_killed_whole_by_the_next_host(
        tmp_path: Path, markers: list[str]) -> None:
    """The host is SIGKILLed while a gate holds three daemons: PDEATHSIG kills the runner, and nothing is a
    subreaper above it here (as after a dead host), so the gate goes to pid 1. The next host's start reads
    ``.children`` and kills the gate's whole tree, which the gate, a subreaper itself, kept below it."""
    world = World(tmp_path)
    hold = markers[0] + "1"
    try:
        world.schedule(clock.now() - timedelta(minutes=1), script=gate_script(markers, hold=hold))
        first = LocalRuntime(world.settings)
        first.start(world.session, "gen-1", {"TZ": "UTC", "NCL_IDLE_TIMEOUT_S": "60"})
        runner = first.processes[world.session.id]
        while len(marked(*markers, hold)) < 4:
            assert not exits_within(runner.pid, 0.01)
        os.killpg(runner.pid, signal.SIGKILL)  # what PDEATHSIG does: the runner's group, not the gate's session
        runner.wait(timeout=WAIT_S)
        assert len(marked(*markers, hold)) == 4  # the gate and its daemons outlived the runner
        assert kill_detached(world.session.folder) == 1  # what the next host's start does first
        assert marked(*markers, hold) == []
    finally:
        world.central.close()


def test_the_issues_yaml_host_task_fired_by_the_host_is_gone_with_its_daemon_at_its_timeout(
        project: Project, markers: list[str]) -> None:
    spec = (f"{HEAD}schedule: 0 9 * * *\nhost:\n"
            f"  command: sh -c \"setsid sh -c 'exec sleep {markers[0]}' & exec sleep {markers[1]}\"\n"
            "  timeout_seconds: 1\n")
    added = project.ncl("scheduled-task", "add", "--file", project.spec(spec), "--now", NOW, "--json")
    assert added.code == 0, added.err
    firer = project.firer(FakeClock(local("2026-06-12T09:00:00")))
    assert firer.tick(firer.clock()).fired == 1
    seen: list[int] = []
    while len(seen) < 2 and not project.runs(added.json()["id"])[0]["finished_at"]:
        seen = marked(*markers[:2])
    firer.wait(WAIT_S)
    (run,) = project.runs(added.json()["id"])
    assert run["status"] == "timeout" and len(seen) == 2, (run, seen)  # both ran until the timeout ended them
    assert marked(*markers[:2]) == []
