"""Mailboxes of ``mail:ADDRESS`` channels (issue 17), in central.db: where the host reads (IMAP) and sends (SMTP) a
mailbox's mail, who may write to it, and the record of each mail it has looked at (``mail_seen``), which makes
taking a mail exactly-once across crashes. The password is never stored: only the name of the variable (process
environment or ``.env``) that holds it."""

from __future__ import annotations

import fnmatch
import json
import re
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from host.errors import NclError
from host.store.db import Connection, transaction
from schemas.ids import MAIL_ADDRESS
from schemas.times import to_text

TLS_MODES = ("ssl", "starttls", "none")
ADDRESS = re.compile(MAIL_ADDRESS)
# A sender pattern: an address, or one with '*' standing for any run of characters (*@example.org).
PATTERN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9*.-]{1,253}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str
    imap_host: str
    imap_port: int
    smtp_host: str
    smtp_port: int
    username: str
    password_env: str
    tls: str
    allow: list[str]
    created_at: str

    @property
    def channel(self) -> str:
        return f"mail:{self.address}"

    def allows(self, sender: str) -> bool:
        """Whether ``sender`` (an address) matches a pattern of the allow-list; an empty list allows nobody."""
        sender = sender.lower()
        return bool(sender) and any(fnmatch.fnmatchcase(sender, pattern.lower()) for pattern in self.allow)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_address(address: str) -> str:
    """The address in lower case, as channels and the table hold it; one line refusing anything else."""
    if not ADDRESS.fullmatch(address or "") or len(address) > 254:
        raise NclError(f"invalid mail address {address!r}: expected name@domain")
    return address.lower()


def host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = (text or "").rpartition(":")
    if not sep or not HOST.fullmatch(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise NclError(f"invalid {what} server {text!r}: expected HOST:PORT, such as imap.example.org:993")
    return host, int(port)


def _check_pattern(pattern: str) -> str:
    if not PATTERN.fullmatch(pattern):
        raise NclError(f"invalid sender pattern {pattern!r}: expected an address such as alice@example.org or "
                       "*@example.org")
    return pattern.lower()


def create(conn: Connection, now: datetime, address: str, imap: str, smtp: str, user: str, password_env: str,
           tls: str = "ssl", allow: list[str] | None = None) -> Mailbox:
    address = check_address(address)
    (imap_host, imap_port), (smtp_host, smtp_port) = host_port(imap, "IMAP"), host_port(smtp, "SMTP")
    if not ENV_NAME.fullmatch(password_env or ""):
        raise NclError(f"invalid --password-env {password_env!r}: the NAME of the variable (environment or .env) "
                       "that holds the password, such as NCL_MAIL_PASSWORD; never the password itself")
    if tls not in TLS_MODES:
        raise NclError(f"invalid --tls {tls!r}: use ssl, starttls or none")
    if not user or len(user) > 254 or not user.isprintable():
        raise NclError("a mailbox needs --user, the login name of the IMAP and SMTP account")
    patterns = list(dict.fromkeys(_check_pattern(p) for p in allow or []))
    with transaction(conn):
        if get_or_none(conn, address):
            raise NclError(f"mailbox {address} already exists (see 'ncl mailbox show {address}')")
        conn.execute("INSERT INTO mailboxes(address, imap_host, imap_port, smtp_host, smtp_port, username,"
                     " password_env, tls, allow, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (address, imap_host, imap_port, smtp_host, smtp_port, user, password_env, tls,
                      json.dumps(patterns), to_text(now)))
    return get(conn, address)


def _from_row(row: sqlite3.Row) -> Mailbox:
    return Mailbox(row["address"], row["imap_host"], row["imap_port"], row["smtp_host"], row["smtp_port"],
                   row["username"], row["password_env"], row["tls"], list(json.loads(row["allow"])),
                   row["created_at"])


def list_all(conn: Connection) -> list[Mailbox]:
    return [_from_row(row) for row in conn.execute("SELECT * FROM mailboxes ORDER BY address")]


def get_or_none(conn: Connection, address: str) -> Mailbox | None:
    row = conn.execute("SELECT * FROM mailboxes WHERE address = ?", ((address or "").lower(),)).fetchone()
    return None if row is None else _from_row(row)


def get(conn: Connection, address: str) -> Mailbox:
    found = get_or_none(conn, address)
    if found is None:
        raise NclError(f"unknown mailbox {address!r} (create it first: ncl mailbox create --address {address} …)")
    return found


def delete(conn: Connection, mailbox: Mailbox) -> None:
    """Remove the mailbox; refused while a group is wired to it (unwire it first)."""
    with transaction(conn):
        owner = conn.execute("SELECT agent_group_id FROM wirings WHERE channel = ?", (mailbox.channel,)).fetchone()
        if owner:
            raise NclError(f"mailbox {mailbox.address} is wired to group {owner[0]}: remove the channel first "
                           f"(ncl groups update {owner[0]} --remove-channel {mailbox.channel})")
        conn.execute("DELETE FROM mailboxes WHERE address = ?", (mailbox.address,))


