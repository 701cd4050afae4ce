"""``python -m agent_runner.mcp_server`` over stdio, driven by the official SDK's MCP client."""

from __future__ import annotations

import inspect
import json
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from agent_runner import group_tools, tool_specs
from agent_runner.config import RunnerConfig
from agent_runner.mcp_server import CURRENT_TURN
from agent_runner.store import Store
from agent_runner.tools import Tools
from host.store.sessions import create_files
from schemas import clock

TZ = "America/New_York"
TOOLS = {"schedule_task", "list_tasks", "update_task", "pause_task", "resume_task", "cancel_task", "send_message",
         "send_file"}


@pytest.fixture
def session(tmp_path: Path) -> Path:
    create_files(tmp_path / "sess")
    return tmp_path / "sess"


def connect(session: Path) -> Client:
    """The server as the runner starts it: the documented command line, configured by NCL_* and TZ.

    Entered inside each test, not in a fixture: the stdio client's anyio scopes must close in the task
    that opened them, and pytest-asyncio tears async fixtures down in another task.
    """
    env = {"TZ": TZ, "NCL_TASK_MIN_INTERVAL_S": "300", "NCL_RUNNER_GENERATION": "gen-test"}
    return Client(StdioServerParameters(command=sys.executable, env=env,
                                        args=["-m", "agent_runner.mcp_server", "--session-dir", str(session)]))


def text(result: CallToolResult) -> str:
    [block] = result.content
    assert isinstance(block, TextContent)
    return block.text


def outbound(session: Path, kind: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(session / "outbound.db")) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM messages_out WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [dict(r) | {"content": json.loads(r["content"])} for r in rows]


def set_turn(session: Path, in_reply_to: str) -> None:
    """What Runner._set_turn stores before it calls the provider."""
    turn = {"in_reply_to": in_reply_to, "routing": {"platform_id": "cli:local", "channel_type": "cli",
                                                    "thread_id": None}}
    Store(RunnerConfig.from_env(session, {"TZ": TZ})).set_state(CURRENT_TURN, json.dumps(turn), clock.now())


async def test_lists_the_eight_tools_with_schemas_and_descriptions(session: Path) -> None:
    async with connect(session) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        schedule = tools["schedule_task"]
        assert schedule.input_schema["required"] == ["prompt"]
        assert set(schedule.input_schema["properties"]) == {"prompt", "processAfter", "recurrence", "script",
                                                             "contextMode", "interval_ms", "group", "until", "count",
                                                             "task_type", "command", "cwd", "timeout_seconds"}
        interval_ms = schedule.input_schema["properties"]["interval_ms"]
        assert {"type": "integer"} in interval_ms["anyOf"] and "3600000" in interval_ms["description"]
        assert "every 90m" in (schedule.description or "")
        assert set(tools["update_task"].input_schema["properties"]) == {"taskId", "prompt", "processAfter",
                                                                        "recurrence", "script", "interval_ms",
                                                                        "group", "until", "count", "command", "cwd",
                                                                        "timeout_seconds"}
        assert schedule.input_schema["properties"]["contextMode"]["enum"] == ["group", "isolated"]
        assert TZ in (schedule.description or "") and "300 s" in (schedule.description or "")
        assert tools["update_task"].input_schema["required"] == ["taskId"]
        assert tools["send_file"].input_schema["required"] == ["path"]


def test_each_declared_tool_is_run_by_the_tools_method_of_its_name_with_its_arguments() -> None:
    """``group`` and a host task's arguments (issue 16.3) are the ones no method takes: a call naming a group or a
    host task goes to group_tools, which carries each task tool's other arguments to the host."""
    routing = group_tools.HOST_FIELDS | {"group"}
    for name, spec in tool_specs.TOOLS.items():
        parameters = list(inspect.signature(getattr(Tools, name)).parameters)[1:]  # after self
        assert parameters == [f for f in spec.arguments.model_fields if f not in routing], name
        if "group" in spec.arguments.model_fields:
            assert group_tools.CARRIED[name] | {"group"} <= set(spec.arguments.model_fields), name
        if name in ("schedule_task", "update_task"):  # what a host task's call carries is what the tool declares
            assert group_tools.HOST_CARRIED[name] - {"task_type"} <= set(spec.arguments.model_fields), name
    assert {n for n, s in tool_specs.TOOLS.items() if "group" in s.arguments.model_fields} == set(group_tools.CARRIED)


