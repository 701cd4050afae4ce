"""Providers behind one small interface: given a turn, produce the agent's reply (DESIGN §7)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent_runner.prompt import text_of
from agent_runner.tools import Tools
from schemas.rows import InMessage, Tokens

History = list[dict[str, Any]]


class ProviderError(RuntimeError):
    """The model could not answer this turn (bad key, bad request, retries exhausted); said to the user as is."""


@dataclass
class Turn:
    prompt: str
    rows: list[InMessage]  # the batch's rows, oldest first
    tools: Tools
    system: str = ""
    history: History | None = None  # None: isolated context, nothing read or kept
    model: str = ""
    beat: Callable[[], None] = lambda: None  # call between model rounds and tool calls: the runner is alive
    waiting: Callable[[str, float], None] = lambda problem, seconds: None  # before a wait to retry the model API


@dataclass
class Reply:
    text: str
    history: History | None = None
    tokens: Tokens | None = None  # what the turn's model calls used, if the provider reports it (the mock does not)


class Provider(Protocol):
    async def respond(self, turn: Turn) -> Reply: ...

    async def close(self) -> None: ...


class MockProvider:
    """Offline and deterministic: replies ``mock: <text of the last message>`` and keeps a real history."""

    async def respond(self, turn: Turn) -> Reply:
        text = f"mock: {text_of(turn.rows[-1])}"
        history = None if turn.history is None else [
            *turn.history, {"role": "user", "content": turn.prompt}, {"role": "assistant", "content": text}]
        return Reply(text, history)

    async def close(self) -> None:
        return None
