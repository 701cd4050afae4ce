"""The agent's tools as an MCP server on the official SDK (DESIGN §7): ``python -m agent_runner.mcp_server
--session-dir DIR`` speaks MCP over stdio and serves the eight tools of :class:`agent_runner.tools.Tools`.

It runs as a child of the runner (the provider loop is its MCP client), configured from the same
environment (``RunnerConfig.from_env``). Being another process, it cannot see which message the runner
is answering, so each call first reads the turn (``in_reply_to`` + routing) the runner stored in
outbound.db ``session_state`` under ``current_turn``.

How the runner launches MCP servers lives here too: :func:`server_parameters` (this one, with exactly
the runner's settings) and :func:`extra_servers` (the agent group's ``mcp.json``; the format is in
``agent_runner.anthropic_provider``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.client.stdio import StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError as ArgumentError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field, ValidationError

import agent_runner
from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tools import CURRENT_TURN, ToolError, Tools
from schemas import clock
from schemas.validation import one_line

log = logging.getLogger(__name__)
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,30}")

TaskId = Annotated[str, Field(description="The task's id (task-…), as schedule_task or list_tasks gave it.")]
To = Annotated[str | None, Field(description="A named destination; omit to answer where the current message "
                                             "came from.")]


def _load_turn(tools: Tools) -> None:
    raw = tools.store.state(CURRENT_TURN)
    try:
        turn = json.loads(raw) if raw else {}
    except ValueError:
        turn = {}
    tools.turn = turn if isinstance(turn, dict) else {}


def _call(tools: Tools, name: str, **arguments: Any) -> CallToolResult:
    """One tool call; a refusal is an is_error result the model reads, not a protocol error."""
    _load_turn(tools)
    try:
        text = tools.call(name, {k: v for k, v in arguments.items() if v is not None})
    except ToolError as exc:
        log.info("tool %s refused: %s", name, exc, extra={"action": "tool_refused"})
        return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text=text)])


def _descriptions(config: RunnerConfig) -> dict[str, str]:
    tz, gap = config.tz, int(config.task_min_interval_s)
    when = (f"Times are ISO 8601; a time without an offset (2026-06-11T09:00:00) is local time in {tz}, "
            "the user's time zone.")
    cron = (f"5-field cron (minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5' = weekdays 09:00) "
            f"or @hourly/@daily/@weekly/@monthly/@yearly, evaluated in {tz}. Runs must be at least {gap} s apart.")
    return {
        "schedule_task": f"Schedule work for yourself: at a time (processAfter), on a recurring schedule "
                         f"(recurrence), or both (first run at processAfter, then on the schedule). Without "
                         f"either it runs as soon as possible. {when} Recurrence: {cron} Answers with the task "
                         f"id and the next run times. When it fires you receive the prompt as a message.",
        "list_tasks": "List this conversation's scheduled tasks, one line per series: id, state, schedule, "
                      "next runs, prompt. Includes tasks just requested and not yet applied.",
        "update_task": f"Change a scheduled task: only the fields given change. {when} Recurrence: {cron} "
                       "Pass recurrence \"\" to make it one-shot, script \"\" to drop its gate script.",
        "pause_task": "Pause a scheduled task (every future occurrence) until resume_task.",
        "resume_task": "Resume a paused task; an overdue occurrence runs once at once if recently missed.",
        "cancel_task": "Cancel a scheduled task for good; a run already in progress finishes.",
        "send_message": "Send a chat message now, in addition to your final answer (e.g. progress on long work).",
        "send_file": "Send a file from the workspace (a path relative to it; nothing outside it) as an attachment.",
    }


class _Server(MCPServer):
    """Arguments that do not fit a tool's schema are refused in one line (issue 11), not pydantic's report."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ArgumentError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ArgumentError(f"bad arguments for {name}: {one_line(exc.__cause__)}") from exc.__cause__
            raise


