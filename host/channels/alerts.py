"""Alerts: trouble reported where someone looks (``NCL_ALERT_CHANNEL``), once per event.

Where something goes wrong the host logs its line with an ``alert`` key naming the event (``task_auto_paused``,
``task_gate_errors``, ``task_missed``, ``scheduled_task_missed``, ``scheduled_task_failed``, ``runner_start_failed``):
the code that knows the event decides that it is one, once, and the log line says it alerted. ``Reporting`` (a
logging handler) turns each such record into an ``Alert`` and queues it, from any thread: appended to
``data/alerts.jsonl`` and fsync'd (``host.files.spool``), so a host killed before sending it sends it at its next
start; when the disk refuses, it is kept in memory (said once). ``Alerts`` sends the queue from the host loop, one at
a time and outside every sweep and transaction: a slow or dead receiver delays only the alerts behind it, each attempt
bounded by TIMEOUT_S, ATTEMPTS attempts, then the alert is logged as failed. Sent or failed, the spool's offset moves
past it (a crash just before that sends it again: at least once; its ``id`` lets a receiver see the repeat). A full
queue drops the newest and says how many.

Targets: ``webhook`` POSTs the alert's JSON (``Alert.to_json``), following no redirect (a 3xx is a failure);
``session`` writes a notice (``alert``) into the group's chat session, where its agent and ``ncl messages list``
see it; ``mail`` mails a plain text mail by SMTP from a mailbox of the mail channel (``ncl mailbox create``: the one
named, else the only one), with the mail channel's own sending code (``host.channels.mail_smtp.send``), in a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from host.channels import lanes, router
from host.errors import NclError
from host.files import confined, logs
from host.files.spool import Spool
from host.settings import AlertTarget, Settings
from host.store import db, groups, inbox, mailboxes, sessions
from host.store.mailboxes import Mailbox
from schemas import clock
from schemas.text import one_line
from schemas.times import to_text

log = logging.getLogger(__name__)
TIMEOUT_S = 5.0  # one attempt, connection to answer
ATTEMPTS = 3
BACKOFF_S = (2.0, 10.0)  # before the 2nd and the 3rd attempt
QUEUE_MAX = 1000
STOP_BUDGET_S = 10.0  # what a stopping host (or a one-off sweep) still gives the alerts it holds
SPOOL = "alerts"  # data/alerts.jsonl and data/alerts.offset
SUBJECT_MAX = 120  # characters of a mailed alert's subject


_POSTING: contextvars.ContextVar[bool] = contextvars.ContextVar("ncl_alert_posting", default=False)


def _not_posting(record: logging.LogRecord) -> bool:
    """httpx logs each request with its URL, and a webhook's URL often holds its secret: not for alerts."""
    return not _POSTING.get()


class AlertError(NclError):
    """An alert that could not be handed over (one line: the target as shown, and why)."""


