"""Request bodies the credential proxy holds in host memory, under one byte budget shared by every connection.

The proxy must see a whole body before it forwards it: it refuses server tools named in the JSON (issue 11). So it
buffers, but never blindly: a body's size is reserved from the pool *before* it is read (its Content-Length: a chunked
body, which the SDK never sends, is refused), and a request the pool cannot hold is refused, not queued.
Bytes are read in small pieces into one growing buffer: ``readexactly(n)`` would hold the stream's buffer and a copy
of it at once.

Framing is parsed by ``host.http.wire``'s strict rules, the webhooks' too (ASCII digits): a value two parsers read
differently is a way to smuggle one request inside another.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from host.http.wire import Refusal

PIECE = 64 * 1024


class BodyPool:
    """Bytes of request bodies held at once, across all connections, and by each session: at most half of them, so
    one session sending bodies back to back leaves the others room (it refused every other group's call). Touched
    only on the proxy's event loop."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0
        self.by_session: dict[object, int] = {}

    def take(self, size: int, session: object) -> Reservation:
        mine = self.by_session.get(session, 0)
        if self.held + size > self.budget or mine + size > self.budget // 2:
            whose = "this session's" if mine + size > self.budget // 2 else "all sessions'"
            raise Refusal(503, "overloaded_error", f"the host already holds {self.held >> 20} MiB of model requests "
                          f"in memory, {mine >> 20} MiB of them this session's (budget {self.budget >> 20} MiB, half "
                          f"of it a session's; {whose} is full); retry shortly")
        self.held += size
        self.by_session[session] = mine + size
        return Reservation(self, size, session)


class Reservation:
    """Bytes one request holds in the pool; given back in parts as the request lets go of them, never twice."""

    def __init__(self, pool: BodyPool, size: int, session: object) -> None:
        self.pool, self.size, self.session = pool, size, session

    def keep(self, size: int) -> None:
        """Hold only ``size`` bytes from now on (0: give everything back)."""
        freed, self.size = self.size - min(size, self.size), min(size, self.size)
        if not freed:
            return
        self.pool.held -= freed
        left = self.pool.by_session[self.session] - freed
        if left:
            self.pool.by_session[self.session] = left
        else:
            del self.pool.by_session[self.session]


async def read_body(reader: asyncio.StreamReader, length: int) -> bytearray:
    """The body, read in small pieces into one growing buffer (the caller reserved its size in the pool)."""
    body = bytearray()
    async for piece in _exactly(reader, length):
        body += piece
    return body


async def drain(reader: asyncio.StreamReader, length: int) -> None:
    """Read and drop the body, so a client still sending it reads the refusal that follows, not a broken pipe."""
    async for _ in _exactly(reader, length):
        pass


async def _exactly(reader: asyncio.StreamReader, size: int) -> AsyncIterator[bytes]:
    while size:
        piece = await reader.read(min(PIECE, size))
        if not piece:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(piece)
        yield piece
