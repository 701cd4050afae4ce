"""``webhook:NAME`` channels (DESIGN §9): ``POST /webhooks/NAME`` on 127.0.0.1 with ``Authorization: Bearer
<token>`` writes one ``webhook`` row. Wrong or missing token → 401, body over 1 MiB → 413, not JSON → 400;
nothing is written then. The token is stored only as its sha256."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import sqlite3
from contextlib import closing

from host import db, groups, router
from host.http_wire import Refusal, Request, error_response, json_response, read_body, read_head
from host.settings import Settings
from schemas import clock

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
DRAIN_BYTES = 16 << 20  # past this a sender is not a webhook: it gets the reset
HEAD_TIMEOUT_S = 30.0
PREFIX = "/webhooks/"


class Webhooks:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: asyncio.Server | None = None

    async def start(self, port: int | None = None) -> int:
        """Listen on loopback only; returns the port (``NCL_HTTP_PORT``, or any free one for 0)."""
        self.server = await asyncio.start_server(self._serve, host="127.0.0.1",
                                                 port=self.settings.http_port if port is None else port)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT_S)
            try:
                writer.write(self._answer(request, await read_body(reader, request, MAX_BODY)))
            except Refusal as refusal:
                if refusal.args[0] == 413:  # take what the client still sends, or it sees a reset, not the 413
                    await _drain(reader, request)
                raise
        except Refusal as refusal:
            writer.write(error_response(*refusal.args))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    def _answer(self, request: Request, body: bytes) -> bytes:
        name = request.path.removeprefix(PREFIX)
        if request.method != "POST" or not request.target.startswith(PREFIX) or not name:
            raise Refusal(404, "not_found_error", "POST /webhooks/NAME is the only endpoint")
        channel = f"webhook:{name}"
        with closing(db.connect(self.settings.central_db, "central")) as central:
            self._authorize(central, channel, request.header("authorization") or "")
            try:
                payload = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise Refusal(400, "invalid_request_error", "the body is not JSON (or nests too deep)") from None
            group = router.group_for(central, channel)
            session, message_id, _ = router.deliver_in(
                central, self.settings, clock.now(), group,
                router.Arrival(channel, "webhook", {"source": name, "payload": payload}))
        log.info("webhook %s accepted", name, extra={"action": "webhook_accepted", "session": session.id})
        return json_response(202, {"message_id": message_id, "session_id": session.id})

    @staticmethod
    def _authorize(central: sqlite3.Connection, channel: str, header: str) -> None:
        row = central.execute("SELECT token_hash FROM wirings WHERE channel = ?", (channel,)).fetchone()
        scheme, _, token = header.partition(" ")
        given = groups.token_hash(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
        # One answer for an unknown hook and a wrong token, compared in constant time: nothing to probe.
        if row is None or not row[0] or not hmac.compare_digest(given, row[0]):
            raise Refusal(401, "authentication_error", "missing or wrong bearer token")


async def _drain(reader: asyncio.StreamReader, request: Request) -> None:
    length = request.header("content-length") or ""
    left = min(int(length), DRAIN_BYTES) if length.isdigit() else 0
    with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError):
        while left > 0:
            chunk = await asyncio.wait_for(reader.read(min(left, 1 << 16)), HEAD_TIMEOUT_S)
            if not chunk:
                return
            left -= len(chunk)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python reads them, SQLite's json_valid does not


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e999 reads as infinity, which could not be stored as JSON again
        raise ValueError(f"{text} overflows")
    return number