@dataclass(frozen=True)
class Alert:
    """What a receiver gets: the event, a line of text, when (UTC text), what it concerns, and an id of its own (the
    same when a crash makes it sent again)."""

    event: str
    text: str
    at: str
    task: str | None = None  # a series id, or a project task's sched-… id
    run: str | None = None  # a project task's run
    session: str | None = None
    group: str | None = None  # the session's group, by name
    id: str = field(default_factory=lambda: f"alert-{secrets.token_hex(8)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> Alert:
        """An alert as ``to_json`` wrote it (the spool); ValueError if it is not one."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data.get("event"), str) or not isinstance(data.get("text"), str) \
                or not isinstance(data.get("at"), str) or not all(isinstance(v, str | None) for v in data.values()):
            raise ValueError("not an alert")
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})

    @classmethod
    def of(cls, record: logging.LogRecord) -> Alert:
        said = vars(record)
        named = {key: said[key] for key in ("task", "run", "session") if isinstance(said.get(key), str)}
        return cls(str(said["alert"]), record.getMessage(), to_text(datetime.fromtimestamp(record.created, UTC)),
                   **named)


class Alerts:
    """The queue of alerts and their sending. ``put`` from anywhere; ``serve`` (the host loop) or ``flush`` (a one-off
    sweep) sends them, those a killed host left in the spool first; ``send`` hands one over or raises ``AlertError``
    (``ncl alerts test``, which queues nothing)."""

    def __init__(self, settings: Settings, target: AlertTarget, now: Callable[[], datetime] = clock.now,
                 sleep: Callable[[float], Awaitable[None]] = clock.sleep, timeout_s: float = TIMEOUT_S) -> None:
        self.settings, self.target, self.now, self.sleep, self.timeout_s = settings, target, now, sleep, timeout_s
        self.spool = Spool(settings.data_dir, SPOOL)
        self.memory: deque[Alert] = deque()  # those the spool could not take
        self.dropped = 0
        self._lock = threading.Lock()  # a put's count, append and fallback are one step
        self._disk_failing = False  # said once until the spool takes an alert again
        self._wake: Callable[[], None] | None = None
        self._client: Any = None

    @property
    def pending(self) -> list[Alert]:
        """What waits to be sent (the alert on its way included), oldest first."""
        return [alert for alert, _ in self._waiting()]

    def put(self, alert: Alert) -> None:
        """Queue ``alert`` (any thread): appended to the spool and fsync'd; kept in memory if that fails (said once,
        never raised: the caller is whatever logged the event)."""
        failed: Exception | None = None
        with self._lock:
            try:
                if self._count() >= QUEUE_MAX:
                    self.dropped += 1
                    return
                self.spool.put(alert.to_json())
                self._disk_failing = False
            except (OSError, confined.Refused) as exc:
                self.memory.append(alert)
                failed, self._disk_failing = (None if self._disk_failing else exc), True
        if failed is not None:
            log.warning("alerts are kept in memory only (a host killed before sending them loses them): %s", failed,
                        extra={"action": "alerts_not_spooled", "file": self.spool.name})
        if self._wake is not None:
            self._wake()

    def _count(self) -> int:
        try:
            return len(self.spool) + len(self.memory)
        except (OSError, confined.Refused):
            return len(self.memory)

    def _waiting(self) -> list[tuple[Alert, int | None]]:
        """The spool's alerts with their ends, then those held in memory (end None)."""
        try:
            spooled = self.spool.waiting()
        except (OSError, confined.Refused):
            spooled = []  # put said why when it fell back to memory
        found: list[tuple[Alert, int | None]] = []
        for data, end in spooled:
            try:
                found.append((Alert.of_json(data), end))
            except (ValueError, TypeError):
                log.warning("%s: an alert that cannot be read, skipped", self.spool.name,
                            extra={"action": "spool_line_skipped", "file": self.spool.name})
                self._done(end)
        with self._lock:
            return found + [(alert, None) for alert in self.memory]

    def _done(self, end: int | None) -> None:
        """The alert ending there is sent or given up: the spool's offset moves past it (or it leaves memory)."""
        if end is None:
            with self._lock:
                self.memory.popleft()
            return
        try:
            self.spool.done(end)
        except (OSError, confined.Refused) as exc:
            log.warning("%s: the offset could not be stored (%s): a restart sends those alerts again",
                        self.spool.offset_name, exc, extra={"action": "alerts_offset_unstored"})

    async def serve(self) -> None:
        """Send what comes, until cancelled (an alert on its way then goes back to the front of the queue)."""
        loop, ready = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:
            with suppress(RuntimeError):  # the loop closed: what is queued stays for ``flush``
                loop.call_soon_threadsafe(ready.set)

        self._wake = wake
        try:
            while True:
                await self.drain()
                await ready.wait()
                ready.clear()
        finally:
            self._wake = None

    async def drain(self) -> None:
        """Send everything queued, each alert with its attempts (tests, ``serve``); one cancelled on its way stays
        queued."""
        while batch := self._waiting():
            for alert, end in batch:
                await self._deliver(alert)
                self._done(end)
        self._said_dropped()

    async def flush(self, budget_s: float = STOP_BUDGET_S) -> None:
        """``drain`` within ``budget_s``; what is left then is logged as unsent. Closes the HTTP client."""
        try:
            await asyncio.wait_for(self.drain(), budget_s)
        except TimeoutError:
            left = self._count()
            log.warning("%d alert(s) not sent yet: the receiver took too long; those in %s go at the next start",
                        left, self.spool.name, extra={"action": "alerts_unsent", "count": left})
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client and the spool's files (both open again when used)."""
        self.spool.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _deliver(self, alert: Alert) -> None:
        alert = await lanes.run("alerts", self._with_group, alert)  # (SQLite's work never on the host's loop)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.send(alert)
            except Exception as exc:  # whatever the receiver or its store did: this alert's failure, never the host's
                if attempt == ATTEMPTS:
                    log.warning("alert %s not sent after %d attempts: %s", alert.event, attempt, exc,
                                extra={"action": "alert_failed", "event": alert.event, "target": str(self.target)})
                    return
                await self.sleep(BACKOFF_S[attempt - 1])
            else:
                log.info("alert %s sent to %s", alert.event, self.target,
                         extra={"action": "alert_sent", "event": alert.event, "target": str(self.target)})
                return

    async def send(self, alert: Alert) -> None:
        """Hand ``alert`` to the target once, within ``timeout_s``; ``AlertError`` says why not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.target.kind == "webhook":
                    await self._post(alert)
                elif self.target.kind == "mail":
                    await self._mail(alert)
                else:
                    await lanes.run("alerts", self._notice, alert)
        except TimeoutError:
            raise AlertError(f"{self.target}: no answer within {self.timeout_s:g} s") from None

    async def _post(self, alert: Alert) -> None:
        import httpx2 as httpx  # the anthropic SDK's client, as the model proxy uses: loaded when an alert goes out

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
            if _not_posting not in (said := logging.getLogger("httpx2")).filters:
                said.addFilter(_not_posting)
        token = _POSTING.set(True)
        try:
            response = await self._client.post(self.target.value, json=alert.to_json())
        except httpx.HTTPError as exc:
            raise AlertError(f"{self.target}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        finally:
            _POSTING.reset(token)
        if not 200 <= response.status_code < 300:
            raise AlertError(f"{self.target} answered HTTP {response.status_code}")

    async def _mail(self, alert: Alert) -> None:
        """The alert mailed from the sending mailbox; the blocking SMTP exchange in a thread, each of its steps
        bounded by ``timeout_s`` too (a cancelled wait does not stop a thread)."""
        import smtplib

        from host.channels import mail_smtp  # SMTP code: loaded when an alert goes out by mail

        mailbox = await lanes.run("alerts", sending_mailbox, self.settings, self.target)
        try:
            await lanes.run("alerts", mail_smtp.send, mailbox, mail_of(alert, mailbox.address, self.target.value),
                                    self.timeout_s)
        except (OSError, smtplib.SMTPException, NclError) as exc:
            raise AlertError(f"{self.target}: {mail_smtp.smtp_failure(exc)}") from None

    def _notice(self, alert: Alert) -> None:
        """The alert as an ``alert`` notice in the chat session of the target group (made if it has none yet)."""
        now = self.now()
        with closing(db.connect(self.settings.central_db, "central")) as central:
            group = groups.get(central, self.target.value)
            key = router.thread_key(group, router.Arrival("cli", "chat", {}))
            session = router.session_for(central, self.settings, now, group, key)
        about = ", ".join(f"{k} {v}" for k, v in (("group", alert.group), ("session", alert.session),
                                                   ("task", alert.task)) if v)
        text = f"Alert ({alert.event}): {alert.text}" + (f" [{about}]" if about else "")
        with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn, db.transaction(conn):
            inbox.notice(conn, now, "alert", text)

    def _with_group(self, alert: Alert) -> Alert:
        """The alert with its session's group named (a short read of central.db; none if the session is gone)."""
        if alert.session is None or alert.group is not None:
            return alert
        try:
            with closing(db.connect(self.settings.central_db, "central", readonly=True)) as central:
                session = sessions.get(central, self.settings, alert.session)
                return replace(alert, group=groups.get(central, session.agent_group_id).name)
        except (NclError, db.Error):
            return alert

    def _said_dropped(self) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            log.warning("%d alert(s) dropped: more than %d were waiting", dropped, QUEUE_MAX,
                        extra={"action": "alerts_dropped", "count": dropped})


