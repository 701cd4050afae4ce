"""The ``anthropic`` provider: a Messages API tool-use loop whose tools are MCP servers (DESIGN §7, §8).

Tools. On first use the provider starts our own MCP server (``python -m agent_runner.mcp_server``) over
stdio, plus any extra servers the agent group lists in ``<group_dir>/mcp.json``::

    {"servers": {"notes": {"command": "python3", "args": ["tools/notes_mcp.py"], "env": {"NOTES_DIR": "notes"}}}}

Names are 1-30 of ``[A-Za-z0-9_-]``. An extra server runs in the group folder with only a minimal
environment (PATH, HOME, …, TZ) plus its ``env``, and (in a container) no network, so it must already be
installed; its tools are offered as ``<name>__<tool>`` so they cannot clash with ours (a tool whose name
the API would refuse is skipped). A server that fails to start is logged and left out (ours failing
fails the turn). Sessions stay open until close().

Endpoint. ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` from the environment, as the SDK reads them.
With ``NCL_ANTHROPIC_SOCKET`` set, HTTP goes over that unix socket instead (a container's only way out:
the host's credential proxy, which adds the real key; a placeholder key is sent if none is set).

Errors. 408/409/429/5xx and connection errors are retried here (the SDK's own retries are off: it would
sleep as long as any ``retry-after`` says, with no total bound and no heartbeat): up to ``MAX_ATTEMPTS``,
waiting what ``retry-after-ms``/``retry-after`` asks (an ask above ``MAX_WAIT_S`` fails at once) or an
exponential backoff, never more than ``RETRY_BUDGET_S`` in all. Anything else is a ``ProviderError``
with one readable line, e.g. ``authentication failed (401): invalid x-api-key``.

Invalid stored conversation. The API has no error code for "your history is broken or too long" and the
SDK warns not to match its wording, so it is detected by difference: a 400 or 413 on the first request
of a turn, sent with a non-empty history, is retried once with an empty one. If that succeeds, the
history was the fault and the fresh exchange replaces it (logged as ``conversation_reset``); if it fails
too, that error is reported and the stored history is left alone. Never after a tool has run, so no tool
call is ever repeated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import anthropic
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import CallToolResult, ImageContent, TextContent

from agent_runner.config import RunnerConfig
from agent_runner.mcp_server import extra_servers, server_parameters
from agent_runner.providers import History, ProviderError, Reply, Turn
from schemas import clock, detached
from schemas.rows import Tokens

log = logging.getLogger(__name__)
MAX_ROUNDS = 20  # model calls per turn; a model stuck calling tools must not run forever
MAX_TOKENS = 8192
MAX_ATTEMPTS = 5
MAX_WAIT_S = 60.0
RETRY_BUDGET_S = 180.0
BEAT_EVERY_S = 10.0  # while waiting to retry: the host kills a runner silent for 60 s after a claim
START_TIMEOUT_S = 30.0
TOOL_TIMEOUT_S = 300.0
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what the Messages API accepts; one bad name fails every call
_LABELS = {400: "bad request", 401: "authentication failed", 403: "permission denied", 404: "not found",
           413: "request too large", 429: "rate limited", 529: "overloaded"}


def _why(exc: BaseException) -> str:
    """The first real error inside anyio's exception groups, as one short line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _result_blocks(result: CallToolResult) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for item in result.content:
        if isinstance(item, TextContent):
            blocks.append({"type": "text", "text": item.text})
        elif isinstance(item, ImageContent):
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": item.mime_type,
                                                       "data": item.data}})
        else:
            blocks.append({"type": "text", "text": item.model_dump_json(exclude_none=True)})
    if not blocks and result.structured_content is not None:
        blocks.append({"type": "text", "text": json.dumps(result.structured_content)})
    # The API refuses empty text blocks.
    return [b for b in blocks if b.get("text", "x")] or [{"type": "text", "text": "(no output)"}]


