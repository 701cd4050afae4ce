"""The ``local`` runtime passes the same end-to-end scenarios as docker (issue 5 acceptance), with no Docker: a
real ``ncl host run`` whose runners are subprocesses, the real CLI, and a fake Messages API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import e2e_scenario as scenario
import fake_anthropic as api
import pytest
from e2e_scenario import BlockingFake
from fake_anthropic import FakeAnthropic
from processes import Env, Host


class LocalAccess:
    """Local runners are host subprocesses: the host logs each one's pid when it starts it."""

    def pid(self, host: Host, session_id: str) -> int:
        line = scenario.wait_action_count(host, "runner_started", session_id, 1, timeout=30)[-1]
        found = re.search(r"local process (\d+)", line)
        assert found, line
        return int(found.group(1))

    def environment(self, host: Host, session_id: str) -> dict[str, str]:
        return scenario.pid_environment(self.pid(host, session_id))

    def check_live(self, host: Host, session_id: str, folder: Path) -> None:
        assert (folder / ".proxy.sock").stat().st_uid == os.geteuid()  # the runner runs as the host's own user

    def kill(self, host: Host, session_id: str) -> None:
        pid = self.pid(host, session_id)
        os.killpg(pid, signal.SIGKILL)  # its own process group (start_new_session): the runner and its MCP server
        scenario.until(host, lambda: _dead(pid), 10, f"runner process {pid} dead")


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.fixture
def env() -> Iterator[Env]:
    """A short data directory: a local runner connects to its session's proxy socket by absolute path, which must
    fit AF_UNIX's 107 bytes (pytest's tmp_path does not; see the xfail below)."""
    root = Path(tempfile.mkdtemp(prefix="ncl-e2e-"))
    made = Env(root)  # NCL_RUNTIME=local
    made.ok("groups", "create", "demo", "--channel", "cli")
    yield made
    shutil.rmtree(root, ignore_errors=True)


def test_standup_scheduled_by_chat_fires_and_recurs_on_local_runners(env: Env) -> None:
    with FakeAnthropic() as fake:
        scenario.model_env(env, fake)
        with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60") as host:
            scenario.standup(env, host, fake, LocalAccess())


def test_a_local_runner_killed_mid_turn_is_retried_and_answers_once(env: Env) -> None:
    with BlockingFake() as fake:
        scenario.model_env(env, fake)
        with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60") as host:
            scenario.killed_mid_turn(env, host, fake, LocalAccess())



def test_a_local_runner_under_a_deep_data_dir_reaches_the_model(tmp_path: Path) -> None:
    root = tmp_path / ("deep-" * 6)
    root.mkdir()
    env = Env(root)
    env.ok("groups", "create", "demo", "--channel", "cli")
    with FakeAnthropic() as fake:
        scenario.model_env(env, fake)
        fake.queue(api.text("hello from the model"))
        with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60"):
            # A failing runner retries for ~15 s before it answers with an apology: 10 s is plenty for a good one.
            done = env.ncl("chat", "demo", "hello", "--json", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert [r["text"] for r in json.loads(done.stdout)["replies"]] == ["hello from the model"]
