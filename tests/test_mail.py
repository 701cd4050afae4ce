"""Issue 17: the ``mail:ADDRESS`` channel against real servers (tests/mail_servers.py: Dovecot for IMAP with TLS,
aiosmtpd handing mail to Dovecot's delivery agent). The human is played with smtplib and imaplib; the agent is a
real ``ncl host run`` with the mock provider (its answer: "mock: " and the mail as the agent read it)."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import mail_servers
import pytest
from mail_servers import MailServers, mail
from processes import Env, Host

AGENT, HUMAN, STRANGER, OTHER = mail_servers.USERS
PDF = b"%PDF-1.4 a small invoice\n"


@pytest.fixture
def servers() -> Iterator[MailServers]:
    with mail_servers.running() as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, servers: MailServers) -> Env:
    env = Env(tmp_path)
    env.vars.update({"SSL_CERT_FILE": str(servers.cert), "NCL_MAIL_POLL_S": "2", "NCL_SWEEP_INTERVAL_S": "1",
                     "NCL_MAIL_RETRY_S": "0.05", "AGENT_MAIL_PASSWORD": mail_servers.PASSWORD})
    env.ok("mailbox", "create", "--address", AGENT, "--imap", f"127.0.0.1:{servers.imap_port}",
           "--smtp", f"127.0.0.1:{servers.smtp_port}", "--user", AGENT, "--password-env", "AGENT_MAIL_PASSWORD",
           "--allow", HUMAN, "--allow", "other@*")
    env.ok("groups", "create", "support", "--channel", f"mail:{AGENT}", "--session-mode", "per-thread")
    return env


def read_log(host: Host, seconds: float) -> None:
    """Take the host's log lines of the next ``seconds`` into ``host.seen``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(queue.Empty):
            if (line := host.lines.get(timeout=left)) is not None:
                host.seen.append(line)


def mail_rows(env: Env) -> list[dict[str, Any]]:
    """Every mail row of every session of the group, oldest first, with its session id."""
    found = []
    for inbound in sorted((env.data_dir / "v2-sessions" / "ag-support").glob("sess-*/inbound.db")):
        with closing(sqlite3.connect(inbound)) as conn:
            conn.row_factory = sqlite3.Row
            for row in conn.execute("SELECT * FROM messages_in WHERE kind = 'mail' ORDER BY seq"):
                found.append({**dict(row), "session": inbound.parent.name, "content": json.loads(row["content"])})
    return sorted(found, key=lambda r: r["timestamp"])


def reply_to(original: EmailMessage, answer: EmailMessage, text: str) -> EmailMessage:
    """What a mail client makes of 'Reply' on the agent's answer."""
    return mail(HUMAN, AGENT, f"Re: {original['Subject']}", text, In_Reply_To=str(answer["Message-ID"]),
                References=f"{answer['References']} {answer['Message-ID']}")


def test_a_mail_is_answered_in_its_thread_and_a_reply_continues_the_session(env: Env, servers: MailServers) -> None:
    host = Host(env)
    try:
        first = mail(HUMAN, AGENT, "Invoice 42", "Please check the attached invoice.")
        first.add_attachment(PDF, maintype="application", subtype="pdf", filename="../../invoice.pdf")
        servers.send(first)
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["From"] == AGENT and answer["To"] == HUMAN
        assert answer["Subject"] == "Re: Invoice 42"
        assert answer["In-Reply-To"] == first["Message-ID"]
        assert answer["References"] == first["Message-ID"]
        assert answer["Auto-Submitted"] == "auto-replied"
        body = answer.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert "Please check the attached invoice." in text and "Subject: Invoice 42" in text

        [row] = mail_rows(env)
        content = row["content"]
        assert (content["from"], content["to"], content["subject"]) == (HUMAN, [AGENT], "Invoice 42")
        assert content["message_id"] == first["Message-ID"]
        assert content["attachments"] == ["invoice.pdf"]  # the '../../' gone: saved in the session's inbox only
        saved = env.data_dir / "v2-sessions" / "ag-support" / row["session"] / "inbox" / row["id"] / "invoice.pdf"
        assert saved.read_bytes() == PDF
        assert (row["channel_type"], row["platform_id"], row["thread_id"]) == (
            f"mail:{AGENT}", HUMAN, first["Message-ID"])

        servers.send(reply_to(first, answer, "Thanks, and the due date?"))
        answers = servers.wait_for(HUMAN, 2)
        second = answers[1]
        assert second["In-Reply-To"] != first["Message-ID"]  # it answers the human's reply
        assert second["References"].split()[0] == first["Message-ID"]
        assert second["Subject"] == "Re: Invoice 42"  # never "Re: Re:"
        rows = mail_rows(env)
        assert len(rows) == 2 and rows[0]["session"] == rows[1]["session"]  # the same conversation

        servers.send(mail(OTHER, AGENT, "Another topic", "Hello again."))  # a new subject: a new session
        servers.wait_for(OTHER, 1)
        rows = mail_rows(env)
        assert len({r["session"] for r in rows}) == 2
        # Every mail taken was marked read on the server.
        assert all(seen for _, _, seen in servers.inbox(AGENT))
    finally:
        host.kill()