def wired(conn: Connection) -> list[tuple[Mailbox, str]]:
    """Every mailbox a group is wired to, with that group's id."""
    rows = conn.execute("SELECT m.*, w.agent_group_id AS group_id FROM mailboxes m"
                        " JOIN wirings w ON w.channel = 'mail:' || m.address ORDER BY m.address").fetchall()
    return [(_from_row(row), str(row["group_id"])) for row in rows]


# --- mail_seen: what became of each mail the host looked at ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Seen:
    outcome: str  # trying | taking | taken | refused | automatic | duplicate | too_large | skipped
    session_id: str | None
    row_id: str | None
    tries: int = 0  # attempts at taking it that began (central v8)
    reason: str | None = None  # why the last one failed


def seen(conn: Connection, address: str, uidvalidity: int, uid: int) -> Seen | None:
    row = conn.execute("SELECT outcome, session_id, row_id, tries, reason FROM mail_seen WHERE mailbox = ?"
                       " AND uidvalidity = ? AND uid = ?", (address, uidvalidity, uid)).fetchone()
    return None if row is None else Seen(*row)


def tried(conn: Connection, now: datetime, address: str, uidvalidity: int, uid: int, delta: int,
          reason: str | None = None) -> None:
    """Count an attempt at taking the mail at this UID (``delta`` 1 as it begins, -1 to take back one that the
    host, not the mail, made fail, 0 to say only ``reason``); ``trying`` while nothing further is recorded."""
    conn.execute("INSERT OR IGNORE INTO mail_seen(mailbox, uidvalidity, uid, message_id, outcome, seen_at)"
                 " VALUES (?, ?, ?, ?, 'trying', ?)", (address, uidvalidity, uid, f"uid:{uid}", to_text(now)))
    conn.execute("UPDATE mail_seen SET tries = max(tries + ?, 0), reason = coalesce(?, reason) WHERE mailbox = ?"
                 " AND uidvalidity = ? AND uid = ?", (delta, reason, address, uidvalidity, uid))


def skip(conn: Connection, address: str, uidvalidity: int, uid: int, reason: str) -> None:
    conn.execute("UPDATE mail_seen SET outcome = 'skipped', reason = ? WHERE mailbox = ? AND uidvalidity = ?"
                 " AND uid = ?", (reason, address, uidvalidity, uid))


def skipped(conn: Connection, address: str) -> int:
    """How many mails of the mailbox were given up (``ncl doctor``)."""
    return int(conn.execute("SELECT count(*) FROM mail_seen WHERE mailbox = ? AND outcome = 'skipped'",
                            (address,)).fetchone()[0])


def taken_as(conn: Connection, address: str, message_id: str) -> Seen | None:
    """The record of the mail of that Message-ID this mailbox took (or is taking), under any UID."""
    row = conn.execute("SELECT outcome, session_id, row_id, tries, reason FROM mail_seen WHERE mailbox = ?"
                       " AND message_id = ?"
                       " AND outcome IN ('taking', 'taken') ORDER BY outcome = 'taken' DESC LIMIT 1",
                       (address, message_id)).fetchone()
    return None if row is None else Seen(*row)


def record(conn: Connection, now: datetime, address: str, uidvalidity: int, uid: int, message_id: str,
           outcome: str, session_id: str | None = None, row_id: str | None = None) -> None:
    """Record (or move on) what became of the mail at this UID (caller holds the transaction, or none)."""
    conn.execute("INSERT INTO mail_seen(mailbox, uidvalidity, uid, message_id, outcome, session_id, row_id, seen_at)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(mailbox, uidvalidity, uid) DO UPDATE SET"
                 " message_id = excluded.message_id, outcome = excluded.outcome, session_id = excluded.session_id,"
                 " row_id = excluded.row_id",
                 (address, uidvalidity, uid, message_id, outcome, session_id, row_id, to_text(now)))


def require(conn: Connection, channels: list[str]) -> None:
    """Refuse, in one line, a ``mail:ADDRESS`` channel whose mailbox was never created."""
    for channel in channels:
        if channel.startswith("mail:"):
            get(conn, channel[5:])


def answered(conn: Connection, in_reply_to: str | None, thread_id: str | None) -> dict[str, Any] | None:
    """In a session's inbound.db: the content of the mail a reply answers, its own row if that is a mail, else the
    latest mail of its thread (a task's reply, a message the agent sent on its own)."""
    row = conn.execute("SELECT content FROM messages_in WHERE id = ? AND kind = 'mail'", (in_reply_to,)).fetchone()
    if row is None and thread_id:
        row = conn.execute("SELECT content FROM messages_in WHERE kind = 'mail' AND thread_id = ?"
                           " ORDER BY seq DESC LIMIT 1", (thread_id,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))
