"""Slash commands: need no model, work with every provider (DESIGN §7)."""

from __future__ import annotations

import json
from typing import NamedTuple

from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools

HELP = """Commands:
/clear                 start a fresh conversation
/help [TOOL]           this text, or a tool's arguments, what they mean and an example
/<tool> <json>         call a tool directly, e.g. /schedule_task {"prompt":"…","recurrence":"0 9 * * 1-5"}
Tools (arguments ending in ? may be left out):
"""


def is_command(text: str) -> bool:
    return text.startswith("/") and len(text) > 1 and not text.startswith("//")


class Answer(NamedTuple):
    """The reply to a slash command; whether it asked to clear the conversation; whether it was refused or failed
    (the message is then recorded failed: a one-shot ``ncl chat`` exits 1)."""

    text: str
    clear: bool = False
    failed: bool = False


def run(text: str, tools: Tools) -> Answer:
    name, _, raw = text[1:].strip().partition(" ")
    if name == "clear":
        return Answer("Conversation cleared.", clear=True)
    if name == "help":
        topic = raw.strip().removeprefix("/")
        return _help(topic, tools)
    try:
        arguments = json.loads(raw) if raw.strip() else {}
        if not isinstance(arguments, dict):
            raise ToolError(f"/{name} takes a JSON object of arguments")
        return Answer(tools.call(name, arguments))
    except json.JSONDecodeError as exc:
        return _refused(f"/{name} arguments are not JSON ({exc.msg}); try /help")
    except ToolError as exc:
        return _refused(str(exc))
    except Exception as exc:  # whatever a command hits, the user gets an answer and the runner lives on
        return _refused(f"/{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _refused(why: str) -> Answer:
    return Answer(f"error: {why}", failed=True)


def _help(topic: str, tools: Tools) -> Answer:
    from agent_runner.tool_specs import TOOLS  # pydantic: not at the runner's start (see agent_runner.tools)

    if not topic:
        return Answer(HELP + "\n".join(f"/{spec.name} {spec.signature()}" for spec in TOOLS.values()))
    spec = TOOLS.get(topic)
    if spec is None:
        return _refused(f"no tool {topic!r}; tools: {', '.join(TOOLS)}")
    return Answer(spec.help(tools.config))
