"""Issue 16.6: alerts mailed (``NCL_ALERT_CHANNEL=mail:TO`` or ``mail:MAILBOX:TO``) from a mailbox of the mail
channel, against the real servers of tests/mail_servers.py (aiosmtpd handing mail to Dovecot): the alert is read back
from the recipient's INBOX over IMAP."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import mail_servers
import pytest
from kit import utc
from mail_servers import MailServers
from processes import Env, Host

from host.channels.alerts import ATTEMPTS, Alert, Alerts, mail_of
from host.settings import AlertTarget, Settings

AGENT, HUMAN, STRANGER, OTHER = mail_servers.USERS
T0 = utc("2026-06-01T12:00:00")


@pytest.fixture
def servers() -> Iterator[MailServers]:
    with mail_servers.running() as running:
        yield running


def text(got: EmailMessage) -> str:
    """The mail's plain text body, its lines ending in \\n (on the wire they end in CRLF)."""
    return str(got.get_content()).replace("\r\n", "\n")


def add_mailbox(env: Env, servers: MailServers, address: str) -> None:
    env.ok("mailbox", "create", "--address", address, "--imap", f"127.0.0.1:{servers.imap_port}",
           "--smtp", f"127.0.0.1:{servers.smtp_port}", "--user", address, "--password-env", "MAIL_PW")


@pytest.fixture
def env(tmp_path: Path, servers: MailServers) -> Env:
    """One mailbox, the agent's, wired to no group: it only sends the alerts."""
    env = Env(tmp_path)
    env.vars.update({"SSL_CERT_FILE": str(servers.cert), "MAIL_PW": mail_servers.PASSWORD})
    add_mailbox(env, servers, AGENT)
    return env


def test_ncl_alerts_test_mails_the_alert_from_the_only_mailbox(env: Env, servers: MailServers) -> None:
    env.vars["NCL_ALERT_CHANNEL"] = f"mail:{HUMAN}"
    assert env.ok("alerts", "test") == f"test alert sent to mail:{HUMAN}\n"
    [got] = servers.wait_for(HUMAN, 1)
    assert (got["From"], got["To"]) == (AGENT, HUMAN)
    assert got["Subject"].startswith("[ncl] test: a test alert from ncl (data ") and len(got["Subject"]) <= 120
    assert got["Auto-Submitted"] == "auto-generated"  # RFC 3834: no auto-responder answers it
    assert got["Message-ID"].startswith("<alert-") and got["Message-ID"].endswith("@example.org>")
    assert got.get_content_type() == "text/plain" and got["Date"]
    body = text(got)
    assert body.startswith(f"a test alert from ncl (data {env.data_dir})\n\n")
    assert "event: test\n" in body and f"id: {got['Message-ID'][1:].partition('@')[0]}\n" in body
    assert json.loads(env.ok("alerts", "test", "--json")) == {"target": f"mail:{HUMAN}", "event": "test",
                                                              "sent": True}
    assert len(servers.wait_for(HUMAN, 2)) == 2


def test_with_several_mailboxes_the_target_names_the_one_that_sends(env: Env, servers: MailServers) -> None:
    add_mailbox(env, servers, OTHER)
    env.vars["NCL_ALERT_CHANNEL"] = f"mail:{HUMAN}"
    done = env.ncl("alerts", "test")
    assert (done.returncode, done.stderr) == (1, f"ncl: mail:{HUMAN}: 2 mailboxes, name the one that sends: "
                                                 f"mail:MAILBOX_ADDRESS:{HUMAN}\n")
    env.vars["NCL_ALERT_CHANNEL"] = f"mail:{OTHER.upper()}:{HUMAN}"
    assert env.ok("alerts", "test") == f"test alert sent to mail:{OTHER}:{HUMAN}\n"
    [got] = servers.wait_for(HUMAN, 1)
    assert got["From"] == OTHER and got["Subject"].startswith("[ncl] test: ")


def one_line_failure(env: Env, channel: str, **vars: str) -> str:
    env.vars.update({"NCL_ALERT_CHANNEL": channel, **vars})
    done = env.ncl("alerts", "test")
    assert done.returncode == 1 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


def test_what_cannot_be_mailed_is_said_in_one_line(env: Env, servers: MailServers) -> None:
    assert one_line_failure(env, f"mail:{STRANGER}:{HUMAN}") == (
        f"ncl: mail:{STRANGER}:{HUMAN}: there is no mailbox {STRANGER} ('ncl mailbox list')\n")
    assert one_line_failure(env, "mail:nobody@example.org") == (
        "ncl: mail:nobody@example.org: nobody@example.org refused: 550 5.1.1 no such user\n")
    assert one_line_failure(env, f"mail:{HUMAN}", MAIL_PW="wrong").startswith(f"ncl: mail:{HUMAN}: 535 ")
    del env.vars["MAIL_PW"]
    assert one_line_failure(env, f"mail:{HUMAN}") == (
        f"ncl: mail:{HUMAN}: mailbox {AGENT}: MAIL_PW is not set (environment or .env)\n")
    assert one_line_failure(env, "mail:ops@example.com:") == (
        "ncl: invalid setting NCL_ALERT_CHANNEL='mail:ops@example.com:': expected mail:TO_ADDRESS (sent from the "
        "only mailbox) or mail:MAILBOX_ADDRESS:TO_ADDRESS\n")
    assert servers.inbox(HUMAN) == []


