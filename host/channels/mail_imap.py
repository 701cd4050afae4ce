"""Inbound mail of the ``mail:ADDRESS`` channels (issue 17): one mailbox's IMAP watcher (``MailChannel`` runs one
per wired mailbox, its blocking work in a thread).

Watching. IDLE when the server has it (renewed every ``NCL_MAIL_POLL_S``), else a poll that often; the channel makes
a lost connection again with a backoff of 1 s doubling to 5 min. Each unread mail is taken once (``take``): a sender
off the allow-list is left unread and logged once; automatic mail (``mail_parse.automatic``) is marked read and
never answered; any other becomes one ``messages_in`` row of kind ``mail``, due at once, its attachments in the
session's ``inbox/<row id>/``.

Exactly once. ``mail_seen`` (central.db) records each UIDVALIDITY+UID: ``taking`` with the session and row id chosen
before the row is written, ``taken`` after, then the ``\\Seen`` flag. A host killed anywhere on the way takes the
mail again into the same row id (written only if missing); a second copy of a Message-ID already taken is a
``duplicate``. ``NCL_FAULT_MAIL=fetched|committed`` (tests only) kills the host at those two points.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import os
import re
import select
import signal
import ssl
import threading
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from host.channels import mail_apart, mail_parse, router
from host.channels.mail_login import TIMEOUT_S, password, tls_context
from host.channels.mail_parse import Mail
from host.errors import HOST_ERRNOS, NclError
from host.files import confined
from host.settings import Settings
from host.store import db, inbox, mailboxes
from host.store.mailboxes import Mailbox
from schemas import clock, ids
from schemas.times import to_text

log = logging.getLogger(__name__)
FAULT = "NCL_FAULT_MAIL"
MAX_TRIES = 3  # attempts at taking one mail before it is skipped (left unread, said once)


def _fault(point: str) -> None:
    if os.environ.get(FAULT) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def check_login(settings: Settings, mailbox: Mailbox, timeout: float = 10.0) -> str | None:
    """Why the host cannot log in to the mailbox's IMAP server and open INBOX (None: it can); for ``ncl doctor``."""
    watcher = Watcher(settings, mailbox, threading.Event(), timeout)
    try:
        password(mailbox)  # said first: no server needs asking when the variable is not set
        watcher.connect()
    except (OSError, imaplib.IMAP4.error, NclError, EOFError, ValueError) as exc:
        return f"IMAP {mailbox.imap_host}:{mailbox.imap_port}: {str(exc)[:200] or type(exc).__name__}"
    finally:
        watcher.close()
    return None


