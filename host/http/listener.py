"""The accept loop of the host's own servers (webhooks on 127.0.0.1, the CLI socket), in place of asyncio's.

At most ``cap`` connections are served at once; one more is answered at once with ``busy`` and closed, never
held. Out of file descriptors (EMFILE/ENFILE on accept), asyncio's own loop would log a traceback for every
pending connection again and again (it does not stop at the first failure), and the connections wait unanswered:
here a spare descriptor is given up to accept one of them and answer it ``busy``, accepting pauses briefly, and
the trouble is logged at most once a minute. The servers asyncio still accepts for (the model proxy's) have its
report of the same trouble throttled alike."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from host.http.log_throttle import LogThrottle
from schemas import clock

log = logging.getLogger(__name__)
OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
PAUSE_S = 0.05  # between accepts while out of descriptors: the loop must not spin, nor stop answering for long
BACKLOG = 128
UNREAD_CHUNKS = 4  # of 64 KiB: a request already sent is taken and dropped before an over-the-cap close

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ASYNCIO_ACCEPT_FAILED = "socket.accept() out of system resource"
_quieted: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def tcp_socket(port: int) -> socket.socket:
    """A listening socket on loopback only (``port`` 0: any free one)."""
    return socket.create_server(("127.0.0.1", port), backlog=BACKLOG)


def unix_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, created 0600 from the start (never briefly open to others)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(BACKLOG)
    return sock


class Listener:
    def __init__(self, sock: socket.socket, handler: Handler, *, name: str, cap: int, busy: bytes,
                 limit: int) -> None:
        sock.setblocking(False)
        self.sock, self.handler, self.name, self.cap, self.busy, self.limit = sock, handler, name, cap, busy, limit
        self.throttle = LogThrottle(log)
        self.connections: set[asyncio.Task[None]] = set()
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY)  # given up to answer when out of descriptors
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_asyncio_accept_errors(loop)
        self._accepting = loop.create_task(self._accept())

    async def stop(self) -> None:
        """Stop accepting and end every connection."""
        tasks = [t for t in (self._accepting, *self.connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.sock.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                self._cannot_accept(exc, loop.time())
                await clock.sleep(PAUSE_S)
                continue
            if len(self.connections) >= self.cap:
                self.throttle.log(logging.WARNING, "connections_over_cap", loop.time(),
                                  "%s: %d connections already, one more answered busy", self.name, self.cap)
                _answer_and_close(conn, self.busy)
                continue
            task = loop.create_task(self._serve(conn))
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)

    def _cannot_accept(self, exc: OSError, now: float) -> None:
        if exc.errno not in OUT_OF_FDS:
            self.throttle.log(logging.WARNING, "accept_failed", now, "%s: accept failed: %s", self.name, exc)
            return
        self.throttle.log(logging.ERROR, "out_of_fds", now, "%s: out of file descriptors (%s): connections are "
                          "answered busy until some are free", self.name, exc.strerror)
        if self._spare is None:
            return
        os.close(self._spare)
        self._spare = None
        try:
            conn, _ = self.sock.accept()
            _answer_and_close(conn, self.busy)
        except OSError:
            pass  # nobody waiting after all, or the descriptor went elsewhere meanwhile
        with contextlib.suppress(OSError):
            self._spare = os.open(os.devnull, os.O_RDONLY)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await self.handler(reader, writer)
        except Exception:  # a handler's bug must not flood the log either: one traceback a minute
            self.throttle.log(logging.ERROR, "connection_failed", loop.time(), "%s: a connection failed",
                              self.name, exc_info=True)
        finally:
            writer.close()


def quiet_asyncio_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """The servers asyncio accepts for (the model proxy's sockets) log a traceback per failed accept, a hundred a
    second while out of descriptors: through the throttle instead. Every other report goes on as before."""
    if loop in _quieted:
        return
    _quieted.add(loop)
    previous, throttle = loop.get_exception_handler(), LogThrottle(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ASYNCIO_ACCEPT_FAILED:
            throttle.log(logging.ERROR, "out_of_fds", loop.time(), "a server cannot accept: %s",
                         context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _answer_and_close(conn: socket.socket, answer: bytes) -> None:
    """A short answer fits the socket's send buffer: sent without waiting, then closed. What the client already
    sent is taken first (without waiting for more): closing on unread bytes resets the connection, and a reset
    can reach the client before it has read the answer."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(answer)
        conn.shutdown(socket.SHUT_WR)
        for _ in range(UNREAD_CHUNKS):
            if not conn.recv(1 << 16):
                break
    conn.close()
