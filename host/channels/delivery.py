"""Replies in ``messages_out`` go back to the channel they came from, exactly once (DESIGN §9): in seq order,
up to 3 attempts each, then a ``delivery_failed`` notice. Each outcome is recorded in inbound ``delivered``.

The sweep only hands the replies it finds to ``Deliveries``; the host loop sends them (``serve``), one at a time
per session and outside any transaction, and records each outcome in a short inbox transaction of its own. A
reply being sent is never handed out again; a crash between a send and its record sends it again, never loses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from itertools import takewhile
from pathlib import Path

from host.channels import lanes
from host.channels.base import UNROUTED, Channels
from host.store import db, deliveries, groups
from host.store.outbox import OutMessage
from host.store.sessions import Session
from schemas import clock

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
STATUS = {True: "delivered", None: "stored", False: "failed"}


@dataclass
class _Queue:
    """A session's replies handed out and not yet settled, in seq order; the first one may be on its way."""

    session: Session
    replies: list[OutMessage] = field(default_factory=list)


@dataclass
class Deliveries:
    channels: Channels
    now: Callable[[], datetime] = clock.now
    central: Path | None = None  # the running host's central.db: a reply goes only to a channel its group is wired to
    attempts: dict[str, int] = field(default_factory=dict)
    queues: dict[str, _Queue] = field(default_factory=dict)
    sending: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # session id -> the task sending its queue
    handed: asyncio.Event = field(default_factory=asyncio.Event)
    settled: set[str] = field(default_factory=set)  # replies recorded since the sweep began
    # Replies sent whose outcome could not be recorded (a full disk): handed again, only recorded, never sent twice
    # (one CLI chat got the same answer 2-4 times: crash review).
    sent: dict[str, bool | None] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None  # the loop that sends them, if sweeps hand from another thread
    # Told each session whose handed replies are all settled: a visit hands at most ``outbox.REPLIES``, and the
    # rest wait for the next look at the session (the host sweeps it at once: ``Host.arrived``).
    drained: Callable[[str], None] | None = None

    def sweep_begins(self) -> None:
        """A sweep's visits read each session's replies after what its inbox records as settled: only a reply
        recorded after the sweep began may be handed again (by a sweep in a worker thread), and is not."""
        self.settled.clear()

    def hand(self, session: Session, replies: list[OutMessage]) -> None:
        """Queue the replies a sweep found (in seq order) but those already queued, on their way, or recorded since
        the sweep began. From any thread: one other than the serving loop's queues them on that loop."""
        if self.loop is not None and not _running(self.loop):
            self.loop.call_soon_threadsafe(self.hand, session, replies)
            return
        queue = self.queues.setdefault(session.id, _Queue(session))
        known = {reply.id for reply in queue.replies} | self.settled
        queue.replies += [reply for reply in replies if reply.id not in known]
        if queue.replies:
            self.channels.replying.add(session.folder)
        self.handed.set()

    async def serve(self) -> None:
        """Send what the sweeps hand out until cancelled; then stop what is on its way (sent again next time)."""
        try:
            while True:
                await self.handed.wait()
                self.handed.clear()
                self._start()
        finally:
            tasks = list(self.sending.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Send everything handed out so far and record each outcome (a test's or a one-off sweep's ``serve``)."""
        self._start()
        await asyncio.gather(*list(self.sending.values()))

    def _start(self) -> None:
        for session_id, queue in self.queues.items():
            if queue.replies and session_id not in self.sending:
                self.sending[session_id] = asyncio.create_task(self._send_queue(queue), name=f"deliver {session_id}")

    async def _send_queue(self, queue: _Queue) -> None:
        """Send a session's replies in order, each settled before the next; stop at one that failed but has
        attempts left: it and those behind it wait for the next sweep to hand them out again. The inbox and
        central.db are read and written in a thread: a commit's sync, or a wait for a lock the sweep or a runner
        holds, would hold the loop."""
        try:
            while queue.replies:
                # Replies no channel serves are only recorded: a run of them (a queue's) in one transaction.
                batch = list(takewhile(lambda r: self.channels.route(r.channel_type) is None, queue.replies))
                batch = batch or queue.replies[:1]
                if batch[0].id not in self.sent:
                    self.sent[batch[0].id] = await self._send(queue.session, batch[0])
                handed = self.sent[batch[0].id]
                if not await self._settle(queue.session, batch, handed):
                    break
                del queue.replies[:len(batch)]
        except Exception as exc:  # an inbox that cannot be written: the sweep reports the session, and hands again
            log.warning("replies of %s not recorded: %s", queue.session.id, exc, extra={"action": "delivery_error"})
        finally:
            del self.sending[queue.session.id]
            queue.replies.clear()
            del self.queues[queue.session.id]
            self.channels.replying.discard(queue.session.folder)
            if self.drained:
                self.drained(queue.session.id)

    async def _send(self, session: Session, reply: OutMessage) -> bool | None:
        channel = self.channels.route(reply.channel_type)
        if channel is None:
            return None
        wired, reply_to_seq = await lanes.run("deliveries", self._looked_up, session, reply)
        if not wired and reply.channel_type is None:  # (a session made by 'ncl sessions create' has no channel)
            log.info("reply %s names no channel and group %s has no cli channel: kept in the transcript", reply.id,
                     session.agent_group_id, extra={"action": "delivery_unrouted", "session": session.id})
            return None
        if not wired:
            # The runner writes the reply's routing: a session of one group must not send through another's
            # mailbox or bot. Kept in the transcript, like a reply no channel serves.
            log.warning("reply %s names %s, which group %s is not wired to: not sent", reply.id, reply.channel_type,
                        session.agent_group_id, extra={"action": "delivery_refused", "session": session.id})
            return None
        try:
            return await channel.deliver(session, reply, reply_to_seq)
        except Exception as exc:  # a channel's failure is this reply's failure, never the host's
            log.warning("delivery of %s failed: %s", reply.id, exc, extra={"action": "delivery_error"})
            return False

    def _looked_up(self, session: Session, reply: OutMessage) -> tuple[bool, int | None]:
        """Whether the reply's channel is one its group is wired to, and (if so) the inbox seq it answers."""
        if not self._wired(session, reply.channel_type or UNROUTED):  # (an unrouted reply goes to the session's chat)
            return False, None
        path = session.folder / "inbound.db"
        with db.lock_of(path), closing(db.connect(path, "inbound")) as conn:
            return True, deliveries.source_seq(conn, reply)

    def _wired(self, session: Session, channel_type: str) -> bool:
        if self.central is None:
            return True
        with closing(db.connect(self.central, "central", readonly=True)) as central:
            wired = groups.wired_channels(central, session.agent_group_id)
        return channel_type.casefold() in {c.casefold() for c in wired}

    async def _settle(self, session: Session, replies: list[OutMessage], handed: bool | None) -> bool:
        """Record the replies' outcome; False (nothing recorded) if one failed with attempts left."""
        if handed is False:
            del self.sent[replies[0].id]  # (not sent: sent again)
            tries = self.attempts[replies[0].id] = self.attempts.get(replies[0].id, 0) + 1
            if tries < MAX_ATTEMPTS:
                return False
        status = STATUS[handed]
        await lanes.run("deliveries", _record, session, replies, status, self.now())
        for reply in replies:
            self.settled.add(reply.id)
            self.attempts.pop(reply.id, None)
            self.sent.pop(reply.id, None)
            log.info("reply %s %s", reply.id, status,
                     extra={"action": "reply_handled", "session": session.id, "status": status})
        return True


def _record(session: Session, replies: list[OutMessage], status: str, now: datetime) -> None:
    path = session.folder / "inbound.db"
    with db.lock_of(path), closing(db.connect(path, "inbound")) as conn:
        deliveries.record(conn, replies, status, now)


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` runs in this thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
