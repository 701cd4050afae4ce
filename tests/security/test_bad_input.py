"""Issue 11, point 10: bad input, the rest. A whitespace-only prompt is refused at every edge that takes one (tools,
slash commands, runner requests, ``ncl tasks add|update``, ``ncl queue send``, ``ncl agent invoke``, ``ncl chat``,
a scheduled task's YAML payload); every validation error is one line (``field: message``, never pydantic's
multi-line report); a time before 1970 or after 9999 is refused with a message that says so, wherever a time is
accepted (tools, requests, ``--at``, ``--now``), while the far end (year 9999) keeps working as before.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from cli_kit import Ncl, ok, one_line_error
from hypothesis import given
from hypothesis import strategies as st
from kit import World
from mcp.server.mcpserver.exceptions import ToolError as McpToolError
from property_kit import json_values, one_line, props
from pydantic import ValidationError
from security_kit import T0

from agent_runner import slash
from agent_runner.config import RunnerConfig
from agent_runner.mcp_server import build_server
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.errors import NclError
from host.project_tasks import specs as scheduled
from schemas import requests
from schemas.messages import TaskContent
from schemas.times import TimeFormatError, parse_user_time, to_text
from schemas.validation import one_line as first_error

if TYPE_CHECKING:
    from conftest import CliEnv

BLANKS = ["", " ", "   ", "\t", "\n", " \r\n\t ", "\u00a0", "\u3000"]
EARLY = ["0001-01-03T00:00:00Z", "1969-12-31T23:59:59Z", "1900-01-01T00:00:00", "0001-01-01T00:00:00+01:00"]
LATE = ["10000-01-01T00:00:00Z", "+10000-01-01", "9999-12-31T23:00:00-05:00"]


def tools(tmp_path: Path) -> tuple[World, Tools, str]:
    world = World(tmp_path)
    known = world.schedule(T0 - timedelta(days=1), recurrence="0 9 * * *")
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    return world, Tools(config, Store(config), lambda: T0), known


# --- whitespace-only prompts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("blank", BLANKS)
def test_a_blank_prompt_is_refused_by_the_tools_and_slash_commands(tmp_path: Path, blank: str) -> None:
    world, tool, known = tools(tmp_path)
    for name, arguments in (("schedule_task", {"prompt": blank}), ("update_task", {"taskId": known, "prompt": blank})):
        with pytest.raises(ToolError) as refused:
            tool.call(name, arguments)
        one_line(str(refused.value))
        assert "empty" in str(refused.value) or "whitespace" in str(refused.value)
        answer, _, failed = slash.run(f"/{name} {json.dumps(arguments)}", tool)
        assert answer.startswith("error: ") and "whitespace" in answer and failed
        one_line(answer)
    world.central.close()


@pytest.mark.parametrize("blank", BLANKS[1:])
def test_a_runner_request_with_a_blank_prompt_is_rejected_in_one_line(tmp_path: Path, blank: str) -> None:
    """A runner that writes its request by hand, past the tool: the host rejects it with a one-line notice."""
    for content in ({"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": blank},
                    {"action": "update_task", "taskId": "task-1781182800000-aaaaaa", "prompt": blank}):
        with pytest.raises(requests.RequestError) as refused:
            requests.parse(content)
        assert str(refused.value) == "invalid request: " + (
            f"{content['action']}.prompt: must not be empty or only whitespace")
    world = World(tmp_path)
    world.request(T0, {"action": "schedule_task", "taskId": "task-1781182800000-bbbbbb", "prompt": blank})
    assert world.sweeper().tick(T0).errors == 0
    [notice] = [n for n in world.notices() if n["notice"] == "request_rejected"]
    one_line(notice["text"])
    assert "whitespace" in notice["text"] and world.rows("task-1781182800000-bbbbbb") == []
    world.central.close()


@pytest.fixture
def demo(ncl: Ncl) -> dict[str, Any]:
    ok(ncl("groups", "create", "demo", "--channel", "cli", "--channel", "queue:jobs"))
    session: dict[str, Any] = ok(ncl("sessions", "create", "--group", "demo", "--json")).json()
    return session


def test_the_cli_refuses_a_blank_prompt_everywhere_in_one_line(ncl: Ncl, cli_env: CliEnv,
                                                              demo: dict[str, Any]) -> None:
    task = ok(ncl("tasks", "add", "--session", demo["id"], "--prompt", "real work", "--json")).json()
    spec = cli_env.root / "blank.yaml"
    refusals = {
        ("tasks", "add", "--session", demo["id"], "--prompt", " \t "): "prompt",
        ("tasks", "update", task["id"], "--prompt", "\n"): "prompt",
        ("queue", "send", "--queue", "jobs", "--json", '{"prompt": "  "}'): "prompt",
        ("queue", "send", "--queue", "jobs", "--json", '{"prompt": [{"type": "text", "text": " \\n"}]}'): "prompt",
        ("agent", "invoke", "demo", "--prompt", "  "): "--prompt",
        ("chat", "demo", " \n "): "text",  # refused before it looks for a host (none runs here)
        ("scheduled-task", "add", "--file", str(spec)): "prompt",
    }
    for payload in ('"  "', '[{type: text, text: "\\t"}]'):
        spec.write_text("version: v1\nkind: ScheduledTask\nschedule: 30 17 * * *\n"
                        f"queue: {{name: jobs, payload: {{prompt: {payload}}}}}\n")
        for argv, field in refusals.items():
            if argv[0] != "scheduled-task" and payload != '"  "':
                continue
            line = one_line_error(ncl(*argv))
            assert field in line and ("whitespace" in line or "empty" in line), (argv, line)
            assert "validation error" not in line
    assert [t["prompt"] for t in ok(ncl("tasks", "list", "--json")).json()["tasks"]] == ["real work"]
    assert ok(ncl("queue", "list", "--json")).json()["queues"][0]["pending"] == 0


# --- one line per validation error --------------------------------------------------------------------------------

REQUEST_KEYS = ["action", "taskId", "prompt", "processAfter", "recurrence", "script", "contextMode", "bogus\nkey"]


@props(300)
@given(content=st.dictionaries(st.sampled_from(REQUEST_KEYS), json_values | st.sampled_from(
    ["schedule_task", "update_task", "pause_task", "  ", "task-1781182800000-aaaaaa", "0001-01-01T00:00:00.000Z",
     "line one\nline two", "*/0 * * * *"]), max_size=6))
def test_every_refused_request_is_one_line(content: dict[str, Any]) -> None:
    try:
        requests.parse(content)
    except requests.RequestError as exc:
        one_line(str(exc))
        assert "validation error for" not in str(exc) and "https://errors.pydantic.dev" not in str(exc)


@props(200)
@given(content=st.dictionaries(st.sampled_from(["prompt", "script", "context_mode"]), json_values
                               | st.sampled_from(["", "  ", "group", "shared", "a\nb"]), max_size=3))
def test_a_refused_model_is_one_field_colon_message_line(content: dict[str, Any]) -> None:
    try:
        TaskContent.model_validate(content)
    except ValidationError as exc:
        message = first_error(exc)
        one_line(message)
        assert message.split(": ", 1)[0] in ("prompt", "script", "context_mode"), message


SPEC_VALUES = json_values | st.sampled_from(["", "  ", "a\nb", "*/0 * * * *", "x\n  y: 1", "room:///../x"])


@props(200)
@given(doc=st.fixed_dictionaries({"version": st.just("v1"), "kind": st.just("ScheduledTask")}, optional={
    "schedule": SPEC_VALUES | st.just("30 17 * * *"), "name": SPEC_VALUES, "bogus\nkey": SPEC_VALUES,
    "queue": st.fixed_dictionaries({"name": SPEC_VALUES | st.just("jobs")}, optional={"payload": st.fixed_dictionaries(
        {"prompt": SPEC_VALUES | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": SPEC_VALUES}),
                                          max_size=2)})}),
    "host": st.fixed_dictionaries({"command": SPEC_VALUES}, optional={"timeout_seconds": SPEC_VALUES})}))
def test_every_refused_scheduled_task_spec_is_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                       doc: dict[str, Any]) -> None:
    try:
        scheduled.parse(json.dumps(doc), "t.yaml", tmp_path_factory.getbasetemp())
    except NclError as exc:
        one_line(str(exc))
        assert "validation error for" not in str(exc)


def test_the_cli_says_a_model_error_as_field_colon_message(ncl: Ncl, demo: dict[str, Any]) -> None:
    """``ncl tasks update --prompt ' '`` fails in TaskContent: the CLI prints its first error, not the report."""
    task = ok(ncl("tasks", "add", "--session", demo["id"], "--prompt", "real work", "--json")).json()
    line = one_line_error(ncl("tasks", "update", task["id"], "--prompt", "   "))
    assert line == "ncl: prompt: must not be empty or only whitespace"


@pytest.mark.parametrize("arguments", [
    {"taskId": "<known>", "prompt": 5}, {"taskId": "<known>", "prompt": ["a"]}, {"taskId": "<known>", "script": 5},
    {"taskId": "<known>", "processAfter": "0001-01-01T00:00:00Z"}, {"taskId": "<known>", "recurrence": "a\nb"}])
def test_tool_refusals_are_one_line(tmp_path: Path, arguments: dict[str, Any]) -> None:
    world, tool, known = tools(tmp_path)
    arguments = {k: known if v == "<known>" else v for k, v in arguments.items()}
    with pytest.raises(ToolError) as refused:
        tool.call("update_task", arguments)
    one_line(str(refused.value))
    assert "validation error for" not in str(refused.value)
    world.central.close()


@pytest.mark.parametrize(("name", "arguments"), [("pause_task", {}), ("schedule_task", {"prompt": 5}),
                                                ("schedule_task", {"prompt": "x", "contextMode": "shared\nnew"}),
                                                ("update_task", {"taskId": ["a"]})])
async def test_mcp_arguments_that_miss_the_schema_are_one_line(tmp_path: Path, name: str,
                                                               arguments: dict[str, Any]) -> None:
    """The MCP library checks arguments against each tool's schema before the tool runs; its refusal was
    pydantic's four-line report (with a link to pydantic's docs)."""
    world, tool, _ = tools(tmp_path)
    with pytest.raises(McpToolError) as refused:
        await build_server(tool).call_tool(name, arguments)
    # a missing argument is named with the ones the tool takes (issue 15.6)
    assert str(refused.value).startswith((f"bad arguments for {name}: ", f"{name} needs taskId; its arguments: "))
    one_line(str(refused.value))
    world.central.close()


# --- times before 1970 or after 9999 -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", EARLY + LATE)
def test_a_time_outside_1970_to_9999_is_refused_saying_so(text: str) -> None:
    with pytest.raises(TimeFormatError) as refused:
        parse_user_time(text, ZoneInfo("America/New_York"))
    one_line(str(refused.value))
    assert ("before 1970-01-01" if text in EARLY else "after 9999-12-31") in str(refused.value)


@props(300)
@given(instant=st.datetimes(timezones=st.just(UTC)))
def test_any_given_time_is_in_the_span_or_refused_saying_so(instant: datetime) -> None:
    try:
        parsed = parse_user_time(instant.isoformat(), ZoneInfo("UTC"))
    except TimeFormatError as exc:
        assert instant.year < 1970 and "before 1970-01-01" in str(exc)
        return
    assert parsed.year >= 1970 and parsed == instant


def test_a_runner_request_from_year_1_is_rejected(tmp_path: Path) -> None:
    """The issue's stall: a recurring request from year 1 made the misfire rule reckon 213 million slots."""
    content = {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x",
               "processAfter": "0001-01-03T00:00:00.000Z", "recurrence": "*/5 * * * *"}
    with pytest.raises(requests.RequestError, match="before 1970-01-01"):
        requests.parse(content)
    world, tool, _ = tools(tmp_path)
    with pytest.raises(ToolError, match="before 1970-01-01"):
        tool.call("schedule_task", {"prompt": "x", "processAfter": "0001-01-03T00:00:00Z", "recurrence": "@daily"})
    world.central.close()


