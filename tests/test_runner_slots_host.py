"""Runner slots with a real ``ncl host run`` (issue 13): with one slot and a 30-minute idle timeout, five sessions
that each send a chat are all answered at once, each idle runner stopped for the next, and ``ncl status`` shows
the runner that is left."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e_scenario as scenario
import pytest
from processes import Env, ncl_command

GROUPS = [f"g{n}" for n in range(5)]


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="ncl-slots-"))  # short: a runner's proxy socket path must fit AF_UNIX
    made = Env(root)
    for group in GROUPS:  # a group each: five sessions
        made.ok("groups", "create", group, "--channel", "cli")
    yield made
    shutil.rmtree(root, ignore_errors=True)


def _idle_runner(env: Env) -> dict[str, Any] | None:
    data = json.loads(env.ok("status", "--json"))
    runners = data["runners"]
    return runners[0] if len(runners) == 1 and runners[0]["state"] == "idle" and not data["waiting"] else None


def test_one_slot_serves_five_chatting_sessions_without_an_idle_timeout(env: Env) -> None:
    with scenario.running_host(env, NCL_MAX_RUNNERS="1", NCL_IDLE_TIMEOUT_S="1800") as host:
        chats = [subprocess.Popen([*ncl_command(), "chat", group, f"hello {group}", "--json", "--timeout", "60"],
                                  cwd=env.root, env=env.vars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for group in GROUPS]
        done = [chat.communicate(timeout=90) for chat in chats]
        assert [chat.returncode for chat in chats] == [0] * 5, [err for _, err in done]
        answers = [json.loads(out) for out, _ in done]
        assert [a["replies"][0]["text"] for a in answers] == [f"mock: hello {group}" for group in GROUPS]
        runner = scenario.until(host, lambda: _idle_runner(env), 30, "one idle runner in ncl status")
        sessions = {a["session_id"] for a in answers}
        assert runner["session_id"] in sessions and runner["idle_for_s"] >= 0
    assert len(sessions) == 5
    assert all(len(scenario.action_lines(host, "runner_started", s)) == 1 for s in sessions)
    assert len(scenario.action_lines(host, "runner_slot_freed")) == 4  # every runner but the last, stopped idle
    assert scenario.action_lines(host, "runner_slot_wait")
