"""What the credential proxy lets a runner ask of the model API: no feature that makes the API reach the network.

A container has no network (DESIGN §8), but the Messages API can fetch pages, search the web, call MCP servers and
run code *for* the caller. Those would be a way out, so they pass only for a group that allows them
(``ncl groups update NAME --allow-server-tools``). Both lists are allow-lists: a beta or tool type added to the API
tomorrow is refused until someone decides it is safe.

Tools: a custom tool (no ``type``, or ``"custom"``) passes, and so do Anthropic-defined *client* tools (bash,
text_editor, computer, memory, each with its version date): the API only describes them, the runner executes them
inside its container. Any other tool type is a server tool. The request fields ``mcp_servers`` (MCP connector) and
``container`` (code execution and skills) count as server features too, and so does content the API fetches for the
caller: an image or document whose ``source`` is a ``url`` (a way out in both directions: data leaves in the URL,
the page comes back) or a ``file`` of the Files API (shared by the whole API organisation).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from host.http.wire import Refusal, Request

# Betas that change how the model answers but never what the API reaches (names as in the anthropic SDK's
# AnthropicBetaParam and the beta-headers docs).
BETAS = frozenset({
    "prompt-caching-2024-07-31", "extended-cache-ttl-2025-04-11", "token-counting-2024-11-01",
    "token-efficient-tools-2025-02-19", "fine-grained-tool-streaming-2025-05-14", "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19", "context-management-2025-06-27", "context-1m-2025-08-07",
    "model-context-window-exceeded-2025-08-26", "pdfs-2024-09-25", "structured-outputs-2025-11-13",
    "computer-use-2024-10-22", "computer-use-2025-01-24", "computer-use-2025-11-24",  # a client tool: runs in the box
})
# Betas of server features (and the Files API, which reads files of the whole API organisation): only for a group
# with allow_server_tools.
SERVER_BETAS = frozenset({
    "web-fetch-2025-09-10", "code-execution-2025-05-22", "code-execution-2025-08-25", "mcp-client-2025-04-04",
    "mcp-client-2025-11-20", "mcp-client-2026-09-15", "skills-2025-10-02", "files-api-2025-04-14",
})
CLIENT_TOOL = re.compile(r"(bash|text_editor|computer|memory)_\d{8}")
SERVER_FIELDS = ("mcp_servers", "container")
# Only these keys survive parsing: the body's big strings (images, documents, history) are dropped as they are
# decoded, so inspecting a 32 MiB request does not hold a second copy of it.
KEPT = frozenset({"type", "tools", "max_tokens", *SERVER_FIELDS})
# Objects, arrays and numbers of a request, each: a long conversation holds tens of thousands; decoding 32 MiB of "[],"
# took 8 s of CPU (many a minute, within a group's rate, would take the host's cores), of "0," 1.3 s.
MAX_VALUES = 1_000_000
FETCHED_SOURCES = {"url": "url", "file": "file_id"}  # a content source's type -> the key that names what is fetched


def betas(request: Request) -> list[str]:
    """Every value of every ``anthropic-beta`` header (comma-separated lists)."""
    return [v.strip() for k, value in request.headers if k == "anthropic-beta" for v in value.split(",") if v.strip()]


def refused_beta(values: list[str], server_tools: bool) -> str | None:
    allowed = BETAS | SERVER_BETAS if server_tools else BETAS
    return next((value for value in values if value not in allowed), None)


def check_betas(values: list[str], server_tools: bool) -> None:
    if (value := refused_beta(values, server_tools)) is None:
        return
    why = ("it makes the model API reach the network or shared files for the agent; the operator can allow it with "
           "'ncl groups update GROUP --allow-server-tools'" if value in SERVER_BETAS else "it is not on the host's "
           "allow-list of betas that keep the model API off the network")
    raise Refusal(400, "invalid_request_error", f"anthropic-beta {value!r} refused by the ncl host: {why}")


class Asked(NamedTuple):
    """What a request body asks for that the proxy judges: server tools and fields, and the most output the call
    may be billed (its ``max_tokens``; 0 if it names none the API would take)."""

    features: list[str]
    max_tokens: int


def asked(body: bytes | bytearray) -> Asked:
    """What a request body asks for (``Asked``); a body that is not JSON, or of more than ``MAX_VALUES`` objects,
    arrays or numbers, is refused (400)."""
    fetched: set[str] = set()
    numbers = 0
    if (containers := body.count(b"{") + body.count(b"[")) > MAX_VALUES:  # (brackets in strings too: an upper bound)
        raise Refusal(400, "invalid_request_error", f"request body holds {containers:,} JSON objects or arrays, over "
                      f"the ncl host's {MAX_VALUES:,}")

    def number(text: str) -> int | float:
        nonlocal numbers
        numbers += 1
        if numbers > MAX_VALUES:
            raise Refusal(400, "invalid_request_error", f"request body holds over the ncl host's {MAX_VALUES:,} "
                          "JSON numbers")
        return int(text) if text.lstrip("-").isdigit() else float(text)

    def kept(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found = _kept(pairs)
        kind = found.get("type")
        if isinstance(kind, str) and kind in FETCHED_SOURCES and any(k == FETCHED_SOURCES[kind] for k, _ in pairs):
            fetched.add(kind)
        return found

    try:
        parsed = json.loads(body, object_pairs_hook=kept, parse_int=number, parse_float=number) if body else {}
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise Refusal(400, "invalid_request_error", f"request body is not valid JSON: {why}") from None
    if not isinstance(parsed, dict):
        return Asked([], 0)  # the API refuses it; nothing of it can be a server tool
    # Present at all, whatever its value: ``{}`` or ``""`` is still a request for the feature.
    found = [f"the {name} field" for name in SERVER_FIELDS if name in parsed]
    found += [f"a {kind!r} content source" for kind in sorted(fetched)]
    tools = parsed.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom") and not (isinstance(kind, str) and CLIENT_TOOL.fullmatch(kind)):
            found.append(f"tool type {kind!r}")
    most = parsed.get("max_tokens")
    return Asked(found, most if isinstance(most, int) and not isinstance(most, bool) and most > 0 else 0)


def check_tools(features: list[str]) -> None:
    if features:
        raise Refusal(400, "invalid_request_error", f"{', '.join(features)} refused by the ncl host: server tools "
                      "make the model API reach the network for the agent; the operator can allow them with "
                      "'ncl groups update GROUP --allow-server-tools'")


def _kept(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in pairs:
        if key in KEPT:
            if key in kept:  # parsers disagree on which duplicate wins: never guess which one the API reads
                raise ValueError(f"duplicate key {key!r}")
            kept[key] = value
    return kept
