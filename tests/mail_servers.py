"""Real mail servers on 127.0.0.1 for the mail channel's tests (issue 17.5): Dovecot (IMAP, Debian's
``dovecot-imapd``) with TLS on a self-signed certificate made here, users in a passwd-file, maildirs; and ``aiosmtpd``
as the SMTP server (implicit TLS, AUTH by the same users) that hands each mail to ``dovecot-lda``, so it lands in
the recipient's Dovecot mailbox as from any real MTA. Nothing is mocked: the host talks IMAP and SMTP to them.

Dovecot runs as root here (it drops to the mail user, ``nobody``); elsewhere the tests skip, unless
``NCL_REQUIRE_MAIL_SERVERS=1`` (CI) makes a missing server a failure. ``MailServers.fail_next`` makes the SMTP
server refuse the agent's next N mails with a 451, as a provider having trouble would.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

DOVECOT = "/usr/sbin/dovecot"
LDA = "/usr/lib/dovecot/dovecot-lda"
PASSWORD = "secret-pw"
USERS = ("agent@example.org", "human@example.org", "stranger@example.org", "other@example.org")
MAIL_UID = 65534  # nobody: Dovecot never gives a mailbox to root


def available() -> str | None:
    """Why the servers cannot run here (None: they can)."""
    if not (Path(DOVECOT).exists() and Path(LDA).exists()):
        return "dovecot-imapd is not installed (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "Dovecot as a test fixture needs root (it drops to the mail user itself)"
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        return "aiosmtpd is not installed (pip install -e '.[dev]')"
    return None


def require() -> None:
    reason = available()
    if reason is not None:
        if os.environ.get("NCL_REQUIRE_MAIL_SERVERS") == "1":
            pytest.fail(f"NCL_REQUIRE_MAIL_SERVERS=1 but {reason}")
        pytest.skip(reason)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: each socket is held until all are chosen (one bound and closed, then
    another, could be given the same port twice: SMTP took Dovecot's, which then failed to start)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = ncl-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {starttls_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class MailServers:
    root: Path
    imap_port: int = 0  # implicit TLS
    imap_starttls_port: int = 0
    smtp_port: int = 0  # implicit TLS
    smtp_starttls_port: int = 0  # plain, then STARTTLS (required before AUTH or mail)
    fail_next: int = 0  # the SMTP server answers the next N mails from the agent's address with 451
    refused: int = 0
    delivered: list[str] = field(default_factory=list)  # recipients, in order
    _dovecot: subprocess.Popen[bytes] | None = None
    _smtp: list[Any] = field(default_factory=list)

    @property
    def cert(self) -> Path:
        return self.root / "cert.pem"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def start(self) -> MailServers:
        self.root.chmod(0o755)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(self.root / "key.pem"), "-out", str(self.cert)],
                       check=True, capture_output=True)
        users = []
        for user in USERS:
            home = self.root / "home" / user.split("@")[0]
            home.mkdir(parents=True)
            os.chown(home, MAIL_UID, MAIL_UID)
            users.append(f"{user}:{PASSWORD}:{MAIL_UID}:{MAIL_UID}::{home}::")
        (self.root / "users").write_text("\n".join(users) + "\n")
        self.imap_port, self.imap_starttls_port, self.smtp_port, self.smtp_starttls_port = free_ports(4)
        (self.root / "dovecot.conf").write_text(DOVECOT_CONF.format(
            root=self.root, port=self.imap_port, starttls_port=self.imap_starttls_port))
        self._start_smtp()
        self.start_imap()
        return self

    def _start_smtp(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        servers = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if servers.fail_next > 0 and envelope.mail_from.lower() == USERS[0]:
                    servers.fail_next -= 1
                    servers.refused += 1
                    return "451 4.3.0 try again later"
                for rcpt in envelope.rcpt_tos:
                    servers.deliver(rcpt, envelope.mail_from, envelope.original_content)
                return "250 OK"

            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  options: Any) -> str:
                if address.lower() not in USERS:
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = (isinstance(data, LoginPassword) and data.login.decode() in USERS
                  and data.password.decode() == PASSWORD)
            return AuthResult(success=ok, handled=False)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.root / "key.pem")
        self._smtp = [
            Controller(Handler(), hostname="127.0.0.1", port=self.smtp_port, ssl_context=context,
                       authenticator=authenticate, auth_require_tls=False, auth_required=False),
            Controller(Handler(), hostname="127.0.0.1", port=self.smtp_starttls_port, tls_context=context,
                       require_starttls=True, authenticator=authenticate, auth_required=False),
        ]
        for controller in self._smtp:
            controller.start()

    def deliver(self, rcpt: str, sender: str, data: bytes) -> None:
        """What a real MTA does last: hand the mail to Dovecot's delivery agent for the recipient's INBOX."""
        subprocess.run([LDA, "-c", str(self.root / "dovecot.conf"), "-d", rcpt, "-f", sender or "<>"],
                       input=data, check=True, capture_output=True, timeout=30)
        self.delivered.append(rcpt)

    def _wait_for_imap(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                with imaplib.IMAP4_SSL("127.0.0.1", self.imap_port, ssl_context=self.context(), timeout=5):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    log = self.root / "dovecot.log"
                    raise RuntimeError(f"dovecot did not start: {log.read_text() if log.exists() else ''}") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        for controller in self._smtp:
            controller.stop()
        self.stop_imap()

    def stop_imap(self) -> None:
        """Stop Dovecot (its mail stays): a server gone away, as the host sees it."""
        if self._dovecot is not None and self._dovecot.poll() is None:
            self._dovecot.send_signal(signal.SIGTERM)
            try:
                self._dovecot.wait(10)
            except subprocess.TimeoutExpired:
                self._dovecot.kill()

    def start_imap(self) -> None:
        """Start Dovecot again on the same ports."""
        self._dovecot = subprocess.Popen([DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_imap()

    # --- the human, with the standard library -----------------------------------------------------------------

    def send(self, message: EmailMessage, sender: str | None = None) -> None:
        """Send ``message`` as a person would: SMTP over TLS, logged in as its From."""
        login = sender or str(message["From"])
        with smtplib.SMTP_SSL("127.0.0.1", self.smtp_port, context=self.context(), timeout=30) as smtp:
            smtp.login(login, PASSWORD)
            smtp.send_message(message, from_addr=login)

    def inbox(self, user: str) -> list[tuple[int, EmailMessage, bool]]:
        """Every mail in ``user``'s INBOX: (uid, message, seen), without marking any read."""
        with imaplib.IMAP4_SSL("127.0.0.1", self.imap_port, ssl_context=self.context(), timeout=30) as imap:
            imap.login(user, PASSWORD)
            imap.select("INBOX", readonly=True)
            _, data = imap.uid("SEARCH", "ALL")
            found = []
            for uid in (data[0] or b"").split():
                _, parts = imap.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
                head, body = parts[0][0], parts[0][1]  # type: ignore[index]
                message = BytesParser(policy=default_policy).parsebytes(body)
                found.append((int(uid), message, b"\\Seen" in head))  # type: ignore[arg-type]
            return found

    def wait_for(self, user: str, count: int, timeout: float = 60.0) -> list[EmailMessage]:
        """``user``'s mails once there are at least ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [message for _, message, _ in self.inbox(user)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{user} has {len(found)} mails after {timeout} s, expected {count}")
            time.sleep(0.2)


@contextlib.contextmanager
def running() -> Any:
    require()
    root = Path(tempfile.mkdtemp(prefix="ncl-mail-"))
    servers = MailServers(root)
    try:
        yield servers.start()
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)


def mail(sender: str, to: str, subject: str, text: str, **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "example.org")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(text)
    return message
