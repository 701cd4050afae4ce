"""Issue 13, points 3 and 4, with real processes: a one-off sweep never holds its caller's pipes (its runner writes
to the session's ``runner.log``) and the runner it leaves is stopped before its session's next start; what a
SIGKILLed host leaves (``cli.sock``, ``host.lock``, a session's ``.proxy.sock``) is replaced by the next host, and
by ``scripts/run.sh``, each said once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import pytest
from kit import exits_within
from processes import Env, Host, ncl_command

from host.runtimes.local import LOG

REPO = Path(__file__).resolve().parent.parent
STALE = ("stale_lock_replaced", "stale_socket_replaced")


@pytest.fixture
def env() -> Iterator[Env]:
    """A short root: a local runner reaches its session's proxy socket by path, which must fit AF_UNIX's 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="ncl-crash-"))
    try:
        yield Env(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def session_folders(env: Env) -> list[Path]:
    return sorted(env.data_dir.glob("v2-sessions/*/*"))


def listed_runner(folder: Path) -> int:
    """The runner the local runtime named first in the session's ``.children``."""
    return int((folder / ".children").read_text().split()[0])


def kill_group(pid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def count(host: Host, action: str) -> int:
    return sum(f"[action={action} " in line for line in host.seen)


@pytest.mark.slow
def test_a_one_off_sweep_ends_with_its_runner_alive_which_the_next_host_stops(env: Env) -> None:
    env.ok("groups", "create", "jobs", "--channel", "queue:q")
    job = json.dumps({"prompt": "job", "thread_id": "t1"})
    env.ok("queue", "send", "--queue", "q", "--json", job)
    # A real pipe read to EOF, as `ncl host sweep --once --json | cat` does: it must end with the sweep, long
    # before the runner's idle timeout.
    sweep = subprocess.Popen([*ncl_command(), "host", "sweep", "--once", "--json"], cwd=env.root,
                             env={**env.vars, "NCL_IDLE_TIMEOUT_S": "600"}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runner = 0
    host: Host | None = None
    try:
        out, err = sweep.communicate(timeout=60)
        assert sweep.returncode == 0, err
        assert json.loads(out)["woken"] == 1
        [folder] = session_folders(env)
        runner = listed_runner(folder)
        assert not exits_within(runner, 0), "the runner died with the sweep"
        for fd in (1, 2):
            assert os.readlink(f"/proc/{runner}/fd/{fd}") == str(folder / LOG)

        assert (env.data_dir / "runners.left").read_text().split()[0] == str(runner)

        # The next host stops it as it starts (never two runners on one session), then serves the session itself.
        host = Host(env, NCL_IDLE_TIMEOUT_S="600")
        host.wait_for_action("leftover_runners_stopped")
        assert exits_within(runner, 10), "the sweep's runner still serves beside the next host"
        assert not (env.data_dir / "runners.left").exists()
        host.wait_for_action("host_started")
        env.ok("queue", "send", "--queue", "q", "--json", job)
        host.wait_for_action("runner_started", session=folder.name)
    finally:
        if host is not None:
            host.kill()
        if runner:
            kill_group(runner)


@pytest.mark.slow
def test_a_runner_a_one_off_sweep_left_exits_at_its_idle_timeout(env: Env) -> None:
    env.ok("groups", "create", "jobs", "--channel", "queue:q")
    env.ok("queue", "send", "--queue", "q", "--json", json.dumps({"prompt": "job"}))
    done = subprocess.run([*ncl_command(), "host", "sweep", "--once", "--json"], cwd=env.root,
                          env={**env.vars, "NCL_IDLE_TIMEOUT_S": "2"}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    [folder] = session_folders(env)
    runner = listed_runner(folder)
    try:
        assert exits_within(runner, 60), "the sweep's runner did not end at its idle timeout"
    finally:
        kill_group(runner)


def run_sh_root(env: Env) -> None:
    """``scripts/run.sh`` as it is, in ``env.root``: set-up already done, ncl from this checkout's venv."""
    (env.root / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "run.sh", env.root / "scripts" / "run.sh")
    (env.root / "scripts" / "setup.sh").write_text("#!/bin/sh\n")
    (env.root / "scripts" / "setup.sh").chmod(0o755)
    (env.root / ".venv").symlink_to(Path(sys.executable).parent.parent)


def sigkill_with_leftovers(env: Env, host: Host) -> str:
    """Chat (a runner and its proxy socket), SIGKILL the host, check what it left; the chat's session id."""
    host.wait_for_action("host_started")
    session_id = json.loads(env.ok("chat", "demo", "hello", "--json", "--timeout", "60"))["session_id"]
    host.proc.kill()
    host.proc.wait(timeout=10)
    assert (env.data_dir / "cli.sock").exists()
    assert (env.data_dir / "host.lock").read_text().strip() == str(host.proc.pid)
    assert list(env.data_dir.glob(f"v2-sessions/*/{session_id}/.proxy.sock"))
    return session_id


@pytest.mark.slow
def test_after_a_sigkill_the_next_host_and_run_sh_start_and_say_once_what_they_replaced(env: Env) -> None:
    env.ok("groups", "create", "demo", "--channel", "cli")
    hosts = [Host(env, NCL_IDLE_TIMEOUT_S="600")]
    try:
        session_id = sigkill_with_leftovers(env, hosts[0])

        second = Host(env, NCL_IDLE_TIMEOUT_S="600")
        hosts.append(second)
        second.wait_for_action("host_started")
        assert env.ok("chat", "demo", "again", "--json", "--timeout", "60")
        second.wait_for_action("runner_started", session=session_id)
        assert count(second, "stale_lock_replaced") == 1, second.seen
        assert count(second, "stale_socket_replaced") == 2, second.seen  # cli.sock and the session's proxy socket
        assert sum(f"session={session_id}]" in line and "stale_socket_replaced" in line for line in second.seen) == 1

        second.proc.kill()
        second.proc.wait(timeout=10)
        run_sh_root(env)
        logged = (env.data_dir / "host.log").stat().st_size  # the hosts before wrote there too
        run = subprocess.Popen(["bash", "scripts/run.sh"], cwd=env.root, env=env.vars, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stdout is not None
        first = run.stdout.readline()
        # Said only once the host answers on its socket: the stale file alone says nothing.
        assert first.startswith("The host is running"), first
        with closing(socket.socket(socket.AF_UNIX)) as probe:
            probe.connect(str(env.data_dir / "cli.sock"))
        out, err = run.communicate("hello\n", timeout=120)
        assert run.returncode == 0, first + out + err
        assert "not running" not in out + err
        log = (env.data_dir / "host.log").read_bytes()[logged:].decode()
        assert log.count("host.lock was left by pid") == 1, log
        assert log.count("cli.sock, left by a host that was killed") == 1, log
    finally:
        for host in hosts:
            host.kill()
