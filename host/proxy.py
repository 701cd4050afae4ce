"""The host's credential proxy (DESIGN §8): runners reach the model API only through it, so no container holds a key.

Each running session gets ``<session folder>/.proxy.sock`` speaking just enough HTTP/1.1: ``POST /v1/messages``
and ``POST /v1/messages/count_tokens`` go to ``ANTHROPIC_BASE_URL`` with the host's ``ANTHROPIC_API_KEY`` replacing
any client credential; the answer streams back as it arrives. Clients use ``http://localhost`` over the socket (httpx
``HTTPTransport(uds=…)``). Each response closes its connection: a unix socket connects in microseconds, and one
request per connection keeps the parser free of pipelining (httpx, hence the SDK, copes).

Permissions: always mode 0600. A container runs as another non-root uid, so a root host hands the socket to it
(``open(folder, uid=…)``). A non-root host cannot give a file away and will not open it to every local user (anyone
who can connect spends the key): the socket stays its own, with a warning; run the container as the host's uid then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx  # the anthropic SDK's own HTTP client: same API as httpx, already installed

from host.http_wire import PHRASES, Refusal, Request, error_response, read_body, read_head
from host.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

SOCKET_NAME = ".proxy.sock"
MAX_BODY = 32 * 1024 * 1024  # the Messages API's own request limit
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT_S = 60.0  # a client that connects and never sends a request does not hold a task forever
ALLOWED_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # the SDK allows a request 10 minutes too
# Framing and hop-by-hop headers belong to one connection, not the message; credentials are the host's alone to set.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "trailer", "upgrade", "te"})
DROP_REQUEST = HOP_BY_HOP | {"host", "expect", "proxy-connection", "proxy-authorization", "x-api-key", "authorization"}


@dataclass
class _Served:
    path: Path
    inode: int
    server: asyncio.Server
    tasks: set[asyncio.Task[Any]]  # connections in flight, cut when the session closes


class CredentialProxy:
    """Synchronous facade for the sweep: the asyncio server lives in one daemon thread started on first open."""

    _client: httpx.AsyncClient  # made with the loop: a client closed by shutdown() is not used again

    def __init__(self, settings: Settings, max_body: int = MAX_BODY) -> None:
        self.key = settings.anthropic_api_key
        self.base_url = settings.anthropic_base_url.rstrip("/")
        self.max_body = max_body
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None  # the proxy's event loop runs here, from the first open
        self._served: dict[Path, _Served] = {}  # touched only on the proxy's loop

    def open(self, folder: Path, uid: int | None = None) -> Path:
        """Serve ``folder``'s socket (idempotent; a deleted socket is recreated) and return its path."""
        return self._call(self._open(folder.resolve(), uid))

    def close(self, folder: Path) -> None:
        """Stop serving ``folder``: in-flight calls are cut and the socket file removed."""
        if self._loop is not None:
            self._call(self._close(folder.resolve()))

    def shutdown(self) -> None:
        with self._lock:
            loop, thread, self._loop, self.thread = self._loop, self.thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        finally:  # the thread stops even if a socket could not be removed
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, follow_redirects=False)
                self.thread = threading.Thread(target=self._loop.run_forever, name="ncl-proxy", daemon=True)
                self.thread.start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def _open(self, folder: Path, uid: int | None) -> Path:
        served = self._served.get(folder)
        if served and _inode(served.path) == served.inode:
            return served.path
        await self._close(folder)
        sock, inode = _bind(folder, uid)
        tasks: set[asyncio.Task[Any]] = set()
        server = await asyncio.start_unix_server(lambda r, w: self._handle(folder.name, tasks, r, w), sock=sock,
                                                 limit=MAX_HEAD)
        served = self._served[folder] = _Served(folder / SOCKET_NAME, inode, server, tasks)
        log.info("credential proxy serving %s", served.path, extra={"action": "proxy_open", "session": folder.name})
        return served.path

    async def _close(self, folder: Path) -> None:
        served = self._served.pop(folder, None)
        if served is None:
            return
        served.server.close()
        for task in served.tasks:
            task.cancel()
        await asyncio.gather(*served.tasks, return_exceptions=True)
        if _inode(served.path) == served.inode:  # never remove a socket a newer server put there
            served.path.unlink(missing_ok=True)

    async def _shutdown(self) -> None:
        for folder in list(self._served):
            await self._close(folder)
        await self._client.aclose()

    async def _handle(self, session: str, tasks: set[asyncio.Task[Any]], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection callback always runs as its own task
        tasks.add(task)
        started, path, status = time.monotonic(), "", 0
        try:
            request = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT_S)
            path = request.path
            status = await self._answer(request, reader, writer)
        except Refusal as refusal:
            status = refusal.args[0]
            writer.write(error_response(*refusal.args))  # closing the writer below flushes it
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            status = 499  # the client left: nothing to answer
        except Exception:
            status = 500  # a bug here must not kill the server nor leave the client waiting
            writer.transport.abort()
            log.exception("credential proxy failed", extra={"action": "proxy_failed", "session": session})
        finally:
            tasks.discard(task)
            writer.close()
            if path:
                ms = round((time.monotonic() - started) * 1000)
                log.log(logging.INFO if status < 400 else logging.WARNING, "proxy %s %s -> %d in %d ms", session,
                        path, status, ms, extra={"action": "proxy_call", "session": session, "path": path,
                                                 "status": status, "duration_ms": ms})

    async def _answer(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        # The body is read before any refusal, so a client still sending it reads the answer, not a broken pipe.
        body = await read_body(reader, request, self.max_body)
        if request.method != "POST" or request.path not in ALLOWED_PATHS:
            raise Refusal(403, "permission_error", f"the credential proxy only forwards POST to "
                          f"{', '.join(sorted(ALLOWED_PATHS))}, not {request.method} {request.target}")
        if not self.key:
            raise Refusal(401, "authentication_error", "the host has no ANTHROPIC_API_KEY: set it in the host's "
                          "environment or .env (runners never hold the key)")
        headers = [(k, v) for k, v in request.headers if k not in DROP_REQUEST]
        if request.header("accept-encoding") is None:
            headers.append(("accept-encoding", "identity"))  # else httpx asks for gzip the client never did
        headers.append(("x-api-key", self.key))
        began = False
        try:
            async with self._client.stream("POST", self.base_url + request.target, headers=headers,
                                           content=body) as response:
                writer.write(_head(response.status_code, response.reason_phrase, response.headers.raw))
                began = True
                # Raw bytes, still content-encoded as the client negotiated; each chunk leaves as soon as it came.
                async for chunk in response.aiter_raw():
                    if chunk:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")  # the terminator tells the client the stream is whole
                await writer.drain()
                return response.status_code
        except httpx.HTTPError as exc:
            log.warning("model API failed at %s: %r", self.base_url, exc, extra={"action": "proxy_upstream_error"})
            if not began:
                raise Refusal(502, "api_error", f"the host cannot reach the model API: {type(exc).__name__}") from exc
            writer.transport.abort()  # mid-response, only an unfinished body can tell the client
            return 502


def _head(status: int, phrase: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    # Re-framed chunked (every Messages API answer has a body), so a cut upstream leaves the body visibly unfinished.
    lines = [f"HTTP/1.1 {status} {phrase or PHRASES.get(status, 'Unknown')}".encode()]
    lines += [k + b": " + v for k, v in headers if k.lower().decode("latin-1") not in HOP_BY_HOP]
    return b"\r\n".join([*lines, b"transfer-encoding: chunked", b"connection: close", b"", b""])


def _bind(folder: Path, uid: int | None) -> tuple[socket.socket, int]:
    """Bind a temporary name, set owner and mode, then rename: the path is never looser; a stale one is replaced."""
    temp = f".proxy-{secrets.token_hex(4)}.sock"
    dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A socket address holds 107 bytes; a deep data dir overflows that, so bind through the folder's descriptor.
        short = len(os.fsencode(folder / temp)) < 100
        sock.bind(str(folder / temp) if short else f"/proc/self/fd/{dirfd}/{temp}")
        os.chmod(temp, 0o600, dir_fd=dirfd)
        if uid is not None and os.geteuid() == 0:
            os.chown(temp, uid, -1, dir_fd=dirfd)
        elif uid is not None and uid != os.geteuid():
            log.warning("cannot hand %s to uid %d without root; it stays 0600 for uid %d", folder / SOCKET_NAME,
                        uid, os.geteuid(), extra={"action": "proxy_uid_kept", "session": folder.name})
        inode = os.stat(temp, dir_fd=dirfd).st_ino
        os.rename(temp, SOCKET_NAME, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dirfd)
        raise
    finally:
        os.close(dirfd)
    return sock, inode


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