def test_the_far_end_keeps_working(tmp_path: Path) -> None:
    """Year 9999 as before: a one-shot at its end is scheduled; a recurrence that has no next slot is refused."""
    assert to_text(parse_user_time("9999-12-31T23:59:59.999Z", ZoneInfo("UTC"))) == "9999-12-31T23:59:59.999Z"
    world, tool, _ = tools(tmp_path)
    assert "Task scheduled" in tool.call("schedule_task", {"prompt": "far", "processAfter": "9999-12-31T12:00:00Z"})
    world.central.close()


def test_the_cli_refuses_times_outside_the_span_in_one_line(ncl: Ncl, demo: dict[str, Any]) -> None:
    for argv in (["tasks", "add", "--session", demo["id"], "--prompt", "x", "--at", "1969-07-20T20:17:00Z"],
                 ["tasks", "add", "--session", demo["id"], "--prompt", "x", "--now", "0001-01-03T00:00:00Z"],
                 ["queue", "send", "--queue", "jobs", "--json", '{"prompt": "x"}', "--now", "1969-12-31"],
                 ["host", "sweep", "--once", "--now", "10000-01-01T00:00:00Z"]):
        line = one_line_error(ncl(*argv))
        assert "before 1970-01-01" in line or "after 9999-12-31" in line, (argv, line)
    assert ok(ncl("tasks", "list", "--json")).json()["tasks"] == []