def test_automatic_mail_and_strangers_get_no_answer(env: Env, servers: MailServers) -> None:
    host = Host(env, NCL_MAIL_MAX_BYTES="4096")
    try:
        servers.send(mail(STRANGER, AGENT, "Buy now", "Cheap stuff."))
        servers.send(mail(HUMAN, AGENT, "Too big", "x" * 5000))
        servers.send(mail(HUMAN, AGENT, "Out of office", "I am away.", Auto_Submitted="auto-replied"))
        servers.send(mail(HUMAN, AGENT, "News", "Weekly digest.", Precedence="bulk"))
        servers.send(mail(HUMAN, AGENT, "Digest", "List mail.", List_Id="<news.example.org>"))
        servers.send(mail(HUMAN, AGENT, "Barrier", "A mail that is answered: the others were looked at first."))
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["Subject"] == "Re: Barrier"
        assert [r["content"]["subject"] for r in mail_rows(env)] == ["Barrier"]
        flags = {str(m["Subject"]): seen for _, m, seen in servers.inbox(AGENT)}
        assert flags == {"Buy now": False, "Too big": False, "Out of office": True, "News": True, "Digest": True,
                         "Barrier": True}
        assert servers.inbox(STRANGER) == []
        read_log(host, 5.0)  # a few more polls (every 2 s), which must not say it again
    finally:
        host.kill()
    refused = [line for line in host.seen if "[action=mail_refused " in line]
    assert len(refused) == 2 and "over NCL_MAIL_MAX_BYTES" in refused[1]  # each logged once, however many polls


def test_a_mail_that_would_take_hours_to_read_stalls_nothing(env: Env, servers: MailServers) -> None:
    """Unclosed HTML tags make html.parser take time with the square of their number (60 KB: about a minute, 25 MB:
    years): a stranger's such mail is refused from its headers, never read; an allowed sender's is read apart and
    given up after NCL_MAIL_READ_S, left unread and logged (mail_skipped); the mail behind it is answered."""
    def bomb(sender: str, subject: str) -> EmailMessage:
        message = mail(sender, AGENT, subject, "")
        message.set_content("<a " * 100_000, subtype="html")
        return message

    host = Host(env, NCL_MAIL_READ_S="2")
    try:
        servers.send(bomb(STRANGER, "Stall"))
        servers.send(bomb(HUMAN, "Also a stall"))
        servers.send(mail(HUMAN, AGENT, "Barrier", "Answered once the others are dealt with."))
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["Subject"] == "Re: Barrier"
        read_log(host, 1.0)
    finally:
        host.kill()
    assert [r["content"]["subject"] for r in mail_rows(env)] == ["Barrier"]
    [refused] = [line for line in host.seen if "[action=mail_refused " in line]
    assert f"{STRANGER} is not on the allow-list" in refused
    [skipped] = [line for line in host.seen if "[action=mail_skipped " in line]
    assert "UID 2 " in skipped and "took longer than 2 s (NCL_MAIL_READ_S)" in skipped
    flags = {str(m["Subject"]): seen for _, m, seen in servers.inbox(AGENT)}
    assert flags == {"Stall": False, "Also a stall": False, "Barrier": True}


@pytest.mark.parametrize("point", ["fetched", "committed"])
def test_a_host_killed_while_taking_a_mail_takes_it_once(env: Env, servers: MailServers, point: str) -> None:
    """SIGKILL between fetch and commit, and after the row's commit before the \\Seen flag: no mail lost, none
    twice (one row, one answer)."""
    killed = Host(env, NCL_FAULT_MAIL=point)
    servers.send(mail(HUMAN, AGENT, "Crash", "Take me once."))
    assert killed.proc.wait(timeout=60) == -signal.SIGKILL
    [(_, _, seen)] = servers.inbox(AGENT)
    assert not seen  # never flagged: the next host must look at it again
    assert len(mail_rows(env)) == (1 if point == "committed" else 0)
    host = Host(env)
    try:
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["Subject"] == "Re: Crash"
        rows = mail_rows(env)
        assert len(rows) == 1 and rows[0]["status"] == "completed"
        [(_, _, seen)] = servers.inbox(AGENT)
        assert seen
    finally:
        host.kill()


