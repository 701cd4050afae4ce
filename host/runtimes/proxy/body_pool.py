"""Request bodies the credential proxy holds in host memory, under one byte budget shared by every connection.

The proxy must see a whole body before it forwards it: it refuses server tools named in the JSON (issue 11). So it
buffers, but never blindly: a body's size is reserved from the pool *before* it is read (its Content-Length; for a
chunked body, which the SDK never sends, the whole cap), and a request the pool cannot hold is refused, not queued.
Bytes are read in small pieces into one growing buffer: ``readexactly(n)`` would hold the stream's buffer and a copy
of it at once.

Framing is parsed by ``host.http.wire``'s strict rules, the webhooks' too (ASCII digits, bare hex chunk sizes): a
value two parsers read differently is a way to smuggle one request inside another.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from host.http.wire import Refusal, chunk_size, skip_trailers

PIECE = 64 * 1024


class BodyPool:
    """Bytes of request bodies held at once, across all connections. Touched only on the proxy's event loop."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> Reservation:
        if self.held + size > self.budget:
            raise Refusal(503, "overloaded_error", f"the host already holds {self.held >> 20} MiB of model requests "
                          f"in memory (budget {self.budget >> 20} MiB); retry shortly")
        self.held += size
        return Reservation(self, size)


class Reservation:
    """Bytes one request holds in the pool; given back in parts as the request lets go of them, never twice."""

    def __init__(self, pool: BodyPool, size: int) -> None:
        self.pool = pool
        self.size = size

    def keep(self, size: int) -> None:
        """Hold only ``size`` bytes from now on (0: give everything back)."""
        freed, self.size = self.size - min(size, self.size), min(size, self.size)
        self.pool.held -= freed


async def read_body(reader: asyncio.StreamReader, length: int | None, cap: int) -> bytearray:
    """The body, read in small pieces into one growing buffer (the caller reserved its size in the pool)."""
    body = bytearray()
    async for piece in _pieces(reader, length, cap):
        body += piece
    return body


async def drain(reader: asyncio.StreamReader, length: int | None, cap: int) -> None:
    """Read and drop the body, so a client still sending it reads the refusal that follows, not a broken pipe."""
    async for _ in _pieces(reader, length, cap):
        pass


async def _pieces(reader: asyncio.StreamReader, length: int | None, cap: int) -> AsyncIterator[bytes]:
    if length is not None:
        async for piece in _exactly(reader, length):
            yield piece
        return
    total = 0
    while size := await _chunk_size(reader):
        total += size
        if total > cap:
            raise _too_large(cap)
        async for piece in _exactly(reader, size):
            yield piece
        if await reader.readexactly(2) != b"\r\n":
            raise _malformed()
    try:
        await skip_trailers(reader)
    except ValueError:
        raise _malformed() from None


async def _exactly(reader: asyncio.StreamReader, size: int) -> AsyncIterator[bytes]:
    while size:
        piece = await reader.read(min(PIECE, size))
        if not piece:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(piece)
        yield piece


async def _chunk_size(reader: asyncio.StreamReader) -> int:
    try:
        return chunk_size(await reader.readline())
    except ValueError:  # junk, or a size line longer than the stream's limit
        raise _malformed() from None


def _malformed() -> Refusal:
    return Refusal(400, "invalid_request_error", "malformed chunked body")


def _too_large(cap: int) -> Refusal:
    return Refusal(413, "request_too_large", f"request body over {cap} bytes")
