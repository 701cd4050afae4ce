"""Just enough HTTP/1.1 to read one request from an asyncio stream, and to refuse it (proxy and webhooks)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

PHRASES = {status.value: status.phrase for status in HTTPStatus}


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


async def read_head(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Refusal(431, "invalid_request_error", "request headers too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refusal(400, "invalid_request_error", "malformed request line")
    headers = []
    for line in filter(None, lines[1:]):
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Refusal(400, "invalid_request_error", "malformed header line")
        headers.append((name.lower(), value.strip()))
    return Request(parts[0], parts[1], headers)


async def read_body(reader: asyncio.StreamReader, request: Request, cap: int) -> bytes:
    too_large = Refusal(413, "request_too_large", f"request body over {cap} bytes")
    encoding, length = request.header("transfer-encoding"), request.header("content-length")
    if encoding is not None:
        if encoding.lower() != "chunked" or length is not None:  # both framings at once: smuggling, refuse
            raise Refusal(400, "invalid_request_error", "unsupported request body framing")
        body = bytearray()
        try:
            while size := int((await reader.readline()).split(b";")[0], 16):  # a size line; zero ends the body
                if len(body) + size > cap:
                    raise too_large
                chunk = await reader.readexactly(size + 2)
                if not chunk.endswith(b"\r\n"):
                    raise ValueError("chunk not followed by CRLF")
                body += chunk[:-2]
        except ValueError:
            raise Refusal(400, "invalid_request_error", "malformed chunked body") from None
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # trailers: nothing the model API needs
        return bytes(body)
    if length is not None and not length.isdigit():
        raise Refusal(400, "invalid_request_error", "malformed Content-Length")
    if int(length or 0) > cap:
        raise too_large
    return await reader.readexactly(int(length or 0))


def json_response(status: int, data: object) -> bytes:
    body = json.dumps(data).encode()
    head = f"HTTP/1.1 {status} {PHRASES.get(status, 'Unknown')}\r\ncontent-type: application/json\r\n"
    return f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