class _ToolBox:
    """Open MCP sessions. Each is owned by a task of its own, so whichever task calls close() can end it
    (anyio scopes must exit in the task that entered them)."""

    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []
        self._routes: dict[str, tuple[Client, str]] = {}
        self._stop = asyncio.Event()
        self._owners: list[asyncio.Task[None]] = []

    async def _own(self, params: StdioServerParameters, ready: asyncio.Future[Client]) -> None:
        try:
            async with Client(params) as client:
                ready.set_result(client)
                await self._stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.warning("MCP server %s ended: %s", params.command, _why(exc), extra={"action": "mcp_server_ended"})

    async def add(self, params: StdioServerParameters, prefix: str = "") -> None:
        ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        owner = asyncio.create_task(self._own(params, ready))
        self._owners.append(owner)
        try:
            client = await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT_S)
            tools, cursor = [], None
            for _ in range(50):
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if cursor is None:
                    break
        except BaseException:
            owner.cancel()
            await asyncio.wait([owner], timeout=10)
            raise
        for tool in tools:
            name = prefix + tool.name
            if not _TOOL_NAME.fullmatch(name) or name in self._routes:
                log.warning("skipping MCP tool %r: bad or duplicate name", name, extra={"action": "mcp_tool_skipped"})
                continue
            self._routes[name] = (client, tool.name)
            self.specs.append({"name": name, "description": tool.description or "", "input_schema": tool.input_schema})

    async def call(self, block: dict[str, Any]) -> dict[str, Any]:
        """A tool_result block for a tool_use block; every failure is an is_error result for the model."""
        answer: dict[str, Any] = {"type": "tool_result", "tool_use_id": block["id"]}
        route = self._routes.get(block["name"])
        if route is None:
            return answer | {"is_error": True, "content": [{"type": "text", "text": f"unknown tool {block['name']}"}]}
        client, name = route
        try:
            result = await client.call_tool(name, dict(block.get("input") or {}), read_timeout_seconds=TOOL_TIMEOUT_S)
        except Exception as exc:
            log.warning("tool %s failed: %s", block["name"], _why(exc), extra={"action": "tool_failed"})
            return answer | {"is_error": True, "content": [{"type": "text", "text": f"tool failed: {_why(exc)}"}]}
        return answer | {"content": _result_blocks(result)} | ({"is_error": True} if result.is_error else {})

    async def close(self) -> None:
        self._stop.set()
        if self._owners:
            await asyncio.wait(self._owners, timeout=15)


def describe(exc: anthropic.APIStatusError) -> str:
    """One line for the user and the ack: what went wrong, with the API's own words."""
    status = exc.status_code
    label = _LABELS.get(status) or ("API server error" if status >= 500 else "API error")
    words = exc.api_message or (exc.body if isinstance(exc.body, str) else None) or exc.message
    return f"{label} ({status}): {' '.join(str(words).split())[:300]}"


def _wait_asked(headers: httpx2.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name, "")) * scale)
        except ValueError:
            continue
    return None  # absent, or an HTTP date: back off on our own schedule


class _HistoryRejected(Exception):
    pass


