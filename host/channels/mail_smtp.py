"""Outbound mail of the ``mail:ADDRESS`` channels (issue 17): a reply made into a mail of its thread, and SMTP.

A reply answers the mail its row came from (a task's reply: the latest mail of its thread) with ``In-Reply-To``,
``References``, ``Re:``, ``From`` the mailbox, ``Auto-Submitted: auto-replied``, the agent's files attached; only to
an allowed sender, never to automatic mail (no row is ever made of it). ``send`` is one SMTP delivery, for replies
(retried by ``MailChannel.deliver``) and alerts (``host.channels.alerts``).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import smtplib
from contextlib import closing
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from host.channels import mail_parse, reply_files
from host.channels.mail_login import TIMEOUT_S, password, tls_context
from host.errors import NclError
from host.files import confined
from host.settings import Settings
from host.store import db, mailboxes
from host.store.mailboxes import Mailbox
from host.store.outbox import OutMessage
from host.store.sessions import Session

log = logging.getLogger(__name__)
MAX_FILES_BYTES = 25 << 20  # the files the agent sends with one mail, together


def reply_mail(settings: Settings, session: Session, reply: OutMessage) -> tuple[Mailbox, EmailMessage] | None:
    """The reply as a mail and the mailbox it goes from; None when it is not mailed (it answers no mail, or a
    sender off the allow-list), said in the log."""
    address = (reply.channel_type or "").partition(":")[2]
    with closing(db.connect(settings.central_db, "central", readonly=True)) as central:
        mailbox = mailboxes.get(central, address)
    with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
        source = mailboxes.answered(conn, reply.in_reply_to, reply.thread_id)
    if source is None:
        log.info("reply %s answers no mail of %s: kept in the transcript", reply.id, address,
                 extra={"action": "mail_not_sent", "session": session.id})
        return None
    if not mailbox.allows(source["from"]):
        log.warning("reply %s not mailed: %s is not on the allow-list of %s", reply.id, source["from"],
                    address, extra={"action": "mail_not_sent", "session": session.id})
        return None
    return mailbox, compose(mailbox, source, reply, _files(session, reply))


def _files(session: Session, reply: OutMessage) -> list[tuple[str, bytes]]:
    """The files the agent sent with the reply (``reply_files``), together at most ``MAX_FILES_BYTES``."""
    sent, more = reply_files.names(reply)
    found: list[tuple[str, bytes]] = []
    left = MAX_FILES_BYTES
    for name in sent:
        try:
            data = reply_files.read(session.folder, reply, name, left)
        except (confined.Refused, OSError) as exc:
            reply_files.refused("mail_file_refused", session.id, reply, name, str(exc))
            continue
        found.append((name, data))
        left -= len(data)
    if more:
        reply_files.refused("mail_file_refused", session.id, reply, f"({more} more)",
                            f"at most {reply_files.MAX_FILES} files are sent with a mail")
    return found


def compose(mailbox: Mailbox, source: dict[str, Any], reply: OutMessage,
            files: list[tuple[str, bytes]]) -> EmailMessage:
    """The reply as a mail of the thread (RFC 5322 §3.6.4) that no well-behaved responder answers (RFC 3834)."""
    email = EmailMessage()
    subject = str(source.get("subject") or "")
    domain = mailbox.address.partition("@")[2]
    email["From"] = mailbox.address
    email["To"] = source["from"]
    email["Subject"] = subject if re.match(r"(?i)re:", subject) else f"Re: {subject}".rstrip()
    email["Date"] = formatdate(localtime=False)
    email["Message-ID"] = f"<{reply.id}@{domain}>"  # the same on a re-send after a crash: receivers may dedupe
    email["In-Reply-To"] = source["message_id"]
    references = [*source.get("references", []), source["message_id"]]
    if len(references) > mail_parse.MAX_REFERENCES:
        references = references[:1] + references[-(mail_parse.MAX_REFERENCES - 1):]
    email["References"] = " ".join(references)
    email["Auto-Submitted"] = "auto-replied"
    text = str(json.loads(reply.content).get("text") or "")
    email.set_content(text or ("(files attached)" if files else ""))
    for name, data in files:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        maintype, _, subtype = kind.partition("/")
        email.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return email



def _smtp(mailbox: Mailbox, timeout: float) -> smtplib.SMTP:
    """A connection to the mailbox's SMTP server, logged in (blocking); ``timeout`` bounds each step."""
    host, port = mailbox.smtp_host, mailbox.smtp_port
    smtp: smtplib.SMTP
    if mailbox.tls == "ssl":
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=tls_context())
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        if mailbox.tls == "starttls":
            smtp.starttls(context=tls_context())
        smtp.login(mailbox.username, password(mailbox))
    except BaseException:
        smtp.close()
        raise
    return smtp


def send(mailbox: Mailbox, email: EmailMessage, timeout: float = TIMEOUT_S) -> None:
    """One SMTP delivery (blocking: run in a thread): replies, and alerts (``host.channels.alerts``)."""
    with _smtp(mailbox, timeout) as smtp:
        smtp.send_message(email, from_addr=mailbox.address, to_addrs=[str(email["To"])])


def smtp_failure(exc: Exception) -> str:
    """An SMTP send's failure in one line."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):  # {address: (code, text)}
        return "; ".join(f"{to} refused: {code} {_text(text)}" for to, (code, text) in exc.recipients.items())
    return str(exc)[:300] or type(exc).__name__


def check_smtp(mailbox: Mailbox, timeout: float = 10.0) -> str | None:
    """Why the host cannot log in to the mailbox's SMTP server (None: it can); for ``ncl doctor``."""
    try:
        password(mailbox)  # said first: no server needs asking when the variable is not set
        _smtp(mailbox, timeout).quit()
    except (OSError, smtplib.SMTPException, NclError) as exc:
        return f"SMTP {mailbox.smtp_host}:{mailbox.smtp_port}: {smtp_failure(exc)}"
    return None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
