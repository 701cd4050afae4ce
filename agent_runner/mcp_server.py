"""The agent's tools as an MCP server on the official SDK (DESIGN §7): ``python -m agent_runner.mcp_server
--session-dir DIR`` speaks MCP over stdio and serves the eight tools declared in :mod:`agent_runner.tool_specs`.

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
from typing import Any

from mcp.client.stdio import StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError as ArgumentError
from mcp.types import CallToolResult, TextContent
from mcp.types import Tool as MCPTool
from pydantic import BaseModel, ValidationError

import agent_runner
from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tool_specs import TOOLS
from agent_runner.tools import CURRENT_TURN, Tools
from schemas import clock
from schemas.validation import one_line

log = logging.getLogger(__name__)
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,30}")


def _load_turn(tools: Tools) -> None:
    raw = tools.store.state(CURRENT_TURN)
    try:
        turn = json.loads(raw) if raw else {}
    except ValueError:
        turn = {}
    tools.turn = turn if isinstance(turn, dict) else {}


def _call(tools: Tools, name: str, arguments: dict[str, Any]) -> CallToolResult:
    """One tool call; a refusal is an is_error result the model reads, not a protocol error."""
    _load_turn(tools)
    try:
        text = tools.call(name, arguments)
    except ToolError as exc:
        log.info("tool %s refused: %s", name, exc, extra={"action": "tool_refused"})
        return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text=text)])


class _Server(MCPServer):
    """The tools of :data:`agent_runner.tool_specs.TOOLS`, listed with their declared schemas; arguments that do not
    fit a tool's schema are refused in one line (issue 11), not pydantic's report."""

    def __init__(self, tools: Tools) -> None:
        super().__init__("ncl", instructions="Scheduling and messaging tools of the ncl agent host.")
        self.tools = tools
        self.listed = [MCPTool(name=spec.name, description=spec.describe(tools.config),
                               input_schema=spec.input_schema()) for spec in TOOLS.values()]

    async def list_tools(self) -> list[MCPTool]:
        return self.listed

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> CallToolResult:
        spec = TOOLS.get(name)
        if spec is None:
            raise ArgumentError(f"Unknown tool: {name}")
        if problem := spec.misfit(arguments):  # an argument the schema would drop unread is refused, by its name
            raise ArgumentError(problem)
        try:
            checked = spec.check(arguments)
        except ValidationError as exc:
            raise ArgumentError(f"bad arguments for {name}: {one_line(exc)}") from exc
        return _call(self.tools, name, checked)


def build_server(tools: Tools) -> MCPServer:
    """An MCPServer whose tools call ``tools``."""
    return _Server(tools)


def server_parameters(config: RunnerConfig) -> StdioServerParameters:
    """How the runner starts this server: its own interpreter, and exactly its own settings (no API key)."""
    source = str(Path(agent_runner.__file__).resolve().parent.parent)  # importable wherever the runner is
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, **config.told("tz", "generation", "task_min_interval_s", "misfire_grace_s", "max_batch",
                                             "provider", "model", "log_level", "group_dir")}
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
