"""The host's record of replies handed to their channel, in a session's inbound.db ``delivered`` (DESIGN §9)."""

from __future__ import annotations

from datetime import datetime

from host.store import db, inbox
from host.store.outbox import OutMessage
from schemas.times import to_text


def watermark(conn: db.Connection) -> int:
    """The highest outbound seq of a reply already dealt with: replies are delivered in order."""
    return inbox.watermarks(conn)[1]


def source_seq(conn: db.Connection, reply: OutMessage) -> int | None:
    """The inbox seq of the message a reply answers, if it answers one this inbox holds."""
    if not reply.in_reply_to:
        return None
    row = conn.execute("SELECT seq FROM messages_in WHERE id = ?", (reply.in_reply_to,)).fetchone()
    return int(row[0]) if row else None


def record(conn: db.Connection, replies: list[OutMessage], status: str, now: datetime) -> None:
    """Replies' outcome, in a short transaction of their own; one given up on (``failed``) also leaves the agent a
    ``delivery_failed`` notice. Recorded once: a second record of the same reply changes nothing."""
    with db.transaction(conn):
        for reply in replies:
            added = conn.execute("INSERT OR IGNORE INTO delivered(message_out_id, seq, delivered_at, status)"
                                 " VALUES (?, ?, ?, ?)", (reply.id, reply.seq, to_text(now), status)).rowcount
            if added and status == "failed":
                inbox.notice(conn, now, "delivery_failed",
                             f"Your reply {reply.id} could not be delivered to {reply.channel_type}.")


def shown(conn: db.Connection, ids: list[str], now: datetime) -> int:
    """Replies kept while no chat was open ('stored') that a chat has since shown: delivered. How many were."""
    with db.transaction(conn):
        return sum(conn.execute("UPDATE delivered SET status = 'delivered', delivered_at = ? WHERE message_out_id = ?"
                                " AND status = 'stored'", (to_text(now), reply_id)).rowcount for reply_id in ids)
