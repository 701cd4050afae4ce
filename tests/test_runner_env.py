"""The runner's environment is one contract (``schemas.runner_env``, DESIGN §12.12): what the host builds, the runner
reads back unchanged, with the same defaults on both sides, and its MCP server is told the same part as ever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kit import RecordingRuntime, World, utc

from agent_runner.config import RunnerConfig
from agent_runner.mcp_server import server_parameters
from host.runtimes.pool import NoModel, Runners, runner_env
from host.runtimes.proxy.server import CredentialProxy
from host.scheduling.sweep import Sweeper
from host.store import groups, sessions
from host.store.sessions import Session
from schemas.runner_env import DEFAULTS, RunnerEnv

ROOT = Path(__file__).resolve().parents[1]

T0 = utc("2026-05-18T13:00:00")
WIRE = {  # every variable of a default host's runner, as it always was (and the misfire grace since its tools check it)
    "TZ": "America/New_York", "NCL_RUNNER_GENERATION": "gen-1", "NCL_RULES": "be brief",
    "NCL_IDLE_TIMEOUT_S": "1800.0", "NCL_POLL_INTERVAL_S": "0.05", "NCL_MAX_BATCH": "20",
    "NCL_TASK_MIN_INTERVAL_S": "300.0", "NCL_MISFIRE_GRACE_S": "3600.0", "NCL_PROVIDER": "mock",
    "NCL_MODEL": "claude-sonnet-5", "NCL_LOG_LEVEL": "INFO",
}


def test_a_default_host_tells_its_runners_what_it_always_did(tmp_path: Path) -> None:
    world = World(tmp_path)
    env = runner_env(world.settings, world.session, "gen-1", "be brief")
    assert env == {**WIRE, "NCL_SESSION_ID": world.session.id, "NCL_AGENT_GROUP_ID": world.group.id}


def test_a_host_built_environment_round_trips_through_the_runners_parser(tmp_path: Path) -> None:
    world = World(tmp_path, TZ="Asia/Kolkata", NCL_IDLE_TIMEOUT_S="2.5", NCL_POLL_INTERVAL_S="0.2",
                  NCL_MAX_BATCH="7", NCL_TASK_MIN_INTERVAL_S="60", NCL_PROVIDER="anthropic", NCL_MODEL="m-1",
                  NCL_LOG_LEVEL="DEBUG")
    env = {**runner_env(world.settings, world.session, "gen-9", "rules\nin two lines", ".proxy.sock"),
           "NCL_GROUP_DIR": str(tmp_path / "group")}  # the local runtime adds where the group folder is
    config = RunnerConfig.from_env(world.session.folder, env)
    assert config.told() == env
    assert (config.tz, config.idle_timeout_s, config.max_batch, config.provider, config.group_dir) == (
        "Asia/Kolkata", 2.5, 7, "anthropic", tmp_path / "group")


class Told(RecordingRuntime):
    env: dict[str, str]

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        super().start(session, generation, env)
        self.env = env


def test_only_a_one_off_sweeps_runners_are_told_to_outlive_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    runtime = Told()
    for proxy, told in ((None, "1"), (CredentialProxy(world.settings), None)):  # a one-off sweep has no proxy
        Runners(runtime, world.settings, proxy).start(world.session, T0)
        env = runtime.env
        assert env.get("NCL_OUTLIVES_HOST") == told
        assert RunnerConfig.from_env(world.session.folder, env).outlives_host == told
        if proxy:
            proxy.shutdown()


def test_a_groups_runners_use_its_provider_and_model_else_the_hosts(tmp_path: Path) -> None:
    """``groups create|update --provider --model`` were stored and shown, and every runner got the host's."""
    world = World(tmp_path, NCL_PROVIDER="anthropic", NCL_MODEL="m-host")
    runtime = Told()
    sweeper = Sweeper(world.settings, Runners(runtime, world.settings, CredentialProxy(world.settings)))
    try:
        world.schedule(T0)
        assert sweeper.tick(T0).woken == 1
        assert (runtime.env["NCL_PROVIDER"], runtime.env["NCL_MODEL"]) == ("anthropic", "m-host")
        assert sweeper.runners is not None
        sweeper.runners.kill(world.session.id)
        groups.update(world.central, world.group, provider="mock", model="m-group")
        assert sweeper.tick(T0).woken == 1
        assert (runtime.env["NCL_PROVIDER"], runtime.env["NCL_MODEL"]) == ("mock", "m-group")
    finally:
        sweeper.close()
        assert sweeper.runners is not None and sweeper.runners.proxy is not None
        sweeper.runners.proxy.shutdown()