def sending_mailbox(settings: Settings, target: AlertTarget) -> Mailbox:
    """The mailbox that sends ``mail:`` alerts: the one the target names, else the only one there is;
    ``AlertError`` says in one line why there is none."""
    found: list[Mailbox] = []
    if settings.central_db.exists():
        with closing(db.connect(settings.central_db, "central", readonly=True)) as central:
            found = mailboxes.list_all(central)
    if target.sender:
        found = [mailbox for mailbox in found if mailbox.address == target.sender]
        if not found:
            raise AlertError(f"{target}: there is no mailbox {target.sender} ('ncl mailbox list')")
    elif not found:
        raise AlertError(f"{target}: there is no mailbox to send it from ('ncl mailbox create', see the README)")
    elif len(found) > 1:
        raise AlertError(f"{target}: {len(found)} mailboxes, name the one that sends: "
                         f"mail:MAILBOX_ADDRESS:{target.value}")
    return found[0]


def mail_of(alert: Alert, sender: str, to: str) -> EmailMessage:
    """The alert as a plain text mail that no well-behaved auto-responder answers (RFC 3834: ``auto-generated``);
    its Message-ID is made of the alert's id, the same when a crash makes it sent again (receivers may dedupe)."""
    email = EmailMessage()
    email["From"], email["To"] = sender, to
    email["Subject"] = one_line(f"[ncl] {alert.event}: {alert.text}", SUBJECT_MAX)  # whatever the spool held
    email["Date"] = formatdate(localtime=False)
    email["Message-ID"] = f"<{re.sub(r'[^A-Za-z0-9.-]', '', alert.id)[:64] or 'alert'}@{sender.partition('@')[2]}>"
    email["Auto-Submitted"] = "auto-generated"
    facts = [f"{name}: {value}" for name, value in alert.to_json().items() if value and name != "text"]
    email.set_content(f"{alert.text}\n\n" + "\n".join(facts) + "\n")
    return email