def _usage(response: anthropic.types.Message) -> list[tuple[int, int]]:
    """A response's (input, output) tokens, input with cached input as the credential proxy counts it; none if the
    response says none."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return []
    counts = [getattr(usage, name, None) for name in ("input_tokens", "cache_creation_input_tokens",
                                                      "cache_read_input_tokens", "output_tokens")]
    inputs, cached, read, output = (n if isinstance(n, int) else 0 for n in counts)
    return [(inputs + cached + read, output)]


class AnthropicProvider:
    def __init__(self, config: RunnerConfig, environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = clock.sleep) -> None:
        self.config = config
        self._env = os.environ if environ is None else environ
        self._sleep = sleep
        self._api: anthropic.AsyncAnthropic | None = None
        self._box: _ToolBox | None = None

    def _socket(self, name: str) -> str:
        """The proxy socket, named relative to the session folder; a deep folder (a socket address holds 107
        bytes) is reached through a directory descriptor kept open for the provider's life."""
        path = str(self.config.session_dir / name)
        if len(path.encode()) <= 100:
            return path
        self._dir_fd = os.open(self.config.session_dir, os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def _client(self) -> anthropic.AsyncAnthropic:
        if self._api is None:
            socket = self._env.get("NCL_ANTHROPIC_SOCKET")
            key = self._env.get("ANTHROPIC_API_KEY") or None
            if socket:
                http = anthropic.DefaultAsyncHttpxClient(transport=httpx2.AsyncHTTPTransport(uds=self._socket(socket)))
                self._api = anthropic.AsyncAnthropic(api_key=key or "ncl-proxy", base_url="http://localhost",
                                                     http_client=http, max_retries=0)
            else:
                self._api = anthropic.AsyncAnthropic(api_key=key, base_url=self._env.get("ANTHROPIC_BASE_URL"),
                                                     max_retries=0)
        return self._api

    async def _tools(self) -> _ToolBox:
        if self._box is None:
            box = _ToolBox()
            try:
                await box.add(server_parameters(self.config))
            except Exception as exc:
                await box.close()
                raise ProviderError(f"the tool server did not start: {_why(exc)}") from exc
            for name, params in extra_servers(self.config).items():
                try:
                    await box.add(params, prefix=f"{name}__")
                except Exception as exc:
                    log.warning("MCP server %s did not start: %s", name, _why(exc),
                                extra={"action": "mcp_server_failed"})
            # The SDK gives each server a session of its own; listed, a local host can kill them along with us.
            detached.note(self.config.session_dir, detached.children_of(os.getpid()))
            self._box = box
        return self._box

    async def respond(self, turn: Turn) -> Reply:
        box = await self._tools()
        used: list[tuple[int, int]] = []  # each model call's tokens, for the run log (the rejected call used none)
        try:
            text, messages = await self._loop(turn, box, turn.history or [], used)
        except _HistoryRejected as exc:
            log.warning("stored conversation rejected (%s); retrying with a fresh one", exc,
                        extra={"action": "conversation_reset"})
            text, messages = await self._loop(turn, box, [], used)
        tokens = Tokens(sum(i for i, _ in used), sum(o for _, o in used)) if used else None
        return Reply(text, None if turn.history is None else messages, tokens)

    async def _loop(self, turn: Turn, box: _ToolBox, history: History,
                    used: list[tuple[int, int]]) -> tuple[str, History]:
        messages: History = [*history, {"role": "user", "content": turn.prompt}]
        said: list[str] = []
        for round_no in range(MAX_ROUNDS):
            turn.beat()
            try:
                response = await self._create(turn, messages, box.specs)
            except anthropic.APIStatusError as exc:
                if round_no == 0 and history and exc.status_code in (400, 413):
                    raise _HistoryRejected(describe(exc)) from exc
                raise ProviderError(describe(exc)) from None
            used += _usage(response)
            content = [cast(dict[str, Any], b.to_dict(mode="json", exclude_none=True)) for b in response.content]
            said += [b["text"] for b in content if b.get("type") == "text" and b.get("text", "").strip()]
            uses = [b for b in content if b.get("type") == "tool_use"]
            if response.stop_reason != "tool_use" or not uses:
                # An unanswered tool_use (or an empty turn) would make the stored history invalid next time.
                kept = [b for b in content if b.get("type") != "tool_use"]
                messages.append({"role": "assistant", "content": kept or [{"type": "text", "text": "(no reply)"}]})
                return "\n\n".join(said), messages
            messages.append({"role": "assistant", "content": content})
            results = []
            for block in uses:
                turn.beat()
                results.append(await box.call(block))
            messages.append({"role": "user", "content": results})
        note = f"(stopped: still calling tools after {MAX_ROUNDS} rounds)"
        messages.append({"role": "assistant", "content": [{"type": "text", "text": note}]})
        return "\n\n".join([*said, note]), messages

    async def _create(self, turn: Turn, messages: History, tools: list[dict[str, Any]]) -> anthropic.types.Message:
        """One Messages call, retried on rate limits, overload and outages within a bounded total wait."""
        waited = 0.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._client().messages.create(
                    model=turn.model or self.config.model, max_tokens=MAX_TOKENS, messages=cast(Any, messages),
                    system=turn.system or anthropic.omit, tools=cast(Any, tools) if tools else anthropic.omit)
            except anthropic.APIStatusError as exc:
                retry = exc.response.headers.get("x-should-retry") != "false" and (
                    exc.status_code in (408, 409, 429) or exc.status_code >= 500)
                if not retry:
                    raise
                asked = _wait_asked(exc.response.headers)
                problem = describe(exc)
            except anthropic.APIConnectionError as exc:
                asked, problem = None, f"could not reach the model API: {exc}"
            except anthropic.AnthropicError as exc:  # e.g. no credentials at all
                raise ProviderError(f"model API client error: {exc}") from None
            delay = min(2.0 ** (attempt - 1), 16.0) if asked is None else asked
            if delay > MAX_WAIT_S:  # retrying sooner than asked would only be refused again
                raise ProviderError(f"{problem} (asked to wait {delay:.0f} s)")
            if attempt == MAX_ATTEMPTS or waited + delay > RETRY_BUDGET_S:
                raise ProviderError(f"{problem} (gave up after attempt {attempt})")
            log.warning("%s; retry %d in %.1f s", problem, attempt, delay, extra={"action": "provider_retry"})
            waited += delay
            turn.waiting(problem, delay)
            await self._wait(turn, delay)
        raise AssertionError("unreachable")

    async def _wait(self, turn: Turn, seconds: float) -> None:
        while seconds > 0:
            turn.beat()
            step = min(seconds, BEAT_EVERY_S)
            await self._sleep(step)
            seconds -= step
        turn.beat()

    async def close(self) -> None:
        if self._box is not None:
            await self._box.close()
            self._box = None
        if self._api is not None:
            await self._api.close()
            self._api = None
