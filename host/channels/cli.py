"""The ``cli`` and ``toolkit`` channels, the host's side of ``data/cli.sock``: newline-delimited JSON whose lines
``host.channels.cli_protocol`` defines (and the client, ``ncl chat``, builds and reads with it too). Replies are pushed
by the host's delivery (host.channels.delivery) through ``deliver``.

Limits of its own, so a flood of the webhook port never starves it: at most ``MAX_CLIENTS`` connections (one more
gets an error line and is closed), a request line of at most 1 MiB that must arrive whole within
``LINE_TIMEOUT_S`` once begun (idle between lines is fine: a chat waits for its user), and a client that stops
reading its replies is dropped rather than buffered without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from contextlib import closing
from datetime import datetime
from typing import Any

from host.channels import cli_protocol as protocol
from host.channels import lanes, nudge, router
from host.channels.cli_protocol import socket_path
from host.errors import NclError
from host.http import answers
from host.http.listener import Listener, unix_socket
from host.settings import Settings
from host.store import db, deliveries, groups, inbox, pool, sessions
from host.store.groups import Group
from host.store.outbox import OutMessage
from host.store.sessions import Session
from schemas import clock
from schemas.rows import InMessage

log = logging.getLogger(__name__)
MAX_LINE = 1 << 20
MAX_CLIENTS = 64
LINE_TIMEOUT_S = 10.0
MAX_UNREAD = 64 << 20  # replies written to a client but not yet taken by it
MAX_SHOWN = 64  # replies a chat says it showed, in one line
BUSY = protocol.encode(protocol.refused(f"the host is serving {MAX_CLIENTS} CLI connections already; try again"
                                        " shortly"))


class CliChannel:
    serves = ("cli", "toolkit")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listeners: dict[str, set[asyncio.StreamWriter]] = defaultdict(set)
        self._listener: Listener | None = None
        self._central = pool.Pool(settings.central_db)

    async def start(self) -> None:
        path = socket_path(self.settings)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # the host lock says no other host runs: what is there is a killed host's leftover
            log.warning("removed %s, left by a host that was killed (no host holds the lock)", path,
                        extra={"action": "stale_socket_replaced"})
        self._listener = Listener(unix_socket(path), self._serve, name="cli", cap=MAX_CLIENTS, busy=BUSY,
                                  limit=MAX_LINE)
        self._listener.start()

    async def stop(self) -> None:
        if self._listener:
            await self._listener.stop()
        self._central.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path(self.settings).unlink()

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        """Push the reply to every client chatting with its session (None if none is)."""
        writers = self.listeners.get(session.id)
        if not writers:
            return None
        content = json.loads(reply.content)
        source = await lanes.run("cli", _source, session, reply.in_reply_to) if reply_to_seq is not None else None
        failed = source is not None and source.status == "failed"
        line = protocol.encode(protocol.reply(reply.id, content, reply.timestamp, reply.in_reply_to, reply_to_seq,
                                              _task(source), failed))
        for writer in list(writers):
            if writer.is_closing() or writer.transport.get_write_buffer_size() > MAX_UNREAD:
                writers.discard(writer)
                writer.close()
                continue
            writer.write(line)
        return bool(writers) or None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chats: set[str] = set()
        try:
            while line := await _next_line(reader):
                with answers.owed():
                    answer, arrived = await self._handle(line, writer, chats)
                    if answer is not None:
                        writer.write(protocol.encode(answer))  # sent at once: asyncio writes to an idle socket directly
                if arrived:  # (after the answer: the host woken at once starts to work, which would only delay it)
                    await lanes.run("cli", self._woken, *arrived)
                async with asyncio.timeout(LINE_TIMEOUT_S):
                    await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            log.info("cli client dropped: %s", exc, extra={"action": "cli_client_dropped"})
        finally:
            for session_id in chats:
                self.listeners[session_id].discard(writer)
            writer.close()

    async def _handle(self, line: bytes, writer: asyncio.StreamWriter,
                      chats: set[str]) -> tuple[dict[str, Any] | None, tuple[str, datetime] | None]:
        """The answer to one request line (None: it has none), and the session it wrote to with the time (None: it
        wrote nothing)."""
        try:
            request = protocol.decode(line)
            if request.get("op") == "shown":
                session_id, ids = request.get("session_id"), request.get("ids")
                if session_id not in chats or not isinstance(ids, list) or len(ids) > MAX_SHOWN or not all(
                        isinstance(i, str) for i in ids):
                    raise NclError(f"'shown' names replies (at most {MAX_SHOWN}) of a session this chat listens to")
                await lanes.run("cli", self._shown, session_id, ids)
                return None, None
            if request.get("op") == "listen":
                heard = await lanes.run("cli", self.listened, request)
                if heard is not None:
                    self.listeners[heard.id].add(writer)
                    chats.add(heard.id)
                return {"ok": True, "listening": heard and heard.id}, None
            if request.get("op") != "send":
                raise NclError('expected {"op": "send", "group", "text"} or {"op": "listen", "group"}')
            now = clock.now()
            # In a thread: its commits' syncs, and a wait for a lock the sweep holds, would hold the loop.
            session, message_id, seq = await lanes.run("cli", self.send, request, now)
        except (NclError, ValueError) as exc:
            return protocol.refused(str(exc).splitlines()[0]), None
        self.listeners[session.id].add(writer)
        chats.add(session.id)
        return protocol.accepted(session.id, message_id, seq), (session.id, now)

    def listened(self, request: dict[str, Any]) -> Session | None:
        """The session a chat of this group (and thread) talks to, if it has one yet: a listen makes none."""
        group_ref, thread = request.get("group"), request.get("thread")
        if not isinstance(group_ref, str):
            raise NclError("listening needs a group")
        with self._central.connection() as central:
            group = router.group_for(central, "cli", group_ref)
            key = router.thread_key(group, router.Arrival("cli", "chat", {}, thread=str(thread) if thread else None))
            return sessions.by_thread(central, self.settings, group.id, key)

    def send(self, request: dict[str, Any], now: datetime) -> tuple[Session, str, int]:
        """The message into its session's inbox. The host is woken and the session marked active (``_woken``) after
        the answer: the message is safe once in the inbox, and the sweep the wake starts, or that central.db commit (a
        sync, and a wait for the sweep's writes to central.db), would only make the answer later."""
        text, group_ref = request.get("text"), request.get("group")
        if not isinstance(text, str) or not text.strip() or not isinstance(group_ref, str):
            raise NclError("a message needs a group and some text")
        thread = request.get("thread")
        with self._central.connection() as central:
            kind = request.get("channel", "cli")
            group = router.group_for(central, "cli", group_ref) if kind == "cli" else _toolkit(central, group_ref)
            channel = "cli" if kind == "cli" else next(c for c in group.channels if c.startswith("toolkit:"))
            arrival = router.Arrival(channel, "chat", {"text": text, "sender": request.get("sender", "user"),
                                                       "sender_id": request.get("sender_id")},
                                     thread=str(thread) if thread else None)
            return router.deliver_in(central, self.settings, now, group, arrival, answer_first=True)

    def _shown(self, session_id: str, ids: list[str]) -> None:
        """Record the replies a chat showed as delivered (``protocol.shown``); a failure only means the next chat
        shows them again."""
        try:
            with self._central.connection() as central:
                folder = sessions.get(central, self.settings, session_id).folder
            path = folder / "inbound.db"
            with db.lock_of(path), closing(db.connect(path, "inbound")) as conn:  # (as every host writer of it)
                count = deliveries.shown(conn, ids, clock.now())
            log.info("replies that came while no chat was open, shown in one: %d", count,
                     extra={"action": "replies_shown", "session": session_id})
        except (db.Error, NclError) as exc:
            log.warning("replies shown in a chat of session %s not recorded: %s", session_id, exc,
                        extra={"action": "replies_shown_failed", "session": session_id})

    def _woken(self, session_id: str, now: datetime) -> None:
        """Wake the host for the message that arrived at ``now``, and mark its session active. A host stopped before
        this leaves the message in the inbox (its next start's sweep finds it) and the session's ``last_active_at`` as
        it was, as a crash between the two commits always could."""
        nudge.touch(self.settings, session_id)
        try:
            with self._central.connection() as central:
                sessions.touch(central, session_id, now)
        except (db.Error, NclError) as exc:
            log.warning("session %s not marked active: %s", session_id, exc,
                        extra={"action": "session_touch_failed", "session": session_id})


async def _next_line(reader: asyncio.StreamReader) -> bytes:
    """The next request line; idle before it as long as the client likes, but once begun it ends in time."""
    first = await reader.read(1)
    if first in (b"", b"\n"):
        return first
    async with asyncio.timeout(LINE_TIMEOUT_S):
        return first + await reader.readline()


def _source(session: Session, message_id: str | None) -> InMessage | None:
    """The inbox row a reply answers (its acks are in the inbox by the time the reply is delivered)."""
    if message_id is None:
        return None
    with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
        return inbox.get(conn, message_id)


def _task(source: InMessage | None) -> dict[str, str] | None:
    return None if source is None or source.kind != "task" else protocol.task_mark(source.series, source.content)


def _toolkit(central: db.Connection, group_ref: str) -> Group:
    group = groups.get(central, group_ref)
    if not any(c.startswith("toolkit:") for c in group.channels):
        raise NclError(f"group {group.name} has no toolkit channel (add one with 'ncl groups update {group.name} "
                       "--channel toolkit:NAME')")
    return group
