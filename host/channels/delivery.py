"""Replies in ``messages_out`` go back to the channel they came from, exactly once (DESIGN §9): in seq order,
up to 3 attempts each, then a ``delivery_failed`` notice. Each outcome is recorded in inbound ``delivered``."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from host.store import inbox
from host.store.outbox import OutMessage
from host.store.sessions import Session
from schemas.times import to_text

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
DONE = "('delivered', 'stored', 'failed')"


class Transport(Protocol):
    def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        """True: handed to the channel; None: nobody listens there (kept in the transcript); False/raise: failed."""
        ...


def watermark(conn: sqlite3.Connection) -> int:
    """The highest outbound seq of a reply already dealt with: replies are delivered in order."""
    row = conn.execute(f"SELECT MAX(seq) FROM delivered WHERE status IN {DONE}").fetchone()
    return int(row[0] or 0)


@dataclass
class Deliveries:
    transport: Transport
    attempts: dict[str, int] = field(default_factory=dict)

    def run(self, conn: sqlite3.Connection, session: Session, replies: list[OutMessage], now: datetime) -> bool:
        """Deliver pending replies (caller holds the inbox transaction). False if one is left for a retry."""
        for reply in replies:
            source = inbox.get(conn, reply.in_reply_to) if reply.in_reply_to else None
            try:
                handed = self.transport.deliver(session, reply, source["seq"] if source else None)
            except Exception as exc:  # a channel's failure is this reply's failure, never the sweep's
                log.warning("delivery of %s failed: %s", reply.id, exc, extra={"action": "delivery_error"})
                handed = False
            if handed is False:
                tries = self.attempts[reply.id] = self.attempts.get(reply.id, 0) + 1
                if tries < MAX_ATTEMPTS:
                    return False
                inbox.notice(conn, now, "delivery_failed",
                             f"Your reply {reply.id} could not be delivered to {reply.channel_type}.")
            self.attempts.pop(reply.id, None)
            status = {True: "delivered", None: "stored", False: "failed"}[handed]
            conn.execute("INSERT OR IGNORE INTO delivered(message_out_id, seq, delivered_at, status)"
                         " VALUES (?, ?, ?, ?)", (reply.id, reply.seq, to_text(now), status))
            log.info("reply %s %s", reply.id, status,
                     extra={"action": "reply_handled", "session": session.id, "status": status})
        return True