class Watcher:
    """One mailbox's IMAP connection and the taking of its mail; every method blocks (run in a thread)."""

    def __init__(self, settings: Settings, mailbox: Mailbox, stopping: threading.Event,
                 timeout: float = TIMEOUT_S) -> None:
        self.settings, self.mailbox, self.stopping, self.timeout = settings, mailbox, stopping, timeout
        self.imap: imaplib.IMAP4 | None = None
        self.uidvalidity = 0
        self.logged: set[int] = set()  # UIDs refused this run: logged once

    def connect(self) -> imaplib.IMAP4:
        if self.imap is not None:
            return self.imap
        box = self.mailbox
        imap: imaplib.IMAP4
        if box.tls == "ssl":
            imap = imaplib.IMAP4_SSL(box.imap_host, box.imap_port, ssl_context=tls_context(), timeout=self.timeout)
        else:
            imap = imaplib.IMAP4(box.imap_host, box.imap_port, timeout=self.timeout)
            if box.tls == "starttls":
                imap.starttls(ssl_context=tls_context())
        try:
            imap.login(box.username, password(box))
            _ok(imap.select("INBOX"), "select INBOX")
            self.uidvalidity = int((imap.response("UIDVALIDITY")[1] or [0])[0] or 0)  # (code, [value])
        except BaseException:
            with contextlib.suppress(Exception):
                imap.shutdown()
            raise
        self.imap = imap
        return imap

    def close(self) -> None:
        imap, self.imap = self.imap, None
        if imap is not None:
            with contextlib.suppress(Exception):
                imap.logout()

    def take_new(self) -> int:
        """Take every unread mail of INBOX, oldest first; returns how many became rows."""
        if self.imap is None:
            log.info("mailbox %s: watching INBOX", self.mailbox.address, extra={"action": "mail_watching"})
        imap = self.connect()
        uids = [int(uid) for uid in (_ok(imap.uid("SEARCH", "UNSEEN"), "SEARCH")[0] or b"").split()]
        taken = 0
        for uid in sorted(uids):
            if self.stopping.is_set():
                break
            taken += self.take(uid)
        return taken

    def take(self, uid: int) -> bool:
        """Take the mail at ``uid``; True if it became a row now."""
        box = self.mailbox
        with closing(db.connect(self.settings.central_db, "central")) as central:
            seen = mailboxes.seen(central, box.address, self.uidvalidity, uid)
        if seen is not None and seen.outcome in ("refused", "too_large", "skipped"):
            return False  # left unread on purpose, logged when first seen
        if seen is not None and seen.outcome in ("taken", "automatic", "duplicate"):
            self.flag(uid)  # a host stopped before the flag: only the flag is missing
            return False
        if seen is not None and seen.tries >= MAX_TRIES:
            self._give_up(uid, seen.reason or "the host stopped while taking it", seen.tries)
            return False
        size = self._size(uid)
        if size > self.settings.mail_max_bytes:
            self._refuse(uid, "", "too_large", f"{size} bytes, over NCL_MAIL_MAX_BYTES")
            return False
        data = _ok(self.connect().uid("FETCH", str(uid), "(BODY.PEEK[])"), "FETCH")
        raw = next((part[1] for part in data if isinstance(part, tuple)), None)
        if not isinstance(raw, bytes):
            raise EOFError(f"FETCH of UID {uid} gave no message")
        _fault("fetched")
        self._tried(uid, 1)  # counted before: a mail that kills the host is counted too
        try:
            return self._take(uid, raw, None if seen is None or seen.outcome == "trying" else seen)
        except Exception as exc:
            if _not_the_mail(exc):  # the host's trouble (disk, database, server): not this mail's try
                with contextlib.suppress(Exception):
                    self._tried(uid, -1)
            else:
                self._tried(uid, 0, f"{type(exc).__name__}: {exc}"[:300])
            raise

    def _take(self, uid: int, raw: bytes, seen: mailboxes.Seen | None) -> bool:
        box, now = self.mailbox, clock.now()
        sender, message_id = mail_parse.first_look(raw)
        if not box.allows(sender):  # refused before the mail is read: a stranger costs one look at its headers
            self._refuse(uid, message_id or "", "refused", f"{sender or 'no sender'} is not on the allow-list")
            return False
        try:
            mail = mail_apart.read(raw, self.settings.mail_max_attachments, self.settings.mail_read_s)
        except mail_apart.Unreadable as exc:
            self._give_up(uid, str(exc))
            return False
        if not box.allows(mail.sender):
            self._refuse(uid, mail.message_id, "refused", f"{mail.sender or 'no sender'} is not on the allow-list")
            return False
        if mail.automatic:
            self._skip(uid, mail, "automatic", f"automatic mail ({mail.automatic}) from {mail.sender}: not answered")
            return False
        with closing(db.connect(self.settings.central_db, "central")) as central:
            earlier = mailboxes.taken_as(central, box.address, mail.message_id)
        if earlier is not None and earlier.outcome == "taken" and (seen is None or seen.outcome != "taking"):
            self._skip(uid, mail, "duplicate", f"mail {mail.message_id} was taken already")
            return False
        self.write(uid, mail, seen or earlier, now)
        self.flag(uid)
        return True

    def _tried(self, uid: int, delta: int, reason: str | None = None) -> None:
        with closing(db.connect(self.settings.central_db, "central")) as central, db.transaction(central):
            mailboxes.tried(central, clock.now(), self.mailbox.address, self.uidvalidity, uid, delta, reason)

    def _give_up(self, uid: int, why: str, tries: int = 1) -> None:
        """Leave a mail that failed ``MAX_TRIES`` takings (or could not be read at all) unread and say so: the mails
        behind it are taken."""
        with closing(db.connect(self.settings.central_db, "central")) as central, db.transaction(central):
            mailboxes.skip(central, self.mailbox.address, self.uidvalidity, uid, why)
        log.error("mailbox %s: mail UID %d (UIDVALIDITY %d) skipped after %d failed tr%s, left unread: %s",
                  self.mailbox.address, uid, self.uidvalidity, tries, "y" if tries == 1 else "ies", why,
                  extra={"action": "mail_skipped"})

    def write(self, uid: int, mail: Mail, taking: mailboxes.Seen | None, now: datetime) -> None:
        """The mail's row in its session, recorded ``taking`` before and ``taken`` after (see the module doc)."""
        box = self.mailbox
        with closing(db.connect(self.settings.central_db, "central")) as central:
            group = router.group_for(central, box.channel)
            arrival = router.Arrival(box.channel, "mail", {}, thread=mail.thread)
            if taking is not None and taking.session_id and taking.row_id:  # taken once already, up to the row
                from host.store import sessions

                session, row_id = sessions.get(central, self.settings, taking.session_id), taking.row_id
            else:
                session = router.session_for(central, self.settings, now, group, router.thread_key(group, arrival))
                row_id = ids.new_id("msg", now)
            with db.transaction(central):
                mailboxes.record(central, now, box.address, self.uidvalidity, uid, mail.message_id, "taking",
                                 session.id, row_id)
            names = save_attachments(session.folder, row_id, mail.attachments)
            content = {"from": mail.sender, "name": mail.sender_name, "to": mail.to, "subject": mail.subject,
                       "message_id": mail.message_id, "in_reply_to": mail.in_reply_to,
                       "references": mail.references, "text": mail.text, "attachments": names,
                       "attachments_dropped": mail.dropped}
            routing: dict[str, str | None] = {"channel_type": box.channel, "platform_id": mail.sender,
                                              "thread_id": mail.thread}
            from schemas.messages import MailContent  # pydantic: in the host's watcher only

            stored = MailContent.model_validate(content).to_json()
            with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn, db.transaction(conn):
                if inbox.seq_of(conn, row_id) is None:
                    inbox.arrive(conn, {"id": row_id, "kind": "mail", "timestamp": to_text(now),
                                        "content": stored}, routing)
            _fault("committed")
            with db.transaction(central):
                mailboxes.record(central, now, box.address, self.uidvalidity, uid, mail.message_id, "taken",
                                 session.id, row_id)
            from host.store import sessions

            sessions.touch(central, session.id, now)
        log.info("mail %s from %s taken into %s", mail.message_id, mail.sender, session.id,
                 extra={"action": "mail_taken", "session": session.id})

    def _size(self, uid: int) -> int:
        data = _ok(self.connect().uid("FETCH", str(uid), "(RFC822.SIZE)"), "FETCH")
        found = re.search(rb"RFC822\.SIZE (\d+)", data[0] if isinstance(data[0], bytes) else b"")
        return int(found.group(1)) if found else 0

    def _refuse(self, uid: int, message_id: str, outcome: str, why: str) -> None:
        """Leave the mail unread, and say so once."""
        with closing(db.connect(self.settings.central_db, "central")) as central, db.transaction(central):
            mailboxes.record(central, clock.now(), self.mailbox.address, self.uidvalidity, uid,
                             message_id or f"uid:{uid}", outcome)
        log.warning("mailbox %s: mail UID %d left unread: %s", self.mailbox.address, uid, why,
                    extra={"action": "mail_refused"})

    def _skip(self, uid: int, mail: Mail, outcome: str, why: str) -> None:
        """Mark the mail read without a row."""
        with closing(db.connect(self.settings.central_db, "central")) as central, db.transaction(central):
            mailboxes.record(central, clock.now(), self.mailbox.address, self.uidvalidity, uid, mail.message_id,
                             outcome)
        log.info("mailbox %s: %s", self.mailbox.address, why, extra={"action": f"mail_{outcome}"})
        self.flag(uid)

    def flag(self, uid: int) -> None:
        _ok(self.connect().uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)"), "STORE")

    def wait(self) -> None:
        """Until new mail may be there: IDLE up to ``NCL_MAIL_POLL_S`` (or a plain wait that long without IDLE);
        returns early when the host stops."""
        imap = self.connect()
        if "IDLE" not in imap.capabilities:
            self.stopping.wait(self.settings.mail_poll_s)
            _ok(imap.noop(), "NOOP")
            return
        _idle(imap, self.settings.mail_poll_s, self.stopping)