def test_a_one_off_sweep_starts_the_runners_of_mock_groups_only(tmp_path: Path) -> None:
    """With no model proxy (a one-off sweep), a group whose provider needs it has its work left due for a running
    host; the others' runners start. (One such group kept every group's runners from starting.)"""
    world = World(tmp_path)
    real, _ = groups.create(world.central, world.settings, T0, "real", ["queue:real"], provider="anthropic")
    elsewhere = sessions.create(world.central, world.settings, T0, real, None)
    for session in (world.session, elsewhere):
        world.schedule(T0, session=session)
    runtime = Told()
    sweeper = Sweeper(world.settings, Runners(runtime, world.settings))
    assert sweeper.tick(T0).woken == 1
    assert [sid for _, sid, _ in runtime.started] == [world.session.id]
    with pytest.raises(NoModel, match="under provider anthropic"):
        Runners(runtime, world.settings).start(elsewhere, T0, groups.brief(world.central, real.id))
    sweeper.close()


def test_defaults_live_in_one_place(tmp_path: Path) -> None:
    settings = World(tmp_path).settings
    told = RunnerConfig.from_env(tmp_path, {})
    for name in ("idle_timeout_s", "poll_interval_s", "max_batch", "task_min_interval_s", "misfire_grace_s", "provider",
                 "model", "log_level"):
        assert getattr(settings, name) == getattr(told, name) == getattr(DEFAULTS, name), name
    assert RunnerEnv.from_env({}) == DEFAULTS


def test_the_mcp_server_is_told_what_it_always_was(tmp_path: Path) -> None:
    config = RunnerConfig.from_env(tmp_path, {**WIRE, "NCL_ANTHROPIC_SOCKET": ".proxy.sock", "NCL_GROUP_DIR": "/g"})
    env = server_parameters(config).env
    assert env is not None and env.pop("PYTHONPATH")
    assert env == {"TZ": "America/New_York", "NCL_RUNNER_GENERATION": "gen-1", "NCL_TASK_MIN_INTERVAL_S": "300.0",
                   "NCL_MISFIRE_GRACE_S": "3600.0", "NCL_MAX_BATCH": "20", "NCL_PROVIDER": "mock",
                   "NCL_MODEL": "claude-sonnet-5", "NCL_LOG_LEVEL": "INFO", "NCL_GROUP_DIR": "/g"}


def test_a_local_runner_whose_host_died_during_its_start_ends_at_once(tmp_path: Path) -> None:
    """Its death signal is armed in ``main``, after ~0.3 s of imports: a host SIGKILLed in that window left the runner
    serving the session beside the next host's runner, every message answered twice (crash review). Told its host's
    pid (the local runtime's ``NCL_HOST_PID``), a runner whose parent is another by then ends before anything."""
    world = World(tmp_path)
    env = {**runner_env(world.settings, world.session, "gen-1", "", None), "PATH": os.environ.get("PATH", "")}
    command = [sys.executable, "-m", "agent_runner", "--session-dir", str(world.session.folder), "--once"]
    orphaned = subprocess.run(command, env={**env, "NCL_HOST_PID": "1"}, cwd=ROOT, capture_output=True, timeout=60)
    assert orphaned.returncode == 1 and orphaned.stderr == b""
    assert not (world.session.folder / ".heartbeat").exists()
    served = subprocess.run(command, env={**env, "NCL_HOST_PID": str(os.getpid())}, cwd=ROOT, capture_output=True,
                            timeout=60)
    assert served.returncode == 0, served.stderr