def test_a_second_copy_of_a_message_id_is_not_taken_again(env: Env, servers: MailServers) -> None:
    copy = mail(HUMAN, AGENT, "Twice", "Sent twice by a confused server.")
    host = Host(env)
    try:
        servers.send(copy)
        servers.wait_for(HUMAN, 1)
        servers.send(copy)  # the same Message-ID under a new UID
        servers.send(mail(HUMAN, AGENT, "Barrier", "Answered."))
        answers = servers.wait_for(HUMAN, 2)
        assert [a["Subject"] for a in answers] == ["Re: Twice", "Re: Barrier"]
        assert [r["content"]["subject"] for r in mail_rows(env)] == ["Twice", "Barrier"]
    finally:
        host.kill()


def test_a_failing_smtp_server_is_retried_and_then_noticed(env: Env, servers: MailServers) -> None:
    servers.fail_next = 1  # one 451: the retry gets it there
    host = Host(env)
    try:
        servers.send(mail(HUMAN, AGENT, "Retry", "First try fails."))
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["Subject"] == "Re: Retry" and servers.refused == 1
        servers.fail_next = 1000  # from now on every try fails
        servers.send(mail(HUMAN, AGENT, "Never", "Every try fails."))
        host.wait_for(lambda line: "[action=reply_handled " in line and " failed [" in line, timeout=90)
    finally:
        host.kill()
    assert servers.refused == 1 + 3 * 3  # 3 tries a delivery attempt, 3 attempts
    [session] = {r["session"] for r in mail_rows(env) if r["content"]["subject"] == "Never"}
    inbound = env.data_dir / "v2-sessions" / "ag-support" / session / "inbound.db"
    with closing(sqlite3.connect(inbound)) as conn:
        notices = conn.execute("SELECT json_extract(content, '$.text') FROM messages_in"
                               " WHERE json_extract(content, '$.notice') = 'delivery_failed'").fetchall()
    assert len(notices) == 1 and f"mail:{AGENT}" in notices[0][0]
    assert len(servers.inbox(HUMAN)) == 1


