"""``ncl host run`` and ``ncl host sweep`` as real processes (DESIGN §10, §12.8): one host per data directory,
a clean exit 0 on SIGTERM and SIGINT, and a task written by ``ncl`` while the host sleeps is woken at once.

Waiting on a process is done by blocking reads of its stderr (with a deadline) and ``wait(timeout=…)``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import Env, Host

SWEEP_KEYS = {"now", "sessions_checked", "woken", "applied", "cloned", "missed", "retried", "failed"}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def start_host(env: Env) -> Iterator[Callable[..., Host]]:
    started: list[Host] = []

    def start(**extra_env: str) -> Host:
        host = Host(env, **extra_env)
        started.append(host)
        host.wait_for_action("host_started")
        return host

    yield start
    for host in started:
        host.kill()


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ncl: ") and "Traceback" not in done.stderr
    return lines[0]


def test_a_second_host_and_a_one_off_sweep_are_refused_while_a_host_runs(
        env: Env, start_host: Callable[..., Host]) -> None:
    host = start_host()
    assert (env.data_dir / "host.lock").read_text().strip() == str(host.proc.pid)

    second = env.ncl("host", "run")
    assert second.returncode == 1
    assert f"another host is running (pid {host.proc.pid})" in one_line(second)
    assert second.stdout == ""

    for args in (("--now", "2026-05-18T09:00:00"), ("--now", "2026-05-18T09:00:00", "--json")):
        swept = env.ncl("host", "sweep", "--once", *args)
        assert swept.returncode == 1
        assert f"another host is running (pid {host.proc.pid})" in one_line(swept)
        assert swept.stdout == ""

    assert host.proc.poll() is None  # the refused ones did not disturb it
    assert host.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_host_with_exit_0_and_frees_the_lock(
        env: Env, start_host: Callable[..., Host], sig: signal.Signals) -> None:
    host = start_host()
    assert host.stop(sig) == 0
    host.wait_for_action("host_stopped", timeout=10)
    assert not any("Traceback" in line for line in host.seen)

    swept = env.ncl("host", "sweep", "--once", "--now", "2026-05-18T09:00:00", "--json")
    assert swept.returncode == 0, swept.stderr
    data = json.loads(swept.stdout)
    assert set(data) >= SWEEP_KEYS
    assert data["now"] == "2026-05-18T09:00:00.000Z"

    again = start_host()  # and a new host may start
    assert again.stop(signal.SIGTERM) == 0


def test_a_task_added_while_the_host_sleeps_is_woken_without_waiting_for_the_sweep(
        env: Env, start_host: Callable[..., Host]) -> None:
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    # With an hour between sweeps, only the CLI's nudge can make the host look again within the deadline.
    host = start_host(NCL_SWEEP_INTERVAL_S="3600")
    item = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "post the standup", "--json"))
    assert item["status"] == "pending"
    host.wait_for_action("runner_started", session=session, timeout=20)
    assert host.stop(signal.SIGTERM) == 0


def test_a_one_off_sweep_after_the_host_stopped_takes_back_what_its_runners_claimed(
        env: Env, start_host: Callable[..., Host], tmp_path: Path) -> None:
    """The host stops its runners as it stops. A one-off sweep run within the minute after took a turn one of them
    left claimed for the work of a runner an earlier sweep started (its heartbeat was fresh), and neither retried nor
    woke it (operations review): the host removes the heartbeat of each runner it stops."""
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    began = tmp_path / "gate-began"
    os.mkfifo(began)
    host = start_host()
    env.ok("tasks", "add", "--session", session, "--prompt", "slow", "--script", f"echo began > {began}; sleep 60")
    with open(began) as gate:  # (blocks until the gate runs: its runner has claimed the turn)
        assert gate.read() == "began\n"
    assert host.stop(signal.SIGTERM) == 0
    swept = env.ncl("host", "sweep", "--once", "--json")
    assert swept.returncode == 0, swept.stderr
    assert "at work" not in swept.stderr and json.loads(swept.stdout)["retried"] == 1, swept.stderr


@pytest.mark.parametrize("where", ["NCL_PROVIDER", "group"])
def test_a_one_off_sweep_under_a_real_provider_leaves_due_work_for_the_host(env: Env, where: str) -> None:
    """A runner reaches the model only through a running host's proxy: one a one-off sweep started under
    NCL_PROVIDER=anthropic called the API with no key, died with a traceback, and its task was retried to failure.
    The same for a group of its own provider."""
    env.ok("groups", "create", "demo", "--channel", "cli", *(["--provider", "anthropic"] if where == "group" else []))
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    task = env.ok("tasks", "add", "--session", session, "--prompt", "report").split()[1].rstrip(";")
    env.vars.update({"ANTHROPIC_API_KEY": "sk-test", **({"NCL_PROVIDER": "anthropic"} if where != "group" else {})})
    swept = env.ncl("host", "sweep", "--once", "--json")
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["woken"] == 0
    assert (f"work due in {session} left for a running host: under provider anthropic a runner reaches the model "
            "only through the proxy of 'ncl host run'") in swept.stderr
    shown = json.loads(env.ok("tasks", "show", task, "--json"))
    assert [(o["status"], o["tries"]) for o in shown["occurrences"]] == [("pending", 0)]
    folder = Path(json.loads(env.ok("sessions", "list", "--json"))["sessions"][0]["path"])
    assert not (folder / "runner.log").exists() and not (folder / ".heartbeat").exists()


def test_a_rejected_tz_is_said_in_the_hosts_log_too(env: Env, start_host: Callable[..., Host]) -> None:
    """(It was said only on the stderr of a host started with --quiet by scripts/run.sh: nowhere to be read.)"""
    host = start_host(TZ="Not/AZone")
    host.wait_for(lambda line: "; ignored, TZ is " in line)
    # A record goes to stderr, then to host.log: once a later one is on stderr, that one is in the file (the host's
    # loop logs them in turn; reading the file at once raced its write).
    host.wait_for_action("sessions_seen")
    logged = (env.data_dir / "host.log").read_text()
    assert "TZ from env is not an IANA zone name: 'Not/AZone'; ignored, TZ is " in logged