def build_server(tools: Tools) -> MCPServer:
    """An MCPServer whose tools call ``tools``; schemas come from the typed signatures below."""
    server: MCPServer = _Server("ncl", instructions="Scheduling and messaging tools of the ncl agent host.")
    describe = _descriptions(tools.config)

    def schedule_task(
        prompt: Annotated[str, Field(description="What to do when the task fires, written as an instruction "
                                                 "to yourself.")],
        processAfter: Annotated[str | None, Field(description="First (or only) run time, ISO 8601; naive = "
                                                              "local time.")] = None,
        recurrence: Annotated[str | None, Field(description="5-field cron in the user's time zone; omit for a "
                                                            "one-shot task.")] = None,
        script: Annotated[str | None, Field(description="Optional bash gate run before you are woken; its last "
                                                        "stdout line must be JSON {\"wakeAgent\": bool, "
                                                        "\"data\": …}.")] = None,
        contextMode: Annotated[Literal["group", "isolated"], Field(
            description="'group' (default): runs in this conversation; 'isolated': fresh context, no "
                        "history read or kept.")] = "group",
    ) -> CallToolResult:
        return _call(tools, "schedule_task", prompt=prompt, processAfter=processAfter, recurrence=recurrence,
                     script=script, contextMode=contextMode)

    def list_tasks(
        status: Annotated[Literal["pending", "processing", "paused", "requested"] | None,
                          Field(description="Only series in this state.")] = None,
    ) -> CallToolResult:
        return _call(tools, "list_tasks", status=status)

    def update_task(
        taskId: TaskId,
        prompt: Annotated[str | None, Field(description="New prompt.")] = None,
        processAfter: Annotated[str | None, Field(description="New next run time, ISO 8601; naive = local "
                                                              "time.")] = None,
        recurrence: Annotated[str | None, Field(description="New 5-field cron; \"\" makes it one-shot.")] = None,
        script: Annotated[str | None, Field(description="New gate script; \"\" removes it.")] = None,
    ) -> CallToolResult:
        return _call(tools, "update_task", taskId=taskId, prompt=prompt, processAfter=processAfter,
                     recurrence=recurrence, script=script)

    def pause_task(taskId: TaskId) -> CallToolResult:
        return _call(tools, "pause_task", taskId=taskId)

    def resume_task(taskId: TaskId) -> CallToolResult:
        return _call(tools, "resume_task", taskId=taskId)

    def cancel_task(taskId: TaskId) -> CallToolResult:
        return _call(tools, "cancel_task", taskId=taskId)

    def send_message(text: Annotated[str, Field(description="The message text.")], to: To = None) -> CallToolResult:
        return _call(tools, "send_message", text=text, to=to)

    def send_file(path: Annotated[str, Field(description="Path of the file, relative to the workspace.")],
                  to: To = None) -> CallToolResult:
        return _call(tools, "send_file", path=path, to=to)

    for fn in (schedule_task, list_tasks, update_task, pause_task, resume_task, cancel_task, send_message,
               send_file):
        server.add_tool(fn, description=describe[fn.__name__], structured_output=False)
    return server


def server_parameters(config: RunnerConfig) -> StdioServerParameters:
    """How the runner starts this server: its own interpreter, and exactly its own settings (no API key)."""
    source = str(Path(agent_runner.__file__).resolve().parent.parent)  # importable wherever the runner is
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, **config.told("tz", "generation", "task_min_interval_s", "max_batch", "provider",
                                             "model", "log_level", "group_dir")}
    return StdioServerParameters(command=sys.executable, env=env,
                                 args=["-m", "agent_runner.mcp_server", "--session-dir", str(config.session_dir)])


class _ServerSpec(BaseModel):
    command: str
    args: list[str] = []
    env: dict[str, str] = {}


def extra_servers(config: RunnerConfig) -> dict[str, StdioServerParameters]:
    """The group's ``mcp.json`` servers; a malformed file or entry is logged and skipped."""
    path = config.group_dir / "mcp.json" if config.group_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        listed = json.loads(path.read_text())["servers"]
        specs = {str(k): _ServerSpec.model_validate(v) for k, v in dict(listed).items()}
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        log.warning("ignoring %s: %s", path, exc, extra={"action": "mcp_config_invalid"})
        return {}
    found = {}
    for name, spec in specs.items():
        if not _SERVER_NAME.fullmatch(name):
            log.warning("ignoring MCP server %r: names are 1-30 of [A-Za-z0-9_-]", name,
                        extra={"action": "mcp_config_invalid"})
            continue
        found[name] = StdioServerParameters(command=spec.command, args=spec.args, env={**config.told("tz"), **spec.env},
                                            cwd=config.group_dir)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent_runner.mcp_server", description=__doc__)
    parser.add_argument("--session-dir", type=Path, default=Path("/workspace"), help="the session folder")
    args = parser.parse_args(argv)
    # stdout carries the protocol: every log line must go to stderr.
    logging.basicConfig(level=os.environ.get("NCL_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="mcp_server: %(levelname)s: %(message)s")
    config = RunnerConfig.from_env(args.session_dir)
    tools = Tools(config, Store(config), clock.now)
    build_server(tools).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