def _idle(imap: imaplib.IMAP4, seconds: float, stopping: threading.Event) -> None:
    """IMAP IDLE (RFC 2177) with imaplib's own reader, until the server says a mail came (EXISTS), ``seconds``
    pass or ``stopping`` is set; the IDLE is always ended (DONE) and its answer read."""
    tag = imap._new_tag()  # imaplib before 3.14 has no idle(): its own tag and reader
    imap.send(tag + b" IDLE\r\n")
    line = imap.readline()
    if not line.startswith(b"+"):
        raise imaplib.IMAP4.error(f"IDLE refused: {line[:100]!r}")
    sock = imap.socket()
    deadline = time.monotonic() + seconds
    try:
        while not stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if pending or select.select([sock], [], [], min(left, 1.0))[0]:
                line = imap.readline()
                if not line:
                    raise EOFError("the IMAP server closed the connection")
                if re.match(rb"\* \d+ (EXISTS|RECENT)", line):
                    return
    finally:
        imap.send(b"DONE\r\n")
        while True:  # the rest of the untagged lines, then the IDLE's own answer
            line = imap.readline()
            if not line:
                raise EOFError("the IMAP server closed the connection")
            if line.startswith(tag):
                break


def _not_the_mail(exc: BaseException) -> bool:
    """Whether a failure while taking a mail is the host's (a full disk, the database) or the IMAP server's, so
    trying again may work and the mail is not to blame."""
    if isinstance(exc, (db.Error, db.DbError, imaplib.IMAP4.error, EOFError, ConnectionError, TimeoutError,
                        ssl.SSLError)):
        return True
    return isinstance(exc, OSError) and exc.errno in HOST_ERRNOS


def _ok(answer: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = answer
    if status != "OK":
        raise imaplib.IMAP4.error(f"{what}: {status} {data!r:.200}")
    return data


def save_attachments(folder: Path, row_id: str, files: list[tuple[str, bytes]]) -> list[str]:
    """Write the attachments into ``folder/inbox/<row_id>/`` without following any link (the folder is the
    runner's to write too): names already made safe (``mail_parse.safe_name``), files 0600. Returns the names."""
    for name, data in files:
        confined.write_beneath(folder, f"inbox/{row_id}/{name}", data)
    return [name for name, _ in files]