def write_out(env: Env, row: dict[str, Any], kind: str, content: dict[str, Any], routed: bool) -> None:
    """A row in the session's outbound.db as the runner writes it while handling the mail ``row``: a tool's
    request (schedule_task) or a message (send_message: the routing of the message being handled)."""
    outbound = env.data_dir / "v2-sessions" / "ag-support" / row["session"] / "outbound.db"
    routing = (row["platform_id"], row["channel_type"], row["thread_id"]) if routed else (None, None, None)
    with closing(sqlite3.connect(outbound, isolation_level=None, timeout=10)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        (top,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM messages_out").fetchone()
        conn.execute("INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, platform_id, channel_type,"
                     " thread_id, content) VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?, ?, ?, ?, ?)",
                     (f"msg-{1796000000000 + top}-{kind[:6]:a<6}", top + 2, row["id"], kind, *routing,
                      json.dumps(content)))
        conn.execute("COMMIT")


def test_a_task_made_from_a_mail_and_send_message_answer_in_its_thread(env: Env, servers: MailServers) -> None:
    """Point 4: the task an agent schedules while handling a mail carries the mail's routing, so its answer is
    mailed into the same thread; so is a message the agent sends with send_message."""
    host = Host(env)
    try:
        first = mail(HUMAN, AGENT, "Remind me", "Remind me to pay the invoice.")
        servers.send(first)
        servers.wait_for(HUMAN, 1)
        [row] = mail_rows(env)
        write_out(env, row, "system", {"action": "schedule_task", "taskId": "task-1796000000000-remind",
                                       "prompt": "time to pay the invoice"}, routed=False)
        write_out(env, row, "chat", {"text": "I will remind you shortly.", "files": []}, routed=True)
        answers = servers.wait_for(HUMAN, 3)
    finally:
        host.kill()
    texts = {}
    for answer in answers[1:]:
        assert answer["In-Reply-To"] == first["Message-ID"] and answer["Subject"] == "Re: Remind me"
        body = answer.get_body(preferencelist=("plain",))
        assert body is not None
        texts[str(answer["Message-ID"])] = body.get_content().strip()
    assert sorted(texts.values()) == ["I will remind you shortly.", "mock: time to pay the invoice"]


def test_doctor_logs_in_to_a_wired_mailbox(env: Env, servers: MailServers) -> None:
    checks = json.loads(env.ncl("doctor", "--json").stdout)
    [check] = [c for c in (checks["checks"] if isinstance(checks, dict) else checks) if c["name"] == "mail"]
    assert (check["level"], check["detail"]) == ("ok", f"{AGENT}: IMAP login ok")
    env.vars["AGENT_MAIL_PASSWORD"] = "wrong"
    checks = json.loads(env.ncl("doctor", "--json").stdout)
    [check] = [c for c in (checks["checks"] if isinstance(checks, dict) else checks) if c["name"] == "mail"]
    assert check["level"] == "fail" and "AUTHENTICATIONFAILED" in check["detail"]


def test_the_watcher_reconnects_after_the_imap_server_went_away(env: Env, servers: MailServers) -> None:
    host = Host(env)
    try:
        host.wait_for_action("mail_watching")
        servers.stop_imap()
        host.wait_for_action("mail_error")  # said, and tried again later (1 s, 2 s, 4 s …)
        servers.start_imap()
        servers.send(mail(HUMAN, AGENT, "Back", "Are you there again?"))
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["Subject"] == "Re: Back"
        assert sum("[action=mail_watching " in line for line in host.seen) >= 1
    finally:
        host.kill()


def test_starttls_on_both_servers(tmp_path: Path, servers: MailServers) -> None:
    """--tls starttls: IMAP and SMTP begin in plain text and upgrade (the servers refuse a login before it)."""
    env = Env(tmp_path)
    env.vars.update({"SSL_CERT_FILE": str(servers.cert), "NCL_MAIL_POLL_S": "2", "PW": mail_servers.PASSWORD})
    env.ok("mailbox", "create", "--address", AGENT, "--imap", f"127.0.0.1:{servers.imap_starttls_port}",
           "--smtp", f"127.0.0.1:{servers.smtp_starttls_port}", "--user", AGENT, "--password-env", "PW",
           "--tls", "starttls", "--allow", HUMAN)
    env.ok("groups", "create", "support", "--channel", f"mail:{AGENT}")
    host = Host(env)
    try:
        servers.send(mail(HUMAN, AGENT, "Upgraded", "Over STARTTLS."))
        [answer] = servers.wait_for(HUMAN, 1)
        assert answer["Subject"] == "Re: Upgraded"
    finally:
        host.kill()


def test_a_mail_that_fails_every_take_is_skipped_and_the_mails_behind_it_are_taken(
        env: Env, servers: MailServers, tmp_path: Path) -> None:
    """A mail whose taking fails each time (here its attachment cannot be saved: the session's runner swapped
    its inbox/ for a link) is tried MAX_TRIES times, then left unread, recorded skipped with the reason and said
    once (mail_skipped, with its UID); the mail behind it is answered; a restarted host does not try it again.
    Was: tried forever, every mail behind it waiting."""
    host = Host(env)
    try:
        first = mail(HUMAN, AGENT, "Report", "Here it comes.")
        servers.send(first)
        [answer] = servers.wait_for(HUMAN, 1)
        [row] = mail_rows(env)
        folder = env.data_dir / "v2-sessions" / "ag-support" / row["session"]
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        with contextlib.suppress(FileNotFoundError):
            (folder / "inbox").rmdir()
        (folder / "inbox").symlink_to(elsewhere)
        stuck = reply_to(first, answer, "The report, attached.")
        stuck.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
        servers.send(stuck)
        servers.send(mail(HUMAN, AGENT, "Barrier", "Answered once the stuck one is skipped."))
        answers = servers.wait_for(HUMAN, 2)
        assert [a["Subject"] for a in answers] == ["Re: Report", "Re: Barrier"]
        read_log(host, 3.0)
    finally:
        host.kill()
    skipped = [line for line in host.seen if "[action=mail_skipped " in line]
    assert len(skipped) == 1 and "UID 2 " in skipped[0] and "3 failed tries" in skipped[0]
    assert list(elsewhere.iterdir()) == []
    flags = {str(m["Subject"]): seen for _, m, seen in servers.inbox(AGENT)}
    assert flags == {"Report": True, "Re: Report": False, "Barrier": True}  # left unread: the operator finds it
    seen_rows = sqlite3.connect(env.data_dir / "central.db").execute(
        "SELECT uid, outcome, tries, reason FROM mail_seen ORDER BY uid").fetchall()
    assert [(uid, outcome, tries) for uid, outcome, tries, _ in seen_rows] == [
        (1, "taken", 1), (2, "skipped", 3), (3, "taken", 1)]
    assert "Refused" in seen_rows[1][3]
    again = Host(env)
    try:
        read_log(again, 5.0)  # polls every 2 s: the skipped mail is not tried again
    finally:
        again.kill()
    assert not [line for line in again.seen if "mail_skipped" in line or "mail_error" in line]
    assert sqlite3.connect(env.data_dir / "central.db").execute(
        "SELECT tries FROM mail_seen WHERE uid = 2").fetchone() == (3,)
    checks = json.loads(env.ncl("doctor", "--json").stdout)
    [check] = [c for c in (checks["checks"] if isinstance(checks, dict) else checks) if c["name"] == "mail"]
    assert check["level"] == "warn" and "1 mail(s) skipped" in check["detail"]
