"""``matrix:@bot:server`` (DESIGN §13.8): the bot's Matrix account as a channel. Each room is a session (a thread
of it one in ``per-thread`` mode); a message is a ``chat`` row with the sender's id and display name; replies go
back as ``m.text`` with Markdown rendered to HTML, files as ``m.file``/``m.image``.

Exactly once: a sync's messages are each committed (under an id fixed by the event id, so a replay writes nothing)
before its token is stored; a reply is sent with a transaction id made from its id on a device that outlives the
restart, so sending it again after a crash shows it once. Invites are taken only from ``NCL_MATRIX_ALLOW``; an
encrypted room is left with a message saying why. The client (matrix-nio) is imported only when this is set up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from host.channels import lanes, matrix_files, reply_files, router
from host.channels import matrix_wire as wire
from host.channels.matrix_login import MatrixError, configured, login, state_path
from host.errors import HOST_ERRNOS
from host.settings import Settings
from host.store import db, groups, inbox, pool
from host.store.groups import Group
from host.store.outbox import OutMessage
from host.store.sessions import Session
from schemas import clock

log = logging.getLogger(__name__)
SYNC_TIMEOUT_MS = 30_000
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after a failed login or sync, then 30 s apart
TYPING_MS = 60_000  # how long one typing notice lasts on the homeserver unless renewed
TYPING_RENEW_S = 25.0  # renewed this often while a session of the room still works (well inside TYPING_MS)
TYPING_CAP = timedelta(minutes=30)  # after the room's latest triggering message: a stuck runner does not type forever
# Tests only: a typing notice of this many ms, renewed at a third of it (the real 60 s would make a test wait minutes).
TYPING_HOOK = "NCL_TEST_MATRIX_TYPING_MS"
MAX_TRIES = 3  # syncs in a row one invite or event may fail before it is given up (``_one``)
MAX_IGNORED = 1000  # (room, sender) pairs remembered as logged
SYNC_FILTER = {"room": {"timeline": {"limit": 50}}, "presence": {"not_types": ["*"]},
               "account_data": {"not_types": ["*"]}}
# Tests only: stall at this point (the sync's before_commit, after_commit; a reply's after_send, sent but not yet
# recorded as delivered) so the test can SIGKILL the host there.
STALL = "NCL_TEST_MATRIX_STALL"


@dataclass
class _Typing:
    """A room the bot types in: since its latest triggering message, for the sessions those messages went to."""

    since: datetime
    folders: set[Path] = field(default_factory=set)


class MatrixChannel:
    serves = ("matrix",)

    def __init__(self, settings: Settings, replying: set[Path] | None = None) -> None:
        self.settings = settings
        self.replying = set() if replying is None else replying  # see Channels.replying
        self.user_id = settings.matrix_user_id
        self.channel = f"matrix:{self.user_id}"
        self.client: Any = None
        self.display_name: str | None = None
        self.state = wire.State(self.user_id)
        self.task: asyncio.Task[None] | None = None
        self.ignored: set[tuple[str, str]] = set()  # (room, sender) already logged as not allowed (at most MAX_IGNORED)
        self.failing: dict[str, int] = {}  # invite or event -> syncs it failed in a row (``_one``)
        self.stall = os.environ.get(STALL, "")
        self.typing: dict[str, _Typing] = {}  # room id -> why the bot types there
        self.typing_ms = int(os.environ.get(TYPING_HOOK) or TYPING_MS)
        self.renew_s = TYPING_RENEW_S if self.typing_ms == TYPING_MS else self.typing_ms / 3000
        self.renewing: asyncio.Task[None] | None = None
        # central.db for the work of an arrival, done in threads: SQLite's work and its commits' syncs never hold
        # the host's loop (issue 14.2), as the CLI socket's and the webhooks' do not.
        self._central = pool.Pool(settings.central_db)

    async def start(self) -> bool:
        """Sync in the background (logging in first, again after a failure); False when not set up."""
        missing = configured(self.settings)
        if missing:
            log.error("matrix not served: %s", missing, extra={"action": "matrix_failed"})
        if missing is not None:
            return False
        self.state = wire.State.load(state_path(self.settings), self.user_id)
        self.task = asyncio.create_task(self._run(), name="matrix")
        self.renewing = asyncio.create_task(self._renew_typing(), name="matrix typing")
        return True

    async def stop(self) -> None:
        for task in (self.task, self.renewing):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.client:
            await self.client.close()
            self.client = None
        self._central.close()

    # --- in --------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self.client is None:
                    self.client = await login(self.settings, self.state)
                    await lanes.run("matrix", self.state.save, state_path(self.settings))
                    self.display_name = await self._own_name()
                    log.info("matrix: logged in as %s", self.user_id, extra={"action": "matrix_logged_in"})
                await self.sync_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the homeserver down, a refusal, a file that cannot be written: try again
                wait = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("matrix: %s; again in %.0f s", str(exc)[:300] or type(exc).__name__, wait,
                            extra={"action": "matrix_error"})
                await asyncio.sleep(wait)

    async def _own_name(self) -> str | None:
        from nio import ProfileGetDisplayNameResponse

        found = await self.client.get_displayname(self.user_id)
        return found.displayname if isinstance(found, ProfileGetDisplayNameResponse) else None

    async def sync_once(self, timeout_ms: int = SYNC_TIMEOUT_MS) -> None:
        """One sync: invites, then each message committed, then the token stored. The first sync of a bot never
        run before only takes invites: the history of rooms it is already in is not answered."""
        from nio import SyncResponse

        done = await self.client.sync(timeout=timeout_ms, sync_filter=SYNC_FILTER, since=self.state.next_batch)
        if not isinstance(done, SyncResponse):
            raise MatrixError(f"sync failed: {getattr(done, 'message', done)}")
        fresh = self.state.next_batch is None
        for room_id, invited in done.rooms.invite.items():
            await self._one(f"invite to {room_id}", self._invited(room_id, invited))
        for room_id, joined in done.rooms.join.items():
            for event in [] if fresh else joined.timeline.events:
                source = getattr(event, "source", None)
                if isinstance(source, dict):
                    await self._one(f"event {source.get('event_id')} in {room_id}", self._event(room_id, source))
        await self._stall("after_commit")
        self.failing.clear()
        self.state.next_batch = done.next_batch
        await lanes.run("matrix", self.state.save, state_path(self.settings))  # a durable write: its syncs in a thread

    async def _one(self, what: str, work: Awaitable[None]) -> None:
        """One invite or event of a sync. A failure fails the sync, which is tried again. One that is not the
        host's or the network's (``_the_hosts``: they pass, and are waited out) and comes again ``MAX_TRIES``
        syncs in a row gives that invite or event up, logged: none (a room the bot may not join) holds every room's
        messages for ever."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _the_hosts(exc):
                raise
            self.failing[what] = tries = self.failing.get(what, 0) + 1
            if tries < MAX_TRIES:
                raise
            log.error("matrix: %s given up after %d tries: %s", what, tries, str(exc)[:300] or type(exc).__name__,
                      extra={"action": "matrix_given_up"})

    async def _stall(self, point: str) -> None:
        if self.stall == point:
            log.warning("matrix: stalled %s (%s)", point, STALL, extra={"action": "matrix_stalled"})
            await asyncio.Event().wait()

    async def _invited(self, room_id: str, invited: Any) -> None:
        from nio import InviteMemberEvent, JoinResponse

        # The invite itself comes last: the state before it is the inviting server's word (it could name anyone).
        inviter = next((e.sender for e in reversed(invited.invite_state) if isinstance(e, InviteMemberEvent)
                        and e.state_key == self.user_id and e.membership == "invite"), "")
        why = None if await lanes.run("matrix", self._group_id) else f"no group is wired to {self.channel}"
        why = why or (None if wire.allowed(inviter, self.settings.matrix_allowed) else
                      f"{inviter or 'an unknown user'} is not in NCL_MATRIX_ALLOW")
        if why:
            await self.client.room_leave(room_id)
            if self.state.decline(room_id):
                log.warning("matrix: invite to %s declined: %s", room_id, why, extra={"action": "matrix_declined"})
            return
        joined = await self.client.join(room_id)
        if not isinstance(joined, JoinResponse):
            raise MatrixError(f"joining {room_id} failed: {joined.message}")
        if await self._encrypted(room_id):
            return await self._leave_encrypted(room_id)
        log.info("matrix: joined %s, invited by %s", room_id, inviter, extra={"action": "matrix_joined"})

    async def _encrypted(self, room_id: str) -> bool:
        from nio import RoomGetStateEventResponse

        found = await self.client.room_get_state_event(room_id, "m.room.encryption")
        return isinstance(found, RoomGetStateEventResponse)

    async def _leave_encrypted(self, room_id: str) -> None:
        await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.notice", "body": wire.ENCRYPTED},
                                    tx_id=wire.txn_id(f"encrypted-{room_id}"))
        await self.client.room_leave(room_id)
        if self.state.decline(room_id):
            log.warning("matrix: left %s: it is encrypted", room_id, extra={"action": "matrix_declined"})

    def _group_id(self) -> str | None:
        with self._central.connection() as central:
            return groups.wired_to(central, self.channel)

    def _session_of(self, arrival: router.Arrival) -> tuple[Group, Session, datetime] | None:
        """(In a thread.) The group wired to the bot, the arrival's session (made if it is new) and the time of the
        arrival; None when no group is wired."""
        with self._central.connection() as central:
            group_id = groups.wired_to(central, self.channel)
            if group_id is None:
                return None
            group, now = groups.get(central, group_id), clock.now()
            return group, router.session_for(central, self.settings, now, group, router.thread_key(group, arrival)), now

    def _deliver_in(self, group: Group, arrival: router.Arrival, now: datetime) -> tuple[Session, str, int]:
        with self._central.connection() as central:
            return router.deliver_in(central, self.settings, now, group, arrival)

    async def _event(self, room_id: str, event: dict[str, Any]) -> None:
        kind, sender, event_id = event.get("type"), event.get("sender"), event.get("event_id")
        # An encrypted message proves nothing (any member may send one): the room's m.room.encryption state does.
        if kind in ("m.room.encryption", "m.room.encrypted") and room_id not in self.state.declined \
                and await self._encrypted(room_id):
            return await self._leave_encrypted(room_id)
        content = event.get("content")
        if kind != "m.room.message" or sender == self.user_id or not isinstance(event_id, str) \
                or not isinstance(sender, str) or not isinstance(content, dict):
            return
        if not wire.allowed(sender, self.settings.matrix_allowed):
            if (room_id, sender) not in self.ignored:
                if len(self.ignored) >= MAX_IGNORED:  # said again after a while, never held without bound
                    self.ignored.clear()
                self.ignored.add((room_id, sender))
                log.info("matrix: messages of %s in %s ignored: not in NCL_MATRIX_ALLOW", sender, room_id,
                         extra={"action": "matrix_ignored"})
            return
        room = self.client.rooms.get(room_id)
        trigger = int(room is None or room.joined_count <= 2
                      or wire.mentions(content, self.user_id, self.display_name))
        name = wire.cut(room.user_name(sender) if room else sender, wire.MAX_NAME) or sender
        thread = wire.thread_of(content)
        arrival = router.Arrival(self.channel, "chat", {"text": "", "sender": name, "sender_id": sender},
                                 thread=thread, place=room_id, routing={"platform_id": room_id}, trigger=trigger,
                                 message_id=wire.message_id(event_id, event.get("origin_server_ts")))
        await self._stall("before_commit")
        found = await lanes.run("matrix", self._session_of, arrival)
        if found is None:
            return log.warning("matrix: message in %s not taken: no group is wired to %s", room_id, self.channel,
                               extra={"action": "matrix_unwired"})
        group, session, now = found
        arrival.content["text"] = await self._text(session, content, arrival.message_id or event_id)
        session, message_id, _ = await lanes.run("matrix", self._deliver_in, group, arrival, now)
        self.state.last_event_id = event_id
        log.info("matrix: message %s from %s", message_id, sender,
                 extra={"action": "matrix_arrived", "session": session.id})
        if trigger:
            typing = self.typing.setdefault(room_id, _Typing(now))
            typing.since = now
            typing.folders.add(session.folder)
            await self._type(room_id, True)

    async def _text(self, session: Session, content: dict[str, Any], message_id: str) -> str:
        """The row's text: the body (bounded), or for a file where it was stored in the session's workspace."""
        return await matrix_files.fetched(self.client, self.settings, session.folder, content, message_id)

    # --- out -------------------------------------------------------------------------------------------------

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        """Send the reply's text, then each file; a failure raises (the reply is tried again, same txn ids)."""
        if reply.channel_type != self.channel:
            return None  # another bot's room (the settings changed): nobody here can answer there
        if self.client is None:
            raise MatrixError("not logged in to the homeserver")
        room_id = self._room_of(session)  # never the row's platform_id: the runner writes that row
        content = json.loads(reply.content)
        text = str(content.get("text") or "")
        parts = await lanes.run("matrix", wire.text_parts, text)  # Markdown's rendering: ~30 ms a part, off the loop
        sent, more = reply_files.names(reply)
        for name in sent:
            parts.append(await matrix_files.uploaded(self.client, self.settings, session.folder, reply, name))
        if more:
            parts.append(wire.text_content(f"({more} more files were not sent: at most {reply_files.MAX_FILES} a "
                                           "message)"))
        for number, part in enumerate(parts):
            await self._send(room_id, wire.in_thread(part, reply.thread_id), wire.txn_id(reply.id, number))
        await self._stall("after_send")
        if (typing := self.typing.get(room_id)) is not None:
            since = typing.since  # (a message that comes meanwhile starts a turn of its own: typing goes on)
            working = await lanes.run("matrix", self._working, typing, clock.now())
            if not working and self.typing.get(room_id) is typing and typing.since == since:
                await self._stop_typing(room_id)
        return True

    # --- typing ----------------------------------------------------------------------------------------------

    async def _renew_typing(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            await self.renew_typing()

    async def renew_typing(self, now: datetime | None = None) -> None:
        """Type on in each room while a session a triggering message of it went to still works (a turn may outlast
        one notice) or has its answer on the way, up to ``TYPING_CAP`` after the room's latest such message; stop
        where none does.

        The answer's row is read after the inbox: a sweep hands a turn's replies over before it records the turn
        done, so a read that finds it done resumes here after the hand-over."""
        now = now or clock.now()
        for room_id, typing in list(self.typing.items()):
            on = now - typing.since < TYPING_CAP and (await lanes.run("matrix", self._working, typing, now)
                                                      or not typing.folders.isdisjoint(self.replying))
            if self.typing.get(room_id) is not typing:
                continue  # the answer came meanwhile and ended it (``deliver``)
            if on:
                await self._type(room_id, True)
            else:
                await self._stop_typing(room_id)

    def _working(self, typing: _Typing, now: datetime) -> bool:
        """Whether a session of the room still has a triggering row claimed or due: its runner is at work."""
        for folder in typing.folders:
            try:
                with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
                    if inbox.working(conn, now):
                        return True
            except Exception:  # a session deleted meanwhile: nobody works there
                continue
        return False

    async def _stop_typing(self, room_id: str) -> None:
        self.typing.pop(room_id, None)
        await self._type(room_id, False)

    async def _type(self, room_id: str, on: bool) -> None:
        with contextlib.suppress(Exception):  # a courtesy: a failure here loses nothing
            await self.client.room_typing(room_id, on, self.typing_ms)

    def _room_of(self, session: Session) -> str:
        """The room of a session (a reply that lost its routing): its thread key names it."""
        key = session.thread_key or ""
        if not key.startswith(f"{self.channel}/"):
            raise MatrixError(f"session {session.id} is not a Matrix room's")
        return key.removeprefix(f"{self.channel}/").split("/", 1)[0]

    async def _send(self, room_id: str, content: dict[str, Any], txn: str) -> None:
        from nio import RoomSendResponse

        sent = await self.client.room_send(room_id, "m.room.message", content, tx_id=txn)
        if not isinstance(sent, RoomSendResponse):
            raise MatrixError(f"sending to {room_id} failed: {sent.message}")


def _the_hosts(exc: BaseException) -> bool:
    """A failure that is the host's (its disk, its database) or the way to the homeserver's, never the event's."""
    from aiohttp import ClientError

    return isinstance(exc, db.Error | db.DbError | ClientError | ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and exc.errno in HOST_ERRNOS)