def alerts_check(env: Env) -> dict[str, Any]:
    """Doctor's alerts check: its level and detail."""
    checks = json.loads(env.ncl("doctor", "--json").stdout)
    [check] = [c for c in (checks["checks"] if isinstance(checks, dict) else checks) if c["name"] == "alerts"]
    return {"level": check["level"], "detail": check["detail"]}


def test_doctor_says_which_mailbox_sends_the_alerts_and_logs_in_to_its_smtp_server(env: Env,
                                                                                   servers: MailServers) -> None:
    env.vars["NCL_ALERT_CHANNEL"] = f"mail:{HUMAN}"
    assert alerts_check(env) == {"level": "ok",
                                 "detail": f"alerts go to mail:{HUMAN}, mailed from {AGENT} (SMTP login ok)"}
    env.vars["MAIL_PW"] = "wrong"
    check = alerts_check(env)
    assert check["level"] == "fail"
    assert check["detail"].startswith(f"mail:{HUMAN}: SMTP 127.0.0.1:{servers.smtp_port}: 535 ")
    env.vars["NCL_ALERT_CHANNEL"] = f"mail:{STRANGER}:{HUMAN}"
    assert alerts_check(env) == {"level": "fail",
                                 "detail": f"mail:{STRANGER}:{HUMAN}: there is no mailbox {STRANGER} "
                                           "('ncl mailbox list')"}


async def test_a_refused_mail_is_tried_again_like_a_webhook_then_logged_as_failed(
        env: Env, servers: MailServers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MAIL_PW", mail_servers.PASSWORD)
    monkeypatch.setenv("SSL_CERT_FILE", str(servers.cert))
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    sender = Alerts(Settings(data_dir=env.data_dir), AlertTarget("mail", HUMAN), now=lambda: T0, sleep=no_wait)
    servers.fail_next = 1  # a 451: the second attempt gets it there
    sender.put(Alert("task_missed", "task task-1 missed 2 slots", "2026-06-01T12:00:00Z", task="task-1"))
    await sender.drain()
    [got] = servers.wait_for(HUMAN, 1)
    assert got["Subject"] == "[ncl] task_missed: task task-1 missed 2 slots" and servers.refused == 1
    assert "task: task-1\n" in text(got)
    servers.fail_next = 1000
    with caplog.at_level(logging.INFO, logger="host.channels.alerts"):
        sender.put(Alert("runner_start_failed", "no runner", "2026-06-01T12:00:00Z"))
        await sender.drain()
    await sender.aclose()
    assert servers.refused == 1 + ATTEMPTS and waits == [2.0, 2.0, 10.0]
    [failed] = [r for r in caplog.records if getattr(r, "action", None) == "alert_failed"]
    assert failed.getMessage() == f"alert runner_start_failed not sent after {ATTEMPTS} attempts: mail:{HUMAN}: " \
                                  "451 4.3.0 try again later"
    assert sender.pending == [] and len(servers.inbox(HUMAN)) == 1


def test_the_subject_is_one_short_line_whatever_the_text() -> None:
    alert = Alert("task_gate_errors", "line one\nBcc: all@example.org\r\n" + "x" * 300, "2026-06-01T12:00:00Z",
                  id="alert-<evil>\n")
    email = mail_of(alert, AGENT, HUMAN)
    subject = str(email["Subject"])
    assert subject.startswith("[ncl] task_gate_errors: line one Bcc: all@example.org xxx") and len(subject) == 120
    assert subject.endswith("…") and email["Bcc"] is None and email["Message-ID"] == "<alert-evil@example.org>"


def test_a_running_host_mails_the_alert_of_a_missed_slot(env: Env, servers: MailServers) -> None:
    env.ok("groups", "create", "team", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "team", "--json"))["id"]
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence",
                             "0 9 * * *", "--now", "2026-01-01T00:00:00", "--json"))["id"]
    host = Host(env, NCL_ALERT_CHANNEL=f"mail:{HUMAN}", NCL_MISFIRE_GRACE_S="0")
    try:
        host.wait_for_action("alert_sent")
    finally:
        host.stop(signal.SIGTERM)
    [got] = servers.wait_for(HUMAN, 1)
    assert got["Subject"].startswith("[ncl] task_missed: ") and got["Auto-Submitted"] == "auto-generated"
    body = text(got)
    assert f"task: {task}\n" in body and f"session: {session}\n" in body and "group: team\n" in body
