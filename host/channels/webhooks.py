"""``webhook:NAME`` channels (DESIGN §9): ``POST /webhooks/NAME`` on 127.0.0.1 with ``Authorization: Bearer
<token>`` writes one ``webhook`` row. Wrong or missing token → 401, decided on the headers before a byte of the
body is read; body over 1 MiB → 413, junk ``Content-Length`` or not JSON → 400, head or body too slow → 408;
nothing is written then. At most ``NCL_HTTP_MAX_CONNECTIONS`` at once (more get 503 at once); out of file
descriptors or disk → 503. The token is stored only as its sha256."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import math
import os
import sys
from collections.abc import Iterator

from host.channels import lanes, router
from host.http import answers
from host.http.listener import Listener, tcp_socket
from host.http.log_throttle import LogThrottle
from host.http.wire import Refusal, Request, content_length, error_response, json_response, read_body, read_head
from host.settings import Settings
from host.store import db, groups, pool
from host.store.outbox import OutMessage
from host.store.sessions import Session
from schemas import clock
from schemas.validation import check_text

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
MAX_HEAD = 64 << 10  # request line and headers; past it 431
DRAIN_BYTES = 16 << 20  # past this a sender is not a webhook: it gets the reset
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0  # 1 MiB in 30 s: any real sender on loopback, never a client trickling bytes
PREFIX = "/webhooks/"
BUSY = error_response(503, "overloaded_error", "too many webhook connections at once; try again shortly")
SESSION_BUSY = error_response(503, "overloaded_error", "the hook's session is busy; try again shortly")
BUSY_BACKOFF_S = 5.0
SHORT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM}
# What SQLite (and db.connect, which words its errors into a DbError) says when descriptors or disk run out.
SHORT_OF_TEXT = ("unable to open database file", "database or disk is full", "disk i/o error",
                 *(os.strerror(e).lower() for e in SHORT_OF))


class Webhooks:
    serves = ("webhook",)

    def __init__(self, settings: Settings, *, head_timeout_s: float = HEAD_TIMEOUT_S,
                 body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.settings = settings
        self.head_timeout_s, self.body_timeout_s = head_timeout_s, body_timeout_s
        self.listener: Listener | None = None
        self.throttle = LogThrottle(log)
        self._central = pool.Pool(settings.central_db)  # for the threads that check tokens and write arrivals
        self._one_at_a_time = lanes.OneAtATime()
        self._busy_until: dict[str, float] = {}  # hook path -> loop time until which it is answered busy at once

    async def start(self, port: int | None = None) -> int:
        """Listen on loopback only; returns the port (``NCL_HTTP_PORT``, or any free one for 0), or 0 if it is
        taken: every other channel still works then."""
        port = self.settings.http_port if port is None else port
        try:
            sock = tcp_socket(port)
        except OSError as exc:
            log.error("webhooks not served: cannot listen on 127.0.0.1:%d: %s", port, exc.strerror,
                      extra={"action": "webhooks_failed"})
            return 0
        self.listener = Listener(sock, self._serve, name="webhooks", cap=self.settings.http_max_connections,
                                 busy=BUSY, limit=MAX_HEAD)
        self.listener.start()
        bound: int = sock.getsockname()[1]
        log.info("webhooks on http://127.0.0.1:%d/webhooks/NAME", bound, extra={"action": "webhooks_listening"})
        return bound

    async def stop(self) -> None:
        if self.listener:
            await self.listener.stop()
        self._central.close()

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> None:
        """Nobody listens: the sender had its 202, so a webhook's reply stays in the transcript."""
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = None
        try:
            request = await read_head(reader, timeout=self.head_timeout_s)
            body = await self._body(reader, request)
            # In a thread: its commits' syncs, and a wait for a lock the sweep holds, would hold the loop. One hook's
            # arrivals go to one session, one at a time: the others wait here, not in the lane's threads (a session
            # its runner keeps locked holds up its own hook, never the others').
            async with self._one_at_a_time.held(request.path):
                with answers.owed():
                    writer.write(await self._arrive(request, body))
        except Refusal as refusal:
            writer.write(error_response(*refusal.args))
            if refusal.args[0] == 413 and request is not None:  # take what the client still sends, or it sees a
                await _drain(reader, request, self.body_timeout_s)  # reset, not the 413
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except Exception as exc:
            if not db.is_busy(exc):
                writer.write(error_response(500, "api_error", "the host failed to take this webhook; see its log"))
                raise  # the listener logs it, at most once a minute
            writer.write(SESSION_BUSY)  # its session's files were locked past the busy timeout (a runner may do so)
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(self.body_timeout_s):
                await writer.drain()

    async def _arrive(self, request: Request, body: bytes) -> bytes:
        """The arrival written (in the lane's threads) and its answer. A hook whose session stayed locked past the
        busy timeout (its runner may hold it) is answered 503 at once for ``BUSY_BACKOFF_S``, those that waited
        behind it included: else each held a connection in turn for the whole wait, and one hook's filled the cap
        every hook shares."""
        now = asyncio.get_running_loop().time()
        if self._busy_until.get(request.path, 0.0) > now:
            raise db.Busy("its session was busy a moment ago")
        try:
            with self._short_of_resources():
                answer = await lanes.run("webhooks", self._answer, request, body)
        except Exception as exc:
            if db.is_busy(exc):
                self._busy_until[request.path] = asyncio.get_running_loop().time() + BUSY_BACKOFF_S
            raise
        self._busy_until.pop(request.path, None)
        return answer

    async def _body(self, reader: asyncio.StreamReader, request: Request) -> bytes:
        """The body, once the path and the token on the headers allow it (401 with nothing of the body read)."""
        name = request.path.removeprefix(PREFIX)
        if request.method != "POST" or not request.target.startswith(PREFIX) or not name:
            raise Refusal(404, "not_found_error", "POST /webhooks/NAME is the only endpoint")
        with self._short_of_resources():
            await lanes.run("webhooks", self._authorized, f"webhook:{name}", request.header("authorization") or "")
        content_length(request, MAX_BODY)  # 400/413 on the head alone, before waiting for any body
        return await read_body(reader, request, MAX_BODY, timeout=self.body_timeout_s)

    def _answer(self, request: Request, body: bytes) -> bytes:
        name = request.path.removeprefix(PREFIX)
        channel = f"webhook:{name}"
        try:
            payload = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
            check_text(payload)
        except (ValueError, RecursionError):
            raise Refusal(400, "invalid_request_error", "the body is not JSON text (or nests too deep, or has an "
                                                        "unpaired surrogate escape)") from None
        with self._central.connection() as central:
            # Again, as the row is written: a token rotated (or a hook rewired) while the body came stops it.
            self._authorize(central, channel, request.header("authorization") or "")
            group = router.group_for(central, channel)
            session, message_id, _ = router.deliver_in(
                central, self.settings, clock.now(), group,
                router.Arrival(channel, "webhook", {"source": name, "payload": payload}))
        log.info("webhook %s accepted", name, extra={"action": "webhook_accepted", "session": session.id})
        return json_response(202, {"message_id": message_id, "session_id": session.id})

    def _authorized(self, channel: str, header: str) -> None:
        with self._central.connection() as central:
            self._authorize(central, channel, header)

    @contextlib.contextmanager
    def _short_of_resources(self) -> Iterator[None]:
        """Out of file descriptors or disk: 503 (nothing written), logged at most once a minute."""
        try:
            yield
        except Exception as exc:
            if not _short_of(exc):
                raise
            self.throttle.log(logging.ERROR, "webhook_short_of_resources", asyncio.get_running_loop().time(),
                              "webhook refused: the host is out of file descriptors or disk space: %s", exc)
            raise Refusal(503, "overloaded_error", "the host is out of file descriptors or disk space; try again "
                                                   "later") from None

    @staticmethod
    def _authorize(central: db.Connection, channel: str, header: str) -> None:
        stored = groups.stored_token_hash(central, channel)
        scheme, _, token = header.partition(" ")
        given = groups.token_hash(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
        # One answer for an unknown hook and a wrong token, compared in constant time: nothing to probe.
        if stored is None or not hmac.compare_digest(given, stored):
            raise Refusal(401, "authentication_error", "missing or wrong bearer token")


def _short_of(exc: BaseException | None) -> bool:
    """Out of descriptors or disk, said by this exception or one it was raised from."""
    while exc is not None:
        if (isinstance(exc, OSError) and exc.errno in SHORT_OF) or any(t in str(exc).lower() for t in SHORT_OF_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _drain(reader: asyncio.StreamReader, request: Request, timeout: float) -> None:
    """Take at most ``DRAIN_BYTES`` of the body a 413 refused, read by the same strict rule as any length."""
    try:
        left = min(content_length(request, sys.maxsize) or 0, DRAIN_BYTES)
    except Refusal:
        return  # a junk length was answered 400, never 413: nothing to drain
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        async with asyncio.timeout(timeout):
            while left > 0 and (chunk := await reader.read(min(left, 1 << 16))):
                left -= len(chunk)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python reads them, SQLite's json_valid does not


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e999 reads as infinity, which could not be stored as JSON again
        raise ValueError(f"{text} overflows")
    return number
