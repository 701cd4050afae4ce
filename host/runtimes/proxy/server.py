"""The host's credential proxy (DESIGN §8): runners reach the model API only through it, so no container holds a key.

Each running session gets ``<session folder>/.proxy.sock`` speaking just enough HTTP/1.1: ``POST /v1/messages``
and ``POST /v1/messages/count_tokens`` go to ``ANTHROPIC_BASE_URL`` with the host's ``ANTHROPIC_API_KEY`` replacing
any client credential; the answer streams back as it arrives. Clients use ``http://localhost`` over the socket (httpx
``HTTPTransport(uds=…)``). Each response closes its connection: a unix socket connects in microseconds, and one
request per connection keeps the parser free of pipelining (httpx, hence the SDK, copes).

Bounds (issue 11): a few connections per session, head and body deadlines, request bodies under one byte budget
(body_pool.py), no beta or server tool that lets the API reach the network unless the group allows it
(policy.py), and per-group request rate and daily tokens (limits.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx  # the anthropic SDK's own HTTP client: same API as httpx, already installed

from host.http.log_throttle import LogThrottle
from host.http.wire import PHRASES, Refusal, Request, content_length, error_response, read_head
from host.runtimes.proxy import policy as api_policy
from host.runtimes.proxy.body_pool import PIECE, BodyPool, Reservation, drain, read_body
from host.runtimes.proxy.limits import GroupLimits, UsageMeter
from host.runtimes.proxy.sockets import SOCKET_NAME as SOCKET_NAME  # where the runner pool looks for it
from host.runtimes.proxy.sockets import bind, inode_of
from host.settings import Settings
from host.store import db, groups
from schemas import clock

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_HEAD = 64 * 1024
LINGER_S, LINGER_AT_ONCE = 1.0, 16
REFUSALS_LOGGED_PER_MINUTE = 10
ALLOWED_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # the SDK allows a request 10 minutes too
# Framing and hop-by-hop headers belong to one connection, not the message; credentials are the host's alone to set;
# the encoding is the host's too (identity), so the usage in every response can be read as it passes.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "trailer", "upgrade", "te"})
# Request headers pass upstream only from an allow-list: a name the host does not know (``anthropic_beta``, which some
# proxies read as ``anthropic-beta``) could carry what the checks above refused.
FORWARDED = frozenset({"anthropic-version", "anthropic-beta", "content-type", "accept", "user-agent"})
# What a request target, a header's name and its value may hold to be passed on (RFC 9110 §5.1, §5.5).
VISIBLE, TOKEN, VALUE = re.compile(r"[!-~]+"), re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+"), re.compile(r"[ \t!-~]*")


def forwarded(name: str) -> bool:
    return name in FORWARDED or name.startswith("x-stainless-")  # the SDK's own telemetry headers


@dataclass(frozen=True)
class ProxyLimits:
    """What one connection may hold, and for how long (issue 11). Tests shrink them."""

    max_body: int = 32 << 20  # the Messages API's own request limit
    # Bodies held in memory at once, all sessions together, counted twice (bytes, then their decoded text while the
    # JSON is inspected), a session's at most half: two requests at the API's limit, or many usual ones (a turn is a
    # few hundred KiB to a few MiB).
    body_budget: int = 128 << 20
    connections: int = 4  # per session socket; as many more may wait for a free one
    slot_wait_s: float = 5.0
    head_timeout_s: float = 10.0  # a runner's SDK sends a whole request at once: a slow one is not a runner
    body_timeout_s: float = 10.0  # plus the body's size at min_body_rate
    min_body_rate: int = 4 << 20  # bytes a second; a unix socket from a container moves hundreds of MiB a second
    write_timeout_s: float = 120.0  # a client that stops reading the answer gives its connection up


@dataclass
class _Served:
    path: Path
    inode: int
    group: str | None  # None: a folder outside the data dir; no group limits, and no server tools
    slots: asyncio.Semaphore
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # connections in flight, cut when the session closes
    waiting: int = 0
    refusals: LogThrottle = field(default_factory=lambda: LogThrottle(log, lines=REFUSALS_LOGGED_PER_MINUTE))

    def log_call(self, path: str, status: int, started: float, answered: bool) -> None:
        """One line per call the model API answered; refusals and cut connections cost an agent nothing, so of
        those only a few a minute, not a flood."""
        session, ms = self.path.parent.name, round((time.monotonic() - started) * 1000)
        level = logging.INFO if status < 400 else logging.WARNING
        line = ("proxy %s %s -> %d in %d ms", session, path, status, ms)
        fields: dict[str, Any] = {"session": session, "path": path, "status": status, "duration_ms": ms}
        if answered:
            log.log(level, *line, extra={"action": "proxy_call", **fields})
        else:
            self.refusals.log(level, "proxy_call", started, *line, **fields)


class CredentialProxy:
    """Synchronous facade for the sweep: the asyncio server lives in one daemon thread started on first open."""

    _client: httpx.AsyncClient  # made with the loop: a client closed by shutdown() is not used again

    def __init__(self, settings: Settings, limits: ProxyLimits = ProxyLimits(),
                 now: Callable[[], datetime] = clock.now) -> None:
        self.settings = settings
        self.key = settings.anthropic_api_key
        self.base_url = settings.anthropic_base_url.rstrip("/")
        self.limits = limits
        self.pool = BodyPool(limits.body_budget)
        self.groups = GroupLimits(settings, now)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None  # the proxy's event loop runs here, from the first open
        self._served: dict[Path, _Served] = {}  # touched only on the proxy's loop
        self._lingering = 0

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

    def start(self) -> asyncio.AbstractEventLoop:
        """Its event loop, thread and HTTP client, made once: the host makes them before it listens. Made at the
        first runner's start, the client's imports and TLS setup (~0.4 s, 43 ms of it one call that holds the GIL)
        held every chat's and webhook's answer then (up to 93 ms, measured)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                # No cap of the client's own (its 100 connections, shared, made one group's 25 runners hold every
                # other group's calls for up to 10 minutes): each session's slots bound its share.
                unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=20)
                self._client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, follow_redirects=False, limits=unbounded)
                self.thread = threading.Thread(target=self._loop.run_forever, name="ncl-proxy", daemon=True)
                self.thread.start()
            return self._loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.start()).result()

    def _group_of(self, folder: Path) -> str | None:
        # A session folder is <sessions dir>/<group>/<session> (DESIGN §2): the group comes from the path the host
        # chose, never from anything the runner says.
        return folder.parent.name if folder.parent.parent == self.settings.sessions_dir.resolve() else None

    async def _open(self, folder: Path, uid: int | None) -> Path:
        served = self._served.get(folder)
        if served and inode_of(served.path) == served.inode:
            return served.path
        await self._close(folder)
        sock, inode = bind(folder, uid)
        made = _Served(folder / SOCKET_NAME, inode, self._group_of(folder), asyncio.Semaphore(self.limits.connections))
        made.server = await asyncio.start_unix_server(lambda r, w: self._handle(made, r, w), sock=sock,
                                                      limit=MAX_HEAD)
        served = self._served[folder] = made
        log.info("credential proxy serving %s", served.path, extra={"action": "proxy_open", "session": folder.name})
        return served.path

    async def _close(self, folder: Path) -> None:
        served = self._served.pop(folder, None)
        if served is None:
            return
        if served.server:
            served.server.close()
        for task in served.tasks:
            task.cancel()
        await asyncio.gather(*served.tasks, return_exceptions=True)
        if inode_of(served.path) == served.inode:  # never remove a socket a newer server put there
            served.path.unlink(missing_ok=True)

    async def _shutdown(self) -> None:
        for folder in list(self._served):
            await self._close(folder)
        await self._client.aclose()

    async def _handle(self, served: _Served, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection callback always runs as its own task
        served.tasks.add(task)
        session = served.path.parent.name
        started, path, status, answered = time.monotonic(), "", 0, False
        try:
            await self._slot(served)
            try:
                async with asyncio.timeout(self.limits.head_timeout_s):
                    request = await read_head(reader)
                path = request.path
                status = await self._answer(served, request, reader, writer)
                answered = True  # by the model API
            finally:
                served.slots.release()
        except Refusal as refusal:
            status = refusal.args[0]
            writer.write(_refusal(refusal))  # closing the writer below flushes it
            if not path:
                await self._linger(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            status = 499  # the client left, or was too slow: nothing to answer
        except asyncio.CancelledError:
            # The session closed (the only canceller, which then waits for us). Ending quietly: Python 3.11's stream
            # server logs a cancelled connection task as an error.
            status = 499
        except Exception:
            status = 500  # a bug here must not kill the server nor leave the client waiting
            writer.transport.abort()
            log.exception("credential proxy failed", extra={"action": "proxy_failed", "session": session})
        finally:
            served.tasks.discard(task)
            writer.close()
            served.log_call(path, status, started, answered)

    async def _slot(self, served: _Served) -> None:
        """One of the session's connections; a few more wait briefly for one, the rest are refused at once."""
        busy = Refusal(429, "rate_limit_error", f"this session already has {self.limits.connections} model API "
                       "connections open through the ncl host; wait for one to finish")
        if served.slots.locked() and served.waiting >= self.limits.connections:
            raise busy
        served.waiting += 1
        try:
            async with asyncio.timeout(self.limits.slot_wait_s):
                await served.slots.acquire()
        except TimeoutError:
            raise busy from None
        finally:
            served.waiting -= 1

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Refused before its request was read: take what the client sent, so closing with unread data does not reset
        the connection over the answer. Briefly, and for a few connections at once: a flood is just closed."""
        if self._lingering >= LINGER_AT_ONCE:
            return
        self._lingering += 1
        try:
            writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                while await reader.read(PIECE):
                    pass
        except (ConnectionError, TimeoutError, asyncio.CancelledError):  # cancelled: the session closed; we end anyway
            pass
        finally:
            self._lingering -= 1

    async def _answer(self, served: _Served, request: Request, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> int:
        cap = self.limits.max_body
        size = content_length(request, cap)  # a malformed or oversized frame is refused before anything else
        if size is None:
            # Its size reserved before it is read (``BodyPool``), a chunked body would hold a whole request's share.
            raise Refusal(411, "invalid_request_error", "the credential proxy takes a body of a stated "
                          "Content-Length (as the SDK sends it), not a chunked one")
        # A body must keep coming: a slow sender would hold its share of the pool from everyone else.
        deadline = asyncio.get_running_loop().time() + self.limits.body_timeout_s + size / self.limits.min_body_rate
        async with asyncio.timeout_at(deadline):
            try:
                await self._check_head(served, request)
                if served.group:  # before its body is held or read: a call refused for its body counts too
                    await self.groups.admit(served.group, served.path.parent)
                # Twice the body: the bytes, and the text json.loads decodes them to while the tools are inspected.
                held = self.pool.take(2 * size, served.path)
            except Refusal:
                # Read before refusing, so a client still sending reads the answer, not a broken pipe.
                await drain(reader, size)
                raise
        try:
            async with asyncio.timeout_at(deadline):
                body = await read_body(reader, size)
            # Off the loop: decoding a 32 MiB body of tiny objects takes a second or more of CPU.
            asked = await asyncio.to_thread(api_policy.asked, body)
            held.keep(len(body))  # the decoded text is gone
            if asked.features and not await self._allows_server_tools(served.group):
                api_policy.check_tools(asked.features)
            return await self._forward(served, request, body, held, writer, asked.max_tokens)
        finally:
            held.keep(0)

    async def _check_head(self, served: _Served, request: Request) -> None:
        if not VISIBLE.fullmatch(request.target) or not all(
                TOKEN.fullmatch(k) and VALUE.fullmatch(v) for k, v in request.headers if forwarded(k)):
            raise Refusal(400, "invalid_request_error", "a request target, or a header passed on, of other than "
                          "visible ASCII")  # (which the HTTP client would fail on)
        if request.method != "POST" or request.path not in ALLOWED_PATHS:
            raise Refusal(403, "permission_error", f"the credential proxy only forwards POST to "
                          f"{', '.join(sorted(ALLOWED_PATHS))}, not {request.method} {request.target}")
        if not self.key:
            raise Refusal(401, "authentication_error", "the host has no ANTHROPIC_API_KEY: set it in the host's "
                          "environment or .env (runners never hold the key)")
        betas = api_policy.betas(request)
        if api_policy.refused_beta(betas, server_tools=False):
            api_policy.check_betas(betas, await self._allows_server_tools(served.group))

    async def _allows_server_tools(self, group: str | None) -> bool:
        if group is None:
            return False

        def read() -> bool:
            with closing(db.connect(self.settings.central_db, "central")) as conn:
                return groups.allows_server_tools(conn, group)

        return await asyncio.to_thread(read)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that meets a finished drain, and
        # a session's close must cut its calls.
        async with asyncio.timeout(self.limits.write_timeout_s):
            await writer.drain()

    async def _forward(self, served: _Served, request: Request, body: bytearray, held: Reservation,
                       writer: asyncio.StreamWriter, max_tokens: int) -> int:
        """Send the request on and its answer back; ``max_tokens``: what an answer cut short counts (``limits``)."""
        headers = [(k, v) for k, v in request.headers if forwarded(k)]
        headers += [("accept-encoding", "identity"), ("content-length", str(len(body))), ("x-api-key", self.key or "")]
        meter = UsageMeter() if served.group and request.path == "/v1/messages" else None
        size, began, billed = len(body), False, False
        try:
            async with self._client.stream("POST", self.base_url + request.target, headers=headers,
                                           content=_pieces(body, held)) as response:
                writer.write(_head(response.status_code, response.reason_phrase, response.headers.raw))
                began, billed = True, response.status_code == 200  # (the API bills no refusal)
                # Each chunk leaves as soon as it came.
                async for chunk in response.aiter_raw():
                    if chunk:
                        if meter:
                            meter.feed(chunk)
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await self._drain(writer)
                if meter and served.group:  # counted before the client sees the end: its next call sees the count
                    counted, meter = meter, None
                    await self.groups.charge(served.group, counted)
                writer.write(b"0\r\n\r\n")  # the terminator tells the client the stream is whole
                await self._drain(writer)
                return response.status_code
        except httpx.HTTPError as exc:
            log.warning("model API failed at %s: %r", self.base_url, exc, extra={"action": "proxy_upstream_error"})
            if not began:
                raise Refusal(502, "api_error", f"the host cannot reach the model API: {type(exc).__name__}") from exc
            writer.transport.abort()  # mid-response, only an unfinished body can tell the client
            return 502
        finally:
            if meter and served.group:  # the client left mid-answer, or the API's connection broke
                if billed:
                    meter.cut_short(size, max_tokens)
                await self.groups.charge(served.group, meter)


async def _pieces(body: bytearray, held: Reservation) -> AsyncIterator[bytes]:
    # Small slices: handed over whole, the transport would keep a second copy of what the socket cannot take yet.
    with memoryview(body) as view:
        for start in range(0, len(body), PIECE):
            yield bytes(view[start:start + PIECE])
    # All sent: the memory goes back now, not when the answer (maybe minutes of streaming) ends.
    body.clear()
    held.keep(0)


def _refusal(refusal: Refusal) -> bytes:
    answer = error_response(*refusal.args)
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in getattr(refusal, "headers", []))
    status_line, _, rest = answer.partition(b"\r\n")
    return status_line + b"\r\n" + extra + rest


def _head(status: int, phrase: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    # Re-framed chunked (every Messages API answer has a body), so a cut upstream leaves the body visibly unfinished.
    lines = [f"HTTP/1.1 {status} {phrase or PHRASES.get(status, 'Unknown')}".encode()]
    lines += [k + b": " + v for k, v in headers if k.lower().decode("latin-1") not in HOP_BY_HOP]
    return b"\r\n".join([*lines, b"transfer-encoding: chunked", b"connection: close", b"", b""])


