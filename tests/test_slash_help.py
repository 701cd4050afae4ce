"""Slash commands as a person types them (issue 15.4 and 15.6): ``/help`` lists every tool with its arguments,
``/help TOOL`` says what each argument means and gives an example that runs, and a call with an argument the tool
does not take is refused naming it and the arguments it does take (not a Python signature)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit import World

from agent_runner import slash
from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_specs import TOOLS
from agent_runner.tools import Tools
from schemas.times import from_text

NOW = from_text("2026-06-11T13:00:00.000Z")


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    world = World(tmp_path)
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    return Tools(config, Store(config), lambda: NOW)


def test_help_lists_every_tool_with_its_arguments(tools: Tools) -> None:
    text, cleared, failed = slash.run("/help", tools)
    assert not cleared and not failed
    signature = ("/schedule_task {prompt, processAfter?, recurrence?, script?, contextMode?, until?, count?, "
                 "interval_ms?, group?, task_type?, command?, cwd?, timeout_seconds?}")
    assert signature in text.splitlines()
    assert "/pause_task {taskId, group?}" in text.splitlines() and "/list_tasks {status?, group?}" in text.splitlines()
    assert all(f"/{name} {{" in text for name in TOOLS)


def test_help_tool_says_what_each_argument_means_with_an_example(tools: Tools) -> None:
    text, _, _ = slash.run("/help schedule_task", tools)
    lines = text.splitlines()
    assert lines[0] == ("/schedule_task {prompt, processAfter?, recurrence?, script?, contextMode?, until?, count?, "
                        "interval_ms?, group?, task_type?, command?, cwd?, timeout_seconds?}")
    assert "America/New_York" in lines[1]  # the description as the model reads it, in this runner's zone
    [prompt] = [line for line in lines if line.lstrip().startswith("prompt (required)")]
    assert "What to do when the task fires" in prompt
    assert any(line.lstrip().startswith("recurrence ") and "cron" in line for line in lines)
    assert lines[-1] == 'Example: /schedule_task {"prompt": "Post the standup summary.", "recurrence": "0 9 * * 1-5"}'
    assert slash.run("/help /pause_task", tools)[0].startswith("/pause_task {taskId, group?}\n")
    assert slash.run("/help nope", tools)[0].startswith("error: no tool 'nope'; tools: schedule_task, ")
    assert slash.run("/help nope", tools).failed and not slash.run("/help /pause_task", tools).failed


@pytest.mark.parametrize("name", [n for n in TOOLS if "taskId" not in TOOLS[n].example])
def test_each_example_without_a_task_id_runs(tools: Tools, tmp_path: Path, name: str) -> None:
    (tools.config.session_dir / "report.txt").write_text("numbers")
    example = slash.run(f"/help {name}", tools)[0].splitlines()[-1].removeprefix("Example: ")
    answer, _, failed = slash.run(example, tools)
    assert not answer.startswith("error") and not failed, answer
    assert json.loads(example.partition(" ")[2]) == TOOLS[name].example


def test_an_unknown_argument_is_named_with_the_accepted_ones(tools: Tools) -> None:
    answer, _, failed = slash.run('/schedule_task {"prompt": "standup", "interval": 3600}', tools)
    assert answer == ("error: schedule_task has no argument 'interval'; its arguments: {prompt, processAfter?, "
                      "recurrence?, script?, contextMode?, until?, count?, interval_ms?, group?, task_type?, "
                      "command?, cwd?, timeout_seconds?} "
                      "(see /help schedule_task)")
    assert failed
    answer, _, failed = slash.run('/update_task {"recurrence": "0 9 * * *"}', tools)
    assert answer == "error: update_task needs taskId; its arguments: {taskId, prompt?, processAfter?, recurrence?, " \
                     "script?, until?, count?, interval_ms?, group?, command?, cwd?, timeout_seconds?} (see /help " \
                     "update_task)"
    assert failed
