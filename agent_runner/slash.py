"""Slash commands: need no model, work with every provider (DESIGN §7)."""

from __future__ import annotations

import json

from agent_runner.tools import ToolError, Tools

HELP = """Commands:
/clear                 start a fresh conversation
/help [TOOL]           this text, or a tool's arguments, what they mean and an example
/<tool> <json>         call a tool directly, e.g. /schedule_task {"prompt":"…","recurrence":"0 9 * * 1-5"}
Tools (arguments ending in ? may be left out):
"""


def is_command(text: str) -> bool:
    return text.startswith("/") and len(text) > 1 and not text.startswith("//")


def run(text: str, tools: Tools) -> tuple[str, bool]:
    """The reply to a slash command, and whether it asked to clear the conversation."""
    name, _, raw = text[1:].strip().partition(" ")
    if name == "clear":
        return "Conversation cleared.", True
    if name == "help":
        return _help(raw.strip().removeprefix("/"), tools), False
    try:
        arguments = json.loads(raw) if raw.strip() else {}
        if not isinstance(arguments, dict):
            raise ToolError(f"/{name} takes a JSON object of arguments")
        return tools.call(name, arguments), False
    except json.JSONDecodeError as exc:
        return f"error: /{name} arguments are not JSON ({exc.msg}); try /help", False
    except ToolError as exc:
        return f"error: {exc}", False
    except Exception as exc:  # whatever a command hits, the user gets an answer and the runner lives on
        return f"error: /{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False


def _help(topic: str, tools: Tools) -> str:
    from agent_runner.tool_specs import TOOLS  # pydantic: not at the runner's start (see agent_runner.tools)

    if not topic:
        return HELP + "\n".join(f"/{spec.name} {spec.signature()}" for spec in TOOLS.values())
    spec = TOOLS.get(topic)
    if spec is None:
        return f"error: no tool {topic!r}; tools: {', '.join(TOOLS)}"
    return spec.help(tools.config)
