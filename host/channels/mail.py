"""``mail:ADDRESS`` channels (issue 17): the host watches each wired mailbox over IMAP and answers by SMTP.

The channel. One watcher per wired mailbox (``mail_imap.Watcher``: IDLE or a poll, each unread mail taken exactly
once into a session's ``messages_in``), its blocking IMAP work in a thread (``asyncio.to_thread``); the wirings are
re-read every ``NCL_MAIL_POLL_S``, and a lost connection is made again with a backoff of 1 s doubling to 5 min.

Replies. ``deliver`` mails a reply to the mail it answers (``mail_smtp``: threading headers, the agent's files, only
to an allowed sender, never to automatic mail). SMTP failures are retried ``SEND_TRIES`` times
(``NCL_MAIL_RETRY_S``, doubling); the host's delivery retries that at the next sweeps and after its last attempt
leaves a ``delivery_failed`` notice; ``delivered`` keeps each reply exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import threading
from contextlib import closing

from host.channels import lanes, mail_smtp, nudge
from host.channels.mail_imap import Watcher
from host.errors import NclError
from host.settings import Settings
from host.store import db, mailboxes
from host.store.mailboxes import Mailbox
from host.store.outbox import OutMessage
from host.store.sessions import Session

log = logging.getLogger(__name__)
SEND_TRIES = 3
MAX_BACKOFF_S = 300.0


class MailChannel:
    serves = ("mail",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.watchers: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.stopping.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="mail")

    async def stop(self) -> None:
        self.stopping.set()
        tasks = [t for t in (self._supervisor, *self.watchers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.watchers.clear()

    async def _supervise(self) -> None:
        """Watch every wired mailbox; a mailbox wired or unwired while the host runs is seen within a poll."""
        while True:
            try:
                wired = await lanes.run("mail", self._wired)
            except Exception as exc:  # central.db unreadable for now: the next poll tries again
                log.warning("mailboxes not read: %s", exc, extra={"action": "mail_error"})
                wired = {}
            for address in [a for a in self.watchers if a not in wired or self.watchers[a].done()]:
                self.watchers.pop(address).cancel()
            for address, mailbox in wired.items():
                if address not in self.watchers:
                    self.watchers[address] = asyncio.create_task(self._watch(mailbox), name=f"mail {address}")
            await asyncio.sleep(self.settings.mail_poll_s)

    def _wired(self) -> dict[str, Mailbox]:
        if not self.settings.central_db.exists():
            return {}
        with closing(db.connect(self.settings.central_db, "central")) as central:
            return {mailbox.address: mailbox for mailbox, _ in mailboxes.wired(central)}

    async def _watch(self, mailbox: Mailbox) -> None:
        watcher = Watcher(self.settings, mailbox, self.stopping)
        backoff = 1.0
        try:
            while True:
                try:
                    if await lanes.run("mailboxes", watcher.take_new):
                        nudge.touch(self.settings)  # here, in the loop: the host's wake event is not thread-safe
                    backoff = 1.0
                    await lanes.run("mailboxes", watcher.wait)
                except Exception as exc:  # a server gone, or a mail this code trips on: said, tried again later
                    watcher.close()
                    log.warning("mailbox %s: %s; trying again in %.0f s", mailbox.address,
                                str(exc)[:300] or type(exc).__name__, backoff, extra={"action": "mail_error"})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            watcher.close()

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        """Send the reply to the mail it answers; None when it answers no mail (kept in the transcript)."""
        message = await lanes.run("mail", mail_smtp.reply_mail, self.settings, session, reply)
        if message is None:
            return None
        mailbox, email = message
        delay = self.settings.mail_retry_s
        for attempt in range(1, SEND_TRIES + 1):
            try:
                await lanes.run("mail", mail_smtp.send, mailbox, email)
                log.info("reply %s mailed to %s", reply.id, email["To"],
                         extra={"action": "mail_sent", "session": session.id})
                return True
            except smtplib.SMTPResponseException as exc:
                failure = mail_smtp.smtp_failure(exc)  # its code and text
                if exc.smtp_code >= 500:  # permanent: trying again changes nothing
                    log.warning("reply %s refused by %s: %s", reply.id, mailbox.smtp_host, failure,
                                extra={"action": "mail_send_failed"})
                    return False
            except (OSError, smtplib.SMTPException, NclError) as exc:
                failure = str(exc) or type(exc).__name__
            log.warning("reply %s not mailed (try %d of %d): %s", reply.id, attempt, SEND_TRIES, failure,
                        extra={"action": "mail_send_failed"})
            if attempt < SEND_TRIES:
                await asyncio.sleep(delay)
                delay *= 2
        return False
