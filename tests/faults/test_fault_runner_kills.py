"""Issue 7, fault injection: a runner SIGKILLed mid-batch, mid-gate-script and mid-tool-call, under a real
``ncl host run`` with local runners. Each time the rows it held are retried by the next runner and every message
is answered exactly once.

The kill lands at a known point, not after a guessed delay: the fake model holds the second request of a batch;
the gate script and the tool announce themselves on a fifo and block until the test releases them
(``faultkit.Handshake``). A killed runner's death is awaited on a pidfd.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import e2e_scenario as scenario
import fake_anthropic as api
import pytest
from fake_anthropic import FakeAnthropic
from faultkit import (
    BASH_HOLD,
    Handshake,
    answers,
    claims,
    inbound_rows,
    kill_group,
    kill_quietly,
    runner_pids,
    scenario_step,
    short_root,
)
from kit import exits_within
from processes import Env, ncl_command

pytestmark = pytest.mark.slow

BLOCKING_MCP = Path(__file__).with_name("blocking_mcp.py")
GATE_DATA = {"gate": "passed"}
STANDUP = {"prompt": "post my standup", "recurrence": "0 9 * * 1-5"}
ORPHAN_WAIT_S = 3.0  # how long a killed runner's children get to die with it (in a container: at once)


def test_runner_killed_mid_batch_retries_the_rest_and_answers_each_job_once() -> None:
    """Three queue jobs claimed in one batch; the first is answered, the runner dies while the model answers the
    second, the third never started. The next runner answers the second and third; the first is not redone."""
    with short_root() as root, scenario.BlockingFake(hold=2) as fake:
        env = Env(root)
        scenario.model_env(env, fake)
        env.ok("groups", "create", "jobs", "--channel", "queue:work")
        # Sent with the host stopped, so the first runner finds all three due and claims them in one batch.
        sent = [json.loads(env.ok("queue", "send", "--queue", "work", "--json",
                                  json.dumps({"prompt": f"job {n}", "thread_id": "batch"}))) for n in (1, 2, 3)]
        [session_id] = {s["session_id"] for s in sent}
        folder = scenario.session_folder(env, session_id, group="ag-jobs")
        job1, job2, job3 = (s["message_id"] for s in sent)
        fake.queue(api.text("answer 1"), api.text("answer 2"), api.text("answer 3"))

        with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60") as host:
            assert fake.entered.wait(timeout=60), "the runner never asked the model about the second job"
            assert claims(folder) == {job1: "completed", job2: "processing", job3: "processing"}
            [first] = runner_pids(host, session_id, at_least=1)
            kill_group(first)
            fake.release()
            scenario.until(host, lambda: all(r["status"] == "completed" for r in inbound_rows(folder)
                                             if r["kind"] == "queue"), 60, "all three jobs completed")
            assert len(runner_pids(host, session_id)) == 2

        assert answers(folder) == {job1: ["answer 1"], job2: ["answer 2"], job3: ["answer 3"]}
        tries = {r["id"]: r["tries"] for r in inbound_rows(folder)}
        assert (tries[job1], tries[job2], tries[job3]) == (0, 1, 1)  # only what the dead runner held came back
        assert len(fake.requests) == 4  # job 1, job 2 (held, its runner killed), then job 2 and job 3 again


@dataclass
class GateKill:
    """What the mid-gate scenario observed (shared by the test of its promise and the test that its gate dies)."""

    task_id: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, list[str]] = field(default_factory=dict)
    runners: int = 0
    gate_runs: int = 0
    orphan_gate_alive: bool | None = None


@pytest.fixture(scope="module")
def gate_kill() -> Iterator[GateKill]:
    """A task with a gate script; the runner is SIGKILLed while the gate runs; the next runner runs the gate again
    (the test lets it through) and then the agent. Mock provider, local runners, a real host."""
    seen = GateKill()
    with short_root() as root, scenario_step("the mid-gate scenario"):
        env = Env(root)
        env.ok("groups", "create", "demo", "--channel", "cli")
        with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60") as host:
            session_id = scenario.cli_json(env, "chat", "demo", "hello", "--timeout", "60")["session_id"]
            folder = scenario.session_folder(env, session_id)
            handshake = Handshake(folder / "announce.fifo")
            gate = BASH_HOLD.format(dir=folder, announce=handshake.announce)
            (folder / "gate.sh").write_text(gate + f"echo '{json.dumps({'wakeAgent': True, 'data': GATE_DATA})}'\n")
            try:
                asked = scenario.cli_json(env, "chat", "demo", "/schedule_task " + json.dumps(
                    {"prompt": "gated work", "script": "bash \"$HOME/gate.sh\""}), "--timeout", "60")
                seen.task_id = asked["replies"][0]["text"].split("id: ", 1)[1].split(",", 1)[0]

                first_gate, _ = handshake.wait(timeout=30)  # the gate is running: the runner waits for it
                assert claims(folder)[seen.task_id] == "processing"
                [first] = runner_pids(host, session_id, at_least=1)
                kill_group(first)
                # Nothing is left to enforce the gate's 30 s limit or collect its output: it should die with its
                # runner (in a container it does, with the container).
                seen.orphan_gate_alive = not exits_within(first_gate, ORPHAN_WAIT_S)

                _, fifo = handshake.wait(timeout=60)  # released claim, +5 s, a new runner, the gate again
                handshake.release(fifo)
                scenario.until(host, lambda: inbound_rows(folder, "SELECT status FROM messages_in WHERE id = ?",
                                                          (seen.task_id,)) == [{"status": "completed"}],
                               30, "the gated task completed")
                seen.runners = len(runner_pids(host, session_id))
            finally:
                kill_quietly(*handshake.holders)
            seen.gate_runs = len(handshake.holders)
            seen.rows = inbound_rows(folder, "SELECT * FROM messages_in WHERE series_id = ?", (seen.task_id,))
            seen.runs = inbound_rows(folder, "SELECT * FROM task_runs WHERE series_id = ?", (seen.task_id,))
            seen.answers = answers(folder)
    yield seen


def test_runner_killed_mid_gate_script_retries_the_task_and_answers_once(gate_kill: GateKill) -> None:
    [row] = gate_kill.rows
    assert (row["status"], row["tries"]) == ("completed", 1)
    assert [r["outcome"] for r in gate_kill.runs] == ["ran"]
    assert gate_kill.answers[gate_kill.task_id] == ["mock: gated work"]  # once: the killed turn wrote nothing
    assert gate_kill.runners == 2 and gate_kill.gate_runs == 2


def test_a_killed_local_runners_gate_script_dies_with_it(gate_kill: GateKill) -> None:
    assert gate_kill.orphan_gate_alive is False


@dataclass
class ToolKill:
    chat_id: str = ""
    reply: Any = None
    answers: dict[str, list[str]] = field(default_factory=dict)
    chat_row: dict[str, Any] = field(default_factory=dict)
    series: list[str] = field(default_factory=list)
    model_requests: int = 0
    orphan_tool_alive: bool | None = None


@pytest.fixture(scope="module")
def tool_kill() -> Iterator[ToolKill]:
    """The fake model asks for ``schedule_task`` and then for a tool of the group's own MCP server that blocks; the
    runner is SIGKILLed inside that tool call. The retried turn does the same again, the tool is let through, and
    the model answers."""
    seen = ToolKill()
    with short_root() as root, FakeAnthropic() as fake, scenario_step("the mid-tool-call scenario"):
        env = Env(root)
        scenario.model_env(env, fake)
        env.ok("groups", "create", "demo", "--channel", "cli")
        handshake = Handshake(root / "announce.fifo")
        group_dir = env.data_dir / "groups" / "ag-demo"
        (group_dir / "mcp.json").write_text(json.dumps({"servers": {"slow": {
            "command": sys.executable, "args": [str(BLOCKING_MCP)],
            "env": {"FAULT_ANNOUNCE": str(handshake.announce), "FAULT_DIR": str(root)}}}}))
        turn = [api.tool_use("schedule_task", STANDUP), api.tool_use("slow__hold", {})]
        fake.queue(*turn, *turn, api.text("Done: standup scheduled."))
        with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60") as host:
            chat = subprocess.Popen([*ncl_command(), "chat", "demo", "set up my standup reminder", "--json",
                                     "--timeout", "120"], cwd=env.root, env=env.vars, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                first_tool, _ = handshake.wait(timeout=60)  # mid-tool-call: schedule_task done, slow__hold running
                [session] = scenario.cli_json(env, "sessions", "list")["sessions"]
                folder = scenario.session_folder(env, session["id"])
                [first] = runner_pids(host, session["id"], at_least=1)
                kill_group(first)
                seen.orphan_tool_alive = not exits_within(first_tool, ORPHAN_WAIT_S)
                kill_quietly(first_tool)  # its runner is gone: whatever it would answer goes nowhere

                _, fifo = handshake.wait(timeout=60)  # the retried turn reached the tool again
                handshake.release(fifo)
                out, err = chat.communicate(timeout=90)
                assert chat.returncode == 0, err
                seen.reply = json.loads(out)["replies"]
            finally:
                kill_quietly(*handshake.holders)
                if chat.poll() is None:
                    chat.kill()
                    chat.communicate()
            [seen.chat_row] = inbound_rows(folder, "SELECT * FROM messages_in WHERE kind = 'chat'")
            seen.chat_id = seen.chat_row["id"]
            seen.answers = answers(folder)
            # Every schedule request is applied within a sweep of being written; the host has swept since.
            seen.series = [r["series_id"] for r in inbound_rows(
                folder, "SELECT DISTINCT series_id FROM messages_in WHERE kind = 'task'")]
            seen.model_requests = len(fake.requests)
    yield seen


def test_a_killed_local_runners_mcp_server_dies_with_it(tool_kill: ToolKill) -> None:
    assert tool_kill.orphan_tool_alive is False


def test_runner_killed_mid_tool_call_retries_the_turn_and_answers_once(tool_kill: ToolKill) -> None:
    assert [r["text"] for r in tool_kill.reply] == ["Done: standup scheduled."]
    assert tool_kill.answers == {tool_kill.chat_id: ["Done: standup scheduled."]}
    assert (tool_kill.chat_row["status"], tool_kill.chat_row["tries"]) == ("completed", 1)
    assert tool_kill.model_requests == 5  # two rounds of the killed turn, three of its retry


def test_a_turn_killed_after_a_tool_call_does_not_double_its_side_effects(tool_kill: ToolKill) -> None:
    assert len(tool_kill.series) == 1, tool_kill.series