async def test_a_too_frequent_schedule_is_a_tool_error(session: Path) -> None:
    async with connect(session) as client:
        result = await client.call_tool("schedule_task", {"prompt": "x", "recurrence": "*/1 * * * *"})
        assert result.is_error
        assert "minimum interval between runs is 300 s" in text(result)
        assert outbound(session, "system") == []


async def test_list_tasks_shows_a_request_before_the_host_applied_it(session: Path) -> None:
    async with connect(session) as client:
        set_turn(session, "msg-1781168400000-aaaaaa")
        scheduled = await client.call_tool("schedule_task", {"prompt": "post standup", "recurrence": "0 9 * * 1-5",
                                                             "processAfter": "2099-01-15T09:00:00"})
        assert not scheduled.is_error
        assert outbound(session, "system") == []  # staged: the host sees it with the turn's answer
        listed = text(await client.call_tool("list_tasks", {}))
        store = Store(RunnerConfig.from_env(session, {"TZ": TZ, "NCL_RUNNER_GENERATION": "gen-test"}))
        store.finish(["msg-1781168400000-aaaaaa"], "completed", clock.now(), "ran")  # the runner ends the turn
        [request] = outbound(session, "system")
        task_id = request["content"]["taskId"]
        assert text(scheduled).startswith(f"Task scheduled (id: {task_id}, next runs: ")
        assert "next runs: Thu 2099-01-15 09:00:00 EST" in text(scheduled)
        assert request["content"]["processAfter"] == "2099-01-15T14:00:00.000Z"
        assert request["in_reply_to"] == "msg-1781168400000-aaaaaa"  # the turn the runner stored
        assert task_id in listed and "requested (not yet applied)" in listed and "post standup" in listed
        assert text(await client.call_tool("list_tasks", {})) == listed  # committed, still not applied


async def test_send_file_stays_inside_the_workspace(session: Path) -> None:
    async with connect(session) as client:
        refused = await client.call_tool("send_file", {"path": "../../etc/passwd"})
        assert refused.is_error and "outside the workspace" in text(refused)
        set_turn(session, "msg-1781168400000-bbbbbb")
        (session / "report.txt").write_text("numbers")
        sent = await client.call_tool("send_file", {"path": "report.txt"})
        assert not sent.is_error
        [reply] = outbound(session, "chat")
        assert reply["content"] == {"text": "", "files": ["report.txt"]}
        assert (reply["in_reply_to"], reply["channel_type"]) == ("msg-1781168400000-bbbbbb", "cli")
        assert (session / "outbox" / reply["id"] / "report.txt").read_text() == "numbers"


async def test_bad_arguments_are_a_tool_error_not_a_crash(session: Path) -> None:
    async with connect(session) as client:
        result = await client.call_tool("pause_task", {})
        assert result.is_error and "pause_task needs taskId; its arguments: {taskId, group?}" in text(result)
        extra = await client.call_tool("schedule_task", {"prompt": "standup", "interval": 3600})
        assert extra.is_error and ("schedule_task has no argument 'interval'; its arguments: {prompt, processAfter?, "
                                   "recurrence?, script?, contextMode?, until?, count?, interval_ms?, "
                                   "group?, task_type?, command?, cwd?, timeout_seconds?}") in text(extra)
        assert "Tools." not in text(extra) and outbound(session, "system") == []
        unknown = await client.call_tool("pause_task", {"taskId": "task-1781168400000-zzzzzz"})
        assert unknown.is_error and "no task" in text(unknown)
        assert text(await client.call_tool("list_tasks", {})) == "No tasks."