class Reporting(logging.Handler):
    """On the root logger: every record with an ``alert`` key becomes an alert in ``alerts``."""

    def __init__(self, alerts: Alerts) -> None:
        super().__init__(logging.WARNING)
        self.alerts = alerts
        self.addFilter(logs.SessionFilter())  # a record logged in a session's visit names that session

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(getattr(record, "alert", None), str):
            self.alerts.put(Alert.of(record))


@contextmanager
def reporting(alerts: Alerts | None) -> Iterator[None]:
    """While inside, alert records go to ``alerts`` (None: nowhere). Alert records are warnings: a root logger set
    above WARNING (NCL_LOG_LEVEL=ERROR) is lowered to it, its handlers keeping the level it had."""
    if alerts is None:
        yield
        return
    root = logging.getLogger()
    level, handler = root.level, Reporting(alerts)
    raised = [(h, h.level) for h in root.handlers] if level > logging.WARNING else []
    for other, _ in raised:
        other.setLevel(max(other.level, level))
    root.setLevel(min(level, logging.WARNING))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for other, was in raised:
            other.setLevel(was)


def alerts_of(settings: Settings, **kwargs: Any) -> Alerts | None:
    """The alerts of ``NCL_ALERT_CHANNEL``, or None when it is not set."""
    target = settings.alert_target
    return None if target is None else Alerts(settings, target, **kwargs)


def test_alert(settings: Settings, now: datetime) -> Alert:
    return Alert("test", f"a test alert from ncl (data {settings.data_dir})", to_text(now))
