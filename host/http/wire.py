"""Just enough HTTP/1.1 to read one request from an asyncio stream, and to refuse it (proxy and webhooks).

Lengths are read strictly: ``Content-Length`` and chunk sizes are plain ASCII digits (hex digits for chunks), no
sign, space, underscore or non-ASCII digit (``"²".isdigit()`` is true, ``int("²")`` raises), and short enough to
be a length at all. A timeout bounds a whole head or body, so a client that trickles bytes is cut."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from http import HTTPStatus

PHRASES = {status.value: status.phrase for status in HTTPStatus}
DECIMAL = re.compile(r"[0-9]{1,15}")  # 15 digits: under 1 PB, far past any cap, and never int()'s digit limit
HEX_SIZE = re.compile(rb"([0-9A-Fa-f]{1,12})(;[^\r\n]*)?\r\n")  # a chunk-size line: size, extensions, end
MAX_TRAILERS = 8 << 10  # bytes of chunked trailers taken (and dropped) before the request is refused


class Refusal(Exception):
    """``Refusal(status, error type, message)``: answered by the server itself, Anthropic-shaped; nothing forwarded."""


def error_response(status: int, kind: str, message: str) -> bytes:
    return json_response(status, {"type": "error", "error": {"type": kind, "message": message}})


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lowercased, in arrival order

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


async def read_head(reader: asyncio.StreamReader, *, timeout: float | None = None) -> Request:
    """The request line and headers; the reader's ``limit`` caps their size (431 past it)."""
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Refusal(431, "invalid_request_error", "request headers too large") from None
    except TimeoutError:
        raise Refusal(408, "timeout_error", f"request headers not received within {timeout:g} s") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refusal(400, "invalid_request_error", "malformed request line")
    headers = []
    for line in filter(None, lines[1:]):
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Refusal(400, "invalid_request_error", "malformed header line")
        headers.append((name.lower(), value.strip(" \t")))  # optional whitespace is SP and HTAB only
    return Request(parts[0], parts[1], headers)


def content_length(request: Request, cap: int) -> int | None:
    """The declared body length, checked against ``cap`` (413) before a byte of the body is read; None when the
    body is chunked or absent. Junk, a sign, two different values or both framings at once: 400."""
    encoding, lengths = request.header("transfer-encoding"), {v for k, v in request.headers if k == "content-length"}
    if encoding is not None:
        if encoding.lower() != "chunked" or lengths:  # both framings at once: smuggling, refuse
            raise Refusal(400, "invalid_request_error", "unsupported request body framing")
        return None
    if len(lengths) > 1:
        raise Refusal(400, "invalid_request_error", "more than one Content-Length")
    if not lengths:
        return 0
    (text,) = lengths
    significant = text.lstrip("0") or "0" if text else ""
    if not DECIMAL.fullmatch(significant):
        raise Refusal(400, "invalid_request_error", f"malformed Content-Length {text[:40]!r}: expected ASCII "
                                                    "digits of a byte count")
    if int(significant) > cap:
        raise Refusal(413, "request_too_large", f"request body over {cap} bytes")
    return int(significant)


async def read_body(reader: asyncio.StreamReader, request: Request, cap: int, *,
                    timeout: float | None = None) -> bytes:
    """The body by its framing, at most ``cap`` bytes (413), all of it within ``timeout`` seconds (408)."""
    length = content_length(request, cap)
    try:
        async with asyncio.timeout(timeout):
            return await reader.readexactly(length) if length is not None else await _chunked(reader, cap)
    except TimeoutError:
        raise Refusal(408, "timeout_error", f"request body not received within {timeout:g} s") from None


async def _chunked(reader: asyncio.StreamReader, cap: int) -> bytes:
    body = bytearray()
    try:
        while size := chunk_size(await reader.readline()):  # zero ends the body
            if len(body) + size > cap:
                raise Refusal(413, "request_too_large", f"request body over {cap} bytes")
            chunk = await reader.readexactly(size + 2)
            if not chunk.endswith(b"\r\n"):
                raise ValueError("chunk not followed by CRLF")
            body += chunk[:-2]
        await skip_trailers(reader)
    except ValueError:  # also readline's own: a line past the reader's limit
        raise Refusal(400, "invalid_request_error", "malformed chunked body") from None
    return bytes(body)


async def skip_trailers(reader: asyncio.StreamReader) -> None:
    """Take and drop a chunked body's trailers: nothing the model API or a webhook needs, and not without end
    (ValueError past ``MAX_TRAILERS``)."""
    trailers = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        trailers += len(line)
        if trailers > MAX_TRAILERS:
            raise ValueError("trailers too long")


def chunk_size(line: bytes) -> int:
    """The size a chunk-size line (CRLF included) gives; ValueError for anything but bare hex and extensions."""
    matched = HEX_SIZE.fullmatch(line)
    if matched is None:
        raise ValueError(f"bad chunk-size line {line[:40]!r}")
    return int(matched.group(1), 16)


def json_response(status: int, data: object) -> bytes:
    body = json.dumps(data).encode()
    head = f"HTTP/1.1 {status} {PHRASES.get(status, 'Unknown')}\r\ncontent-type: application/json\r\n"
    return f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
